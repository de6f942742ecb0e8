"""The incumbent's extension points, on every CAM: code written for grad-cam 1.5.7 runs.

grad-cam 1.5.7's users extend ``BaseCAM`` through numpy hooks, and some call its
pipeline's steps directly:

- ``get_cam_weights(input_tensor, target_layer, targets, activations, grads)``: ``B x C``
  channel weights from numpy activations and gradients (``B x C x H x W``);
- ``get_cam_image(input_tensor, target_layer, targets, activations, grads, eigen_smooth)``:
  a ``B x H x W`` map (before the ReLU);
- ``forward(input_tensor, targets, eigen_smooth)``, ``forward_augmentation_smoothing``,
  ``compute_cam_per_layer(input_tensor, targets, eigen_smooth)``,
  ``aggregate_multi_layers(cam_per_target_layer)``, ``get_target_width_height(input_tensor)``.

Every package method answers these calls (with the maps of its own tensor pipeline).
A subclass from outside the package that *overrides* one of them is detected by
:func:`overridden_hooks` and the pipeline runs its version, with the incumbent's
conventions: numpy in and out, the weighted activations summed over the channels (or
projected with ``get_2d_projection`` for ``eigen_smooth``), ReLU, each layer's map scaled
to [0, 1] and resized to the input, averaged, scaled again. With ``detach=False`` the
hooks receive tensors that keep their graph instead of numpy arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.cam_call import CamCall, LayerContext
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.maps import resize_maps, scale_to_unit_range, spatial_axes
from pytorch_grad_cam.utils.model_state import model_in_eval_mode
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
from pytorch_grad_cam.utils.validation import check_cam_input, check_targets

#: The hooks a subclass may override, the incumbent's way.
HOOKS = frozenset(
    {
        "get_cam_weights",
        "get_cam_image",
        "forward",
        "forward_augmentation_smoothing",
        "aggregate_multi_layers",
        "get_target_width_height",
    }
)


def overridden_hooks(cls: type) -> frozenset[str]:
    """The hooks of :data:`HOOKS` whose effective definition in ``cls`` comes from a class
    outside this package (a user's subclass written for the incumbent)."""
    overridden = set()
    for name in HOOKS:
        for klass in cls.__mro__:
            if name in vars(klass):
                if not _in_package(klass):
                    overridden.add(name)
                break
    return frozenset(overridden)


def _in_package(klass: type) -> bool:
    module = klass.__module__
    return module == "pytorch_grad_cam" or module.startswith("pytorch_grad_cam.")


class IncumbentHooks:
    """grad-cam 1.5.7's pipeline steps and numpy hooks, as methods of every CAM."""

    if TYPE_CHECKING:  # what the mixin uses of BaseCAM
        model: nn.Module
        target_layers: list[nn.Module]
        detach: bool
        _incumbent_overrides: frozenset[str]

        @property
        def device(self) -> torch.device | None: ...  # noqa: D102 (BaseCAM's)

        def _explain(
            self,
            input_tensor: torch.Tensor,
            targets: Sequence[Any] | None,
            aug_smooth: bool,
            eigen_smooth: bool,
        ) -> np.ndarray | torch.Tensor: ...

        def _layer_maps(self, call: CamCall) -> list[torch.Tensor]: ...

        def _map_size(self, input_tensor: torch.Tensor) -> tuple[int, ...]: ...

        def layer_weights(  # noqa: D102 (BaseCAM's)
            self, activations: torch.Tensor, gradients: torch.Tensor | None, context: LayerContext
        ) -> torch.Tensor: ...

        def weighted_activations(  # noqa: D102 (BaseCAM's)
            self, activations: torch.Tensor, gradients: torch.Tensor | None, context: LayerContext
        ) -> torch.Tensor: ...

        def reduce_channels(  # noqa: D102 (BaseCAM's)
            self, weighted: torch.Tensor, eigen_smooth: bool, context: LayerContext
        ) -> torch.Tensor: ...

    # ----------------------------------------------------------------- entry points
    def forward(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Any] | None,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        """The maps of ``input_tensor`` (``cam(input_tensor, targets, eigen_smooth=...)``)."""
        return cast(np.ndarray, self._explain(input_tensor, targets, False, eigen_smooth))

    def forward_augmentation_smoothing(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Any] | None,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        """The maps averaged over ``tta_transforms`` (``cam(..., aug_smooth=True)``)."""
        return cast(np.ndarray, self._explain(input_tensor, targets, True, eigen_smooth))

    def compute_cam_per_layer(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Any] | None,
        eigen_smooth: bool,
    ) -> list[np.ndarray]:
        """Each target layer's map, ``B x 1 x H x W`` numpy, scaled to [0, 1] at the layer's
        resolution and resized to the input's size (one forward and backward pass)."""
        input_tensor = check_cam_input(input_tensor, self.model)
        if targets is not None:
            targets = check_targets(targets, input_tensor.shape[0])
        call = CamCall(self.model, input_tensor, targets, eigen_smooth)
        with model_in_eval_mode(self.model):
            layer_maps = self._layer_maps(call)
        size = self._map_size(input_tensor)
        return [
            resize_maps(scale_to_unit_range(m), size).detach().cpu().numpy()[:, None]
            for m in layer_maps
        ]

    def aggregate_multi_layers(self, cam_per_target_layer: Sequence[Any]) -> np.ndarray:
        """Layers' maps (each ``B x 1 x *spatial``) as one: rectified, averaged over the
        layers and scaled to [0, 1] per image."""
        stacked = np.concatenate([np.asarray(m, dtype=np.float32) for m in cam_per_target_layer], 1)
        return scale_cam_image(np.maximum(stacked, 0).mean(axis=1))

    def get_target_width_height(self, input_tensor: torch.Tensor) -> tuple[int, ...]:
        """The maps' size in OpenCV's order: ``(width, height)``, ``(width, height, depth)``
        for volumes, ``(length,)`` for signals."""
        return tuple(int(s) for s in reversed(input_tensor.shape[2:]))

    # ----------------------------------------------------------------- numpy hooks
    def get_cam_weights(
        self,
        input_tensor: torch.Tensor,
        target_layers: nn.Module,
        targets: Sequence[Any] | None,
        activations: Any,
        grads: Any,
    ) -> np.ndarray:
        """The method's weights for numpy ``activations`` and ``grads`` of one layer:
        ``B x C`` for channel weights (element-wise weights keep the activations' shape)."""
        activations_t, gradients_t = _tensors(self, activations, grads)
        context = _context(self, input_tensor, target_layers, targets, activations_t)
        weights = self.layer_weights(activations_t, gradients_t, context)
        if weights.ndim == activations_t.ndim and all(
            weights.shape[axis] == 1 for axis in spatial_axes(weights)
        ):
            weights = weights.flatten(2).squeeze(2)
        return weights.detach().float().cpu().numpy()

    def get_cam_image(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: Sequence[Any] | None,
        activations: Any,
        grads: Any,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        """One layer's map for numpy ``activations`` and ``grads``: ``B x H x W``, before the
        ReLU, the method's weighted activations reduced over the channels."""
        activations_t, gradients_t = _tensors(self, activations, grads)
        context = _context(self, input_tensor, target_layer, targets, activations_t)
        weighted = self.weighted_activations(activations_t, gradients_t, context)
        reduced = self.reduce_channels(weighted, eigen_smooth, context)
        return reduced.detach().float().cpu().numpy()

    # ----------------------------------------------------------------- running overrides
    def _incumbent_entry(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Any] | None,
        aug_smooth: bool,
        eigen_smooth: bool,
    ) -> np.ndarray | None:
        """The maps from a subclass's own ``forward`` / ``forward_augmentation_smoothing``,
        or ``None`` when it overrides neither (the package's pipeline runs)."""
        overrides = self._incumbent_overrides
        if aug_smooth and "forward_augmentation_smoothing" in overrides:
            return self.forward_augmentation_smoothing(input_tensor, targets, eigen_smooth)
        if not aug_smooth and "forward" in overrides:
            return self.forward(input_tensor, targets, eigen_smooth)
        return None

    def _incumbent_aggregate(
        self, layer_maps: list[torch.Tensor], size: Sequence[int]
    ) -> torch.Tensor:
        """The layers' maps combined by a subclass's own ``aggregate_multi_layers`` (each
        scaled and resized first, as the incumbent hands them)."""
        per_layer = [resize_maps(scale_to_unit_range(m), size) for m in layer_maps]
        combined = self.aggregate_multi_layers(
            [m.detach().cpu().numpy()[:, None] for m in per_layer]
        )
        device = per_layer[0].device
        return torch.as_tensor(np.asarray(combined, dtype=np.float32), device=device)

    def _incumbent_layer_map(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor | None,
        eigen_smooth: bool,
        context: LayerContext,
    ) -> torch.Tensor:
        """One layer's map through a subclass's own ``get_cam_image`` or
        ``get_cam_weights``, as a tensor on the activations' device (before the ReLU)."""
        as_given = _as_given if not self.detach else _to_numpy
        layer_activations = as_given(activations)
        layer_gradients = None if gradients is None else as_given(gradients)
        if "get_cam_image" in self._incumbent_overrides:
            cam = self.get_cam_image(
                context.input_tensor,
                context.layer,
                context.targets,
                layer_activations,
                layer_gradients,
                eigen_smooth,
            )
        else:
            weights = self.get_cam_weights(
                context.input_tensor,
                context.layer,
                context.targets,
                layer_activations,
                layer_gradients,
            )
            cam = _weighted_sum(weights, layer_activations, eigen_smooth)
        if isinstance(cam, torch.Tensor):
            return cam.to(activations.device).float()
        return torch.as_tensor(np.asarray(cam, dtype=np.float32), device=activations.device)


