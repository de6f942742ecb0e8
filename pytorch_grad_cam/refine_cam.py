"""RefineCAM: one base method over several layers, the deepest map refined by the shallower ones.

The incumbent lists a RefineCAM without a paper to follow; the combination below is this
project's own definition, stated in full so that it can be checked.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.grad_cam_plusplus import GradCAMPlusPlus
from pytorch_grad_cam.utils.image import scale_cam_image as scale_cam_image  # re-exported
from pytorch_grad_cam.utils.maps import resize_maps, scale_to_unit_range
from pytorch_grad_cam.utils.model_targets import Target
from pytorch_grad_cam.utils.reshape_transforms import ReshapeTransform
from pytorch_grad_cam.wrapped_cam import WrappedCAM, check_base_method


class RefineCAM(WrappedCAM):
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
        model, target_layers, reshape_transform: as for every method.
        base_method: the CAM class that computes each layer's map (default
            :class:`~pytorch_grad_cam.grad_cam_plusplus.GradCAMPlusPlus`, as in grad-cam
            1.5.7).
        **kwargs: passed to ``base_method``'s constructor (``batch_size``,
            ``output_selector``, ``tta_transforms``, ...).

    ``cam.base`` is an instance of ``base_method`` whose layer combination is the one
    above (a subclass replacing :meth:`~pytorch_grad_cam.base_cam.BaseCAM.combine_layer_maps`).
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module] | None = None,
        reshape_transform: ReshapeTransform | None = None,
        base_method: type[BaseCAM] = GradCAMPlusPlus,
        **kwargs: Any,
    ) -> None:
        check_base_method(base_method)
        self.base = refining(base_method)(  # type: ignore[arg-type]
            model, target_layers, reshape_transform, **kwargs
        )

    def __call__(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Target] | None = None,
        eigen_smooth: bool = False,
        *,
        aug_smooth: bool = False,
        scale: bool = True,
        as_tensor: bool = False,
    ) -> np.ndarray | torch.Tensor:
        """The refined maps, one per image (the arguments are those of
        :meth:`BaseCAM.__call__ <pytorch_grad_cam.base_cam.BaseCAM.__call__>`)."""
        return self.base(
            input_tensor, targets, aug_smooth, eigen_smooth, scale=scale, as_tensor=as_tensor
        )

    def forward(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Target] | None = None,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        """The maps as a numpy array: ``cam(input_tensor, targets, eigen_smooth)``."""
        return cast(np.ndarray, self(input_tensor, targets, eigen_smooth))


@functools.cache
def refining(base_method: type[BaseCAM]) -> type[BaseCAM]:
    """``base_method`` with its layers' maps combined by :func:`refine_maps`."""

    def combine_layer_maps(
        self: BaseCAM, layer_maps: list[torch.Tensor], size: Sequence[int], scale: bool
    ) -> torch.Tensor:
        refined = refine_maps([resize_maps(layer_map, size) for layer_map in layer_maps])
        return scale_to_unit_range(refined) if scale else refined

    return type(
        f"Refined{base_method.__name__}",
        (base_method,),
        {"combine_layer_maps": combine_layer_maps, "__module__": __name__},
    )


def refine_maps(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """The deepest map times every shallower map scaled to [0, 1]: ``maps`` are same-size
    ``B x *spatial`` maps, shallow to deep, combined from the deepest (coarse) up."""
    refined = maps[-1]
    for shallower in reversed(maps[:-1]):
        refined = refined * scale_to_unit_range(shallower)
    return refined
