"""XGrad-CAM (Fu et al., BMVC 2020, https://arxiv.org/abs/2008.02312)."""

from __future__ import annotations

import torch

from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.cam_call import LayerContext
from pytorch_grad_cam.incumbent_hooks import CategoryNamedWeights
from pytorch_grad_cam.utils.maps import spatial_axes


class XGradCAM(CategoryNamedWeights, BaseCAM):
    """Weights each channel by its gradients averaged with the normalised activations.

    ``w_k = sum_ij (A^k_ij / sum_ab A^k_ab) dy/dA^k_ij`` (0 for a channel whose activations
    sum to 0);  ``map = ReLU(sum_k w_k A^k)``.
    """

    supports_create_graph = True

    def layer_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, context: LayerContext
    ) -> torch.Tensor:
        """The gradients averaged with the normalised activations as weights."""
        assert gradients is not None  # a gradient method
        axes = spatial_axes(activations)
        activation_sum = activations.sum(dim=axes, keepdim=True)
        weighted_gradients = (activations * gradients).sum(dim=axes, keepdim=True)
        nonzero = activation_sum != 0
        safe_sum = torch.where(nonzero, activation_sum, torch.ones_like(activation_sum))
        return torch.where(nonzero, weighted_gradients / safe_sum, torch.zeros_like(safe_sum))
