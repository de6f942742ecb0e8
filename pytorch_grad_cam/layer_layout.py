"""How a target layer's output becomes ``B x C x *spatial`` activations.

The user's ``reshape_transform`` when given; otherwise token sequences and channels-last
outputs are reshaped by an inferred transform, announced once per layer with an
:class:`InferredReshapeWarning`. Errors name the layer and the shapes.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from pytorch_grad_cam.activations_and_gradients import is_tensor_mapping
from pytorch_grad_cam.utils.caller_warnings import warn_at_caller
from pytorch_grad_cam.utils.reshape_transforms import (
    ReshapeTransform,
    channels_last_to_first,
    infer_reshape_transform,
    infer_token_grid,
    tokens_to_grid,
)
from pytorch_grad_cam.utils.validation import is_integer

LAYOUTS = {1: "B x C x L", 2: "B x C x H x W", 3: "B x C x D x H x W"}


class InferredReshapeWarning(UserWarning):
    """A target layer's output was reshaped by a transform the CAM inferred."""


class LayerLayout:
    """The reshape of each target layer of one CAM object.

    Args:
        model: the model (its ``num_prefix_tokens``, when it has one, says how many
            tokens precede the patches).
        target_layers: the CAM's target layers (for error messages).
        reshape_transform: the user's transform, or ``None`` to infer one.
        announced: the layers whose inferred transform was announced already (a set the
            CAM object keeps, so that each layer is announced once per object).
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module],
        reshape_transform: ReshapeTransform | None,
        announced: set[int] | None = None,
    ) -> None:
        self.model = model
        self.target_layers = list(target_layers)
        self.reshape_transform = reshape_transform
        self._announced = set() if announced is None else announced

    def transform(
        self, index: int, layer_output: Any, image_size: Sequence[int]
    ) -> ReshapeTransform | None:
        """The reshape applied to one layer's output (and its gradient) for this input.

        The user's ``reshape_transform`` if given (with ``image_size=`` bound when it takes
        that keyword). Otherwise, for an image: token sequences ``B x N x C`` go through
        ``tokens_to_grid`` and channels-last ``B x H x W x C`` outputs through
        ``channels_last_to_first``, announced once per layer with a warning. A mapping of
        tensors needs the user's transform.
        """
        if self.reshape_transform is None and is_tensor_mapping(layer_output):
            layer = type(self.target_layers[index]).__name__
            mapping = type(layer_output).__name__
            raise ValueError(
                f"target_layers[{index}] ({layer}) outputs a mapping ({mapping}) of tensors "
                f"(keys {list(layer_output.keys())}); pass a reshape_transform that "
                "combines them into B x C x H x W, e.g. fpn_reshape_transform (linear: for "
                "gradient methods) or fasterrcnn_reshape_transform (grad-cam 1.5.7's) from "
                "pytorch_grad_cam.utils.reshape_transforms for a feature pyramid."
            )
        if self.reshape_transform is not None:
            if _takes_image_size(self.reshape_transform):
                return functools.partial(self.reshape_transform, image_size=tuple(image_size))
            return self.reshape_transform
        transform = infer_reshape_transform(layer_output.shape, image_size)
        if transform is tokens_to_grid:
            prefix = getattr(self.model, "num_prefix_tokens", None)
            prefix = prefix if is_integer(prefix) else None
            grid = infer_token_grid(layer_output.shape[1], image_size, prefix)
            self._announce(
                index,
                layer_output,
                f"tokens_to_grid: {grid.prefix_tokens} leading token(s) dropped, the "
                f"rest laid out as a {grid.height} x {grid.width} grid",
            )
            return functools.partial(
                tokens_to_grid, image_size=tuple(image_size), num_prefix_tokens=prefix
            )
        if transform is channels_last_to_first:
            self._announce(index, layer_output, "channels_last_to_first: B x H x W x C read")
        return transform

    def _announce(self, index: int, layer_output: torch.Tensor, how: str) -> None:
        if index in self._announced:
            return
        self._announced.add(index)
        layer = type(self.target_layers[index]).__name__
        warn_at_caller(
            f"target_layers[{index}] ({layer}) outputs shape {tuple(layer_output.shape)}, "
            f"reshaped with pytorch_grad_cam.utils.reshape_transforms.{how}. Pass "
            "reshape_transform= to choose the layout yourself and silence this warning.",
            InferredReshapeWarning,
        )

    def reshape(
        self,
        index: int,
        tensor: Any,
        transform: ReshapeTransform | None,
        spatial_rank: int,
        keep_graph: bool = False,
    ) -> torch.Tensor:
        """A layer's output (or gradient) as float32 ``B x C x *spatial``, with as many
        spatial axes as the input (``spatial_rank``: 2 for images, 3 for volumes, 1 for
        signals). A transform that applies a module with parameters (Hugging Face CvT)
        joins the autograd graph only with ``keep_graph``."""
        original_shape = shape_of(tensor)
        if transform is not None:
            recording = contextlib.nullcontext() if keep_graph else torch.no_grad()
            with recording:
                tensor = transform(tensor)
        if isinstance(tensor, torch.Tensor) and tensor.ndim == 2 + spatial_rank:
            return tensor.float()
        layer = type(self.target_layers[index]).__name__
        wanted = LAYOUTS[spatial_rank]
        if transform is None:
            raise ValueError(
                f"target_layers[{index}] ({layer}) outputs a tensor of shape "
                f"{original_shape}, but for this input CAM methods need {wanted} "
                "activations, with as many spatial axes as the input. Pick a layer before "
                "the pooling, or pass a reshape_transform that returns that layout (see "
                "pytorch_grad_cam.utils.reshape_transforms)."
            )
        raise ValueError(
            f"reshape_transform turned the output of target_layers[{index}] ({layer}), "
            f"of shape {original_shape}, into {shape_of(tensor)}; for this input it must "
            f"return {wanted}, with as many spatial axes as the input."
        )


def shape_of(value: Any) -> Any:
    """For error messages: a tensor's shape, each shape of a mapping of tensors, or
    the type of anything else."""
    if is_tensor_mapping(value):
        return {key: tuple(tensor.shape) for key, tensor in value.items()}
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    return type(value).__name__


def _takes_image_size(function: Callable) -> bool:
    try:
        return "image_size" in inspect.signature(function).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


def channel_positions(
    layer_output: torch.Tensor,
    channels: int,
    reshape_transform: ReshapeTransform | None,
    method: str = "AblationCAM",
) -> torch.Tensor:
    """``C x P``: where each element of one image's (reshaped) activations lies in its raw
    layer output, as flat indices, found by passing element indices through
    ``reshape_transform``: ``positions[c, p]`` is channel ``c`` at position ``p``.

    Methods that change activations in the raw output (AblationCAM zeroes a channel,
    ReciproCAM keeps a position) need a transform that only rearranges or drops elements;
    another is a ValueError naming ``method``.
    """
    raw = layer_output[:1]
    index = torch.arange(raw.numel(), device=raw.device, dtype=torch.float64).view(raw.shape)
    if reshape_transform is None:
        return index.view(channels, -1).long()
    mapped = reshape_transform(index)
    is_index = mapped.shape[1] == channels and bool(
        ((mapped >= 0) & (mapped < raw.numel()) & (mapped == mapped.round())).all()
    )
    if not is_index or not torch.equal(
        reshape_transform(raw).float(), raw.reshape(-1)[mapped.long()].float()
    ):
        raise ValueError(
            f"{method} needs a reshape_transform that only rearranges or drops elements "
            "(reshape, permute, slicing), so that each activation can be traced back to the "
            "layer's output and changed there; this one computes new values."
        )
    return mapped[0].reshape(channels, -1).long()
