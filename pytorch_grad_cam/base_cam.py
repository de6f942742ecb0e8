"""BaseCAM: the pipeline every CAM method shares; a method supplies only its weighting.

One call runs, in torch on the model's device:

    model output -> targets -> per-layer weights (the method) -> weighted activations
    -> channel sum, or first principal component (eigen_smooth) -> ReLU
    -> resize to the input's spatial size -> per-image [0, 1] scaling -> mean over layers

A target layer may output a mapping of tensors (a feature pyramid); its gradient is
then a mapping too, and the ``reshape_transform`` turns both into ``B x C x H x W``.

The user's model is left as it was found: hooks exist only during a call, the
modules' train/eval flags are restored, gradients are taken with
``torch.autograd.grad`` with respect to the activations only, so no parameter's
``.grad`` is touched.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import itertools
import numbers
import os
import warnings
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import ttach
from torch import nn

from pytorch_grad_cam.activations_and_gradients import (
    LayerRecorder,
    is_tensor_mapping,
    map_tensors,
)
from pytorch_grad_cam.utils.maps import first_principal_component, resize_maps, scale_to_unit_range
from pytorch_grad_cam.utils.model_outputs import OutputSelector, select_output
from pytorch_grad_cam.utils.model_state import model_device as model_device  # re-exported
from pytorch_grad_cam.utils.model_state import model_in_eval_mode
from pytorch_grad_cam.utils.model_tail import repeat_rows
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.reshape_transforms import (
    channels_last_to_first,
    infer_reshape_transform,
    infer_token_grid,
    tokens_to_grid,
)
from pytorch_grad_cam.utils.validation import check_input_tensor

ReshapeTransform = Callable[[torch.Tensor], torch.Tensor]
Target = Callable[[Any], torch.Tensor]


class InferredReshapeWarning(UserWarning):
    """A target layer's output was reshaped by a transform the CAM inferred."""


def default_tta_transforms() -> ttach.Compose:
    """Horizontal flip x multiply by 0.9 / 1.0 / 1.1: six passes."""
    return ttach.Compose([ttach.HorizontalFlip(), ttach.Multiply(factors=[0.9, 1.0, 1.1])])


@dataclass
class ModelInputs:
    """What a model with several inputs takes besides the image, for one call."""

    args: tuple
    kwargs: dict
    #: The call's number of images: a tensor with this many rows has one per image.
    batch_size: int

    def for_rows(self, rows: Sequence[int] | None) -> tuple[tuple, dict]:
        """The inputs for a batch whose row ``r`` comes from image ``rows[r]``."""
        if rows is None or not (self.args or self.kwargs):
            return self.args, self.kwargs

        def follow(value: Any) -> Any:
            per_image = isinstance(value, torch.Tensor) and value.ndim > 0
            if per_image and value.shape[0] == self.batch_size:
                return repeat_rows(value, list(rows))
            return value

        return tuple(map(follow, self.args)), {k: follow(v) for k, v in self.kwargs.items()}


@dataclass
class LayerContext:
    """What a method may use to weight one target layer, besides activations and gradients.

    Perturbation methods (AblationCAM, ScoreCAM) re-run the model with it.
    """

    model: nn.Module
    layer: nn.Module
    layer_index: int
    input_tensor: torch.Tensor
    #: One target per image (``targets=None`` resolved to each image's top class).
    targets: list[Target] | None
    #: Each image's target score on the unperturbed input, shape ``B``, detached.
    target_scores: torch.Tensor | None
    #: The layer's output as the model produced it, before ``reshape_transform``: a tensor,
    #: or a mapping of tensors.
    layer_output: Any
    reshape_transform: ReshapeTransform | None


