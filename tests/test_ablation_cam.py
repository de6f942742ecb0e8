"""AblationCAM: the fast tail path and the fallback both equal a straightforward reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
import ttach
from conftest import TinyViT
from helpers import assert_same_state, snapshot
from torch import nn

from pytorch_grad_cam import AblationCAM
from pytorch_grad_cam.ablation_cam import FULL_FORWARD_PATH, TAIL_PATH
from pytorch_grad_cam.utils.maps import (
    first_principal_component,
    resize_maps,
    scale_to_unit_range,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform


def reference_weights(model, layer, x, categories, zero_channels, to_maps=lambda a: a):
    """A full forward per (image, channel), batched: ``w_k = (y - y_k) / y``.

    ``zero_channels(output, channels)`` returns the layer's output with channel
    ``channels[r]`` removed from row ``r``; ``to_maps`` turns the layer's output into
    B x C x H x W activations. Returns the weights (B x C) and the activations.
    """
    captured = []
    handle = layer.register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        y = model(x)[range(len(categories)), categories]
    handle.remove()
    activations = to_maps(captured[-1])  # a layer that runs twice: its last output
    batch, channels = activations.shape[:2]
    weights = torch.zeros(batch, channels, dtype=activations.dtype)
    for start in range(0, channels, 32):
        ks = torch.arange(start, min(start + 32, channels))
        repeated = x.repeat(len(ks), *[1] * (x.ndim - 1))  # row r: image r % B, ks[r // B]
        row_channels = ks.repeat_interleave(batch)
        handle = layer.register_forward_hook(
            lambda m, i, o, row_channels=row_channels: zero_channels(o, row_channels)
        )
        with torch.no_grad():
            y_k = model(repeated)[range(len(repeated)), categories * len(ks)]
        handle.remove()
        weights[:, ks] = ((y.repeat(len(ks)) - y_k) / y.repeat(len(ks))).view(len(ks), batch).T
    return weights, activations


def weighted_map(weights, activations, size):
    cam = torch.relu((weights[:, :, None, None] * activations).sum(1)).float()
    return resize_maps(cam, size)


def reference_ablation_cam(model, layer, x, categories, zero_channels, to_maps=lambda a: a):
    weights, activations = reference_weights(model, layer, x, categories, zero_channels, to_maps)
    return weighted_map(weights, activations, x.shape[2:])


def zero_conv_channel(output, channels):
    output = output.clone()
    output[torch.arange(len(channels)), channels] = 0
    return output


def ablation_map(model, layer, x, categories, **kwargs):
    cam = AblationCAM(model, [layer], **kwargs)
    targets = [ClassifierOutputTarget(c) for c in categories]
    maps = cam(x, targets, scale=False, as_tensor=True)
    return maps, cam


def assert_maps_close(got, expected, tolerance=1e-5):
    scale = float(expected.abs().max())
    assert scale > 0, "the reference map is all zeros: the test would prove nothing"
    torch.testing.assert_close(got, expected, rtol=0, atol=tolerance * scale)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).double().eval()


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 64, 64, dtype=torch.float64)


RESNET_CATEGORIES = [1, 7]


@pytest.fixture(scope="module")
def resnet_reference(resnet, images):
    return reference_weights(
        resnet, resnet.layer4[-1], images, RESNET_CATEGORIES, zero_conv_channel
    )


def test_resnet18_tail_path_equals_the_reference(resnet, images, resnet_reference):
    maps, cam = ablation_map(resnet, resnet.layer4[-1], images, RESNET_CATEGORIES, batch_size=48)
    assert cam.ablation_paths == [TAIL_PATH]
    assert_maps_close(maps, weighted_map(*resnet_reference, images.shape[2:]))


def test_residual_connection_spanning_the_target_layer(resnet, images):
    # layer4[-1].conv1 sits inside a block whose identity branch skips over it: the
    # tail must be fed the recorded block input as well as the ablated conv output.
    layer = resnet.layer4[-1].conv1
    image = images[:1]
    maps, cam = ablation_map(resnet, layer, image, [4], batch_size=100)
    assert cam.ablation_paths == [TAIL_PATH]
    expected = reference_ablation_cam(resnet, layer, image, [4], zero_conv_channel)
    assert_maps_close(maps, expected)


def test_batch_size_changes_nothing_and_is_settable(resnet, images):
    reference, cam = ablation_map(resnet, resnet.layer4[-1], images, [3, 5], batch_size=512)
    rows_seen = []
    handle = resnet.fc.register_forward_hook(lambda m, i, o: rows_seen.append(o.shape[0]))
    try:
        cam.batch_size = 100
        again = cam(images, [ClassifierOutputTarget(3), ClassifierOutputTarget(5)], scale=False)
    finally:
        handle.remove()
    np.testing.assert_allclose(again, reference.numpy(), rtol=0, atol=1e-6)
    # 1 forward of the batch, 1 tail check on the batch plus one repeated row, then one
    # ablation per channel that is not all zero (zeroing those changes nothing), in
    # chunks of 100.
    captured = []
    handle = resnet.layer4[-1].register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        resnet(images)
    handle.remove()
    nonzero_channels = int(captured[0].flatten(2).ne(0).any(dim=2).sum())
    assert 512 < nonzero_channels < 2 * 512  # the skip is exercised
    assert rows_seen[:2] == [2, 3]
    assert max(rows_seen[2:]) == 100 and sum(rows_seen[2:]) == nonzero_channels


def grid_transform(tokens):
    return vit_reshape_transform(tokens, height=4, width=4)


def test_transformer_block_with_reshape_transform():
    torch.manual_seed(0)
    model = TinyViT().double().eval()
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    layer = model.blocks[-1].norm1
    categories = [0, 2, 4]
    cam = AblationCAM(model, [layer], reshape_transform=grid_transform, batch_size=20)
    maps = cam(x, [ClassifierOutputTarget(c) for c in categories], scale=False, as_tensor=True)
    assert cam.ablation_paths == [TAIL_PATH]

    def zero_patch_channel(output, channels):  # patch tokens only; the class token is kept
        output = output.clone()
        output[torch.arange(len(channels)), 1:, channels] = 0
        return output

    expected = reference_ablation_cam(
        model, layer, x, categories, zero_patch_channel, to_maps=grid_transform
    )
    assert_maps_close(maps, expected)


class DataDependentNet(nn.Module):
    """``if`` on a tensor value: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        a = self.features(x)
        if a.sum() > 0:
            a = a * 2
        return self.head(a.mean(dim=(2, 3)))


