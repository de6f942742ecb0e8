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
import torch
from torch import nn
from torchvision.models.segmentation import (
    DeepLabV3_MobileNet_V3_Large_Weights,
    deeplabv3_mobilenet_v3_large,
)

from pytorch_grad_cam.cli.support import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RANDOM_WEIGHTS_HELP,
    CommandLineError,
    WeightsUnavailableError,
    base_parser,
    batch_norm_statistics_from,
    blamed_on,
    check_common_arguments,
    file_stem,
    resolve_category,
    run_command,
    with_pretrained_weights,
    write_images,
)
from pytorch_grad_cam.utils.image import preprocess_image, show_cam_on_image
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
        lambda where: WeightsUnavailableError(
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
        raise error.for_flag("--category") from None


def run(args: argparse.Namespace) -> Path:
    """Segment, explain one class's region with ``--method`` and write the picture."""
    arguments = check_common_arguments(args, explains_targets=True)
    method, device, rgb = arguments.method, arguments.device, arguments.rgb_image
    resolve_name(args.category)  # fail before loading the model
    model = load_segmenter(args.random_weights).to(device)
    input_tensor = preprocess_image(rgb, IMAGENET_MEAN, IMAGENET_STD).to(device)
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
    with blamed_on("--method", args.method):  # a method that does not fit: one line
        cam = method(model=model, target_layers=target_layers)
        with cam:
            grayscale = cam(input_tensor, targets=targets, eigen_smooth=arguments.eigen_smooth)[0]

    overlay = cv2.cvtColor(show_cam_on_image(rgb, grayscale, use_rgb=True), cv2.COLOR_RGB2BGR)
    region = mask.to(torch.uint8).cpu().numpy()
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(overlay, contours, -1, (255, 255, 255), 1)
    pictures = {file_stem(args.method): overlay}
    return write_images(pictures, arguments.output_dir, "segmentation")[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the example; returns the exit status."""
    return run_command(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