class BaseCAM:
    """Class activation maps for ``target_layers`` of ``model``.

    Args:
        model: any ``nn.Module``. It is never modified; during a call it runs in eval
            mode and its previous train/eval flags are restored afterwards. A
            ``DataParallel`` / ``DistributedDataParallel`` wrapper is looked through, so
            the whole batch is explained on the wrapped module's device.
        target_layers: list of submodules of ``model``; their maps are averaged.
        reshape_transform: maps a layer's output (and its gradient) to
            ``B x C x H x W`` or ``B x C x D x H x W``; it is passed the input's
            ``image_size=(H, W)`` when it takes that keyword. ``None``: token sequences
            ``B x N x C`` (ViT, DeiT, register tokens) and channels-last ``B x H x W x C``
            outputs (Swin) are reshaped by an inferred transform, with a warning once
            per layer naming it; other layouts are used as they are.
        tta_transforms: a ``ttach.Compose`` used by ``aug_smooth=True`` instead of the
            default (horizontal flip x multiply by 0.9 / 1.0 / 1.1).
        output_selector: which part of the model's output holds the scores, when the
            model returns a tuple, dict or ``ModelOutput`` and the default rule (a
            ``.logits`` attribute, a ``"logits"`` / ``"out"`` key, the first tensor of a
            tuple) does not fit: a key or attribute name, a tuple index, or a callable.

    Deprecated spellings ``target_layer=module`` and ``use_cuda=`` are accepted with a
    ``DeprecationWarning``; the computation runs wherever the model's parameters are.
    """

    #: Whether the method needs the gradients of the target score.
    uses_gradients: bool = True
    #: Whether the method explains a target (False: class-agnostic, like EigenCAM).
    uses_targets: bool = True
    #: Whether the map is always the first principal component (EigenCAM, EigenGradCAM).
    uses_principal_component: bool = False
    #: Whether ``extra_inputs`` / ``model_kwargs`` (models with several inputs) are supported.
    supports_extra_inputs: bool = True
    #: Whether ``create_graph=True`` is supported: the weights are differentiable functions
    #: of the activations and their gradients (the gradient methods).
    supports_create_graph: bool = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module] | None = None,
        reshape_transform: ReshapeTransform | None = None,
        tta_transforms: ttach.Compose | None = None,
        output_selector: OutputSelector = None,
        *,
        target_layer: nn.Module | None = None,
        use_cuda: bool | None = None,
    ) -> None:
        if isinstance(reshape_transform, bool):
            # The seeds' era signature was GradCAM(model, target_layer, use_cuda, ...).
            use_cuda, reshape_transform = reshape_transform, None
        if use_cuda is not None:
            warn_deprecated(
                "use_cuda= is no longer needed: the CAM runs on the device of the model's "
                "parameters; move the model with model.to('cuda') instead."
            )
        if target_layer is not None:
            if target_layers is not None:
                raise TypeError("Pass target_layers=[...] or target_layer=..., not both.")
            warn_deprecated("target_layer=module is deprecated; use target_layers=[module].")
            target_layers = [target_layer]
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        if reshape_transform is not None and not callable(reshape_transform):
            raise TypeError(
                "reshape_transform must be a callable taking a layer's output tensor, got "
                f"{type(reshape_transform).__name__}."
            )
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            # Replicas would each record their slice of the batch; the wrapped module sees
            # all of it.
            model = model.module
        self.model = model
        self.target_layers = _check_target_layers(model, target_layers)
        self.reshape_transform = reshape_transform
        self.tta_transforms = (
            tta_transforms if tta_transforms is not None else default_tta_transforms()
        )
        self.output_selector = output_selector
        self.outputs: Any = None
        self._announced_layers: set[int] = set()
        self._create_graph = False
        self._model_inputs = ModelInputs((), {}, 0)

    # ----------------------------------------------------------------- the method's part
    def get_cam_weights(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor | None,
        context: LayerContext,
    ) -> torch.Tensor:
        """Weights for one layer, broadcastable to ``activations`` (``B x C x *spatial``).

        Channel weights have shape ``B x C x 1 x 1`` (or ``x 1`` more for 3-D); element-wise
        weights have the activations' shape. Both inputs are float32.
        """
        raise NotImplementedError

    def weighted_activations(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor | None,
        context: LayerContext,
    ) -> torch.Tensor:
        """``weights * activations``; methods that do more than weight override this."""
        return self.get_cam_weights(activations, gradients, context) * activations

    # ----------------------------------------------------------------- the public call
    def __call__(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Target] | None = None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        *,
        scale: bool = True,
        as_tensor: bool = False,
        create_graph: bool = False,
        extra_inputs: Sequence[Any] = (),
        model_kwargs: Mapping[str, Any] | None = None,
        target_category: Any = None,
    ) -> np.ndarray | torch.Tensor:
        """One map per image of ``input_tensor`` (``B x C x H x W``, ``B x C x D x H x W`` for
        volumes, or ``B x C x L`` for signals).

        Args:
            targets: one callable per image mapping that image's model output to the
                score to explain (see ``pytorch_grad_cam.utils.model_targets``), or
                ``None`` for each image's top-scoring class.
            aug_smooth: average the maps over test-time augmentations (``tta_transforms``).
            eigen_smooth: use the first principal component of the weighted
                activations instead of their channel sum.
            scale: scale each map to [0, 1] (default). ``scale=False`` returns the raw
                maps (after ReLU and resizing, averaged over layers).
            as_tensor: return a float32 ``torch.Tensor`` on the model's device instead of
                a numpy array.
            create_graph: keep the autograd graph from the model's parameters to the maps
                (with ``as_tensor=True``), so that a loss on the maps can be
                back-propagated into the model, e.g. to train with attention guidance.
                The whole forward pass then records a graph. Gradient methods only.
            extra_inputs, model_kwargs: for a model with several inputs, what it takes
                besides the image: ``model(input_tensor, *extra_inputs, **model_kwargs)``.
                A tensor whose first axis has one row per image follows its image when
                perturbation methods batch perturbed copies; anything else is passed as
                it is.
            target_category: deprecated; ``None``, an int for every image, or one int
                per image. Use ``targets=[ClassifierOutputTarget(c), ...]``.

        Returns:
            float32 maps of shape ``B x H x W`` (``B x D x H x W``, ``B x L``).
        """
        if looks_like_categories(targets):
            target_category, targets = targets, None
        if target_category is not None:
            if targets is not None:
                raise TypeError("Pass targets=[...] or target_category=..., not both.")
            warn_deprecated(
                "target_category= is deprecated; pass "
                "targets=[ClassifierOutputTarget(category), ...], one per image."
            )
        input_tensor = check_input(input_tensor, self.model)
        batch_size = input_tensor.shape[0]
        targets = (
            _categories_to_targets(target_category, batch_size) if targets is None else targets
        )
        if targets is not None:
            targets = check_targets(targets, batch_size)

        if create_graph:
            self._check_create_graph(as_tensor)
        if extra_inputs or model_kwargs:
            if not self.supports_extra_inputs:
                raise ValueError(
                    f"{type(self).__name__} does not take extra_inputs / model_kwargs yet; "
                    "wrap the model in a module whose forward takes the image alone."
                )
        if aug_smooth and input_tensor.ndim == 3:
            raise ValueError(
                "aug_smooth=True flips and rescales images with ttach; a B x C x L signal has "
                "no such augmentations here. Call without aug_smooth."
            )
        recording = torch.enable_grad() if create_graph else contextlib.nullcontext()
        # The call's state lives on self only inside the model's lock: another thread's
        # call through this object (or on this model) waits until it is reset.
        with model_in_eval_mode(self.model), recording:
            self._model_inputs = ModelInputs(
                tuple(extra_inputs), dict(model_kwargs or {}), batch_size
            )
            self._create_graph = create_graph
            try:
                if aug_smooth:
                    maps = self._augmented_maps(input_tensor, targets, eigen_smooth, scale)
                else:
                    maps = self._maps(input_tensor, targets, eigen_smooth, scale)
            finally:
                self._create_graph = False
                self._model_inputs = ModelInputs((), {}, 0)
        return maps if as_tensor else maps.cpu().numpy()

    def _check_create_graph(self, as_tensor: bool) -> None:
        if not self.supports_create_graph:
            raise ValueError(
                f"create_graph=True is not supported by {type(self).__name__}: only the "
                "gradient methods (GradCAM, HiResCAM, GradCAMElementWise, GradCAMPlusPlus, "
                "XGradCAM, LayerCAM, EigenGradCAM) give maps that are differentiable in the "
                "model's parameters."
            )
        if not as_tensor:
            raise ValueError(
                "create_graph=True needs as_tensor=True: a numpy array cannot carry the "
                "autograd graph."
            )

    # ----------------------------------------------------------------- the pipeline
    def _maps(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Target] | None,
        eigen_smooth: bool,
        scale: bool,
    ) -> torch.Tensor:
        """One pass: ``B x *spatial`` maps at the input's size, averaged over layers."""
        layer_outputs, gradients, targets, scores = self._forward(input_tensor, targets)
        size = input_tensor.shape[2:]
        layer_maps = []
        for index, (layer_output, gradient) in enumerate(zip(layer_outputs, gradients)):
            transform = self._layer_transform(index, layer_output, size)
            context = LayerContext(
                model=self.model,
                layer=self.target_layers[index],
                layer_index=index,
                input_tensor=input_tensor,
                targets=targets,
                target_scores=scores,
                layer_output=layer_output,
                reshape_transform=transform,
            )
            activations = self._reshape(index, layer_output, transform, len(size))
            if gradient is not None:
                gradient = self._reshape(index, gradient, transform, len(size))
            layer_maps.append(self._layer_map(activations, gradient, eigen_smooth, context))
        return self._combine_layer_maps(layer_maps, size, scale)

    def _combine_layer_maps(
        self, layer_maps: list[torch.Tensor], size: Sequence[int], scale: bool
    ) -> torch.Tensor:
        """The layers' maps (each at its layer's resolution) as one ``B x *size`` map: each
        resized to the input's size, scaled to [0, 1] (``scale``), then averaged."""
        resized = [resize_maps(layer_map, size) for layer_map in layer_maps]
        return torch.stack([scale_to_unit_range(m) if scale else m for m in resized]).mean(dim=0)

    def _layer_map(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor | None,
        eigen_smooth: bool,
        context: LayerContext,
    ) -> torch.Tensor:
        weighted = self.weighted_activations(activations, gradients, context)
        if eigen_smooth or self.uses_principal_component:
            reduced = first_principal_component(weighted)
        else:
            reduced = weighted.sum(dim=1)
        return torch.relu(reduced)

    def _forward(
        self, input_tensor: torch.Tensor, targets: Sequence[Target] | None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor | None], list[Target] | None, Any]:
        """Run the model once.

        Returns each target layer's output (detached), its gradient (or ``None``), the
        targets (``None`` resolved to each image's top class) and each image's score.
        """
        # With gradients, autograd is switched on by the first target layer's hook; with
        # create_graph the maps depend on every parameter, so it records from the start.
        autograd = torch.enable_grad() if self._create_graph else torch.no_grad()
        with LayerRecorder(self.target_layers, self.uses_gradients) as recorder:
            with autograd:
                output = self._run_model(input_tensor)
                scores = None
                if self.uses_targets:
                    targets = targets if targets is not None else self._top_classes(output)
                    scores = self._target_scores(output, targets)
            self.outputs = detached_output(output)
        layer_outputs = check_reached(recorder.outputs, self.target_layers)
        if self.uses_gradients:
            gradients = self._gradients(scores, layer_outputs)
        else:
            gradients = [None] * len(layer_outputs)
        if not self._create_graph:
            layer_outputs = [map_tensors(torch.Tensor.detach, out) for out in layer_outputs]
        return layer_outputs, gradients, targets, None if scores is None else scores.detach()

    def _gradients(self, scores: torch.Tensor, layer_outputs: list[Any]) -> list[Any]:
        """What the method weights with, per layer: d(score)/d(layer output) here;
        ShapleyCAM adds a second-order term."""
        return layer_gradients(scores, layer_outputs, create_graph=self._create_graph)

    def _run_model(self, input_tensor: torch.Tensor) -> Any:
        """The model's forward pass; a method that needs more from it overrides this."""
        return self._call_model(input_tensor)

    def _call_model(self, batch: torch.Tensor, rows: Sequence[int] | None = None) -> Any:
        """The model on ``batch``, with the call's ``extra_inputs`` / ``model_kwargs``;
        row ``r`` of ``batch`` comes from image ``rows[r]`` (``None``: the images as given)."""
        args, kwargs = self._model_inputs.for_rows(rows)
        return self.model(batch, *args, **kwargs)

    def _top_classes(self, output: Any) -> list[Target]:
        """``targets=None``: each image's top-scoring class, kept on the device."""
        scores = select_output(output, self.output_selector)
        if scores.ndim != 2:
            raise ValueError(
                "targets=None picks each image's top class, which needs scores of shape "
                f"B x K; the model's output has shape {tuple(scores.shape)}. Pass "
                "targets=[...] (one per image) from pytorch_grad_cam.utils.model_targets."
            )
        return [ClassifierOutputTarget(category) for category in scores.detach().argmax(dim=1)]

    def _target_scores(self, output: Any, targets: Sequence[Target]) -> torch.Tensor:
        """Each image's target score, shape ``B``, with autograd on (see ``target_scores``)."""
        with torch.enable_grad():
            return target_scores(output, targets, self.output_selector)

    def _layer_transform(
        self, index: int, layer_output: torch.Tensor, image_size: Sequence[int]
    ) -> ReshapeTransform | None:
        """The reshape applied to one layer's output (and its gradient) in this call.

        The user's ``reshape_transform`` if given (with ``image_size=`` bound when it takes
        that keyword). Otherwise, for an image: token sequences ``B x N x C`` go through
        ``tokens_to_grid`` and channels-last ``B x H x W x C`` outputs through
        ``channels_last_to_first``, announced once per layer with a warning. A mapping of
        tensors needs the user's transform.
        """
        if self.reshape_transform is None and is_tensor_mapping(layer_output):
            layer = type(self.target_layers[index]).__name__
            mapping = type(layer_output).__name__
            raise ValueError(
                f"target_layers[{index}] ({layer}) outputs a mapping ({mapping}) of tensors "
                f"(keys {list(layer_output.keys())}); pass a reshape_transform that "
                "combines them into B x C x H x W, e.g. fasterrcnn_reshape_transform from "
                "pytorch_grad_cam.utils.reshape_transforms for a feature pyramid."
            )
        if self.reshape_transform is not None:
            if _takes_image_size(self.reshape_transform):
                return functools.partial(self.reshape_transform, image_size=tuple(image_size))
            return self.reshape_transform
        transform = infer_reshape_transform(layer_output.shape, image_size)
        if transform is tokens_to_grid:
            prefix = getattr(self.model, "num_prefix_tokens", None)
            prefix = prefix if is_integer(prefix) else None
            layout = infer_token_grid(layer_output.shape[1], image_size, prefix)
            self._announce(
                index,
                layer_output,
                f"tokens_to_grid: {layout.prefix_tokens} leading token(s) dropped, the "
                f"rest laid out as a {layout.height} x {layout.width} grid",
            )
            return functools.partial(
                tokens_to_grid, image_size=tuple(image_size), num_prefix_tokens=prefix
            )
        if transform is channels_last_to_first:
            self._announce(index, layer_output, "channels_last_to_first: B x H x W x C read")
        return transform

    def _announce(self, index: int, layer_output: torch.Tensor, how: str) -> None:
        if index in self._announced_layers:
            return
        self._announced_layers.add(index)
        layer = type(self.target_layers[index]).__name__
        warn_at_caller(
            f"target_layers[{index}] ({layer}) outputs shape {tuple(layer_output.shape)}, "
            f"reshaped with pytorch_grad_cam.utils.reshape_transforms.{how}. Pass "
            "reshape_transform= to choose the layout yourself and silence this warning.",
            InferredReshapeWarning,
        )

    def _reshape(
        self,
        index: int,
        tensor: torch.Tensor,
        transform: ReshapeTransform | None,
        spatial_rank: int,
    ) -> torch.Tensor:
        """A layer's output (or gradient) as ``B x C x *spatial``, with as many spatial axes
        as the input (``spatial_rank``: 2 for images, 3 for volumes, 1 for signals)."""
        original_shape = _shape_of(tensor)
        if transform is not None:
            tensor = transform(tensor)
        if isinstance(tensor, torch.Tensor) and tensor.ndim == 2 + spatial_rank:
            return tensor.float()  # _forward already detached the outputs
        layer = type(self.target_layers[index]).__name__
        wanted = {1: "B x C x L", 2: "B x C x H x W", 3: "B x C x D x H x W"}[spatial_rank]
        if transform is None:
            raise ValueError(
                f"target_layers[{index}] ({layer}) outputs a tensor of shape "
                f"{original_shape}, but for this input CAM methods need {wanted} "
                "activations, with as many spatial axes as the input. Pick a layer before "
                "the pooling, or pass a reshape_transform that returns that layout (see "
                "pytorch_grad_cam.utils.reshape_transforms)."
            )
        raise ValueError(
            f"reshape_transform turned the output of target_layers[{index}] ({layer}), "
            f"of shape {original_shape}, into {_shape_of(tensor)}; for this input it must "
            f"return {wanted}, with as many spatial axes as the input."
        )

    def _augmented_maps(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Target] | None,
        eigen_smooth: bool,
        scale: bool,
    ) -> torch.Tensor:
        """Average of the maps of every ``tta_transforms`` pass, each mapped back."""
        targets = self._unaugmented_pass(input_tensor, targets)
        unaugmented_output = self.outputs
        maps = []
        for transformer in self.tta_transforms:
            augmented = transformer.augment_image(input_tensor)
            augmented_maps = self._maps(augmented, targets, eigen_smooth, scale)
            maps.append(transformer.deaugment_mask(augmented_maps.unsqueeze(1)).squeeze(1))
        self.outputs = unaugmented_output
        return torch.stack(maps).mean(dim=0)

    def _unaugmented_pass(
        self, input_tensor: torch.Tensor, targets: Sequence[Target] | None
    ) -> Sequence[Target]:
        """Run the input as given: ``cam.outputs`` is its output, and with ``targets=None``
        each image's top class there is what every augmentation explains."""
        with torch.no_grad():
            output = self._call_model(input_tensor)
        self.outputs = detached_output(output)
        if targets is not None or not self.uses_targets:
            return targets
        return self._top_classes(output)

    # ----------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Release what the object holds. Hooks only exist during a call, so none remain."""
        self.outputs = None

    def __enter__(self) -> BaseCAM:
        return self

    def __exit__(self, *exc_info: Any) -> bool:
        self.close()
        return False  # never swallow the caller's exception


