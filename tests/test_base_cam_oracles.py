"""Each gradient method against its formula, on models whose CAM is known in closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
import ttach
from conftest import GapLinearNet, class_weight_cam
from torch import nn

from pytorch_grad_cam import (
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.maps import first_principal_component, scale_to_unit_range
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

ALL_METHODS = [
    GradCAM,
    HiResCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    XGradCAM,
    LayerCAM,
    EigenCAM,
    EigenGradCAM,
]
CATEGORIES = [0, 3, 1]


def raw_map(method, model, x, categories=CATEGORIES, **kwargs):
    cam = method(model, target_layers=[model.features])
    targets = [ClassifierOutputTarget(c) for c in categories]
    return cam(x, targets, scale=False, as_tensor=True, **kwargs)


def features_and_class_weights(model, x, categories=CATEGORIES):
    """On GAP + linear, dy_c/dA_k,ij = w_ck / (H W) at every position."""
    with torch.no_grad():
        activations = model.features(x)
    positions = activations[0, 0].numel()
    weights = model.fc.weight.detach()[list(categories)] / positions  # B x C
    return activations, weights[:, :, None, None]


def test_gradcam_equals_class_weight_cam_up_to_scale(gap_net, image_batch):
    expected = class_weight_cam(gap_net, image_batch, CATEGORIES)
    positions = image_batch.shape[2] * image_batch.shape[3]
    got = raw_map(GradCAM, gap_net, image_batch)
    torch.testing.assert_close(got * positions, expected, rtol=1e-5, atol=1e-6)
    scaled = GradCAM(gap_net, [gap_net.features])(image_batch, CATEGORIES_AS_TARGETS())
    np.testing.assert_allclose(scaled, scale_to_unit_range(expected).numpy(), atol=1e-6)
    assert scaled.min() == 0.0 and scaled.reshape(3, -1).max(axis=1).tolist() == [1.0] * 3


def CATEGORIES_AS_TARGETS():
    return [ClassifierOutputTarget(c) for c in CATEGORIES]


@pytest.mark.parametrize("method", [HiResCAM, XGradCAM])
def test_gradient_constant_over_positions_makes_method_equal_gradcam(method, gap_net, image_batch):
    # HiResCAM: sum_k g_k * A_k with g_k constant = GradCAM. XGradCAM: the normalised
    # activation weights sum to 1, so w_k = g_k = GradCAM's weight.
    torch.testing.assert_close(
        raw_map(method, gap_net, image_batch), raw_map(GradCAM, gap_net, image_batch)
    )


def test_layercam_keeps_only_positive_gradients(gap_net, image_batch):
    activations, gradients = features_and_class_weights(gap_net, image_batch)
    expected = torch.relu((torch.relu(gradients) * activations).sum(1))
    torch.testing.assert_close(raw_map(LayerCAM, gap_net, image_batch), expected)


def test_elementwise_rectifies_each_channel_before_the_sum(gap_net, image_batch):
    activations, gradients = features_and_class_weights(gap_net, image_batch)
    expected = torch.relu(gradients * activations).sum(1)
    torch.testing.assert_close(raw_map(GradCAMElementWise, gap_net, image_batch), expected)


def test_gradcam_plusplus_formula(gap_net, image_batch):
    activations, g = features_and_class_weights(gap_net, image_batch)
    g = g.expand_as(activations)
    sum_a = activations.sum(dim=(2, 3), keepdim=True)
    denominator = 2 * g**2 + sum_a * g**3
    alpha = torch.where(denominator != 0, g**2 / denominator, torch.zeros_like(g))
    weights = (alpha * torch.relu(g)).sum(dim=(2, 3), keepdim=True)
    expected = torch.relu((weights * activations).sum(1))
    torch.testing.assert_close(raw_map(GradCAMPlusPlus, gap_net, image_batch), expected)


def test_eigen_methods_are_first_principal_component(gap_net, image_batch):
    activations, gradients = features_and_class_weights(gap_net, image_batch)
    for method, features in [(EigenCAM, activations), (EigenGradCAM, activations * gradients)]:
        expected = torch.relu(numpy_principal_component(features))
        torch.testing.assert_close(
            raw_map(method, gap_net, image_batch), expected, rtol=1e-4, atol=1e-5
        )


def numpy_principal_component(features: torch.Tensor) -> torch.Tensor:
    """Independent implementation of the documented rule, in float64 numpy."""
    maps = []
    for image in features.double().numpy():
        x = image.reshape(image.shape[0], -1).T
        x = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        projection = x @ vt[0]
        if projection @ x.sum(axis=1) < 0:
            projection = -projection
        maps.append(projection.reshape(image.shape[1:]))
    return torch.tensor(np.stack(maps), dtype=torch.float32)


def test_principal_component_sign_rule_on_random_features():
    torch.manual_seed(3)
    for _ in range(20):
        features = torch.randn(2, 6, 5, 4)
        projection = first_principal_component(features)
        centred_sum = features.sum(1) - features.sum(1).mean(dim=(1, 2), keepdim=True)
        assert ((projection * centred_sum).sum(dim=(1, 2)) >= 0).all()
        torch.testing.assert_close(
            projection, numpy_principal_component(features), rtol=1e-4, atol=1e-4
        )
        # Flipping the features' sign flips the channel sum too: the map follows it.
        torch.testing.assert_close(
            first_principal_component(-features), -projection, rtol=1e-4, atol=1e-4
        )


class SquareDetector(nn.Module):
    """Channel 0 lights up where the input's red channel is bright; channel 1 on blue.

    Stride-4 features, so the maps go through the resize as well.
    """

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 2, 1, bias=False), nn.ReLU(), nn.AvgPool2d(4))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.features[0].weight.copy_(
                torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]).view(2, 3, 1, 1)
            )
            self.fc.weight.copy_(torch.tensor([[1.0, -0.5], [-0.5, 1.0]]))

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def square_image():
    """A red square at the top left and a blue square at the bottom right, 64 x 64."""
    x = torch.zeros(1, 3, 64, 64)
    x[0, 0, 8:24, 8:24] = 1.0
    x[0, 2, 40:56, 36:52] = 1.0
    return x


@pytest.mark.parametrize("method", [m for m in ALL_METHODS if m is not EigenCAM])
def test_known_object_lights_up(method):
    model = SquareDetector().eval()
    x = square_image()
    red_box = (slice(8, 24), slice(8, 24))
    blue_box = (slice(40, 56), slice(36, 52))
    cam = method(model, target_layers=[model.features])
    for category, inside, other in [(0, red_box, blue_box), (1, blue_box, red_box)]:
        grayscale = cam(x, [ClassifierOutputTarget(category)])[0]
        outside = np.ones_like(grayscale, dtype=bool)
        outside[inside] = False
        # 4 x 4 feature cells per square, blurred at the edges by the bilinear resize.
        assert grayscale[inside].mean() > 0.85
        assert grayscale[other].max() < 0.05
        assert grayscale[outside].mean() < 0.1


def test_eigen_cam_is_positive_on_the_salient_object():
    # One bright object on a dark background: whatever sign the SVD returns, the
    # object must come out positive and the background zero.
    model = SquareDetector().eval()
    x = torch.zeros(1, 3, 64, 64)
    x[0, 0, 20:44, 20:44] = 1.0
    x[0, 2] = 0.05
    grayscale = EigenCAM(model, [model.features])(x)[0]
    assert grayscale[20:44, 20:44].mean() > 0.85
    assert grayscale[:12].max() == 0.0


@pytest.mark.parametrize("method", ALL_METHODS)
def test_batch_equals_per_image_with_a_target_per_image(method):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(3, 3, 64, 64)
    targets = [ClassifierOutputTarget(c) for c in (2, 7, 2)]
    cam = method(model, target_layers=[model.layer3[-1], model.layer4[-1]])
    batch = cam(x, targets)
    for index in range(3):
        single = cam(x[index : index + 1], [targets[index]])
        np.testing.assert_allclose(batch[index], single[0], atol=1e-5)
    assert not np.allclose(batch[0], batch[1])


def test_several_layers_average_their_scaled_maps_then_rescale(gap_net, image_batch):
    """As grad-cam 1.5.7: each layer's map in [0, 1], their mean scaled to [0, 1] again."""
    layers = [gap_net.features[1], gap_net.features[3]]
    targets = CATEGORIES_AS_TARGETS()
    both = GradCAM(gap_net, layers)(image_batch, targets)
    each = [GradCAM(gap_net, [layer])(image_batch, targets) for layer in layers]
    mean = (each[0] + each[1]) / 2
    low = mean.min(axis=(1, 2), keepdims=True)
    high = mean.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(both, (mean - low) / (high - low), atol=1e-6)
    assert both.reshape(len(both), -1).max(axis=1).tolist() == [1.0] * len(both)
    raw = GradCAM(gap_net, layers)(image_batch, targets, scale=False)
    raw_each = [GradCAM(gap_net, [layer])(image_batch, targets, scale=False) for layer in layers]
    np.testing.assert_allclose(raw, (raw_each[0] + raw_each[1]) / 2, rtol=1e-5, atol=1e-7)


