"""The methods the command line offers, by name.

Every ``BaseCAM`` subclass the package exports is offered (its lowercased class name),
plus the seeds' spellings (``gradcam++``) and the attention methods for vision
transformers: ``attentionrollout``, ``transformerattribution`` and ``legrad``. The
table is built on first use, from the package's ``__all__``, so a new method is offered
as soon as the package exports it.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import pytorch_grad_cam
from pytorch_grad_cam.attention_rollout import AttentionRollout
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.cli.errors import CommandLineError
from pytorch_grad_cam.legrad import LeGrad
from pytorch_grad_cam.transformer_attribution import TransformerAttribution

#: The seeds' spellings besides the lowercased class names.
METHOD_ALIASES = {"gradcam++": "gradcamplusplus"}

#: The methods that read a vision transformer's attention instead of target layers,
#: called ``method(model)(input_tensor[, targets])``.
ATTENTION_METHODS: tuple[type, ...] = (AttentionRollout, TransformerAttribution, LeGrad)


def maps_attention(method: type) -> bool:
    """Whether ``method`` maps a vision transformer's attention (no target layers)."""
    return method in ATTENTION_METHODS


def is_cam_method(value: Any) -> bool:
    """Whether ``value`` is a CAM method the command line can run: a ``BaseCAM``
    subclass (called as ``cam(input_tensor, targets, aug_smooth, eigen_smooth)``).

    The methods that wrap another CAM (FinerCAM, RefineCAM, SESS) and Deep Feature
    Factorization, which returns concepts instead of one map, are not ``BaseCAM``
    subclasses.
    """
    return isinstance(value, type) and issubclass(value, BaseCAM) and value is not BaseCAM


@functools.lru_cache(maxsize=1)
def _method_table() -> tuple[tuple[str, type], ...]:
    methods: dict[str, type] = {}
    for name in pytorch_grad_cam.__all__:
        value = getattr(pytorch_grad_cam, name)
        if is_cam_method(value):
            methods[name.lower()] = value
    for method in ATTENTION_METHODS:
        methods[method.__name__.lower()] = method
    for alias, name in METHOD_ALIASES.items():
        if name in methods:
            methods[alias] = methods[name]
    return tuple(sorted(methods.items()))


def available_methods() -> dict[str, type]:
    """Every method the command line offers, by lowercased class name, plus aliases,
    sorted by name. The attention methods (``attentionrollout``,
    ``transformerattribution``, ``legrad``) work on vision transformers only."""
    return dict(_method_table())


def method_key(name: str) -> str:
    """``name`` as the table is searched: lowercased, without ``-``, ``_`` or spaces."""
    return re.sub(r"[-_\s]", "", name.lower())


def resolve_method(name: str) -> type:
    """The method class for ``name``; case, ``-``, ``_`` and spaces are ignored, so
    ``Grad-CAM++``, ``gradcam++`` and ``GradCAMPlusPlus`` are one method.

    Raises:
        CommandLineError: about ``--method``, listing the methods, for an unknown name.
    """
    methods = available_methods()
    by_key = {method_key(key): method for key, method in methods.items()}
    if method_key(name) not in by_key:
        raise CommandLineError(
            f"unknown method; choose one of {', '.join(methods)}", "--method", name
        )
    return by_key[method_key(name)]


def resolve_target_method(name: str) -> type[BaseCAM]:
    """``resolve_method``, less the attention methods, which have no target layers (and
    the rollout explains no target).

    Raises:
        CommandLineError: about ``--method``: an unknown name or an attention method.
    """
    method = resolve_method(name)
    if maps_attention(method) and method is not AttentionRollout:
        raise CommandLineError(
            "maps a vision transformer's attention, not target layers, so it does not fit "
            "here; use e.g. gradcam, gradcam++, hirescam, layercam or eigencam",
            "--method",
            name,
        )
    if not issubclass(method, BaseCAM):
        raise CommandLineError(
            "not a CAM method that explains a target; use e.g. gradcam, gradcam++, hirescam, "
            "layercam or eigencam",
            "--method",
            name,
        )
    return method


def explains_layers(method: type) -> bool:
    """Whether ``method`` maps target layers: a ``BaseCAM`` that uses them (not FullGrad,
    which uses every biased layer, nor the attention methods)."""
    return issubclass(method, BaseCAM) and method.uses_target_layers


def __getattr__(name: str) -> dict[str, type]:
    """``METHODS``: the table of :func:`available_methods`, built on first use."""
    if name == "METHODS":
        return available_methods()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