# --------------------------------------------------------------------- helpers
def warn_deprecated(message: str) -> None:
    """A ``DeprecationWarning`` at the caller's line: an old spelling that still works."""
    warn_at_caller(message, DeprecationWarning)


def warn_at_caller(message: str, category: type[Warning]) -> None:
    """Warn at the first frame outside this package, however deep the call."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = inspect.currentframe(), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def _check_target_layers(model: nn.Module, target_layers: Any) -> list[nn.Module]:
    if target_layers is None:
        raise TypeError("target_layers is required: a list of submodules of the model.")
    if isinstance(target_layers, nn.Module):
        raise TypeError(
            f"target_layers must be a list of modules, got a single "
            f"{type(target_layers).__name__}; pass target_layers=[layer]."
        )
    layers = list(target_layers)
    if not layers:
        raise ValueError("target_layers is empty; pass at least one submodule of the model.")
    submodules = {id(module) for module in model.modules()}
    for index, layer in enumerate(layers):
        if not isinstance(layer, nn.Module):
            raise TypeError(
                f"target_layers[{index}] must be an nn.Module, got {type(layer).__name__}."
            )
        if id(layer) not in submodules:
            raise ValueError(
                f"target_layers[{index}] ({type(layer).__name__}) is not a submodule of the "
                "model; pass a layer of this model instance, e.g. model.layer4[-1] (a layer "
                "of another copy of the model never runs)."
            )
    return layers


def check_input(input_tensor: Any, model: nn.Module) -> torch.Tensor:
    """A float ``B x C x H x W`` (or ``x D``, or ``B x C x L``) tensor with values on the
    model's device, or a clear error (see ``utils.validation.check_input_tensor``)."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "CAM methods cannot run inside torch.inference_mode(): the gradients they need "
            "cannot be recorded there. Call the CAM outside it (torch.no_grad() is fine)."
        )
    if (
        isinstance(input_tensor, torch.Tensor)
        and input_tensor.ndim == 3
        and _first_convolution_rank(model) == 2
    ):
        raise ValueError(
            f"input_tensor has shape {tuple(input_tensor.shape)}, B x C x L like a signal, but "
            "the model's first convolution is 2-D: for one image, add the batch axis with "
            "input_tensor.unsqueeze(0)."
        )
    input_tensor = check_input_tensor(input_tensor, model)
    if input_tensor.is_inference():
        input_tensor = input_tensor.clone()
    return input_tensor


