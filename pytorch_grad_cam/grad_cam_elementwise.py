"""Grad-CAM with element-wise weighting (the incumbent's ``GradCAMElementWise``)."""

from __future__ import annotations

import torch

from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.cam_call import LayerContext
from pytorch_grad_cam.incumbent_hooks import CategoryNamedImage
from pytorch_grad_cam.utils.svd_on_activations import (
    get_2d_projection as get_2d_projection,  # re-exported: the incumbent's path
)


class GradCAMElementWise(CategoryNamedImage, BaseCAM):
    """Like HiResCAM, but each channel's contribution is rectified before the sum.

    ``map = ReLU(sum_k ReLU(dy/dA^k * A^k))``: negative evidence of one channel cannot
    cancel positive evidence of another (Selvaraju et al., 2017, element-wise variant).
    """

    supports_create_graph = True

    def layer_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, context: LayerContext
    ) -> torch.Tensor:
        """The gradients, element-wise."""
        assert gradients is not None  # a gradient method
        return gradients

    def weighted_activations(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, context: LayerContext
    ) -> torch.Tensor:
        """``ReLU(dy/dA * A)``: each product rectified before the channel sum."""
        assert gradients is not None  # a gradient method
        return torch.relu(gradients * activations)
