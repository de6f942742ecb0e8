"""Confidence metrics on the image multiplied by its map (Chattopadhay et al., WACV 2018,
"Grad-CAM++", https://arxiv.org/abs/1710.11063, section 5.1: "Average Drop" and
"Increase in Confidence").

For image ``X``, its map ``M`` (values in [0, 1], the input's spatial size) and the
target's score ``y``: ``Y = y(X)``, ``O = y(X * M)`` (the map broadcast over the
input's channels). Each metric returns one value per image; average them over a data
set for the paper's figures.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pytorch_grad_cam.metrics.arguments import check_cams, check_unit_interval
from pytorch_grad_cam.metrics.perturbation_confidence import (
    PerturbationConfidenceMetric,
    PerturbedBatch,
)
from pytorch_grad_cam.utils.model_outputs import OutputSelector

__all__ = [
    "CamMultImageConfidenceChange",
    "DropInConfidence",
    "IncreaseInConfidence",
    "PerturbationConfidenceMetric",
    "multiply_tensor_with_cam",
]


def multiply_tensor_with_cam(
    input_tensor: torch.Tensor, cam: Any, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """The image times its map, the map broadcast over the image's channels.

    ``input_tensor`` is one image ``C x *spatial`` with its map ``*spatial``, or a batch
    ``B x C x *spatial`` with ``B x *spatial`` maps. ``cam`` may be numpy; it is moved to
    the image's device. ``out``: write the product there (e.g. a reused buffer).
    """
    if not isinstance(input_tensor, torch.Tensor):
        raise TypeError(f"input_tensor must be a torch.Tensor, got {type(input_tensor).__name__}.")
    cam = torch.as_tensor(cam).to(device=input_tensor.device, dtype=input_tensor.dtype)
    shape, spatial = tuple(cam.shape), tuple(input_tensor.shape)
    one_image = shape == spatial[1:]  # C x ... with ...
    batch = len(spatial) >= 3 and shape == (spatial[0], *spatial[2:])  # B x C x ... with B x ...
    if one_image and (input_tensor.ndim == 3 or not batch):
        channel_axis = 0  # C x H x W: one image (a 3-D input is read as one image first)
    elif batch:
        channel_axis = 1
    else:
        raise ValueError(
            f"cam of shape {shape} does not fit input_tensor of shape {spatial}: pass one "
            "map per image of the image's spatial size (B x H x W for B x C x H x W, or "
            "H x W for C x H x W)."
        )
    return torch.mul(input_tensor, cam.unsqueeze(channel_axis), out=out)


class CamMultImageConfidenceChange(PerturbationConfidenceMetric):
    """``O - Y``: the change of the target score when the image is multiplied by its map.

    ``PerturbationConfidenceMetric(multiply_tensor_with_cam)``, with the products built
    ``batch_size`` at a time in one reused buffer on the model's device. Called as
    ``metric(input_tensor, cams, targets, model, return_visualization=False,
    return_diff=True)`` (``grayscale_cams=`` is accepted for ``cams=``):

    - ``input_tensor``: ``B x C x H x W`` (or ``B x C x D x H x W``), as the model takes it.
    - ``cams``: ``B x H x W`` maps in [0, 1] (a CAM's output with its default
      ``scale=True``), numpy or torch.
    - ``targets``: one target per image (``pytorch_grad_cam.utils.model_targets``), e.g.
      ``ClassifierOutputSoftmaxTarget(c)`` for the paper's class probability; ``None``:
      each image's top class on the unperturbed input, as a softmax probability.
    - ``model``: any ``nn.Module``; it runs in eval mode without autograd, on its own
      device, and its train/eval flags are restored afterwards.
    - ``return_diff=False``: return the scores ``O`` on the multiplied images instead of
      the metric (for every metric of this module).

    Returns a float32 numpy array of ``B`` values, and with ``return_visualization=True``
    also the multiplied images ``X * M`` (a tensor on the model's device).

    Args:
        batch_size: images per forward pass (unperturbed and multiplied ones are run
            separately, ``batch_size`` at a time).
        output_selector: where the scores are in the model's output, as for the CAMs.
    """

    name = "CamMultImageConfidenceChange"

    def __init__(self, batch_size: int = 32, output_selector: OutputSelector = None) -> None:
        super().__init__(multiply_tensor_with_cam, batch_size, output_selector)

    def check_maps(self, cams: Any, x: torch.Tensor) -> torch.Tensor:
        """The maps, which must lie in [0, 1]: the image is multiplied by them."""
        return check_unit_interval(check_cams(cams, x, self.name), self.name)

    def perturbed_batch(
        self, x: torch.Tensor, maps: torch.Tensor, keep_images: bool
    ) -> PerturbedBatch:
        """``x * maps``, a chunk at a time into the buffer (or copied from the kept
        products, an ordinary tensor made outside inference mode)."""
        visualization = multiply_tensor_with_cam(x, maps) if keep_images else None

        def fill(rows: torch.Tensor, start: int, stop: int) -> None:
            if visualization is not None:
                rows.copy_(visualization[start:stop])
            else:
                multiply_tensor_with_cam(x[start:stop], maps[start:stop], out=rows)

        return PerturbedBatch(1, fill, lambda: visualization)


class DropInConfidence(CamMultImageConfidenceChange):
    """``max(0, Y - O)``: how much the score drops when only the map's region is kept.

    This is the numerator of the Grad-CAM++ paper's Average Drop, absolute (in the
    target's units). ``relative=True`` gives the paper's per-image term
    ``max(0, Y - O) / Y`` as a fraction (multiply the mean by 100 for the paper's
    percentage); it needs ``Y > 0`` (a probability; not a logit that may be negative) and
    is NaN where ``Y <= 0``. Lower is better. ``return_diff=False`` returns ``O``.
    """

    name = "DropInConfidence"

    def __init__(
        self,
        batch_size: int = 32,
        output_selector: OutputSelector = None,
        relative: bool = False,
    ) -> None:
        super().__init__(batch_size, output_selector)
        self.relative = bool(relative)

    def combine(self, before: np.ndarray, after: np.ndarray, return_diff: bool) -> np.ndarray:
        """``max(0, Y - O)`` (relative: divided by ``Y``), or ``O``."""
        if not return_diff:
            return after.astype(np.float32)
        drop = np.maximum(before - after, 0.0)
        if self.relative:
            with np.errstate(divide="ignore", invalid="ignore"):
                drop = np.where(before > 0, drop / np.where(before > 0, before, 1.0), np.nan)
        return drop.astype(np.float32)


class IncreaseInConfidence(CamMultImageConfidenceChange):
    """``1`` where ``O > Y`` (the map's region alone scores higher than the whole image),
    else ``0``. Its mean over a data set is the Grad-CAM++ paper's Increase in Confidence
    (as a fraction; x100 for its percentage). Higher is better. ``return_diff=False``
    returns ``O``."""

    name = "IncreaseInConfidence"

    def combine(self, before: np.ndarray, after: np.ndarray, return_diff: bool) -> np.ndarray:
        """``1`` where ``O > Y``, else ``0``; or ``O``."""
        if not return_diff:
            return after.astype(np.float32)
        return (after > before).astype(np.float32)