def _first_convolution_rank(model: nn.Module) -> int | None:
    """1, 2 or 3 for the model's first ``nn.Conv1d`` / ``2d`` / ``3d``; ``None`` without."""
    for module in model.modules():
        for convolution, rank in ((nn.Conv1d, 1), (nn.Conv2d, 2), (nn.Conv3d, 3)):
            if isinstance(module, convolution):
                return rank
    return None


def is_integer(value: Any) -> bool:
    """A class index: a Python or numpy integer, or a 0-d integer tensor (not a bool)."""
    if isinstance(value, torch.Tensor):
        return value.ndim == 0 and not value.is_floating_point() and value.dtype != torch.bool
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_positive_int(value: Any, minimum: int = 1) -> bool:
    """An int (not a bool) of at least ``minimum``: batch sizes, sample counts."""
    return (
        isinstance(value, numbers.Integral)
        and not isinstance(value, (bool, np.bool_))
        and value >= minimum
    )


def looks_like_categories(targets: Any) -> bool:
    """The seeds' positional ``cam(input, 281)`` / ``cam(input, [281, 3])`` spelling."""
    if is_integer(targets):
        return True
    return (
        isinstance(targets, (list, tuple, np.ndarray))
        and len(targets) > 0
        and all(is_integer(t) for t in targets)
    )


