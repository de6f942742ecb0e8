"""Grad-CAM (Selvaraju et al., ICCV 2017, https://arxiv.org/abs/1610.02391)."""

from __future__ import annotations

import torch

from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.cam_call import LayerContext
from pytorch_grad_cam.incumbent_hooks import CategoryNamedWeights
from pytorch_grad_cam.utils.maps import spatial_axes


class GradCAM(CategoryNamedWeights, BaseCAM):
    """Weights each channel by its average gradient.

    ``w_k = mean_ij dy/dA^k_ij``;  ``map = ReLU(sum_k w_k A^k)``.
    """

    supports_create_graph = True

    def layer_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, context: LayerContext
    ) -> torch.Tensor:
        """The gradients averaged over the positions: ``mean_ij dy/dA^k_ij``."""
        assert gradients is not None  # a gradient method
        return gradients.mean(dim=spatial_axes(gradients), keepdim=True)
