"""Checks of what a caller passes in, shared by the methods and the metrics.

Each check raises before the model runs, with a message that names the argument, says
what was wrong and how to fix it.
"""

from __future__ import annotations

import numbers
from collections.abc import Collection
from typing import Any

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.utils.model_state import model_device
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, Target

#: The layouts by number of axes, for error messages.
LAYOUTS = {3: "B x C x L for signals", 4: "B x C x H x W", 5: "B x C x D x H x W for volumes"}


def check_input_tensor(
    input_tensor: Any,
    model: nn.Module,
    ndims: Collection[int] = (3, 4, 5),
    who: str = "",
) -> torch.Tensor:
    """``input_tensor`` as a float tensor with values, on the model's device.

    Args:
        input_tensor: what the caller passed as ``input_tensor``.
        model: the model it is for; its parameters' device is where the tensor goes.
        ndims: the numbers of axes accepted (4 for images, 5 for volumes, 3 for signals).
        who: prefixed to messages (``"DropInConfidence: "``).

    Raises:
        TypeError: not a float tensor.
        ValueError: another number of axes, an empty batch or axis, no values (the
            ``meta`` device, for the tensor or the model), NaN or infinite values.
    """
    if not isinstance(input_tensor, torch.Tensor):
        raise TypeError(
            f"{who}input_tensor must be a torch.Tensor, got {type(input_tensor).__name__}; "
            "convert an image with pytorch_grad_cam.utils.image.preprocess_image."
        )
    if not input_tensor.is_floating_point():
        raise TypeError(
            f"{who}input_tensor must be a float tensor, got dtype {input_tensor.dtype}; "
            "convert it with input_tensor.float()."
        )
    shape = tuple(input_tensor.shape)
    if input_tensor.ndim not in ndims:
        layouts = ", or ".join(LAYOUTS[n] for n in sorted(ndims, key=lambda n: n != 4))
        raise ValueError(
            f"{who}input_tensor must have shape {layouts}, got shape {shape}; add the batch "
            "axis with input_tensor.unsqueeze(0)."
        )
    if shape[0] == 0:
        raise ValueError(
            f"{who}input_tensor holds no images (shape {shape}); pass a batch of at least one."
        )
    if 0 in shape:
        raise ValueError(
            f"{who}input_tensor has an axis of size 0 (shape {shape}); pass images with at "
            "least one channel and pixel."
        )
    if input_tensor.device.type == "meta":
        raise ValueError(
            f"{who}input_tensor is on the meta device, which holds shapes but no values; "
            "create it on a real device, e.g. input_tensor = torch.randn(..., device='cpu')."
        )
    device = model_device(model)
    if device is not None and device.type == "meta":
        raise ValueError(
            f"{who}the model's parameters are on the meta device (not materialised), so it "
            "cannot run; allocate them with model.to_empty(device='cpu') and load weights "
            "with model.load_state_dict(...)."
        )
    if not bool(torch.isfinite(input_tensor).all()):
        raise ValueError(
            f"{who}input_tensor contains NaN or infinite values; check the preprocessing."
        )
    if device is not None and input_tensor.device != device:
        input_tensor = input_tensor.to(device)
    return input_tensor


def check_cam_input(input_tensor: Any, model: nn.Module) -> torch.Tensor:
    """A CAM's input: images ``B x C x H x W``, volumes ``B x C x D x H x W`` or signals
    ``B x C x L``, with values, on the model's device, outside inference mode."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "CAM methods cannot run inside torch.inference_mode(): the gradients they need "
            "cannot be recorded there. Call the CAM outside it (torch.no_grad() is fine)."
        )
    if (
        isinstance(input_tensor, torch.Tensor)
        and input_tensor.ndim == 3
        and first_convolution_rank(model) == 2
    ):
        raise ValueError(
            f"input_tensor has shape {tuple(input_tensor.shape)}, B x C x L like a signal, but "
            "the model's first convolution is 2-D: for one image, add the batch axis with "
            "input_tensor.unsqueeze(0)."
        )
    input_tensor = check_input_tensor(input_tensor, model)
    if input_tensor.is_inference():
        input_tensor = input_tensor.clone()
    return input_tensor


def first_convolution_rank(model: nn.Module) -> int | None:
    """1, 2 or 3 for the model's first ``nn.Conv1d`` / ``2d`` / ``3d``; ``None`` without."""
    for module in model.modules():
        for convolution, rank in ((nn.Conv1d, 1), (nn.Conv2d, 2), (nn.Conv3d, 3)):
            if isinstance(module, convolution):
                return rank
    return None


