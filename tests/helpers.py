"""Helpers shared by the test modules (oracles and small utilities)."""

from __future__ import annotations

import numpy as np
import torch


def rescaled_mean(*maps):
    """Several layers' scaled maps combined as BaseCAM combines them: averaged, then each
    image's mean map scaled to [0, 1] again (grad-cam 1.5.7's rule). numpy or torch."""
    if isinstance(maps[0], torch.Tensor):
        mean = torch.stack(maps).mean(0)
        flat = mean.flatten(1)
        low = flat.min(dim=1).values.view(-1, *[1] * (mean.ndim - 1))
        high = flat.max(dim=1).values.view(-1, *[1] * (mean.ndim - 1))
        return (mean - low) / (high - low)
    mean = np.mean(np.stack(maps), axis=0)
    axes = tuple(range(1, mean.ndim))
    low = mean.min(axis=axes, keepdims=True)
    high = mean.max(axis=axes, keepdims=True)
    return (mean - low) / (high - low)
