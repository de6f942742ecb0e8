"""Eigen-CAM (Muhammad & Yeasin, IJCNN 2020, https://arxiv.org/abs/2008.00299)."""

from __future__ import annotations

import torch

from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.cam_call import LayerContext
from pytorch_grad_cam.incumbent_hooks import CategoryNamedImage
from pytorch_grad_cam.utils.svd_on_activations import (
    get_2d_projection as get_2d_projection,  # re-exported: the incumbent's path
)


class EigenCAM(CategoryNamedImage, BaseCAM):
    """The first principal component of the activations; no gradients, not class-specific.

    With ``X`` the activations as a positions x channels matrix, centred over positions,
    and ``X = U S V^T``: ``map = ReLU(X v_1)``, sign fixed as in
    :func:`pytorch_grad_cam.utils.maps.first_principal_component`.
    """

    uses_gradients = False
    uses_targets = False
    uses_principal_component = True

    def weighted_activations(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, context: LayerContext
    ) -> torch.Tensor:
        """The activations themselves: no weighting."""
        return activations
