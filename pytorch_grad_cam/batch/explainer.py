"""The device work of a job: one batch in, its maps and scores out, one host copy.

The batch's inputs go to the model's device once; the CAM returns the maps there
(``as_tensor=True``); the target, the top class, the target's probability and the
optional deletion / insertion AUCs are computed there too, and each reaches the host
as one array per batch, never one value per image. The CAM call runs with autograd
available (never inside ``torch.inference_mode()``): the gradient methods need it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union, cast

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.batch.samples import LoadedBatch
from pytorch_grad_cam.metrics import DeletionCurve, InsertionCurve
from pytorch_grad_cam.utils.find_layers import get_layer
from pytorch_grad_cam.utils.model_outputs import select_output
from pytorch_grad_cam.utils.model_state import model_device
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    Target,
)

#: What to explain: each image's top class, a fixed class index, or the sample's label.
TargetSpec = Union[str, int]
#: The stored map types: float16 maps in [0, 1], or uint8 ``round(255 * map)``.
MAP_DTYPES = ("float16", "uint8")
#: The per-image metrics on offer, by name, and their column in the index.
METRICS = {"deletion": "deletion_auc", "insertion": "insertion_auc"}
#: A map type's fill value: what a failed sample's row holds.
FILL_VALUES = {"float16": float("nan"), "uint8": 0}


def check_target_spec(targets: Any) -> TargetSpec:
    """``targets`` if it is ``"top"``, ``"label"`` or a class index >= 0, else a clear error."""
    if targets in ("top", "label"):
        return str(targets)
    if isinstance(targets, (int, np.integer)) and not isinstance(targets, bool) and targets >= 0:
        return int(targets)
    raise ValueError(
        f"targets={targets!r}: pass 'top' (each image's top class), a class index >= 0, "
        "or 'label' (each sample's label)"
    )


@dataclass
class BatchResult:
    """What one batch gives: per sample, its map and its record for the index."""

    rows: np.ndarray
    ok: np.ndarray
    #: ``n x H x W`` in the store's dtype; a failed sample's map is the fill value.
    maps: np.ndarray
    errors: list[str | None]
    #: The explained class, the top class (-1 when failed), the target's probability (NaN).
    target: np.ndarray
    top_class: np.ndarray
    score: np.ndarray
    #: ``{column: values}`` for the requested metrics (NaN when failed).
    metrics: dict[str, np.ndarray] = field(default_factory=dict)

    def to_columns(self) -> dict[str, np.ndarray]:
        """The result as a dict of numpy columns (a Ray Data batch)."""
        columns = {
            "row": self.rows,
            "ok": self.ok,
            "map": self.maps,
            "error": np.array([error or "" for error in self.errors], dtype=object),
            "target": self.target,
            "top_class": self.top_class,
            "score": self.score,
        }
        columns.update({f"metric:{name}": values for name, values in self.metrics.items()})
        return columns

    @classmethod
    def from_columns(cls, columns: Mapping[str, np.ndarray]) -> BatchResult:
        """The inverse of ``to_columns``."""
        metrics = {
            name[len("metric:") :]: np.asarray(values)
            for name, values in columns.items()
            if name.startswith("metric:")
        }
        return cls(
            rows=np.asarray(columns["row"], dtype=np.int64),
            ok=np.asarray(columns["ok"], dtype=bool),
            maps=np.asarray(columns["map"]),
            errors=[str(error) or None for error in columns["error"]],
            target=np.asarray(columns["target"], dtype=np.int64),
            top_class=np.asarray(columns["top_class"], dtype=np.int64),
            score=np.asarray(columns["score"], dtype=np.float32),
            metrics=metrics,
        )


@dataclass
class ExplainerSpec:
    """Everything a ``BatchExplainer`` is built from (picklable, for Ray actors).

    Args:
        model: the model (its target layers are found again by name).
        method: the CAM class, e.g. ``GradCAM``.
        layer_names: dotted paths of the target layers in ``model``.
        method_kwargs: the method's constructor arguments besides model and layers.
        targets: ``"top"``, a class index, or ``"label"``.
        dtype: ``"float16"`` or ``"uint8"``.
        metrics: names from ``METRICS``.
        metric_steps: the deletion / insertion curves' number of steps.
        aug_smooth, eigen_smooth: the CAM call's smoothing options.
        map_size: ``(height, width)`` of the maps (the inputs' size).
    """

    model: nn.Module
    method: type[BaseCAM]
    layer_names: list[str]
    method_kwargs: dict[str, Any] = field(default_factory=dict)
    targets: TargetSpec = "top"
    dtype: str = "float16"
    metrics: Sequence[str] = ()
    metric_steps: int = 20
    aug_smooth: bool = False
    eigen_smooth: bool = False
    map_size: tuple[int, int] = (224, 224)

    def build(self, model: nn.Module | None = None) -> BatchExplainer:
        """A ``BatchExplainer`` for ``model`` (default: ``self.model``, where it is)."""
        return BatchExplainer(self, self.model if model is None else model)


class BatchExplainer:
    """The CAM and the metrics for a model, applied one ``LoadedBatch`` at a time."""

    def __init__(self, spec: ExplainerSpec, model: nn.Module) -> None:
        self.spec = spec
        self.model = model
        layers = [get_layer(model, name) for name in spec.layer_names]
        self.cam = spec.method(model=model, target_layers=layers, **spec.method_kwargs)
        selector = self.cam.output_selector
        self.metrics = {
            METRICS[name]: _metric(name, spec.metric_steps, selector) for name in spec.metrics
        }
        self.device = model_device(model) or torch.device("cpu")

    def close(self) -> None:
        """Release the CAM (its last outputs)."""
        self.cam.close()

    def explain(self, batch: LoadedBatch) -> BatchResult:
        """The maps and records of ``batch``; failed samples get fill values."""
        count = len(batch.rows)
        dtype = self.spec.dtype
        ok_rows = np.flatnonzero(batch.ok)
        maps = np.full((count, *self.spec.map_size), FILL_VALUES[dtype], dtype=dtype)
        target = np.full(count, -1, dtype=np.int64)
        top_class = np.full(count, -1, dtype=np.int64)
        score = np.full(count, np.nan, dtype=np.float32)
        metrics = {column: np.full(count, np.nan, dtype=np.float32) for column in self.metrics}
        if len(ok_rows):
            computed = self._explain_loaded(batch)
            maps[ok_rows] = computed["maps"]
            target[ok_rows] = computed["target"]
            top_class[ok_rows] = computed["top_class"]
            score[ok_rows] = computed["score"]
            for column in self.metrics:
                metrics[column][ok_rows] = computed[column]
        return BatchResult(
            rows=batch.rows,
            ok=batch.ok.copy(),
            maps=maps,
            errors=list(batch.errors),
            target=target,
            top_class=top_class,
            score=score,
            metrics=metrics,
        )

    def _explain_loaded(self, batch: LoadedBatch) -> dict[str, np.ndarray]:
        """The loaded samples' maps and numbers, as host arrays (one copy each)."""
        images = batch.images.to(self.device, non_blocking=True)
        wanted = self.spec.targets
        fixed: torch.Tensor | None = None
        if wanted == "label":
            if batch.labels is None:
                raise ValueError("targets='label' but the batch carries no labels")
            fixed = batch.labels.to(self.device, non_blocking=True)
        elif isinstance(wanted, int):
            fixed = torch.full((len(images),), wanted, dtype=torch.int64, device=self.device)
        # 0-d device tensors as categories: no value is read back to the host.
        targets = None if fixed is None else [ClassifierOutputTarget(c) for c in fixed]
        maps = cast(
            torch.Tensor,
            self.cam(
                images,
                targets,
                aug_smooth=self.spec.aug_smooth,
                eigen_smooth=self.spec.eigen_smooth,
                as_tensor=True,
            ),
        )
        with torch.no_grad():
            probabilities = select_output(self.cam.outputs, self.cam.output_selector).float()
            probabilities = probabilities.softmax(dim=1)
            top = probabilities.argmax(dim=1)
            explained = top if fixed is None else fixed
            scores = probabilities.gather(1, explained[:, None])[:, 0]
            stored = _encoded(maps.detach(), self.spec.dtype)
        numbers = torch.stack([explained, top]).cpu().numpy()
        computed = {
            "maps": stored.cpu().numpy(),
            "target": numbers[0],
            "top_class": numbers[1],
            "score": scores.cpu().numpy(),
        }
        if self.metrics:
            softmax_targets: list[Target] = [ClassifierOutputSoftmaxTarget(c) for c in explained]
            for column, metric in self.metrics.items():
                computed[column] = metric(images, maps.detach(), softmax_targets, self.model)
        return computed


def _encoded(maps: torch.Tensor, dtype: str) -> torch.Tensor:
    """``B x H x W`` maps in [0, 1] as the store's dtype, on their device."""
    if dtype == "uint8":
        return (maps * 255).round_().clamp_(0, 255).to(torch.uint8)
    return maps.to(torch.float16)


def _metric(name: str, steps: int, selector: Any) -> DeletionCurve | InsertionCurve:
    metric = DeletionCurve if name == "deletion" else InsertionCurve
    return metric(n_steps=steps, output_selector=selector)
