"""LayerCAM (Jiang et al., IEEE TIP 2021, http://mftp.mmcheng.net/Papers/21TIP_LayerCAM.pdf)."""

from __future__ import annotations

import torch

from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.cam_call import LayerContext
from pytorch_grad_cam.incumbent_hooks import CategoryNamedImage
from pytorch_grad_cam.utils.svd_on_activations import (
    get_2d_projection as get_2d_projection,  # re-exported: the incumbent's path
)


class LayerCAM(CategoryNamedImage, BaseCAM):
    """Weights every position by its positive gradient.

    ``map = ReLU(sum_k ReLU(dy/dA^k) * A^k)`` (element-wise); reliable in early layers too.
    """

    supports_create_graph = True

    def layer_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, context: LayerContext
    ) -> torch.Tensor:
        """The positive gradients, element-wise: ``ReLU(dy/dA)``."""
        assert gradients is not None  # a gradient method
        return torch.relu(gradients)
