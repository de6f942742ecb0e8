"""The app's computations, with no web framework: predictions, maps, overlays, scores.

Every number the page shows comes from here and is what the library's public API gives:
the maps are the command line's ``compute_map`` (the method class called as ``cam(input_tensor,
targets)``), the overlays ``show_cam_on_image``, the scores ``DeletionCurve``,
``InsertionCurve`` and ``CamMultImageConfidenceChange`` on the map at the model input's
size, with the class's softmax probability as the target.

A computation can be stopped: ``cancel`` (a ``threading.Event``) is checked before every
module's forward, so ScoreCAM or AblationCAM stop within one batch of forward passes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.app.errors import AppInputError, Cancelled, page_message
from pytorch_grad_cam.app.images import LoadedImage
from pytorch_grad_cam.app.models import LoadedModel
from pytorch_grad_cam.cli.errors import CommandLineError
from pytorch_grad_cam.cli.explainable import to_input_tensor
from pytorch_grad_cam.cli.methods import (
    available_methods,
    maps_attention,
    resolve_target_method,
)
from pytorch_grad_cam.cli.pipeline import compute_map, predict
from pytorch_grad_cam.metrics import CamMultImageConfidenceChange, DeletionCurve, InsertionCurve
from pytorch_grad_cam.utils.find_layers import get_layer
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, Target
from pytorch_grad_cam.utils.reshape_transforms import infer_reshape_transform

#: Shown first, in this order; then the other methods of the package, alphabetically.
POPULAR_METHODS = (
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "XGradCAM",
    "LayerCAM",
    "EigenCAM",
    "EigenGradCAM",
    "ScoreCAM",
    "AblationCAM",
)
#: The model input's shorter side, in pixels, that the page offers (224: ImageNet's).
INPUT_SIDES = (224, 160, 112, 96)
TOP_CLASSES = 5

#: ``progress(fraction, description)``: how far a computation has got.
Progress = Callable[[float, str], None]


def method_names() -> list[str]:
    """The class names of the CAM methods that explain a target through target layers
    (not the attention methods: AttentionRollout, TransformerAttribution, LeGrad)."""
    classes = {
        method.__name__ for method in available_methods().values() if not maps_attention(method)
    }
    popular = [name for name in POPULAR_METHODS if name in classes]
    return popular + sorted(classes - set(popular), key=str.lower)


@dataclass(frozen=True)
class ExplainRequest:
    """What to explain: which methods, on which layer, for which class.

    Attributes:
        methods: method class names, e.g. ``["GradCAM", "ScoreCAM"]``.
        layer: the target layer's dotted path, e.g. ``"head_activation"``.
        category: the class index.
        input_side: the model input's shorter side in pixels (a model of a fixed input
            size ignores it).
        with_scores: also compute the faithfulness scores (forward passes per map).
    """

    methods: Sequence[str]
    layer: str
    category: int
    input_side: int = 224
    with_scores: bool = False


@dataclass(frozen=True)
class Prediction:
    """The model's answer for an image."""

    #: ``(index, name, probability)`` of the top classes, best first.
    top: list[tuple[int, str, float]]
    #: The name of every class, in output order.
    class_names: list[str]


@dataclass(frozen=True)
class MapScores:
    """The faithfulness scores of one map (see ``pytorch_grad_cam.metrics``)."""

    #: Area under the deletion curve: lower is better.
    deletion_auc: float
    #: Area under the insertion curve: higher is better.
    insertion_auc: float
    #: Probability on the image times its map minus on the image.
    confidence_change: float
    #: The deletion curve: the probability after deleting each fraction of the pixels.
    deletion_curve: np.ndarray
    #: The fractions of pixels deleted at the curve's points, 0 to 1.
    fractions: np.ndarray


@dataclass(frozen=True)
class MapResult:
    """One method's explanation."""

    method: str
    #: The map at the image's size, float32 in [0, 1] (what is overlaid and downloaded).
    grayscale: np.ndarray
    #: The map at the model input's size, as the method returned it (what is scored).
    input_map: np.ndarray
    #: ``show_cam_on_image(image, grayscale, use_rgb=True)``: RGB uint8.
    overlay: np.ndarray
    scores: MapScores | None = None


