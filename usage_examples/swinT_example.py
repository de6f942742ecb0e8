"""Grad-CAM (or any method) for a Swin transformer: timm's Swin-T by default.

    python usage_examples/swinT_example.py --image-path <path> --method <method>

The flags are cam.py's (``--help`` lists them); ``--model`` takes a timm Swin name.
Pretrained weights come from the Hugging Face Hub (cached after the first run); without
network, ``--random-weights`` runs the whole pipeline on an untrained model.

Which layer: Swin has no class token; the head pools all the patches of the last stage,
so the last block of the last stage works: ``model.layers[-1].blocks[-1].norm1``.

Its output is a 7 x 7 grid of patches for a 224 px image. timm's Swin keeps it
channels-last, ``B x 7 x 7 x C`` (older versions: tokens ``B x 49 x C``);
``swinT_reshape_transform`` turns either into a ``B x C x 7 x 7`` image, like a CNN's
feature map.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pytorch_grad_cam.cli.support import (
    CommandLineError,
    build_parser,
    check_arguments,
    explain_and_write,
    load_timm_model,
    run_command,
    timm_explainable,
    weights_description,
)
from pytorch_grad_cam.utils.reshape_transforms import swinT_reshape_transform

DEFAULT_MODEL = "swin_tiny_patch4_window7_224"


def run(args: argparse.Namespace) -> None:
    """Load the Swin, pick its target layer and reshape, explain and write the pictures."""
    arguments = check_arguments(args)
    model = load_timm_model(args.model, args.weights, args.random_weights)
    try:
        target_layers = [model.layers[-1].blocks[-1].norm1]
    except (AttributeError, IndexError, TypeError) as error:
        raise CommandLineError(
            "not a Swin (it lacks layers[-1].blocks[-1].norm1); pass a timm Swin name",
            "--model",
            args.model,
        ) from error
    weights = weights_description(args.weights, args.random_weights)
    explainable = timm_explainable(
        model, target_layers, swinT_reshape_transform, description=f"timm {args.model} ({weights})"
    )
    explain_and_write(arguments, explainable)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the example with cam.py's flags; returns the exit status."""
    parser = build_parser(
        prog="swinT_example.py",
        description="Explain a Swin transformer's prediction (timm Swin).",
        default_model=DEFAULT_MODEL,
        model_help=f"a timm Swin name (default: {DEFAULT_MODEL})",
    )
    return run_command(run, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
