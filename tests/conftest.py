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
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[dims]
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


class TinyViT(nn.Module):
    """4 x 4 patches of a 16 x 16 image, a class token, two pre-norm transformer blocks,
    a head on the class token: ``blocks[-1].norm1`` outputs B x 17 x dim tokens."""

    def __init__(self, dim: int = 16, classes: int = 5):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.1)
        self.blocks = nn.Sequential(*[TransformerBlock(dim) for _ in range(2)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos
        return self.head(self.norm(self.blocks(tokens))[:, 0])


class TransformerBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        normed = self.norm1(tokens)
        tokens = tokens + self.attn(normed, normed, normed, need_weights=False)[0]
        return tokens + self.mlp(self.norm2(tokens))


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
