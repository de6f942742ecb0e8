"""FEM, KPCA_CAM, SegEigenCAM, FinerCAM, ShapleyCAM and RefineCAM against their formulas,
computed here independently (mostly in float64 numpy) on models whose maps are known."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import GapLinearNet, TinyViT
from helpers import assert_same_state, rescaled_mean, snapshot
from torch import nn

from pytorch_grad_cam.eigen_cam import EigenCAM
from pytorch_grad_cam.eigen_grad_cam import EigenGradCAM
from pytorch_grad_cam.fem import FEM
from pytorch_grad_cam.finer_cam import FinerCAM
from pytorch_grad_cam.grad_cam import GradCAM
from pytorch_grad_cam.kpca_cam import KPCA_CAM
from pytorch_grad_cam.refine_cam import RefineCAM
from pytorch_grad_cam.score_cam import ScoreCAM
from pytorch_grad_cam.seg_eigen_cam import SegEigenCAM
from pytorch_grad_cam.shapley_cam import ShapleyCAM
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputReST,
    ClassifierOutputTarget,
    FinerWeightedTarget,
    SemanticSegmentationTarget,
)

CATEGORIES = [0, 3, 1]


def raw(cam, x, targets=None, **kwargs) -> torch.Tensor:
    """The unscaled maps, as a tensor."""
    return cam(x, targets, scale=False, as_tensor=True, **kwargs)


def classifier_targets(categories=CATEGORIES):
    return [ClassifierOutputTarget(c) for c in categories]


def features_of(model: GapLinearNet, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.features(x).double().numpy()


def relu(array: np.ndarray) -> np.ndarray:
    return np.maximum(array, 0.0)


def unit_range(maps: np.ndarray) -> np.ndarray:
    flat = maps.reshape(len(maps), -1)
    low, high = flat.min(1, keepdims=True), flat.max(1, keepdims=True)
    spread = np.where(high > low, high - low, 1.0)
    return np.where(high > low, (flat - low) / spread, 0.0).reshape(maps.shape)


def numpy_principal_component(features: np.ndarray) -> np.ndarray:
    """``X v_1`` of each image's centred positions x channels matrix, signed to agree with
    the centred channel sum."""
    maps = []
    for image in features:
        x = image.reshape(image.shape[0], -1).T
        x = x - x.mean(axis=0)
        projection = x @ np.linalg.svd(x, full_matrices=False)[2][0]
        if projection @ x.sum(axis=1) < 0:
            projection = -projection
        maps.append(projection.reshape(image.shape[1:]))
    return np.stack(maps)


def close(got: torch.Tensor, expected: np.ndarray, rtol=1e-5, atol=1e-6) -> None:
    torch.testing.assert_close(
        got, torch.as_tensor(expected, dtype=torch.float32), rtol=rtol, atol=atol
    )


# ------------------------------------------------------------------------------ FEM
@pytest.mark.parametrize("k", [2.0, 0.5])
def test_fem_is_channel_mean_times_outlier_mask(gap_net, image_batch, k):
    a = features_of(gap_net, image_batch)
    mean = a.mean(axis=(2, 3), keepdims=True)
    threshold = mean + k * a.std(axis=(2, 3), keepdims=True)  # population std
    assert np.abs(a - threshold).min() > 1e-4  # no value on the edge of the mask
    expected = relu((mean * (a >= threshold)).sum(axis=1))
    assert (expected > 0).any() and (expected == 0).any()
    cam = FEM(gap_net, [gap_net.features]) if k == 2.0 else FEM(gap_net, [gap_net.features], k=k)
    close(raw(cam, image_batch), expected)
    # Class-agnostic: the targets change nothing.
    close(raw(cam, image_batch, classifier_targets()), expected)


def test_fem_mask_on_handmade_channels(gap_net):
    activations = torch.zeros(1, 3, 4, 4)
    activations[0, 0] = 5.0  # constant: std 0, every value is at the threshold (>=)
    activations[0, 1, 2, 3] = 16.0  # one spike: mean 1, std sqrt(15) < 15
    activations[0, 2] = torch.arange(16.0).view(4, 4)  # mean 7.5, std 4.61: nothing above 2 std
    weighted = FEM(gap_net, [gap_net.features]).weighted_activations(activations, None, None)
    expected = torch.zeros(1, 3, 4, 4)
    expected[0, 0] = 5.0
    expected[0, 1, 2, 3] = 1.0
    torch.testing.assert_close(weighted, expected)


@pytest.mark.parametrize("k", ["2", True, float("nan"), None])
def test_fem_rejects_a_bad_k(gap_net, k):
    with pytest.raises(ValueError, match="k must be a finite number"):
        FEM(gap_net, [gap_net.features], k=k)


# ------------------------------------------------------------------------------ KPCA-CAM
def test_kpca_linear_kernel_is_eigencam(gap_net, image_batch):
    kpca = raw(KPCA_CAM(gap_net, [gap_net.features], kernel="linear"), image_batch)
    eigen = raw(EigenCAM(gap_net, [gap_net.features]), image_batch)
    torch.testing.assert_close(kpca, eigen, rtol=1e-4, atol=1e-5)
    close(kpca, relu(numpy_principal_component(features_of(gap_net, image_batch))), 1e-4, 1e-5)


def numpy_kernel(x: np.ndarray, kernel: str, gamma: float, coef0: float, degree: int):
    """Kernel matrix of the rows of ``x`` (positions x channels), entry by entry."""
    n = len(x)
    k = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            dot = x[i] @ x[j]
            if kernel == "linear":
                k[i, j] = dot
            elif kernel == "poly":
                k[i, j] = (gamma * dot + coef0) ** degree
            elif kernel == "sigmoid":
                k[i, j] = np.tanh(gamma * dot + coef0)
            elif kernel == "rbf":
                k[i, j] = np.exp(-gamma * np.sum((x[i] - x[j]) ** 2))
            else:
                norms = np.linalg.norm(x[i]) * np.linalg.norm(x[j])
                k[i, j] = dot / norms if norms > 0 else 0.0
    return k


def numpy_kernel_pc(features, kernel, gamma=None, coef0=1.0, degree=3) -> np.ndarray:
    maps = []
    for image in features:
        x = image.reshape(image.shape[0], -1).T
        n = len(x)
        k = numpy_kernel(x, kernel, 1.0 / x.shape[1] if gamma is None else gamma, coef0, degree)
        centring = np.eye(n) - np.full((n, n), 1.0 / n)
        values, vectors = np.linalg.eigh(centring @ k @ centring)
        projection = vectors[:, -1] * np.sqrt(max(values[-1], 0.0))
        channel_sum = x.sum(axis=1)
        if projection @ (channel_sum - channel_sum.mean()) < 0:
            projection = -projection
        maps.append(projection.reshape(image.shape[1:]))
    return relu(np.stack(maps))


@pytest.mark.parametrize(
    "kernel, options",
    [
        ("sigmoid", {}),
        ("sigmoid", {"gamma": 0.05, "coef0": -0.5}),
        ("rbf", {}),
        ("poly", {"gamma": 0.2, "coef0": 0.5, "degree": 2}),
        ("cosine", {}),
        ("linear", {}),
    ],
)
def test_kpca_kernels_against_numpy(kernel, options):
    torch.manual_seed(2)
    model = GapLinearNet().eval()
    x = torch.randn(2, 3, 6, 5)
    cam = KPCA_CAM(model, [model.features], kernel=kernel, **options)
    expected = numpy_kernel_pc(features_of(model, x), kernel, **options)
    assert (expected > 0).any()
    close(raw(cam, x), expected, rtol=1e-3, atol=1e-4 * expected.max())
    # Always the kernel principal component, whatever eigen_smooth and the targets say.
    close(raw(cam, x, [ClassifierOutputTarget(1)] * 2, eigen_smooth=True), expected, 1e-3, 1e-4)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"kernel": "gaussian"}, "kernel must be one of"),
        ({"gamma": -1.0}, "gamma must be a positive number"),
        ({"gamma": "auto"}, "gamma must be a positive number"),
        ({"coef0": float("inf")}, "coef0 must be a finite number"),
        ({"degree": 0}, "degree must be a positive int"),
        ({"degree": 2.5}, "degree must be a positive int"),
    ],
)
def test_kpca_rejects_bad_arguments(gap_net, options, message):
    with pytest.raises(ValueError, match=message):
        KPCA_CAM(gap_net, [gap_net.features], **options)


# ------------------------------------------------------------------------------ SegEigenCAM
class TinySegNet(nn.Module):
    """Two conv + ReLU layers, then a 1 x 1 conv head: ``S_c = sum_k W_ck A_k + b_c``."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Conv2d(6, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_seg_eigen_cam_is_principal_component_of_activations_times_gradient_magnitudes():
    torch.manual_seed(4)
    model = TinySegNet().eval()
    x = torch.randn(2, 3, 8, 7)
    masks = [np.zeros((8, 7), dtype=np.float32) for _ in range(2)]
    masks[0][2:6, 1:4] = 1.0
    masks[1][:, 4:] = 1.0
    categories = [2, 0]
    targets = [SemanticSegmentationTarget(c, m) for c, m in zip(categories, masks)]
    # d(sum_ij mask_ij S_c,ij)/dA_k,ij = W_ck mask_ij.
    w = model.head.weight.detach().double().numpy()[:, :, 0, 0]
    gradients = np.stack([w[c][:, None, None] * m[None] for c, m in zip(categories, masks)])
    assert (gradients < 0).any()  # the absolute value of the gradients matters
    a = features_of(model, x)
    expected = relu(numpy_principal_component(a * np.abs(gradients)))
    close(raw(SegEigenCAM(model, [model.features]), x, targets), expected, 1e-4, 1e-5)
    signed = relu(numpy_principal_component(a * gradients))
    close(raw(EigenGradCAM(model, [model.features]), x, targets), signed, 1e-4, 1e-5)


