"""Methods written for grad-cam 1.5.7 run here and give the maps they give there.

Users subclass ``BaseCAM`` and override ``get_cam_weights`` (numpy ``B x C`` weights from
numpy activations and gradients) or ``get_cam_image``; some call ``forward``,
``compute_cam_per_layer``, ``aggregate_multi_layers`` or ``get_target_width_height``.
The oracles: the package's own method of the same formula, and the incumbent's
pipeline written out in numpy (sum over channels, ReLU, per-layer [0, 1] scaling at the
layer's resolution, resize, mean over layers, scaling again).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import rescaled_mean
from torch import nn

from pytorch_grad_cam import (
    KPCA_CAM,
    EigenCAM,
    FinerCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    RefineCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection


class NumpyGradCAM(BaseCAM):
    """GradCAM the incumbent's way: numpy gradients averaged over the positions."""

    def __init__(self, model, target_layers, reshape_transform=None):
        super().__init__(model, target_layers, reshape_transform)

    def get_cam_weights(self, input_tensor, target_layer, target_category, activations, grads):
        assert isinstance(activations, np.ndarray) and isinstance(grads, np.ndarray)
        return np.mean(grads, axis=(2, 3))


class NumpyHiResCAM(BaseCAM):
    """HiResCAM through get_cam_image: activations times gradients, summed."""

    def get_cam_image(
        self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth
    ):
        weighted = grads * activations
        return get_2d_projection(weighted) if eigen_smooth else weighted.sum(axis=1)


class NumpyEigenCAM(BaseCAM):
    """A gradient-free subclass: uses_gradients=False, grads is None."""

    def __init__(self, model, target_layers, reshape_transform=None):
        super().__init__(model, target_layers, reshape_transform, uses_gradients=False)

    def get_cam_image(
        self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth
    ):
        assert grads is None
        return get_2d_projection(activations)


def numpy_pipeline(layer_maps, size):
    """The incumbent's combination: ReLU, scale each layer's map at its resolution and
    resize it, average, scale again (``scale_cam_image`` takes OpenCV's (W, H))."""
    scaled = [scale_cam_image(np.maximum(m, 0), (size[1], size[0])) for m in layer_maps]
    return scale_cam_image(np.mean(np.stack(scaled), axis=0))


def layer_features(model, x):
    with torch.no_grad():
        return model.features(x).numpy()


TARGETS = [ClassifierOutputTarget(c) for c in (1, 3, 0)]


def test_numpy_get_cam_weights_subclass_gives_gradcams_map(gap_net, image_batch):
    expected = GradCAM(gap_net, [gap_net.features])(image_batch, TARGETS)
    legacy = NumpyGradCAM(gap_net, [gap_net.features])(image_batch, TARGETS)
    np.testing.assert_allclose(legacy, expected, atol=1e-6)
    assert legacy.max() == pytest.approx(1.0)


def test_numpy_get_cam_image_subclass_gives_hirescams_map(gap_net, image_batch):
    expected = HiResCAM(gap_net, [gap_net.features])(image_batch, TARGETS)
    legacy = NumpyHiResCAM(gap_net, [gap_net.features])(image_batch, TARGETS)
    np.testing.assert_allclose(legacy, expected, atol=1e-6)


def test_eigen_smooth_of_a_numpy_subclass_uses_get_2d_projection(gap_net, image_batch):
    """The incumbent's eigen_smooth: the plain SVD projection of the weighted activations
    (its sign as numpy's SVD gives it), rectified and scaled."""
    grads = np.stack([gap_net.fc.weight[c].detach().numpy() for c in (1, 3, 0)])
    size = image_batch.shape[2:]
    weighted = grads[:, :, None, None] / np.prod(size) * layer_features(gap_net, image_batch)
    expected = numpy_pipeline([get_2d_projection(weighted)], size)
    legacy = NumpyGradCAM(gap_net, [gap_net.features])(image_batch, TARGETS, eigen_smooth=True)
    np.testing.assert_allclose(legacy, expected, atol=1e-5)


def test_a_gradient_free_numpy_subclass_gets_no_gradients(gap_net, image_batch):
    legacy = NumpyEigenCAM(gap_net, [gap_net.features])(image_batch)
    expected = numpy_pipeline(
        [get_2d_projection(layer_features(gap_net, image_batch))], image_batch.shape[2:]
    )
    np.testing.assert_allclose(legacy, expected, atol=1e-5)


