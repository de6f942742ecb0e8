"""SS-CAM and IS-CAM against per-sample reference loops; their no-smoothing cases are
ScoreCAM; shared forwards for equal masks, memory, host syncs, model state, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import (
    TARGETS3,
    CountScalarReads,
    DuplicatedChannelsNet,
    PeakTensorBytes,
    RowCounter,
    SmallConvNet,
    WideNet,
    assert_same_state,
    close,
    layer_outputs,
    min_max,
    net_in_training_mode,
    seeded,
    snapshot,
    upsample,
    upsample_masks,
)

from pytorch_grad_cam.is_cam import ISCAM
from pytorch_grad_cam.score_cam import ScoreCAM
from pytorch_grad_cam.ss_cam import SSCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget


def score(model, target, batch: torch.Tensor) -> torch.Tensor:
    """The target's score of each image of ``batch``."""
    output = model(batch)
    return torch.stack([target(row).sum() for row in output])


def reference(model, layer, x, targets, channel_scores) -> torch.Tensor:
    """``ReLU(sum_k softmax_k(S^k) A^k)`` upsampled; ``channel_scores(b, masks)`` gives
    image ``b``'s ``S`` from its ``C x H x W`` normalised masks."""
    (activations,) = layer_outputs(model, [layer], x)
    maps = []
    with torch.no_grad():
        for b in range(x.shape[0]):
            masks = min_max(upsample_masks(activations[b], x.shape[2:]))
            weights = torch.softmax(channel_scores(b, masks), dim=0)
            maps.append(torch.relu((weights.view(-1, 1, 1) * activations[b]).sum(dim=0)))
    return upsample(torch.stack(maps), x.shape[2:])


def reference_sscam(model, layer, x, targets, n_samples, stdev_spread, seed) -> torch.Tensor:
    """Noise ``s`` of image ``b`` is the ``(b n + s)``-th image-shaped draw, shared by the
    channels; one noise sample at a time."""
    generator = torch.Generator().manual_seed(seed)

    def channel_scores(b, masks):
        sigma = stdev_spread * (x[b].max() - x[b].min())
        total = torch.zeros(masks.shape[0])
        for _ in range(n_samples):
            noise = torch.randn(x[b].shape, generator=generator) * sigma
            total += score(model, targets[b], masks.unsqueeze(1) * x[b] + noise)
        return total / n_samples

    return reference(model, layer, x, targets, channel_scores)


def reference_iscam(model, layer, x, targets, n_samples) -> torch.Tensor:
    def channel_scores(b, masks):
        total = torch.zeros(masks.shape[0])
        for i in range(1, n_samples + 1):
            total += score(model, targets[b], ((i / n_samples) * masks).unsqueeze(1) * x[b])
        return total / n_samples

    return reference(model, layer, x, targets, channel_scores)


def unscaled(cam, x, targets) -> torch.Tensor:
    return cam(x, targets, scale=False, as_tensor=True)


X = torch.randn(3, 3, 13, 11, generator=torch.Generator().manual_seed(1))


# --------------------------------------------------------------------- references
@pytest.mark.parametrize("batch_size", [5, 100])  # 5: chunks straddle noise samples
def test_sscam_matches_a_per_sample_reference_for_every_batch_size(batch_size):
    model = seeded(SmallConvNet)
    layer = model.features[3]
    expected = reference_sscam(model, layer, X, TARGETS3, 3, 0.1, seed=5)
    cam = SSCAM(
        model, [layer], batch_size=batch_size, n_samples=3, stdev_spread=0.1,
        generator=torch.Generator().manual_seed(5),
    )  # fmt: skip
    close(unscaled(cam, X, TARGETS3), expected, tol=1e-4)
    # An int seed gives the same noise at every call.
    seeded_cam = SSCAM(model, [layer], n_samples=3, stdev_spread=0.1, generator=5)
    for _ in range(2):
        close(unscaled(seeded_cam, X, TARGETS3), expected, tol=1e-4)
    plain = unscaled(ScoreCAM(model, [layer]), X, TARGETS3)
    assert not torch.allclose(expected, plain, rtol=1e-3, atol=1e-3)  # the noise matters


@pytest.mark.parametrize("batch_size", [7, 100])
def test_iscam_matches_a_per_step_reference_for_every_batch_size(batch_size):
    model = seeded(SmallConvNet)
    layer = model.features[5]
    expected = reference_iscam(model, layer, X, TARGETS3, 4)
    close(
        unscaled(ISCAM(model, [layer], batch_size=batch_size, n_samples=4), X, TARGETS3), expected
    )
    plain = unscaled(ScoreCAM(model, [layer]), X, TARGETS3)
    assert not torch.allclose(expected, plain, rtol=1e-3, atol=1e-3)