def test_seg_eigen_cam_needs_targets_for_score_maps():
    model = TinySegNet().eval()
    with pytest.raises(ValueError, match="needs scores of shape B x K"):
        SegEigenCAM(model, [model.features])(torch.randn(1, 3, 8, 7))


# ------------------------------------------------------------------------------ ShapleyCAM
def test_shapley_cam_equals_gradcam_when_the_score_is_linear_in_the_activations(
    gap_net, image_batch
):
    targets = classifier_targets()
    shapley = raw(ShapleyCAM(gap_net, [gap_net.features]), image_batch, targets)
    torch.testing.assert_close(
        shapley, raw(GradCAM(gap_net, [gap_net.features]), image_batch, targets)
    )


def test_shapley_cam_default_target_is_rest_in_closed_form(gap_net, image_batch):
    # y = z_c + p_c, z = W m + b, m = spatial mean of A (N positions), p = softmax(z).
    a = features_of(gap_net, image_batch)
    n = a[0, 0].size
    m = a.mean(axis=(2, 3))
    w = gap_net.fc.weight.detach().double().numpy()
    b = gap_net.fc.bias.detach().double().numpy()
    z = m @ w.T + b
    weights = []
    for image in range(len(a)):
        p = np.exp(z[image] - z[image].max())
        p /= p.sum()
        c = int(np.argmax(z[image]))
        e = np.eye(len(p))[c]
        dy_dz = e + p[c] * (e - p)
        d2y_dz2 = p[c] * (np.outer(e - p, e - p) - (np.diag(p) - np.outer(p, p)))
        dy_dm = w.T @ dy_dz
        hessian_m = w.T @ d2y_dz2 @ w
        # g = dy_dm / N at every position; (H A)_k = (hessian_m m)_k / N at every position.
        weights.append((dy_dm - 0.5 * hessian_m @ m[image]) / n)
        assert np.abs(hessian_m @ m[image]).max() > 1e-3  # the second-order term is there
    expected = relu(np.einsum("bk,bkij->bij", np.stack(weights), a))
    cam = ShapleyCAM(gap_net, [gap_net.features])
    close(raw(cam, image_batch), expected, 1e-4, 1e-6)
    top = z.argmax(axis=1).tolist()
    close(raw(cam, image_batch, [ClassifierOutputReST(c) for c in top]), expected, 1e-4, 1e-6)


