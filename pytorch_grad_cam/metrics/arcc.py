"""Complexity, Coherency and ARCC: judging a map by its size, its stability and ROAD.

- Complexity and Coherency come from ADCC (Poppi, Cornia, Baraldi & Cucchiara, CVPR
  workshops 2021, "Revisiting The Evaluation of Class Activation Mapping for
  Explainability: A Novel Metric and Experimental Analysis", https://arxiv.org/abs/2104.10252,
  section 3). ADCC is the harmonic mean of Coherency, ``1 - Complexity`` and
  ``1 - Average Drop``.
- ARCC (Domeniconi, Stramiglio, Lombardi & Salti, "How to Evaluate and Refine your CAM",
  https://arxiv.org/abs/2605.14641) keeps ADCC's form with the Average Drop replaced by
  ROAD (:class:`~pytorch_grad_cam.metrics.road.ROADCombined`) scaled to [0, 1].

Every value is per image (a float32 numpy array of ``B``); higher ARCC and Coherency
are better, lower Complexity is better.
"""

from __future__ import annotations

from typing import Any, Union

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.metrics.arguments import (
    also_accepts,
    check_cams,
    check_input_tensor,
    check_metric_targets,
    check_model,
    check_percentiles,
    check_unit_interval,
)
from pytorch_grad_cam.metrics.batch_scoring import evaluating
from pytorch_grad_cam.metrics.cam_mult_image import multiply_tensor_with_cam
from pytorch_grad_cam.metrics.road import ROADCombined
from pytorch_grad_cam.utils.model_outputs import select_output
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, Target

__all__ = ["ARCC", "BaseCAM", "Coherency", "Complexity", "ROADCombined", "batch_pearson_coherency"]

#: A batch of maps, numpy or torch.
Maps = Union[np.ndarray, torch.Tensor]
#: grad-cam 1.5.7's default ROAD percentiles for ARCC.
DEFAULT_ROAD_PERCENTILES: list[float] = [20, 40, 60, 80]


def as_rows(maps: Any, who: str, argument: str) -> np.ndarray:
    """A batch of maps (numpy or torch, ``B x ...``) as float64 rows ``B x N``."""
    if isinstance(maps, torch.Tensor):
        maps = maps.detach().cpu().numpy()
    elif not isinstance(maps, (np.ndarray, list, tuple)):
        raise TypeError(
            f"{who}: {argument} must be a numpy array or a torch.Tensor of shape B x H x W, "
            f"got {type(maps).__name__}."
        )
    array = np.asarray(maps)
    if np.iscomplexobj(array) or not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"{who}: {argument} must be real-valued, got dtype {array.dtype}.")
    if array.ndim < 2:
        raise ValueError(
            f"{who}: {argument} must be a batch of maps, B x H x W, got shape {array.shape}; "
            f"add the batch axis, e.g. {argument}[None]."
        )
    if not np.isfinite(array).all():
        raise ValueError(f"{who}: {argument} contains NaN or infinite values.")
    return array.reshape(array.shape[0], -1).astype(np.float64)


def batch_pearson_coherency(A: Maps, B: Maps) -> np.ndarray:  # noqa: N803
    """Per row, the Pearson correlation ``r`` of two batches of maps, mapped to [0, 1].

    Row ``i`` of ``A`` and of ``B`` (each flattened) give
    ``r_i = sum (a - mean a)(b - mean b) / sqrt(sum (a - mean a)^2 sum (b - mean b)^2)``;
    the result is ``(r_i + 1) / 2`` (1: the same map up to a positive scale and shift;
    0.5: uncorrelated; 0: inverted). NaN for a row where either map is constant (its
    correlation is undefined). Returns float32 numpy ``B``.
    """
    a = as_rows(A, "batch_pearson_coherency", "A")
    b = as_rows(B, "batch_pearson_coherency", "B")
    if a.shape != b.shape:
        raise ValueError(
            f"batch_pearson_coherency: A and B must hold as many maps of as many pixels, got "
            f"{np.shape(A)} and {np.shape(B)}."
        )
    varies = (np.ptp(a, axis=1) > 0) & (np.ptp(b, axis=1) > 0)  # exact: no rounding
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(varies & (denominator > 0), (a * b).sum(axis=1) / denominator, np.nan)
    return ((np.clip(r, -1.0, 1.0) + 1) / 2).astype(np.float32)