def check_target_layers(
    model: nn.Module, target_layers: Any, argument: str = "target_layers"
) -> list[nn.Module]:
    """``target_layers`` as a non-empty list of submodules of ``model``, or a clear error
    naming ``argument`` (``target_layers``, ``attention_layers``, ...)."""
    if target_layers is None:
        raise TypeError(f"{argument} is required: a list of submodules of the model.")
    if isinstance(target_layers, nn.Module):
        raise TypeError(
            f"{argument} must be a list of modules, got a single "
            f"{type(target_layers).__name__}; pass {argument}=[layer]."
        )
    layers = list(target_layers)
    if not layers:
        raise ValueError(f"{argument} is empty; pass at least one submodule of the model.")
    submodules = {id(module) for module in model.modules()}
    for index, layer in enumerate(layers):
        if not isinstance(layer, nn.Module):
            raise TypeError(
                f"{argument}[{index}] must be an nn.Module, got {type(layer).__name__}."
            )
        if id(layer) not in submodules:
            raise ValueError(
                f"{argument}[{index}] ({type(layer).__name__}) is not a submodule of the "
                "model; pass a layer of this model instance, e.g. model.layer4[-1] (a layer "
                "of another copy of the model never runs)."
            )
    return layers


def check_targets(targets: Any, batch_size: int) -> list[Target]:
    """One callable target per image, or a clear error."""
    if callable(targets):
        raise TypeError(
            "targets must be a list with one target per image, got a single "
            f"{type(targets).__name__}; pass targets=[target] * batch_size to use it for "
            "every image."
        )
    targets = list(targets)
    if len(targets) != batch_size:
        raise ValueError(
            f"targets has {len(targets)} entries but input_tensor has {batch_size} images; "
            "pass one target per image (e.g. [ClassifierOutputTarget(c)] * batch_size)."
        )
    for index, target in enumerate(targets):
        if not callable(target):
            raise TypeError(
                f"targets[{index}] is a {type(target).__name__}, not a callable; use e.g. "
                "ClassifierOutputTarget(category) from pytorch_grad_cam.utils.model_targets."
            )
    return targets


def is_integer(value: Any) -> bool:
    """A class index: a Python or numpy integer, or a 0-d integer tensor (not a bool)."""
    if isinstance(value, torch.Tensor):
        return value.ndim == 0 and not value.is_floating_point() and value.dtype != torch.bool
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_positive_int(value: Any, minimum: int = 1) -> bool:
    """An int (not a bool) of at least ``minimum``: batch sizes, sample counts."""
    return (
        isinstance(value, numbers.Integral)
        and not isinstance(value, (bool, np.bool_))
        and int(value) >= minimum
    )


def check_positive_int(value: Any, name: str, hint: str = "") -> int:
    """``value`` as an int of at least 1, or a ValueError naming ``name`` with ``hint``
    (what it counts, or an example of a right value)."""
    if not is_positive_int(value):
        hint = f" ({hint})" if hint else ""
        raise ValueError(f"{name} must be a positive int{hint}, got {value!r}.")
    return int(value)


def looks_like_categories(targets: Any) -> bool:
    """The seeds' positional ``cam(input, 281)`` / ``cam(input, [281, 3])`` spelling."""
    if is_integer(targets):
        return True
    return (
        isinstance(targets, (list, tuple, np.ndarray))
        and len(targets) > 0
        and all(is_integer(t) for t in targets)
    )


def categories_to_targets(target_category: Any, batch_size: int) -> list[Target] | None:
    """The seeds' ``target_category`` (``None``, an int, or one int per image) as targets."""
    if target_category is None:
        return None
    if is_integer(target_category):
        return [ClassifierOutputTarget(int(target_category)) for _ in range(batch_size)]
    return [ClassifierOutputTarget(int(category)) for category in target_category]


def check_create_graph(method: str, supported: bool, as_tensor: bool) -> None:
    """``create_graph=True`` needs a gradient method and ``as_tensor=True``."""
    if not supported:
        raise ValueError(
            f"create_graph=True is not supported by {method}: only the gradient methods "
            "(GradCAM, HiResCAM, GradCAMElementWise, GradCAMPlusPlus, XGradCAM, LayerCAM, "
            "EigenGradCAM) give maps that are differentiable in the model's parameters."
        )
    if not as_tensor:
        raise ValueError(
            "create_graph=True needs as_tensor=True: a numpy array cannot carry the autograd graph."
        )
