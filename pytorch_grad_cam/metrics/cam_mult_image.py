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
from torch import nn

from pytorch_grad_cam.base_cam import Target
from pytorch_grad_cam.metrics._common import (
    batched_scores,
    check_cams,
    check_input_tensor,
    check_int,
    check_metric_targets,
    check_model,
    evaluating,
    original_scores,
    to_numpy,
)
from pytorch_grad_cam.utils.model_outputs import OutputSelector


class CamMultImageConfidenceChange:
    """``O - Y``: the change of the target score when the image is multiplied by its map.

    Called as ``metric(input_tensor, grayscale_cams, targets, model,
    return_visualization=False)``:

    - ``input_tensor``: ``B x C x H x W`` (or ``B x C x D x H x W``), as the model takes it.
    - ``grayscale_cams``: ``B x H x W`` maps in [0, 1] (a CAM's output with its default
      ``scale=True``), numpy or torch.
    - ``targets``: one target per image (``pytorch_grad_cam.utils.model_targets``), e.g.
      ``ClassifierOutputSoftmaxTarget(c)`` for the paper's class probability; ``None``:
      each image's top class on the unperturbed input, as a softmax probability.
    - ``model``: any ``nn.Module``; it runs in eval mode without autograd, on its own
      device, and its train/eval flags are restored afterwards.

    Returns a float32 numpy array of ``B`` values, and with ``return_visualization=True``
    also the multiplied images ``X * M`` (a tensor on the model's device).

    Args:
        batch_size: images per forward pass (unperturbed and multiplied ones are run
            separately, ``batch_size`` at a time).
        output_selector: where the scores are in the model's output, as for the CAMs.
    """

    name = "CamMultImageConfidenceChange"

    def __init__(self, batch_size: int = 32, output_selector: OutputSelector = None) -> None:
        self.batch_size = check_int(batch_size, "batch_size", self.name)
        self.output_selector = output_selector

    def __call__(
        self,
        input_tensor: torch.Tensor,
        grayscale_cams: Any,
        targets: list[Target] | None,
        model: nn.Module,
        return_visualization: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, torch.Tensor]:
        model = check_model(model, self.name)
        x = check_input_tensor(input_tensor, model, self.name)
        cams = check_cams(grayscale_cams, x, self.name)
        targets = check_metric_targets(targets, x.shape[0], self.name)
        low, high = cams.min(), cams.max()
        if bool(low < -1e-6) or bool(high > 1 + 1e-6):
            raise ValueError(
                f"{self.name}: grayscale_cams must be in [0, 1] (the image is multiplied by "
                f"them), got values in [{float(low):.4g}, {float(high):.4g}]; pass the CAM's "
                "scaled maps (scale=True, the default) or scale each map to [0, 1]."
            )
        batch_size = check_int(self.batch_size, "batch_size", self.name)
        visualization = None
        if return_visualization:  # an ordinary tensor (made outside inference mode)
            visualization = x * cams.unsqueeze(1)
        with evaluating(model):
            before, targets = original_scores(model, x, targets, self.output_selector, batch_size)

            def fill(rows: torch.Tensor, start: int, stop: int) -> None:
                if visualization is not None:
                    rows.copy_(visualization[start:stop])
                else:
                    torch.mul(x[start:stop], cams[start:stop].unsqueeze(1), out=rows)

            after = batched_scores(
                model, x[0], x.shape[0], fill, targets, self.output_selector, batch_size
            )
        values = self.combine(to_numpy(before), to_numpy(after))
        if return_visualization:
            return values, visualization
        return values

    def combine(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """The metric from each image's scores before (``Y``) and after (``O``)."""
        return (after - before).astype(np.float32)


class DropInConfidence(CamMultImageConfidenceChange):
    """``max(0, Y - O)``: how much the score drops when only the map's region is kept.

    This is the numerator of the Grad-CAM++ paper's Average Drop, absolute (in the
    target's units). ``relative=True`` gives the paper's per-image term
    ``max(0, Y - O) / Y`` as a fraction (multiply the mean by 100 for the paper's
    percentage); it needs ``Y > 0`` (a probability; not a logit that may be negative) and
    is NaN where ``Y <= 0``. Lower is better.
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

    def combine(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        drop = np.maximum(before - after, 0.0)
        if self.relative:
            with np.errstate(divide="ignore", invalid="ignore"):
                drop = np.where(before > 0, drop / np.where(before > 0, before, 1.0), np.nan)
        return drop.astype(np.float32)


class IncreaseInConfidence(CamMultImageConfidenceChange):
    """``1`` where ``O > Y`` (the map's region alone scores higher than the whole image),
    else ``0``. Its mean over a data set is the Grad-CAM++ paper's Increase in Confidence
    (as a fraction; x100 for its percentage). Higher is better."""

    name = "IncreaseInConfidence"

    def combine(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        return (after > before).astype(np.float32)
