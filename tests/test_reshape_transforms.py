"""Reshape transforms: round trips from a known ``B x C x H x W`` grid through tokens."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from pytorch_grad_cam import AblationCAM, GradCAM
from pytorch_grad_cam.layer_layout import InferredReshapeWarning
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.reshape_transforms import (
    channels_last_to_first,
    infer_token_grid,
    looks_channels_last,
    swinT_reshape_transform,
    tokens_to_grid,
    vit_reshape_transform,
)


def grid(batch=2, channels=3, height=4, width=5) -> torch.Tensor:
    """A grid whose every value is distinct and tells its position:
    ``1000 b + 100 c + 10 i + j``."""
    b, c, i, j = torch.meshgrid(
        torch.arange(batch),
        torch.arange(channels),
        torch.arange(height),
        torch.arange(width),
        indexing="ij",
    )
    return (1000 * b + 100 * c + 10 * i + j).float()


def to_tokens(feature_grid: torch.Tensor) -> torch.Tensor:
    """``B x C x H x W`` -> ``B x H*W x C``, patches in row-major order (token ``i W + j``)."""
    batch, channels, height, width = feature_grid.shape
    tokens = torch.empty(batch, height * width, channels)
    for i in range(height):
        for j in range(width):
            tokens[:, i * width + j, :] = feature_grid[:, :, i, j]
    return tokens


def with_leading_tokens(tokens: torch.Tensor, count: int) -> torch.Tensor:
    extra = torch.full((tokens.shape[0], count, tokens.shape[2]), -7.0)
    extra += torch.arange(count, dtype=torch.float32).view(1, count, 1)
    return torch.cat([extra, tokens], dim=1)


# --------------------------------------------------------------------- ViT
@pytest.mark.parametrize("leading", [1, 4, 0], ids=["class-token", "4-extra-tokens", "none"])
@pytest.mark.parametrize("height, width", [(4, 5), (3, 3), (1, 6)])
def test_vit_round_trip(leading, height, width):
    expected = grid(height=height, width=width)
    tokens = with_leading_tokens(to_tokens(expected), leading)
    assert tokens.shape == (2, leading + height * width, 3)
    result = vit_reshape_transform(tokens, height=height, width=width)
    assert result.shape == (2, 3, height, width)
    assert torch.equal(result, expected)


def test_vit_known_positions():
    tokens = with_leading_tokens(to_tokens(grid(1, 2, 2, 3)), 1)
    result = vit_reshape_transform(tokens, height=2, width=3)
    # Token 1 + (i * 3 + j) is position (i, j); channel c holds 100 c + 10 i + j.
    assert result[0, 1, 1, 2].item() == 112.0
    assert result[0, 0, 0, 1].item() == 1.0
    assert tokens[0, 1 + 1 * 3 + 2, 1].item() == 112.0


def test_vit_default_is_14_by_14():
    expected = grid(batch=1, channels=2, height=14, width=14)
    tokens = with_leading_tokens(to_tokens(expected), 1)
    assert torch.equal(vit_reshape_transform(tokens), expected)


def test_vit_partial_for_other_grid():
    expected = grid(batch=1, channels=2, height=6, width=6)
    transform = functools.partial(vit_reshape_transform, height=6, width=6)
    assert torch.equal(transform(with_leading_tokens(to_tokens(expected), 1)), expected)


def test_vit_gradient_flows_back_to_patch_tokens_only():
    tokens = with_leading_tokens(to_tokens(grid(1, 2, 2, 2)), 1).requires_grad_(True)
    result = vit_reshape_transform(tokens, height=2, width=2)
    weights = torch.arange(8.0).view(1, 2, 2, 2)
    (grad,) = torch.autograd.grad((result * weights).sum(), tokens)
    assert torch.equal(grad[0, 0], torch.zeros(2))
    assert torch.equal(grad[:, 1:], to_tokens(weights))


@pytest.mark.parametrize(
    "shape, height, width",
    [((2, 15, 3), 4, 4), ((2, 195, 8), 14, 14), ((2, 0, 3), 1, 1)],
)
def test_vit_too_few_tokens_error(shape, height, width):
    with pytest.raises(ValueError) as info:
        vit_reshape_transform(torch.zeros(shape), height=height, width=width)
    message = str(info.value)
    assert "vit_reshape_transform" in message
    assert f"height * width = {height * width}" in message
    assert str(shape) in message
    assert "functools.partial" in message


def test_vit_wrong_rank_error():
    with pytest.raises(ValueError, match=r"got \(2, 3, 4, 4\)"):
        vit_reshape_transform(torch.zeros(2, 3, 4, 4), height=4, width=4)


# --------------------------------------------------------------------- Swin
@pytest.mark.parametrize("height, width", [(7, 7), (2, 5), (4, 3)])
def test_swin_round_trip_tokens(height, width):
    expected = grid(height=height, width=width)
    tokens = to_tokens(expected)
    result = swinT_reshape_transform(tokens, height=height, width=width)
    assert result.shape == (2, 3, height, width)
    assert torch.equal(result, expected)


def test_swin_default_is_7_by_7():
    expected = grid(batch=1, channels=4, height=7, width=7)
    assert torch.equal(swinT_reshape_transform(to_tokens(expected)), expected)


@pytest.mark.parametrize("height, width", [(7, 7), (2, 5)])
def test_swin_round_trip_channels_last(height, width):
    expected = grid(height=height, width=width)
    channels_last = expected.permute(0, 2, 3, 1).contiguous()  # B x H x W x C
    assert channels_last[1, 1, 2, 0].item() == 1000 + 10 + 2
    result = swinT_reshape_transform(channels_last, height=height, width=width)
    assert result.shape == (2, 3, height, width)
    assert torch.equal(result, expected)


def test_swin_channels_last_ignores_default_grid_size():
    # torchvision's Swin gives B x H x W x C: the grid size comes from the tensor itself.
    expected = grid(height=3, width=2)
    result = swinT_reshape_transform(expected.permute(0, 2, 3, 1))
    assert torch.equal(result, expected)


def test_swin_too_many_tokens_error():
    with pytest.raises(ValueError, match=r"N == height \* width = 49.*\(1, 50, 8\)"):
        swinT_reshape_transform(torch.zeros(1, 50, 8))


def test_swin_too_few_tokens_error():
    with pytest.raises(ValueError) as info:
        swinT_reshape_transform(torch.zeros(1, 48, 8))
    message = str(info.value)
    assert "swinT_reshape_transform" in message
    assert "height * width = 49" in message
    assert "(1, 48, 8)" in message


# --------------------------------------------------------------------- through a CAM
class TinyViT(nn.Module):
    """Patch embedding (conv) -> tokens with a class token -> Identity block -> head on
    the mean of the patch tokens plus the class token."""

    def __init__(self, height: int, width: int, leading: int, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.embed = nn.Conv2d(3, 4, 2, stride=2)
        self.act = nn.ReLU()
        self.extra = nn.Parameter(torch.zeros(1, leading, 4))
        self.block = nn.Identity()
        self.head = nn.Linear(4, 3)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator))

    def features(self, x):
        return self.act(self.embed(x))

    def forward(self, x):
        patches = self.features(x).flatten(2).transpose(1, 2)  # B x H*W x C
        tokens = torch.cat([self.extra.expand(x.shape[0], -1, -1), patches], dim=1)
        tokens = self.block(tokens)
        return self.head(tokens.mean(dim=1))


@pytest.mark.parametrize("leading", [1, 4])
def test_gradcam_with_vit_transform_equals_cam_on_the_grid(leading):
    """The token block is the patch grid, reordered: its GradCAM through the transform
    equals GradCAM on the grid-shaped layer before the tokens."""
    height, width = 3, 4
    model = TinyViT(height, width, leading).eval()
    x = torch.randn(2, 3, 2 * height, 2 * width, generator=torch.Generator().manual_seed(1))
    targets = [ClassifierOutputTarget(0), ClassifierOutputTarget(2)]
    transform = functools.partial(vit_reshape_transform, height=height, width=width)
    through_tokens = GradCAM(model, target_layers=[model.block], reshape_transform=transform)(
        x, targets=targets, scale=False, as_tensor=True
    )
    on_grid = GradCAM(model, target_layers=[model.act])(
        x, targets=targets, scale=False, as_tensor=True
    )
    torch.testing.assert_close(through_tokens, on_grid, atol=1e-6, rtol=1e-5)
    # Closed form: dy_c / dA_k,ij = w_ck / N (N tokens), GradCAM weight w_ck / N; the maps
    # are computed at H x W and resized to the input's size.
    with torch.no_grad():
        activations = model.features(x)
    tokens = leading + height * width
    weights = model.head.weight.detach()[[0, 2]] / tokens
    small = torch.relu(torch.einsum("bk,bkhw->bhw", weights, activations))
    expected = torch.nn.functional.interpolate(
        small[:, None], size=x.shape[2:], mode="bilinear", align_corners=False
    )[:, 0]
    torch.testing.assert_close(through_tokens, expected, atol=1e-6, rtol=1e-5)
    assert float(expected.max()) > 0


def test_gradcam_with_swin_transform_channels_last():
    class TinySwin(nn.Module):
        def __init__(self):
            super().__init__()
            generator = torch.Generator().manual_seed(2)
            self.embed = nn.Conv2d(3, 4, 2, stride=2)
            self.act = nn.ReLU()
            self.block = nn.Identity()
            self.head = nn.Linear(4, 3)
            with torch.no_grad():
                for parameter in self.parameters():
                    parameter.copy_(torch.randn(parameter.shape, generator=generator))

        def forward(self, x):
            channels_last = self.act(self.embed(x)).permute(0, 2, 3, 1)
            return self.head(self.block(channels_last).mean(dim=(1, 2)))

    model = TinySwin().eval()
    x = torch.randn(2, 3, 6, 8, generator=torch.Generator().manual_seed(3))
    targets = [ClassifierOutputTarget(2)] * 2
    swin = GradCAM(model, [model.block], reshape_transform=swinT_reshape_transform)(
        x, targets=targets
    )
    grid_cam = GradCAM(model, [model.act])(x, targets=targets)
    np.testing.assert_allclose(swin, grid_cam, atol=1e-6)
    assert swin.shape == (2, 6, 8)
    np.testing.assert_allclose(swin.max(axis=(1, 2)), [1.0, 1.0], atol=1e-6)


# --------------------------------------------------------------------- inferred grids
@pytest.mark.parametrize(
    "leading, height, width, image_size",
    [
        (1, 14, 14, (224, 224)),  # ViT / DeiT: a class token
        (2, 14, 14, (224, 224)),  # distilled DeiT: class and distillation tokens
        (5, 16, 16, (224, 224)),  # a class token and 4 register tokens (patch 14)
        (1, 24, 24, (384, 384)),  # ViT at 384 px
        (1, 14, 28, (224, 448)),  # a wide image
        (1, 16, 14, (270, 225)),  # a tall image, sizes not multiples of the patch (16)
        (0, 7, 7, (224, 224)),  # Swin's token sequence: no leading tokens
        (0, 3, 5, (48, 80)),
    ],
)
def test_tokens_to_grid_round_trip(leading, height, width, image_size):
    expected = grid(batch=2, channels=3, height=height, width=width)
    tokens = with_leading_tokens(to_tokens(expected), leading)
    assert infer_token_grid(tokens.shape[1], image_size) == (leading, height, width)
    assert torch.equal(tokens_to_grid(tokens, image_size=image_size), expected)


def test_tokens_to_grid_without_image_size_takes_a_square_grid():
    expected = grid(batch=1, channels=2, height=14, width=14)
    assert torch.equal(tokens_to_grid(with_leading_tokens(to_tokens(expected), 1)), expected)
    assert infer_token_grid(49) == (0, 7, 7)


def test_num_prefix_tokens_overrides_the_inference():
    # 17 tokens of a square image read as 1 + 4 x 4; told 5 leading tokens, 3 x 4 remain.
    assert infer_token_grid(17, (16, 16)) == (1, 4, 4)
    assert infer_token_grid(17, (12, 16), num_prefix_tokens=5) == (5, 3, 4)
    expected = grid(batch=1, channels=2, height=3, width=4)
    tokens = with_leading_tokens(to_tokens(expected), 5)
    assert torch.equal(tokens_to_grid(tokens, (12, 16), num_prefix_tokens=5), expected)


@pytest.mark.parametrize(
    "num_tokens, image_size, prefix, leading",
    [
        (1000, (224, 224), None, "0 to 16 leading tokens"),  # no square in 984..1000
        (1 + 14 * 28 + 3, (224, 448), 1, "1 leading tokens"),
    ],
)
def test_tokens_that_form_no_grid(num_tokens, image_size, prefix, leading):
    with pytest.raises(ValueError) as info:
        infer_token_grid(num_tokens, image_size, num_prefix_tokens=prefix)
    message = str(info.value)
    assert f"{num_tokens} tokens do not form a patch grid" in message
    assert f"{image_size[0]} x {image_size[1]} after dropping {leading}" in message
    assert "vit_reshape_transform" in message


def test_channels_last_round_trip_and_detection():
    expected = grid(batch=2, channels=96, height=7, width=7)
    channels_last = expected.permute(0, 2, 3, 1).contiguous()
    assert torch.equal(channels_last_to_first(channels_last), expected)
    assert looks_channels_last(channels_last.shape, (224, 224))  # Swin, last stage
    assert looks_channels_last((1, 56, 56, 96), (224, 224))  # Swin, first stage
    assert looks_channels_last((1, 2, 4, 768), (64, 128))
    assert not looks_channels_last((1, 2048, 7, 7), (224, 224))  # a ResNet's layer4
    assert not looks_channels_last((1, 512, 1, 1), (32, 32))  # pooled
    assert not looks_channels_last((1, 7, 7, 7), (224, 224))  # ambiguous: channels first


# --------------------------------------------------------------------- inferred by the CAM
def test_the_cam_infers_the_vit_layout_and_says_so_once():
    model = TinyViT(height=3, width=4, leading=4).eval()  # 4 leading tokens, 3 x 4 patches
    x = torch.randn(2, 3, 6, 8, generator=torch.Generator().manual_seed(1))
    explicit = GradCAM(
        model,
        [model.block],
        reshape_transform=functools.partial(vit_reshape_transform, height=3, width=4),
    )(x)
    cam = GradCAM(model, [model.block])
    with pytest.warns(InferredReshapeWarning) as caught:
        inferred = cam(x)
    np.testing.assert_array_equal(inferred, explicit)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith("target_layers[0] (Identity) outputs shape (2, 16, 4)")
    assert (
        "tokens_to_grid: 4 leading token(s) dropped, the rest laid out as a 3 x 4 grid" in message
    )
    assert "Pass reshape_transform=" in message
    assert caught[0].filename == __file__  # the warning points at the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per layer: the next call is silent
        np.testing.assert_array_equal(cam(x), explicit)


def test_ablation_cam_traces_channels_through_the_inferred_transform():
    model = TinyViT(height=3, width=4, leading=1).double().eval()
    x = torch.randn(2, 3, 6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    transform = functools.partial(vit_reshape_transform, height=3, width=4)
    explicit = AblationCAM(model, [model.block], reshape_transform=transform)(x)
    with pytest.warns(InferredReshapeWarning):
        inferred = AblationCAM(model, [model.block])(x)
    np.testing.assert_array_equal(inferred, explicit)
    assert explicit.reshape(2, -1).max(axis=1).tolist() == [1.0, 1.0]


def test_a_reshape_transform_that_takes_image_size_is_given_the_inputs():
    model = TinyViT(height=3, width=4, leading=1).eval()
    x = torch.randn(2, 3, 6, 8, generator=torch.Generator().manual_seed(3))
    seen = []

    def transform(tensor, image_size=None):
        seen.append(image_size)
        return tokens_to_grid(tensor, image_size=image_size)

    maps = GradCAM(model, [model.block], reshape_transform=transform)(x)
    assert seen == [(6, 8), (6, 8)]  # the activations and their gradient
    expected = GradCAM(model, [model.block], reshape_transform=tokens_to_grid)(x)
    np.testing.assert_array_equal(maps, expected)


def test_an_ambiguous_four_dimensional_output_is_read_as_channels_first(recwarn):
    # A conv with 4 channels on a 4 x 4 map of a 4 x 4 image: B x 4 x 4 x 4 could be either
    # layout; channels first is kept, without a warning.
    model = torch.nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    ).eval()
    x = torch.randn(1, 3, 4, 4)
    maps = GradCAM(model, [model[0]])(x, scale=False, as_tensor=True)
    with torch.no_grad():
        activations = model[0](x)
        weights = model[3].weight[model(x).argmax(1)] / 16
    expected = torch.relu(torch.einsum("bc,bchw->bhw", weights, activations))
    torch.testing.assert_close(maps, expected)
    assert not [w for w in recwarn if issubclass(w.category, InferredReshapeWarning)]