def test_no_smoothing_is_scorecam():
    model = seeded(SmallConvNet)
    layers = [model.features[3], model.features[5]]
    expected = unscaled(ScoreCAM(model, layers, batch_size=8), X, TARGETS3)
    zero_noise = SSCAM(model, layers, batch_size=8, n_samples=4, stdev_spread=0.0)
    close(unscaled(zero_noise, X, TARGETS3), expected)
    close(unscaled(ISCAM(model, layers, batch_size=8, n_samples=1), X, TARGETS3), expected)


# --------------------------------------------------------------------- batching, memory
@pytest.mark.parametrize("method", [SSCAM, ISCAM])
def test_equal_masks_share_their_forwards(method):
    model = RowCounter(seeded(DuplicatedChannelsNet))
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(2)]
    method(model, [model.inner.relu], batch_size=4, n_samples=3)(x, targets)
    # The plain pass, then 3 variants x 5 distinct masks per image, 4 rows at a time.
    assert model.rows == [2, 4, 4, 4, 3, 4, 4, 4, 3]
    assert all(model.inference[1:])


def peak_bytes(method, n_samples: int, batch_size: int) -> int:
    model = seeded(lambda: WideNet(32))
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    cam = method(model, [model.conv], batch_size=batch_size, n_samples=n_samples)
    with PeakTensorBytes() as tracker:
        cam(x, [ClassifierOutputTarget(0)], as_tensor=True)
    return tracker.peak


@pytest.mark.parametrize("method", [SSCAM, ISCAM])
def test_peak_memory_grows_with_batch_size_not_with_samples_times_channels(method):
    image_bytes = 3 * 64 * 64 * 4
    one, eight = peak_bytes(method, 1, 4), peak_bytes(method, 8, 4)
    assert eight - one < 2 * image_bytes  # 256 masked inputs instead of 32: no more memory
    assert peak_bytes(method, 8, 32) - eight > 28 * image_bytes
    assert eight < 256 * image_bytes / 20


@pytest.mark.parametrize("method", [SSCAM, ISCAM])
def test_no_host_sync_per_chunk(method):
    model = seeded(SmallConvNet)
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(4))
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(2)]
    counts = []
    for batch_size in (1, 64):
        with CountScalarReads() as reads:
            method(model, [model.features[5]], batch_size=batch_size, n_samples=3)(x, targets)
        counts.append(reads.count)
    assert counts[0] == counts[1] <= 1  # BaseCAM's input check only


def test_progress_bar_counts_every_variant(capsys):
    model = seeded(DuplicatedChannelsNet)
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(2)]
    SSCAM(model, [model.relu], batch_size=4, n_samples=2, progress_bar=True)(x, targets)
    err = capsys.readouterr().err
    assert "SSCAM, target layer 0" in err and "6/6" in err  # 10 rows per image, 4 at a time


# --------------------------------------------------------------------- state, errors
@pytest.mark.parametrize("method", [SSCAM, ISCAM])
def test_model_state_is_unchanged(method):
    model = net_in_training_mode()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    before = snapshot(model)
    maps = method(model, [model.conv2], n_samples=2)(x, [ClassifierOutputTarget(1)] * 2)
    assert_same_state(before, snapshot(model))
    assert np.isfinite(maps).all()


@pytest.mark.parametrize(
    "method, kwargs, error, match",
    [
        (SSCAM, {"n_samples": 0}, ValueError, "n_samples must be a positive int"),
        (ISCAM, {"n_samples": True}, ValueError, "n_samples must be a positive int"),
        (SSCAM, {"stdev_spread": -1}, ValueError, "stdev_spread must be a finite number >= 0"),
        (SSCAM, {"generator": 1.5}, TypeError, "generator must be a torch.Generator"),
        (ISCAM, {"batch_size": -3}, ValueError, "batch_size must be a positive int"),
    ],
)
def test_bad_arguments_are_named(method, kwargs, error, match):
    model = seeded(SmallConvNet)
    with pytest.raises(error, match=match):
        method(model, [model.features[3]], **kwargs)


def test_n_samples_set_after_construction_is_checked_at_the_call():
    model = seeded(SmallConvNet)
    cam = ISCAM(model, [model.features[3]])
    cam.n_samples = 0
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        cam(torch.randn(1, 3, 8, 8), [ClassifierOutputTarget(0)])
