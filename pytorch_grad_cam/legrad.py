"""LeGrad: the gradient of each layer's score with respect to that layer's attention map.

Bousselham, W., Boggust, A., Chaybouti, S., Strobelt, H. and Kuehne, H. (2025). "LeGrad:
An Explainability Method for Vision Transformers via Feature Formation Sensitivity",
ICCV 2025, arXiv:2404.03214.

With ``A_l`` the ``B x heads x N x N`` attention probabilities of layer ``l`` (``L``
layers, ``h`` heads, ``N`` tokens) and ``s_l`` the target's score read from layer ``l``'s
own tokens (the model's head, i.e. its final normalisation, pooling and classifier or
CLIP projection, applied to the output of the block that holds ``A_l``; ``s_L`` is the
model's score), per image:

    E_l = 1 / (h N) * sum_heads sum_queries ReLU( d s_l / d A_l )           (N values)
    E   = 1 / L * sum_l E_l

The map is ``E`` over the patch tokens (the prefix tokens, class, distillation,
register, dropped), laid out on the patch grid, resized bilinearly to the input and
min-max scaled to [0, 1] per image. The gradient itself is the signal: the attention
probabilities do not multiply it (unlike ``TransformerAttribution``).

Where the paper leaves a choice, what users of the CAM classes expect is done: one target
per image (by default its top class; ``SimilarityToConceptTarget`` against a text
embedding for a CLIP image encoder), every attention layer kept, and for a model whose
head is not known (``layer_head="auto"`` recognises timm ViT / DeiT, torchvision ViT,
Hugging Face ViT and CLIP image encoders), every layer scored by the model's own output,
with a :class:`LayerHeadWarning` saying so.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pytorch_grad_cam.attention_capture import RecordedAttentions, attention_gradients
from pytorch_grad_cam.gradient_attention_method import GradientAttentionMethod
from pytorch_grad_cam.utils.caller_warnings import warn_at_caller
from pytorch_grad_cam.utils.model_outputs import OutputSelector
from pytorch_grad_cam.utils.model_targets import Target
from pytorch_grad_cam.utils.reshape_transforms import ReshapeTransform
from pytorch_grad_cam.utils.transformer_heads import LayerHead, block_of, find_layer_head


class LayerHeadWarning(UserWarning):
    """LeGrad found no head to read a layer's tokens with, and scores every layer with the
    model's own output."""


def legrad_relevance(gradients: Sequence[torch.Tensor]) -> torch.Tensor:
    """``E = mean_l mean_(heads, queries) ReLU(grad_l)``: ``B x N`` (float32) from each
    layer's ``B x heads x N x N`` gradient of its score with respect to its attention."""
    if len(gradients) == 0:
        raise ValueError("legrad_relevance needs at least one layer's gradient.")
    for gradient in gradients:
        first = gradients[0]
        same_tokens = (gradient.shape[0], gradient.shape[-1]) == (first.shape[0], first.shape[-1])
        if gradient.ndim != 4 or gradient.shape[-2] != gradient.shape[-1] or not same_tokens:
            raise ValueError(
                f"a gradient has shape {tuple(gradient.shape)} (the first layer's: "
                f"{tuple(gradients[0].shape)}); each must be B x heads x N x N with the same "
                "B and N."
            )
    per_layer = [gradient.float().clamp(min=0).mean(dim=(1, 2)) for gradient in gradients]
    return torch.stack(per_layer).mean(dim=0)


