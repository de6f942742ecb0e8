"""How AblationCAM removes a channel: the ``ablation_layer=`` of grad-cam 1.5.7.

An ablation layer says what value an ablated channel takes and which layout the target
layer's output has. :class:`~pytorch_grad_cam.ablation_cam.AblationCAM` reads
:meth:`AblationLayer.ablation_value`; it never puts the object into the user's model
(grad-cam 1.5.7 swapped it in for the target layer during a call).

- :class:`AblationLayer` (the default): the channel is set to 0, the paper's ablation
  (Desai & Ramaswamy, WACV 2020).
- :class:`AblationLayerVit`: for token sequences ``B x N x C`` (ViT, DeiT; with their
  ``reshape_transform``), whose channels take any sign after a LayerNorm: the channel
  is set far below every activation of the layer, ``min(A) - 1e7``, as grad-cam 1.5.7
  does there.
- :class:`AblationLayerFasterRCNN`: for feature-pyramid mappings (torchvision's FPN
  backbone with ``fasterrcnn_reshape_transform``): channel ``k`` of the concatenated
  levels is channel ``k - offset`` of its level; the same value as ``AblationLayerVit``.

The incumbent's methods (``set_next_batch``, ``__call__``, ``activations_to_be_ablated``,
``objectiveness_mask_from_svd``) work on their own too, for code that drives an ablation
layer by hand.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.activations_and_gradients import is_tensor_mapping
from pytorch_grad_cam.utils.maps import first_principal_component, scale_to_unit_range
from pytorch_grad_cam.utils.svd_on_activations import (
    get_2d_projection as get_2d_projection,  # re-exported: the incumbent's path
)

#: How far below the smallest activation ``AblationLayerVit`` puts an ablated channel.
FAR_BELOW = 1e7


class AblationLayer(nn.Module):
    """Sets an ablated channel to 0 (the paper's ablation)."""

    def __init__(self) -> None:
        super().__init__()
        self.indices: Any = None
        self.activations: Any = None

    def ablation_value(self, activations: Any) -> float:
        """The value an ablated channel of ``activations`` (the layer's output) takes."""
        return 0.0

    # ----------------------------------------------------------------- the incumbent's API
    def set_next_batch(
        self, input_batch_index: int, activations: Any, num_channels_to_ablate: int
    ) -> None:
        """Prepare ``num_channels_to_ablate`` copies of image ``input_batch_index``'s
        activations (``activations``: the layer's ``B x C x ...`` output); ``self.indices``
        then says which channel each copy loses."""
        self.activations = _repeat_image(activations, input_batch_index, num_channels_to_ablate)

    def __call__(self, x: Any = None) -> Any:
        """The prepared copies with channel ``indices[i]`` of copy ``i`` ablated."""
        return super().__call__(x)

    def forward(self, x: Any = None) -> Any:
        """See :meth:`__call__`; ``x`` (the layer's input in grad-cam 1.5.7) is not used."""
        if self.activations is None or self.indices is None:
            raise RuntimeError(
                "call set_next_batch(...) and set .indices (one channel per copy) first."
            )
        return self._ablated(self.activations, list(_as_ints(self.indices)))

    def _ablated(self, activations: torch.Tensor, channels: list[int]) -> torch.Tensor:
        output = activations.clone()
        value = self.ablation_value(activations)
        for row, channel in enumerate(channels[: output.shape[0]]):
            output[row, channel] = value
        return output

    def activations_to_be_ablated(
        self, activations: Any, ratio_channels_to_ablate: float = 1.0
    ) -> list[int]:
        """The channels AblationCAM ablates for an image's ``C x ...`` activations: all of
        them for a ratio of 1, else the ``ceil(ratio * C)`` with the largest total
        activation magnitude (the same rule as ``AblationCAM``)."""
        tensor = torch.as_tensor(
            np.asarray(activations) if not isinstance(activations, torch.Tensor) else activations
        )
        channels = tensor.shape[0]
        if ratio_channels_to_ablate >= 1.0:
            return list(range(channels))
        count = max(1, math.ceil(ratio_channels_to_ablate * channels))
        magnitude = tensor.reshape(channels, -1).abs().sum(dim=1)
        return magnitude.topk(count).indices.tolist()

    def objectiveness_mask_from_svd(self, activations: Any, threshold: float = 0.01) -> np.ndarray:
        """Where the object is: each image's first principal component of its activations
        (``B x C x ...``; EigenCAM's map), scaled to [0, 1], above ``threshold``."""
        tensor = torch.as_tensor(
            np.asarray(activations, dtype=np.float32)
            if not isinstance(activations, torch.Tensor)
            else activations
        ).float()
        projection = scale_to_unit_range(torch.relu(first_principal_component(tensor)))
        return (projection > threshold).cpu().numpy()


class AblationLayerVit(AblationLayer):
    """Sets an ablated channel of a token sequence far below every activation:
    ``min(A) - 1e7`` (the layer's whole output ``A``)."""

    def ablation_value(self, activations: Any) -> float:
        """``min(A) - 1e7``."""
        return float(_minimum(activations)) - FAR_BELOW


class AblationLayerFasterRCNN(AblationLayerVit):
    """For a feature-pyramid mapping: channel ``k`` of the levels concatenated in order
    (``fasterrcnn_reshape_transform``) is channel ``k - offset`` of its level, set to
    ``min(A) - 1e7``."""

    def set_next_batch(
        self, input_batch_index: int, activations: Any, num_channels_to_ablate: int
    ) -> None:
        """Prepare copies of every level of image ``input_batch_index``."""
        if is_tensor_mapping(activations):
            self.activations = {
                key: _repeat_image(level, input_batch_index, num_channels_to_ablate)
                for key, level in activations.items()
            }
        else:
            super().set_next_batch(input_batch_index, activations, num_channels_to_ablate)

    def forward(self, x: Any = None) -> Any:
        """The prepared levels with channel ``indices[i]`` of the concatenation ablated in
        copy ``i``."""
        if not is_tensor_mapping(self.activations):
            return super().forward(x)
        if self.indices is None:
            raise RuntimeError("set .indices (one channel per copy) first.")
        value = self.ablation_value(self.activations)
        output = {key: level.clone() for key, level in self.activations.items()}
        for row, channel in enumerate(_as_ints(self.indices)):
            key, local = level_channel(output, channel)
            output[key][row, local] = value
        return output


def level_channel(levels: dict[Any, torch.Tensor], channel: int) -> tuple[Any, int]:
    """The level and its channel for ``channel`` of the levels concatenated in order."""
    offset = 0
    for key, level in levels.items():
        if channel < offset + level.shape[1]:
            return key, channel - offset
        offset += level.shape[1]
    raise IndexError(f"channel {channel} is beyond the levels' {offset} channels.")


def _minimum(activations: Any) -> torch.Tensor:
    if is_tensor_mapping(activations):
        return torch.stack([level.min() for level in activations.values()]).min()
    return torch.as_tensor(activations).min()


def _repeat_image(activations: Any, index: int, copies: int) -> torch.Tensor:
    tensor = torch.as_tensor(activations)
    return tensor[index : index + 1].expand(copies, *tensor.shape[1:]).clone()


def _as_ints(indices: Any) -> list[int]:
    if isinstance(indices, torch.Tensor):
        return [int(i) for i in indices.reshape(-1).tolist()]
    return [int(i) for i in np.asarray(indices).reshape(-1)]
