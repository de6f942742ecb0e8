"""Recording a vision transformer's attention probabilities during one forward pass.

Shared by the attention methods (``AttentionRollout``, ``TransformerAttribution``,
``LeGrad``). :class:`AttentionCapture` finds the attention layers of timm ViT / DeiT
(an attention with a ``fused_attn`` flag and an ``attn_drop`` module), torchvision ViT
(``nn.MultiheadAttention``) and Hugging Face models (ViT, CLIP, ...: their innermost
``...Attention`` modules), or takes them from the user, and runs the model once with each
layer's ``B x heads x N x N`` probabilities recorded in call order. For the call, and
only for it, timm's fused kernel is switched off, Hugging Face's attention
implementation is set to eager and ``nn.MultiheadAttention`` is asked for per-head
weights: the model is left as it was found.

With ``with_gradients=True`` the pass records autograd from the input, so that the
gradient of a score with respect to each attention can be taken afterwards with
:func:`attention_gradients` (``torch.autograd.grad`` on the tensor the layer actually
used: no parameter's ``.grad`` is touched). ``nn.MultiheadAttention`` returns a reshaped
view of the probabilities it multiplies with the values; the gradient is taken at the
tensor behind the view.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from pytorch_grad_cam.activations_and_gradients import split_first_tensor
from pytorch_grad_cam.utils.validation import check_target_layers

#: The Hugging Face config attribute that selects the attention implementation.
ATTN_IMPLEMENTATION = "_attn_implementation"
#: Autograd nodes of ``view`` / ``squeeze``: nn.MultiheadAttention's weights pass them.
_VIEW_NODES = ("ViewBackward0", "SqueezeBackward0", "SqueezeBackward1", "SqueezeBackward2")


@dataclass
class RecordedAttentions:
    """What one recorded pass gives: the model's output, each attention call's
    ``B x heads x N x N`` probabilities (call order), the index of the attention layer
    that made each, their names for messages, and the outputs of the extra ``blocks``."""

    output: Any
    attentions: list[torch.Tensor]
    layer_indices: list[int]
    names: list[str]
    #: Where autograd takes each attention's gradient (``with_gradients=True`` only).
    edges: list[GradientEdge] = field(default_factory=list)
    #: Each extra block's output (its first tensor), ``None`` for a block that never ran.
    block_outputs: list[torch.Tensor | None] = field(default_factory=list)


class AttentionCapture:
    """The attention layers of ``model`` and a recorded forward pass through them.

    Args:
        model: the transformer (``DataParallel`` already looked through).
        attention_layers: ``None`` to find them (see the module docstring), or a list
            of submodules whose output is the attention probabilities or an
            ``(output, probabilities)`` tuple, or timm / ``nn.MultiheadAttention``
            modules. Layers given here must all run; found ones that never run (a CLIP
            text encoder behind a wrapper that encodes images) are skipped.
        who: the method's name, for messages.
    """

    def __init__(
        self, model: nn.Module, attention_layers: Sequence[nn.Module] | None, who: str
    ) -> None:
        self.model = model
        self.who = who
        self.found = attention_layers is None
        hugging_face = len(_attention_configs(model)) > 0
        self.uses_output_attentions = (
            self.found and _has_own_attention_config(model) and not _transformers_5()
        )
        if attention_layers is not None:
            self.layers = check_target_layers(model, attention_layers, "attention_layers")
        elif self.uses_output_attentions:
            self.layers = []
        elif hugging_face:
            self.layers = _hugging_face_attention_layers(model, who)
        else:
            self.layers = _find_attention_layers(model, who)

    def record(
        self,
        input_tensor: torch.Tensor,
        with_gradients: bool = False,
        blocks: Sequence[nn.Module] = (),
    ) -> RecordedAttentions:
        """Run the model once on ``input_tensor`` (the caller holds eval mode and the
        model's lock) and record the attentions, and the outputs of ``blocks``."""
        autograd = torch.enable_grad() if with_gradients else torch.no_grad()
        with autograd, _eager_attention(self.model), _block_outputs(blocks) as outputs:
            model_input = input_tensor
            if with_gradients:
                # From the input on, so that every attention joins the graph even when
                # the model's parameters are frozen.
                model_input = input_tensor.detach().requires_grad_(True)
            if self.uses_output_attentions:
                output = self.model(model_input, output_attentions=True)
                attentions = list(getattr(output, "attentions", None) or [])
                if not attentions:
                    raise ValueError(
                        f"{type(self.model).__name__} returned no attentions for "
                        "output_attentions=True; pass attention_layers=[...] (its attention "
                        f"modules) to {self.who}."
                    )
                indices = list(range(len(attentions)))
                names = [f"attentions[{i}] of the model's output" for i in indices]
                views = [False] * len(attentions)
            else:
                with _recording(self.layers, with_gradients) as recorded:
                    output = self.model(model_input)
                indices = self._reached([index for index, _, _ in recorded])
                names = [
                    f"attention_layers[{i}] ({type(self.layers[i]).__name__})" for i in indices
                ]
                attentions = [value for _, value, _ in recorded]
                views = [view for _, _, view in recorded]
        tensors = [_as_attention(name, value) for name, value in zip(names, attentions)]
        edges = []
        if with_gradients:
            edges = [_gradient_edge(n, a, view) for n, a, view in zip(names, tensors, views)]
        return RecordedAttentions(output, tensors, indices, names, edges, list(outputs))

    def _reached(self, indices: list[int]) -> list[int]:
        """The recorded layer indices; every given layer must have run, and at least one
        found layer."""
        reached = set(indices)
        if self.found and reached:
            return indices
        for index, layer in enumerate(self.layers):
            if index not in reached:
                raise ValueError(
                    f"attention_layers[{index}] ({type(layer).__name__}) recorded no "
                    "attention: the forward pass never reached it (or, for a timm attention, "
                    "its attn_drop). Pass attention layers that the model's forward() runs."
                )
        return indices


def attention_gradients(
    scores: torch.Tensor, recorded: RecordedAttentions, calls: Sequence[int] | None = None
) -> list[torch.Tensor]:
    """d(sum of the images' scores)/d(attention) for the recorded attention calls ``calls``
    (default all), each shaped as its attention (images are independent, so each image's
    rows hold its own score's gradient); zeros where the scores do not depend on it. The
    graph is kept, so that further scores of the same pass can be differentiated."""
    with torch.enable_grad():  # the caller may be inside torch.no_grad()
        score = scores.sum()
    selected = range(len(recorded.attentions)) if calls is None else calls
    attentions = [recorded.attentions[i] for i in selected]
    edges = [recorded.edges[i] for i in selected]
    gradients: Sequence[torch.Tensor | None] = [None] * len(edges)
    if score.requires_grad:
        gradients = torch.autograd.grad(score, edges, retain_graph=True, allow_unused=True)
    return [
        torch.zeros_like(a) if g is None else g.reshape(a.shape)
        for a, g in zip(attentions, gradients)
    ]


def _gradient_edge(name: str, attention: torch.Tensor, through_view: bool) -> GradientEdge:
    """Where the gradient of the attention ``attention`` is taken: the tensor itself, or
    for a view (nn.MultiheadAttention's weights) the tensor behind it."""
    if not attention.requires_grad:
        raise ValueError(
            f"{name} gave attention probabilities that are not part of the autograd graph "
            "(computed without gradients, or detached), so their gradient cannot be taken; "
            "pass attention_layers whose probabilities the forward pass computes with "
            "autograd on."
        )
    node = attention.grad_fn
    if not through_view or node is None:
        return get_gradient_edge(attention)
    edge = GradientEdge(node, attention.output_nr)
    while edge.node.name() in _VIEW_NODES and len(edge.node.next_functions) == 1:
        base, output_nr = edge.node.next_functions[0]
        if base is None:
            break
        edge = GradientEdge(base, output_nr)
    return edge


# --------------------------------------------------------------------- finding the layers
def _is_timm_attention(module: nn.Module) -> bool:
    attn_drop = getattr(module, "attn_drop", None)
    return hasattr(module, "fused_attn") and isinstance(attn_drop, nn.Module)


def _find_attention_layers(model: nn.Module, who: str) -> list[nn.Module]:
    layers = [
        module
        for module in model.modules()
        if isinstance(module, nn.MultiheadAttention) or _is_timm_attention(module)
    ]
    if not layers:
        raise ValueError(
            f"{who} found no attention layers in {type(model).__name__}: it looks "
            "for timm attentions (fused_attn + attn_drop), nn.MultiheadAttention and Hugging "
            "Face models (config._attn_implementation). Pass attention_layers=[...]: modules "
            "whose output is the B x heads x N x N attention probabilities."
        )
    return layers


def _hugging_face_attention_layers(model: nn.Module, who: str) -> list[nn.Module]:
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
            f"{who} found no attention modules in {type(model).__name__}; pass "
            "attention_layers=[...]: modules that return (output, attention probabilities)."
        )
    return inner