def test_targets_none_explains_the_top_class(gap_net, image_batch):
    cam = GradCAM(gap_net, [gap_net.features])
    top = gap_net(image_batch).argmax(1).tolist()
    np.testing.assert_allclose(
        cam(image_batch), cam(image_batch, [ClassifierOutputTarget(c) for c in top])
    )
    torch.testing.assert_close(cam.outputs, gap_net(image_batch))


def test_volumes_3d_match_the_class_weight_cam():
    torch.manual_seed(0)
    model = GapLinearNet(dims=3).eval()
    x = torch.randn(2, 3, 4, 6, 5)
    positions = 4 * 6 * 5
    got = raw_map(GradCAM, model, x, categories=[1, 2])
    torch.testing.assert_close(got * positions, class_weight_cam(model, x, [1, 2]))
    for method in ALL_METHODS:
        maps = method(model, [model.features])(x, [ClassifierOutputTarget(1)] * 2)
        assert maps.shape == (2, 4, 6, 5)
        assert maps.reshape(2, -1).max(1).tolist() == [1.0, 1.0]


def test_signals_1d_match_the_class_weight_cam():
    """B x C x L inputs (#452 elsewhere: the output size was taken from the wrong tensor)."""
    torch.manual_seed(0)
    model = GapLinearNet(dims=1).eval()
    x = torch.randn(2, 3, 30)
    got = raw_map(GradCAM, model, x, categories=[1, 2])
    assert got.shape == (2, 30)
    torch.testing.assert_close(got * 30, class_weight_cam(model, x, [1, 2]))
    for method in ALL_METHODS:
        maps = method(model, [model.features])(x, [ClassifierOutputTarget(1)] * 2)
        assert maps.shape == (2, 30)
        assert maps.reshape(2, -1).max(1).tolist() == [1.0, 1.0]