@contextmanager
def stoppable(model: nn.Module, cancel: Any | None) -> Iterator[None]:
    """Raise ``Cancelled`` before any submodule's forward once ``cancel.is_set()``.

    Every module is hooked, not only the model: AblationCAM runs only the part of the
    network after the target layer.
    """
    if cancel is None:
        yield
        return

    def check(module: nn.Module, inputs: Any) -> None:
        if cancel.is_set():
            raise Cancelled("stopped by the user")

    handles = [module.register_forward_pre_hook(check) for module in model.modules()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class ExplanationService:
    """Predictions, maps and scores for the page.

    Args:
        batch_size: forward passes at once for ScoreCAM, AblationCAM and the scores.
        metric_steps: steps of the deletion and insertion curves.
    """

    def __init__(self, batch_size: int = 32, metric_steps: int = 20) -> None:
        self.batch_size = batch_size
        self.metric_steps = metric_steps

    # ----------------------------------------------------------------- inputs
    def input_tensor(
        self, loaded: LoadedModel, image: LoadedImage, input_side: int = 224
    ) -> torch.Tensor:
        """The normalised ``1 x 3 x H x W`` input on the model's device: at the model's
        own input size if it has one, else with the shorter side at most ``input_side``."""
        explainable = loaded.explainable
        if explainable.input_size is None:
            height, width = image.rgb.shape[:2]
            scale = min(1.0, input_side / min(height, width))
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            explainable = dataclasses.replace(explainable, input_size=size)
        return to_input_tensor(image.rgb, explainable).to(loaded.device)

    def predict(self, loaded: LoadedModel, image: LoadedImage, input_side: int = 224) -> Prediction:
        """The top classes with their softmax probabilities, and every class's name."""
        with loaded.lock:
            x = self.input_tensor(loaded, image, input_side)
            with torch.no_grad():
                scores, _ = predict(loaded.model, x, loaded.model)
        names = class_names(loaded.explainable.categories, scores.numel())
        top = scores.softmax(dim=0).topk(min(TOP_CLASSES, scores.numel()))
        pairs = zip(top.indices.tolist(), top.values.tolist())
        return Prediction([(i, names[i], p) for i, p in pairs], names)

    # ----------------------------------------------------------------- maps
    def explain(
        self,
        loaded: LoadedModel,
        image: LoadedImage,
        request: ExplainRequest,
        cancel: Any | None = None,
        progress: Progress | None = None,
    ) -> list[MapResult]:
        """One ``MapResult`` per method of ``request``, in its order.

        Raises:
            AppInputError: no method, an unknown method or layer, a layer with no spatial
                map, a class out of range, or a method that does not fit the model.
            Cancelled: ``cancel`` was set.
        """
        if not request.methods:
            raise AppInputError("Methods: choose at least one method, e.g. GradCAM")
        methods = [self.method_class(name) for name in request.methods]
        report = progress or (lambda fraction, text: None)
        model = loaded.model
        with loaded.lock, stoppable(model, cancel):
            x = self.input_tensor(loaded, image, request.input_side)
            layer = self.target_layer(loaded, request.layer)
            scores, shape = predict(model, x, layer)
            reshape = loaded.explainable.reshape_transform
            if reshape is None and shape is not None:
                reshape = infer_reshape_transform(shape, x.shape[2:])
            check_spatial(request.layer, shape, reshape, loaded.suggested_layers)
            check_category(request.category, scores.numel())
            results = []
            for index, method in enumerate(methods):
                report(index / len(methods), f"{method.__name__} ({index + 1}/{len(methods)})")
                input_map = self.compute_map(method, loaded, layer, reshape, x, request.category)
                grayscale = resized(input_map, image.rgb.shape[:2])
                overlay = show_cam_on_image(image.rgb, grayscale, use_rgb=True)
                map_scores = None
                if request.with_scores:
                    report((index + 0.5) / len(methods), f"scores of {method.__name__}")
                    map_scores = self.score(model, x, input_map, request.category)
                results.append(
                    MapResult(method.__name__, grayscale, input_map, overlay, map_scores)
                )
            report(1.0, "done")
        return results

    def method_class(self, name: str) -> type:
        """The method class named ``name`` (any case), or an ``AppInputError``."""
        try:
            return resolve_target_method(name)
        except CommandLineError as error:
            raise page_message(error, f"Method {name}") from error

    def target_layer(self, loaded: LoadedModel, path: str) -> nn.Module:
        """The submodule at ``path``, or an ``AppInputError`` naming the nearest layers."""
        if not path:
            suggested = ", ".join(loaded.suggested_layers)
            raise AppInputError(f"Target layer: choose one, e.g. {suggested}")
        try:
            return get_layer(loaded.model, path)
        except ValueError as error:
            raise AppInputError(f"Target layer: {error}") from error

    def compute_map(
        self,
        method: type,
        loaded: LoadedModel,
        layer: nn.Module,
        reshape: Any,
        x: torch.Tensor,
        category: int,
    ) -> np.ndarray:
        """The method's ``H x W`` map at the input's size, through the command line's
        ``compute_map`` (``progress_bar`` on: a page that tracks ``tqdm`` shows it)."""
        try:
            result = compute_map(
                method, loaded.model, [layer], reshape, x, category, batch_size=self.batch_size
            )
        except CommandLineError as error:
            raise page_message(error, method.__name__) from error
        return np.asarray(result, dtype=np.float32)

    # ----------------------------------------------------------------- scores
    def score(
        self, model: nn.Module, x: torch.Tensor, input_map: np.ndarray, category: int
    ) -> MapScores:
        """The deletion and insertion AUCs and the confidence change of one map, the
        class's softmax probability as the target."""
        maps = input_map[None]
        targets: list[Target] = [ClassifierOutputSoftmaxTarget(category)]
        steps, batch = self.metric_steps, self.batch_size
        deletion = DeletionCurve(n_steps=steps, batch_size=batch)
        deletion_auc, curve = deletion(x, maps, targets, model, return_curves=True)
        insertion = InsertionCurve(n_steps=steps, batch_size=batch)
        insertion_auc = insertion(x, maps, targets, model)
        change = CamMultImageConfidenceChange(batch_size=batch)(x, maps, targets, model)
        return MapScores(
            deletion_auc=float(deletion_auc[0]),
            insertion_auc=float(insertion_auc[0]),
            confidence_change=float(change[0]),
            deletion_curve=curve[0],
            fractions=deletion.fractions,
        )


def class_names(categories: Sequence[str], count: int) -> list[str]:
    """``categories`` when the model has that many outputs, else ``class 0``, ..."""
    if len(categories) == count:
        return list(categories)
    return [f"class {index}" for index in range(count)]


def check_spatial(
    path: str, shape: tuple[int, ...] | None, reshape: Any, suggested: Sequence[str] = ()
) -> None:
    """An ``AppInputError`` unless the layer's output is a map with more than one position.

    Args:
        path: the layer's dotted path, for the message.
        shape: the layer's output shape on the input (``None``: not a tensor).
        reshape: the reshape transform the map will use (tokens or channels-last), if any.
        suggested: the model's usual target layers, named by the message.
    """
    example = f", e.g. {', '.join(suggested)}" if suggested else ""
    hint = f"choose a convolutional layer{example}"
    if shape is None:
        raise AppInputError(f"Target layer {path}: its output is not a tensor; {hint}")
    if reshape is None and len(shape) < 3:
        raise AppInputError(
            f"Target layer {path}: outputs shape {tuple(shape)}, which has no spatial axes, "
            f"so there is no map to draw; {hint}"
        )
    if reshape is None and int(np.prod(shape[2:])) <= 1:
        raise AppInputError(
            f"Target layer {path}: outputs shape {tuple(shape)}, a single position, so the "
            f"map would be one flat value; {hint}"
        )


def check_category(category: int, count: int) -> None:
    """An ``AppInputError`` unless ``0 <= category < count``."""
    if not 0 <= category < count:
        raise AppInputError(f"Class {category}: out of range; the model has classes 0..{count - 1}")


def resized(grayscale: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """``grayscale`` at ``size`` (``(height, width)``), bilinear, as the command line does."""
    height, width = size
    if grayscale.shape[:2] == (height, width):
        return grayscale
    return cv2.resize(grayscale, (width, height), interpolation=cv2.INTER_LINEAR)
