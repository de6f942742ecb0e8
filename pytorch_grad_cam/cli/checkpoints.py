"""Loading a user's checkpoint (``--weights``) into a model, strictly.

A checkpoint is a ``state_dict``, or a training checkpoint with a ``state_dict`` /
``model`` / ``model_state_dict`` entry; ``DataParallel``'s ``module.`` prefixes are
dropped, and a checkpoint with another number of classes replaces the model's last
linear layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pytorch_grad_cam.cli.errors import CommandLineError

#: The entries of a training checkpoint that hold the model's ``state_dict``.
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")
#: How many keys a mismatch message names per kind.
SHOWN_KEYS = 3


def load_weights(model: nn.Module, path: str) -> nn.Module:
    """Load the checkpoint at ``path`` into ``model`` (strict), adapting the last linear
    layer to the checkpoint's number of classes.

    Returns:
        ``model``, with the checkpoint's weights.

    Raises:
        CommandLineError: about ``--weights``: no such file, not a checkpoint, or one
            that does not fit the model.
    """
    file = Path(path)
    if not file.is_file():
        raise CommandLineError("no such file", "--weights", path)
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same line
        raise CommandLineError(
            f"not a checkpoint torch.load(weights_only=True) can read "
            f"({type(error).__name__}); save model.state_dict() instead",
            "--weights",
            path,
        ) from error
    state_dict = _state_dict_of(checkpoint, path)
    _fit_classifier(model, state_dict)
    problems = _mismatches(model, state_dict)
    if problems:
        raise CommandLineError(
            f"does not fit {type(model).__name__}: {problems}; "
            "is --model the architecture it was trained with?",
            "--weights",
            path,
        )
    model.load_state_dict(state_dict)
    return model


def _state_dict_of(checkpoint: Any, path: str) -> dict[str, torch.Tensor]:
    for key in STATE_DICT_KEYS:
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    if not isinstance(checkpoint, dict) or not all(
        isinstance(value, torch.Tensor) for value in checkpoint.values()
    ):
        raise CommandLineError(
            "not a state_dict (a dict of tensors, or a dict with a 'state_dict' or 'model' entry)",
            "--weights",
            path,
        )
    if checkpoint and all(key.startswith("module.") for key in checkpoint):
        checkpoint = {key[len("module.") :]: value for key, value in checkpoint.items()}
    return checkpoint


def _fit_classifier(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Replace the model's last ``nn.Linear`` when the checkpoint has another class count."""
    linears = [
        (name, module) for name, module in model.named_modules() if type(module) is nn.Linear
    ]
    if not linears:
        return
    name, linear = linears[-1]
    weight = state_dict.get(f"{name}.weight")
    if weight is None or weight.ndim != 2 or weight.shape[1] != linear.in_features:
        return
    if weight.shape[0] != linear.out_features:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        replacement = nn.Linear(linear.in_features, weight.shape[0], bias=linear.bias is not None)
        setattr(parent, child_name, replacement)


def _mismatches(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> str:
    """The checkpoint's missing, unexpected and other-shaped keys, for a message."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    shapes = [
        f"{key} {tuple(state_dict[key].shape)} vs {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state_dict and state_dict[key].shape != value.shape
    ]
    parts = [
        f"{len(keys)} {label} ({', '.join(keys[:SHOWN_KEYS])}"
        f"{', ...' if len(keys) > SHOWN_KEYS else ''})"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("keys of another shape", shapes),
        )
        if keys
    ]
    return "; ".join(parts)
