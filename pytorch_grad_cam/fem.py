"""FEM, the Feature Explanation Method (Fuad, Martin, Giot, Bourqui, Benois-Pineau and Zemmari,
"Features Understanding in 3D CNNs for Actions Recognition in Video", IPTA 2020)."""

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
from pytorch_grad_cam.utils.maps import spatial_axes
from pytorch_grad_cam.utils.reshape_transforms import ReshapeTransform

if TYPE_CHECKING:
    from typing_extensions import Unpack


class FEM(CategoryNamedImage, BaseCAM):
    """The channels' strong responses, weighted by the channels' mean: no gradients, no target.

    For each image and channel ``k`` of the activations ``A`` (``N`` positions):
    ``mu_k = mean_ij A^k_ij``, ``sigma_k = sqrt(mean_ij (A^k_ij - mu_k)^2)`` (the
    population standard deviation), the binary mask
    ``M^k_ij = 1 if A^k_ij >= mu_k + k * sigma_k else 0`` (a channel's outliers, if its
    values were Gaussian), the channel weight ``w_k = mu_k``;

    ``map = ReLU(sum_k w_k M^k)``.

    This is the paper's definition (the channel's mean weights its binary mask);
    grad-cam 1.5.7 weights the activations by the mask's share instead (see the README's
    differences). A constant channel has a full mask and adds a constant. The map is
    class-agnostic (like EigenCAM): the targets are not used, and one forward pass is run.

    Args:
        k: how many standard deviations above its mean a channel's value must be to count
            as a strong response (default 2).

    The other arguments are those of :class:`~pytorch_grad_cam.base_cam.BaseCAM`.
    """

    uses_gradients = False
    uses_targets = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module] | None = None,
        reshape_transform: ReshapeTransform | None = None,
        k: float = 2,
        **options: Unpack[CamOptions],
    ) -> None:
        super().__init__(
            model,
            target_layers,
            reshape_transform,
            **options,
        )
        self.k = _check_k(k)

    def weighted_activations(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, context: LayerContext
    ) -> torch.Tensor:
        """``mean(A^k) * [A^k >= mean + k std]`` for each channel."""
        axes = spatial_axes(activations)
        mean = activations.mean(dim=axes, keepdim=True)
        std = activations.std(dim=axes, keepdim=True, correction=0)
        mask = activations >= mean + self.k * std
        return mean * mask


def _check_k(k: Any) -> float:
    if isinstance(k, bool) or not isinstance(k, numbers.Real) or not math.isfinite(k):
        raise ValueError(
            f"k must be a finite number (how many standard deviations above a channel's mean "
            f"a value must be to enter the mask), got {k!r}; the paper uses k=2."
        )
    return float(k)
