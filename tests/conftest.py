"""Small hand-made models whose CAMs are known in closed form."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class GapLinearNet(nn.Module):
    """features (conv, ReLU) -> global average pool -> linear: the original CAM's setting.

    The convolutions keep the spatial size, so the target layer's map is at the input's
    size and needs no resizing in the oracles.
    """

    def __init__(self, in_channels: int = 3, channels: int = 8, classes: int = 5, dims: int = 2):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        pool = nn.AdaptiveAvgPool2d if dims == 2 else nn.AdaptiveAvgPool3d
        self.features = nn.Sequential(
            conv(in_channels, channels, 3, padding=1),
            nn.ReLU(),
            conv(channels, channels, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = pool(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def class_weight_cam(model: GapLinearNet, x: torch.Tensor, categories) -> torch.Tensor:
    """The original CAM (Zhou et al., 2016): ``ReLU(sum_k w_ck A_k)``, computed directly."""
    with torch.no_grad():
        activations = model.features(x)
        weights = model.fc.weight[list(categories)]
        spatial = activations.shape[2:]
        cam = torch.einsum("bc,bc...->b...", weights, activations)
    assert cam.shape[1:] == spatial
    return torch.relu(cam)


@pytest.fixture
def gap_net() -> GapLinearNet:
    torch.manual_seed(0)
    return GapLinearNet().eval()


@pytest.fixture
def image_batch() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(3, 3, 12, 10)