class SoftplusHeadNet(nn.Module):
    """Target layer, then a 1 x 1 conv, softplus, global average pool and linear head:
    the score has non-zero second derivatives in the activations for any target."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.mix = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 3)

    def tail(self, activations: torch.Tensor) -> torch.Tensor:
        return self.fc(F.softplus(self.mix(activations)).mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.features(x))


def test_shapley_cam_against_the_full_hessian():
    torch.manual_seed(5)
    model = SoftplusHeadNet().eval()
    x = torch.randn(2, 3, 5, 4)
    categories = [2, 0]
    reference = copy.deepcopy(model).double()
    with torch.no_grad():
        activations = model.features(x).double()
    expected = []
    for image, category in enumerate(categories):
        a = activations[image : image + 1]

        def score(a, category=category):
            return reference.tail(a)[0, category]

        g = torch.func.grad(score)(a)
        hessian = torch.func.hessian(score)(a).reshape(a.numel(), a.numel())
        ha = (hessian @ a.reshape(-1)).reshape(a.shape)
        assert ha.abs().max() > 0.05 * g.abs().max()  # the second-order term matters
        w = (g - 0.5 * ha).mean(dim=(2, 3), keepdim=True)
        expected.append(torch.relu((w * a).sum(dim=1))[0])
    cam = ShapleyCAM(model, [model.features])
    close(
        raw(cam, x, classifier_targets(categories)),
        torch.stack(expected).detach().numpy(),
        1e-4,
        1e-6,
    )


def test_shapley_cam_layers_are_independent():
    # One layer's Hessian-vector product has no cross terms with the other layer's.
    torch.manual_seed(6)
    model = SoftplusHeadNet().eval()
    x = torch.randn(2, 3, 5, 4)
    targets = classifier_targets([1, 2])
    both = ShapleyCAM(model, [model.features[0], model.mix])(x, targets, as_tensor=True)
    first = ShapleyCAM(model, [model.features[0]])(x, targets, as_tensor=True)
    second = ShapleyCAM(model, [model.mix])(x, targets, as_tensor=True)
    torch.testing.assert_close(both, rescaled_mean(first, second))


def test_shapley_cam_on_a_vision_transformer():
    # Fused attention kernels have no second derivative; ShapleyCAM uses the math kernel.
    torch.manual_seed(7)
    model = TinyViT().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the inferred token reshape is announced
        maps = ShapleyCAM(model, [model.blocks[-1].norm1])(torch.randn(2, 3, 16, 16))
    assert maps.shape == (2, 16, 16) and np.isfinite(maps).all()
    assert maps.reshape(2, -1).max(axis=1).tolist() == [1.0, 1.0]


class Double(torch.autograd.Function):
    """``2 x``, with no derivative of its own."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError("Double has no derivative")


