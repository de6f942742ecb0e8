"""metrics.arcc: Complexity, Coherency and ARCC against their formulas on hand-made maps
and methods."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import GapLinearNet
from helpers import RegionMean

from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.metrics import ROADCombined
from pytorch_grad_cam.metrics.arcc import (
    ARCC,
    Coherency,
    Complexity,
    batch_pearson_coherency,
    harmonic_mean,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget


def pearson01(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The oracle: numpy's correlation coefficient of each pair of rows, as (r + 1) / 2."""
    rows = zip(a.reshape(len(a), -1), b.reshape(len(b), -1))
    return np.array([(np.corrcoef(x, y)[0, 1] + 1) / 2 for x, y in rows])


# --------------------------------------------------------------------- Complexity
def test_complexity_is_the_mean_absolute_map_value():
    maps = np.zeros((3, 4, 4), dtype=np.float32)
    maps[0, :2, :2] = 1  # a quarter of the image lit
    maps[1] = 0.5
    maps[2, 0, 0], maps[2, 3, 3] = -0.8, 0.8  # |.|: 1.6 over 16 pixels
    expected = [0.25, 0.5, 0.1]
    got = Complexity()(maps)
    assert got.dtype == np.float32 and got.shape == (3,)
    np.testing.assert_allclose(got, expected, atol=1e-7)
    np.testing.assert_allclose(Complexity()(grayscale_cams=torch.from_numpy(maps)), expected, 1e-7)
    np.testing.assert_allclose(Complexity()(cams=maps), expected, atol=1e-7)
    with pytest.raises(ValueError, match=r"add the batch axis, e.g. grayscale_cams\[None\]"):
        Complexity()(np.ones(5))
    with pytest.raises(ValueError, match="NaN"):
        Complexity()(np.full((1, 2, 2), np.nan))


# --------------------------------------------------------------------- Pearson
def test_batch_pearson_coherency_is_the_correlation_mapped_to_zero_one():
    rng = np.random.default_rng(0)
    a = rng.random((4, 6, 5))
    b = rng.random((4, 6, 5)) + 0.3 * a
    np.testing.assert_allclose(batch_pearson_coherency(a, b), pearson01(a, b), atol=1e-6)
    np.testing.assert_allclose(batch_pearson_coherency(a, 3 * a + 2), 1.0, atol=1e-6)
    np.testing.assert_allclose(batch_pearson_coherency(a, 1 - a), 0.0, atol=1e-6)
    torch_result = batch_pearson_coherency(torch.from_numpy(a), torch.from_numpy(b))
    np.testing.assert_allclose(torch_result, pearson01(a, b), atol=1e-6)
    constant = a.copy()
    constant[2] = 0.7
    result = batch_pearson_coherency(constant, b)
    assert np.isnan(result[2]) and np.isfinite(result[[0, 1, 3]]).all()
    with pytest.raises(ValueError, match="as many maps of as many pixels"):
        batch_pearson_coherency(a, b[:, :3])


# --------------------------------------------------------------------- Coherency
class SupportMap:
    """A method whose map is where the image is nonzero: multiplying the image by its own
    map changes nothing, so its Coherency is 1. Records the targets it is given."""

    def __init__(self):
        self.targets = []

    def __call__(self, input_tensor, targets=None):
        self.targets.append(targets)
        return (input_tensor.abs().sum(dim=1) > 0).float().numpy()


class ChannelMean:
    """A method whose map is the min-max scaled channel mean of |image|."""

    def __call__(self, input_tensor, targets=None):
        values = input_tensor.abs().mean(dim=1)
        flat = values.flatten(1)
        low, high = flat.min(dim=1)[0], flat.max(dim=1)[0]
        return ((values - low[:, None, None]) / (high - low)[:, None, None]).numpy()


def sparse_images(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 8, 8, generator=generator)
    return x * (torch.rand(2, 1, 8, 8, generator=generator) > 0.5)


def test_a_method_invariant_to_its_own_map_has_coherency_one():
    model = GapLinearNet().eval()
    x = sparse_images()
    method = SupportMap()
    maps = method(x)
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(3)]
    np.testing.assert_allclose(Coherency()(x, maps, targets, model, method), [1.0, 1.0], 1e-6)
    assert method.targets[-1] == targets  # the caller's targets, passed through
    # targets=None: each image's top class on the image itself, as its raw score.
    Coherency()(x, maps, None, model, method)
    with torch.no_grad():
        top = model(x).argmax(dim=1).tolist()
    resolved = method.targets[-1]
    assert [type(t) for t in resolved] == [ClassifierOutputTarget] * 2
    assert [int(t.category) for t in resolved] == top


