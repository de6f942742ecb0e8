"""The metrics against direct computations on hand-made models; the ROAD imputer; batching,
memory, host syncs, model state, errors; RandomCAM."""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
import torch
import torchvision.transforms.functional as TF
from conftest import GapLinearNet
from helpers import (
    CountScalarReads,
    LinearNet,
    PeakTensorBytes,
    RegionMean,
    RowCounter,
    assert_same_state,
    snapshot,
    softmax_scores,
)
from torch import nn

from pytorch_grad_cam.metrics import (
    CamMultImageConfidenceChange,
    DeletionCurve,
    DropInConfidence,
    IncreaseInConfidence,
    InsertionCurve,
    PerturbationCurve,
    ROADCombined,
    ROADLeastRelevantFirst,
    ROADLeastRelevantFirstAverage,
    ROADMostRelevantFirst,
    ROADMostRelevantFirstAverage,
    noisy_linear_impute,
)
from pytorch_grad_cam.random_cam import RandomCAM
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
)

# --------------------------------------------------------------------- hand models


def model_in_training_mode() -> nn.Module:
    """Batch norm and dropout in training mode, one module in eval mode, a ``.grad`` set."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).train()
    model[4].eval()
    model[0].weight.grad = torch.full_like(model[0].weight, 0.25)
    return model


CATEGORIES = (0, 2, 2)  # the probability drops for two images, rises for the third


@pytest.fixture
def linear_case():
    model = LinearNet().eval()
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(3, 3, 8, 8, generator=generator)
    cams = torch.rand(3, 8, 8, generator=generator).numpy()
    targets = [ClassifierOutputSoftmaxTarget(c) for c in CATEGORIES]
    return model, x, cams, targets


# --------------------------------------------------------------------- cam x image
def test_confidence_change_drop_and_increase_match_the_direct_computation(linear_case):
    model, x, cams, targets = linear_case
    before = softmax_scores(model, x, CATEGORIES)
    after = softmax_scores(model, x * torch.from_numpy(cams)[:, None], CATEGORIES)
    change = after - before
    assert (change > 0).any() and (change < 0).any()  # both branches are exercised

    for batch_size in (1, 2, 32):
        got = CamMultImageConfidenceChange(batch_size=batch_size)(x, cams, targets, model)
        assert got.dtype == np.float32 and got.shape == (3,)
        np.testing.assert_allclose(got, change, atol=1e-6)
    drop = DropInConfidence()(x, cams, targets, model)
    np.testing.assert_allclose(drop, np.maximum(before - after, 0), atol=1e-6)
    relative = DropInConfidence(relative=True)(x, cams, targets, model)
    np.testing.assert_allclose(relative, np.maximum(before - after, 0) / before, atol=1e-5)
    increase = IncreaseInConfidence()(x, cams, targets, model)
    np.testing.assert_array_equal(increase, (after > before).astype(np.float32))


def test_targets_none_is_the_top_class_probability_and_logits_work_too(linear_case):
    model, x, cams, _ = linear_case
    with torch.no_grad():
        top = model(x).argmax(dim=1).tolist()
    explicit = [ClassifierOutputSoftmaxTarget(c) for c in top]
    metric = CamMultImageConfidenceChange()
    np.testing.assert_allclose(
        metric(x, cams, None, model), metric(x, cams, explicit, model), atol=1e-7
    )
    logits = [ClassifierOutputTarget(c) for c in CATEGORIES]
    with torch.no_grad():
        rows = torch.arange(3), list(CATEGORIES)
        expected = (model(x * torch.from_numpy(cams)[:, None]) - model(x))[rows].numpy()
    np.testing.assert_allclose(metric(x, cams, logits, model), expected, atol=1e-5)


def test_visualization_is_the_image_times_its_map(linear_case):
    model, x, cams, targets = linear_case
    scores, images = CamMultImageConfidenceChange()(
        x, torch.from_numpy(cams), targets, model, return_visualization=True
    )
    torch.testing.assert_close(images, x * torch.from_numpy(cams)[:, None])
    np.testing.assert_allclose(
        scores, CamMultImageConfidenceChange()(x, cams, targets, model), atol=1e-7
    )


# --------------------------------------------------------------------- the imputer
def ramp(height: int = 224, width: int = 224) -> np.ndarray:
    """Three linear ramps (harmonic: the imputer reproduces them away from the border)."""
    ys, xs = np.mgrid[0:height, 0:width] / np.array([height, width]).reshape(2, 1, 1)
    return np.stack([0.3 * ys + 0.5 * xs, 0.2 - xs, 2 * ys])


def test_imputer_reproduces_a_linear_ramp_from_a_random_half_of_it():
    image = ramp()
    rng = np.random.default_rng(0)
    for fraction in (0.3, 0.5):
        removed = rng.random(image.shape[1:]) < fraction
        imputed = noisy_linear_impute(image, removed, noise=0.0)
        error = np.abs(imputed - image)
        assert (error[:, ~removed] == 0).all()  # kept pixels are fixed
        assert error[:, 8:-8, 8:-8].max() < 1e-5  # the interior: the ramp, exactly
        # Near the border the renormalised weights are one-sided: small errors only.
        assert error.max() < 0.05
        # Harmonic: no value outside the range of the kept ones.
        assert imputed.min() >= image.min() - 1e-9 and imputed.max() <= image.max() + 1e-9


def test_imputer_weights_are_one_sixth_and_one_twelfth_renormalised_at_the_border():
    image = np.random.default_rng(1).random((2, 6, 7))
    removed = np.zeros((6, 7), dtype=bool)
    removed[2, 3] = removed[0, 0] = removed[5, 3] = True  # interior, corner, edge
    imputed = noisy_linear_impute(image, removed, noise=0.0)
    centre = (image[:, 1, 3] + image[:, 3, 3] + image[:, 2, 2] + image[:, 2, 4]) / 6 + (
        image[:, 1, 2] + image[:, 1, 4] + image[:, 3, 2] + image[:, 3, 4]
    ) / 12
    np.testing.assert_allclose(imputed[:, 2, 3], centre, atol=1e-12)
    corner = (image[:, 0, 1] / 6 + image[:, 1, 0] / 6 + image[:, 1, 1] / 12) / (5 / 12)
    np.testing.assert_allclose(imputed[:, 0, 0], corner, atol=1e-12)
    edge = (image[:, 4, 3] / 6 + image[:, 5, 2] / 6 + image[:, 5, 4] / 6) + (
        image[:, 4, 2] / 12 + image[:, 4, 4] / 12
    )
    np.testing.assert_allclose(imputed[:, 5, 3], edge / (4 / 6), atol=1e-12)


def test_imputer_solves_two_neighbouring_unknowns_jointly():
    image = np.random.default_rng(2).random((1, 5, 5))
    removed = np.zeros((5, 5), dtype=bool)
    removed[2, 1:3] = True  # (2, 1) and (2, 2), direct neighbours of each other
    imputed = noisy_linear_impute(image, removed, noise=0.0)[0]

    def known_part(y, x):  # sum of w * neighbour over the kept neighbours
        total = 0.0
        for dy, dx, w in [(-1, 0, 6), (1, 0, 6), (0, -1, 6), (0, 1, 6)] + [
            (a, b, 12) for a in (-1, 1) for b in (-1, 1)
        ]:
            if not removed[y + dy, x + dx]:
                total += image[0, y + dy, x + dx] / w
        return total

    # a = k1 + b/6, b = k2 + a/6
    k1, k2 = known_part(2, 1), known_part(2, 2)
    a = (k1 + k2 / 6) / (1 - 1 / 36)
    b = k2 + a / 6
    np.testing.assert_allclose([imputed[2, 1], imputed[2, 2]], [a, b], atol=1e-12)


def test_imputer_is_sparse_and_fast_at_224(monkeypatch):
    calls = []
    original = scipy.sparse.linalg.spsolve

    def spy(matrix, rhs, *args, **kwargs):
        calls.append((scipy.sparse.issparse(matrix), matrix.shape, matrix.nnz, rhs.shape))
        return original(matrix, rhs, *args, **kwargs)

    monkeypatch.setattr(scipy.sparse.linalg, "spsolve", spy)
    image = torch.from_numpy(ramp()).float()
    removed = torch.rand(224, 224, generator=torch.Generator().manual_seed(0)) < 0.5
    start = time.perf_counter()
    imputed = noisy_linear_impute(image, removed, noise=0.0)
    elapsed = time.perf_counter() - start
    unknowns = int(removed.sum())
    # One sparse system for the three channels; a dense one would need 2.5e4^2 doubles (5 GB).
    assert calls == [(True, (unknowns, unknowns), calls[0][2], (unknowns, 3))]
    assert calls[0][2] <= 9 * unknowns
    assert elapsed < 2.0
    assert imputed.dtype == torch.float32 and imputed.shape == image.shape


def test_imputer_noise_is_gaussian_on_the_removed_pixels_only_and_seeded():
    image = np.full((3, 64, 64), 0.25)
    removed = np.random.default_rng(3).random((64, 64)) < 0.4
    first = noisy_linear_impute(image, removed, noise=0.01, rng=7)
    again = noisy_linear_impute(image, removed, noise=0.01, rng=7)
    np.testing.assert_array_equal(first, again)
    deviation = first - image
    assert (deviation[:, ~removed] == 0).all()
    assert abs(deviation[:, removed].std() - 0.01) < 0.001
    assert abs(deviation[:, removed].mean()) < 0.001


def test_imputer_rejects_removing_every_pixel_and_bad_shapes():
    with pytest.raises(ValueError, match="keep at least one"):
        noisy_linear_impute(np.zeros((1, 4, 4)), np.ones((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="removed must be an H x W mask"):
        noisy_linear_impute(np.zeros((1, 4, 4)), np.ones((4, 5), dtype=bool))


# --------------------------------------------------------------------- ROAD
@pytest.fixture
def region_case():
    """A 20 x 20 image, 1 on an 8 x 8 square (64 px = 16 %) and 0 elsewhere; the model
    scores the square's mean. ``right`` ranks the square first, then by distance to it."""
    region = torch.zeros(20, 20)
    region[5:13, 5:13] = 1
    x = region.expand(1, 3, 20, 20).clone()
    ys, xs = torch.meshgrid(torch.arange(20.0), torch.arange(20.0), indexing="ij")
    distance = ((ys - 8.5) ** 2 + (xs - 8.5) ** 2).sqrt()
    right = (region + 0.5 * (1 - distance / distance.max()))[None] / 1.5
    return RegionMean(region).eval(), x, right.numpy(), (1 - right).numpy()


