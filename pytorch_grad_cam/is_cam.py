"""IS-CAM: Integrated Score-CAM (Naidu et al., 2020, https://arxiv.org/abs/2010.03023)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from pytorch_grad_cam.cam_call import CamOptions, LayerContext
from pytorch_grad_cam.score_cam import MaskedInputs, ScoreCAM
from pytorch_grad_cam.smooth_grad_cam_pp import check_n_samples
from pytorch_grad_cam.utils.reshape_transforms import ReshapeTransform

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

    def masked_inputs(self, context: LayerContext) -> MaskedInputs:
        """The masks scaled by ``i / n_samples``, ``i = 1 .. n_samples``."""
        return ScaledMaskedInputs(check_n_samples(self.n_samples))


class ScaledMaskedInputs(MaskedInputs):
    """``image * ((i / N) * mask)`` for row ``r`` = (step ``i = r // distinct + 1``, mask
    ``r % distinct``), ``N = n_samples``."""

    def __init__(self, n_samples: int) -> None:
        self.variants = n_samples

    def fill(
        self,
        out: torch.Tensor,
        masks: torch.Tensor,
        image: torch.Tensor,
        rows: range,
        distinct: int,
    ) -> torch.Tensor:
        """The masked image of each row with its mask scaled by its step."""
        steps = torch.arange(rows.start, rows.stop, device=masks.device) // distinct + 1
        scales = (steps / self.variants).to(masks.dtype)
        scaled = masks * scales.view(-1, *[1] * (masks.ndim - 1))
        return super().fill(out, scaled, image, rows, distinct)
