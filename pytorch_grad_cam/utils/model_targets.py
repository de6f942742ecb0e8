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
from typing import Any, Callable, Union

import numpy as np
import torch

Category = Union[int, torch.Tensor]
#: A target: maps one image's model output to the score to explain.
Target = Callable[[Any], torch.Tensor]


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

    def __init__(self, category: Category) -> None:
        self.category = category

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        """The score of one image's output (or of each row of a block of them)."""
        return _pick(model_output, self.category)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.category})"


class ClassifierOutputSoftmaxTarget(ClassifierOutputTarget):
    """The softmax probability of ``category``: ``exp(y_c) / sum_j exp(y_j)``."""

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        """The score of one image's output (or of each row of a block of them)."""
        return _pick(torch.softmax(model_output, dim=-1), self.category)


class ClassifierOutputReST(ClassifierOutputTarget):
    """Residual Softmax Target-class score (Cai, "CAMs as Shapley Value-based Explainers", 2025).

    ``ReST_c = y_c + softmax(y)_c``: the logit keeps the gradient from vanishing when the
    softmax saturates, the softmax term brings in the competing classes.
    """

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        """The score of one image's output (or of each row of a block of them)."""
        logit = _pick(model_output, self.category)
        return logit + _pick(torch.softmax(model_output, dim=-1), self.category)


class BinaryClassifierOutputTarget:
    """For a model with one output logit: ``y`` for ``category=1``, ``-y`` for ``category=0``."""

    rowwise = True

    def __init__(self, category: int) -> None:
        if category not in (0, 1):
            raise ValueError(f"category={category!r}: a binary classifier's category is 0 or 1")
        self.category = category

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        """The score of one image's output (or of each row of a block of them)."""
        sign = 1.0 if self.category == 1 else -1.0
        return model_output * sign


class SoftmaxOutputTarget:
    """The softmax of the whole output (a vector; a CAM call sums it)."""

    rowwise = True

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        """The score of one image's output (or of each row of a block of them)."""
        return torch.softmax(model_output, dim=-1)


class RawScoresOutputTarget:
    """The raw output itself (a vector; a CAM call sums it)."""

    rowwise = True

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        """The score of one image's output (or of each row of a block of them)."""
        return model_output


class SemanticSegmentationTarget:
    """Sum of the ``category`` score map over a pixel ``mask``: ``sum_ij mask_ij y_c,ij``.

    ``model_output`` is one image's ``K x H x W`` score maps (a torchvision segmentation
    model's ``"out"`` entry, which the CAM picks by itself); ``mask`` an ``H x W`` numpy
    array or tensor (bool, integer or float weights), e.g. ``pred == category``. The mask
    is moved to the output's device on the first call and kept there.

    With ``rowwise = True`` a block of images ``N x K x H x W`` gives one score per image.
    """

    rowwise = True

    def __init__(self, category: Category, mask: np.ndarray | torch.Tensor) -> None:
        self.category = category
        self.mask = torch.as_tensor(mask).detach().to(torch.float32)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        """The score of one image's output (or of each row of a block of them)."""
        if self.mask.device != model_output.device:
            self.mask = self.mask.to(model_output.device)
        if model_output.ndim not in (3, 4) or model_output.shape[-2:] != self.mask.shape:
            raise ValueError(
                f"SemanticSegmentationTarget: mask has shape {tuple(self.mask.shape)} but the "
                f"model's output has shape {tuple(model_output.shape)}, whose score maps are "
                f"{tuple(model_output.shape[-2:])}; pass an H x W mask of the output's "
                "spatial size (K x H x W per image)."
            )
        scores = _pick_map(model_output, self.category)
        return (scores * self.mask).sum(dim=(-2, -1))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.category}, mask of {tuple(self.mask.shape)})"


def _pick_map(maps: torch.Tensor, category: Category) -> torch.Tensor:
    """``maps[..., category, :, :]``, a tensor category kept on the device."""
    if isinstance(category, torch.Tensor):
        index = category.to(maps.device).reshape(-1)[:1]
        return maps.index_select(-3, index).squeeze(-3)
    return maps[..., category, :, :]


class FasterRCNNBoxScoreTarget:
    """Detection score of the boxes that match the reference boxes (Faster R-CNN style output).

    ``model_outputs`` is one image's torchvision detection dict with ``boxes`` (``N x 4``,
    ``x1, y1, x2, y2`` in input pixels), ``labels`` and ``scores``. For each reference box,
    the detection of highest IoU with it (whatever its label) is its match; the match
    adds ``IoU + score`` when its IoU is above ``iou_threshold`` and its label is the
    reference's, and nothing otherwise (as grad-cam 1.5.7 scores it: a better-overlapping
    box of another class gives 0 for that reference). Typically the references are the
    model's own detections::

        boxes, labels = output[0]["boxes"], output[0]["labels"]
        targets = [FasterRCNNBoxScoreTarget(labels, boxes)]

    Returns a tensor of shape ``(1,)`` in the reference boxes' floating dtype (float64
    boxes, numpy's default, give a float64 score; integer boxes are taken as float32). The
    references (numpy arrays, lists or tensors) are moved to the output's device on the
    first call and kept there.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        bounding_boxes: Any,
        iou_threshold: float = 0.5,
    ) -> None:
        self.labels = torch.as_tensor(labels).detach().reshape(-1)
        boxes = torch.as_tensor(bounding_boxes).detach()
        if not boxes.is_floating_point():
            boxes = boxes.to(torch.float32)
        self.bounding_boxes = boxes.reshape(-1, 4)
        if self.labels.numel() != self.bounding_boxes.shape[0]:
            raise ValueError(
                f"FasterRCNNBoxScoreTarget: {self.labels.numel()} labels for "
                f"{self.bounding_boxes.shape[0]} bounding boxes; pass one label per box."
            )
        self.iou_threshold = iou_threshold

    def __call__(self, model_outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``sum`` over the reference boxes of their match's ``IoU + score`` (see above)."""
        boxes = model_outputs["boxes"]
        device = boxes.device
        if self.bounding_boxes.device != device:
            self.bounding_boxes = self.bounding_boxes.to(device)
        if self.labels.device != device:
            self.labels = self.labels.to(device)
        dtype = self.bounding_boxes.dtype
        total = torch.zeros(1, dtype=dtype, device=device)
        if boxes.numel() == 0 or self.labels.numel() == 0:
            return total
        from torchvision.ops import box_iou  # torchvision.ops loads torch._dynamo: seconds

        iou = box_iou(self.bounding_boxes, boxes.to(dtype))
        best_iou, best = iou.max(dim=1)
        same_label = model_outputs["labels"].to(device)[best] == self.labels
        matched = (best_iou > self.iou_threshold) & same_label
        value = best_iou + model_outputs["scores"].to(dtype)[best]
        # torch.where, not boolean indexing: no data-dependent shape, no sync with the host.
        return total + torch.where(matched, value, torch.zeros_like(value)).sum()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.labels.numel()} boxes, "
            f"iou_threshold={self.iou_threshold})"
        )


