"""Warnings that point at the caller's line, however deep inside the package they arise."""

from __future__ import annotations

import inspect
import os
import warnings
from typing import Any

#: The package's folder: frames inside it are skipped when looking for the caller.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def warn_at_caller(message: str, category: type[Warning]) -> None:
    """Warn at the first frame outside this package, however deep the call."""
    frame, level = inspect.currentframe(), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(
        _PACKAGE_DIR + os.sep
    ):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def warn_deprecated(message: str) -> None:
    """A ``DeprecationWarning`` at the caller's line: an old spelling that still works."""
    warn_at_caller(message, DeprecationWarning)


def deprecated_constructor_spellings(
    reshape_transform: Any, target_layers: Any, target_layer: Any, use_cuda: Any
) -> tuple[Any, Any]:
    """The seeds' constructor spellings, with a warning naming the new one: the
    positional ``GradCAM(model, target_layer, use_cuda)`` (a bool in the place of
    ``reshape_transform``), ``use_cuda=`` and ``target_layer=module``. Returns the
    ``reshape_transform`` and ``target_layers`` to use."""
    if isinstance(reshape_transform, bool):
        use_cuda, reshape_transform = reshape_transform, None
    if use_cuda is not None:
        warn_deprecated(
            "use_cuda= is no longer needed: the CAM runs on the device of the model's "
            "parameters; move the model with model.to('cuda') instead."
        )
    if target_layer is not None:
        if target_layers is not None:
            raise TypeError("Pass target_layers=[...] or target_layer=..., not both.")
        warn_deprecated("target_layer=module is deprecated; use target_layers=[module].")
        target_layers = [target_layer]
    return reshape_transform, target_layers