def test_numpy_subclass_on_several_layers_follows_the_incumbents_combination(gap_net, image_batch):
    layers = [gap_net.features[1], gap_net.features[3]]
    single = [NumpyGradCAM(gap_net, [layer])(image_batch, TARGETS) for layer in layers]
    both = NumpyGradCAM(gap_net, layers)(image_batch, TARGETS)
    np.testing.assert_allclose(both, rescaled_mean(*single), atol=1e-6)


def test_a_subclass_calling_super_get_cam_weights_with_numpy(gap_net, image_batch):
    """``super().get_cam_weights(...)`` of a package method answers numpy with numpy."""

    class DoubledGradCAM(GradCAM):
        def get_cam_weights(self, input_tensor, target_layer, target_category, activations, grads):
            weights = super().get_cam_weights(
                input_tensor, target_layer, target_category, activations, grads
            )
            assert isinstance(weights, np.ndarray) and weights.shape == activations.shape[:2]
            return 2 * weights

    expected = GradCAM(gap_net, [gap_net.features])(image_batch, TARGETS)
    np.testing.assert_allclose(
        DoubledGradCAM(gap_net, [gap_net.features])(image_batch, TARGETS), expected, atol=1e-6
    )


@pytest.mark.parametrize("method", [GradCAM, GradCAMPlusPlus, XGradCAM, LayerCAM, HiResCAM])
def test_package_methods_answer_the_numpy_hooks(method, gap_net, image_batch):
    """get_cam_image(...) with numpy activations and gradients equals the pipeline's own
    layer map (before the ReLU, at the layer's resolution)."""
    cam = method(gap_net, [gap_net.features])
    activations = layer_features(gap_net, image_batch)
    x = image_batch.clone().requires_grad_(True)
    features = gap_net.features(x)
    scores = gap_net.fc(features.mean(dim=(2, 3)))
    grads = torch.autograd.grad(scores[torch.arange(3), [1, 3, 0]].sum(), features)[0].numpy()
    image = cam.get_cam_image(image_batch, gap_net.features, TARGETS, activations, grads, False)
    expected = cam(image_batch, TARGETS, scale=False)
    np.testing.assert_allclose(np.maximum(image, 0), expected, rtol=1e-5, atol=1e-6)


def test_forward_compute_cam_per_layer_and_aggregate(gap_net, image_batch):
    layers = [gap_net.features[1], gap_net.features[3]]
    cam = GradCAM(gap_net, layers)
    expected = cam(image_batch, TARGETS)
    np.testing.assert_allclose(cam.forward(image_batch, TARGETS), expected, atol=1e-7)
    per_layer = cam.compute_cam_per_layer(image_batch, TARGETS, False)
    assert [m.shape for m in per_layer] == [(3, 1, 12, 10)] * 2
    for layer, layer_map in zip(layers, per_layer):
        np.testing.assert_allclose(
            layer_map[:, 0], GradCAM(gap_net, [layer])(image_batch, TARGETS), atol=1e-6
        )
    np.testing.assert_allclose(cam.aggregate_multi_layers(per_layer), expected, atol=1e-6)
    assert cam.get_target_width_height(image_batch) == (10, 12)
    smoothed = cam.forward_augmentation_smoothing(image_batch, TARGETS)
    np.testing.assert_allclose(smoothed, cam(image_batch, TARGETS, aug_smooth=True), atol=1e-6)


def test_overridden_entry_points_are_called(gap_net, image_batch):
    """A subclass that overrides forward, aggregate_multi_layers or
    get_target_width_height has its version used by ``cam(...)``."""
    calls = []

    class Custom(GradCAM):
        def forward(self, input_tensor, targets, eigen_smooth=False):
            calls.append("forward")
            return super().forward(input_tensor, targets, eigen_smooth)

        def aggregate_multi_layers(self, cam_per_target_layer):
            calls.append(len(cam_per_target_layer))
            return np.max(np.concatenate(cam_per_target_layer, axis=1), axis=1)

        def get_target_width_height(self, input_tensor):
            return 5, 6

    layers = [gap_net.features[1], gap_net.features[3]]
    maps = Custom(gap_net, layers)(image_batch, TARGETS)
    assert calls == ["forward", 2]
    assert maps.shape == (3, 6, 5)
    # Each layer's map (at the input's size here) scaled, resized to 5 x 6, then the
    # subclass's maximum over the layers.
    scaled = [
        scale_cam_image(GradCAM(gap_net, [layer])(image_batch, TARGETS, scale=False), (5, 6))
        for layer in layers
    ]
    np.testing.assert_allclose(maps, np.maximum(*scaled), atol=1e-6)