class FirstOrderOnlySquare(torch.autograd.Function):
    """``x^2`` whose gradient, ``Double(x) * grad``, cannot itself be differentiated."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return Double.apply(x) * grad


class FirstOrderOnlyNet(GapLinearNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(FirstOrderOnlySquare.apply(self.features(x)).mean(dim=(2, 3)))


def test_shapley_cam_says_when_the_model_has_no_second_derivative(image_batch):
    model = FirstOrderOnlyNet().eval()
    cam = ShapleyCAM(model, [model.features])
    with pytest.raises(
        RuntimeError, match=r"second derivatives .* target_layers\[0\].*Double has no derivative"
    ):
        cam(image_batch, classifier_targets())
    GradCAM(model, [model.features])(image_batch, classifier_targets())  # first order is fine


# ------------------------------------------------------------------------------ FinerCAM
def expected_finer(model, x, mains, ranks, alpha):
    """GradCAM of y_c - alpha mean_d y_d on GAP + linear, comparison classes ranked here."""
    a = features_of(model, x)
    with torch.no_grad():
        scores = model(x).double().numpy()
    w = model.fc.weight.detach().double().numpy()
    weights, compared = [], []
    for image, c in enumerate(mains):
        others = [j for j in range(scores.shape[1]) if j != c]
        by_distance = sorted(others, key=lambda j: (abs(scores[image, j] - scores[image, c]), j))
        d = [by_distance[r - 1] for r in ranks]
        compared.append(d)
        weights.append((w[c] - alpha * w[d].mean(axis=0)) / a[0, 0].size)
    return relu(np.einsum("bk,bkij->bij", np.stack(weights), a)), compared


def test_finer_cam_with_alpha_zero_is_the_base_method(gap_net, image_batch):
    finer = raw(FinerCAM(gap_net, [gap_net.features]), image_batch, alpha=0)
    torch.testing.assert_close(finer, raw(GradCAM(gap_net, [gap_net.features]), image_batch))


def test_finer_cam_formula_with_the_default_ranks(gap_net, image_batch):
    with torch.no_grad():
        top = gap_net(image_batch).argmax(dim=1).tolist()
    expected, compared = expected_finer(gap_net, image_batch, top, [1, 2, 3], 1.0)
    cam = FinerCAM(gap_net, [gap_net.features])
    close(raw(cam, image_batch), expected)
    assert [t.main_category for t in cam.finer_targets] == top
    assert [t.comparison_categories for t in cam.finer_targets] == compared
    assert all(t.alpha == 1.0 for t in cam.finer_targets)
    assert cam.outputs is not None and cam.outputs.shape == (3, 5)


def test_finer_cam_call_arguments_override_the_constructor(gap_net, image_batch):
    expected, _ = expected_finer(gap_net, image_batch, [4, 2, 0], [1, 3], 0.5)
    cam = FinerCAM(gap_net, [gap_net.features])
    got = raw(cam, image_batch, target_idx=[4, 2, 0], comparison_categories=[1, 3], alpha=0.5)
    close(got, expected)
    close(
        raw(
            cam, image_batch, classifier_targets([4, 2, 0]), alpha=0.5, comparison_categories=[1, 3]
        ),
        expected,
    )
    expected_2, _ = expected_finer(gap_net, image_batch, [2, 2, 2], [2], 2.0)
    close(raw(cam, image_batch, target_idx=2, comparison_categories=2, alpha=2), expected_2)
    with pytest.warns(DeprecationWarning, match="target_idx"):
        close(
            raw(cam, image_batch, target_category=2, comparison_categories=[2], alpha=2), expected_2
        )


def test_finer_cam_uses_given_finer_targets_and_any_target_based_base_method(gap_net, image_batch):
    given = [FinerWeightedTarget(c, [4], 0.7) for c in CATEGORIES]
    cam = FinerCAM(gap_net, [gap_net.features])
    torch.testing.assert_close(
        raw(cam, image_batch, given), raw(GradCAM(gap_net, [gap_net.features]), image_batch, given)
    )
    assert cam.finer_targets == given
    score_finer = FinerCAM(gap_net, [gap_net.features], base_method=ScoreCAM, batch_size=4)
    assert score_finer.base.batch_size == 4
    got = raw(score_finer, image_batch)
    expected = raw(ScoreCAM(gap_net, [gap_net.features]), image_batch, score_finer.finer_targets)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"base_method": EigenCAM}, ValueError, "does not use targets"),
        ({"base_method": "GradCAM"}, TypeError, "base_method must be a CAM class"),
    ],
)
def test_finer_cam_rejects_bad_constructor_arguments(gap_net, options, error, message):
    with pytest.raises(error, match=message):
        FinerCAM(gap_net, [gap_net.features], **options)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"alpha": "1"}, "alpha must be a finite number"),
        ({"comparison_categories": [0, 1]}, "ranks of at least 1"),
        ({"comparison_categories": []}, "non-empty list of ranks"),
    ],
)
def test_finer_cam_rejects_bad_alpha_and_ranks(gap_net, image_batch, options, message):
    with pytest.raises(ValueError, match=message):
        FinerCAM(gap_net, [gap_net.features])(image_batch, **options)


def test_finer_cam_rejects_bad_call_arguments(gap_net, image_batch):
    cam = FinerCAM(gap_net, [gap_net.features])
    with pytest.raises(ValueError, match="asks for rank 5, but the model has 5 classes"):
        cam(image_batch, comparison_categories=[1, 5])
    with pytest.raises(
        ValueError, match=r"target_idx must be a class index, or one per image \(3\)"
    ):
        cam(image_batch, target_idx=[1, 2])
    with pytest.raises(ValueError, match="must lie in 0 to 4"):
        cam(image_batch, target_idx=7)
    with pytest.raises(TypeError, match="targets=.* or target_idx=.*, not both"):
        cam(image_batch, classifier_targets(), target_idx=1)
    mask = np.ones((12, 10), dtype=np.float32)
    with pytest.raises(TypeError, match=r"targets\[0\] is a SemanticSegmentationTarget"):
        cam(image_batch, [SemanticSegmentationTarget(0, mask)] * 3)
    segmentation = TinySegNet().eval()
    with pytest.raises(ValueError, match="output must have shape B x K"):
        FinerCAM(segmentation, [segmentation.features])(torch.randn(1, 3, 8, 7))


# ------------------------------------------------------------------------------ RefineCAM
class PyramidNet(nn.Module):
    """A full-resolution layer, a half-resolution layer, then GAP + linear."""

    def __init__(self):
        super().__init__()
        self.shallow = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.deep = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.deep(self.shallow(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("base_method", [GradCAM, ShapleyCAM, EigenCAM])
def test_refine_cam_with_one_layer_is_the_base_method(gap_net, image_batch, base_method):
    refine = RefineCAM(gap_net, [gap_net.features], base_method=base_method)
    base = base_method(gap_net, [gap_net.features])
    torch.testing.assert_close(raw(refine, image_batch), raw(base, image_batch))
    if base_method is GradCAM:
        np.testing.assert_array_equal(refine(image_batch), base(image_batch))
    assert refine.outputs is not None


def test_refine_cam_is_the_deep_map_gated_by_the_shallow_map():
    torch.manual_seed(8)
    model = PyramidNet().eval()
    x = torch.randn(2, 3, 8, 6)
    targets = classifier_targets([1, 3])
    # GradCAM's per-layer maps, each from its own call, resized to the input.
    shallow = raw(GradCAM(model, [model.shallow]), x, targets).double().numpy()
    deep = raw(GradCAM(model, [model.deep]), x, targets).double().numpy()
    expected = deep * unit_range(shallow)
    assert 0 < (expected > 0).mean() < (deep > 0).mean() + 1e-9
    cam = RefineCAM(model, [model.shallow, model.deep], base_method=GradCAM)
    close(raw(cam, x, targets), expected, 1e-5, 1e-7)
    close(cam(x, targets, as_tensor=True), unit_range(expected), 1e-5, 1e-6)
    maps = cam(x, targets, aug_smooth=True)
    assert maps.shape == (2, 8, 6) and maps.min() >= 0 and maps.max() <= 1


def test_refine_cam_passes_arguments_to_the_base_method(gap_net, image_batch):
    cam = RefineCAM(gap_net, [gap_net.features], base_method=ScoreCAM, batch_size=4)
    assert cam.base.batch_size == 4
    torch.testing.assert_close(
        raw(cam, image_batch, classifier_targets()),
        raw(ScoreCAM(gap_net, [gap_net.features]), image_batch, classifier_targets()),
    )


@pytest.mark.parametrize("base_method", [RefineCAM, FinerCAM, GradCAM, "GradCAM"])
def test_refine_cam_rejects_a_base_that_is_not_a_one_layer_method(gap_net, base_method):
    if base_method is GradCAM:
        base_method = GradCAM(gap_net, [gap_net.features])  # an instance, not the class
    with pytest.raises(TypeError, match="base_method"):
        RefineCAM(gap_net, [gap_net.features], base_method=base_method)


# ------------------------------------------------------------------------------ all of them
ALL = [
    (FEM, {}),
    (KPCA_CAM, {}),
    (SegEigenCAM, {}),
    (FinerCAM, {}),
    (ShapleyCAM, {}),
    (RefineCAM, {"base_method": GradCAM}),
]


class SmallNetInTrainingMode(nn.Module):
    """Batch norm and dropout in training mode (one block in eval mode), a gradient set."""

    def __init__(self):
        super().__init__()
        block = [nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU()]
        self.block1 = nn.Sequential(*block)
        self.block2 = nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8))
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(8, 5))
        self.train()
        self.block1.eval()  # mixed flags must come back as they were
        self.block1[0].weight.grad = torch.full_like(self.block1[0].weight, 0.25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.block2(self.block1(x))).mean(dim=(2, 3)))


@pytest.mark.parametrize("method, options", ALL, ids=[m.__name__ for m, _ in ALL])
def test_model_state_is_unchanged(method, options):
    torch.manual_seed(9)
    model = SmallNetInTrainingMode()
    x = torch.randn(2, 3, 16, 12)
    before = snapshot(model)
    layers = [model.block1, model.block2] if method is RefineCAM else [model.block2]
    with method(model, layers, **options) as cam:
        maps = cam(x, [ClassifierOutputTarget(3)] * 2)
    assert_same_state(before, snapshot(model))
    assert maps.shape == (2, 16, 12) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1 and maps.max() > 0
