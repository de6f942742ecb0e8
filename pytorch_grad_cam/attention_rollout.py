"""Attention Rollout: where a vision transformer's class token gets its information from.

Abnar, S. and Zuidema, W. (2020). "Quantifying Attention Flow in Transformers", ACL 2020,
arXiv:2005.00928.

With ``A_l`` the ``B x heads x N x N`` attention probabilities of layer ``l`` (rows attend
to columns), per image:

    A_l <- fuse the heads: mean, max or min over the heads axis       (N x N)
    A_l <- zero the lowest ``discard_ratio`` fraction of the N*N entries of A_l,
           never the class token's own entry A_l[0, 0]                (optional)
    Â_l  = (A_l + I) / rowsum(A_l + I)                    (the residual connection)
    R    = Â_L ... Â_2 Â_1                                 (first layer rightmost)

The map is the class token's row of ``R`` over the patch tokens, ``R[0, p:]`` (``p``
prefix tokens: class, distillation, register), reshaped to the patch grid, resized
bilinearly to the input's size and scaled to [0, 1]. The method is class-agnostic and
needs no gradients.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.attention_capture import AttentionCapture
from pytorch_grad_cam.token_maps import TokenMaps, check_attention_input, patch_grid
from pytorch_grad_cam.utils.model_state import detached_output, model_in_eval_mode
from pytorch_grad_cam.utils.reshape_transforms import TokenGrid

NAME = "AttentionRollout"

_HEAD_FUSIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mean": lambda attention: attention.mean(dim=1),
    "max": lambda attention: attention.amax(dim=1),
    "min": lambda attention: attention.amin(dim=1),
}


def rollout(
    attentions: Sequence[torch.Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0
) -> torch.Tensor:
    """``R = Â_L ... Â_1`` (``B x N x N``, float32) from each layer's ``B x heads x N x N``
    attention probabilities, first layer first; see the module docstring."""
    _check_head_fusion(head_fusion)
    _check_discard_ratio(discard_ratio)
    if len(attentions) == 0:
        raise ValueError("attentions is empty; pass one B x heads x N x N tensor per layer.")
    joint = None
    for index, attention in enumerate(attentions):
        _check_attention_shape(f"attentions[{index}]", attention, attentions[0])
        fused = _HEAD_FUSIONS[head_fusion](attention.float())
        if discard_ratio > 0:
            fused = _discard_lowest(fused, discard_ratio)
        residual = fused + torch.eye(fused.shape[-1], device=fused.device)
        layer = residual / residual.sum(dim=-1, keepdim=True)
        joint = layer if joint is None else layer @ joint
    assert joint is not None  # at least one attention (checked above)
    return joint


def _discard_lowest(fused: torch.Tensor, discard_ratio: float) -> torch.Tensor:
    """Zero each image's ``int(N * N * discard_ratio)`` lowest entries, skipping ``[0, 0]``."""
    flat = fused.flatten(1)
    count = int(flat.shape[1] * discard_ratio)
    if count == 0:
        return fused
    candidates = flat.clone()
    candidates[:, 0] = float("inf")  # the class token's attention to itself is kept
    lowest = candidates.topk(count, dim=1, largest=False).indices
    return flat.scatter(1, lowest, 0.0).view_as(fused)


