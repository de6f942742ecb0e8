"""Targets: callables that turn one image's model output into the score to explain.

A CAM call takes one target per image. Each is called with that image's output
(for a classifier, a vector of ``K`` scores) and returns a scalar tensor; a target
that returns more than one value is summed. Every target here keeps its work on
the output's device.

A target with ``rowwise = True`` also accepts a block of rows (``N x K``) and returns
one result per row: perturbation methods then score a batch with one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch
import torchvision

Category = Union[int, torch.Tensor]


def _pick(scores: torch.Tensor, category: Category) -> torch.Tensor:
    """``scores[..., category]``. A 0-d tensor category (``targets=None`` resolves to those)
    is gathered on the device: indexing with it would read it back to the host."""
    if isinstance(category, torch.Tensor):
        index = category.to(scores.device).reshape([1] * scores.ndim)
        return scores.gather(-1, index.expand(*scores.shape[:-1], 1)).squeeze(-1)
    return scores[..., category]


class ClassifierOutputTarget:
    """The raw score (logit) of ``category``: ``y_c``."""

    rowwise = True

    def __init__(self, category: Category):
        self.category = category

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return _pick(model_output, self.category)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.category})"


class ClassifierOutputSoftmaxTarget(ClassifierOutputTarget):
    """The softmax probability of ``category``: ``exp(y_c) / sum_j exp(y_j)``."""

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return _pick(torch.softmax(model_output, dim=-1), self.category)


class ClassifierOutputReST(ClassifierOutputTarget):
    """Residual Softmax Target-class score (Cai, "CAMs as Shapley Value-based Explainers", 2025).

    ``ReST_c = y_c + softmax(y)_c``: the logit keeps the gradient from vanishing when the
    softmax saturates, the softmax term brings in the competing classes.
    """

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        logit = _pick(model_output, self.category)
        return logit + _pick(torch.softmax(model_output, dim=-1), self.category)


class BinaryClassifierOutputTarget:
    """For a model with one output logit: ``y`` for ``category=1``, ``-y`` for ``category=0``."""

    rowwise = True

    def __init__(self, category: int):
        if category not in (0, 1):
            raise ValueError(f"category={category!r}: a binary classifier's category is 0 or 1")
        self.category = category

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        sign = 1.0 if self.category == 1 else -1.0
        return model_output * sign


class SoftmaxOutputTarget:
    """The softmax of the whole output (a vector; a CAM call sums it)."""

    rowwise = True

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model_output, dim=-1)


class RawScoresOutputTarget:
    """The raw output itself (a vector; a CAM call sums it)."""

    rowwise = True

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return model_output


class SemanticSegmentationTarget:
    """Sum of the ``category`` score map over a pixel ``mask``: ``sum_ij mask_ij y_c,ij``.

    ``model_output`` is one image's ``C x H x W`` score maps; ``mask`` an ``H x W`` array
    or tensor. The mask is moved to the output's device once and reused.
    """

    def __init__(self, category: int, mask: np.ndarray | torch.Tensor):
        self.category = category
        self.mask = torch.as_tensor(mask, dtype=torch.float32)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        if self.mask.device != model_output.device:
            self.mask = self.mask.to(model_output.device)
        scores = model_output[self.category]
        if scores.shape != self.mask.shape:
            raise ValueError(
                f"SemanticSegmentationTarget: mask has shape {tuple(self.mask.shape)} but the "
                f"model's score map for category {self.category} has shape "
                f"{tuple(scores.shape)}; pass a mask of the output's spatial size."
            )
        return (scores * self.mask).sum()


class FasterRCNNBoxScoreTarget:
    """Detection score of the boxes that match the reference boxes (Faster R-CNN style output).

    ``model_output`` is a torchvision detection dict with ``boxes``, ``labels`` and
    ``scores``. For each reference box, the detections with the same label and an IoU
    above ``iou_threshold`` are found, and the best match's ``IoU + score`` is added.
    """

    def __init__(
        self,
        labels: Sequence[int],
        bounding_boxes: Any,
        iou_threshold: float = 0.5,
    ):
        self.labels = torch.as_tensor(labels).reshape(-1)
        self.bounding_boxes = torch.as_tensor(bounding_boxes, dtype=torch.float32).reshape(-1, 4)
        self.iou_threshold = iou_threshold

    def __call__(self, model_output: dict[str, torch.Tensor]) -> torch.Tensor:
        boxes = model_output["boxes"]
        device = boxes.device
        reference_boxes = self.bounding_boxes.to(device)
        reference_labels = self.labels.to(device)
        total = boxes.new_zeros(())
        if boxes.numel() == 0:
            return total
        iou = torchvision.ops.box_iou(reference_boxes, boxes.float())
        same_label = reference_labels[:, None] == model_output["labels"][None, :]
        candidate = same_label & (iou > self.iou_threshold)
        match_score = iou + model_output["scores"][None, :]
        match_score = match_score.masked_fill(~candidate, float("-inf"))
        best = match_score.max(dim=1).values
        return total + best[candidate.any(dim=1)].sum()


class FinerWeightedTarget:
    """Finer-CAM target (Zhang et al., 2025): the main class against similar classes.

    ``score = y_main - alpha * mean_j y_j`` over ``comparison_categories``; with
    ``alpha=0`` it is the plain class score.
    """

    rowwise = True

    def __init__(self, main_category: int, comparison_categories: Sequence[int], alpha: float):
        self.main_category = main_category
        self.comparison_categories = list(comparison_categories)
        self.alpha = alpha

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        main = model_output[..., self.main_category]
        if not self.comparison_categories:
            return main
        comparison = model_output[..., self.comparison_categories].mean(dim=-1)
        return main - self.alpha * comparison
