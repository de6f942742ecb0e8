"""What the example scripts build on: one place to import a ``cam.py``-like command line
from, kept stable while the command line's own modules change.

``usage_examples/vit_example.py`` and ``swinT_example.py`` take ``cam.py``'s flags
(``build_parser``), check them once (``check_arguments``), load a timm model
(``load_timm_model``, ``timm_explainable``) and run ``cam.py``'s pipeline
(``explain_and_write``) through ``run_command``, which prints a ``CommandLineError`` as
one line with exit status 2. ``detection_example.py`` and ``segmentation_example.py``
share the flags of ``base_parser`` (``check_common_arguments``), load a torchvision
model with its cached or downloaded weights (``with_pretrained_weights``) and write their
picture with ``write_images``. Your own script can do the same.
"""

from __future__ import annotations

from pytorch_grad_cam.cli.arguments import (
    RANDOM_WEIGHTS_HELP,
    CommonArguments,
    ExplainArguments,
    base_parser,
    build_parser,
    check_arguments,
    check_common_arguments,
    resolve_category,
)
from pytorch_grad_cam.cli.errors import CommandLineError, WeightsUnavailableError, blamed_on
from pytorch_grad_cam.cli.explainable import IMAGENET_MEAN, IMAGENET_STD, Explainable
from pytorch_grad_cam.cli.images import file_stem, write_images
from pytorch_grad_cam.cli.methods import available_methods
from pytorch_grad_cam.cli.models import (
    batch_norm_statistics_from,
    load_timm_model,
    timm_explainable,
    weights_description,
)
from pytorch_grad_cam.cli.pipeline import Explanation, explain_and_write, run, run_command
from pytorch_grad_cam.cli.pretrained import with_pretrained_weights

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RANDOM_WEIGHTS_HELP",
    "CommandLineError",
    "CommonArguments",
    "ExplainArguments",
    "Explainable",
    "Explanation",
    "WeightsUnavailableError",
    "available_methods",
    "base_parser",
    "batch_norm_statistics_from",
    "blamed_on",
    "build_parser",
    "check_arguments",
    "check_common_arguments",
    "explain_and_write",
    "file_stem",
    "load_timm_model",
    "resolve_category",
    "run",
    "run_command",
    "timm_explainable",
    "weights_description",
    "with_pretrained_weights",
    "write_images",
]
