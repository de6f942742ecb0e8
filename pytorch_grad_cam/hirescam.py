"""HiResCAM (Draelos & Carin, 2020, https://arxiv.org/abs/2011.08891)."""

from __future__ import annotations

import torch

from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.cam_call import LayerContext
from pytorch_grad_cam.incumbent_hooks import CategoryNamedImage
from pytorch_grad_cam.utils.svd_on_activations import (
    get_2d_projection as get_2d_projection,  # re-exported: the incumbent's path
)


class HiResCAM(CategoryNamedImage, BaseCAM):
    """Multiplies the activations by their gradients element-wise, without averaging.

    ``map = ReLU(sum_k dy/dA^k * A^k)``; the map sums exactly to the first-order
    contribution of each position to the score.
    """

    supports_create_graph = True

    def layer_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, context: LayerContext
    ) -> torch.Tensor:
        """The gradients, element-wise: ``dy/dA``."""
        assert gradients is not None  # a gradient method
        return gradients