class Complexity:
    """ADCC's Complexity: the mean absolute value of each map, ``||M||_1 / N`` (``N``
    pixels). For maps in [0, 1] it is the fraction of the image the map lights up, in
    [0, 1]; lower is simpler.

    Called as ``Complexity()(grayscale_cams)`` (``cams=`` is accepted too), numpy or torch
    ``B x H x W``; returns float32 numpy ``B``.
    """

    name = "Complexity"

    @also_accepts("cams", "grayscale_cams")
    def __call__(self, grayscale_cams: np.ndarray) -> np.ndarray:
        """The mean absolute map value per image."""
        rows = as_rows(grayscale_cams, self.name, "grayscale_cams")
        return np.abs(rows).mean(axis=1).astype(np.float32)


def top_class_logits(model: nn.Module, x: torch.Tensor, base_method: Any) -> list[Target]:
    """Each image's top class as its raw score (the CAMs' own ``targets=None``)."""
    with evaluating(model):
        scores = select_output(model(x), getattr(base_method, "output_selector", None))
    top = scores.reshape(scores.shape[0], -1).argmax(dim=1)
    return [ClassifierOutputTarget(category) for category in top]


class Coherency:
    """ADCC's Coherency: a map should not change when the image is multiplied by it.

    ``Coherency = batch_pearson_coherency(M, L(X * M))``: the Pearson correlation, mapped
    to [0, 1] as ``(r + 1) / 2``, between each map ``M`` of image ``X`` and the map the
    same method ``L`` gives for the image multiplied by ``M`` (broadcast over the
    channels), for the same target. Higher is better; 1 for a method whose map of
    ``X * M`` is ``M`` itself (up to a positive scale and shift).

    Called as ``Coherency()(input_tensor, grayscale_cams, targets, model, base_method)``:

    - ``grayscale_cams``: ``B x H x W`` maps in [0, 1], those ``base_method`` gave for
      ``input_tensor`` (``cams=`` is accepted too).
    - ``targets``: one per image, passed to ``base_method``; ``None``: each image's top
      class on the unmodified input, as its raw score (so that both maps explain the same
      class; the CAM alone would take the top class of the multiplied image).
    - ``model``: the model ``base_method`` explains.
    - ``base_method``: the CAM object (a ``BaseCAM``, or any callable
      ``(input_tensor, targets) -> B x H x W maps``).

    Returns float32 numpy ``B`` (NaN where a map is constant).
    """

    name = "Coherency"

    @also_accepts("cams", "grayscale_cams")
    def __call__(
        self,
        input_tensor: torch.Tensor,
        grayscale_cams: np.ndarray,
        targets: list[Target] | None,
        model: nn.Module,
        base_method: BaseCAM,
    ) -> np.ndarray:
        """The coherency of each map."""
        model = check_model(model, self.name)
        if not callable(base_method):
            raise TypeError(
                f"{self.name}: base_method must be the CAM object that made the maps, e.g. "
                f"GradCAM(model, target_layers), got {type(base_method).__name__}."
            )
        x = check_input_tensor(input_tensor, model, self.name)
        maps = check_cams(grayscale_cams, x, self.name, "grayscale_cams")
        check_unit_interval(maps, self.name, "grayscale_cams")
        checked = check_metric_targets(targets, x.shape[0], self.name)
        if checked is None:
            checked = top_class_logits(model, x, base_method)
        again = base_method(multiply_tensor_with_cam(x, maps), checked)
        if tuple(np.shape(again)) != tuple(maps.shape):
            raise ValueError(
                f"{self.name}: base_method returned maps of shape {tuple(np.shape(again))} "
                f"for the multiplied images; expected {tuple(maps.shape)}, like "
                "grayscale_cams."
            )
        return batch_pearson_coherency(maps, again)


