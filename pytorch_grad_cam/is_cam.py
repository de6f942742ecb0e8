"""IS-CAM: Integrated Score-CAM (Naidu et al., 2020, https://arxiv.org/abs/2010.03023)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from pytorch_grad_cam.base_cam import CamOptions, LayerContext, ReshapeTransform
from pytorch_grad_cam.score_cam import ScoreCAM
from pytorch_grad_cam.smooth_grad_cam_pp import check_n_samples

if TYPE_CHECKING:
    from typing_extensions import Unpack


class ISCAM(ScoreCAM):
    """Score-CAM with each channel's score integrated over masks scaled from 1/N to 1.

    With ScoreCAM's normalised, upsampled masks ``H^k`` of image ``X`` and ``N = n_samples``:

    ``S^k = (1/N) sum_{i=1..N} y(X * ((i/N) H^k))``  (a Riemann sum of the score along the
    path from the blank image to ``X * H^k``);
    ``w_k = softmax_k(S^k)``;  ``map = ReLU(sum_k w_k A^k)``.

    With ``n_samples=1`` this is :class:`~pytorch_grad_cam.score_cam.ScoreCAM`. Channels
    with equal masks share their forward passes, the model runs ``N`` times per distinct
    mask, and memory grows with ``batch_size`` (one reused buffer), not with ``N``.
    ``batch_size`` and ``progress_bar`` are those of ScoreCAM.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module] | None = None,
        reshape_transform: ReshapeTransform | None = None,
        batch_size: int = 32,
        n_samples: int = 10,
        *,
        progress_bar: bool = False,
        **options: Unpack[CamOptions],
    ) -> None:
        super().__init__(
            model,
            target_layers,
            reshape_transform,
            batch_size=batch_size,
            progress_bar=progress_bar,
            **options,
        )
        self.n_samples = check_n_samples(n_samples)

    def layer_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, context: LayerContext
    ) -> torch.Tensor:
        check_n_samples(self.n_samples)
        return super().layer_weights(activations, gradients, context)

    def _variants(self) -> int:
        return self.n_samples

    def _fill_masked(
        self,
        out: torch.Tensor,
        masks: torch.Tensor,
        image: torch.Tensor,
        rows: range,
        distinct: int,
    ) -> torch.Tensor:
        """``image * ((i/N) * mask)`` for row ``r`` = (step ``i = r // distinct + 1``, mask
        ``r % distinct``)."""
        steps = torch.arange(rows.start, rows.stop, device=masks.device) // distinct + 1
        scales = (steps / self.n_samples).to(masks.dtype)
        scaled = masks * scales.view(-1, *[1] * (masks.ndim - 1))
        return super()._fill_masked(out, scaled, image, rows, distinct)
