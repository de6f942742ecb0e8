"""Tensor operations on CAM maps, shared by every method. All run in torch on the maps' device."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

_RESIZE_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def scale_to_unit_range(maps: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """Min-max scale each map (``maps[i]``) to [0, 1].

    A map whose range is zero, or below float32 resolution relative to its largest
    value, is constant: it becomes all zeros, never NaN. ``in_place=True`` overwrites
    ``maps`` (which must be contiguous) and saves two temporaries of its size.
    """
    flat = maps.view(maps.shape[0], -1) if in_place else maps.flatten(1)
    low, high = flat.aminmax(dim=1, keepdim=True)
    spread = high - low
    resolution = torch.finfo(torch.float32).eps * torch.maximum(high.abs(), low.abs())
    is_constant = spread <= resolution
    safe_spread = torch.where(is_constant, torch.ones_like(spread), spread)
    if in_place:
        flat.sub_(low).div_(safe_spread).masked_fill_(is_constant, 0.0)
        return maps
    return ((flat - low) / safe_spread).masked_fill(is_constant, 0.0).view_as(maps)


def resize_maps(
    maps: torch.Tensor, size: Sequence[int], align_corners: bool = False
) -> torch.Tensor:
    """Resize ``B x *spatial`` maps to ``B x *size`` with (bi/tri)linear interpolation
    (pixel centres aligned, as OpenCV resizes; ``align_corners=True`` aligns the corner
    pixels instead)."""
    size = tuple(int(s) for s in size)
    if tuple(maps.shape[1:]) == size:
        return maps
    mode = _RESIZE_MODES[len(size)]
    resized = F.interpolate(maps.unsqueeze(1), size=size, mode=mode, align_corners=align_corners)
    return resized.squeeze(1)


def first_principal_component(weighted: torch.Tensor) -> torch.Tensor:
    """Project ``B x C x *spatial`` features on their first principal component.

    For each image the features form a matrix ``X`` (positions x channels), centred
    over positions; with ``X = U S V^T``, the map is ``X v_1 = s_1 u_1``. The sign of a
    singular vector is arbitrary, so it is fixed by a rule: the map must correlate
    non-negatively with the centred channel sum of the features (the plain CAM), so
    that the regions the plain sum calls salient come out positive.
    """
    batch, channels = weighted.shape[:2]
    spatial = weighted.shape[2:]
    positions = weighted.reshape(batch, channels, -1).transpose(1, 2).float()
    centred = positions - positions.mean(dim=1, keepdim=True)
    u, s, _ = torch.linalg.svd(centred, full_matrices=False)
    projection = u[:, :, 0] * s[:, :1]
    channel_sum = centred.sum(dim=2)
    agreement = (projection * channel_sum).sum(dim=1, keepdim=True)
    sign = torch.where(agreement < 0, -1.0, 1.0)
    return (projection * sign).reshape(batch, *spatial)


def spatial_axes(tensor: torch.Tensor) -> tuple[int, ...]:
    """The spatial axes of a ``B x C x *spatial`` tensor: (2, 3) for 2-D, (2, 3, 4) for 3-D."""
    return tuple(range(2, tensor.ndim))