def harmonic_mean(*terms: np.ndarray) -> np.ndarray:
    """``len(terms) / sum(1 / term)`` elementwise; 0 where a term is <= 0 (its limit)."""
    stacked = np.stack([np.asarray(term, dtype=np.float64) for term in terms])
    positive = (stacked > 0).all(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = len(terms) / (1 / np.where(stacked > 0, stacked, 1.0)).sum(axis=0)
    result = np.where(positive, mean, 0.0)
    return np.where(np.isnan(stacked).any(axis=0), np.nan, result).astype(np.float32)


def scaled_road(road: np.ndarray) -> np.ndarray:
    """ROADCombined scaled to [0, 1]: ``clip(road + 1/2, 0, 1)``.

    For a target in [0, 1] (a probability, the default) ``LeRF - MoRF`` lies in
    [-1, 1], so ``ROADCombined = mean (LeRF - MoRF) / 2`` lies in [-1/2, 1/2] and
    ``road + 1/2 = (mean (LeRF - MoRF) + 1) / 2`` in [0, 1], as Coherency maps ``r``.
    Scores outside (a logit target) are clipped.
    """
    return np.clip(np.asarray(road, dtype=np.float64) + 0.5, 0.0, 1.0)


class ARCC:
    """ARCC: ADCC with the Average Drop replaced by the scaled ROAD score.

    Per image, the harmonic mean of three terms in [0, 1], each higher-is-better::

        ARCC = 3 / (1 / Coherency + 1 / (1 - Complexity) + 1 / ROAD01)
        ROAD01 = clip(ROADCombined(road_percentiles) + 1/2, 0, 1)

    (ADCC is the same with ``1 - AverageDrop`` for ``ROAD01``.) ``ROADCombined`` is
    ``mean_p (LeRF(p) - MoRF(p)) / 2``, in [-1/2, 1/2] for probability targets; see
    :func:`scaled_road`. A term at 0 gives ARCC 0; NaN Coherency (a constant map) gives
    NaN.

    Called as ``ARCC(base_method)(input_tensor, grayscale_cams, targets, model)``, the
    arguments as for :class:`Coherency` (``cams=`` is accepted too). ``targets=None``:
    each image's top class, as its raw score for the CAM of Coherency and as its softmax
    probability for ROAD. Returns float32 numpy ``B``.

    Args:
        base_method: the CAM object that made the maps (a ``BaseCAM``).
        road_percentiles: the percentiles of ``ROADCombined``.
    """

    name = "ARCC"

    def __init__(
        self,
        base_method: BaseCAM,
        road_percentiles: list[float] = DEFAULT_ROAD_PERCENTILES,
    ) -> None:
        if not callable(base_method):
            raise TypeError(
                f"{self.name}: base_method must be the CAM object that made the maps, e.g. "
                f"GradCAM(model, target_layers), got {type(base_method).__name__}."
            )
        self.base_method = base_method
        self.road_percentiles = check_percentiles(road_percentiles, self.name)

    @also_accepts("cams", "grayscale_cams")
    def __call__(
        self,
        input_tensor: torch.Tensor,
        grayscale_cams: np.ndarray,
        targets: list[Target] | None,
        model: nn.Module,
    ) -> np.ndarray:
        """The ARCC of each map."""
        coherency = Coherency()(input_tensor, grayscale_cams, targets, model, self.base_method)
        complexity = Complexity()(grayscale_cams)
        road = ROADCombined(percentiles=self.road_percentiles)
        road_score = road(input_tensor, grayscale_cams, targets, model)
        return harmonic_mean(coherency, 1 - complexity.astype(np.float64), scaled_road(road_score))