TARGET0 = [ClassifierOutputTarget(0)]


def test_road_signs_on_a_model_that_reads_one_region(region_case):
    model, x, right, inverted = region_case
    # The right map's top 16 % is the square: imputed from its dark surroundings -> 0.
    morf = ROADMostRelevantFirst(percentile=84, noise=0.0)
    np.testing.assert_allclose(morf(x, right, TARGET0, model), [-1.0], atol=1e-9)
    np.testing.assert_allclose(morf(x, inverted, TARGET0, model), [0.0], atol=1e-9)
    lerf = ROADLeastRelevantFirst(percentile=16, noise=0.0)
    np.testing.assert_allclose(lerf(x, right, TARGET0, model), [0.0], atol=1e-9)
    np.testing.assert_allclose(lerf(x, inverted, TARGET0, model), [-1.0], atol=1e-9)
    combined = ROADCombined(percentiles=[16, 84], noise=0.0)
    np.testing.assert_allclose(combined(x, right, TARGET0, model), [0.5], atol=1e-9)
    np.testing.assert_allclose(combined(x, inverted, TARGET0, model), [-0.5], atol=1e-9)
    # The defaults (noise 0.01, percentiles 10 .. 90) point the same way.
    assert ROADCombined()(x, right, TARGET0, model) > ROADCombined()(x, inverted, TARGET0, model)
    assert ROADMostRelevantFirst()(x, right, TARGET0, model) < -0.5
    assert ROADMostRelevantFirst()(x, inverted, TARGET0, model) > -0.1


