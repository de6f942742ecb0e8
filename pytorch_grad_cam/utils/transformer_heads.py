"""Each layer's tokens read out as the model's output: the head of a vision transformer.

LeGrad scores every layer with the target computed from that layer's own tokens, as if
the network ended there: the final normalisation, the pooling and the classifier (or
CLIP's projection) applied to the block's output. :func:`find_layer_head` knows that
head for timm ViT / DeiT, torchvision ``VisionTransformer``, Hugging Face
``ViTForImageClassification`` and a Hugging Face CLIP image encoder (a ``CLIPModel`` or
``CLIPVisionModelWithProjection``, also inside a wrapper module whose forward returns the
image embedding). :func:`block_of` finds the block (the item of an ``nn.ModuleList`` /
``nn.Sequential``) that holds an attention layer.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import torch
from torch import nn

#: A layer's tokens ``B x N x D`` -> what the targets score (as the model's output).
LayerHead = Callable[[torch.Tensor], Any]


def find_layer_head(model: nn.Module) -> LayerHead | None:
    """The head of a recognised vision transformer, or ``None``."""
    # A torchvision ViT exists only once torchvision is imported: no import (seconds) here.
    torchvision_vit = sys.modules.get("torchvision.models.vision_transformer")
    if torchvision_vit is not None and isinstance(model, torchvision_vit.VisionTransformer):
        heads, encoder_norm = model.heads, model.encoder.ln
        return lambda tokens: heads(encoder_norm(tokens)[:, 0])
    forward_head, norm = getattr(model, "forward_head", None), _submodule(model, "norm")
    if type(model).__module__.startswith("timm.") and callable(forward_head) and norm is not None:
        return lambda tokens: forward_head(norm(tokens))
    classifier, vit = _submodule(model, "classifier"), _submodule(model, "vit")
    vit_norm = _submodule(vit, "layernorm")
    if classifier is not None and vit_norm is not None:  # Hugging Face ViT
        return lambda tokens: classifier(vit_norm(tokens)[:, 0])
    clip_heads = []  # a CLIP image encoder: the projection of the normalised class token
    for module in model.modules():
        projection = _submodule(module, "visual_projection")
        post_norm = _submodule(_submodule(module, "vision_model"), "post_layernorm")
        if projection is not None and post_norm is not None:
            clip_heads.append((projection, post_norm))
    if len(clip_heads) == 1:
        ((projection, post_norm),) = clip_heads
        return lambda tokens: projection(post_norm(tokens[:, 0]))
    return None


def block_of(model: nn.Module, layer: nn.Module) -> nn.Module | None:
    """The innermost module that holds ``layer`` (``layer`` excluded) and is an item of an
    ``nn.ModuleList`` or ``nn.Sequential``: the transformer block of an attention layer."""
    best: nn.Module | None = None
    for parent in model.modules():
        if not isinstance(parent, (nn.ModuleList, nn.Sequential)):
            continue
        for child in parent.children():
            holds = child is not layer and any(m is layer for m in child.modules())
            if holds and (best is None or any(m is child for m in best.modules())):
                best = child
    return best


def _submodule(owner: Any, name: str) -> nn.Module | None:
    """``owner.name`` when it is a module, else ``None``."""
    value = getattr(owner, name, None)
    return value if isinstance(value, nn.Module) else None
