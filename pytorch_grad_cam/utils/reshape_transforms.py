"""Reshape transforms: turn transformer token outputs into ``B x C x H x W`` feature maps."""

from __future__ import annotations

import torch


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