def _categories_to_targets(target_category: Any, batch_size: int) -> list[Target] | None:
    if target_category is None:
        return None
    if is_integer(target_category):
        return [ClassifierOutputTarget(int(target_category)) for _ in range(batch_size)]
    return [ClassifierOutputTarget(int(category)) for category in target_category]


def check_targets(targets: Any, batch_size: int) -> list[Target]:
    """One callable target per image, or a clear error."""
    if callable(targets):
        raise TypeError(
            "targets must be a list with one target per image, got a single "
            f"{type(targets).__name__}; pass targets=[target] * batch_size to use it for "
            "every image."
        )
    targets = list(targets)
    if len(targets) != batch_size:
        raise ValueError(
            f"targets has {len(targets)} entries but input_tensor has {batch_size} images; "
            "pass one target per image (e.g. [ClassifierOutputTarget(c)] * batch_size)."
        )
    for index, target in enumerate(targets):
        if not callable(target):
            raise TypeError(
                f"targets[{index}] is a {type(target).__name__}, not a callable; use e.g. "
                "ClassifierOutputTarget(category) from pytorch_grad_cam.utils.model_targets."
            )
    return targets


def target_scores(output: Any, targets: Sequence[Target], selector: OutputSelector) -> torch.Tensor:
    """Each row's target score, float32, shape ``B`` (a target's values are summed).

    Consecutive rows that share one target object whose ``rowwise`` attribute is true
    (it maps a block of rows to their per-row results, as the classifier targets do)
    are scored with one call: perturbation methods and metrics score thousands of rows.
    """
    per_image = per_image_outputs(output, selector)
    scores = []
    start = 0
    for _, run in itertools.groupby(targets, key=id):
        count = len(list(run))
        target = targets[start]
        if getattr(target, "rowwise", False) and isinstance(per_image, torch.Tensor):
            block = _as_score(target(per_image[start : start + count]), targets, start)
            scores.append(block.reshape(count, -1).sum(dim=1).float())
        else:
            scores.extend(
                _as_score(target(per_image[row]), targets, row).sum().float().reshape(1)
                for row in range(start, start + count)
            )
        start += count
    return torch.cat(scores)


