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

import inspect
import numbers
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.utils.maps import resize_maps, scale_to_unit_range
from pytorch_grad_cam.utils.model_state import detached_output, model_in_eval_mode
from pytorch_grad_cam.utils.reshape_transforms import TokenGrid, infer_token_grid
from pytorch_grad_cam.utils.validation import check_input_tensor

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
        self.uses_output_attentions = (
            attention_layers is None and _is_hugging_face(model) and not _transformers_5()
        )
        if attention_layers is not None:
            self.attention_layers = _check_attention_layers(model, attention_layers)
        elif self.uses_output_attentions:
            self.attention_layers = []
        elif _is_hugging_face(model):
            self.attention_layers = _hugging_face_attention_layers(model)
        else:
            self.attention_layers = _find_attention_layers(model)
        self.head_fusion = head_fusion
        self.discard_ratio = discard_ratio
        self.num_prefix_tokens = _resolve_prefix_tokens(model, num_prefix_tokens)
        self.outputs: Any = None

    def __call__(
        self, input_tensor: torch.Tensor, *, scale: bool = True, as_tensor: bool = False
    ) -> np.ndarray | torch.Tensor:
        """One map per image of ``input_tensor`` (``B x C x H x W``): float32 ``B x H x W``,
        scaled to [0, 1] unless ``scale=False``; a tensor on the model's device with
        ``as_tensor=True``, else a numpy array. ``self.outputs`` holds the model's output."""
        input_tensor = _check_input(input_tensor, self.model)
        attentions = self.attentions(input_tensor)
        with torch.no_grad():
            joint = rollout(attentions, self.head_fusion, self.discard_ratio)
            layout = _patch_grid(joint.shape[-1], self.num_prefix_tokens, input_tensor.shape)
            patches = joint[:, 0, layout.prefix_tokens :]
            maps = patches.reshape(-1, layout.height, layout.width)
            maps = resize_maps(maps, input_tensor.shape[2:])
            if scale:
                maps = scale_to_unit_range(maps)
        return maps if as_tensor else maps.cpu().numpy()

    def attentions(self, input_tensor: torch.Tensor) -> list[torch.Tensor]:
        """Run the model once (in eval mode, without gradients); each attention layer's
        ``B x heads x N x N`` probabilities, in the order the layers ran, on the model's
        device. ``self.outputs`` holds the model's output."""
        input_tensor = _check_input(input_tensor, self.model)
        with model_in_eval_mode(self.model), torch.no_grad():
            if self.uses_output_attentions:
                with _eager_attention(self.model):
                    output = self.model(input_tensor, output_attentions=True)
                attentions = getattr(output, "attentions", None)
                if not attentions:
                    raise ValueError(
                        f"{type(self.model).__name__} returned no attentions for "
                        "output_attentions=True; pass attention_layers=[...] (its attention "
                        "modules) to AttentionRollout."
                    )
                names = [f"attentions[{i}] of the model's output" for i in range(len(attentions))]
            else:
                layers = self.attention_layers
                with _eager_attention(self.model), _recording(layers) as recorded:
                    output = self.model(input_tensor)
                _check_reached(layers, recorded)
                names = [f"attention_layers[{i}] ({type(layers[i]).__name__})" for i, _ in recorded]
                attentions = [attention for _, attention in recorded]
        self.outputs = detached_output(output)
        return [_as_attention(name, value) for name, value in zip(names, attentions)]

    def close(self) -> None:
        """Release the last output. Hooks only exist during a call, so none remain."""
        self.outputs = None

    def __enter__(self) -> AttentionRollout:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()  # returns None: an exception is never swallowed


# --------------------------------------------------------------------- capturing
def _is_timm_attention(module: nn.Module) -> bool:
    attn_drop = getattr(module, "attn_drop", None)
    return hasattr(module, "fused_attn") and isinstance(attn_drop, nn.Module)


def _find_attention_layers(model: nn.Module) -> list[nn.Module]:
    layers = [
        module
        for module in model.modules()
        if isinstance(module, nn.MultiheadAttention) or _is_timm_attention(module)
    ]
    if not layers:
        raise ValueError(
            f"AttentionRollout found no attention layers in {type(model).__name__}: it looks "
            "for timm attentions (fused_attn + attn_drop), nn.MultiheadAttention and Hugging "
            "Face models (config._attn_implementation). Pass attention_layers=[...]: modules "
            "whose output is the B x heads x N x N attention probabilities."
        )
    return layers


