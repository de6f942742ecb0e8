"""HiResCAM (Draelos & Carin, 2020, https://arxiv.org/abs/2011.08891)."""

from __future__ import annotations

import torch

from pytorch_grad_cam.base_cam import BaseCAM, LayerContext


class HiResCAM(BaseCAM):
    """Multiplies the activations by their gradients element-wise, without averaging.

    ``map = ReLU(sum_k dy/dA^k * A^k)``; the map sums exactly to the first-order
    contribution of each position to the score.
    """

    supports_create_graph = True

    def get_cam_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor, context: LayerContext
    ) -> torch.Tensor:
        return gradients
