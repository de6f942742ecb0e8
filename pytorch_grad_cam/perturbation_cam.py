"""The common base of the methods that run the model many times (AblationCAM, ScoreCAM)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.cam_call import CamOptions
from pytorch_grad_cam.utils.reshape_transforms import ReshapeTransform
from pytorch_grad_cam.utils.validation import check_positive_int

if TYPE_CHECKING:
    from typing_extensions import Unpack


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
        *,
        batch_size: int = 32,
        progress_bar: bool = False,
        **options: Unpack[CamOptions],
    ) -> None:
        super().__init__(
            model,
            target_layers,
            reshape_transform,
            **options,
        )
        self.batch_size = check_batch_size(batch_size)
        self.progress_bar = progress_bar


def check_batch_size(batch_size: Any) -> int:
    """``batch_size`` as an int, or a ValueError that names it."""
    return check_positive_int(batch_size, "batch_size", "perturbed copies per forward pass")