class BatchSizeBeforeTargetNet(nn.Module):
    """Reads the batch size before the target layer and reshapes with it after."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(6 * 8 * 8, 4)

    def forward(self, x):
        batch = x.shape[0]
        return self.head(self.features(x).reshape(batch, -1))


class SizesBeforeTargetNet(nn.Module):
    """Reads ``B, H, W, C`` before a channels-last target layer (like timm's Swin), with
    ``H == W`` equal to the batch size: only ``B`` is the batch size."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 4, stride=4), nn.ReLU())
        self.block = nn.Flatten(1)  # the target layer: B x H x W x C -> B x H*W*C
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        channels_last = self.features(x).permute(0, 2, 3, 1)
        batch, height, width, channels = channels_last.shape
        flat = self.block(channels_last)
        return self.head(flat.reshape(batch, height, width, channels).mean(dim=(1, 2)))


class SharedLayerNet(nn.Module):
    """The target layer runs twice."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(3, 4)

    def forward(self, x):
        return self.head(torch.relu(self.conv(torch.relu(self.conv(x)))).mean(dim=(2, 3)))


@pytest.mark.parametrize(
    "net, path",
    [
        (DataDependentNet, FULL_FORWARD_PATH),  # cannot be traced
        # ``batch = x.shape[0]`` before the layer is replaced by each chunk's row count
        # (EfficientNet's ``x.view(bs, -1)`` after its pooling is this case).
        (BatchSizeBeforeTargetNet, TAIL_PATH),
    ],
)
def test_each_path_is_taken_where_it_should_and_is_correct(net, path):
    model = net().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    categories = [1, 2]
    maps, cam = ablation_map(model, model.features, x, categories, batch_size=4)
    assert cam.ablation_paths == [path]
    expected = reference_ablation_cam(model, model.features, x, categories, zero_conv_channel)
    assert_maps_close(maps, expected)


def test_sizes_read_before_the_layer_that_equal_the_batch_size_are_kept():
    model = SizesBeforeTargetNet().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)  # 2 images, a 2 x 2 grid

    def to_maps(flat):  # B x H*W*C -> B x C x H x W
        return flat.reshape(flat.shape[0], 2, 2, 6).permute(0, 3, 1, 2)

    def zero_channel(flat, channels):
        maps = to_maps(flat).clone()
        maps[torch.arange(len(channels)), channels] = 0
        return maps.permute(0, 2, 3, 1).reshape(flat.shape)

    maps, cam = ablation_map(model, model.block, x, [1, 2], reshape_transform=to_maps)
    assert cam.ablation_paths == [TAIL_PATH]
    weights, activations = reference_weights(model, model.block, x, [1, 2], zero_channel, to_maps)
    assert_maps_close(maps, weighted_map(weights, activations, x.shape[2:]))


def test_a_layer_called_twice_uses_the_full_forward_path():
    model = SharedLayerNet().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    maps, cam = ablation_map(model, model.conv, x, [0, 3], batch_size=2)
    assert cam.ablation_paths == [FULL_FORWARD_PATH]

    # In the full-forward path both calls are ablated (the hook fires each time), as in
    # a reference that hooks the layer; the activations are the last call's output.
    expected = reference_ablation_cam(model, model.conv, x, [0, 3], zero_conv_channel)
    assert_maps_close(maps, expected)


def test_ratio_channels_to_ablate_keeps_the_other_weights_at_zero(resnet, images, resnet_reference):
    weights, activations = resnet_reference
    partial, _ = ablation_map(
        resnet,
        resnet.layer4[-1],
        images,
        RESNET_CATEGORIES,
        batch_size=128,
        ratio_channels_to_ablate=0.25,
    )
    # Each image ablates its 128 channels of largest total |activation|; the others
    # keep weight 0.
    magnitude = activations.abs().sum(dim=(2, 3))
    kept = torch.zeros_like(weights, dtype=torch.bool)
    kept.scatter_(1, magnitude.topk(128, dim=1).indices, True)
    expected = weighted_map(torch.where(kept, weights, 0.0), activations, images.shape[2:])
    assert_maps_close(partial, expected)
    assert not torch.allclose(expected, weighted_map(weights, activations, images.shape[2:]))


def test_model_state_unchanged_also_when_a_target_raises_during_ablation():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    model.train()
    model.conv1.weight.grad = torch.ones_like(model.conv1.weight)
    before = snapshot(model)
    x = torch.randn(2, 3, 32, 32)
    AblationCAM(model, [model.layer4[-1]], batch_size=64)(x, [ClassifierOutputTarget(1)] * 2)
    assert_same_state(before, snapshot(model))

    calls = []

    def fails_during_ablation(output):
        calls.append(1)
        if len(calls) > 5:
            raise RuntimeError("target failed mid-way")
        return output[0]

    for layer in (model.layer4[-1], model.layer3[0].conv1):
        calls.clear()
        with pytest.raises(RuntimeError, match="mid-way"):
            AblationCAM(model, [layer], batch_size=8)(x, [fails_during_ablation] * 2)
        assert_same_state(before, snapshot(model))


def test_bad_settings_name_the_argument(resnet, images):
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        AblationCAM(resnet, [resnet.layer4[-1]], batch_size=0)(images)
    with pytest.raises(ValueError, match=r"ratio_channels_to_ablate must be in \(0, 1\]"):
        AblationCAM(resnet, [resnet.layer4[-1]], ratio_channels_to_ablate=1.5)(images)


def test_a_reshape_transform_that_computes_values_is_rejected():
    torch.manual_seed(0)
    model = TinyViT().eval()

    def normalising_transform(tokens):
        return grid_transform(tokens) * 2.0

    cam = AblationCAM(model, [model.blocks[-1].norm1], reshape_transform=normalising_transform)
    with pytest.raises(ValueError, match="only rearranges or drops elements"):
        cam(torch.randn(1, 3, 16, 16))


def test_several_layers_3d_and_smoothing_follow_the_definition():
    torch.manual_seed(0)
    model = (
        nn.Sequential(
            nn.Conv3d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv3d(4, 5, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
            nn.Linear(5, 3),
        )
        .double()
        .eval()
    )
    x = torch.randn(2, 1, 4, 6, 6, dtype=torch.float64)
    categories = [0, 2]
    targets = [ClassifierOutputTarget(c) for c in categories]

    def zero_channels_3d(output, channels):
        output = output.clone()
        output[torch.arange(len(channels)), channels] = 0
        return output

    expected, expected_scaled, expected_eigen = [], [], []
    for layer in (model[1], model[3]):
        weights, activations = reference_weights(model, layer, x, categories, zero_channels_3d)
        weighted = weights[:, :, None, None, None] * activations
        cam = torch.relu(weighted.sum(1)).float()
        expected.append(resize_maps(cam, x.shape[2:]))
        expected_scaled.append(resize_maps(scale_to_unit_range(cam), x.shape[2:]))
        eigen = torch.relu(first_principal_component(weighted)).float()
        expected_eigen.append(resize_maps(scale_to_unit_range(eigen), x.shape[2:]))
        single = AblationCAM(model, [layer], batch_size=3)
        assert_maps_close(single(x, targets, scale=False, as_tensor=True), expected[-1])
        assert single.ablation_paths == [TAIL_PATH]

    both = AblationCAM(model, [model[1], model[3]], batch_size=7)
    # Each layer's map scaled at its resolution, resized, averaged, scaled again.
    scaled = scale_to_unit_range(torch.stack(expected_scaled).mean(0))
    torch.testing.assert_close(both(x, targets, as_tensor=True), scaled, atol=1e-5, rtol=0)
    assert both.ablation_paths == [TAIL_PATH, TAIL_PATH]
    # eigen_smooth: the principal component of the same weighted activations.
    torch.testing.assert_close(
        both(x, targets, eigen_smooth=True, as_tensor=True),
        scale_to_unit_range(torch.stack(expected_eigen).mean(0)),
        atol=1e-4,
        rtol=0,
    )
    # aug_smooth with one identity augmentation changes nothing.
    identity = AblationCAM(model, [model[3]], tta_transforms=ttach.Compose([ttach.Multiply([1.0])]))
    torch.testing.assert_close(
        identity(x, targets, aug_smooth=True, as_tensor=True),
        scale_to_unit_range(expected[1]),
        atol=1e-5,
        rtol=0,
    )


def test_progress_bar_only_when_asked(capsys):
    model = DataDependentNet().eval()
    x = torch.randn(1, 3, 8, 8)
    targets = [ClassifierOutputTarget(0)]
    quiet = AblationCAM(model, [model.features], batch_size=4)(x, targets)
    assert capsys.readouterr().err == ""
    shown = AblationCAM(model, [model.features], batch_size=4, progress_bar=True)(x, targets)
    err = capsys.readouterr().err
    assert "AblationCAM" in err and "2/2" in err  # 6 channels in batches of 4
    np.testing.assert_array_equal(quiet, shown)


def test_a_layer_with_only_zero_channels_gives_zero_maps_without_forwards():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    ).eval()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(-1.0)  # every activation after the ReLU is 0
    rows = []
    model[0].register_forward_pre_hook(lambda m, inputs: rows.append(inputs[0].shape[0]))
    maps = AblationCAM(model, [model[1]])(torch.randn(2, 3, 6, 6), [ClassifierOutputTarget(0)] * 2)
    assert np.isfinite(maps).all() and (maps == 0).all()
    assert rows == [2]  # the one forward of the batch, no ablations
