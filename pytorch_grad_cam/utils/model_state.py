"""The user's model during a call: one call at a time, in eval mode, left as it was found.

A CAM call changes the model for its duration: it hooks target layers and switches
every module to eval mode. Two calls on the same model in two threads would see each
other's hooks and flags and give wrong maps, so every call that touches a model holds
that model's lock (:func:`model_lock`): calls on one model run one after the other,
calls on different models run in parallel. The lock is reentrant, so a method that runs
another method on the same model inside its own call (FinerCAM, RefineCAM, the metrics)
does not wait for itself.

A plain ``model(x)`` of the user's own in another thread does not take the lock; while a
CAM call runs on that same model object it sees the call's hooks and eval mode.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

#: One reentrant lock per model object, dropped with the model.
_MODEL_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
#: Guards the creation of a model's lock.
_LOCKS_GUARD = threading.Lock()


def lock_of(model: nn.Module) -> threading.RLock:
    """The reentrant lock that serialises the CAM calls on ``model``."""
    with _LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.RLock()
        return lock


@contextmanager
def model_lock(model: nn.Module) -> Iterator[None]:
    """Hold ``model``'s lock: no other thread's CAM call on it runs meanwhile."""
    with lock_of(model):
        yield


@contextmanager
def model_in_eval_mode(model: nn.Module) -> Iterator[None]:
    """The model to oneself (its lock), in eval mode (no dropout, no batch-norm statistics
    update); each module's own flag is restored afterwards, also on error."""
    with model_lock(model):
        flags = [(module, module.training) for module in model.modules()]
        model.eval()
        try:
            yield
        finally:
            for module, training in flags:
                module.training = training


def model_device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter (or buffer); ``None`` for neither."""
    for parameter in model.parameters():
        return parameter.device
    for buffer in model.buffers():
        return buffer.device
    return None


def detached_output(output: Any) -> Any:
    """``output`` with every tensor in it detached, containers' types kept."""
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, tuple) and hasattr(output, "_fields"):  # a namedtuple
        return type(output)(*(detached_output(item) for item in output))
    if isinstance(output, (tuple, list)):
        return type(output)(detached_output(item) for item in output)
    if isinstance(output, MutableMapping):
        # A shallow copy keeps the mapping's type (dict, OrderedDict, ModelOutput).
        detached = copy.copy(output)
        for key, value in output.items():
            detached[key] = detached_output(value)
        return detached
    return output
