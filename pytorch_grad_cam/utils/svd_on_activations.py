"""Principal-component projections of numpy activation batches (the incumbent's helpers).

Each function takes ``B x C x *spatial`` activations (numpy; a tensor is converted) and
returns one ``B x *spatial`` float32 map per image: the positions (rows) projected on
the first (kernel) principal component of the channel vectors. The package's own
methods use the torch versions in :mod:`pytorch_grad_cam.utils.maps` and
:mod:`pytorch_grad_cam.kpca_cam`; these are for code written against grad-cam 1.5.7.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pytorch_grad_cam.utils.kernel_pca import kernel_first_principal_component
from pytorch_grad_cam.utils.maps import first_principal_component


def get_2d_projection(activation_batch: Any) -> np.ndarray:
    """Each image's positions projected on the first principal component.

    With ``X`` the activations as a positions x channels matrix, centred over positions,
    and ``X = U S V^T`` (``numpy.linalg.svd``): ``X v_1``. The sign is the one the SVD
    returns (a singular vector's sign is arbitrary); see
    :func:`get_2d_projection_with_sign_correction` for a fixed one. NaN values count as 0.
    """
    activations = _as_float_array(activation_batch)
    spatial = activations.shape[2:]
    projections = []
    for image in activations:
        positions = image.reshape(image.shape[0], -1).T
        positions = positions - positions.mean(axis=0)
        _, _, vt = np.linalg.svd(positions, full_matrices=False)
        projections.append((positions @ vt[0]).reshape(spatial))
    return np.asarray(projections, dtype=np.float32)


def get_2d_projection_with_sign_correction(activation_batch: np.ndarray) -> np.ndarray:
    """:func:`get_2d_projection` with its sign fixed: each map correlates non-negatively
    with the centred channel sum of its image's activations (the plain CAM), so that the
    regions the plain sum calls salient come out positive."""
    activations = torch.from_numpy(_as_float_array(activation_batch))
    return first_principal_component(activations).numpy().astype(np.float32)


def get_2d_projection_kernel(
    activation_batch: Any, kernel: str = "sigmoid", gamma: float | None = None
) -> np.ndarray:
    """Each image's positions projected on the first kernel principal component.

    The kernel matrix is centred, as kernel PCA defines it (see
    :class:`~pytorch_grad_cam.KPCA_CAM` for the kernels; ``gamma=None`` is
    ``1 / channels``); the sign is fixed as in
    :func:`get_2d_projection_with_sign_correction`.
    """
    activations = torch.from_numpy(_as_float_array(activation_batch))
    projection = kernel_first_principal_component(activations, kernel, gamma)
    return projection.numpy().astype(np.float32)


def _as_float_array(activation_batch: Any) -> np.ndarray:
    if isinstance(activation_batch, torch.Tensor):
        activation_batch = activation_batch.detach().float().cpu().numpy()
    activations = np.array(activation_batch, dtype=np.float32)  # a copy: NaNs are zeroed
    if activations.ndim < 3:
        raise ValueError(
            "activation_batch must be B x C x H x W (or B x C x D x H x W), got shape "
            f"{activations.shape}."
        )
    activations[np.isnan(activations)] = 0
    return activations
