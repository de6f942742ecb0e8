"""RefineCAM: one base method over several layers, the deepest map refined by the shallower ones.

The incumbent lists a RefineCAM without a paper to follow; the combination below is this
project's own definition, stated in full so that it can be checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import ttach
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM, LayerContext, ReshapeTransform, Target
from pytorch_grad_cam.grad_cam import GradCAM
from pytorch_grad_cam.utils.maps import resize_maps, scale_to_unit_range
from pytorch_grad_cam.utils.model_outputs import OutputSelector


class RefineCAM(BaseCAM):
    """Coarse-to-fine: the deepest layer's map, gated by each shallower layer's map.

    ``target_layers`` run from shallow to deep. With ``M_l`` the base method's map of
    layer ``l`` (after its ReLU, before scaling), ``U_l`` it resized to the input's size
    (bilinear), and ``s`` the per-image min-max scaling to [0, 1] (a constant map gives
    0), for ``L`` layers:

    ``R_L = U_L``;  ``R_l = R_(l+1) * s(U_l)`` for ``l = L-1, ..., 1``, i.e.
    ``R = U_L * prod_(l<L) s(U_l)`` (element-wise);  the result is ``s(R)``
    (``R`` with ``scale=False``).

    The deep map decides what is explained; each shallower, higher-resolution map keeps
    it only where that layer agrees, sharpening its boundaries. Only the deepest map keeps
    its own scale, so the layers' order matters for ``scale=False`` alone. With one layer
    the result is the base method's. Every layer comes from the same forward (and
    backward) pass; ``aug_smooth`` refines each augmentation's maps, then averages.

    Args:
        base_method: the ``BaseCAM`` subclass that computes each layer's map (default
            :class:`~pytorch_grad_cam.grad_cam.GradCAM`).
        **base_kwargs: passed to ``base_method``'s constructor (e.g. ``batch_size``).

    The other arguments are those of :class:`~pytorch_grad_cam.base_cam.BaseCAM`.
    """

    supports_extra_inputs = False  # the base method runs the model

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module] | None = None,
        reshape_transform: ReshapeTransform | None = None,
        tta_transforms: ttach.Compose | None = None,
        output_selector: OutputSelector = None,
        base_method: type[BaseCAM] = GradCAM,
        *,
        target_layer: nn.Module | None = None,
        use_cuda: bool | None = None,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(
            model,
            target_layers,
            reshape_transform,
            tta_transforms,
            output_selector,
            target_layer=target_layer,
            use_cuda=use_cuda,
        )
        if not (isinstance(base_method, type) and issubclass(base_method, BaseCAM)):
            raise TypeError(
                f"base_method must be a CAM class (a BaseCAM subclass such as GradCAM), got "
                f"{base_method!r}; pass the class itself, not an instance."
            )
        if issubclass(base_method, RefineCAM) or base_method.__call__ is not BaseCAM.__call__:
            raise TypeError(
                f"base_method={base_method.__name__} wraps another method itself; RefineCAM "
                "needs a method that maps one layer, such as GradCAM (to combine the two, "
                f"wrap RefineCAM in {base_method.__name__} instead)."
            )
        self.base = base_method(
            model,
            target_layers=self.target_layers,
            reshape_transform=self.reshape_transform,
            tta_transforms=self.tta_transforms,
            output_selector=output_selector,
            **base_kwargs,
        )
        self.uses_gradients = self.base.uses_gradients
        self.uses_targets = self.base.uses_targets
        self.uses_principal_component = self.base.uses_principal_component

    # The method's part is the base method's; only the combination of the layers differs.
    def get_cam_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, context: LayerContext
    ) -> torch.Tensor:
        return self.base.get_cam_weights(activations, gradients, context)

    def weighted_activations(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, context: LayerContext
    ) -> torch.Tensor:
        return self.base.weighted_activations(activations, gradients, context)

    def _forward(
        self, input_tensor: torch.Tensor, targets: Sequence[Target] | None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor | None], list[Target] | None, Any]:
        result = self.base._forward(input_tensor, targets)
        self.outputs = self.base.outputs
        return result

    def _layer_map(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor | None,
        eigen_smooth: bool,
        context: LayerContext,
    ) -> torch.Tensor:
        return self.base._layer_map(activations, gradients, eigen_smooth, context)

    def _combine_layer_maps(
        self, layer_maps: list[torch.Tensor], size: Sequence[int], scale: bool
    ) -> torch.Tensor:
        refined = refine_maps([resize_maps(layer_map, size) for layer_map in layer_maps])
        return scale_to_unit_range(refined) if scale else refined

    def close(self) -> None:
        self.base.close()
        super().close()


def refine_maps(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """The deepest map times every shallower map scaled to [0, 1]: ``maps`` are same-size
    ``B x *spatial`` maps, shallow to deep, combined from the deepest (coarse) up."""
    refined = maps[-1]
    for shallower in reversed(maps[:-1]):
        refined = refined * scale_to_unit_range(shallower)
    return refined
