"""Checking a metric's arguments: every error names the metric and the argument."""

from __future__ import annotations

import functools
import numbers
from typing import Any, Callable, TypeVar

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.utils.model_targets import Target
from pytorch_grad_cam.utils.validation import check_input_tensor as validated_input
from pytorch_grad_cam.utils.validation import check_targets, is_positive_int

Method = TypeVar("Method", bound=Callable[..., Any])


def also_accepts(alias: str, name: str) -> Callable[[Method], Method]:
    """Let a metric's ``__call__`` take its ``name`` argument by the keyword ``alias`` too.

    grad-cam 1.5.7 calls the maps ``cams=`` in its confidence and ROAD metrics and
    ``grayscale_cams=`` in ``metrics.arcc``; every metric here accepts both spellings,
    silently (neither is deprecated: the incumbent itself uses both). The signature
    shown by ``inspect.signature`` stays the wrapped method's.
    """

    def decorate(method: Method) -> Method:
        @functools.wraps(method)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if alias in kwargs:
                if name in kwargs:
                    raise TypeError(
                        f"Pass the maps as {name}= or as {alias}=, not both (they are the "
                        "same argument)."
                    )
                kwargs[name] = kwargs.pop(alias)
            return method(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def check_model(model: Any, metric: str) -> nn.Module:
    """``model`` (a ``DataParallel`` wrapper looked through), or a TypeError."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"{metric}: model must be a torch.nn.Module, got {type(model).__name__}; call "
            "the metric as metric(input_tensor, cams, targets, model)."
        )
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return model.module
    return model


def check_input_tensor(input_tensor: Any, model: nn.Module, metric: str) -> torch.Tensor:
    """``input_tensor`` (images or volumes) on the model's device, or an error that names it."""
    return validated_input(input_tensor, model, ndims=(4, 5), who=f"{metric}: ").detach()


def check_cams(
    grayscale_cams: Any, input_tensor: torch.Tensor, metric: str, argument: str = "cams"
) -> torch.Tensor:
    """The maps as a float32 tensor ``B x *spatial`` on the input's device; errors name
    them as ``argument`` (the metric's parameter name)."""
    if isinstance(grayscale_cams, torch.Tensor):
        cams = grayscale_cams.detach()
    elif isinstance(grayscale_cams, (np.ndarray, list, tuple)):
        cams = torch.as_tensor(np.asarray(grayscale_cams))
    else:
        raise TypeError(
            f"{metric}: {argument} must be a numpy array or a torch.Tensor of shape "
            f"B x H x W, got {type(grayscale_cams).__name__}."
        )
    expected = (input_tensor.shape[0], *input_tensor.shape[2:])
    if tuple(cams.shape) != expected:
        hint = ""
        if cams.ndim == len(expected) + 1 and cams.shape[1] == 1:
            hint = f" Drop the channel axis, e.g. {argument}[:, 0]."
        elif tuple(cams.shape) == expected[1:]:
            hint = f" Add the batch axis, e.g. {argument}[None]."
        elif cams.ndim == len(expected) and cams.shape[0] == expected[0]:
            hint = (
                " Compute the maps for this input, or resize them to its size (e.g. with "
                "pytorch_grad_cam.utils.image.scale_cam_image)."
            )
        raise ValueError(
            f"{metric}: {argument} has shape {tuple(cams.shape)} but input_tensor of shape "
            f"{tuple(input_tensor.shape)} needs one map per image of its spatial size, "
            f"{expected}.{hint}"
        )
    if cams.is_complex():
        raise TypeError(f"{metric}: {argument} must be real-valued, got {cams.dtype}.")
    cams = cams.to(device=input_tensor.device, dtype=torch.float32)
    if not bool(torch.isfinite(cams).all()):
        raise ValueError(f"{metric}: {argument} contains NaN or infinite values.")
    return cams


def check_unit_interval(maps: torch.Tensor, metric: str, argument: str = "cams") -> torch.Tensor:
    """``maps`` unchanged if they lie in [0, 1] (the image is multiplied by them)."""
    low, high = maps.min(), maps.max()
    if bool(low < -1e-6) or bool(high > 1 + 1e-6):
        raise ValueError(
            f"{metric}: {argument} must be in [0, 1] (the image is multiplied by them), got "
            f"values in [{float(low):.4g}, {float(high):.4g}]; pass the CAM's scaled maps "
            "(scale=True, the default) or scale each map to [0, 1]."
        )
    return maps


def check_metric_targets(targets: Any, batch_size: int, metric: str) -> list[Target] | None:
    """One target per image, or ``None`` (each image's top class); errors name the metric."""
    if targets is None:
        return None
    try:
        return check_targets(targets, batch_size)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{metric}: {error}") from None


def check_int(value: Any, name: str, metric: str, minimum: int = 1) -> int:
    """``value`` as an int of at least ``minimum``, or a ValueError that names it."""
    if not is_positive_int(value, minimum):
        raise ValueError(f"{metric}: {name} must be an int >= {minimum}, got {value!r}.")
    return int(value)


def check_percentile(value: Any, name: str, metric: str) -> float:
    """A percentile strictly between 0 and 100."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{metric}: {name} must be a number strictly between 0 and 100, got "
            f"{type(value).__name__} {value!r}."
        )
    if not 0 < float(value) < 100:
        raise ValueError(
            f"{metric}: {name} must be strictly between 0 and 100 (a percentage of the "
            f"pixels), got {value!r}; e.g. 20 for a fifth of the pixels."
        )
    return float(value)


def check_percentiles(values: Any, metric: str) -> list[float]:
    """A non-empty list of percentiles, each strictly between 0 and 100."""
    if isinstance(values, numbers.Real):
        raise TypeError(
            f"{metric}: percentiles must be a list of numbers, got the single number "
            f"{values!r}; pass [{values!r}] or use the non-averaging metric."
        )
    values = list(values)
    if not values:
        raise ValueError(f"{metric}: percentiles is empty; pass e.g. [10, 20, ..., 90].")
    return [check_percentile(v, f"percentiles[{i}]", metric) for i, v in enumerate(values)]


def check_noise(value: Any, metric: str) -> float:
    """The imputer's noise, a standard deviation >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) >= 0:
        raise ValueError(f"{metric}: noise must be a number >= 0 (a std), got {value!r}.")
    return float(value)