def test_coherency_of_any_method_is_the_correlation_with_its_map_of_the_masked_image():
    model = GapLinearNet().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    method = ChannelMean()
    maps = method(x)
    again = method(x * torch.from_numpy(maps)[:, None])
    expected = pearson01(maps, again)
    assert (expected < 0.999).all()  # not invariant: the oracle is not trivially 1
    got = Coherency()(x, maps, None, model, method)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(
        Coherency()(input_tensor=x, cams=maps, targets=None, model=model, base_method=method),
        expected,
        atol=1e-6,
    )


def test_coherency_of_grad_cam_uses_the_same_class_for_both_maps():
    torch.manual_seed(1)
    model = GapLinearNet().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    cam = GradCAM(model, [model.features[-1]])
    maps = cam(x)
    with torch.no_grad():
        top = model(x).argmax(dim=1).tolist()
    targets = [ClassifierOutputTarget(c) for c in top]
    again = cam(x * torch.from_numpy(maps)[:, None], targets)
    expected = pearson01(maps, again)
    assert np.isfinite(expected).all() and (expected < 0.99).all()
    np.testing.assert_allclose(Coherency()(x, maps, None, model, cam), expected, atol=1e-5)
    np.testing.assert_allclose(Coherency()(x, maps, targets, model, cam), expected, atol=1e-5)


def test_coherency_errors_name_the_argument():
    model = GapLinearNet().eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"grayscale_cams must be in \[0, 1\]"):
        Coherency()(x, np.full((1, 8, 8), 2.0), None, model, SupportMap())
    with pytest.raises(TypeError, match="base_method must be the CAM object"):
        Coherency()(x, np.ones((1, 8, 8)), None, model, "gradcam")
    with pytest.raises(ValueError, match=r"base_method returned maps of shape \(1, 4, 4\)"):
        Coherency()(x, np.ones((1, 8, 8)), None, model, lambda images, targets: np.ones((1, 4, 4)))


# --------------------------------------------------------------------- ARCC
def test_harmonic_mean_and_its_limits():
    got = harmonic_mean(np.array([0.5, 0.0, 0.8, np.nan]), np.array([0.25, 0.9, 0.8, 0.5]))
    np.testing.assert_allclose(got[:3], [2 / (2 + 4), 0.0, 0.8], atol=1e-7)
    assert np.isnan(got[3])


def region_case():
    """RegionMean (score 0: the mean over an 8 x 8 square) on a 20 x 20 image that is 1
    on the square; maps that rank the square first, and the inverse."""
    region = torch.zeros(20, 20)
    region[5:13, 5:13] = 1
    x = region.expand(1, 3, 20, 20).clone()
    ys, xs = torch.meshgrid(torch.arange(20.0), torch.arange(20.0), indexing="ij")
    distance = ((ys - 8.5) ** 2 + (xs - 8.5) ** 2).sqrt()
    right = ((region + 0.5 * (1 - distance / distance.max())) / 1.5)[None].numpy()
    return RegionMean(region).eval(), x, right, 1 - right


def test_arcc_is_the_harmonic_mean_of_coherency_simplicity_and_scaled_road():
    model, x, right, inverted = region_case()
    x2, maps = x.repeat(2, 1, 1, 1), np.concatenate([right, inverted])
    targets = [ClassifierOutputTarget(0)] * 2
    method = ChannelMean()
    percentiles = [16, 50, 84]
    arcc = ARCC(method, road_percentiles=percentiles)(x2, maps, targets, model)

    coherency = pearson01(maps, method(x2 * torch.from_numpy(maps)[:, None]))
    complexity = np.abs(maps).reshape(2, -1).mean(axis=1)
    road = ROADCombined(percentiles=percentiles)(x2, maps, targets, model)
    road01 = np.clip(road + 0.5, 0, 1)
    expected = 3 / (1 / coherency + 1 / (1 - complexity) + 1 / road01)
    assert arcc.dtype == np.float32 and arcc.shape == (2,)
    np.testing.assert_allclose(arcc, expected, rtol=1e-5)
    # The right ranking keeps the square's score when the rest is imputed and loses it
    # when the square is: its ROAD term is near the top of [0, 1], the inverse's near 0.
    assert road01[0] > 0.75 and road01[1] < 0.25
    assert arcc[0] > arcc[1]
    by_keyword = ARCC(method, percentiles)(input_tensor=x2, cams=maps, targets=targets, model=model)
    np.testing.assert_array_equal(by_keyword, arcc)


def test_arcc_defaults_and_a_map_that_lights_everything():
    model, x, right, _ = region_case()
    metric = ARCC(ChannelMean())
    assert metric.road_percentiles == [20, 40, 60, 80]
    everything = 0.99 + 0.01 * right  # lights every pixel: Complexity ~ 1
    got = metric(x, everything, [ClassifierOutputTarget(0)], model)
    simplicity = 1 - everything.mean()
    assert simplicity < 0.01
    # A harmonic mean is at most 3 x its smallest term: ARCC is dragged to ~0.
    assert 0 < got[0] <= 3 * simplicity + 1e-6
