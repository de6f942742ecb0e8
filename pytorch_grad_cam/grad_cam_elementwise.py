"""Grad-CAM with element-wise weighting (the incumbent's ``GradCAMElementWise``)."""

from __future__ import annotations

import torch

from pytorch_grad_cam.base_cam import BaseCAM, LayerContext


class GradCAMElementWise(BaseCAM):
    """Like HiResCAM, but each channel's contribution is rectified before the sum.

    ``map = ReLU(sum_k ReLU(dy/dA^k * A^k))``: negative evidence of one channel cannot
    cancel positive evidence of another (Selvaraju et al., 2017, element-wise variant).
    """

    supports_create_graph = True

    def get_cam_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor, context: LayerContext
    ) -> torch.Tensor:
        return gradients

    def weighted_activations(
        self, activations: torch.Tensor, gradients: torch.Tensor, context: LayerContext
    ) -> torch.Tensor:
        return torch.relu(gradients * activations)
