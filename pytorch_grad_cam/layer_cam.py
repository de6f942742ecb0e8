"""LayerCAM (Jiang et al., IEEE TIP 2021, http://mftp.mmcheng.net/Papers/21TIP_LayerCAM.pdf)."""

from __future__ import annotations

import torch

from pytorch_grad_cam.base_cam import BaseCAM, LayerContext


class LayerCAM(BaseCAM):
    """Weights every position by its positive gradient.

    ``map = ReLU(sum_k ReLU(dy/dA^k) * A^k)`` (element-wise); reliable in early layers too.
    """

    supports_create_graph = True

    def get_cam_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor, context: LayerContext
    ) -> torch.Tensor:
        return torch.relu(gradients)