def _weighted_sum(weights: Any, activations: Any, eigen_smooth: bool) -> Any:
    """``sum_k w_k A^k`` (or its first principal component) of ``B x C`` weights."""
    if isinstance(activations, torch.Tensor):
        weights = torch.as_tensor(weights, device=activations.device, dtype=activations.dtype)
    else:
        weights = np.asarray(weights, dtype=np.float32)
    if weights.ndim == 2:
        weights = weights.reshape(*weights.shape, *[1] * (activations.ndim - 2))
    weighted = weights * activations
    if eigen_smooth:
        return get_2d_projection(weighted)
    return weighted.sum(1)


def _tensors(cam: IncumbentHooks, activations: Any, grads: Any) -> tuple[torch.Tensor, Any]:
    """Numpy (or tensor) activations and gradients as float32 tensors on the model's device."""

    def as_tensor(value: Any) -> torch.Tensor:
        if not isinstance(value, torch.Tensor):
            value = torch.from_numpy(np.asarray(value))
        return value.to(cam.device).float()

    return as_tensor(activations), None if grads is None else as_tensor(grads)


def _context(
    cam: IncumbentHooks,
    input_tensor: torch.Tensor,
    layer: Any,
    targets: Sequence[Any] | None,
    activations: torch.Tensor,
) -> LayerContext:
    layers = list(cam.target_layers)
    index = next((i for i, known in enumerate(layers) if known is layer), 0)
    return LayerContext(
        model=cam.model,
        layer=layer if isinstance(layer, nn.Module) else layers[index],
        layer_index=index,
        input_tensor=input_tensor,
        targets=None if targets is None else list(targets),
        target_scores=None,
        layer_output=activations,
        reshape_transform=None,
    )


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def _as_given(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


class CategoryNamedWeights(IncumbentHooks):
    """``get_cam_weights`` with the incumbent's parameter names of GradCAM, XGradCAM,
    RandomCAM and ShapleyCAM (``target_layer``, ``target_category``)."""

    def get_cam_weights(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        target_category: Sequence[Any] | None,
        activations: Any,
        grads: Any,
    ) -> np.ndarray:
        """See :meth:`IncumbentHooks.get_cam_weights`."""
        return IncumbentHooks.get_cam_weights(
            self, input_tensor, target_layer, target_category, activations, grads
        )


class CategoryNamedImage(IncumbentHooks):
    """``get_cam_image`` with the incumbent's parameter names of the methods that define
    it there (``target_layer``, ``target_category``, ``eigen_smooth`` without default)."""

    def get_cam_image(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        target_category: Sequence[Any] | None,
        activations: Any,
        grads: Any,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        """See :meth:`IncumbentHooks.get_cam_image`."""
        return IncumbentHooks.get_cam_image(
            self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth
        )
