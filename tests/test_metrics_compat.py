"""grad-cam 1.5.7's metric building blocks: the cams= / grayscale_cams= spellings,
return_diff, multiply_tensor_with_cam, PerturbationConfidenceMetric, the removals, the
averager and the NoisyLinearImputer with its two steps, each against a direct
computation; and the fast paths equal to their compositions."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from helpers import LinearNet, softmax_scores

from pytorch_grad_cam.metrics import (
    AveragerAcrossThresholds,
    CamMultImageConfidenceChange,
    DeletionCurve,
    DropInConfidence,
    IncreaseInConfidence,
    NoisyLinearImputer,
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
    ROADCombined,
    ROADLeastRelevantFirst,
    ROADLeastRelevantFirstAverage,
    ROADMostRelevantFirst,
    ROADMostRelevantFirstAverage,
    multiply_tensor_with_cam,
    noisy_linear_impute,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

CATEGORIES = (0, 2, 2)


@pytest.fixture
def case():
    """A linear model, 3 images of 8 x 8, maps in [0, 1] without ties, softmax targets."""
    model = LinearNet().eval()
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(3, 3, 8, 8, generator=generator)
    cams = torch.rand(3, 8, 8, generator=generator).numpy()
    targets = [ClassifierOutputSoftmaxTarget(c) for c in CATEGORIES]
    return model, x, cams, targets


# --------------------------------------------------------------------- spellings
METRICS = [
    CamMultImageConfidenceChange(),
    DropInConfidence(),
    IncreaseInConfidence(),
    ROADMostRelevantFirst(),
    ROADLeastRelevantFirst(),
    ROADMostRelevantFirstAverage([30, 70]),
    ROADLeastRelevantFirstAverage([30, 70]),
    ROADCombined([30, 70]),
    AveragerAcrossThresholds(ROADMostRelevantFirst, [30, 70]),
    DeletionCurve(n_steps=3),
]


@pytest.mark.parametrize("metric", METRICS, ids=[type(m).__name__ for m in METRICS])
def test_the_maps_are_accepted_as_cams_and_as_grayscale_cams(case, metric):
    model, x, cams, targets = case
    positional = metric(x, cams, targets, model)
    by_cams = metric(input_tensor=x, cams=cams, targets=targets, model=model)
    by_old_name = metric(input_tensor=x, grayscale_cams=cams, targets=targets, model=model)
    np.testing.assert_array_equal(by_cams, positional)
    np.testing.assert_array_equal(by_old_name, positional)
    assert positional.dtype == np.float32 and positional.shape == (3,)
    with pytest.raises(
        TypeError, match=r"maps as (grayscale_)?cams= or as (grayscale_)?cams=, not both"
    ):
        metric(x, cams=cams, grayscale_cams=cams, targets=targets, model=model)


# --------------------------------------------------------------------- return_diff
def test_return_diff_false_gives_the_scores_on_the_multiplied_images(case):
    model, x, cams, targets = case
    before = softmax_scores(model, x, CATEGORIES)
    after = softmax_scores(model, x * torch.from_numpy(cams)[:, None], CATEGORIES)
    assert (after > before).any() and (after < before).any()
    expected = {
        CamMultImageConfidenceChange: after - before,
        DropInConfidence: np.maximum(before - after, 0),
        IncreaseInConfidence: (after > before).astype(np.float32),
    }
    for metric_class, default in expected.items():
        metric = metric_class()
        np.testing.assert_allclose(metric(x, cams, targets, model), default, atol=1e-6)
        np.testing.assert_allclose(
            metric(x, cams, targets, model, return_diff=True), default, atol=1e-6
        )
        # Positionally as on grad-cam: (input_tensor, cams, targets, model, vis, diff).
        np.testing.assert_allclose(metric(x, cams, targets, model, False, False), after, atol=1e-6)
        scores, images = metric(
            x, cams, targets, model, return_visualization=True, return_diff=False
        )
        np.testing.assert_allclose(scores, after, atol=1e-6)
        torch.testing.assert_close(images, x * torch.from_numpy(cams)[:, None])


def test_road_return_diff_false_gives_the_scores_on_the_imputed_images(case):
    model, x, cams, targets = case
    metric = ROADMostRelevantFirst(percentile=60)
    changes, imputed = metric(x, cams, targets, model, return_visualization=True)
    scores, again = metric(x, cams, targets, model, return_visualization=True, return_diff=False)
    torch.testing.assert_close(again, imputed)  # seeded: the same imputation
    np.testing.assert_allclose(scores, softmax_scores(model, imputed, CATEGORIES), atol=1e-6)
    np.testing.assert_allclose(changes, scores - softmax_scores(model, x, CATEGORIES), atol=1e-6)


# --------------------------------------------------------------------- multiply_tensor_with_cam
def test_multiply_tensor_with_cam_broadcasts_the_map_over_the_channels():
    generator = torch.Generator().manual_seed(0)
    image, cam = torch.randn(3, 5, 4, generator=generator), torch.rand(5, 4, generator=generator)
    expected = torch.stack([image[c] * cam for c in range(3)])
    torch.testing.assert_close(multiply_tensor_with_cam(image, cam), expected)
    torch.testing.assert_close(multiply_tensor_with_cam(image, cam.numpy()), expected)
    batch, maps = torch.randn(2, 3, 5, 4), torch.rand(2, 5, 4)
    product = multiply_tensor_with_cam(batch, maps)
    for b in range(2):
        torch.testing.assert_close(product[b], multiply_tensor_with_cam(batch[b], maps[b]))
    # A batch of three RGB images: the maps are one per image, not one per channel.
    rgb, three = torch.randn(3, 3, 5, 4), torch.rand(3, 5, 4)
    torch.testing.assert_close(multiply_tensor_with_cam(rgb, three)[1, 2], rgb[1, 2] * three[1])
    volumes, volume_maps = torch.randn(2, 2, 3, 4, 5), torch.rand(2, 3, 4, 5)
    torch.testing.assert_close(
        multiply_tensor_with_cam(volumes, volume_maps)[1, 0], volumes[1, 0] * volume_maps[1]
    )
    with pytest.raises(ValueError, match=r"cam of shape \(4, 5\) does not fit"):
        multiply_tensor_with_cam(image, torch.rand(4, 5))


# --------------------------------------------------------------------- the generic metric
def test_perturbation_confidence_metric_with_the_image_times_its_map_is_cam_mult(case):
    model, x, cams, targets = case
    generic = PerturbationConfidenceMetric(multiply_tensor_with_cam, batch_size=2)
    fast = CamMultImageConfidenceChange()
    assert isinstance(fast, PerturbationConfidenceMetric)
    for diff in (True, False):
        got, images = generic(x, cams, targets, model, True, diff)
        expected, expected_images = fast(x, cams, targets, model, True, diff)
        np.testing.assert_allclose(got, expected, atol=1e-6)
        torch.testing.assert_close(images, expected_images)


def test_perturbation_confidence_metric_with_any_perturbation(case):
    model, x, cams, targets = case
    calls = []

    def flip_where_relevant(image: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
        calls.append((tuple(image.shape), tuple(cam.shape)))
        return torch.where(cam > 0.5, image.flip(-1), image)

    perturbed = torch.stack(
        [flip_where_relevant(x[b], torch.from_numpy(cams[b])) for b in range(3)]
    )
    calls.clear()
    before = softmax_scores(model, x, CATEGORIES)
    after = softmax_scores(model, perturbed, CATEGORIES)
    for batch_size in (1, 2, 32):
        metric = PerturbationConfidenceMetric(flip_where_relevant, batch_size=batch_size)
        np.testing.assert_allclose(metric(x, cams, targets, model), after - before, atol=1e-6)
    assert calls == [((3, 8, 8), (8, 8))] * 9  # one image and its map at a time
    with pytest.raises(TypeError, match="perturbation must be a callable"):
        PerturbationConfidenceMetric("blur")
    wrong = PerturbationConfidenceMetric(lambda image, cam: image[:, :4])
    with pytest.raises(ValueError, match=r"must return a tensor of the image's shape \(3, 8, 8\)"):
        wrong(x, cams, targets, model)


# --------------------------------------------------------------------- removals
class RecordingImputer:
    """Records the keep masks it is handed; 'imputes' by zeroing."""

    def __init__(self):
        self.masks = []

    def __call__(self, image, keep):
        self.masks.append(keep)
        return image * keep


@pytest.mark.parametrize("percentile", [20, 55, 80])
def test_removals_threshold_the_map_at_its_percentile(percentile):
    cam = torch.rand(10, 10, generator=torch.Generator().manual_seed(percentile))
    image = torch.randn(3, 10, 10)
    threshold = np.percentile(cam.numpy(), percentile)
    for removal, kept in [
        (RemoveMostRelevantFirst, cam.numpy() <= threshold),
        (RemoveLeastRelevantFirst, cam.numpy() >= threshold),
    ]:
        imputer = RecordingImputer()
        perturbed = removal(percentile, imputer)(image, cam)
        (keep,) = imputer.masks
        assert keep.dtype == torch.float32 and set(keep.unique().tolist()) <= {0.0, 1.0}
        np.testing.assert_array_equal(keep.numpy().astype(bool), kept)
        torch.testing.assert_close(perturbed, image * keep)
    with pytest.raises(ValueError, match="percentile must be strictly between 0 and 100"):
        RemoveMostRelevantFirst(100, RecordingImputer())
    with pytest.raises(TypeError, match="imputer must be a callable"):
        RemoveLeastRelevantFirst(50, None)


def test_removals_remove_the_stated_count_of_a_flat_map_at_random():
    imputer = RecordingImputer()
    flat = np.zeros((10, 10), dtype=np.float32)
    RemoveMostRelevantFirst(70, imputer, seed=1)(torch.ones(1, 10, 10), flat)
    RemoveMostRelevantFirst(70, imputer, seed=2)(torch.ones(1, 10, 10), flat)
    first, second = imputer.masks
    assert float(first.sum()) == float(second.sum()) == 70  # 30 % removed
    assert not torch.equal(first, second)


def test_road_is_a_perturbation_metric_of_a_removal_and_the_noisy_linear_imputer(case):
    model, x, cams, targets = case
    for road, removal, percentile in [
        (ROADMostRelevantFirst, RemoveMostRelevantFirst, 70),
        (ROADLeastRelevantFirst, RemoveLeastRelevantFirst, 40),
    ]:
        composed = PerturbationConfidenceMetric(removal(percentile, NoisyLinearImputer(noise=0)))
        fast = road(percentile, noise=0.0)
        assert isinstance(fast, PerturbationConfidenceMetric)
        assert isinstance(fast.perturbation, removal) and fast.perturbation.percentile == percentile
        for diff in (True, False):
            got, images = composed(x, cams, targets, model, True, diff)
            expected, expected_images = fast(x, cams, targets, model, True, diff)
            np.testing.assert_allclose(got, expected, atol=1e-6)
            torch.testing.assert_close(images, expected_images)


# --------------------------------------------------------------------- the averager
def test_averager_is_the_mean_over_the_percentiles(case):
    model, x, cams, targets = case
    seen = []

    class PercentileAsScore:
        def __init__(self, percentile):
            self.percentile = percentile

        def __call__(self, input_tensor, cams, targets, model):
            seen.append(self.percentile)
            return np.full(len(input_tensor), self.percentile, dtype=np.float32)

    got = AveragerAcrossThresholds(PercentileAsScore, [10, 20, 60])(x, cams, targets, model)
    np.testing.assert_allclose(got, [30.0] * 3)
    assert seen == [10, 20, 60]
    assert AveragerAcrossThresholds(PercentileAsScore).percentiles == list(range(10, 100, 10))


def test_road_averages_are_averagers_of_the_single_metrics(case):
    model, x, cams, targets = case
    percentiles = [25, 50, 75]
    averages = {}
    for average, single in [
        (ROADMostRelevantFirstAverage, ROADMostRelevantFirst),
        (ROADLeastRelevantFirstAverage, ROADLeastRelevantFirst),
    ]:
        fast = average(percentiles, noise=0.0)
        assert isinstance(fast, AveragerAcrossThresholds)
        generic = AveragerAcrossThresholds(functools.partial(single, noise=0.0), percentiles)
        averages[single] = generic(x, cams, targets, model)
        np.testing.assert_allclose(fast(x, cams, targets, model), averages[single], atol=1e-6)
        # The averager the fast class carries is the same composition.
        np.testing.assert_allclose(
            AveragerAcrossThresholds.__call__(fast, x, cams, targets, model),
            averages[single],
            atol=1e-6,
        )
    combined = ROADCombined(percentiles, noise=0.0)(x, cams, targets, model)
    expected = (averages[ROADLeastRelevantFirst] - averages[ROADMostRelevantFirst]) / 2
    np.testing.assert_allclose(combined, expected, atol=1e-6)


# --------------------------------------------------------------------- the imputer
def test_noisy_linear_imputer_keeps_the_ones_and_imputes_the_zeros():
    image = torch.rand(2, 9, 9, generator=torch.Generator().manual_seed(4))
    keep = (torch.rand(9, 9, generator=torch.Generator().manual_seed(5)) > 0.3).float()
    imputed = NoisyLinearImputer(noise=0.0)(image, keep)
    torch.testing.assert_close(imputed, noisy_linear_impute(image, keep == 0, noise=0.0))
    kept = keep.bool()
    torch.testing.assert_close(imputed[:, kept], image[:, kept])
    assert not torch.allclose(imputed[:, ~kept], image[:, ~kept])
    # Noise on the imputed pixels only, seeded; successive calls draw new noise.
    flat = torch.full((3, 64, 64), 0.5)
    mask = (torch.rand(64, 64, generator=torch.Generator().manual_seed(6)) > 0.5).float()
    imputer = NoisyLinearImputer(seed=3)
    first, second = imputer(flat, mask), imputer(flat, mask)
    torch.testing.assert_close(NoisyLinearImputer(seed=3)(flat, mask), first)
    assert not torch.equal(first, second)
    deviation = (first - flat)[:, mask == 0]
    assert abs(float(deviation.std()) - 0.01) < 0.001
    assert bool(((first - flat)[:, mask == 1] == 0).all())


def test_noisy_linear_imputer_takes_its_own_weighting():
    image = np.random.default_rng(7).random((1, 5, 5))
    keep = np.ones((5, 5))
    keep[2, 2] = 0
    direct_only = [((0, 1), 0.25), ((0, -1), 0.25), ((1, 0), 0.25), ((-1, 0), 0.25)]
    imputed = NoisyLinearImputer(noise=0, weighting=direct_only)(image, keep)
    expected = (image[0, 1, 2] + image[0, 3, 2] + image[0, 2, 1] + image[0, 2, 3]) / 4
    assert imputed[0, 2, 2] == pytest.approx(expected, abs=1e-12)
    # Only the right-hand neighbour: the pixel copies it.
    right = NoisyLinearImputer(noise=0, weighting=[((0, 1), 1.0)])(image, keep)
    assert right[0, 2, 2] == pytest.approx(image[0, 2, 3], abs=1e-12)
    with pytest.raises(ValueError, match=r"offset \(0, 0\)"):
        NoisyLinearImputer(weighting=[((0, 0), 1.0)])
    with pytest.raises(TypeError, match="weighting must be a list"):
        NoisyLinearImputer(weighting=[0.5, 0.5])


def test_add_offset_to_indices_moves_flat_indices_on_the_grid():
    indices = np.array([0, 5, 11, 6])  # (0, 0), (1, 1), (2, 3), (1, 2) on a 3 x 4 grid
    neighbours, inside = NoisyLinearImputer.add_offset_to_indices(indices, (1, -1), (3, 4))
    np.testing.assert_array_equal(inside, [False, True, False, True])  # (1, -1), (3, 2) leave
    np.testing.assert_array_equal(neighbours[inside], [2 * 4 + 0, 2 * 4 + 1])
    neighbours, inside = NoisyLinearImputer.add_offset_to_indices(indices, (0, 1), (3, 4))
    np.testing.assert_array_equal(inside, [True, True, False, True])  # (2, 4) leaves
    np.testing.assert_array_equal(neighbours[inside], [1, 6, 7])


def test_setup_sparse_system_is_the_imputers_equations():
    rng = np.random.default_rng(8)
    image = rng.random((2, 4, 5))
    keep = rng.random((4, 5)) > 0.4
    keep[0, 0] = False  # a corner, with renormalised weights
    weights = {(dy, dx): w for (dy, dx), w in NoisyLinearImputer().weighting}
    unknown = [(y, x) for y in range(4) for x in range(5) if not keep[y, x]]
    position = {pixel: i for i, pixel in enumerate(unknown)}
    dense = np.eye(len(unknown))
    rhs = np.zeros((len(unknown), 2))
    for i, (y, x) in enumerate(unknown):
        inside = {
            (y + dy, x + dx): w
            for (dy, dx), w in weights.items()
            if 0 <= y + dy < 4 and 0 <= x + dx < 5
        }
        total = sum(inside.values())
        for pixel, w in inside.items():
            if keep[pixel]:
                rhs[i] += w / total * image[:, pixel[0], pixel[1]]
            else:
                dense[i, position[pixel]] -= w / total
    matrix, b = NoisyLinearImputer.setup_sparse_system(
        torch.from_numpy(keep.astype(np.float32)), torch.from_numpy(image), list(weights.items())
    )
    np.testing.assert_allclose(matrix.toarray(), dense, atol=1e-12)
    np.testing.assert_allclose(b, rhs, atol=1e-12)
    solution = np.linalg.solve(dense, rhs)
    imputed = NoisyLinearImputer(noise=0)(image, keep)
    np.testing.assert_allclose(imputed[:, ~keep].T, solution, atol=1e-10)