class LeGrad(GradientAttentionMethod):
    """LeGrad maps for a vision transformer or a CLIP image encoder (module docstring).

    ``LeGrad(model)(input_tensor, targets)`` gives ``B x H x W`` float32 maps in [0, 1].
    Besides :class:`GradientAttentionMethod`'s arguments (``attention_layers``,
    ``reshape_transform``, ``num_prefix_tokens``, ``output_selector``):

    Args:
        layer_head: how a layer's tokens (``B x N x D``, the output of the block that
            holds the attention layer: the innermost item of an ``nn.ModuleList`` /
            ``nn.Sequential`` around it) become what the targets score. ``"auto"``:
            the model's own head for the recognised architectures (see above), else the
            model's output for every layer with a :class:`LayerHeadWarning`; a callable
            ``tokens -> output``; or ``None`` to score every layer with the model's
            output (the gradient of the final score with respect to each attention).
    """

    name = "LeGrad"
    needs_class_token = False

    def __init__(
        self,
        model: nn.Module,
        attention_layers: Sequence[nn.Module] | None = None,
        reshape_transform: ReshapeTransform | None = None,
        *,
        layer_head: LayerHead | str | None = "auto",
        num_prefix_tokens: int | None = None,
        output_selector: OutputSelector = None,
    ) -> None:
        super().__init__(
            model,
            attention_layers,
            reshape_transform,
            num_prefix_tokens=num_prefix_tokens,
            output_selector=output_selector,
        )
        if isinstance(layer_head, str):
            if layer_head != "auto":
                raise ValueError(
                    f"layer_head must be 'auto', a callable tokens -> output, or None, got "
                    f"{layer_head!r}."
                )
            layer_head = self._found_head()
        elif layer_head is not None and not callable(layer_head):
            raise TypeError(
                "layer_head must be 'auto', a callable tokens -> output, or None, got "
                f"{type(layer_head).__name__}."
            )
        if layer_head is not None and self.capture.uses_output_attentions:
            raise ValueError(
                "LeGrad reads each layer's tokens with layer_head, which needs the attention "
                "modules: pass attention_layers=[...] as well (with transformers 4 they are not "
                "found by themselves), or layer_head=None."
            )
        self.layer_head: LayerHead | None = layer_head
        self._blocks: list[nn.Module] = []
        self._block_of_layer: list[int] = []
        if layer_head is not None:
            self._find_blocks()

    @property
    def blocks(self) -> list[nn.Module]:
        """The blocks whose outputs are read with ``layer_head`` (none without a head)."""
        return list(self._blocks)

    def token_relevance(
        self, recorded: RecordedAttentions, targets: Sequence[Target]
    ) -> torch.Tensor:
        """``E`` over every token: ``B x N``."""
        if self.layer_head is None:
            scores = self.scores(recorded.output, targets, self.output_selector)
            gradients = attention_gradients(scores, recorded)
        else:
            gradients = [
                self._layer_gradient(recorded, call, targets)
                for call in range(len(recorded.attentions))
            ]
        with torch.no_grad():
            return legrad_relevance(gradients)

    # ----------------------------------------------------------------- helpers
    def _layer_gradient(
        self, recorded: RecordedAttentions, call: int, targets: Sequence[Target]
    ) -> torch.Tensor:
        """``d s_l / d A_l`` for the attention call ``call``, ``s_l`` read from its block."""
        layer_index = recorded.layer_indices[call]
        if recorded.layer_indices.count(layer_index) > 1:
            raise ValueError(
                f"{recorded.names[call]} ran {recorded.layer_indices.count(layer_index)} times "
                "in one forward pass, so its block's output cannot be paired with each call; "
                "pass layer_head=None to score every call with the model's output."
            )
        tokens = recorded.block_outputs[self._block_of_layer[layer_index]]
        assert tokens is not None  # the block holds the attention, which ran
        assert self.layer_head is not None  # only called with a head
        with torch.enable_grad():
            scores = self.scores(self.layer_head(tokens), targets, None)
        (gradient,) = attention_gradients(scores, recorded, [call])
        return gradient

    def _found_head(self) -> LayerHead | None:
        head = None if self.capture.uses_output_attentions else find_layer_head(self.model)
        if head is None:
            warn_at_caller(
                f"LeGrad knows no head for {type(self.model).__name__} to read each layer's "
                "tokens with, so every layer is scored with the model's own output instead "
                "of that layer's tokens (the paper's layerwise scores). Pass "
                "layer_head=callable(tokens) -> output to score each layer's tokens, or "
                "layer_head=None to choose this and silence the warning.",
                LayerHeadWarning,
            )
        return head

    def _find_blocks(self) -> None:
        """The block of each attention layer, each block once."""
        for index, layer in enumerate(self.attention_layers):
            block = block_of(self.model, layer)
            if block is None:
                raise ValueError(
                    f"LeGrad cannot tell which block attention_layers[{index}] "
                    f"({type(layer).__name__}) belongs to: no module around it is an item of "
                    "an nn.ModuleList or nn.Sequential. Pass layer_head=None to score every "
                    "layer with the model's output."
                )
            positions = [i for i, known in enumerate(self._blocks) if known is block]
            if not positions:
                self._blocks.append(block)
            self._block_of_layer.append(positions[0] if positions else len(self._blocks) - 1)
