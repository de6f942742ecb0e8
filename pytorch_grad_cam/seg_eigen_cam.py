"""Seg-Eigen-CAM (Chung & Ying, "Seg-Eigen-CAM: Eigen-Value-Based Visual Explanations for
Semantic Segmentation Models", Applied Sciences 15(13), 2025, doi:10.3390/app15137562):
Eigen-CAM (Muhammad & Yeasin, IJCNN 2020) on activations weighted by the gradient
magnitudes of a dense (segmentation) target."""

from __future__ import annotations

import torch

from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.cam_call import LayerContext
from pytorch_grad_cam.incumbent_hooks import CategoryNamedImage
from pytorch_grad_cam.utils.svd_on_activations import (
    # re-exported: the incumbent's path
    get_2d_projection_with_sign_correction as get_2d_projection_with_sign_correction,
)


class SegEigenCAM(CategoryNamedImage, BaseCAM):
    """The first principal component of ``A * |dy/dA|``, for semantic segmentation.

    ``y`` is the target's score, typically
    :class:`~pytorch_grad_cam.utils.model_targets.SemanticSegmentationTarget`:
    ``y = sum_ij mask_ij S_c,ij``, the class-``c`` score map summed over a region. With
    ``X`` the element-wise product ``A^k_ij * |dy/dA^k_ij|`` as a positions x channels
    matrix, centred over positions, and ``v_1`` its first right singular vector:

    ``map = ReLU(X v_1)``,

    signed as in :func:`pytorch_grad_cam.utils.maps.first_principal_component` (the map
    correlates non-negatively with the centred channel sum of ``X``): the sign correction
    the method needs against the SVD's arbitrary sign. The gradients' magnitude weights
    the features the region's score is sensitive to, in either direction; EigenGradCAM
    uses the signed gradients. Targets must be given: a segmentation model's output has
    no single top class.
    """

    uses_principal_component = True

    def layer_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, context: LayerContext
    ) -> torch.Tensor:
        """The gradients' magnitude, element-wise: ``|dy/dA|``."""
        assert gradients is not None  # a gradient method
        return gradients.abs()
