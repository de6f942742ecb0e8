"""The common base of the methods that run the model many times (AblationCAM, ScoreCAM)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ttach
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM, ReshapeTransform, is_positive_int
from pytorch_grad_cam.utils.model_outputs import OutputSelector


class PerturbationCAM(BaseCAM):
    """A gradient-free method whose weights come from batches of perturbed forward passes.

    Args:
        batch_size: how many perturbed copies go through the model at once; memory grows
            with it. Also an attribute: ``cam.batch_size = 16`` takes effect at the next
            call.
        progress_bar: show a ``tqdm`` bar over the batches (off by default).

    The other arguments are those of :class:`~pytorch_grad_cam.base_cam.BaseCAM`.
    """

    uses_gradients = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module] | None = None,
        reshape_transform: ReshapeTransform | None = None,
        tta_transforms: ttach.Compose | None = None,
        output_selector: OutputSelector = None,
        batch_size: int = 32,
        progress_bar: bool = False,
        *,
        target_layer: nn.Module | None = None,
        use_cuda: bool | None = None,
    ) -> None:
        super().__init__(
            model,
            target_layers,
            reshape_transform,
            tta_transforms,
            output_selector,
            target_layer=target_layer,
            use_cuda=use_cuda,
        )
        self.batch_size = check_batch_size(batch_size)
        self.progress_bar = progress_bar


def check_batch_size(batch_size: Any) -> int:
    """``batch_size`` as an int, or a ValueError that names it."""
    if not is_positive_int(batch_size):
        raise ValueError(
            f"batch_size must be a positive int (perturbed copies per forward pass), got "
            f"{batch_size!r}."
        )
    return int(batch_size)
