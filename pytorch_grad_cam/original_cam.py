"""CAM, the original Class Activation Map (Zhou et al., CVPR 2016, "Learning Deep Features
for Discriminative Localization", https://arxiv.org/abs/1512.04150)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.cam_call import CamOptions, LayerContext
from pytorch_grad_cam.utils.caller_warnings import warn_at_caller
from pytorch_grad_cam.utils.maps import spatial_axes
from pytorch_grad_cam.utils.model_outputs import select_output
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.reshape_transforms import ReshapeTransform

if TYPE_CHECKING:
    from typing_extensions import Unpack


class CAM(BaseCAM):
    """The classifier's own weights for the target class.

    For a network that ends in global average pooling and one linear layer,
    ``y_c = sum_k w_ck mean_xy A^k_xy + b_c``, and the map is
    ``ReLU(sum_k w_ck A^k)``: the score before pooling, per position. No gradients and
    one forward pass. On such a network GradCAM gives the same map (its weights are
    ``w_ck / (H W)``).

    Args:
        fc_layer: the final ``nn.Linear`` (the classifier). ``None`` finds it: the last
            registered ``nn.Linear`` whose ``in_features`` equals the target layer's
            channel count. A warning says when the model's scores are not
            ``fc_layer(GAP(activations))``, for then the map only approximates its
            prediction.

    The other arguments are those of :class:`~pytorch_grad_cam.base_cam.BaseCAM`.
    Targets must be ``ClassifierOutputTarget(category)`` (or ``None``, the top class).
    """

    uses_gradients = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module] | None = None,
        reshape_transform: ReshapeTransform | None = None,
        fc_layer: nn.Linear | None = None,
        **options: Unpack[CamOptions],
    ) -> None:
        super().__init__(
            model,
            target_layers,
            reshape_transform,
            **options,
        )
        if fc_layer is not None and not isinstance(fc_layer, nn.Linear):
            raise TypeError(
                f"fc_layer must be the model's final nn.Linear, got {type(fc_layer).__name__}."
            )
        self.fc_layer = fc_layer
        self._warned_layers: set[int] = set()

    def layer_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, context: LayerContext
    ) -> torch.Tensor:
        """The classifier's weights of each image's class: ``W_ck``."""
        fc = self.fc_layer or _find_classifier(self.model, activations.shape[1])
        _check_classifier(fc, activations.shape[1])
        assert context.targets is not None  # CAM uses targets
        categories = torch.stack(
            [_category(target, index) for index, target in enumerate(context.targets)]
        ).to(fc.weight.device)
        weights = fc.weight.detach().index_select(0, categories.long()).float()  # B x C
        self._check_structure(fc, activations, context.layer_index)
        return weights.view(*weights.shape, *[1] * len(spatial_axes(activations)))

    def _check_structure(self, fc: nn.Linear, activations: torch.Tensor, index: int) -> None:
        """Warn once per layer when the scores are not ``fc(GAP(activations))``."""
        if index in self._warned_layers:
            return
        pooled = activations.mean(dim=spatial_axes(activations))
        with torch.no_grad():
            expected = nn.functional.linear(pooled, fc.weight.float(), _float(fc.bias))
        scores = select_output(self.outputs, self.output_selector).float()
        if scores.shape == expected.shape and torch.allclose(
            scores, expected, rtol=1e-3, atol=1e-3 * float(scores.abs().max())
        ):
            return
        self._warned_layers.add(index)
        warn_at_caller(
            f"CAM: the model's scores are not fc_layer(global average pool of "
            f"target_layers[{index}]): the layer is not followed by pooling and the "
            "classifier alone, so the map only approximates the prediction. Pick the "
            "layer just before the pooling, or use GradCAM.",
            UserWarning,
        )


def _float(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.float()


def _find_classifier(model: nn.Module, channels: int) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m.in_features == channels]
    if not linears:
        raise ValueError(
            f"CAM needs the model to end in global average pooling and an nn.Linear "
            f"classifier over the target layer's {channels} channels, and "
            f"{type(model).__name__} has no nn.Linear with in_features={channels}. Pass "
            "fc_layer=model.<classifier>, pick the layer before the pooling, or use GradCAM, "
            "which needs no such structure."
        )
    return linears[-1]


def _check_classifier(fc: nn.Linear, channels: int) -> None:
    if fc.in_features != channels:
        raise ValueError(
            f"fc_layer has in_features={fc.in_features}, but the target layer has "
            f"{channels} channels; pass the linear layer applied to its pooled output."
        )


def _category(target: object, index: int) -> torch.Tensor:
    if not isinstance(target, ClassifierOutputTarget):
        raise TypeError(
            f"targets[{index}] is a {type(target).__name__}; CAM weights a class by the "
            "classifier's weights, so it takes ClassifierOutputTarget(category) targets "
            "(or targets=None for the top class)."
        )
    return torch.as_tensor(target.category)
