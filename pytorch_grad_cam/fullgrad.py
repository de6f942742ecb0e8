"""FullGrad (Srinivas & Fleuret, NeurIPS 2019, https://arxiv.org/abs/1905.00780)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.cam_call import CamCall, CamOptions
from pytorch_grad_cam.utils.caller_warnings import warn_at_caller
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.maps import resize_maps, scale_to_unit_range
from pytorch_grad_cam.utils.model_state import detached_output, model_in_eval_mode
from pytorch_grad_cam.utils.model_targets import Target
from pytorch_grad_cam.utils.reshape_transforms import ReshapeTransform
from pytorch_grad_cam.utils.validation import check_cam_input as check_input
from pytorch_grad_cam.utils.validation import check_targets

if TYPE_CHECKING:
    from typing_extensions import Unpack

#: Upper bound on the elements of one block of upsampled channel maps (64 MiB of float32).
_BLOCK_ELEMENTS = 2**24


@dataclass
class FullGradDecomposition:
    """The full-gradient terms of each image's target score (all detached).

    For a network that is piecewise linear in its input and biases (ReLU, max-pooling,
    linear layers, convolutions, batch norm in eval mode) the terms sum to the score:
    ``scores[b] = input_term[b].sum() + sum_l bias_terms[l][b].sum()`` (completeness).
    """

    #: Each image's target score, shape ``B``.
    scores: torch.Tensor
    #: ``dy/dx * x``, the input's shape.
    input_term: torch.Tensor
    #: Per call of a biased layer: ``dy/dz * b``, ``z`` the layer's output (its shape),
    #: ``b`` the layer's (effective) bias broadcast along ``bias_axes[l]``.
    bias_terms: list[torch.Tensor]
    #: The layer of each bias term.
    bias_layers: list[nn.Module]
    #: The axis of each term along which its bias lies (1 for convolutions and batch norm,
    #: the last for linear layers).
    bias_axes: list[int]

    def total(self) -> torch.Tensor:
        """The sum of every term per image, shape ``B`` (equals ``scores`` when complete)."""
        total = self.input_term.flatten(1).sum(dim=1)
        for term in self.bias_terms:
            total = total + term.flatten(1).sum(dim=1)
        return total


class FullGrad(BaseCAM):
    """Input-gradient and bias-gradient maps of every biased layer, summed.

    With ``y`` the target score, ``x`` the input, and for each call of a layer with a bias
    ``b`` (convolution, linear, batch norm in eval mode with the effective bias
    ``beta - gamma * mu / sqrt(var + eps)``) its output ``z``, the bias-gradient
    ``dy/db (*) b = dy/dz * b`` (``b`` broadcast along the layer's channel axis; summed
    over positions it is ``dy/db_c * b_c``):

    ``map = sum_c psi(dy/dx * x)_c + sum_layers sum_c psi((dy/dz * b)_c)``,

    ``psi(M) = Up(s(|M|))``: absolute value, min-max normalisation per image (``s``, a
    constant map becomes zeros), (bi/tri)linear upsampling to the input's size (in the
    order grad-cam 1.5.7 uses; the paper does not fix it). The input term
    is one ``psi`` over all the input's channels (the paper's ``psi(grad_x f * x)``), then
    summed over them; each bias term is normalised per channel and summed. Bias
    terms without spatial axes (a linear layer after pooling) are constant and contribute
    nothing to the map; bias terms whose layout cannot be matched to the input's
    (token sequences) are left out with a warning. :meth:`decompose` gives the raw terms.

    ``target_layers`` (and ``reshape_transform``) are accepted for a common signature and
    ignored: every ``nn.Conv*d``, ``nn.ConvTranspose*d``, ``nn.Linear`` and running-stats
    ``nn.BatchNorm*d`` module with a bias is used (biases applied by functional calls are
    not seen). ``eigen_smooth`` has no effect. Hooks exist only during a call; parameter
    ``.grad`` fields are never touched.
    """

    supports_extra_inputs = False  # its forward pass records every biased layer
    uses_target_layers = False  # every biased layer is used

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module] | None = None,
        reshape_transform: ReshapeTransform | None = None,
        **options: Unpack[CamOptions],
    ) -> None:
        options.pop("target_layer", None)  # ignored, as target_layers is
        super().__init__(model, None, None, **options)
        self._warned_layout = False

    def get_bias_data(self, layer: nn.Module) -> torch.Tensor | None:
        """The bias ``layer`` adds to its output (batch norm: ``beta - gamma mu /
        sqrt(var + eps)``), detached; ``None`` for a layer without one."""
        found = _bias_of(layer)
        return None if found is None else found[0].detach()

    def compute_cam_per_layer(
        self,
        input_tensor: torch.Tensor,
        target_category: Sequence[Target] | None,
        eigen_smooth: bool,
    ) -> list[np.ndarray]:
        """The map's terms, each ``B x 1 x H x W`` numpy: the input-gradient term, then one
        per biased layer call (its channels' ``psi`` summed); their sum is the map."""
        input_tensor = check_input(input_tensor, self.model)
        if target_category is not None:
            target_category = check_targets(target_category, input_tensor.shape[0])
        with model_in_eval_mode(self.model):
            terms = self._decompose(input_tensor, target_category)
            size = input_tensor.shape[2:]
            return [term[:, None].cpu().numpy() for term in self._term_maps(terms, size)]

    def aggregate_multi_layers(self, cam_per_target_layer: Sequence[Any]) -> np.ndarray:
        """The terms (each ``B x 1 x H x W``) summed, rectified and scaled to [0, 1]."""
        stacked = np.concatenate([np.asarray(m, dtype=np.float32) for m in cam_per_target_layer], 1)
        return scale_cam_image(np.maximum(stacked, 0).sum(axis=1))

    # ----------------------------------------------------------------- the raw terms
    def decompose(
        self, input_tensor: torch.Tensor, targets: Sequence[Target] | None = None
    ) -> FullGradDecomposition:
        """The full-gradient terms of each image's target score (``targets=None``: each
        image's top class), computed in eval mode with the model left as found."""
        input_tensor = check_input(input_tensor, self.model)
        if targets is not None:
            targets = check_targets(targets, input_tensor.shape[0])
        with model_in_eval_mode(self.model):
            return self._decompose(input_tensor, targets)

    def _decompose(
        self, input_tensor: torch.Tensor, targets: Sequence[Target] | None
    ) -> FullGradDecomposition:
        x = input_tensor.detach().requires_grad_(True)
        # Autograd stays on up to the gradients' sum: the caller may be inside no_grad().
        with _BiasRecorder(self.model) as recorder, torch.enable_grad():
            output = self.model(x)
            targets = targets if targets is not None else self.default_targets(output)
            scores = self._target_scores(output, targets)
            tensors = [x, *recorder.outputs]
            found: Sequence[torch.Tensor | None] = [None] * len(tensors)
            if scores.requires_grad:
                found = torch.autograd.grad(scores.sum(), tensors, allow_unused=True)
        self.outputs = detached_output(output)
        gradients = [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, found)]
        bias_terms = [
            gradient * _along(bias, axis, gradient.ndim)
            for gradient, bias, axis in zip(gradients[1:], recorder.biases, recorder.axes)
        ]
        return FullGradDecomposition(
            scores=scores.detach(),
            input_term=(gradients[0] * x).detach(),
            bias_terms=[term.detach() for term in bias_terms],
            bias_layers=list(recorder.layers),
            bias_axes=list(recorder.axes),
        )

    # ----------------------------------------------------------------- the map
    def compute_maps(self, call: CamCall) -> torch.Tensor:
        """One pass: the psi-normalised terms summed (and scaled to [0, 1])."""
        input_tensor, scale = call.input_tensor, call.scale
        terms = self._decompose(input_tensor, call.targets)
        size = input_tensor.shape[2:]
        total = input_tensor.new_zeros((input_tensor.shape[0], *size), dtype=torch.float32)
        for term_map in self._term_maps(terms, size):
            total += term_map
        return scale_to_unit_range(total) if scale else total

    def _term_maps(
        self, terms: FullGradDecomposition, size: Sequence[int]
    ) -> Iterator[torch.Tensor]:
        """``B x *size`` maps: the input term's ``psi``, then each bias term's (summed over
        its channels); bias terms that do not fit the input's layout are left out."""
        yield _psi_sum(terms.input_term, size, per_channel=False)
        left_out = []
        for term, axis, layer in zip(terms.bias_terms, terms.bias_axes, terms.bias_layers):
            channels_first = term.movedim(axis % term.ndim, 1)
            if channels_first.ndim - 2 == len(size):
                yield _psi_sum(channels_first, size)
            elif channels_first.ndim > 2:
                left_out.append(type(layer).__name__)
        if left_out and not self._warned_layout:
            self._warned_layout = True
            warn_at_caller(
                f"FullGrad left out the bias terms of {len(left_out)} layer call(s) "
                f"({', '.join(sorted(set(left_out)))}) whose outputs do not have the input's "
                f"{len(size)} spatial axes (token sequences); the map has the input-gradient "
                "term and the other layers' terms.",
                UserWarning,
            )


