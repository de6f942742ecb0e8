"""Finding the scores tensor in whatever a model's forward returns.

Models return a plain tensor, a tuple (``(logits, aux)``), a dict
(``{"out": ...}`` for torchvision segmentation models) or a Hugging Face
``ModelOutput``. The CAM classes need the tensor the targets score; this module
finds it, or uses the ``output_selector`` the user passed to the CAM constructor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Union

import torch

OutputSelector = Union[None, str, int, Callable[[Any], torch.Tensor]]

_PREFERRED_KEYS = ("logits", "out")


def select_output(output: Any, selector: OutputSelector = None) -> torch.Tensor:
    """Return the scores tensor of a model's ``output``.

    ``selector`` names it: a string is a dict key or an attribute (``"logits"``),
    an int a tuple index, a callable maps the whole output to the tensor. With
    ``selector=None`` the rule is: a tensor is itself; an object with a
    ``.logits`` tensor (Hugging Face ``ModelOutput``) gives it; a mapping gives
    its ``"logits"`` or ``"out"`` entry, or its only tensor; a tuple or list gives
    its first tensor.
    """
    selected = _apply_selector(output, selector) if selector is not None else _find_scores(output)
    if not isinstance(selected, torch.Tensor):
        raise TypeError(
            f"output_selector={selector!r} picked a {type(selected).__name__} from the model's "
            "output, not a tensor; pass output_selector= a key, attribute, index or callable "
            "that returns the scores tensor."
        )
    return selected


def _apply_selector(output: Any, selector: OutputSelector) -> Any:
    if callable(selector):
        return selector(output)
    if isinstance(selector, str):
        if isinstance(output, Mapping) and selector in output:
            return output[selector]
        if hasattr(output, selector):
            return getattr(output, selector)
        raise ValueError(
            f"output_selector={selector!r}: the model's output ({type(output).__name__}) has no "
            f"key or attribute {selector!r}; {_describe(output)}"
        )
    if isinstance(selector, int) and isinstance(output, (tuple, list)):
        return output[selector]
    if isinstance(selector, int) and hasattr(output, "to_tuple"):  # Hugging Face ModelOutput
        return output.to_tuple()[selector]
    raise TypeError(
        f"output_selector={selector!r} does not fit a model output of type "
        f"{type(output).__name__}: use a str (key or attribute), an int (tuple index) or a "
        "callable."
    )


def _find_scores(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Mapping):
        for key in _PREFERRED_KEYS:
            if isinstance(output.get(key), torch.Tensor):
                return output[key]
        tensors = [value for value in output.values() if isinstance(value, torch.Tensor)]
        if len(tensors) == 1:
            return tensors[0]
    elif isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    raise TypeError(
        f"Cannot tell which part of the model's output ({type(output).__name__}) holds the "
        f"scores; {_describe(output)}. Pass output_selector= to the CAM constructor: a key or "
        "attribute name, a tuple index, or a callable returning the scores tensor."
    )


def _describe(output: Any) -> str:
    if isinstance(output, Mapping):
        return f"its keys are {list(output.keys())}"
    if isinstance(output, (tuple, list)):
        kinds = [type(item).__name__ for item in output]
        return f"it is a {type(output).__name__} of {kinds}"
    return f"it is a {type(output).__name__}"