class AttentionRollout:
    """Attention Rollout maps for a vision transformer (see the module docstring).

    Args:
        model: a timm ViT / DeiT (also distilled and with register tokens), a torchvision
            ``VisionTransformer``, a Hugging Face ``ViTForImageClassification``, or any
            model whose attention layers are given in ``attention_layers``. It is left as
            found: eval mode during a call with each module's flag restored, hooks only
            during a call, and the switches flipped to expose the attention probabilities
            (timm ``fused_attn``, Hugging Face ``config._attn_implementation``) restored.
        attention_layers: ``None`` finds them: a Hugging Face model's innermost
            ``...Attention`` modules, run with eager attention (with transformers 4, the
            model is called with ``output_attentions=True`` instead); otherwise
            every timm-style attention (a ``fused_attn`` flag and an ``attn_drop``
            module, whose output is recorded with the fused kernel off) and every
            ``nn.MultiheadAttention`` (asked for per-head weights) is used. Or a list of
            such modules, or of modules whose output is the attention probabilities
            ``B x heads x N x N`` or an ``(output, probabilities)`` tuple (a Hugging Face
            attention module). Layers are multiplied in the order they run.
        head_fusion: ``"mean"``, ``"max"`` or ``"min"`` over the heads.
        discard_ratio: fraction in [0, 1) of each layer's lowest fused attentions to zero.
        num_prefix_tokens: tokens before the patch tokens, the class token first;
            default ``model.num_prefix_tokens`` when the model has it (timm), else
            inferred from the token count and the input's aspect ratio (as
            ``pytorch_grad_cam.utils.reshape_transforms.infer_token_grid`` does).
    """

    def __init__(
        self,
        model: nn.Module,
        attention_layers: Sequence[nn.Module] | None = None,
        head_fusion: str = "mean",
        discard_ratio: float = 0.0,
        num_prefix_tokens: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        _check_head_fusion(head_fusion)
        _check_discard_ratio(discard_ratio)
        self.model = model
        self.capture = AttentionCapture(model, attention_layers, NAME)
        self.attention_layers = self.capture.layers
        self.head_fusion = head_fusion
        self.discard_ratio = discard_ratio
        self.token_maps = TokenMaps(model, num_prefix_tokens, None, NAME)
        self.num_prefix_tokens = self.token_maps.num_prefix_tokens
        self.outputs: Any = None

    @property
    def uses_output_attentions(self) -> bool:
        """Whether the attentions come from ``output_attentions=True`` (transformers 4)."""
        return self.capture.uses_output_attentions

    def __call__(
        self, input_tensor: torch.Tensor, *, scale: bool = True, as_tensor: bool = False
    ) -> np.ndarray | torch.Tensor:
        """One map per image of ``input_tensor`` (``B x C x H x W``): float32 ``B x H x W``,
        scaled to [0, 1] unless ``scale=False``; a tensor on the model's device with
        ``as_tensor=True``, else a numpy array. ``self.outputs`` holds the model's output."""
        input_tensor = check_attention_input(input_tensor, self.model, NAME)
        attentions = self.attentions(input_tensor)
        with torch.no_grad():
            joint = rollout(attentions, self.head_fusion, self.discard_ratio)
            maps = self.token_maps(joint[:, 0], input_tensor.shape, scale)
        return maps if as_tensor else maps.cpu().numpy()

    def attentions(self, input_tensor: torch.Tensor) -> list[torch.Tensor]:
        """Run the model once (in eval mode, without gradients); each attention layer's
        ``B x heads x N x N`` probabilities, in the order the layers ran, on the model's
        device. ``self.outputs`` holds the model's output."""
        input_tensor = check_attention_input(input_tensor, self.model, NAME)
        with model_in_eval_mode(self.model):
            recorded = self.capture.record(input_tensor)
        self.outputs = detached_output(recorded.output)
        return recorded.attentions

    def close(self) -> None:
        """Release the last output. Hooks only exist during a call, so none remain."""
        self.outputs = None

    def __enter__(self) -> AttentionRollout:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()  # returns None: an exception is never swallowed


def _patch_grid(
    num_tokens: int, num_prefix_tokens: int | None, input_shape: Sequence[int]
) -> TokenGrid:
    """The class token, any further prefix tokens, and the patch grid of the tokens."""
    return patch_grid(num_tokens, num_prefix_tokens, input_shape, NAME)


# --------------------------------------------------------------------- checks
def _check_head_fusion(head_fusion: Any) -> None:
    if not isinstance(head_fusion, str) or head_fusion not in _HEAD_FUSIONS:
        raise ValueError(
            f"head_fusion must be one of 'mean', 'max', 'min' (how the heads of a layer "
            f"are combined), got {head_fusion!r}."
        )


def _check_discard_ratio(discard_ratio: Any) -> None:
    is_number = isinstance(discard_ratio, numbers.Real) and not isinstance(discard_ratio, bool)
    if not is_number or not 0 <= discard_ratio < 1:
        raise ValueError(
            f"discard_ratio must be a number in [0, 1), the fraction of each layer's lowest "
            f"attentions to zero, got {discard_ratio!r}; use e.g. 0.9, or 0 to keep them all."
        )


def _check_attention_shape(name: str, attention: Any, first: Any) -> None:
    if not isinstance(attention, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(attention).__name__}.")
    if attention.ndim != 4 or attention.shape[-1] != attention.shape[-2]:
        raise ValueError(
            f"{name} has shape {tuple(attention.shape)}; expected attention probabilities "
            "of shape B x heads x N x N."
        )
    if (attention.shape[0], attention.shape[-1]) != (first.shape[0], first.shape[-1]):
        raise ValueError(
            f"{name} has shape {tuple(attention.shape)} but the first layer's is "
            f"{tuple(first.shape)}; every layer needs the same batch size and token count N."
        )
