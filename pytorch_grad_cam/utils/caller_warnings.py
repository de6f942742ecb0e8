"""Warnings that point at the caller's line, however deep inside the package they arise."""

from __future__ import annotations

import inspect
import os
import warnings

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
