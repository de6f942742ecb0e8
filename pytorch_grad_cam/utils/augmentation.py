"""Test-time augmentation (``aug_smooth=True``): maps averaged over augmented inputs."""

from __future__ import annotations

from collections.abc import Callable

import torch
import ttach


def default_tta_transforms() -> ttach.Compose:
    """Horizontal flip x multiply by 0.9 / 1.0 / 1.1: six passes."""
    return ttach.Compose([ttach.HorizontalFlip(), ttach.Multiply(factors=[0.9, 1.0, 1.1])])


def augmented_mean(
    transforms: ttach.Compose,
    input_tensor: torch.Tensor,
    compute_maps: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """The mean over ``transforms`` of ``compute_maps(augmented input)``, each ``B x *size``
    map mapped back (de-augmented) to the input's frame first."""
    maps = []
    for transformer in transforms:
        augmented = transformer.augment_image(input_tensor)
        augmented_maps = compute_maps(augmented)
        maps.append(transformer.deaugment_mask(augmented_maps.unsqueeze(1)).squeeze(1))
    return torch.stack(maps).mean(dim=0)