def test_1d_maps_are_resized_linearly_to_the_signal():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), nn.AvgPool1d(4), nn.Flatten(), nn.Linear(16, 3)
    ).eval()
    x = torch.randn(1, 2, 16)
    raw = GradCAM(model, [model[2]])(x, [ClassifierOutputTarget(0)], scale=False, as_tensor=True)
    with torch.no_grad():
        pooled = model[:3](x)  # 1 x 4 x 4
    gradient = model[4].weight[0].view(1, 4, 4)  # the linear row, unflattened
    small = torch.relu((gradient.mean(dim=2, keepdim=True) * pooled).sum(dim=1))
    expected = torch.nn.functional.interpolate(
        small[:, None], size=16, mode="linear", align_corners=False
    )[:, 0]
    torch.testing.assert_close(raw, expected)


def test_signals_have_no_augmentations():
    model = GapLinearNet(dims=1).eval()
    with pytest.raises(ValueError, match="a B x C x L signal has no such augmentations"):
        GradCAM(model, [model.features])(torch.randn(2, 3, 30), aug_smooth=True)


def test_an_image_without_its_batch_axis_is_not_taken_for_a_signal(gap_net):
    with pytest.raises(ValueError, match=r"first convolution is 2-D.*unsqueeze\(0\)"):
        GradCAM(gap_net, [gap_net.features])(torch.randn(3, 12, 10))