def _as_score(value: Any, targets: Sequence[Target], row: int) -> torch.Tensor:
    """What ``targets[row]`` returned, as a real tensor; anything else is a TypeError."""
    score = None
    if not isinstance(value, (bool, np.bool_, str, bytes)) and value is not None:
        try:
            score = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            score = None
    if score is not None and (score.is_floating_point() or score.dtype in _INTEGER_DTYPES):
        return score
    raise TypeError(
        f"targets[{row}] ({type(targets[row]).__name__}) returned "
        f"{type(value).__name__} {value!r:.60}, not a score: a target maps its image's model "
        "output to a real tensor (or number) to explain, e.g. ClassifierOutputTarget(category) "
        "returns model_output[category]."
    )


_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def per_image_outputs(output: Any, selector: OutputSelector) -> Any:
    """What each image's target is called with: its row of the scores, or its entry of a
    list of per-image dicts (torchvision detection models)."""
    if selector is None and isinstance(output, list) and output and isinstance(output[0], dict):
        return output
    return select_output(output, selector)


def check_reached(
    outputs: list[torch.Tensor | None], layers: list[nn.Module]
) -> list[torch.Tensor]:
    """Every target layer's recorded output, or an error naming the layer never reached."""
    for index, (output, layer) in enumerate(zip(outputs, layers)):
        if output is None:
            raise ValueError(
                f"target_layers[{index}] ({type(layer).__name__}) was never reached by the "
                "forward pass, so it has no activations; pick a layer that the model's "
                "forward() actually calls."
            )
    return outputs  # type: ignore[return-value]


