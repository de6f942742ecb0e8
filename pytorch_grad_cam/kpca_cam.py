"""KPCA-CAM (Karmani et al., 2024, "KPCA-CAM: Visual Explainability of Deep Computer Vision
Models using Kernel PCA"): Eigen-CAM with kernel PCA in place of PCA."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
import ttach
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM, LayerContext, ReshapeTransform
from pytorch_grad_cam.utils.model_outputs import OutputSelector

KERNELS = ("linear", "rbf", "poly", "sigmoid", "cosine")


class KPCA_CAM(BaseCAM):  # the incumbent's class name
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

    uses_gradients = False
    uses_targets = False
    uses_principal_component = True

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module] | None = None,
        reshape_transform: ReshapeTransform | None = None,
        tta_transforms: ttach.Compose | None = None,
        output_selector: OutputSelector = None,
        kernel: str = "sigmoid",
        gamma: float | None = None,
        coef0: float = 1.0,
        degree: int = 3,
        *,
        target_layer: nn.Module | None = None,
        use_cuda: bool | None = None,
    ) -> None:
        super().__init__(
            model,
            target_layers,
            reshape_transform,
            tta_transforms,
            output_selector,
            target_layer=target_layer,
            use_cuda=use_cuda,
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
        if isinstance(degree, bool) or not isinstance(degree, numbers.Integral) or degree < 1:
            raise ValueError(f"degree must be a positive int (poly kernel), got {degree!r}.")
        self.kernel = kernel
        self.gamma = None if gamma is None else float(gamma)
        self.coef0 = float(coef0)
        self.degree = int(degree)

    def weighted_activations(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, context: LayerContext
    ) -> torch.Tensor:
        return activations

    def _layer_map(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor | None,
        eigen_smooth: bool,
        context: LayerContext,
    ) -> torch.Tensor:
        features = self.weighted_activations(activations, gradients, context)
        projection = kernel_first_principal_component(
            features, self.kernel, self.gamma, self.coef0, self.degree
        )
        return torch.relu(projection)


def kernel_first_principal_component(
    features: torch.Tensor,
    kernel: str = "sigmoid",
    gamma: float | None = None,
    coef0: float = 1.0,
    degree: int = 3,
) -> torch.Tensor:
    """Project ``B x C x *spatial`` features on their first kernel principal component.

    Returns ``B x *spatial``: ``sqrt(lambda_1) a_1`` of the centred kernel matrix over
    positions, signed to correlate non-negatively with the centred channel sum (see
    :class:`KPCA_CAM` for the kernels).
    """
    batch, channels = features.shape[:2]
    spatial = features.shape[2:]
    points = features.reshape(batch, channels, -1).transpose(1, 2)  # B x N x C
    matrix = kernel_matrix(
        points, kernel, 1.0 / channels if gamma is None else gamma, coef0, degree
    )
    centred = (
        matrix
        - matrix.mean(dim=1, keepdim=True)
        - matrix.mean(dim=2, keepdim=True)
        + matrix.mean(dim=(1, 2), keepdim=True)
    )
    eigenvalues, eigenvectors = torch.linalg.eigh(centred)  # ascending
    projection = eigenvectors[:, :, -1] * eigenvalues[:, -1:].clamp(min=0).sqrt()
    channel_sum = points.sum(dim=2)
    channel_sum = channel_sum - channel_sum.mean(dim=1, keepdim=True)
    agreement = (projection * channel_sum).sum(dim=1, keepdim=True)
    sign = torch.where(agreement < 0, -1.0, 1.0)
    return (projection * sign).reshape(batch, *spatial)


def kernel_matrix(
    points: torch.Tensor, kernel: str, gamma: float, coef0: float, degree: int
) -> torch.Tensor:
    """``B x N x N`` kernel values between the ``B x N x C`` points of each image."""
    if kernel == "linear":
        # Centring the points first is exact for this kernel (the matrix is centred
        # afterwards anyway) and avoids the cancellation of centring a large matrix.
        centred = points - points.mean(dim=1, keepdim=True)
        return centred @ centred.transpose(1, 2)
    if kernel == "cosine":
        norms = points.norm(dim=2, keepdim=True)
        unit = points / torch.where(norms > 0, norms, torch.ones_like(norms))
        return unit @ unit.transpose(1, 2)
    if kernel == "rbf":
        return torch.exp(-gamma * torch.cdist(points, points).square())
    products = points @ points.transpose(1, 2)
    if kernel == "poly":
        return (gamma * products + coef0).pow(degree)
    if kernel == "sigmoid":
        return torch.tanh(gamma * products + coef0)
    raise ValueError(f"kernel must be one of {', '.join(map(repr, KERNELS))}, got {kernel!r}.")


def _is_finite_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