def test_road_averages_are_the_means_over_percentiles(region_case):
    model, x, right, _ = region_case
    percentiles = [30, 60, 84]
    xs, maps = x.repeat(2, 1, 1, 1), np.stack([right[0], right[0].T])
    targets = TARGET0 * 2
    for average, single in [
        (ROADMostRelevantFirstAverage, ROADMostRelevantFirst),
        (ROADLeastRelevantFirstAverage, ROADLeastRelevantFirst),
    ]:
        singles = [single(p, noise=0.0)(xs, maps, targets, model) for p in percentiles]
        got = average(percentiles, noise=0.0, batch_size=4)(xs, maps, targets, model)
        np.testing.assert_allclose(got, np.mean(singles, axis=0), atol=1e-6)
    morf = ROADMostRelevantFirstAverage(percentiles, noise=0.0)(xs, maps, targets, model)
    lerf = ROADLeastRelevantFirstAverage(percentiles, noise=0.0)(xs, maps, targets, model)
    combined = ROADCombined(percentiles, noise=0.0)(xs, maps, targets, model)
    np.testing.assert_allclose(combined, (lerf - morf) / 2, atol=1e-6)


def test_road_removes_the_stated_fraction_of_pixels_in_every_channel(region_case):
    model, _, right, _ = region_case
    x = torch.rand(1, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    flat = np.zeros((1, 20, 20), dtype=np.float32)  # all ties: a random, seeded choice
    values = np.sort(right.ravel())
    for metric, count, selected in [
        (ROADMostRelevantFirst(percentile=70), 120, lambda m: m >= values[-120]),
        (ROADLeastRelevantFirst(percentile=35), 140, lambda m: m <= values[139]),
    ]:
        for cams in (flat, right):
            _, imputed = metric(x, cams, TARGET0, model, return_visualization=True)
            changed = (imputed != x).all(dim=1)[0].numpy()
            assert int(changed.sum()) == count  # 30 % / 35 % of 400 (noise moves every one)
            assert ((imputed != x).any(dim=1)[0].numpy() == changed).all()
        assert selected(right[0][changed]).all()  # the right map's most / least relevant


def test_road_is_reproducible_and_independent_of_the_batch_size(linear_case):
    model, x, cams, targets = linear_case
    results = [
        ROADCombined([25, 50, 75], batch_size=batch_size)(x, cams, targets, model)
        for batch_size in (1, 4, 100)
    ]
    for result in results[1:]:
        np.testing.assert_allclose(result, results[0], atol=1e-6)
    other_seed = ROADCombined([25, 50, 75], seed=1)(x, cams, targets, model)
    assert not np.allclose(other_seed, results[0], atol=1e-6)


def test_road_batches_every_percentile_of_every_image():
    model = RowCounter(LinearNet().eval())
    x = torch.randn(3, 3, 8, 8)
    cams = torch.rand(3, 8, 8)
    ROADCombined([20, 40, 60, 80], batch_size=5)(x, cams, None, model)
    assert model.rows == [3] + [5] * 4 + [4]  # the images, then 3 x 8 imputed ones
    assert all(model.inference)


# --------------------------------------------------------------------- deletion / insertion
def reference_curves(model, x, cams, categories, mode, steps, baseline) -> np.ndarray:
    """All steps of every image materialised at once; ranks by plain sorting."""
    images, pixels = x.shape[0], cams[0].numel()
    curves = []
    for b in range(images):
        order = torch.argsort(cams[b].flatten(), descending=True)
        batch = []
        for k in range(steps + 1):
            acted = torch.zeros(pixels, dtype=torch.bool)
            acted[order[: round(k / steps * pixels)]] = True
            acted = acted.view(1, *x.shape[2:])
            if mode == "deletion":
                batch.append(torch.where(acted, baseline[b], x[b]))
            else:
                batch.append(torch.where(acted, x[b], baseline[b]))
        scores = softmax_scores(model, torch.stack(batch), [categories[b]] * (steps + 1))
        curves.append(scores)
    return np.stack(curves)


def trapezoid(curves: np.ndarray) -> np.ndarray:
    return ((curves[:, 1:] + curves[:, :-1]) / 2).mean(axis=1)


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_deletion_and_insertion_match_the_reference(linear_case, batch_size):
    model, x, cams, targets = linear_case
    cams = torch.from_numpy(cams)
    blurred = TF.gaussian_blur(x, kernel_size=[7, 7], sigma=[1.5, 1.5])
    cases = [
        ("deletion", DeletionCurve, torch.zeros_like(x), {}),
        ("deletion", DeletionCurve, blurred, {"baseline": blurred}),
        ("insertion", InsertionCurve, blurred, {"baseline": lambda images: blurred}),
        ("insertion", InsertionCurve, torch.full_like(x, -0.5), {"baseline": -0.5}),
    ]
    for mode, metric_class, baseline, kwargs in cases:
        expected = reference_curves(model, x, cams, CATEGORIES, mode, 9, baseline)
        metric = metric_class(n_steps=9, batch_size=batch_size, **kwargs)
        auc, curves = metric(x, cams, targets, model, return_curves=True)
        assert auc.dtype == curves.dtype == np.float32 and curves.shape == (3, 10)
        np.testing.assert_allclose(curves, expected, atol=1e-6)
        np.testing.assert_allclose(auc, trapezoid(expected), atol=1e-6)
        np.testing.assert_allclose(metric.fractions, np.linspace(0, 1, 10))
    assert PerturbationCurve("insertion").baseline == "blur"
    assert PerturbationCurve("deletion").baseline == "zeros"


def test_insertion_starts_from_the_blurred_image(linear_case):
    model, x, cams, targets = linear_case
    _, curves = InsertionCurve(n_steps=4, blur_sigma=1.0)(x, cams, targets, model, True)
    blurred = TF.gaussian_blur(x, kernel_size=[7, 7], sigma=[1.0, 1.0])
    np.testing.assert_allclose(curves[:, 0], softmax_scores(model, blurred, CATEGORIES), 1e-5)
    np.testing.assert_allclose(curves[:, -1], softmax_scores(model, x, CATEGORIES), 1e-5)


def test_the_better_ranking_has_the_lower_deletion_and_higher_insertion_area(region_case):
    model, x, right, inverted = region_case
    both = np.concatenate([right, inverted])
    xs = x.repeat(2, 1, 1, 1)
    deletion = DeletionCurve(n_steps=20)(xs, both, TARGET0 * 2, model)
    insertion = InsertionCurve(n_steps=20, baseline="zeros")(xs, both, TARGET0 * 2, model)
    assert deletion[0] < 0.2 < 0.8 < deletion[1]
    assert insertion[0] > 0.8 > 0.2 > insertion[1]


def test_ties_are_broken_at_random_not_in_raster_order():
    # The score is the mean of the top half: raster order would delete it first.
    top = torch.zeros(16, 16)
    top[:8] = 1
    model = RegionMean(top).eval()
    x = torch.ones(1, 3, 16, 16)
    flat = np.zeros((1, 16, 16), dtype=np.float32)
    _, curve = DeletionCurve(n_steps=4)(x, flat, TARGET0, model, return_curves=True)
    np.testing.assert_allclose(curve[0], [1, 0.75, 0.5, 0.25, 0], atol=0.08)
    again = DeletionCurve(n_steps=4)(x, flat, TARGET0, model, return_curves=True)[1]
    other = DeletionCurve(n_steps=4, seed=5)(x, flat, TARGET0, model, return_curves=True)[1]
    np.testing.assert_array_equal(curve, again)
    assert not np.array_equal(curve, other)


def test_curves_run_batch_size_rows_at_a_time_in_inference_mode():
    model = RowCounter(LinearNet().eval())
    x, cams = torch.randn(2, 3, 8, 8), torch.rand(2, 8, 8)
    DeletionCurve(n_steps=10, batch_size=8)(x, cams, None, model)
    assert model.rows == [2, 8, 8, 4]  # the images, then 2 x 10 perturbed ones
    assert all(model.inference)


class PooledNet(nn.Module):
    """Cheap at 64 x 64: pool to 4 x 4 first."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2d(16)
        self.fc = nn.Linear(48, 3)

    def forward(self, x):
        return self.fc(self.pool(x).flatten(1))


def peak_bytes(metric, x, cams) -> tuple[int, int]:
    torch.manual_seed(0)
    model = PooledNet().eval()
    with PeakTensorBytes() as tracker:
        metric(x, cams, [ClassifierOutputSoftmaxTarget(0)], model)
    return tracker.peak, tracker.live


def test_curve_memory_grows_with_batch_size_not_with_steps():
    x = torch.randn(1, 3, 64, 64)
    cams = torch.rand(1, 64, 64)
    image_bytes = 3 * 64 * 64 * 4
    peaks = {}
    for steps, batch_size in [(128, 4), (128, 32), (16, 4)]:
        metric = DeletionCurve(n_steps=steps, batch_size=batch_size)
        peaks[steps, batch_size], live = peak_bytes(metric, x, cams)
        assert live < image_bytes
    assert peaks[128, 4] < 128 * image_bytes / 16  # far below every step at once
    assert peaks[128, 32] - peaks[128, 4] > 27 * image_bytes  # the buffer's 28 rows more
    assert abs(peaks[128, 4] - peaks[16, 4]) < 2 * image_bytes  # 112 steps more: ~nothing


def test_road_memory_grows_with_batch_size_not_with_percentiles():
    x = torch.randn(1, 3, 64, 64)
    cams = torch.rand(1, 64, 64)
    image_bytes = 3 * 64 * 64 * 4
    many = [5 * k for k in range(1, 20)]  # 19 percentiles: 38 imputed images
    small, _ = peak_bytes(ROADCombined(many, batch_size=2), x, cams)
    large, _ = peak_bytes(ROADCombined(many, batch_size=32), x, cams)
    few, _ = peak_bytes(ROADCombined([50], batch_size=2), x, cams)
    assert large - small > 25 * image_bytes
    assert abs(small - few) < 2 * image_bytes


def test_no_host_sync_per_chunk():
    model = LinearNet().eval()
    x, cams = torch.randn(2, 3, 8, 8), torch.rand(2, 8, 8)
    targets = [ClassifierOutputSoftmaxTarget(1), ClassifierOutputSoftmaxTarget(3)]
    for given in (targets, None):
        counts = []
        for batch_size in (1, 64):
            metric = InsertionCurve(n_steps=16, batch_size=batch_size)
            with CountScalarReads() as reads:
                metric(x, cams, given, model)
            counts.append(reads.count)
        # The input and map checks; nothing per chunk (40 chunks with batch_size=1).
        assert counts[0] == counts[1] <= 2


# --------------------------------------------------------------------- shared behaviour
ALL_METRICS = [
    CamMultImageConfidenceChange(),
    DropInConfidence(),
    IncreaseInConfidence(),
    ROADMostRelevantFirst(),
    ROADLeastRelevantFirst(),
    ROADMostRelevantFirstAverage([20, 80]),
    ROADLeastRelevantFirstAverage([20, 80]),
    ROADCombined([20, 80]),
    DeletionCurve(n_steps=4),
    InsertionCurve(n_steps=4),
]
IDS = [type(metric).__name__ for metric in ALL_METRICS]


@pytest.mark.parametrize("metric", ALL_METRICS, ids=IDS)
def test_the_model_is_left_as_found(metric):
    model = model_in_training_mode()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cams = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(1)).numpy()
    before = snapshot(model)
    values = metric(x, cams, [ClassifierOutputSoftmaxTarget(3)] * 2, model)
    assert_same_state(before, snapshot(model))
    assert values.shape == (2,) and values.dtype == np.float32 and np.isfinite(values).all()
    # It ran in eval mode: the same values as on an eval-mode model.
    model.eval()
    np.testing.assert_allclose(
        metric(x, cams, [ClassifierOutputSoftmaxTarget(3)] * 2, model), values, atol=1e-6
    )


@pytest.mark.parametrize("metric", ALL_METRICS[:1] + ALL_METRICS[3:4] + ALL_METRICS[8:9])
def test_the_model_is_left_as_found_when_a_target_raises(metric):
    model = model_in_training_mode()
    calls = []

    def raises_on_second_call(output):
        calls.append(1)
        if len(calls) == 2:
            raise KeyError("raised by the user's target")
        return output[..., 1]

    before = snapshot(model)
    with pytest.raises(KeyError, match="user's target"):
        metric(torch.randn(1, 3, 16, 16), np.ones((1, 16, 16)), [raises_on_second_call], model)
    assert_same_state(before, snapshot(model))


def test_output_selector_picks_the_scores(linear_case):
    model, x, cams, targets = linear_case

    class DictOutput(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, images):
            return {"aux": -self.inner(images), "scores": self.inner(images)}

    wrapped = DictOutput(model)
    for make in (
        lambda **k: CamMultImageConfidenceChange(**k),
        lambda **k: ROADMostRelevantFirst(**k),
        lambda **k: DeletionCurve(n_steps=3, **k),
    ):
        expected = make()(x, cams, targets, model)
        got = make(output_selector="scores")(x, cams, targets, wrapped)
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_volumes_work_for_the_cam_mult_and_curve_metrics():
    model = GapLinearNet(in_channels=2, dims=3).eval()
    x = torch.randn(2, 2, 4, 6, 5)
    cams = torch.rand(2, 4, 6, 5)
    targets = [ClassifierOutputSoftmaxTarget(1)] * 2
    assert CamMultImageConfidenceChange()(x, cams, targets, model).shape == (2,)
    assert DeletionCurve(n_steps=5)(x, cams, targets, model).shape == (2,)
    with pytest.raises(ValueError, match="2-D images"):
        ROADMostRelevantFirst()(x, cams, targets, model)
    with pytest.raises(ValueError, match="baseline='blur'"):
        InsertionCurve(n_steps=5)(x, cams, targets, model)


# --------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "cams, message",
    [
        (np.ones((2, 1, 8, 8)), r"shape \(2, 1, 8, 8\).*Drop the channel axis"),
        (np.ones((8, 8)), r"shape \(8, 8\).*Add the batch axis"),
        (np.ones((2, 7, 8)), r"shape \(2, 7, 8\).*\(2, 8, 8\).*resize them"),
        (np.full((2, 8, 8), np.nan), "NaN"),
        ("map", "numpy array or a torch.Tensor"),
    ],
)
@pytest.mark.parametrize("metric", ALL_METRICS[:1] + ALL_METRICS[3:4] + ALL_METRICS[8:9])
def test_bad_maps_are_named(metric, cams, message):
    model = LinearNet().eval()
    error = TypeError if isinstance(cams, str) else ValueError
    with pytest.raises(error, match=f"cams.*{message}"):
        metric(torch.randn(2, 3, 8, 8), cams, None, model)


def test_maps_outside_zero_one_are_rejected_by_the_image_multiplying_metrics():
    with pytest.raises(ValueError, match=r"cams must be in \[0, 1\].*scale=True"):
        DropInConfidence()(torch.randn(1, 3, 8, 8), np.full((1, 8, 8), 3.0), None, LinearNet())


@pytest.mark.parametrize("metric", ALL_METRICS[:1] + ALL_METRICS[3:4] + ALL_METRICS[8:9])
def test_target_count_and_other_arguments_are_checked(metric):
    model, x, cams = LinearNet().eval(), torch.randn(2, 3, 8, 8), np.ones((2, 8, 8))
    with pytest.raises(ValueError, match="targets has 1 entries but input_tensor has 2 images"):
        metric(x, cams, [ClassifierOutputTarget(0)], model)
    with pytest.raises(TypeError, match="one target per image"):
        metric(x, cams, ClassifierOutputTarget(0), model)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        metric(x, cams, None, "resnet")
    with pytest.raises(TypeError, match="input_tensor must be a torch.Tensor"):
        metric(x.numpy(), cams, None, model)
    with pytest.raises(ValueError, match="add the batch axis"):
        metric(x[0], cams[0], None, model)


@pytest.mark.parametrize("bad", [0, 100, 150, -5, float("nan")])
def test_percentiles_outside_0_100_are_rejected(bad):
    for metric in (ROADMostRelevantFirst, ROADLeastRelevantFirst):
        with pytest.raises(ValueError, match="percentile must be strictly between 0 and 100"):
            metric(percentile=bad)
    with pytest.raises(ValueError, match=r"percentiles\[1\] must be strictly between 0 and 100"):
        ROADCombined(percentiles=[10, bad])


def test_other_bad_arguments():
    with pytest.raises(TypeError, match="percentiles must be a list"):
        ROADCombined(percentiles=50)
    with pytest.raises(ValueError, match="percentiles is empty"):
        ROADMostRelevantFirstAverage(percentiles=[])
    with pytest.raises(TypeError, match="percentile must be a number"):
        ROADMostRelevantFirst(percentile="80")
    with pytest.raises(ValueError, match="noise must be a number >= 0"):
        ROADMostRelevantFirst(noise=-1)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
            DropInConfidence(batch_size=bad)
        with pytest.raises(ValueError, match="n_steps must be an int >= 1"):
            DeletionCurve(n_steps=bad)
    with pytest.raises(ValueError, match="mode must be one of"):
        PerturbationCurve("erase")
    with pytest.raises(ValueError, match="baseline must be 'zeros', 'blur'"):
        DeletionCurve(baseline="black")
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="does not broadcast"):
        DeletionCurve(baseline=torch.zeros(2, 8, 8))(x, np.ones((1, 8, 8)), None, LinearNet())


# --------------------------------------------------------------------- RandomCAM
def captured_weights(cam: RandomCAM) -> list:
    weights = []
    original = cam.layer_weights

    def spy(activations, gradients, context):
        result = original(activations, gradients, context)
        weights.append(result.flatten(1).clone())
        return result

    cam.layer_weights = spy
    return weights


class WideReLUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 512, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(512, 4)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).mean(dim=(2, 3)))


def test_random_cam_weights_are_uniform_in_minus_one_one_and_seeded():
    torch.manual_seed(0)
    model = WideReLUNet().eval()
    x = torch.randn(3, 3, 8, 8)
    cam = RandomCAM(model, [model.relu], seed=0)
    weights = captured_weights(cam)
    maps = cam(x)
    w = weights[0]
    assert w.shape == (3, 512) and (w.abs() <= 1).all()
    assert w.min() < -0.99 and w.max() > 0.99 and abs(float(w.mean())) < 0.1
    # ~uniform: a quarter of the weights in each quarter of [-1, 1]
    counts = torch.histc(w, bins=4, min=-1, max=1) / w.numel()
    assert (counts - 0.25).abs().max() < 0.05
    assert maps.shape == (3, 8, 8) and (maps.reshape(3, -1).max(axis=1) == 1).all()
    np.testing.assert_array_equal(RandomCAM(model, [model.relu], seed=0)(x), maps)
    assert not np.array_equal(RandomCAM(model, [model.relu], seed=1)(x), maps)
    assert not np.array_equal(cam(x), maps)  # the next call draws new weights
    generator = torch.Generator().manual_seed(0)
    np.testing.assert_array_equal(RandomCAM(model, [model.relu], generator=generator)(x), maps)
    torch.manual_seed(5)
    first = RandomCAM(model, [model.relu])(x)
    torch.manual_seed(5)
    np.testing.assert_array_equal(RandomCAM(model, [model.relu])(x), first)


def test_random_cam_flips_weights_that_would_give_an_empty_map():
    # One channel, all positive activations: a negative weight would empty the map.
    model = nn.Sequential(nn.Conv2d(3, 1, 1), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    with torch.no_grad():
        model[0].weight.fill_(0.1)
        model[0].bias.fill_(1.0)
    x = torch.rand(16, 3, 4, 4)
    model(x)
    cam = RandomCAM(model.eval(), [model[1]], seed=0)
    weights = captured_weights(cam)
    maps = cam(x)
    assert (weights[0] > 0).all()
    assert (maps.reshape(16, -1).max(axis=1) == 1).all()


def test_random_cam_takes_no_gradients_and_leaves_the_model_as_found():
    model = model_in_training_mode()
    before = snapshot(model)
    cam = RandomCAM(model, [model[4]], seed=0)
    assert cam.uses_gradients is False
    maps = cam(torch.randn(2, 3, 16, 16), [ClassifierOutputTarget(1)] * 2)
    assert maps.shape == (2, 16, 16) and np.isfinite(maps).all()
    assert_same_state(before, snapshot(model))


def test_random_cam_argument_errors():
    model = WideReLUNet()
    with pytest.raises(TypeError, match="seed= or generator=, not both"):
        RandomCAM(model, [model.relu], seed=0, generator=torch.Generator())
    with pytest.raises(TypeError, match="seed must be an int"):
        RandomCAM(model, [model.relu], seed=0.5)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        RandomCAM(model, [model.relu], generator=np.random.default_rng(0))
