"""BaseCAM: the pipeline every CAM method shares; a method supplies only its weighting.

One call runs, in torch on the model's device (see ``docs/ARCHITECTURE.md``):

    check the input and targets -> CamCall -> (per pass, one per augmentation)
    run_model -> targets -> target_gradients -> per layer: reshape ->
    weighted_activations (layer_weights * activations) -> reduce_channels -> ReLU
    -> combine_layer_maps (scale per layer, resize, mean, scale) -> numpy or tensor

The model is left as it was found: hooks exist only during a call, train/eval flags
are restored, gradients are taken with respect to the activations only (no ``.grad``),
and calls on one model are serialised (``utils.model_state``). grad-cam 1.5.7's numpy
hooks (``get_cam_weights``, ...) run through :mod:`pytorch_grad_cam.incumbent_hooks`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import ttach
from torch import nn

from pytorch_grad_cam.activations_and_gradients import (
    ActivationsAndGradients as ActivationsAndGradients,  # re-exported: the incumbent's path
)
from pytorch_grad_cam.activations_and_gradients import LayerRecorder, check_reached, map_tensors
from pytorch_grad_cam.cam_call import CamCall, CamOptions, ForwardPass, LayerContext, ModelInputs
from pytorch_grad_cam.incumbent_hooks import IncumbentHooks, overridden_hooks
from pytorch_grad_cam.layer_layout import InferredReshapeWarning, LayerLayout
from pytorch_grad_cam.utils.augmentation import augmented_mean, default_tta_transforms
from pytorch_grad_cam.utils.caller_warnings import deprecated_constructor_spellings, warn_deprecated
from pytorch_grad_cam.utils.image import scale_cam_image as scale_cam_image  # re-exported
from pytorch_grad_cam.utils.maps import first_principal_component, resize_maps, scale_to_unit_range
from pytorch_grad_cam.utils.model_outputs import OutputSelector
from pytorch_grad_cam.utils.model_state import detached_output, model_device, model_in_eval_mode
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputTarget as ClassifierOutputTarget,  # re-exported: the incumbent's path
)
from pytorch_grad_cam.utils.model_targets import Target
from pytorch_grad_cam.utils.reshape_transforms import ReshapeTransform
from pytorch_grad_cam.utils.scoring import layer_gradients, target_scores, top_class_targets
from pytorch_grad_cam.utils.svd_on_activations import (
    get_2d_projection as get_2d_projection,  # re-exported: the incumbent's path
)
from pytorch_grad_cam.utils.validation import (
    categories_to_targets,
    check_cam_input,
    check_create_graph,
    check_target_layers,
    check_targets,
    looks_like_categories,
)

__all__ = [
    "ActivationsAndGradients",
    "BaseCAM",
    "CamOptions",
    "ClassifierOutputTarget",
    "InferredReshapeWarning",
    "LayerContext",
    "ReshapeTransform",
    "Target",
    "default_tta_transforms",
    "get_2d_projection",
    "scale_cam_image",
]


class BaseCAM(IncumbentHooks):
    """Class activation maps for ``target_layers`` of ``model``.

    Args:
        model: any ``nn.Module``, never modified (eval mode during a call, flags restored);
            a ``DataParallel`` wrapper is looked through, so the whole batch is explained.
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
        target_layer: deprecated spelling of ``target_layers=[module]`` (a warning).
        use_cuda: deprecated and ignored, with a warning: the CAM runs on the model's device.

    A method replaces one of the extension points (``docs/ARCHITECTURE.md``):
    :meth:`layer_weights` (most), :meth:`weighted_activations`, :meth:`reduce_channels`,
    :meth:`combine_layer_maps`, :meth:`run_model`, :meth:`target_gradients`,
    :meth:`default_targets`, or the whole pass, :meth:`compute_maps`.
    """

    #: Whether the method needs the gradients of the target score.
    uses_gradients: bool = True
    #: Whether the method explains a target (False: class-agnostic, like EigenCAM).
    uses_targets: bool = True
    #: Whether the map is always the first principal component (EigenCAM, EigenGradCAM).
    uses_principal_component: bool = False
    #: Whether the method maps target layers (False: FullGrad, which uses every bias).
    uses_target_layers: bool = True
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
        reshape_transform, target_layers = deprecated_constructor_spellings(
            reshape_transform, target_layers, target_layer, use_cuda
        )
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
        self.target_layers = (
            check_target_layers(model, target_layers) if self.uses_target_layers else []
        )
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
        #: The layers whose inferred reshape was announced (once per layer and object).
        self._announced_layers: set[int] = set()
        #: Which of the incumbent's numpy hooks this class's own code overrides.
        self._incumbent_overrides = overridden_hooks(type(self))

    @property
    def device(self) -> torch.device | None:
        """Where the model's parameters are, and so where the CAM runs."""
        return model_device(self.model)

    @property
    def layer_layout(self) -> LayerLayout:
        """How each target layer's output becomes ``B x C x *spatial`` activations."""
        return LayerLayout(
            self.model, self.target_layers, self.reshape_transform, self._announced_layers
        )

    # ----------------------------------------------------------------- extension points
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
        """``layer_weights * activations``; methods that do more than weight replace this."""
        return self.layer_weights(activations, gradients, context) * activations

    def reduce_channels(
        self, weighted: torch.Tensor, eigen_smooth: bool, context: LayerContext
    ) -> torch.Tensor:
        """One ``B x *spatial`` map from ``B x C x *spatial`` weighted activations, before
        the ReLU: their channel sum, or their first principal component (``eigen_smooth``,
        or always for ``uses_principal_component``). KPCA-CAM replaces it."""
        if eigen_smooth or self.uses_principal_component:
            return first_principal_component(weighted)
        return weighted.sum(dim=1)

    def combine_layer_maps(
        self, layer_maps: list[torch.Tensor], size: Sequence[int], scale: bool
    ) -> torch.Tensor:
        """The layers' maps (each at its layer's resolution) as one ``B x *size`` map: each
        scaled to [0, 1] (``scale``) and resized to the input's size, then averaged and
        scaled to [0, 1] again (as grad-cam 1.5.7 does); with ``scale=False`` the raw maps
        resized and averaged. RefineCAM replaces it."""
        if scale and "aggregate_multi_layers" in self._incumbent_overrides:
            return self._incumbent_aggregate(layer_maps, size)
        if not scale:
            return torch.stack([resize_maps(m, size) for m in layer_maps]).mean(dim=0)
        resized = [resize_maps(scale_to_unit_range(m), size) for m in layer_maps]
        if len(resized) == 1:
            return scale_to_unit_range(resized[0])
        return scale_to_unit_range(torch.stack(resized).mean(dim=0))

    def run_model(self, call: CamCall) -> Any:
        """The model's output for ``call.input_tensor`` in one pass (the target layers'
        hooks record it). AblationCAM and ShapleyCAM replace it."""
        return call.run_model(call.input_tensor)

    def target_gradients(
        self, scores: torch.Tensor, layer_outputs: list[Any], call: CamCall
    ) -> list[Any]:
        """What the method weights with, per layer: d(sum of the scores)/d(layer output)
        here; ShapleyCAM adds a second-order term."""
        return layer_gradients(scores, layer_outputs, create_graph=call.keep_graph)

    def default_targets(self, output: Any) -> list[Target]:
        """``targets=None``: each image's top-scoring class (kept on the device);
        ShapleyCAM explains it with the ReST score instead."""
        return top_class_targets(output, self.output_selector)

    def compute_maps(self, call: CamCall) -> torch.Tensor:
        """One pass: ``B x *spatial`` maps at the input's size, combined over the layers.
        FullGrad, which maps no target layer, replaces the whole pass."""
        layer_maps = self._layer_maps(call)
        return self.combine_layer_maps(layer_maps, self._map_size(call.input_tensor), call.scale)

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
            input_tensor: the images as the model takes them.
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
            extra_inputs: for a model with several inputs, what it takes besides the
                image, ``model(input_tensor, *extra_inputs, **model_kwargs)``. A tensor
                whose first axis has one row per image follows its image when
                perturbation methods batch perturbed copies; anything else is passed as
                it is.
            model_kwargs: the model's keyword inputs besides the image (see above).
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
        extras = create_graph or as_tensor or extra_inputs or model_kwargs
        if scale and not extras and target_category is None:
            # A subclass written for the incumbent may have replaced its entry points.
            maps = self._incumbent_entry(input_tensor, targets, aug_smooth, eigen_smooth)
            if maps is not None:
                return maps
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
        """The call, checked once and run: see :meth:`__call__`."""
        input_tensor = check_cam_input(input_tensor, self.model)
        batch_size = input_tensor.shape[0]
        if targets is None:
            targets = categories_to_targets(target_category, batch_size)
        if targets is not None:
            targets = check_targets(targets, batch_size)
        if create_graph:
            check_create_graph(type(self).__name__, self.supports_create_graph, as_tensor)
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
        call = CamCall(
            model=self.model,
            input_tensor=input_tensor,
            targets=targets,
            eigen_smooth=eigen_smooth,
            scale=scale,
            keep_graph=create_graph or not self.detach,
            model_inputs=ModelInputs(tuple(extra_inputs), dict(model_kwargs or {}), batch_size),
        )
        recording = torch.enable_grad() if call.keep_graph else contextlib.nullcontext()
        with model_in_eval_mode(self.model), recording:
            maps = self._augmented_maps(call) if aug_smooth else self.compute_maps(call)
        return maps if as_tensor else maps.detach().cpu().numpy()

    # ----------------------------------------------------------------- the pipeline
    def _layer_maps(self, call: CamCall) -> list[torch.Tensor]:
        """Each target layer's rectified map, at the layer's own resolution."""
        forward = self._forward(call)
        size = call.input_tensor.shape[2:]
        layout = self.layer_layout
        layer_maps = []
        for index, (output, raw_gradient) in enumerate(
            zip(forward.layer_outputs, forward.gradients)
        ):
            transform = layout.transform(index, output, size)
            context = LayerContext(
                model=self.model,
                layer=self.target_layers[index],
                layer_index=index,
                input_tensor=forward.input_tensor,
                targets=forward.targets,
                target_scores=forward.scores,
                layer_output=output,
                reshape_transform=transform,
                call=call,
            )
            activations = layout.reshape(index, output, transform, len(size), call.keep_graph)
            gradient = None
            if raw_gradient is not None:
                gradient = layout.reshape(
                    index, raw_gradient, transform, len(size), call.keep_graph
                )
            layer_maps.append(self._layer_map(activations, gradient, call.eigen_smooth, context))
        return layer_maps

    def _layer_map(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor | None,
        eigen_smooth: bool,
        context: LayerContext,
    ) -> torch.Tensor:
        """One layer's rectified map: the method's weighted activations, reduced over the
        channels; or a subclass's own ``get_cam_image`` / ``get_cam_weights`` (numpy)."""
        if self._incumbent_overrides & {"get_cam_image", "get_cam_weights"}:
            reduced = self._incumbent_layer_map(activations, gradients, eigen_smooth, context)
        else:
            weighted = self.weighted_activations(activations, gradients, context)
            reduced = self.reduce_channels(weighted, eigen_smooth, context)
        return torch.relu(reduced)

    def _map_size(self, input_tensor: torch.Tensor) -> tuple[int, ...]:
        """The size of the maps: the input's spatial size, or what a subclass's
        ``get_target_width_height`` says (it gives OpenCV's ``(width, height)`` order)."""
        if "get_target_width_height" in self._incumbent_overrides:
            return tuple(int(s) for s in reversed(self.get_target_width_height(input_tensor)))
        return tuple(input_tensor.shape[2:])

    def _forward(self, call: CamCall) -> ForwardPass:
        """Run the model once (and its backward pass from the targets' scores)."""
        # With gradients, autograd is switched on by the first target layer's hook; with
        # create_graph the maps depend on every parameter, so it records from the start.
        whole_graph = call.keep_graph or self.compute_input_gradient
        autograd = torch.enable_grad() if whole_graph else torch.no_grad()
        input_tensor = call.input_tensor
        if self.compute_input_gradient:
            input_tensor = input_tensor.detach().clone().requires_grad_(True)
            call = call.for_pass(input_tensor, call.targets)
        targets = call.targets
        with LayerRecorder(self.target_layers, self.uses_gradients) as recorder:
            with autograd:
                output = self.run_model(call)
                scores = None
                if self.uses_targets:
                    targets = targets if targets is not None else self.default_targets(output)
                    scores = self._target_scores(output, targets)
            self.outputs = detached_output(output)
        layer_outputs = check_reached(recorder.outputs, self.target_layers)
        gradients: list[Any] = [None] * len(layer_outputs)
        if self.uses_gradients:
            assert scores is not None  # a gradient method uses targets
            if self.compute_input_gradient:
                *gradients, input_gradient = self.target_gradients(
                    scores, [*layer_outputs, input_tensor], call
                )
                input_tensor.grad = input_gradient.detach()
            else:
                gradients = self.target_gradients(scores, layer_outputs, call)
        if not call.keep_graph:
            layer_outputs = [map_tensors(torch.Tensor.detach, out) for out in layer_outputs]
        detached_scores = None if scores is None else scores.detach()
        return ForwardPass(layer_outputs, gradients, targets, detached_scores, input_tensor)

    def _target_scores(self, output: Any, targets: Sequence[Target]) -> torch.Tensor:
        """Each image's target score, shape ``B``, with autograd on (see ``target_scores``)."""
        with torch.enable_grad():
            return target_scores(output, targets, self.output_selector)

    def _augmented_maps(self, call: CamCall) -> torch.Tensor:
        """Average of the maps of every ``tta_transforms`` pass, each mapped back; the
        unaugmented input's top classes are what every augmentation explains."""
        with torch.no_grad():
            output = call.run_model(call.input_tensor)
        unaugmented_output = detached_output(output)
        targets = call.targets
        if targets is None and self.uses_targets:
            targets = self.default_targets(output)
        maps = augmented_mean(
            self.tta_transforms,
            call.input_tensor,
            lambda augmented: self.compute_maps(call.for_pass(augmented, targets)),
        )
        self.outputs = unaugmented_output
        return maps

    # ----------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Release what the object holds. Hooks only exist during a call, so none remain."""
        self.outputs = None

    def __enter__(self) -> BaseCAM:
        """The CAM itself; leaving the block releases ``outputs`` (see :meth:`close`)."""
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, exc_tb: Any) -> None:
        """Release ``outputs``; never swallow the caller's exception."""
        self.close()  # returns None: an exception is never swallowed
