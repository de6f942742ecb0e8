"""Grad-CAM (or any method) for a vision transformer: timm's DeiT-Tiny by default.

    python usage_examples/vit_example.py --image-path <path> --method <method>

The flags are cam.py's (``--help`` lists them); ``--model`` takes a timm ViT / DeiT name.
Pretrained weights come from the Hugging Face Hub (cached after the first run); without
network, ``--random-weights`` runs the whole pipeline on an untrained model.

Which layer: the class token is computed in the last attention block, so the patch tokens
of the last block's *output* get zero gradient. Take the input of the last block's
attention instead, ``model.blocks[-1].norm1``.

Its output is tokens, ``B x (1 + 14*14) x C``: the class token, then the 14 x 14 patches
of a 224 px image. ``vit_reshape_transform`` drops the class token and lays the patches
out as a ``B x C x 14 x 14`` image, like a CNN's feature map.
"""

from __future__ import annotations

import argparse
import functools
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
from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

DEFAULT_MODEL = "deit_tiny_patch16_224"


def run(args: argparse.Namespace) -> None:
    """Load the ViT, pick its target layer and reshape, explain and write the pictures."""
    arguments = check_arguments(args)
    model = load_timm_model(args.model, args.weights, args.random_weights)
    try:
        target_layers = [model.blocks[-1].norm1]
        height, width = model.patch_embed.grid_size  # 14 x 14 patches of 16 px for 224 px
    except (AttributeError, IndexError, TypeError, ValueError) as error:
        raise CommandLineError(
            "not a ViT / DeiT (it lacks blocks[-1].norm1 or patch_embed.grid_size); pass a "
            "timm ViT or DeiT name",
            "--model",
            args.model,
        ) from error
    reshape_transform = functools.partial(vit_reshape_transform, height=height, width=width)
    weights = weights_description(args.weights, args.random_weights)
    explainable = timm_explainable(
        model, target_layers, reshape_transform, description=f"timm {args.model} ({weights})"
    )
    explain_and_write(arguments, explainable)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the example with cam.py's flags; returns the exit status."""
    parser = build_parser(
        prog="vit_example.py",
        description="Explain a vision transformer's prediction (timm ViT / DeiT).",
        default_model=DEFAULT_MODEL,
        model_help=f"a timm ViT / DeiT name (default: {DEFAULT_MODEL})",
    )
    return run_command(run, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
