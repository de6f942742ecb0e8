"""grad-cam 1.5.7's multi-layer AblationCAM and its layer wrapper.

:class:`AblationCAM` here is the package's AblationCAM (which already takes several
target layers and averages their maps, each ablated on its own), plus the incumbent's
methods that swap :class:`AblationLayer` wrappers into the model. Those methods change
the model until :meth:`AblationCAM.unset_ablation_layers`; computing maps never needs
them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam import ablation_cam
from pytorch_grad_cam.ablation_cam import channel_positions
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.find_layers import replace_layer_recursive
from pytorch_grad_cam.utils.reshape_transforms import ReshapeTransform

__all__ = ["AblationCAM", "AblationLayer", "BaseCAM", "replace_layer_recursive"]


class AblationLayer(nn.Module):
    """``layer``'s output with one channel set to zero per row: channel ``indices[i]`` of
    the (``reshape_transform``-ed) activations in row ``i``; rows beyond ``indices`` are
    left as they are."""

    def __init__(
        self, layer: nn.Module, reshape_transform: ReshapeTransform | None, indices: Any
    ) -> None:
        super().__init__()
        self.layer = layer
        self.reshape_transform = reshape_transform
        self.indices = indices

    def __call__(self, x: Any) -> Any:
        """See :meth:`forward`."""
        return super().__call__(x)

    def forward(self, x: Any) -> Any:
        """``layer(x)`` with the channels of ``indices`` zeroed, row by row."""
        output = self.layer(x).clone()
        indices = [int(i) for i in np.asarray(self.indices).reshape(-1)]
        if not indices:
            return output
        mapped = output if self.reshape_transform is None else self.reshape_transform(output)
        positions = channel_positions(output, mapped.shape[1], self.reshape_transform)
        flat = output.view(output.shape[0], -1)
        for row, channel in enumerate(indices[: output.shape[0]]):
            flat[row, positions[channel]] = 0
        return output


class AblationCAM(ablation_cam.AblationCAM):
    """:class:`pytorch_grad_cam.AblationCAM` with grad-cam 1.5.7's multi-layer methods."""

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module] | None = None,
        reshape_transform: ReshapeTransform | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, **kwargs)
        self.ablation_layers: list[AblationLayer] = []

    def get_cam_weights(  # type: ignore[override]
        self, input_tensor: torch.Tensor, target_category: Any, activations: Any, grads: Any
    ) -> np.ndarray:
        """``B x C`` weights of the first target layer's numpy ``activations``."""
        return super().get_cam_weights(
            input_tensor, self.target_layers[0], target_category, activations, grads
        )

    def set_ablation_layers(self) -> None:
        """Put an :class:`AblationLayer` wrapper in the model in place of each target layer."""
        for layer in self.target_layers:
            wrapper = AblationLayer(layer, self.reshape_transform, [])
            if replace_layer_recursive(self.model, layer, wrapper):
                self.ablation_layers.append(wrapper)

    def unset_ablation_layers(self) -> None:
        """Put the target layers back in place of their wrappers."""
        for wrapper in self.ablation_layers:
            replace_layer_recursive(self.model, wrapper, wrapper.layer)
        self.ablation_layers = []

    def set_ablation_layer_batch_indices(self, indices: Any) -> None:
        """The channel each row of the next batch loses, in every wrapper."""
        for wrapper in self.ablation_layers:
            wrapper.indices = indices

    def trim_ablation_layer_batch_indices(self, keep: int) -> None:
        """Keep the first ``keep`` indices (a last, shorter batch)."""
        for wrapper in self.ablation_layers:
            wrapper.indices = list(np.asarray(wrapper.indices).reshape(-1)[:keep])
