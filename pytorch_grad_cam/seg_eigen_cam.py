"""Seg-Eigen-CAM: Eigen-CAM (Muhammad & Yeasin, IJCNN 2020, https://arxiv.org/abs/2008.00299)
on activations weighted by the positive gradients of a dense (segmentation) target."""

from __future__ import annotations

import torch

from pytorch_grad_cam.base_cam import BaseCAM, LayerContext


class SegEigenCAM(BaseCAM):
    """The first principal component of ``A * ReLU(dy/dA)``, for semantic segmentation.

    ``y`` is the target's score, typically
    :class:`~pytorch_grad_cam.utils.model_targets.SemanticSegmentationTarget`:
    ``y = sum_ij mask_ij S_c,ij``, the class-``c`` score map summed over a region. With
    ``X`` the element-wise product ``A^k_ij * ReLU(dy/dA^k_ij)`` as a positions x channels
    matrix, centred over positions, and ``v_1`` its first right singular vector:

    ``map = ReLU(X v_1)``,

    signed as in :func:`pytorch_grad_cam.utils.maps.first_principal_component` (the map
    correlates non-negatively with the centred channel sum of ``X``).

    Keeping only positive gradients (as LayerCAM does) drops the features that would
    lower the region's score, so the component follows what supports the class there;
    EigenGradCAM uses the signed gradients. Targets must be given: a segmentation model's
    output has no single top class.
    """

    uses_principal_component = True

    def get_cam_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor, context: LayerContext
    ) -> torch.Tensor:
        return torch.relu(gradients)
