"""Kernel PCA of a layer's positions: the first kernel principal component (KPCA-CAM)."""

from __future__ import annotations

import torch

KERNELS = ("linear", "rbf", "poly", "sigmoid", "cosine")


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
