"""Reshape transforms: turn transformer token outputs into ``B x C x H x W`` feature maps."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Callable, NamedTuple

import torch

#: Maps a layer's output (and its gradient) to ``B x C x *spatial``.
ReshapeTransform = Callable[..., torch.Tensor]


def vit_reshape_transform(tensor: torch.Tensor, height: int = 14, width: int = 14) -> torch.Tensor:
    """ViT / DeiT tokens ``B x (1 + H*W) x C`` -> ``B x C x H x W``, dropping the class token.

    Any tokens before the last ``height * width`` ones (class, distillation or register
    tokens) are dropped.
    """
    _check_tokens(tensor, height * width, "vit_reshape_transform")
    patches = tensor[:, -height * width :, :]
    return patches.reshape(tensor.size(0), height, width, tensor.size(2)).permute(0, 3, 1, 2)


def swinT_reshape_transform(tensor: torch.Tensor, height: int = 7, width: int = 7) -> torch.Tensor:
    """Swin tokens ``B x H*W x C`` (or channels-last ``B x H x W x C``) -> ``B x C x H x W``."""
    if tensor.ndim == 4:
        return tensor.permute(0, 3, 1, 2)
    _check_tokens(tensor, height * width, "swinT_reshape_transform", exact=True)
    return tensor.reshape(tensor.size(0), height, width, tensor.size(2)).permute(0, 3, 1, 2)


def _check_tokens(tensor: torch.Tensor, grid_tokens: int, name: str, exact: bool = False) -> None:
    count_fits = tensor.size(1) == grid_tokens if exact else tensor.size(1) >= grid_tokens
    if tensor.ndim != 3 or not count_fits:
        relation = "==" if exact else ">="
        raise ValueError(
            f"{name}: expected tokens of shape B x N x C with N {relation} height * width = "
            f"{grid_tokens}, got {tuple(tensor.shape)}; pass the height and width of the "
            "patch grid, e.g. functools.partial(" + name + ", height=24, width=24) for 384 px."
        )


# --------------------------------------------------------------------- grids inferred
class TokenGrid(NamedTuple):
    """How a token sequence lays out: ``prefix_tokens`` leading tokens (class,
    distillation, register), then a ``height x width`` patch grid in row-major order."""

    prefix_tokens: int
    height: int
    width: int


#: The most leading tokens inferred: a class token, a distillation token and up to 14
#: register tokens. Pass ``num_prefix_tokens`` for more.
MAX_PREFIX_TOKENS = 16


def infer_token_grid(
    num_tokens: int,
    image_size: Sequence[int] | None = None,
    num_prefix_tokens: int | None = None,
) -> TokenGrid:
    """The patch grid of ``num_tokens`` tokens of an image of ``image_size`` (height, width).

    The fewest leading tokens (0 to ``MAX_PREFIX_TOKENS``, or exactly ``num_prefix_tokens``)
    such that the rest factor into a grid that one integer patch stride gives the image
    (its size divided by the stride, rounded down, or up, on both axes); of such
    factorisations, the one whose aspect ratio is closest to the image's. Without
    ``image_size`` the image is taken to be square.
    """
    image_height, image_width = (1, 1) if image_size is None else (int(s) for s in image_size)
    prefixes = (
        range(min(MAX_PREFIX_TOKENS, num_tokens - 1) + 1)
        if num_prefix_tokens is None
        else [num_prefix_tokens]
    )
    if image_size is None:
        image_height = image_width = max(num_tokens, 1)  # square: any common stride fits
    aspect = math.log(image_height / image_width)
    for prefix in prefixes:
        patches = num_tokens - prefix
        grids = [
            (height, patches // height)
            for height in range(1, patches + 1)
            if patches % height == 0
            and _one_stride_fits(height, patches // height, image_height, image_width)
        ]
        if grids:
            height, width = min(grids, key=lambda g: abs(math.log(g[0] / g[1]) - aspect))
            return TokenGrid(prefix, height, width)
    size = "a square image" if image_size is None else f"an image of {image_height} x {image_width}"
    leading = (
        f"{num_prefix_tokens} leading tokens"
        if num_prefix_tokens is not None
        else f"0 to {MAX_PREFIX_TOKENS} leading tokens"
    )
    raise ValueError(
        f"{num_tokens} tokens do not form a patch grid of {size} after dropping {leading}; "
        "pass a reshape_transform that knows the layout, e.g. functools.partial("
        "vit_reshape_transform, height=..., width=...) from "
        "pytorch_grad_cam.utils.reshape_transforms."
    )


def _one_stride_fits(height: int, width: int, image_height: int, image_width: int) -> bool:
    """Whether one integer stride ``s`` gives ``height`` rows and ``width`` columns, both
    rounded down (``image_height // s == height``) or both rounded up."""
    rounded_down = _overlap(
        _strides_rounding_down(image_height, height), _strides_rounding_down(image_width, width)
    )
    rounded_up = _overlap(
        _strides_rounding_up(image_height, height), _strides_rounding_up(image_width, width)
    )
    return rounded_down or rounded_up


def _strides_rounding_down(size: int, count: int) -> tuple[int, int]:
    """The integer strides ``s`` with ``size // s == count``, as an inclusive range."""
    return size // (count + 1) + 1, size // count


def _strides_rounding_up(size: int, count: int) -> tuple[int, int]:
    """The integer strides ``s`` with ``ceil(size / s) == count``, as an inclusive range."""
    low = -(-size // count)
    high = -(-size // (count - 1)) - 1 if count > 1 else size
    return low, high


def _overlap(first: tuple[int, int], second: tuple[int, int]) -> bool:
    return max(first[0], second[0]) <= min(first[1], second[1])


def tokens_to_grid(
    tensor: torch.Tensor,
    image_size: Sequence[int] | None = None,
    num_prefix_tokens: int | None = None,
) -> torch.Tensor:
    """Tokens ``B x N x C`` -> ``B x C x H x W``, the grid inferred (``infer_token_grid``).

    For ViT, DeiT (class and distillation tokens), ViTs with register tokens and any
    input size. As a ``reshape_transform``, ``BaseCAM`` passes the input's ``image_size``.
    """
    if tensor.ndim != 3:
        raise ValueError(
            f"tokens_to_grid: expected tokens of shape B x N x C, got {tuple(tensor.shape)}."
        )
    layout = infer_token_grid(tensor.size(1), image_size, num_prefix_tokens)
    return vit_reshape_transform(tensor, layout.height, layout.width)


def channels_last_to_first(tensor: torch.Tensor) -> torch.Tensor:
    """``B x H x W x C`` (torchvision's and timm's Swin, ConvNeXt blocks) -> ``B x C x H x W``."""
    if tensor.ndim != 4:
        raise ValueError(
            f"channels_last_to_first: expected B x H x W x C, got {tuple(tensor.shape)}."
        )
    return tensor.permute(0, 3, 1, 2)


def infer_reshape_transform(shape: Sequence[int], image_size: Sequence[int]) -> Callable | None:
    """The transform a layer output of ``shape`` needs for an image of ``image_size``:
    ``tokens_to_grid`` for tokens ``B x N x C``, ``channels_last_to_first`` for a
    ``B x H x W x C`` output (``looks_channels_last``), otherwise ``None``."""
    if len(image_size) != 2:
        return None
    if len(shape) == 3:
        return tokens_to_grid
    if len(shape) == 4 and looks_channels_last(shape, image_size):
        return channels_last_to_first
    return None


def looks_channels_last(shape: Sequence[int], image_size: Sequence[int]) -> bool:
    """Whether a ``B x d1 x d2 x d3`` output is ``B x H x W x C``: ``(d1, d2)`` is a grid of
    the image and ``(d2, d3)`` is not. Ambiguous shapes are taken as ``B x C x H x W``."""
    _, first, second, third = shape
    image_height, image_width = image_size
    return _one_stride_fits(first, second, image_height, image_width) and not _one_stride_fits(
        second, third, image_height, image_width
    )


# --------------------------------------------------------------------- feature pyramids
def fasterrcnn_reshape_transform(
    x: Mapping[str, torch.Tensor] | Sequence[torch.Tensor] | torch.Tensor,
) -> torch.Tensor:
    """grad-cam 1.5.7's feature-pyramid transform: ``|level|`` of every level, resized
    (bilinear) to the coarsest level's size (``"pool"`` in torchvision's FPN), concatenated
    along the channels in order: ``B x (C_1 + ... + C_L) x H_L x W_L``.

    Its absolute value makes it non-linear: applied to gradients too, gradient methods
    weight by ``|dy/dA|``. :func:`fpn_reshape_transform` is the linear variant (signed
    values, any level's size, antialiased where it shrinks), the one to use with gradient
    methods; this one gives grad-cam 1.5.7's maps (its detection tutorial uses EigenCAM).
    """
    levels = _pyramid_levels(x, "fasterrcnn_reshape_transform")
    if isinstance(levels, torch.Tensor):
        return levels
    size = tuple(levels[-1][1].shape[-2:])
    resized = [
        torch.nn.functional.interpolate(
            feature_map.abs(), size=size, mode="bilinear", align_corners=False
        )
        if tuple(feature_map.shape[-2:]) != size
        else feature_map.abs()
        for _, feature_map in levels
    ]
    return torch.cat(resized, dim=1)


def fpn_reshape_transform(
    x: Mapping[str, torch.Tensor] | Sequence[torch.Tensor] | torch.Tensor,
    level: int | str = 0,
) -> torch.Tensor:
    """Feature-pyramid levels -> one ``B x (C_1 + ... + C_L) x H x W`` tensor, linearly.

    ``x`` is what a torchvision detection backbone with an FPN returns (``model.backbone``
    of Faster R-CNN / RetinaNet / Mask R-CNN): an ``OrderedDict`` of ``B x C_l x H_l x W_l``
    maps, finest first (``"0"``, ``"1"``, ..., ``"pool"``); a list or tuple of such maps
    works too. Every level is resized (bilinear; antialiased where it shrinks) to the
    size of ``level`` (an index in the levels' order or a key; default the first, finest
    level; ``level="pool"`` or ``-1`` is the coarsest and cheapest) and the levels are
    concatenated along the channels, in order. A single ``B x C x H x W`` tensor is
    returned as it is. The transform is linear, so it applies to gradients as well.
    """
    levels = _pyramid_levels(x, "fpn_reshape_transform")
    if isinstance(levels, torch.Tensor):
        return levels
    names = [name for name, _ in levels]
    maps = [feature_map for _, feature_map in levels]
    if isinstance(level, str):
        if level not in names:
            raise ValueError(
                f"fpn_reshape_transform: level={level!r} is not one of the levels {names}."
            )
        reference = maps[names.index(level)]
    else:
        if not -len(maps) <= level < len(maps):
            raise ValueError(
                f"fpn_reshape_transform: level={level} is out of range for {len(maps)} levels."
            )
        reference = maps[level]
    size = tuple(reference.shape[-2:])
    resized = [_resize_level(feature_map, size) for feature_map in maps]
    return torch.cat(resized, dim=1)


def _pyramid_levels(x: Any, name: str) -> torch.Tensor | list[tuple[Any, torch.Tensor]]:
    """A single ``B x C x H x W`` tensor as it is, or the ``(name, level)`` pairs of a
    mapping or sequence of such tensors, checked."""
    if isinstance(x, torch.Tensor):
        if x.ndim != 4:
            raise ValueError(f"{name}: expected feature maps B x C x H x W, got {tuple(x.shape)}.")
        return x
    if isinstance(x, Mapping):
        pairs = list(x.items())
    elif isinstance(x, Sequence):
        pairs = list(enumerate(x))
    else:
        raise TypeError(
            f"{name}: expected an OrderedDict (or list) of feature maps, got {type(x).__name__}."
        )
    if not pairs or not all(isinstance(m, torch.Tensor) and m.ndim == 4 for _, m in pairs):
        shapes = {
            key: tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
            for key, m in pairs
        }
        raise ValueError(f"{name}: every level must be a B x C x H x W tensor, got {shapes}.")
    return pairs


def _resize_level(feature_map: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    if tuple(feature_map.shape[-2:]) == size:
        return feature_map
    shrinks = feature_map.shape[-2] > size[0] or feature_map.shape[-1] > size[1]
    return torch.nn.functional.interpolate(
        feature_map, size=size, mode="bilinear", align_corners=False, antialias=shrinks
    )