@contextmanager
def _recording(layers: Sequence[nn.Module]) -> Iterator[list[tuple[int, Any]]]:
    """Record ``(layer index, output)`` for each attention call, in call order."""
    recorded: list[tuple[int, Any]] = []
    handles = []
    fused_flags = []
    try:
        for index, layer in enumerate(layers):
            if isinstance(layer, nn.MultiheadAttention):
                handles += _hook_multihead_attention(layer, index, recorded)
            elif _is_timm_attention(layer):
                fused_flags.append((layer, layer.fused_attn))
                # The fused kernel never materialises the probabilities.
                layer.fused_attn = False  # type: ignore[assignment]
                attn_drop = layer.attn_drop
                assert isinstance(attn_drop, nn.Module)  # checked by _is_timm_attention
                handles.append(attn_drop.register_forward_hook(_recorder(index, recorded)))
            else:
                handles.append(layer.register_forward_hook(_recorder(index, recorded)))
        yield recorded
    finally:
        for handle in handles:
            handle.remove()
        for layer, flag in fused_flags:
            layer.fused_attn = flag


def _check_reached(layers: Sequence[nn.Module], recorded: list[tuple[int, Any]]) -> None:
    reached = {index for index, _ in recorded}
    for index, layer in enumerate(layers):
        if index not in reached:
            raise ValueError(
                f"attention_layers[{index}] ({type(layer).__name__}) recorded no attention: "
                "the forward pass never reached it (or, for a timm attention, its attn_drop). "
                "Pass attention layers that the model's forward() runs."
            )


def _recorder(index: int, recorded: list[tuple[int, Any]]) -> Callable[..., None]:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        recorded.append((index, output))

    return hook


