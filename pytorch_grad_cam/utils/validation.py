"""Checks of what a caller passes in, shared by the methods and the metrics.

Each check raises before the model runs, with a message that names the argument, says
what was wrong and how to fix it.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
from torch import nn

from pytorch_grad_cam.utils.model_state import model_device

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
