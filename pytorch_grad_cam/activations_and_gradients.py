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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


class LayerRecorder:
    """Context manager that records the output of each layer in ``layers``.

    After the forward pass, ``outputs[i]`` is the last output of ``layers[i]`` (or
    ``None`` if the forward pass never reached it). With ``track_gradients`` each
    recorded tensor is part of an autograd graph that leads to the model output.
    """

    def __init__(self, layers: Sequence[nn.Module], track_gradients: bool):
        self.layers = list(layers)
        self.track_gradients = track_gradients
        self.outputs: list[torch.Tensor | None] = [None] * len(self.layers)
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
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _make_hook(self, index: int):
        def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
            tensor, rebuild = split_first_tensor(output)
            if tensor is None:
                raise TypeError(
                    f"target_layers[{index}] ({type(module).__name__}) returned "
                    f"{type(output).__name__}, which holds no tensor to explain; pick a layer "
                    "that outputs a tensor."
                )
            if not self.track_gradients:
                self.outputs[index] = tensor.detach()
                return rebuild(tensor.clone())
            torch.set_grad_enabled(True)
            if not tensor.requires_grad:
                tensor = tensor.detach().requires_grad_(True)
            self.outputs[index] = tensor
            return rebuild(tensor.clone())

        return hook


def split_first_tensor(output: Any):
    """Return (the output's tensor, a function that puts a replacement back in its place)."""
    if isinstance(output, torch.Tensor):
        return output, lambda replacement: replacement
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        rest = list(output[1:])
        container = type(output) if isinstance(output, list) else tuple
        return output[0], lambda replacement: container([replacement, *rest])
    return None, None