Similarity = Union[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]


class SimilarityToConceptTarget:
    """Similarity of an image's embedding to a concept embedding ``features``.

    For models whose output is an embedding (a feature extractor, a ResNet with
    ``fc = nn.Identity()``, a CLIP-like image encoder): the CAM then shows which regions
    make the image's embedding close to ``features``, the embedding of a concept (a text
    prompt, a class prototype) or of another image.

    ``similarity``: ``"cosine"`` (default, ``<e, f> / (|e| |f|)``), ``"dot"`` (``<e, f>``),
    or a callable ``(embeddings, features) -> similarities`` reducing the last axis.

    ``features`` is a ``D`` vector (a ``1 x D`` batch of one is flattened), numpy or
    tensor; it is moved to the output's device (in at least float32) on the first call and
    kept there. One image's output is a ``D`` vector (or anything of ``D`` values, such as
    ``D x 1 x 1``); with ``rowwise = True`` a block ``N x D`` gives one score per row.
    """

    rowwise = True

    def __init__(
        self,
        features: np.ndarray | torch.Tensor,
        similarity: Similarity = "cosine",
        eps: float = 1e-8,
    ) -> None:
        features = torch.as_tensor(features).detach()
        if not features.is_floating_point():
            features = features.float()
        if features.ndim > 1 and all(size == 1 for size in features.shape[:-1]):
            features = features.reshape(-1)
        if features.ndim != 1 or features.numel() == 0:
            raise ValueError(
                "SimilarityToConceptTarget: features must be one embedding (a D vector, or "
                f"1 x D), got shape {tuple(features.shape)}; for several concepts make one "
                "target per concept."
            )
        if not callable(similarity) and similarity not in ("cosine", "dot"):
            raise ValueError(
                f"SimilarityToConceptTarget: similarity={similarity!r}; use 'cosine', 'dot' "
                "or a callable (embeddings, features) -> similarities."
            )
        self.features = features
        self.similarity = similarity
        self.eps = eps
        self._placed: torch.Tensor | None = None

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        """The score of one image's output (or of each row of a block of them)."""
        embeddings = self._embeddings(model_output)
        features = self._features_like(embeddings)
        embeddings = embeddings.to(features.dtype)
        if self.similarity == "cosine":
            return torch.nn.functional.cosine_similarity(embeddings, features, dim=-1, eps=self.eps)
        if self.similarity == "dot":
            return (embeddings * features).sum(dim=-1)
        assert callable(self.similarity)  # checked in __init__
        return self.similarity(embeddings, features)

    def _embeddings(self, output: torch.Tensor) -> torch.Tensor:
        """The output as ``D`` (one image) or ``N x D`` (a block of rows)."""
        size = self.features.numel()
        if output.ndim >= 1 and output.shape[-1] == size:
            return output
        if output.numel() == size:
            return output.reshape(size)
        if output.ndim >= 2 and output[0].numel() == size:
            return output.reshape(output.shape[0], size)
        raise ValueError(
            f"SimilarityToConceptTarget: the model's output has shape {tuple(output.shape)}, "
            f"which is not an embedding of the features' size {size}; pick the embedding "
            "with output_selector= (e.g. 'image_embeds' or 'pooler_output'), or pass features "
            "of the output's size."
        )

    def _features_like(self, embeddings: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(embeddings.dtype, torch.float32)
        placed = self._placed
        if placed is None or placed.device != embeddings.device or placed.dtype != dtype:
            placed = self.features.to(device=embeddings.device, dtype=dtype)
            self._placed = placed
        return placed

    def __repr__(self) -> str:
        name = self.similarity if isinstance(self.similarity, str) else "custom"
        return f"{type(self).__name__}({self.features.numel()}-d, similarity={name!r})"


class FinerWeightedTarget:
    """Finer-CAM target (Zhang et al., 2025): the main class against similar classes.

    ``score = y_main - alpha * mean_j y_j`` over ``comparison_categories``; with
    ``alpha=0`` it is the plain class score.
    """

    rowwise = True

    def __init__(
        self, main_category: int, comparison_categories: Sequence[int], alpha: float
    ) -> None:
        self.main_category = main_category
        self.comparison_categories = list(comparison_categories)
        self.alpha = alpha

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        """The score of one image's output (or of each row of a block of them)."""
        main = model_output[..., self.main_category]
        if not self.comparison_categories:
            return main
        comparison = model_output[..., self.comparison_categories].mean(dim=-1)
        return main - self.alpha * comparison
