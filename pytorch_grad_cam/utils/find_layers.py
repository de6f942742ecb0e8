"""Which layer to explain: the usual choice for common architectures, and dotted paths.

The advice, as code: the last convolutional block of a CNN (its maps are the most
semantic and still spatial); for a ViT, the input of the last block's attention
(``blocks[-1].norm1``), not the last block's output, whose patch tokens do not reach the
class token and so get zero gradient; for Swin, the last block of the last stage.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence

from torch import nn

#: (dotted path, what it is), tried in order; the first path that exists is suggested.
KNOWN_LAYERS: Sequence[tuple[str, str]] = (
    # Vision transformers: the last block's input to its attention.
    ("vit.layers.-1.layernorm_before", "Hugging Face ViT (transformers 5)"),
    ("vit.encoder.layer.-1.layernorm_before", "Hugging Face ViT"),
    ("deit.encoder.layer.-1.layernorm_before", "Hugging Face DeiT"),
    ("encoder.layers.-1.ln_1", "torchvision ViT"),
    ("blocks.-1.norm1", "timm ViT / DeiT"),
    ("layers.-1.blocks.-1.norm1", "timm Swin"),
    # CNNs: the last convolutional block.
    ("layer4.-1", "ResNet / ResNeXt / Wide ResNet"),
    ("stages.-1", "timm ConvNeXt / staged CNN"),
    ("trunk_output", "torchvision RegNet"),
    ("inception5b", "torchvision GoogLeNet"),
    ("Mixed_7c", "torchvision Inception v3"),
    ("conv5", "torchvision ShuffleNet v2"),
    ("layers.-1", "torchvision MNASNet"),
    ("_bn1", "EfficientNet-Lite (efficientnet-lite-pytorch)"),
    ("bn2", "timm EfficientNet / MobileNet"),
    # torchvision Swin: features[-1] is the last stage, a sequence of blocks.
    ("features.-1.-1.norm1", "torchvision Swin"),
    ("features.-1", "VGG / DenseNet / MobileNet / EfficientNet / ConvNeXt / SqueezeNet"),
)


def get_layer(model: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted ``path`` such as ``"layer4.1"`` or ``"features.-1"``
    (integers index sequences and module lists, negative ones from the end).

    Raises ``ValueError`` naming the part that does not exist and the nearest names.
    """
    module = model
    walked: list[str] = []
    for part in path.split("."):
        child = _child(module, part)
        if child is None:
            raise ValueError(_missing_part_message(model, module, path, ".".join(walked), part))
        module = child
        walked.append(part)
    return module


def _missing_part_message(
    model: nn.Module, module: nn.Module, path: str, where: str, part: str
) -> str:
    children = [name for name, _ in module.named_children()]
    if isinstance(module, (nn.Sequential, nn.ModuleList)):
        count = len(children)
        contents = f"{count} entries: index 0 to {count - 1} or -1 to -{count}"
    else:
        contents = ", ".join(children[:12]) + (", ..." if len(children) > 12 else "") or "none"
    names = [name for name, _ in model.named_modules() if name]
    close = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
    hint = f"; nearest layer names: {', '.join(close)}" if close else ""
    return (
        f"layer path {path!r}: {where or 'the model'} has no submodule {part!r} "
        f"(it has {contents}){hint}."
    )


def _child(module: nn.Module, part: str) -> nn.Module | None:
    try:
        index = int(part)
    except ValueError:
        child = getattr(module, part, None) if part else None
        return child if isinstance(child, nn.Module) else None
    children = list(module.children())
    if isinstance(module, (nn.Sequential, nn.ModuleList)) and -len(children) <= index < len(
        children
    ):
        return module[index]
    return dict(module.named_children()).get(part)


def suggest_target_layer_names(model: nn.Module) -> list[str]:
    """The dotted path of the usual target layer for ``model``'s architecture (one entry).

    Raises ``ValueError`` for an architecture it does not know, saying what to pick.
    """
    model = _unwrapped(model)
    for path, _ in KNOWN_LAYERS:
        try:
            layer = get_layer(model, path)
        except ValueError:
            continue
        if layer is not model:
            return [path]
    raise ValueError(
        f"no known target layer for {type(model).__name__}; pass target_layers yourself: "
        "for a CNN the last convolutional block (whose output is still B x C x H x W), for "
        "a transformer the last block's normalisation before attention."
    )


def suggest_target_layers(model: nn.Module) -> list[nn.Module]:
    """The usual target layers for ``model`` (see ``suggest_target_layer_names``)."""
    model = _unwrapped(model)
    return [get_layer(model, path) for path in suggest_target_layer_names(model)]


def _unwrapped(model: nn.Module) -> nn.Module:
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return model.module
    return model


__all__ = ["KNOWN_LAYERS", "get_layer", "suggest_target_layer_names", "suggest_target_layers"]


# --------------------------------------------------------------------- grad-cam 1.5.7's helpers
# They change the model they are given, as their names say; the package's methods never
# call them on a user's model.
def replace_layer_recursive(model: nn.Module, old_layer: nn.Module, new_layer: nn.Module) -> bool:
    """Put ``new_layer`` in the place of the submodule ``old_layer`` (the first place it
    is found, depth first); ``True`` if it was found."""
    for name, child in model.named_children():
        if child is old_layer:
            model._modules[name] = new_layer  # noqa: SLF001 (nn.Sequential and ModuleList too)
            return True
        if replace_layer_recursive(child, old_layer, new_layer):
            return True
    return False


def replace_all_layer_type_recursive(
    model: nn.Module, old_layer_type: type | tuple[type, ...], new_layer: nn.Module
) -> None:
    """Put ``new_layer`` in the place of every submodule that is an ``old_layer_type``
    (every place: one module object may sit in several)."""
    for name, child in list(model._modules.items()):  # noqa: SLF001 (named_children dedups)
        if child is None:
            continue
        if isinstance(child, old_layer_type):
            model._modules[name] = new_layer  # noqa: SLF001
        else:
            replace_all_layer_type_recursive(child, old_layer_type, new_layer)


def find_layer_types_recursive(
    model: nn.Module, layer_types: type | Sequence[type]
) -> list[nn.Module]:
    """Every submodule of ``model`` (``model`` included) that is one of ``layer_types``."""
    types = layer_types if isinstance(layer_types, type) else tuple(layer_types)
    return find_layer_predicate_recursive(model, lambda layer: isinstance(layer, types))


def find_layer_predicate_recursive(
    model: nn.Module, predicate: Callable[[nn.Module], bool]
) -> list:
    """Every submodule of ``model`` (``model`` included) for which ``predicate`` is true,
    in the order of ``model.modules()``."""
    return [module for module in model.modules() if predicate(module)]
