"""Explain a torchvision semantic segmentation network: why it labels a region as a class.

    python usage_examples/segmentation_example.py --image-path <path> [--category cat]
    python usage_examples/segmentation_example.py --random-weights   # offline, untrained

The model is ``deeplabv3_mobilenet_v3_large`` with its Pascal VOC weights (21 classes;
from the torch hub cache, or downloaded when download.pytorch.org is reachable). It
returns a dict whose ``"out"`` entry holds ``B x 21 x H x W`` score maps; the CAM picks
that entry by itself. The target is a ``SemanticSegmentationTarget(category, mask)``:
the sum of the category's scores over the pixels the model itself labels as that
category (``mask = prediction == category``), so the map shows what makes the network
call that region ``category``. ``--category`` takes a class name or index; by default it
is the class (other than the background) that covers most pixels.

Which layer: the backbone's last block, ``model.backbone["16"]`` (960 channels at 1/16
of the input's size), like ``model.backbone.layer4`` for ``deeplabv3_resnet50``.

``--random-weights`` runs the pipeline untrained and offline. Untrained, the MobileNet's
batch-norm layers (running mean 0, variance 1) shrink the features towards 0 layer after
layer, so the example first sets the backbone's statistics from the image itself (one
pass in training mode). If the chosen class labels no pixel, the whole image is the mask.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torchvision.models.segmentation import (
    DeepLabV3_MobileNet_V3_Large_Weights,
    deeplabv3_mobilenet_v3_large,
)

from pytorch_grad_cam.cli import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RANDOM_WEIGHTS_HELP,
    CommandLineError,
    base_parser,
    batch_norm_statistics_from,
    check_output_dir,
    file_stem,
    pick_device,
    read_image,
    resolve_category,
    resolve_target_method,
    run_command,
    with_pretrained_weights,
    write_images,
)
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

WEIGHTS = DeepLabV3_MobileNet_V3_Large_Weights.DEFAULT
CATEGORIES: list[str] = WEIGHTS.meta["categories"]
BACKGROUND = 0


def build_parser() -> argparse.ArgumentParser:
    """cam.py's shared flags, ``--random-weights`` and ``--category``."""
    parser = base_parser(
        "segmentation_example.py",
        "Explain a torchvision semantic segmentation network with a CAM.",
        epilog="Writes segmentation_<method>.jpg (the map on the image, the class's region "
        "outlined) to --output-dir.",
    )
    add = parser.add_argument
    add("--random-weights", action="store_true", help=RANDOM_WEIGHTS_HELP)
    add(
        "--category",
        metavar="INDEX|NAME",
        help=f"class to explain, one of {', '.join(CATEGORIES)} (default: the class, other "
        "than the background, that covers most pixels)",
    )
    return parser


def load_segmenter(random_weights: bool) -> nn.Module:
    """The VOC-trained network, or an untrained one (seeded) with ``random_weights``."""
    if random_weights:
        torch.manual_seed(0)
        return deeplabv3_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=len(CATEGORIES)
        ).eval()
    return with_pretrained_weights(
        deeplabv3_mobilenet_v3_large,
        WEIGHTS,
        lambda where: (
            f"no network to download the network's weights: {where}, or pass "
            "--random-weights to run the pipeline untrained"
        ),
    )


def pick_category(prediction: torch.Tensor, requested: str | None) -> int:
    """``--category``, or the non-background class labelling most pixels (the background
    if nothing else is predicted)."""
    category = resolve_name(requested)
    if category is not None:
        return category
    counts = torch.bincount(prediction.flatten(), minlength=len(CATEGORIES))
    counts[BACKGROUND] = 0
    return int(counts.argmax()) if int(counts.max()) > 0 else BACKGROUND


def resolve_name(requested: str | None) -> int | None:
    """The class index for ``--category``: an index, a name or an unambiguous prefix."""
    try:
        return resolve_category(requested, CATEGORIES)
    except CommandLineError as error:
        raise CommandLineError(str(error).replace("--target-category", "--category")) from None


def run(args: argparse.Namespace) -> Path:
    """Segment, explain one class's region with ``--method`` and write the picture."""
    method = resolve_target_method(args.method)
    device = pick_device(args.device, args.use_cuda)
    rgb = read_image(args.image_path)
    check_output_dir(Path(args.output_dir))
    resolve_name(args.category)  # fail before loading the model
    model = load_segmenter(args.random_weights).to(device)
    normalised = (rgb - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    input_tensor = torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))[None]
    input_tensor = input_tensor.to(device)
    if args.random_weights:
        batch_norm_statistics_from(model.backbone, input_tensor)

    with torch.no_grad():
        prediction = model(input_tensor)["out"][0].argmax(dim=0)
    category = pick_category(prediction, args.category)
    mask = (prediction == category).float()
    weights = "untrained" if args.random_weights else "Pascal VOC weights"
    print(f"deeplabv3_mobilenet_v3_large ({weights}) on {device}")
    share = float(mask.mean())
    print(f"explaining: {category} {CATEGORIES[category]} ({share:.1%} of the pixels)")
    if share == 0:
        print(f"no pixel is labelled {CATEGORIES[category]}: the mask is the whole image")
        mask = torch.ones_like(mask)

    target_layers = [model.backbone["16"]]
    targets = [SemanticSegmentationTarget(category, mask)]
    try:
        with method(model=model, target_layers=target_layers) as cam:
            grayscale = cam(input_tensor, targets=targets, eigen_smooth=args.eigen_smooth)[0]
    except ValueError as error:
        raise CommandLineError(f"--method {args.method}: {error}".rstrip(".")) from error

    overlay = cv2.cvtColor(show_cam_on_image(rgb, grayscale, use_rgb=True), cv2.COLOR_RGB2BGR)
    region = mask.to(torch.uint8).cpu().numpy()
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(overlay, contours, -1, (255, 255, 255), 1)
    pictures = {file_stem(args.method): overlay}
    return write_images(pictures, Path(args.output_dir), "segmentation")[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the example; returns the exit status."""
    return run_command(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