def layer_gradients(
    scores: torch.Tensor, activations: list[Any], create_graph: bool = False
) -> list[Any]:
    """d(sum of the images' scores)/d(activation) for every layer (images are independent);
    zeros where the scores do not depend on it. A layer's mapping of tensors gets a
    mapping of their gradients."""
    with torch.enable_grad():
        score = scores.sum()
    flat = [
        tensor
        for activation in activations
        for tensor in (activation.values() if is_tensor_mapping(activation) else [activation])
    ]
    if score.requires_grad:
        flat_gradients = torch.autograd.grad(
            score, flat, allow_unused=True, create_graph=create_graph
        )
    else:
        flat_gradients = [None] * len(flat)
    remaining = iter(
        [torch.zeros_like(a) if g is None else g for a, g in zip(flat, flat_gradients)]
    )
    # map_tensors visits a mapping's tensors in the order flattened above.
    return [map_tensors(lambda _: next(remaining), activation) for activation in activations]


def _shape_of(value: Any) -> Any:
    """For error messages: a tensor's shape, each shape of a mapping of tensors, or
    the type of anything else."""
    if is_tensor_mapping(value):
        return {key: tuple(tensor.shape) for key, tensor in value.items()}
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    return type(value).__name__


def _takes_image_size(function: Callable) -> bool:
    try:
        return "image_size" in inspect.signature(function).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


def detached_output(output: Any) -> Any:
    """``output`` with every tensor in it detached, containers' types kept."""
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, tuple) and hasattr(output, "_fields"):  # a namedtuple
        return type(output)(*(detached_output(item) for item in output))
    if isinstance(output, (tuple, list)):
        return type(output)(detached_output(item) for item in output)
    if isinstance(output, MutableMapping):
        # A shallow copy keeps the mapping's type (dict, OrderedDict, ModelOutput).
        detached = copy.copy(output)
        for key, value in output.items():
            detached[key] = detached_output(value)
        return detached
    return output
