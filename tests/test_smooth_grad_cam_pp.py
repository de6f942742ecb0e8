"""Smooth Grad-CAM++ against a reference that runs the noisy copies one at a time; zero
noise is Grad-CAM++; seeds; batching and memory; model state; argument errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import (
    TARGETS3,
    PeakTensorBytes,
    RowCounter,
    SmallConvNet,
    WideNet,
    assert_same_state,
    net_in_training_mode,
    seeded,
    snapshot,
    upsample,
)
from torch import nn

from pytorch_grad_cam.grad_cam_plusplus import GradCAMPlusPlus
from pytorch_grad_cam.smooth_grad_cam_pp import SmoothGradCAMpp
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget


def output_and_gradient(model: nn.Module, layer: nn.Module, x: torch.Tensor, target):
    """One image (``1 x ...``): the layer's output and d(target score)/d(output)."""
    recorded = {}

    def hook(module, inputs, output):
        recorded["a"] = output
        return output.clone()

    handle = layer.register_forward_hook(hook)
    try:
        score = target(model(x)[0]).sum()
    finally:
        handle.remove()
    (gradient,) = torch.autograd.grad(score, recorded["a"])
    return recorded["a"].detach(), gradient


def reference_smooth_gradcampp(model, layer, x, targets, n_samples, stdev_spread, seed):
    """Unscaled maps; noisy copy ``s`` of image ``b`` is the ``(b n + s)``-th draw."""
    generator = torch.Generator().manual_seed(seed)
    maps = []
    for b in range(x.shape[0]):
        activations, _ = output_and_gradient(model, layer, x[b : b + 1], targets[b])
        sigma = stdev_spread * (x[b].max() - x[b].min())
        moments = [torch.zeros_like(activations) for _ in range(3)]
        for _ in range(n_samples):
            noisy = x[b] + sigma * torch.randn(x[b].shape, generator=generator)
            _, g = output_and_gradient(model, layer, noisy[None], targets[b])
            for power in range(3):
                moments[power] += g ** (power + 1) / n_samples
        d1, d2, d3 = moments
        denominator = 2 * d2 + activations.sum(dim=(2, 3), keepdim=True) * d3
        alpha = torch.where(denominator != 0, d2 / denominator, torch.zeros_like(d2))
        weights = (alpha * torch.relu(d1)).sum(dim=(2, 3), keepdim=True)
        maps.append(torch.relu((weights * activations).sum(dim=1)))
    return upsample(torch.cat(maps), x.shape[2:])


def smooth(model, layer, x, targets, **kwargs) -> torch.Tensor:
    return SmoothGradCAMpp(model, [layer], **kwargs)(x, targets, scale=False, as_tensor=True)


@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_matches_a_one_sample_at_a_time_reference_for_every_batch_size(batch_size):
    model = seeded(SmallConvNet)
    layer = model.features[3]
    x = torch.randn(3, 3, 12, 10, generator=torch.Generator().manual_seed(1))
    expected = reference_smooth_gradcampp(model, layer, x, TARGETS3, 5, 0.2, seed=7)
    generator = torch.Generator().manual_seed(7)
    got = smooth(
        model, layer, x, TARGETS3, n_samples=5, stdev_spread=0.2, batch_size=batch_size,
        generator=generator,
    )  # fmt: skip
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert expected.abs().max() > 1e-3
    # An int seed: the same noise as a generator seeded with it, at every call.
    for _ in range(2):
        again = smooth(model, layer, x, TARGETS3, n_samples=5, stdev_spread=0.2, generator=7)
        torch.testing.assert_close(again, expected, rtol=1e-4, atol=1e-5)


def test_zero_noise_is_gradcam_plus_plus():
    model = seeded(SmallConvNet)
    layers = [model.features[3], model.features[5]]
    x = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    expected = GradCAMPlusPlus(model, layers)(x, TARGETS3, scale=False, as_tensor=True)
    cam = SmoothGradCAMpp(model, layers, n_samples=3, stdev_spread=0.0, batch_size=4)
    got = cam(x, TARGETS3, scale=False, as_tensor=True)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    noisy = SmoothGradCAMpp(model, layers, n_samples=3, generator=0)(x, TARGETS3, as_tensor=True)
    assert not torch.allclose(noisy, GradCAMPlusPlus(model, layers)(x, TARGETS3, as_tensor=True))


def test_a_generator_object_continues_its_stream():
    model = seeded(SmallConvNet)
    x = torch.randn(1, 3, 10, 10, generator=torch.Generator().manual_seed(3))
    cam = SmoothGradCAMpp(model, [model.features[3]], n_samples=2, generator=torch.Generator())
    first = cam(x, TARGETS3[:1], as_tensor=True)
    assert not torch.equal(first, cam(x, TARGETS3[:1], as_tensor=True))


def test_noisy_copies_go_through_the_model_batch_size_at_a_time():
    model = RowCounter(seeded(SmallConvNet))
    x = torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(4))
    targets = TARGETS3[:2]
    SmoothGradCAMpp(model, [model.inner.features[3]], n_samples=5, batch_size=4)(x, targets)
    assert model.rows == [2, 4, 4, 2]  # the clean pass, then 10 noisy copies


def peak_bytes(n_samples: int, batch_size: int) -> int:
    torch.manual_seed(0)
    model = WideNet(64).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    cam = SmoothGradCAMpp(model, [model.conv], n_samples=n_samples, batch_size=batch_size)
    with PeakTensorBytes() as tracker:
        cam(x, [ClassifierOutputTarget(0)], as_tensor=True)
    return tracker.peak


def test_peak_memory_grows_with_batch_size_not_with_n_samples():
    image_bytes = 3 * 64 * 64 * 4
    few, many = peak_bytes(8, 4), peak_bytes(64, 4)
    assert abs(many - few) < 2 * image_bytes  # 56 more copies cost no more memory
    assert peak_bytes(64, 32) - many > 28 * image_bytes  # 28 more rows per batch do
    assert many < 64 * image_bytes / 4


def test_model_state_is_unchanged():
    model = net_in_training_mode()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    before = snapshot(model)
    maps = SmoothGradCAMpp(model, [model.conv2], n_samples=3, generator=0)(
        x, [ClassifierOutputTarget(1)] * 2
    )
    assert_same_state(before, snapshot(model))
    assert np.isfinite(maps).all()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"n_samples": 0}, ValueError, "n_samples must be a positive int"),
        ({"n_samples": 2.0}, ValueError, "n_samples must be a positive int"),
        ({"stdev_spread": -0.1}, ValueError, "stdev_spread must be a finite number >= 0"),
        ({"stdev_spread": float("nan")}, ValueError, "stdev_spread must be"),
        ({"batch_size": 0}, ValueError, "batch_size must be a positive int"),
        ({"generator": "seed"}, TypeError, "generator must be a torch.Generator, an int"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    model = seeded(SmallConvNet)
    with pytest.raises(error, match=match):
        SmoothGradCAMpp(model, [model.features[3]], **kwargs)