def _psi_sum(maps: torch.Tensor, size: Sequence[int], per_channel: bool = True) -> torch.Tensor:
    """``sum_c Up(s(|maps_c|))`` over the channels of ``B x C x *spatial`` maps: ``B x *size``.

    Channels are normalised and upsampled a block at a time, so memory stays bounded for
    wide layers. ``per_channel=False`` normalises each image's channels together (few
    channels: the input's).
    """
    if not per_channel:
        normalised = scale_to_unit_range(maps.abs().float())
        return torch.stack(
            [resize_maps(normalised[:, c], size) for c in range(maps.shape[1])], dim=1
        ).sum(dim=1)
    batch, channels = maps.shape[:2]
    block = max(1, _BLOCK_ELEMENTS // (batch * math.prod(size)))
    total = maps.new_zeros((batch, *size), dtype=torch.float32)
    for start in range(0, channels, block):
        chunk = maps[:, start : start + block].abs().float()
        count = chunk.shape[1]
        flat = chunk.reshape(batch * count, *chunk.shape[2:])
        normalised = scale_to_unit_range(flat, in_place=True)  # a fresh tensor
        total += resize_maps(normalised, size).view(batch, count, *size).sum(dim=1)
    return total


def _along(bias: torch.Tensor, axis: int, ndim: int) -> torch.Tensor:
    """``bias`` (a vector) shaped to broadcast along ``axis`` of an ``ndim`` tensor."""
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return bias.reshape(shape)


class _BiasRecorder:
    """Records every call of a biased layer: its output (in the autograd graph), its
    (effective) bias and the bias's axis. Downstream layers get a copy of the output, so
    that in-place operations there cannot change the recorded tensor."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.outputs: list[torch.Tensor] = []
        self.biases: list[torch.Tensor] = []
        self.axes: list[int] = []
        self.layers: list[nn.Module] = []
        self._handles: list[Any] = []

    def __enter__(self) -> _BiasRecorder:
        try:
            for module in self.model.modules():
                if _bias_of(module) is not None:
                    self._handles.append(module.register_forward_hook(self._hook))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        found = _bias_of(module)
        if not isinstance(output, torch.Tensor) or found is None:
            return None
        bias, axis = found
        if not output.requires_grad:  # the layer does not depend on the input
            output = output.detach().requires_grad_(True)
        self.outputs.append(output)
        self.biases.append(bias.detach())
        self.axes.append(axis)
        self.layers.append(module)
        return output.clone()


#: The layers whose bias FullGrad reads (their lazy variants are subclasses).
CONVOLUTIONS = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _bias_of(module: nn.Module) -> tuple[torch.Tensor, int] | None:
    """The bias a layer adds to its output and the output axis it lies along, or ``None``.

    Batch norm (eval mode, running statistics) computes ``gamma (x - mu) / sqrt(var + eps)
    + beta``: its effective bias is ``beta - gamma mu / sqrt(var + eps)``.
    """
    if isinstance(module, CONVOLUTIONS):
        return None if module.bias is None else (module.bias, 1)
    if isinstance(module, nn.Linear):
        return None if module.bias is None else (module.bias, -1)
    if isinstance(module, BATCH_NORMS):
        if module.training or module.running_mean is None or module.running_var is None:
            return None  # normalised with the batch's statistics: no fixed bias
        scale = torch.rsqrt(module.running_var + module.eps)
        if module.weight is not None:
            scale = scale * module.weight
        bias = -module.running_mean * scale
        if module.bias is not None:
            bias = bias + module.bias
        return bias, 1
    return None