def test_base_cam_takes_the_incumbents_constructor_arguments(gap_net, image_batch):
    """compute_input_gradient fills the input's .grad for a subclass's hooks; detach=False
    hands the hooks tensors with their graph."""
    seen = {}

    class Inspecting(BaseCAM):
        def __init__(self, model, target_layers):
            super().__init__(model, target_layers, None, True, True, None, False)

        def get_cam_weights(self, input_tensor, target_layers, targets, activations, grads):
            seen["input_grad"] = input_tensor.grad
            seen["types"] = (type(activations), type(grads))
            return grads.mean(dim=(2, 3))

    maps = Inspecting(gap_net, [gap_net.features])(image_batch, TARGETS)
    np.testing.assert_allclose(
        maps, GradCAM(gap_net, [gap_net.features])(image_batch, TARGETS), atol=1e-6
    )
    assert seen["types"] == (torch.Tensor, torch.Tensor)
    x = image_batch.clone().requires_grad_(True)
    scores = gap_net(x)[torch.arange(3), [1, 3, 0]].sum()
    (expected_grad,) = torch.autograd.grad(scores, x)
    torch.testing.assert_close(seen["input_grad"], expected_grad)
    assert image_batch.grad is None  # the caller's tensor is left alone


def test_constructor_positions_match_the_incumbent(gap_net):
    """``FEM(model, layers, None, 3)``, ``KPCA_CAM(model, layers, None, "cosine")`` and
    ``RefineCAM(...)``'s default base method, as grad-cam 1.5.7 reads them."""
    from pytorch_grad_cam import FEM, AblationCAM
    from pytorch_grad_cam.ablation_layer import AblationLayerVit

    layers = [gap_net.features]
    assert FEM(gap_net, layers, None, 3).k == 3
    assert KPCA_CAM(gap_net, layers, None, "cosine").kernel == "cosine"
    assert KPCA_CAM(gap_net, layers, None, "rbf", 0.5).gamma == 0.5
    vit_layer = AblationLayerVit()
    ablation = AblationCAM(gap_net, layers, None, vit_layer, 16, 0.5)
    assert ablation.ablation_layer is vit_layer
    assert (ablation.batch_size, ablation.ratio_channels_to_ablate) == (16, 0.5)
    assert type(RefineCAM(gap_net, layers).base).__mro__[1] is GradCAMPlusPlus
    assert isinstance(FinerCAM(gap_net, layers, None, GradCAMPlusPlus).base, GradCAMPlusPlus)
    score = ScoreCAM(gap_net, layers)
    score.batch_size = 8  # an attribute, as the older docs show
    assert score.batch_size == 8


def test_finer_and_refine_take_the_incumbents_call_positions(gap_net, image_batch):
    finer = FinerCAM(gap_net, [gap_net.features])
    positional = finer(image_batch, None, False, 0.5, [1], None)
    keyword = finer(image_batch, alpha=0.5, comparison_categories=[1])
    np.testing.assert_allclose(positional, keyword)
    assert [t.alpha for t in finer.finer_targets] == [0.5] * 3
    np.testing.assert_allclose(finer.forward(image_batch, None, False, 0.5, [1]), keyword)
    plain = finer(image_batch, None, False, 0)  # alpha 0: the base method's own map
    top = gap_net(image_batch).argmax(1)
    np.testing.assert_allclose(
        plain,
        GradCAM(gap_net, [gap_net.features])(
            image_batch, [ClassifierOutputTarget(int(c)) for c in top]
        ),
        atol=1e-6,
    )
    refine = RefineCAM(gap_net, [gap_net.features[1], gap_net.features[3]], None, GradCAM)
    np.testing.assert_allclose(
        refine(image_batch, TARGETS, True), refine.forward(image_batch, TARGETS, True)
    )


class TinyConvTokens(nn.Module):
    """A CvT-like model: the layer outputs tokens, and the reshape transform applies a
    LayerNorm (a module with parameters) before laying them out."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 2, stride=2)
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(torch.relu(self.mix(tokens)).mean(1))


def test_a_reshape_transform_with_parameters(image_batch):
    torch.manual_seed(0)
    model = TinyConvTokens().eval()
    norm = nn.LayerNorm(8)

    def transform(tokens):
        normed = norm(tokens)
        return normed.transpose(1, 2).reshape(tokens.shape[0], 8, 6, 5)

    maps = GradCAM(model, [model.mix], reshape_transform=transform)(image_batch, TARGETS)
    assert maps.shape == (3, 12, 10) and np.isfinite(maps).all()
    assert maps.reshape(3, -1).max(axis=1).tolist() == [1.0, 1.0, 1.0]
    assert norm.weight.grad is None
    eigen = EigenCAM(model, [model.mix], reshape_transform=transform)(image_batch)
    assert np.isfinite(eigen).all() and eigen.max() == pytest.approx(1.0)
