"""One CAM call's state, passed down the pipeline instead of parked on the CAM object.

:class:`CamCall` is built once by ``BaseCAM.__call__`` from what the caller asked for;
every step of the pipeline reads it. :class:`LayerContext` is what a method sees of the
call when it weights one target layer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypedDict

import torch
import ttach
from torch import nn

from pytorch_grad_cam.utils.model_outputs import OutputSelector
from pytorch_grad_cam.utils.model_tail import repeat_rows
from pytorch_grad_cam.utils.model_targets import Target
from pytorch_grad_cam.utils.reshape_transforms import ReshapeTransform


class CamOptions(TypedDict, total=False):
    """The keyword-only options every method takes besides its own (``**options``)."""

    tta_transforms: ttach.Compose | None
    output_selector: OutputSelector
    target_layer: nn.Module | None
    use_cuda: bool | None


@dataclass(frozen=True)
class ModelInputs:
    """What a model with several inputs takes besides the image, for one call."""

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    #: The call's number of images: a tensor with this many rows has one per image.
    batch_size: int = 0

    @property
    def given(self) -> bool:
        """Whether the call passed ``extra_inputs`` or ``model_kwargs``."""
        return bool(self.args or self.kwargs)

    def for_rows(self, rows: Sequence[int] | None) -> tuple[tuple, dict]:
        """The inputs for a batch whose row ``r`` comes from image ``rows[r]``."""
        if rows is None or not self.given:
            return self.args, self.kwargs

        def follow(value: Any) -> Any:
            per_image = isinstance(value, torch.Tensor) and value.ndim > 0
            if per_image and value.shape[0] == self.batch_size:
                return repeat_rows(value, list(rows))
            return value

        return tuple(map(follow, self.args)), {k: follow(v) for k, v in self.kwargs.items()}


@dataclass
class CamCall:
    """One call: the checked input, the targets and the flags.

    ``method_state`` holds what a method computes once per pass and reads later in that
    pass (AblationCAM's recorded values, SmoothGradCAM++'s noisy moments); it is dropped
    with the call, so nothing of it outlives the call.
    """

    model: nn.Module
    input_tensor: torch.Tensor
    #: One target per image, or ``None`` for each image's top class (resolved per pass).
    targets: list[Target] | None
    eigen_smooth: bool = False
    scale: bool = True
    #: Whether the maps keep the autograd graph (``create_graph=True`` or ``detach=False``).
    keep_graph: bool = False
    model_inputs: ModelInputs = field(default_factory=ModelInputs)
    method_state: dict[str, Any] = field(default_factory=dict)

    def run_model(self, batch: torch.Tensor, rows: Sequence[int] | None = None) -> Any:
        """The model on ``batch`` with the call's ``extra_inputs`` / ``model_kwargs``; row
        ``r`` of ``batch`` comes from image ``rows[r]`` (``None``: the images as given)."""
        args, kwargs = self.model_inputs.for_rows(rows)
        return self.model(batch, *args, **kwargs)

    def for_pass(self, input_tensor: torch.Tensor, targets: list[Target] | None) -> CamCall:
        """The same call on another input (an augmented copy), with fresh method state."""
        return dataclasses.replace(
            self, input_tensor=input_tensor, targets=targets, method_state={}
        )


@dataclass
class LayerContext:
    """What a method may use to weight one target layer, besides activations and gradients.

    Perturbation methods (AblationCAM, ScoreCAM) re-run the model with
    :meth:`run_model`.
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
    #: The call this layer belongs to (``None`` outside a call, for the incumbent's
    #: numpy hooks called by hand).
    call: CamCall | None = None

    def run_model(self, batch: torch.Tensor, rows: Sequence[int] | None = None) -> Any:
        """The model on ``batch``, with the call's extra inputs following ``rows``."""
        if self.call is None:
            return self.model(batch)
        return self.call.run_model(batch, rows)


class ForwardPass(NamedTuple):
    """What one forward (and backward) pass recorded."""

    #: Each target layer's output: a tensor or a mapping of tensors (detached unless the
    #: call keeps the graph).
    layer_outputs: list[Any]
    #: Each layer's gradient of the targets' scores (``None`` for gradient-free methods).
    gradients: list[Any]
    #: The targets, ``targets=None`` resolved to each image's top class.
    targets: list[Target] | None
    #: Each image's target score, detached (``None`` for class-agnostic methods).
    scores: torch.Tensor | None
    #: The input as the model saw it (with ``compute_input_gradient``, the leaf whose
    #: ``.grad`` holds the input's gradient).
    input_tensor: torch.Tensor
