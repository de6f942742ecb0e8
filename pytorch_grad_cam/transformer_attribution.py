"""Transformer attribution: relevance rolled out through the gradient-weighted attention.

Chefer, H., Gur, S. and Wolf, L. (2021). "Generic Attention-model Explainability for
Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV 2021, arXiv:2103.15679;
the rules for self-attention (section 3, equations 5 and 6).

With ``A_l`` the ``B x heads x N x N`` attention probabilities of layer ``l`` (rows attend
to columns) and ``y_t`` the score of the target ``t`` (one target per image; by default
each image's top class), per image:

    grad(A_l) = d y_t / d A_l                                (the layer's own probabilities)
    Abar_l    = mean_heads( ReLU( grad(A_l) * A_l ) )                              (N x N)
    R <- I;   R <- R + Abar_l R   for l = 1 .. L          (the layers in the order they run)

The map is the class token's row of ``R`` over the patch tokens, ``R[0, p:]`` (``p``
prefix tokens: class, distillation, register), laid out on the patch grid, resized
bilinearly to the input and scaled to [0, 1] per image.

Where the paper leaves a choice, what users of the CAM classes expect is done: the score
is the raw logit of the class (``ClassifierOutputTarget``; any target works, e.g.
``SimilarityToConceptTarget`` for a CLIP image embedding), the gradients of every image
come from one backward pass of the summed scores (images are independent), and the map
keeps every layer (the paper's self-attention rule starts at the first layer).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pytorch_grad_cam.attention_capture import RecordedAttentions, attention_gradients
from pytorch_grad_cam.gradient_attention_method import GradientAttentionMethod
from pytorch_grad_cam.utils.model_targets import Target


def gradient_weighted_attention(attention: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """``Abar = mean_heads(ReLU(grad(A) * A))``: ``B x N x N`` (float32) from one layer's
    ``B x heads x N x N`` probabilities and their gradient."""
    return (gradient.float() * attention.float()).clamp(min=0).mean(dim=1)


def relevance_rollout(
    attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor]
) -> torch.Tensor:
    """``R`` (``B x N x N``, float32): ``R = I``, then ``R <- R + Abar_l R`` per layer,
    first layer first; see the module docstring."""
    if len(attentions) == 0 or len(attentions) != len(gradients):
        raise ValueError(
            f"relevance_rollout needs one gradient per attention and at least one layer, got "
            f"{len(attentions)} attentions and {len(gradients)} gradients."
        )
    first = attentions[0]
    relevance = torch.eye(first.shape[-1], device=first.device).expand(first.shape[0], -1, -1)
    for attention, gradient in zip(attentions, gradients):
        same_tokens = (attention.shape[0], attention.shape[-1]) == (first.shape[0], first.shape[-1])
        if attention.shape != gradient.shape or attention.ndim != 4 or not same_tokens:
            raise ValueError(
                f"an attention of shape {tuple(attention.shape)} has a gradient of shape "
                f"{tuple(gradient.shape)} (the first layer's attention: "
                f"{tuple(first.shape)}); each layer needs B x heads x N x N for both, with "
                "the same B and N."
            )
        relevance = relevance + gradient_weighted_attention(attention, gradient) @ relevance
    return relevance


class TransformerAttribution(GradientAttentionMethod):
    """Chefer et al.'s gradient-weighted relevance rollout (see the module docstring).

    ``TransformerAttribution(model)(input_tensor, targets)`` gives ``B x H x W`` float32
    maps in [0, 1]; the constructor's arguments are :class:`GradientAttentionMethod`'s
    (``attention_layers``, ``reshape_transform``, ``num_prefix_tokens``,
    ``output_selector``). The model needs a class token, whose row is read.
    """

    name = "TransformerAttribution"

    def token_relevance(
        self, recorded: RecordedAttentions, targets: Sequence[Target]
    ) -> torch.Tensor:
        """The class token's row of ``R``: ``B x N``."""
        scores = self.scores(recorded.output, targets, self.output_selector)
        gradients = attention_gradients(scores, recorded)
        with torch.no_grad():
            return relevance_rollout(recorded.attentions, gradients)[:, 0]
