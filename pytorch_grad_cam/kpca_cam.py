"""KPCA-CAM (Karmani et al., 2024, "KPCA-CAM: Visual Explainability of Deep Computer Vision
Models using Kernel PCA"): Eigen-CAM with kernel PCA in place of PCA."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.cam_call import CamOptions, LayerContext
from pytorch_grad_cam.incumbent_hooks import CategoryNamedImage
from pytorch_grad_cam.utils.kernel_pca import KERNELS, kernel_first_principal_component
from pytorch_grad_cam.utils.reshape_transforms import ReshapeTransform
from pytorch_grad_cam.utils.svd_on_activations import (
    get_2d_projection_kernel as get_2d_projection_kernel,  # re-exported: the incumbent's path
)
from pytorch_grad_cam.utils.validation import check_positive_int

if TYPE_CHECKING:
    from typing_extensions import Unpack


class KPCA_CAM(CategoryNamedImage, BaseCAM):  # the incumbent's class name
    """The first kernel principal component of the activations; no gradients, no target.

    For each image the activations form ``N`` points ``x_i`` (one per position, ``C``
    channels each, not centred). With the kernel matrix ``K_ij = kappa(x_i, x_j)``:

    - ``"linear"``: ``x_i . x_j``
    - ``"poly"``: ``(gamma x_i . x_j + coef0) ^ degree``
    - ``"sigmoid"``: ``tanh(gamma x_i . x_j + coef0)``
    - ``"rbf"``: ``exp(-gamma |x_i - x_j|^2)``
    - ``"cosine"``: ``x_i . x_j / (|x_i| |x_j|)`` (a zero vector gives 0)

    (``gamma=None`` means ``1 / C``), centred in feature space,
    ``K~ = K - 1_N K - K 1_N + 1_N K 1_N`` (``1_N`` the ``N x N`` matrix of ``1/N``), and
    ``(lambda_1, a_1)`` the largest eigenvalue of ``K~`` with its unit eigenvector, each
    position's projection on the first kernel principal component is

    ``map_i = sqrt(max(lambda_1, 0)) * a_1i``,

    its sign chosen so that the map correlates non-negatively with the centred channel
    sum of the activations (the rule of
    :func:`pytorch_grad_cam.utils.maps.first_principal_component`); then ``ReLU``.
    With ``kernel="linear"``, ``K~ = X_c X_c^T`` and the map is Eigen-CAM's ``X_c v_1``.

    The eigendecomposition is of an ``N x N`` matrix per image (``N`` = positions of the
    target layer), in the activations' precision. ``eigen_smooth`` has no effect: the map
    is always the kernel principal component.

    Args:
        kernel: ``"sigmoid"`` (default), ``"linear"``, ``"rbf"``, ``"poly"`` or ``"cosine"``.
        gamma: the kernel's scale (not used by ``"linear"`` and ``"cosine"``); ``None``
            for ``1 / channels``.
        coef0: the offset of ``"poly"`` and ``"sigmoid"`` (default 1).
        degree: the degree of ``"poly"`` (default 3).

    The other arguments are those of :class:`~pytorch_grad_cam.base_cam.BaseCAM`.
    """

    kernel: str
    gamma: float | None
    coef0: float
    degree: int

    uses_gradients = False
    uses_targets = False
    uses_principal_component = True

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module] | None = None,
        reshape_transform: ReshapeTransform | None = None,
        kernel: str = "sigmoid",
        gamma: float | None = None,
        *,
        coef0: float = 1.0,
        degree: int = 3,
        **options: Unpack[CamOptions],
    ) -> None:
        super().__init__(
            model,
            target_layers,
            reshape_transform,
            **options,
        )
        if kernel not in KERNELS:
            raise ValueError(
                f"kernel must be one of {', '.join(map(repr, KERNELS))}, got {kernel!r}."
            )
        if gamma is not None and not (_is_finite_number(gamma) and gamma > 0):
            raise ValueError(
                f"gamma must be a positive number, or None for 1 / channels; got {gamma!r}."
            )
        if not _is_finite_number(coef0):
            raise ValueError(f"coef0 must be a finite number (the kernel's offset), got {coef0!r}.")
        check_positive_int(degree, "degree", "poly kernel")
        self.kernel = kernel
        self.gamma = None if gamma is None else float(gamma)
        self.coef0 = float(coef0)
        self.degree = int(degree)

    def weighted_activations(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, context: LayerContext
    ) -> torch.Tensor:
        """The activations themselves: kernel PCA reduces them."""
        return activations

    def reduce_channels(
        self, weighted: torch.Tensor, eigen_smooth: bool, context: LayerContext
    ) -> torch.Tensor:
        """The positions' projection on the first kernel principal component."""
        return kernel_first_principal_component(
            weighted, self.kernel, self.gamma, self.coef0, self.degree
        )


def _is_finite_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