def test_3d_maps_are_resized_trilinearly_to_the_input():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool3d(2), nn.Flatten(), nn.Linear(128, 3)
    ).eval()
    x = torch.randn(1, 1, 4, 8, 8)
    raw = GradCAM(model, [model[2]])(x, [ClassifierOutputTarget(0)], scale=False, as_tensor=True)
    with torch.no_grad():
        pooled = model[:3](x)  # 1 x 4 x 2 x 4 x 4
    gradient = model[4].weight[0].view(1, 4, 2, 4, 4)  # the linear row, unflattened
    low_res = torch.relu((gradient.mean(dim=(2, 3, 4), keepdim=True) * pooled).sum(1))
    expected = nn.functional.interpolate(
        low_res[:, None], size=(4, 8, 8), mode="trilinear", align_corners=False
    )[:, 0]
    assert raw.shape == (1, 4, 8, 8)
    torch.testing.assert_close(raw, expected.detach())


def test_aug_smooth_is_the_mean_of_deaugmented_passes(gap_net, image_batch):
    cam = GradCAM(gap_net, [gap_net.features])
    targets = CATEGORIES_AS_TARGETS()
    expected = []
    for transformer in ttach.Compose([ttach.HorizontalFlip(), ttach.Multiply([0.9, 1.0, 1.1])]):
        augmented = transformer.augment_image(image_batch)
        maps = torch.from_numpy(cam(augmented, targets)).unsqueeze(1)
        expected.append(transformer.deaugment_mask(maps).squeeze(1))
    assert len(expected) == 6
    smoothed = cam(image_batch, targets, aug_smooth=True)
    np.testing.assert_allclose(smoothed, torch.stack(expected).mean(0).numpy(), atol=1e-6)
    torch.testing.assert_close(cam.outputs, gap_net(image_batch))


def test_tta_transforms_replace_the_default_set(gap_net, image_batch):
    targets = CATEGORIES_AS_TARGETS()
    identity = ttach.Compose([ttach.Multiply([1.0])])
    plain = GradCAM(gap_net, [gap_net.features])(image_batch, targets)
    smoothed = GradCAM(gap_net, [gap_net.features], tta_transforms=identity)(
        image_batch, targets, aug_smooth=True
    )
    np.testing.assert_allclose(smoothed, plain, atol=1e-7)
    flip_only = ttach.Compose([ttach.HorizontalFlip()])
    flipped = GradCAM(gap_net, [gap_net.features], tta_transforms=flip_only)(
        image_batch, targets, aug_smooth=True
    )
    mirrored = GradCAM(gap_net, [gap_net.features])(image_batch.flip(3), targets)[..., ::-1]
    np.testing.assert_allclose(flipped, (plain + mirrored) / 2, atol=1e-6)


def test_eigen_smooth_uses_the_principal_component_of_weighted_activations(gap_net, image_batch):
    activations, gradients = features_and_class_weights(gap_net, image_batch)
    expected = torch.relu(numpy_principal_component(activations * gradients))
    got = raw_map(GradCAM, gap_net, image_batch, eigen_smooth=True)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_scale_false_and_as_tensor(gap_net, image_batch):
    cam = GradCAM(gap_net, [gap_net.features])
    targets = CATEGORIES_AS_TARGETS()
    raw = cam(image_batch, targets, scale=False, as_tensor=True)
    assert isinstance(raw, torch.Tensor) and raw.dtype == torch.float32
    assert not raw.requires_grad
    scaled = cam(image_batch, targets)
    assert isinstance(scaled, np.ndarray) and scaled.dtype == np.float32
    np.testing.assert_allclose(scale_to_unit_range(raw).numpy(), scaled, atol=1e-7)
    assert float(raw.max()) > 1e-3 and float(raw.max()) != pytest.approx(1.0)


def test_a_map_with_no_signal_is_zeros_not_nan(gap_net, image_batch):
    def constant_target(output):
        return output.sum() * 0.0

    maps = GradCAM(gap_net, [gap_net.features])(image_batch, [constant_target] * 3)
    assert np.isfinite(maps).all() and (maps == 0).all()
    with torch.no_grad():
        gap_net.fc.weight.zero_()
    for method in ALL_METHODS:
        maps = method(gap_net, [gap_net.features])(image_batch, CATEGORIES_AS_TARGETS())
        assert np.isfinite(maps).all()
        if method not in (EigenCAM,):
            assert (maps == 0).all()
