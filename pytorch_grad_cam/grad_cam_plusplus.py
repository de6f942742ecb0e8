"""Grad-CAM++ (Chattopadhay et al., WACV 2018, https://arxiv.org/abs/1710.11063)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.cam_call import LayerContext
from pytorch_grad_cam.utils.maps import spatial_axes


class GradCAMPlusPlus(BaseCAM):
    """Weights each channel by a pixel-weighted sum of its positive gradients.

    With ``g = dy/dA^k`` and the paper's closed form for an exponential score,
    ``alpha_ij = g_ij^2 / (2 g_ij^2 + sum_ab A_ab g_ij^3)`` (0 where the denominator is 0),
    ``w_k = sum_ij alpha_ij ReLU(g_ij)``;  ``map = ReLU(sum_k w_k A^k)``.
    """

    supports_create_graph = True

    def get_cam_weights(
        self,
        input_tensor: torch.Tensor,
        target_layers: nn.Module,
        target_category: Sequence[Any] | None,
        activations: Any,
        grads: Any,
    ) -> np.ndarray:
        """The incumbent's numpy hook, with its names here (see ``BaseCAM.get_cam_weights``)."""
        return super().get_cam_weights(
            input_tensor, target_layers, target_category, activations, grads
        )

    def layer_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, context: LayerContext
    ) -> torch.Tensor:
        """``sum_ij alpha_ij ReLU(g_ij)`` with the paper's closed-form ``alpha``."""
        assert gradients is not None  # a gradient method
        axes = spatial_axes(gradients)
        squared = gradients.pow(2)
        activation_sum = activations.sum(dim=axes, keepdim=True)
        denominator = 2 * squared + activation_sum * gradients.pow(3)
        safe_denominator = torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        alpha = torch.where(denominator != 0, squared / safe_denominator, torch.zeros_like(squared))
        return (alpha * torch.relu(gradients)).sum(dim=axes, keepdim=True)
