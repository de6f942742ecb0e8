"""Explain a torchvision Faster R-CNN's detections: which pixels make it find its boxes.

    python usage_examples/detection_example.py --image-path <path> [--method gradcam]
    python usage_examples/detection_example.py --random-weights   # offline, untrained

The model is ``fasterrcnn_mobilenet_v3_large_320_fpn`` with its COCO weights (from the
torch hub cache, or downloaded when download.pytorch.org is reachable). Its output is a
list with one dict per image (``boxes``, ``labels``, ``scores``); each image's target is a
``FasterRCNNBoxScoreTarget`` built from the model's own detections above
``--score-threshold``: its score is, per detection, ``IoU + score`` of the matching box,
so gradient methods explain "these boxes, with these labels". EigenCAM
(``--method eigencam``) needs no target: the first principal component of the features.

Which layer: the whole backbone, ``model.backbone``. Its output is an ``OrderedDict`` of
the feature pyramid's levels (``"0"``, ``"1"``, ``"pool"``); ``fpn_reshape_transform``
resizes every level to the first one's size and concatenates them along the channels,
so the CAM weights every channel of every level. The box head pools its regions from the
levels, each box from the level that fits its size; this model's levels ``"0"`` and
``"1"`` have the same stride (32), so every box comes from level ``"0"``: the other levels
get no gradient from the detections and weight 0 in gradient methods (EigenCAM, which
needs no gradient, uses them all). The same recipe fits pyramids whose levels differ in
scale (``fasterrcnn_resnet50_fpn``). AblationCAM sets channels of one tensor to zero,
so it explains the first level's layer, ``model.backbone.fpn.layer_blocks[0]``, instead.

The detector resizes the image itself (to 320 px for this model) and normalises it, so
the input tensor is the image in [0, 1] at its own size. Its boxes come back in the input's
pixels, and so does the map.

``--random-weights`` runs the pipeline untrained and offline. Untrained, the MobileNet's
batch-norm layers (running mean 0, variance 1) shrink the features towards 0 layer after
layer, so the example first sets their statistics from the image itself (one pass of the
backbone in training mode); and since an untrained detector's class scores are about
1 / 91, its score threshold is 0 and, when no detection reaches ``--score-threshold``,
the top-scoring one is explained. If the model detects nothing at all, the map is
EigenCAM's (class-agnostic) and the picture has no boxes.
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
from torchvision.models.detection import (
    FasterRCNN_MobileNet_V3_Large_320_FPN_Weights,
    fasterrcnn_mobilenet_v3_large_320_fpn,
)

from pytorch_grad_cam import AblationCAM, EigenCAM
from pytorch_grad_cam.cli.support import (
    RANDOM_WEIGHTS_HELP,
    WeightsUnavailableError,
    base_parser,
    batch_norm_statistics_from,
    blamed_on,
    check_common_arguments,
    file_stem,
    run_command,
    with_pretrained_weights,
    write_images,
)
from pytorch_grad_cam.utils.image import preprocess_image, show_cam_on_image
from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget
from pytorch_grad_cam.utils.reshape_transforms import fpn_reshape_transform

WEIGHTS = FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.DEFAULT
CATEGORIES: list[str] = WEIGHTS.meta["categories"]
DEFAULT_SCORE_THRESHOLD = 0.5


def build_parser() -> argparse.ArgumentParser:
    """cam.py's shared flags, ``--random-weights`` and ``--score-threshold``."""
    parser = base_parser(
        "detection_example.py",
        "Explain a torchvision Faster R-CNN's detections with a CAM.",
        epilog="Writes detection_<method>.jpg (the map on the image, with the explained "
        "boxes) to --output-dir.",
    )
    add = parser.add_argument
    add("--random-weights", action="store_true", help=RANDOM_WEIGHTS_HELP)
    add(
        "--score-threshold",
        metavar="SCORE",
        type=float,
        default=DEFAULT_SCORE_THRESHOLD,
        help=f"explain the detections scoring at least this (default: {DEFAULT_SCORE_THRESHOLD})",
    )
    return parser