# --------------------------------------------------------------------- recording
@contextmanager
def _recording(
    layers: Sequence[nn.Module], with_gradients: bool
) -> Iterator[list[tuple[int, Any, bool]]]:
    """Record ``(layer index, output, is a view)`` for each attention call, in call order."""
    recorded: list[tuple[int, Any, bool]] = []
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
                hook = _recorder(index, recorded, with_gradients)
                handles.append(attn_drop.register_forward_hook(hook))
            else:
                hook = _recorder(index, recorded, with_gradients)
                handles.append(layer.register_forward_hook(hook))
        yield recorded
    finally:
        for handle in handles:
            handle.remove()
        for layer, flag in fused_flags:
            layer.fused_attn = flag


def _recorder(
    index: int, recorded: list[tuple[int, Any, bool]], with_gradients: bool
) -> Callable[..., Any]:
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        if with_gradients and isinstance(output, torch.Tensor) and not output.requires_grad:
            # Probabilities that depend on nothing differentiable (set by hand): the layer
            # hands on a leaf, so that the score's gradient with respect to them exists.
            output = output.detach().requires_grad_(True)
            recorded.append((index, output, False))
            return output
        recorded.append((index, output, False))
        return None

    return hook


def _hook_multihead_attention(
    layer: nn.MultiheadAttention, index: int, recorded: list[tuple[int, Any, bool]]
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
        recorded.append((index, weights, True))
        if not need_weights:
            return attn_output, None
        return attn_output, weights.mean(dim=-3) if average else weights

    return [
        layer.register_forward_pre_hook(ask_for_head_weights, with_kwargs=True),
        layer.register_forward_hook(record),
    ]


@contextmanager
def _block_outputs(blocks: Sequence[nn.Module]) -> Iterator[list[torch.Tensor | None]]:
    """Each block's last output (its first tensor), in the order of ``blocks``."""
    outputs: list[torch.Tensor | None] = [None] * len(blocks)

    def keeper(position: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            outputs[position], _ = split_first_tensor(output)

        return hook

    handles = []
    try:
        for position, block in enumerate(blocks):
            handles.append(block.register_forward_hook(keeper(position)))
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


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


# --------------------------------------------------------------------- Hugging Face
def _has_own_attention_config(model: nn.Module) -> bool:
    return hasattr(getattr(model, "config", None), ATTN_IMPLEMENTATION)


def _transformers_5() -> bool:
    """Transformers 5's eager attention modules return ``(output, probabilities)`` on every
    call; 4.x's only under ``output_attentions=True``, which 5 serves with hooks of its own
    that it installs on the model for good."""
    import transformers

    return int(transformers.__version__.split(".")[0]) >= 5


def _attention_configs(model: nn.Module) -> list[Any]:
    """Every Hugging Face config (and sub-config) of the model's modules, parents first."""
    found: dict[int, Any] = {}

    def visit(config: Any) -> None:
        if id(config) in found or not hasattr(config, ATTN_IMPLEMENTATION):
            return
        found[id(config)] = config
        for key in getattr(config, "sub_configs", None) or {}:
            visit(getattr(config, key, None))

    for module in model.modules():
        visit(getattr(module, "config", None))
    return list(found.values())


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