def _hook_multihead_attention(
    layer: nn.MultiheadAttention, index: int, recorded: list[tuple[int, Any]]
) -> list[Any]:
    """Call ``layer`` with ``need_weights=True, average_attn_weights=False``, record the
    per-head weights and hand the caller what it asked for."""
    signature = inspect.signature(layer.forward)
    requested: list[tuple[bool, bool]] = []

    def ask_for_head_weights(module: nn.Module, args: Any, kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = bound.arguments
        requested.append((arguments["need_weights"], arguments["average_attn_weights"]))
        arguments["need_weights"], arguments["average_attn_weights"] = True, False
        return bound.args, bound.kwargs

    def record(module: nn.Module, args: Any, output: Any) -> Any:
        need_weights, average = requested.pop()
        attn_output, weights = output
        recorded.append((index, weights))
        if not need_weights:
            return attn_output, None
        return attn_output, weights.mean(dim=-3) if average else weights

    return [
        layer.register_forward_pre_hook(ask_for_head_weights, with_kwargs=True),
        layer.register_forward_hook(record),
    ]


def _is_hugging_face(model: nn.Module) -> bool:
    return hasattr(getattr(model, "config", None), "_attn_implementation")


def _transformers_5() -> bool:
    """Transformers 5's eager attention modules return ``(output, probabilities)`` on every
    call; 4.x's only under ``output_attentions=True``, which 5 serves with hooks of its own
    that it installs on the model for good."""
    import transformers

    return int(transformers.__version__.split(".")[0]) >= 5


def _hugging_face_attention_layers(model: nn.Module) -> list[nn.Module]:
    """The innermost ``...Attention`` modules of a Hugging Face model."""
    candidates = [
        module
        for module in model.modules()
        if type(module).__module__.startswith("transformers.")
        and type(module).__name__.endswith("Attention")
    ]
    inner = [
        module
        for module in candidates
        if not any(other is not module and other in candidates for other in module.modules())
    ]
    if not inner:
        raise ValueError(
            f"AttentionRollout found no attention modules in {type(model).__name__}; pass "
            "attention_layers=[...]: modules that return (output, attention probabilities)."
        )
    return inner


def _attention_configs(model: nn.Module) -> list[Any]:
    """Every Hugging Face config (and sub-config) of the model's modules, parents first."""
    found: dict[int, Any] = {}

    def visit(config: Any) -> None:
        if id(config) in found or not hasattr(config, "_attn_implementation"):
            return
        found[id(config)] = config
        for key in getattr(config, "sub_configs", None) or {}:
            visit(getattr(config, key, None))

    for module in model.modules():
        visit(getattr(module, "config", None))
    return list(found.values())


#: The Hugging Face config attribute that selects the attention implementation.
ATTN_IMPLEMENTATION = "_attn_implementation"


@contextmanager
def _eager_attention(model: nn.Module) -> Iterator[None]:
    """Hugging Face eager attention, the one that returns its probabilities (sdpa does not)."""
    # transformers keeps the choice in a private attribute; there is no public setter that
    # works for every version, so it is read and written by name.
    saved = [(config, getattr(config, ATTN_IMPLEMENTATION)) for config in _attention_configs(model)]
    try:
        for config, _ in saved:
            setattr(config, ATTN_IMPLEMENTATION, "eager")
        yield
    finally:
        for config, implementation in saved:  # parents first: they reset their sub-configs
            setattr(config, ATTN_IMPLEMENTATION, implementation)


def _as_attention(name: str, output: Any) -> torch.Tensor:
    attention = output
    if isinstance(output, (tuple, list)) and len(output) >= 2:
        attention = output[1]  # a Hugging Face attention module: (output, probabilities)
    if not isinstance(attention, torch.Tensor) or attention.ndim != 4:
        got = tuple(attention.shape) if isinstance(attention, torch.Tensor) else attention
        raise ValueError(
            f"{name} gave {got!r} as its attention; expected probabilities of shape "
            "B x heads x N x N, or an (output, probabilities) tuple; pass attention_layers "
            "that output them."
        )
    return attention


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


def _check_attention_layers(model: nn.Module, attention_layers: Any) -> list[nn.Module]:
    if isinstance(attention_layers, nn.Module):
        raise TypeError(
            f"attention_layers must be a list of modules, got a single "
            f"{type(attention_layers).__name__}; pass attention_layers=[layer]."
        )
    layers = list(attention_layers)
    if not layers:
        raise ValueError("attention_layers is empty; pass the model's attention modules.")
    submodules = {id(module) for module in model.modules()}
    for index, layer in enumerate(layers):
        if not isinstance(layer, nn.Module) or id(layer) not in submodules:
            raise ValueError(
                f"attention_layers[{index}] ({type(layer).__name__}) is not a submodule of "
                "the model; pass attention modules of this model instance."
            )
    return layers


def _resolve_prefix_tokens(model: nn.Module, num_prefix_tokens: int | None) -> int | None:
    """The argument, else timm's ``model.num_prefix_tokens``, else ``None`` (inferred)."""
    if num_prefix_tokens is None:
        if getattr(model, "cls_token", True) is None:
            raise ValueError(
                f"{type(model).__name__} has no class token (model.cls_token is None), and "
                "attention rollout reads the class token's row; use a model with one."
            )
        num_prefix_tokens = getattr(model, "num_prefix_tokens", None)
        if num_prefix_tokens is None:
            return None
    if not isinstance(num_prefix_tokens, int) or isinstance(num_prefix_tokens, bool):
        raise TypeError(f"num_prefix_tokens must be an int, got {num_prefix_tokens!r}.")
    if num_prefix_tokens < 1:
        raise ValueError(
            f"num_prefix_tokens must be >= 1 (the class token comes first, then any "
            f"distillation or register tokens), got {num_prefix_tokens}."
        )
    return num_prefix_tokens


def _patch_grid(
    num_tokens: int, num_prefix_tokens: int | None, input_shape: Sequence[int]
) -> TokenGrid:
    """The class token, any further prefix tokens, and the patch grid of the tokens."""
    layout = infer_token_grid(num_tokens, input_shape[-2:], num_prefix_tokens)
    if layout.prefix_tokens < 1:
        raise ValueError(
            f"The attentions have {num_tokens} tokens that form a {layout.height} x "
            f"{layout.width} patch grid with no class token before them, and attention "
            "rollout reads the class token's row; pass num_prefix_tokens=... (class + "
            "distillation + register tokens) to AttentionRollout if the model has one."
        )
    return layout


def _check_input(input_tensor: Any, model: nn.Module) -> torch.Tensor:
    return check_input_tensor(input_tensor, model, ndims=(4,), who="AttentionRollout: ")
