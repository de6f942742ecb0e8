"""From one relevance value per token to ``B x H x W`` maps at the input's size.

Shared by the attention methods. A vision transformer's tokens are ``p`` prefix tokens
(class, distillation, register) and then a patch grid in row-major order; the grid is
the one ``pytorch_grad_cam.utils.reshape_transforms.infer_token_grid`` infers from the
token count and the input's aspect ratio (``p`` from the argument, timm's
``model.num_prefix_tokens``, or inferred), or what the user's ``reshape_transform`` makes
of the relevance as a one-channel ``B x N x 1`` token output (the CAM classes'
transforms, such as ``vit_reshape_transform``, fit). The grid is resized bilinearly to
the input and, with ``scale``, each map is min-max scaled to [0, 1].
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pytorch_grad_cam.utils.maps import resize_maps, scale_to_unit_range
from pytorch_grad_cam.utils.reshape_transforms import (
    ReshapeTransform,
    TokenGrid,
    infer_token_grid,
)
from pytorch_grad_cam.utils.validation import check_input_tensor


class TokenMaps:
    """Relevance per token (``B x N``) to float32 ``B x H x W`` maps.

    Args:
        model: the transformer (its ``num_prefix_tokens`` and ``cls_token``, when it has
            them, say how many tokens precede the patches).
        num_prefix_tokens: tokens before the patches; ``None`` for the model's, or inferred.
        reshape_transform: ``None`` to lay the patches out on the inferred grid, or a
            transform taking the relevance as ``B x N x 1`` tokens to ``B x 1 x h x w``
            (passed ``image_size=(H, W)`` when it takes that keyword).
        who: the method's name, for messages.
        needs_class_token: whether the method reads the class token's row (then at least
            one prefix token is required).
    """

    def __init__(
        self,
        model: nn.Module,
        num_prefix_tokens: int | None,
        reshape_transform: ReshapeTransform | None,
        who: str,
        needs_class_token: bool = True,
    ) -> None:
        if reshape_transform is not None and not callable(reshape_transform):
            raise TypeError(
                "reshape_transform must be a callable taking the relevance as B x N x 1 "
                f"tokens, got {type(reshape_transform).__name__}."
            )
        self.who = who
        self.needs_class_token = needs_class_token
        self.reshape_transform = reshape_transform
        self.num_prefix_tokens = resolve_prefix_tokens(
            model, num_prefix_tokens, who, needs_class_token
        )

    def grid(self, num_tokens: int, input_shape: Sequence[int]) -> TokenGrid:
        """The prefix tokens and the patch grid of ``num_tokens`` tokens for this input."""
        return patch_grid(
            num_tokens, self.num_prefix_tokens, input_shape, self.who, self.needs_class_token
        )

    def __call__(
        self, relevance: torch.Tensor, input_shape: Sequence[int], scale: bool
    ) -> torch.Tensor:
        """``B x N`` relevance -> ``B x H x W`` maps (resized, scaled with ``scale``)."""
        if self.reshape_transform is None:
            layout = self.grid(relevance.shape[-1], input_shape)
            patches = relevance[:, layout.prefix_tokens :]
            maps = patches.reshape(-1, layout.height, layout.width)
        else:
            maps = self._transformed(relevance, input_shape)
        maps = resize_maps(maps.float(), input_shape[2:])
        return scale_to_unit_range(maps) if scale else maps

    def _transformed(self, relevance: torch.Tensor, input_shape: Sequence[int]) -> torch.Tensor:
        transform = self.reshape_transform
        assert transform is not None  # checked by the caller
        if _takes_image_size(transform):
            transform = functools.partial(transform, image_size=tuple(input_shape[2:]))
        grid = transform(relevance[:, :, None])
        if not isinstance(grid, torch.Tensor) or grid.ndim != 4 or grid.shape[1] != 1:
            got = tuple(grid.shape) if isinstance(grid, torch.Tensor) else type(grid).__name__
            raise ValueError(
                f"{self.who}: reshape_transform turned the relevance, B x N x 1 tokens of "
                f"shape {tuple(relevance.shape) + (1,)}, into {got}; it must return "
                "B x 1 x h x w (e.g. functools.partial(vit_reshape_transform, height=14, "
                "width=14))."
            )
        return grid[:, 0]


def resolve_prefix_tokens(
    model: nn.Module, num_prefix_tokens: int | None, who: str, needs_class_token: bool = True
) -> int | None:
    """The argument, else timm's ``model.num_prefix_tokens``, else ``None`` (inferred)."""
    if num_prefix_tokens is None:
        if needs_class_token and getattr(model, "cls_token", True) is None:
            raise ValueError(
                f"{type(model).__name__} has no class token (model.cls_token is None), and "
                f"{who} reads the class token's row; use a model with one."
            )
        num_prefix_tokens = getattr(model, "num_prefix_tokens", None)
        if num_prefix_tokens is None:
            return None
    if not isinstance(num_prefix_tokens, int) or isinstance(num_prefix_tokens, bool):
        raise TypeError(f"num_prefix_tokens must be an int, got {num_prefix_tokens!r}.")
    if needs_class_token and num_prefix_tokens < 1:
        raise ValueError(
            f"num_prefix_tokens must be >= 1 (the class token comes first, then any "
            f"distillation or register tokens), got {num_prefix_tokens}."
        )
    if num_prefix_tokens < 0:
        raise ValueError(f"num_prefix_tokens must be >= 0, got {num_prefix_tokens}.")
    return num_prefix_tokens


def patch_grid(
    num_tokens: int,
    num_prefix_tokens: int | None,
    input_shape: Sequence[int],
    who: str,
    needs_class_token: bool = True,
) -> TokenGrid:
    """The class token, any further prefix tokens, and the patch grid of the tokens."""
    layout = infer_token_grid(num_tokens, input_shape[-2:], num_prefix_tokens)
    if needs_class_token and layout.prefix_tokens < 1:
        raise ValueError(
            f"The attentions have {num_tokens} tokens that form a {layout.height} x "
            f"{layout.width} patch grid with no class token before them, and {who} reads "
            "the class token's row; pass num_prefix_tokens=... (class + distillation + "
            f"register tokens) to {who} if the model has one."
        )
    return layout


def check_attention_input(input_tensor: Any, model: nn.Module, who: str) -> torch.Tensor:
    """Images ``B x C x H x W`` with values, on the model's device."""
    return check_input_tensor(input_tensor, model, ndims=(4,), who=f"{who}: ")


def check_gradient_input(input_tensor: Any, model: nn.Module, who: str) -> torch.Tensor:
    """As :func:`check_attention_input`, outside inference mode (gradients are needed);
    a tensor made in inference mode is copied out of it."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{who} cannot run inside torch.inference_mode(): the gradients it needs cannot "
            "be recorded there. Call it outside (inside torch.no_grad() is fine)."
        )
    input_tensor = check_attention_input(input_tensor, model, who)
    return input_tensor.clone() if input_tensor.is_inference() else input_tensor


def _takes_image_size(function: Any) -> bool:
    try:
        return "image_size" in inspect.signature(function).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False
