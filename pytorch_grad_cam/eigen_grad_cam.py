"""Eigen-Grad-CAM: Eigen-CAM (Muhammad & Yeasin, 2020) on gradient-weighted activations."""

from __future__ import annotations

import torch

from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.cam_call import LayerContext
from pytorch_grad_cam.incumbent_hooks import CategoryNamedImage
from pytorch_grad_cam.utils.svd_on_activations import (
    get_2d_projection as get_2d_projection,  # re-exported: the incumbent's path
)


class EigenGradCAM(CategoryNamedImage, BaseCAM):
    """The first principal component of ``A * dy/dA``: class-specific, and cleaner than Grad-CAM.

    ``map = ReLU(X v_1)`` with ``X`` the element-wise product of activations and gradients
    (positions x channels, centred), ``v_1`` its first right singular vector.
    """

    supports_create_graph = True

    uses_principal_component = True

    def layer_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, context: LayerContext
    ) -> torch.Tensor:
        """The gradients, element-wise: ``A * dy/dA``."""
        assert gradients is not None  # a gradient method
        return gradients
