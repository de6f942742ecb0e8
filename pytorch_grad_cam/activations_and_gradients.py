"""Recording the target layers' outputs during one forward pass.

The hooks exist only inside a ``with LayerRecorder(...)`` block, so nothing is left
on the user's model between calls, after ``close()``, or after an exception.

When gradients are wanted, the forward pass starts with autograd off and each
target layer's hook turns it on: the gradient of the score with respect to a
layer's output only flows through what is computed after that output exists, so
the part of the network before the first target layer needs no graph. The hook
always hands the rest of the network a copy of the output, so that an in-place
operation downstream (DenseNet's ``F.relu(features, inplace=True)``) cannot overwrite
the recorded activations or their place in the graph.

A layer may also output a mapping of tensors (torchvision's FPN backbone returns an
``OrderedDict`` of pyramid levels): it is recorded whole, each tensor as a single
tensor would be, and the ``reshape_transform`` combines the tensors into one
``B x C x H x W`` activation (``fasterrcnn_reshape_transform``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

import torch
from torch import nn


class LayerRecorder:
    """Context manager that records the output of each layer in ``layers``.

    After the forward pass, ``outputs[i]`` is the last output of ``layers[i]`` (a tensor,
    or a mapping of tensors; ``None`` if the forward pass never reached it). With
    ``track_gradients`` each recorded tensor is part of an autograd graph that leads to
    the model output.
    """

    def __init__(self, layers: Sequence[nn.Module], track_gradients: bool) -> None:
        self.layers = list(layers)
        self.track_gradients = track_gradients
        self.outputs: list[Any] = [None] * len(self.layers)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> LayerRecorder:
        try:
            for index, layer in enumerate(self.layers):
                self._handles.append(layer.register_forward_hook(self._make_hook(index)))
        except BaseException:
            self.remove_hooks()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.remove_hooks()

    def remove_hooks(self) -> None:
        """Remove every hook (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _make_hook(self, index: int) -> Callable[[nn.Module, Any, Any], Any]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
            if is_tensor_mapping(output):  # recorded whole
                value, rebuild = output, lambda replacement: replacement
            else:
                value, rebuild = split_first_tensor(output)
            if value is None:
                raise TypeError(
                    f"target_layers[{index}] ({type(module).__name__}) returned "
                    f"{type(output).__name__}, which holds no tensor to explain; pick a layer "
                    "that outputs a tensor (or a mapping of tensors)."
                )
            if self.track_gradients:
                torch.set_grad_enabled(True)
            recorded = map_tensors(self._recordable, value)
            self.outputs[index] = recorded
            return rebuild(map_tensors(torch.clone, recorded))

        return hook

    def _recordable(self, tensor: torch.Tensor) -> torch.Tensor:
        """Detached without gradients; with them, a tensor whose gradient can be taken."""
        if not self.track_gradients:
            return tensor.detach()
        if not tensor.requires_grad:
            return tensor.detach().requires_grad_(True)
        return tensor


def split_first_tensor(output: Any) -> tuple[Any, Any]:
    """Return (the output's tensor, a function that puts a replacement back in its place)."""
    if isinstance(output, torch.Tensor):
        return output, lambda replacement: replacement
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        rest = list(output[1:])
        container = type(output) if isinstance(output, list) else tuple
        return output[0], lambda replacement: container([replacement, *rest])
    return None, None


def is_tensor_mapping(value: Any) -> bool:
    """Whether ``value`` is a non-empty mutable mapping (a dict, an OrderedDict) whose
    values are all tensors."""
    return (
        isinstance(value, MutableMapping)
        and len(value) > 0
        and all(isinstance(item, torch.Tensor) for item in value.values())
    )


def map_tensors(function: Callable[[torch.Tensor], torch.Tensor], value: Any) -> Any:
    """``function`` applied to a tensor, or to every tensor of a mapping (a shallow copy,
    so the mapping's type is kept)."""
    if not is_tensor_mapping(value):
        return function(value)
    mapped = copy.copy(value)
    for key, tensor in value.items():
        mapped[key] = function(tensor)
    return mapped


def check_reached(outputs: list[Any], layers: Sequence[nn.Module]) -> list[Any]:
    """Every target layer's recorded output, or an error naming the layer never reached."""
    for index, (output, layer) in enumerate(zip(outputs, layers)):
        if output is None:
            raise ValueError(
                f"target_layers[{index}] ({type(layer).__name__}) was never reached by the "
                "forward pass, so it has no activations; pick a layer that the model's "
                "forward() actually calls."
            )
    return outputs


class ActivationsAndGradients:
    """The incumbent's recorder: run the model, keep each target layer's activations and,
    after a backward pass, their gradients.

    ``activations[i]`` is the output of ``target_layers[i]`` in the last call (after
    ``reshape_transform``), ``gradients[i]`` its gradient once ``backward()`` has run
    through it; both detached and on the CPU with ``detach=True`` (the default), with
    their graph and on the device otherwise. The hooks are registered when the object is
    made and stay until :meth:`release` (or the end of a ``with`` block): a tool for code
    written against grad-cam 1.5.7. The package's methods record with
    :class:`LayerRecorder`, whose hooks exist only during a call.

    Args:
        model: the model to run.
        target_layers: the modules to record.
        reshape_transform: applied to each activation and gradient, or ``None``.
        detach: detach and move to the CPU what is recorded.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module],
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None,
        detach: bool = True,
    ) -> None:
        self.model = model
        self.target_layers = list(target_layers)
        self.reshape_transform = reshape_transform
        self.detach = detach
        self.activations: list[Any] = []
        self.gradients: list[Any] = []
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        try:
            for layer in self.target_layers:
                self.handles.append(layer.register_forward_hook(self.save_activation))
                self.handles.append(layer.register_forward_hook(self.save_gradient))
        except BaseException:
            self.release()
            raise

    def save_activation(self, module: nn.Module, input: Any, output: Any) -> None:
        """Forward hook: keep ``output`` (reshaped, detached with ``detach``)."""
        self.activations.append(self._kept(_first_tensor(module, output)))

    def save_gradient(self, module: nn.Module, input: Any, output: Any) -> None:
        """Forward hook: have ``output``'s gradient kept when backward reaches it."""
        tensor = _first_tensor(module, output)
        if not isinstance(tensor, torch.Tensor) or not tensor.requires_grad:
            return  # no gradient will flow to it

        def store(gradient: torch.Tensor) -> None:
            # Backward visits the layers in reverse: prepending keeps forward order.
            self.gradients = [self._kept(gradient), *self.gradients]

        tensor.register_hook(store)

    def _kept(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.reshape_transform is not None:
            tensor = self.reshape_transform(tensor)
        return tensor.detach().cpu() if self.detach else tensor

    def __call__(self, x: torch.Tensor) -> Any:
        """Run ``model(x)`` with fresh lists; returns the model's output."""
        self.clear()
        return self.model(x)

    def clear(self) -> None:
        """Forget what was recorded."""
        self.activations = []
        self.gradients = []

    def release(self) -> None:
        """Remove the hooks (idempotent)."""
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def __enter__(self) -> ActivationsAndGradients:
        """The recorder itself; leaving the block releases the hooks."""
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, exc_tb: Any) -> None:
        """Release the hooks; never swallow an exception."""
        self.release()  # returns None: an exception is never swallowed


def _first_tensor(module: nn.Module, output: Any) -> Any:
    tensor, _ = split_first_tensor(output)
    if tensor is None:
        if is_tensor_mapping(output):
            return output
        raise TypeError(
            f"{type(module).__name__} returned {type(output).__name__}, which holds no tensor "
            "to record; pick a layer that outputs a tensor."
        )
    return tensor
