"""BaseCAM: the pipeline every CAM method shares; a method supplies only its weighting.

One call runs, in torch on the model's device:

    model output -> targets -> per-layer weights (the method) -> weighted activations
    -> channel sum, or first principal component (eigen_smooth) -> ReLU
    -> per-layer [0, 1] scaling -> resize to the input's spatial size -> mean over
    layers -> per-image [0, 1] scaling

A target layer may output a mapping of tensors (a feature pyramid); its gradient is
then a mapping too, and the ``reshape_transform`` turns both into ``B x C x H x W``.

The user's model is left as it was found: hooks exist only during a call, the
modules' train/eval flags are restored, gradients are taken with
``torch.autograd.grad`` with respect to the activations only, so no parameter's
``.grad`` is touched. Calls on one model are serialised (``utils.model_state``).

Code written for grad-cam 1.5.7 extends ``BaseCAM`` through numpy hooks
(``get_cam_weights``, ``get_cam_image``, ...); :mod:`pytorch_grad_cam.incumbent_hooks`
runs those, and the tensor pipeline here stays the fast path.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, TypedDict

import numpy as np
import torch
import ttach
from torch import nn

from pytorch_grad_cam.activations_and_gradients import (
    ActivationsAndGradients as ActivationsAndGradients,  # re-exported: the incumbent's path
)
from pytorch_grad_cam.activations_and_gradients import (
    LayerRecorder,
    check_reached,
    is_tensor_mapping,
    map_tensors,
)
from pytorch_grad_cam.incumbent_hooks import IncumbentHooks, overridden_hooks
from pytorch_grad_cam.utils.caller_warnings import warn_at_caller, warn_deprecated
from pytorch_grad_cam.utils.image import scale_cam_image as scale_cam_image  # re-exported
from pytorch_grad_cam.utils.maps import first_principal_component, resize_maps, scale_to_unit_range
from pytorch_grad_cam.utils.model_outputs import OutputSelector
from pytorch_grad_cam.utils.model_state import detached_output, model_in_eval_mode
from pytorch_grad_cam.utils.model_state import model_device as model_device  # re-exported
from pytorch_grad_cam.utils.model_tail import repeat_rows
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputTarget as ClassifierOutputTarget,  # re-exported: the incumbent's path
)
from pytorch_grad_cam.utils.model_targets import Target
from pytorch_grad_cam.utils.reshape_transforms import (
    ReshapeTransform,
    channels_last_to_first,
    infer_reshape_transform,
    infer_token_grid,
    tokens_to_grid,
)
from pytorch_grad_cam.utils.scoring import layer_gradients, target_scores, top_class_targets
from pytorch_grad_cam.utils.svd_on_activations import (
    get_2d_projection as get_2d_projection,  # re-exported: the incumbent's path
)
from pytorch_grad_cam.utils.validation import (
    categories_to_targets,
    check_cam_input,
    check_target_layers,
    check_targets,
    is_integer,
    is_positive_int,
    looks_like_categories,
)

if TYPE_CHECKING:
    pass

# Names other modules and users import from here.
__all__ = [
    "ActivationsAndGradients",
    "BaseCAM",
    "CamOptions",
    "ClassifierOutputTarget",
    "InferredReshapeWarning",
    "LayerContext",
    "ReshapeTransform",
    "Target",
    "check_input",
    "check_targets",
    "default_tta_transforms",
    "detached_output",
    "get_2d_projection",
    "is_integer",
    "is_positive_int",
    "layer_gradients",
    "looks_like_categories",
    "model_device",
    "model_in_eval_mode",
    "scale_cam_image",
    "target_scores",
    "warn_at_caller",
    "warn_deprecated",
]

#: The input check of every CAM method (``utils.validation.check_cam_input``).
check_input = check_cam_input


class InferredReshapeWarning(UserWarning):
    """A target layer's output was reshaped by a transform the CAM inferred."""