def load_detector(random_weights: bool) -> nn.Module:
    """The COCO-trained detector, or an untrained one (seeded) with ``random_weights``."""
    if random_weights:
        torch.manual_seed(0)
        return fasterrcnn_mobilenet_v3_large_320_fpn(
            weights=None, weights_backbone=None, box_score_thresh=0.0
        ).eval()
    return with_pretrained_weights(
        fasterrcnn_mobilenet_v3_large_320_fpn,
        WEIGHTS,
        lambda where: WeightsUnavailableError(
            f"no network to download the detector's weights: {where}, or pass "
            "--random-weights to run the pipeline untrained"
        ),
    )


def detections_to_explain(
    detection: dict[str, torch.Tensor], threshold: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The boxes, labels and scores of the detections at or above ``threshold``; if none,
    the top-scoring detection; if the model found nothing, empty tensors."""
    keep = detection["scores"] >= threshold
    if not bool(keep.any()) and detection["scores"].numel() > 0:
        top = detection["scores"].argmax()
        print(
            f"no detection scores {threshold} or more; explaining the top-scoring one "
            f"(score {float(detection['scores'][top]):.3f}) instead"
        )
        keep = torch.zeros_like(keep)
        keep[top] = True
    return detection["boxes"][keep], detection["labels"][keep], detection["scores"][keep]


def draw_boxes(
    image_bgr: np.ndarray, boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor
) -> np.ndarray:
    """The boxes drawn on a copy of ``image_bgr``, each with its class name and score."""
    image = image_bgr.copy()
    for box, label, score in zip(boxes.tolist(), labels.tolist(), scores.tolist()):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(image, (x1, y1), (x2, y2), (255, 255, 255), 2)
        text = f"{CATEGORIES[label] if label < len(CATEGORIES) else label} {score:.2f}"
        cv2.putText(
            image, text, (x1 + 2, max(y1 - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
            (255, 255, 255), 1, cv2.LINE_AA,
        )  # fmt: skip
    return image


def run(args: argparse.Namespace) -> Path:
    """Detect, explain the detections with ``--method`` and write the picture."""
    arguments = check_common_arguments(args, explains_targets=True)
    method, device, rgb = arguments.method, arguments.device, arguments.rgb_image
    model = load_detector(args.random_weights).to(device)
    # The detector normalises and resizes by itself: the input is the image in [0, 1].
    input_tensor = preprocess_image(rgb, mean=(0, 0, 0), std=(1, 1, 1)).to(device)
    if args.random_weights:
        resized = model.transform([input_tensor[0]])[0].tensors
        batch_norm_statistics_from(model.backbone, resized)

    weights = "untrained" if args.random_weights else "COCO weights"
    print(f"fasterrcnn_mobilenet_v3_large_320_fpn ({weights}) on {device}")
    with torch.no_grad():
        detection = model(input_tensor)[0]
    boxes, labels, scores = detections_to_explain(detection, args.score_threshold)
    for box, label, score in zip(boxes.tolist(), labels.tolist(), scores.tolist()):
        print(f"{score:6.3f}  {CATEGORIES[label]:<14s} {[round(v) for v in box]}")

    # The whole feature pyramid: its levels, resized to the first one's size, side by side.
    target_layers, reshape_transform = [model.backbone], fpn_reshape_transform
    if issubclass(method, AblationCAM):  # it needs a layer that outputs one tensor
        target_layers, reshape_transform = [model.backbone.fpn.layer_blocks[0]], None
    if labels.numel() == 0:
        print("the model detected nothing: the map is EigenCAM's, which needs no target")
        method = EigenCAM
    targets = [FasterRCNNBoxScoreTarget(labels=labels, bounding_boxes=boxes)]
    with blamed_on("--method", args.method):  # a method that does not fit: one line
        cam = method(model=model, target_layers=target_layers, reshape_transform=reshape_transform)
        with cam:
            grayscale = cam(input_tensor, targets=targets, eigen_smooth=arguments.eigen_smooth)[0]

    overlay = show_cam_on_image(rgb, grayscale, use_rgb=True)
    picture = draw_boxes(cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR), boxes, labels, scores)
    pictures = {file_stem(args.method): picture}
    return write_images(pictures, arguments.output_dir, "detection")[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the example; returns the exit status."""
    return run_command(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
