"""``OUT/manifest.json``: what made a store, so that a resumed run cannot mix in another.

The manifest has two parts. ``job`` says what is being computed: the library version,
the method and its arguments, the model's name and a SHA-256 of its weights, the target
layers, the targets, the preprocessing, the map type, the metrics, and a hash of the
sample ids. A run on an existing store must ask for the same ``job``, or it stops with
a ``StoreMismatchError`` naming what differs. ``layout`` says how the store is laid out
(sample count, rows per chunk, map size, the model's class count); it is fixed when the
store is created.
"""

from __future__ import annotations

import hashlib
import inspect
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

import pytorch_grad_cam

#: The manifest's format; a store of another format is not resumed.
FORMAT = "gradcam-dataset-store/1"


class StoreMismatchError(ValueError):
    """The output folder holds a store made by another job (method, model, inputs...)."""


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over the model's state dict: each entry's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if not isinstance(tensor, torch.Tensor):
            continue
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{data.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def layer_names(model: nn.Module, layers: Sequence[nn.Module]) -> list[str]:
    """The dotted path of each of ``layers`` in ``model``; a layer outside it is an error."""
    names = {id(module): name for name, module in model.named_modules()}
    paths = []
    for index, layer in enumerate(layers):
        if id(layer) not in names:
            raise ValueError(
                f"target_layers[{index}] ({type(layer).__name__}) is not a submodule of the "
                "model; pass layers of the model given, e.g. [model.layer4[-1]]"
            )
        paths.append(names[id(layer)] or ".")
    return paths


def describe(value: Any) -> Any:
    """``value`` as JSON that is the same in every run: numbers, strings, lists and dicts
    as they are; classes and functions by qualified name; tensors by shape and a hash;
    other objects by their class and their public attributes."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Number):
        return value if isinstance(value, (int, float)) else float(value)  # type: ignore[arg-type]
    if isinstance(value, Mapping):
        return {str(key): describe(item) for key, item in sorted(value.items(), key=str)}
    if isinstance(value, (list, tuple)):
        return [describe(item) for item in value]
    if isinstance(value, torch.Tensor):
        data = value.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        sha = hashlib.sha256(data.numpy().tobytes()).hexdigest()[:16]
        return f"tensor {list(value.shape)} {value.dtype} sha256:{sha}"
    return describe_object(value)


def describe_object(value: Any) -> Any:
    """A class or function by qualified name; another object by its class and its public
    attributes (described in turn)."""
    if inspect.isclass(value) or inspect.isroutine(value):
        return f"{value.__module__}.{value.__qualname__}"
    attributes = (
        {key: describe(item) for key, item in vars(value).items() if not key.startswith("_")}
        if hasattr(value, "__dict__")
        else {}
    )
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    return {"class": kind, **attributes} if attributes else kind


def job_description(
    *,
    method: type,
    method_kwargs: Mapping[str, Any],
    model: nn.Module,
    model_name: str | None,
    layers: Sequence[str],
    targets: Any,
    preprocessing: Mapping[str, Any],
    dtype: str,
    metrics: Sequence[str],
    metric_steps: int,
    smoothing: Mapping[str, bool],
    ids_digest: str,
) -> dict[str, Any]:
    """The manifest's ``job`` part (see the module's docstring)."""
    return {
        "library": "gradcam",
        "library_version": pytorch_grad_cam.__version__,
        "method": method.__name__,
        "method_kwargs": describe(dict(method_kwargs)),
        "model": model_name or type(model).__name__,
        "weights_sha256": weights_digest(model),
        "layers": list(layers),
        "targets": targets,
        "preprocessing": describe(dict(preprocessing)),
        "dtype": dtype,
        "metrics": {"names": list(metrics), "steps": metric_steps} if metrics else None,
        "smoothing": dict(smoothing),
        "ids_sha256": ids_digest,
    }


def ids_digest(ids: Sequence[str]) -> str:
    """SHA-256 of the sample ids in row order."""
    digest = hashlib.sha256()
    for sample_id in ids:
        digest.update(sample_id.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()


def check_same_job(stored: Mapping[str, Any], wanted: Mapping[str, Any], where: str) -> None:
    """Raise ``StoreMismatchError`` when ``stored`` (a manifest's ``job``) differs from
    ``wanted``, naming each difference."""
    differences = []
    for key in sorted(set(stored) | set(wanted)):
        there, now = stored.get(key), wanted.get(key)
        if there == now:
            continue
        if key.endswith("sha256"):  # a hash says only that they differ
            differences.append(f"{key[: -len('_sha256')]} differ")
        else:
            differences.append(f"{key}: {_short(there)} there, {_short(now)} now")
    if differences:
        raise StoreMismatchError(
            f"{where} holds a store made by another job ({'; '.join(differences)}); "
            "resuming would mix the two"
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