def default_tta_transforms() -> ttach.Compose:
    """Horizontal flip x multiply by 0.9 / 1.0 / 1.1: six passes."""
    return ttach.Compose([ttach.HorizontalFlip(), ttach.Multiply(factors=[0.9, 1.0, 1.1])])


class CamOptions(TypedDict, total=False):
    """The keyword-only options every method takes besides its own (``**options``)."""

    tta_transforms: ttach.Compose | None
    output_selector: OutputSelector
    target_layer: nn.Module | None
    use_cuda: bool | None


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


class BaseCAM(IncumbentHooks):
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
        compute_input_gradient: record autograd from the input, so that the input's
            gradient is computed too; a subclass reads it as ``input_tensor.grad`` in its
            hooks (the maps themselves do not change).
        uses_gradients: ``False`` for a gradient-free subclass (no backward pass).
        tta_transforms: a ``ttach.Compose`` used by ``aug_smooth=True`` instead of the
            default (horizontal flip x multiply by 0.9 / 1.0 / 1.1).
        detach: ``False`` keeps the autograd graph through the activations and
            gradients that a subclass's hooks receive (as tensors, not numpy arrays), and
            through the maps returned with ``as_tensor=True``.
        output_selector: which part of the model's output holds the scores, when the
            model returns a tuple, dict or ``ModelOutput`` and the default rule (a
            ``.logits`` attribute, a ``"logits"`` / ``"out"`` key, the first tensor of a
            tuple) does not fit: a key or attribute name, a tuple index, or a callable.

    Deprecated spellings ``target_layer=module`` and ``use_cuda=`` are accepted with a
    ``DeprecationWarning``; the computation runs wherever the model's parameters are.

    A method subclasses ``BaseCAM`` and replaces one step: :meth:`layer_weights` (most),
    :meth:`weighted_activations` (methods that do more than weight). See
    ``docs/ARCHITECTURE.md``.
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
        compute_input_gradient: bool = False,
        uses_gradients: bool = True,
        tta_transforms: ttach.Compose | None = None,
        detach: bool = True,
        *,
        output_selector: OutputSelector = None,
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
        self.target_layers = check_target_layers(model, target_layers)
        self.reshape_transform = reshape_transform
        self.compute_input_gradient = bool(compute_input_gradient)
        if not uses_gradients:  # a subclass's own class attribute stands otherwise
            self.uses_gradients = False
        self.detach = bool(detach)
        self.tta_transforms = (
            tta_transforms if tta_transforms is not None else default_tta_transforms()
        )
        self.output_selector = output_selector
        self.outputs: Any = None
        self._announced_layers: set[int] = set()
        self._create_graph = False
        self._model_inputs = ModelInputs((), {}, 0)
        #: Which of the incumbent's numpy hooks this class's own code overrides.
        self._incumbent_overrides = overridden_hooks(type(self))

    @property
    def device(self) -> torch.device | None:
        """Where the model's parameters are, and so where the CAM runs."""
        return model_device(self.model)

    # ----------------------------------------------------------------- the method's part
    def layer_weights(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor | None,
        context: LayerContext,
    ) -> torch.Tensor:
        """Weights for one layer, broadcastable to ``activations`` (``B x C x *spatial``).

        Channel weights have shape ``B x C x 1 x 1`` (or ``x 1`` more for 3-D); element-wise
        weights have the activations' shape. Both inputs are float32 tensors on the model's
        device. This is the step most methods replace.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must define layer_weights(activations, gradients, "
            "context) (or the incumbent's get_cam_weights / get_cam_image)."
        )

    def weighted_activations(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor | None,
        context: LayerContext,
    ) -> torch.Tensor:
        """``weights * activations``; methods that do more than weight override this."""
        return self.layer_weights(activations, gradients, context) * activations

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
        plain_call = not (create_graph or as_tensor or extra_inputs or model_kwargs) and scale
        overrides = self._incumbent_overrides
        if plain_call and target_category is None:
            # A subclass written for the incumbent that replaced its entry points.
            if aug_smooth and "forward_augmentation_smoothing" in overrides:
                return self.forward_augmentation_smoothing(input_tensor, targets, eigen_smooth)
            if not aug_smooth and "forward" in overrides:
                return self.forward(input_tensor, targets, eigen_smooth)
        return self._explain(
            input_tensor,
            targets,
            aug_smooth,
            eigen_smooth,
            scale=scale,
            as_tensor=as_tensor,
            create_graph=create_graph,
            extra_inputs=extra_inputs,
            model_kwargs=model_kwargs,
            target_category=target_category,
        )

    def _explain(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Target] | None,
        aug_smooth: bool,
        eigen_smooth: bool,
        *,
        scale: bool = True,
        as_tensor: bool = False,
        create_graph: bool = False,
        extra_inputs: Sequence[Any] = (),
        model_kwargs: Mapping[str, Any] | None = None,
        target_category: Any = None,
    ) -> np.ndarray | torch.Tensor:
        """The call, checked and run: see :meth:`__call__`."""
        input_tensor = check_input(input_tensor, self.model)
        batch_size = input_tensor.shape[0]
        targets = categories_to_targets(target_category, batch_size) if targets is None else targets
        if targets is not None:
            targets = check_targets(targets, batch_size)
        if create_graph:
            self._check_create_graph(as_tensor)
        if (extra_inputs or model_kwargs) and not self.supports_extra_inputs:
            raise ValueError(
                f"{type(self).__name__} does not take extra_inputs / model_kwargs yet; "
                "wrap the model in a module whose forward takes the image alone."
            )
        if aug_smooth and input_tensor.ndim == 3:
            raise ValueError(
                "aug_smooth=True flips and rescales images with ttach; a B x C x L signal has "
                "no such augmentations here. Call without aug_smooth."
            )
        keep_graph = create_graph or not self.detach
        recording = torch.enable_grad() if keep_graph else contextlib.nullcontext()
        # The call's state lives on self only inside the model's lock: another thread's
        # call through this object (or on this model) waits until it is reset.
        with model_in_eval_mode(self.model), recording:
            self._model_inputs = ModelInputs(
                tuple(extra_inputs), dict(model_kwargs or {}), batch_size
            )
            self._create_graph = keep_graph
            try:
                if aug_smooth:
                    maps = self._augmented_maps(input_tensor, targets, eigen_smooth, scale)
                else:
                    maps = self._maps(input_tensor, targets, eigen_smooth, scale)
            finally:
                self._create_graph = False
                self._model_inputs = ModelInputs((), {}, 0)
        if as_tensor:
            return maps
        return maps.detach().cpu().numpy()

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
        layer_maps = self._layer_maps(input_tensor, targets, eigen_smooth)
        return self.combine_layer_maps(layer_maps, self._map_size(input_tensor), scale)

    def _layer_maps(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Target] | None,
        eigen_smooth: bool,
    ) -> list[torch.Tensor]:
        """Each target layer's rectified map, at the layer's own resolution."""
        layer_outputs, gradients, targets, scores = self._forward(input_tensor, targets)
        size = input_tensor.shape[2:]
        if self.compute_input_gradient:
            input_tensor = self._input_with_gradient
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
        return layer_maps

    def _map_size(self, input_tensor: torch.Tensor) -> tuple[int, ...]:
        """The size of the maps: the input's spatial size, or what a subclass's
        ``get_target_width_height`` says (it gives OpenCV's ``(width, height)`` order)."""
        if "get_target_width_height" in self._incumbent_overrides:
            return tuple(int(s) for s in reversed(self.get_target_width_height(input_tensor)))
        return tuple(input_tensor.shape[2:])

    def combine_layer_maps(
        self, layer_maps: list[torch.Tensor], size: Sequence[int], scale: bool
    ) -> torch.Tensor:
        """The layers' maps (each at its layer's resolution) as one ``B x *size`` map: each
        scaled to [0, 1] (``scale``) and resized to the input's size, then averaged and
        scaled to [0, 1] again (as grad-cam 1.5.7 does); with ``scale=False`` the raw maps
        resized and averaged. A method that combines layers otherwise replaces this step
        (RefineCAM)."""
        if scale and "aggregate_multi_layers" in self._incumbent_overrides:
            per_layer = [resize_maps(scale_to_unit_range(m), size) for m in layer_maps]
            combined = self.aggregate_multi_layers(
                [m.detach().cpu().numpy()[:, None] for m in per_layer]
            )
            device = per_layer[0].device
            return torch.as_tensor(np.asarray(combined, dtype=np.float32), device=device)
        if not scale:
            return torch.stack([resize_maps(m, size) for m in layer_maps]).mean(dim=0)
        resized = [resize_maps(scale_to_unit_range(m), size) for m in layer_maps]
        if len(resized) == 1:
            return scale_to_unit_range(resized[0])
        return scale_to_unit_range(torch.stack(resized).mean(dim=0))

    def _layer_map(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor | None,
        eigen_smooth: bool,
        context: LayerContext,
    ) -> torch.Tensor:
        """One layer's rectified map: the method's weighted activations, reduced over the
        channels (their sum, or their first principal component)."""
        if self._incumbent_overrides & {"get_cam_image", "get_cam_weights"}:
            reduced = self._incumbent_layer_map(activations, gradients, eigen_smooth, context)
            return torch.relu(reduced)
        return torch.relu(self._reduced_map(activations, gradients, eigen_smooth, context))

    def _reduced_map(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor | None,
        eigen_smooth: bool,
        context: LayerContext,
    ) -> torch.Tensor:
        """The weighted activations summed over the channels, or projected on their first
        principal component; before the ReLU."""
        weighted = self.weighted_activations(activations, gradients, context)
        if eigen_smooth or self.uses_principal_component:
            return first_principal_component(weighted)
        return weighted.sum(dim=1)

    def _forward(
        self, input_tensor: torch.Tensor, targets: Sequence[Target] | None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor | None], list[Target] | None, Any]:
        """Run the model once.

        Returns each target layer's output (detached), its gradient (or ``None``), the
        targets (``None`` resolved to each image's top class) and each image's score.
        """
        # With gradients, autograd is switched on by the first target layer's hook; with
        # create_graph the maps depend on every parameter, so it records from the start.
        whole_graph = self._create_graph or self.compute_input_gradient
        autograd = torch.enable_grad() if whole_graph else torch.no_grad()
        if self.compute_input_gradient:
            input_tensor = input_tensor.detach().clone().requires_grad_(True)
            self._input_with_gradient = input_tensor
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
        if not self.compute_input_gradient:
            return layer_gradients(scores, layer_outputs, create_graph=self._create_graph)
        leaf = self._input_with_gradient
        *gradients, input_gradient = layer_gradients(
            scores, [*layer_outputs, leaf], create_graph=self._create_graph
        )
        leaf.grad = input_gradient.detach()
        return gradients

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
        return top_class_targets(output, self.output_selector)

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
                "combines them into B x C x H x W, e.g. fpn_reshape_transform (linear: for "
                "gradient methods) or fasterrcnn_reshape_transform (grad-cam 1.5.7's) from "
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
            # A transform may apply a module with parameters (Hugging Face CvT): its result
            # joins the graph only when the call keeps one.
            recording = contextlib.nullcontext() if self._create_graph else torch.no_grad()
            with recording:
                tensor = transform(tensor)
        if isinstance(tensor, torch.Tensor) and tensor.ndim == 2 + spatial_rank:
            return tensor.float()
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
        """The CAM itself; leaving the block releases ``outputs`` (see :meth:`close`)."""
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, exc_tb: Any) -> bool:
        self.close()
        return False  # never swallow the caller's exception


# --------------------------------------------------------------------- helpers
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
