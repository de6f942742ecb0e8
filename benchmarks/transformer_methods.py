"""The transformer methods side by side on what can be run offline.

The papers' references cannot be reproduced here: Chefer et al. (ICCV 2021) and LeGrad
(ICCV 2025) evaluate ImageNet-trained ViT-B models on ImageNet-segmentation (pixel
accuracy, mIoU, mAP) and on ImageNet perturbation tests, and neither the weights nor the
data can be fetched. What is run instead, with the protocols of those tables:

1. A small timm ViT (4 blocks, 64 wide, 4 x 4 patches of a 32 x 32 image) is trained for
   a few hundred steps on a synthetic task whose answer is known: each image shows one
   coloured square (red, green, blue or yellow: the class) and three grey distractor
   squares of the same size at random places, so the coloured square is the true region.
2. Segmentation against that region (Chefer et al.'s protocol): each map, scaled to
   [0, 1], is binarised at its mean; pixel accuracy and the mean of foreground and
   background IoU of the binary map, and the average precision (AP) of the raw map's
   pixel ranking, each averaged over the test images. Target: the true class.
3. Class sensitivity: images with two coloured squares of different classes; the
   pointing game (the map's maximum falls in the target's square) for each class in
   turn, and the mean absolute difference of the two classes' maps.
4. Perturbation (Chefer et al.'s positive and negative perturbation, here on pixels
   with the softmax probability of the true class instead of top-1 accuracy; the maps
   themselves explain the class's logit, as in the papers): the
   deletion AUC when the most relevant pixels go first (lower is better) and when the
   least relevant go first (higher is better).
   And LeGrad one layer at a time, to see what its mean over layers dilutes.
5. The cascading-randomisation sanity check (Adebayo et al. 2018) on the trained ViT:
   the median over images of the Spearman correlation of each method's map with its
   original after each step (head, then the blocks from the top, then the patch
   embedding).
6. The time of one call as a multiple of a plain forward pass (DeiT-tiny, 224 px).

Compared: TransformerAttribution, LeGrad, AttentionRollout (Abnar & Zuidema), GradCAM on
the last block's ``norm1`` tokens (the ViT GradCAM baseline of both papers), and
RandomCAM (chance).

Run from the repository root: ``OMP_NUM_THREADS=1 PYTHONPATH=. python
benchmarks/transformer_methods.py`` (a few minutes on one shared core; ``--steps`` and
``--images`` shorten it).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import timm
import torch
from sklearn.metrics import average_precision_score
from torch import nn

from pytorch_grad_cam import AttentionRollout, GradCAM, LeGrad, RandomCAM, TransformerAttribution
from pytorch_grad_cam.layer_layout import InferredReshapeWarning
from pytorch_grad_cam.metrics import CascadingRandomization, DeletionCurve
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
)

PAPERS = """\
What the papers report (their tables could not be read offline: the search tool gives
only the abstracts and opening sections of arXiv 2103.15679 and 2404.03214, so no number
of theirs is quoted here; the orderings below are those the papers' text states):
  Chefer et al., ICCV 2021, ViT-B/16 on ImageNet: the gradient-weighted relevance ranks
    above Attention Rollout and GradCAM on ImageNet-segmentation (pixel accuracy, mIoU,
    mAP) and on the perturbation tests (lower AUC when the most relevant tokens are
    removed first, higher when the least relevant are).
  LeGrad, ICCV 2025, ViT-B/16 (ImageNet, OpenCLIP): LeGrad above Chefer's method, Rollout
    and GradCAM on ImageNet-segmentation, open-vocabulary localisation and perturbation.
Gap: no ImageNet-trained ViT and no ImageNet data offline, so neither table's numbers are
reproduced; the trained toy ViT below checks the orderings against a known region."""

#: The classes' colours (RGB).
COLOURS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
SIZE, CELL = 32, 8  # the image and its 4 x 4 grid of square places
Maps = Callable[[torch.Tensor, list], np.ndarray]


def squares(
    classes: list[list[int]], generator: torch.Generator, distractors: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with one coloured square per listed class and grey distractors, at random
    places of the grid, on faint noise; and each square's mask (``B x K x H x W``)."""
    count, per_image = len(classes), len(classes[0])
    images = 0.1 * torch.rand(count, 3, SIZE, SIZE, generator=generator)
    masks = torch.zeros(count, per_image, SIZE, SIZE)
    places = (SIZE // CELL) ** 2
    for index, image_classes in enumerate(classes):
        cells = torch.randperm(places, generator=generator)[: per_image + distractors].tolist()
        for position, cell in enumerate(cells):
            y, x = (cell // (SIZE // CELL)) * CELL, (cell % (SIZE // CELL)) * CELL
            if position < per_image:
                colour = COLOURS[image_classes[position]]
                images[index, :, y : y + CELL, x : x + CELL] = 0.05 + 0.9 * colour[:, None, None]
                masks[index, position, y : y + CELL, x : x + CELL] = 1.0
            else:
                images[index, :, y : y + CELL, x : x + CELL] = 0.5
    return images, masks


def trained_vit(steps: int, batch: int = 64) -> tuple[nn.Module, float, float]:
    """The toy ViT trained with AdamW on fresh single-square batches; its test accuracy
    and the training time in seconds."""
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=SIZE,
        patch_size=4,
        depth=4,
        embed_dim=64,
        num_heads=4,
        num_classes=len(COLOURS),
    )
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    start = time.perf_counter()
    for _ in range(steps):
        labels = torch.randint(0, len(COLOURS), (batch,), generator=generator)
        images, _ = squares([[int(c)] for c in labels], generator)
        loss = nn.functional.cross_entropy(model(images), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    seconds = time.perf_counter() - start
    model.eval()
    test = torch.Generator().manual_seed(99)
    labels = torch.randint(0, len(COLOURS), (256,), generator=test)
    images, _ = squares([[int(c)] for c in labels], test)
    with torch.no_grad():
        accuracy = float((model(images).argmax(1) == labels).float().mean())
    return model, accuracy, seconds


def methods(model: nn.Module) -> dict[str, Maps]:
    """Each compared method as ``maps(images, targets)``."""
    layer = model.blocks[-1].norm1
    return {
        "TransformerAttribution": TransformerAttribution(model),
        "LeGrad": LeGrad(model),
        "AttentionRollout": lambda x, targets: AttentionRollout(model)(x),
        "GradCAM": GradCAM(model, [layer]),
        "RandomCAM": RandomCAM(model, [layer], seed=0),
    }


def segmentation_scores(maps: np.ndarray, masks: np.ndarray) -> tuple[float, ...]:
    """Pixel accuracy, mIoU (foreground and background) of each map binarised at its
    mean, and AP of its pixel ranking; means over images, in percent."""
    accuracies, ious, precisions = [], [], []
    for cam, mask in zip(maps, masks.astype(bool)):
        predicted = cam > cam.mean()
        accuracies.append((predicted == mask).mean())
        per_class = [
            (np.logical_and(predicted == c, mask == c).sum())
            / max(np.logical_or(predicted == c, mask == c).sum(), 1)
            for c in (True, False)
        ]
        ious.append(np.mean(per_class))
        precisions.append(average_precision_score(mask.ravel(), cam.ravel()))
    return (
        100 * float(np.mean(accuracies)),
        100 * float(np.mean(ious)),
        100 * float(np.mean(precisions)),
    )


def segmentation_table(model: nn.Module, count: int) -> None:
    generator = torch.Generator().manual_seed(7)
    labels = torch.randint(0, len(COLOURS), (count,), generator=generator).tolist()
    images, masks = squares([[c] for c in labels], generator)
    targets = [ClassifierOutputTarget(c) for c in labels]  # the maps explain the logit
    probabilities = [ClassifierOutputSoftmaxTarget(c) for c in labels]  # the curves' score
    deletion = DeletionCurve(n_steps=16)
    print(f"\nSegmentation and perturbation, {count} test images (1 coloured + 3 grey squares)")
    print(
        f"  {'method':24s} {'pixel acc':>9s} {'mIoU':>6s} {'mAP':>6s}"
        f" {'pos. pert. AUC (lower)':>23s} {'neg. pert. AUC (higher)':>24s}"
    )
    rows = []
    for name, cam in methods(model).items():
        maps = np.asarray(cam(images, targets))
        accuracy, iou, precision = segmentation_scores(maps, masks[:, 0].numpy())
        positive = float(np.mean(deletion(images, maps, probabilities, model)))
        negative = float(np.mean(deletion(images, 1.0 - maps, probabilities, model)))
        rows.append((name, accuracy, iou, precision, positive, negative))
        print(
            f"  {name:24s} {accuracy:9.1f} {iou:6.1f} {precision:6.1f}"
            f" {positive:23.3f} {negative:24.3f}"
        )
    for column, label, sign in ((2, "mIoU", -1), (3, "mAP", -1), (4, "pos. pert.", 1)):
        order = sorted(rows, key=lambda row: sign * row[column])
        print(f"  ordering by {label:10s}: " + " > ".join(row[0] for row in order))


def legrad_layers_table(model: nn.Module, count: int) -> None:
    """LeGrad with one layer at a time (its own score read through the model's head), to
    see which layers the mean over layers dilutes."""
    generator = torch.Generator().manual_seed(7)  # the segmentation table's images
    labels = torch.randint(0, len(COLOURS), (count,), generator=generator).tolist()
    images, masks = squares([[c] for c in labels], generator)
    targets = [ClassifierOutputTarget(c) for c in labels]
    print("\nLeGrad one layer at a time (same images), against the mean over layers")
    print(f"  {'layers':24s} {'pixel acc':>9s} {'mIoU':>6s} {'mAP':>6s}")
    choices = {f"blocks[{i}] alone": [block.attn] for i, block in enumerate(model.blocks)}
    choices["all (the method)"] = [block.attn for block in model.blocks]
    for label, layers in choices.items():
        maps = np.asarray(LeGrad(model, attention_layers=layers)(images, targets))
        accuracy, iou, precision = segmentation_scores(maps, masks[:, 0].numpy())
        print(f"  {label:24s} {accuracy:9.1f} {iou:6.1f} {precision:6.1f}")


def class_sensitivity_table(model: nn.Module, count: int) -> None:
    generator = torch.Generator().manual_seed(11)
    pairs = [torch.randperm(len(COLOURS), generator=generator)[:2].tolist() for _ in range(count)]
    images, masks = squares(pairs, generator, distractors=2)
    print(f"\nClass sensitivity, {count} images with two coloured squares (+2 grey)")
    print(f"  {'method':24s} {'pointing game, each class':>26s} {'mean |map_a - map_b|':>21s}")
    for name, cam in methods(model).items():
        per_class = []
        for slot in (0, 1):
            targets = [ClassifierOutputTarget(pair[slot]) for pair in pairs]
            per_class.append(np.asarray(cam(images, targets)))
        hits = []
        for slot, maps in enumerate(per_class):
            peaks = maps.reshape(count, -1).argmax(1)
            inside = masks[:, slot].reshape(count, -1).numpy()[np.arange(count), peaks]
            hits.extend(inside.tolist())
        difference = float(np.abs(per_class[0] - per_class[1]).mean())
        print(f"  {name:24s} {100 * np.mean(hits):25.1f}% {difference:21.3f}")


def sanity_table(model: nn.Module, count: int) -> None:
    steps = ["head", "blocks.3", "blocks.2", "blocks.1", "blocks.0", "patch_embed"]
    generator = torch.Generator().manual_seed(13)
    labels = torch.randint(0, len(COLOURS), (count,), generator=generator).tolist()
    images, _ = squares([[c] for c in labels], generator)
    targets = [ClassifierOutputTarget(c) for c in labels]
    print(
        f"\nCascading randomisation on the trained ViT, {count} images: median Spearman "
        "with the original map after each step (cumulative, top first)"
    )
    print(f"  {'method':24s} " + " ".join(f"{s:>11s}" for s in steps) + "   verdict")
    factories = {
        "TransformerAttribution": TransformerAttribution,
        "LeGrad": LeGrad,
        "AttentionRollout": lambda m: lambda x, targets: AttentionRollout(m)(x),
        "GradCAM": lambda m: GradCAM(m, [m.blocks[-1].norm1]),
    }
    for name, factory in factories.items():
        results = CascadingRandomization(factory, steps=steps)(images, targets, model)[1:]
        # A map made constant by the randomisation (e.g. all zero after GradCAM's ReLU)
        # has no rank correlation: it no longer resembles the original, counted as 0.
        medians = [float(np.median(np.nan_to_num(step.correlation))) for step in results]
        # Adebayo et al.: a map that explains the model loses its similarity to the
        # original once the top layers are re-initialised and does not regain it
        # further down. Judged here: median Spearman below 0.5 from the last block's
        # randomisation (head and blocks.3) on, at every later step.
        passed = all(value < 0.5 for value in medians[1:])
        cells = " ".join(f"{value:11.2f}" for value in medians)
        print(f"  {name:24s} {cells}   {'pass' if passed else 'fail'}")


def timing_table(repeats: int) -> None:
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    x = torch.randn(1, 3, 224, 224)
    layer = model.blocks[-1].norm1

    def forward() -> None:
        with torch.no_grad():
            model(x)

    calls = {
        "plain no_grad forward": forward,
        "AttentionRollout": lambda: AttentionRollout(model)(x),
        "GradCAM (blocks[-1].norm1)": lambda: GradCAM(model, [layer])(x),
        "TransformerAttribution": lambda: TransformerAttribution(model)(x),
        "LeGrad (12 layer scores)": lambda: LeGrad(model)(x),
    }
    medians = {}
    for name, call in calls.items():
        for _ in range(2):
            call()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        medians[name] = statistics.median(times)
    base = medians["plain no_grad forward"]
    print(f"\nOne call on DeiT-tiny (12 blocks) at 224 px, median of {repeats}, CPU")
    for name, seconds in medians.items():
        print(f"  {name:28s} {seconds / base:6.2f} x  ({seconds * 1e3:.1f} ms)")


def write_pictures(model: nn.Module, directory: Path) -> None:
    """The README's pictures: one image with a red and a blue square (and grey ones), and
    each attention method's map for each of the two classes over it, 128 px JPEGs."""
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(5)
    pair = [0, 2]  # red, blue
    images, _ = squares([pair], generator, distractors=2)
    image = images[0].permute(1, 2, 0).numpy()
    large = cv2.resize(image, (128, 128), interpolation=cv2.INTER_NEAREST)
    written = [directory / "toy_vit_image.jpg"]
    cv2.imwrite(str(written[0]), cv2.cvtColor(np.uint8(255 * large), cv2.COLOR_RGB2BGR))
    shown = {k: v for k, v in methods(model).items() if k != "RandomCAM"}
    for name, cam in shown.items():
        for colour, category in zip(("red", "blue"), pair):
            grayscale = np.asarray(cam(images, [ClassifierOutputTarget(category)]))[0]
            grayscale = cv2.resize(grayscale, (128, 128), interpolation=cv2.INTER_LINEAR)
            overlay = show_cam_on_image(large.astype(np.float32), grayscale, use_rgb=True)
            path = directory / f"toy_vit_{name.lower()}_{colour}.jpg"
            cv2.imwrite(str(path), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
            written.append(path)
    print(f"\nWrote {len(written)} pictures to {directory}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps of the toy ViT")
    parser.add_argument("--images", type=int, default=64, help="test images per table")
    parser.add_argument("--sanity-images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--pictures",
        type=Path,
        default=None,
        help="also write the README's toy-ViT pictures to this folder (docs/results)",
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore", InferredReshapeWarning)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(PAPERS)
    model, accuracy, seconds = trained_vit(args.steps)
    print(
        f"\nToy ViT trained for {args.steps} steps of 64 images in {seconds:.0f} s: "
        f"test accuracy {100 * accuracy:.1f}% (chance 25%)"
    )
    if args.pictures is not None:
        write_pictures(model, args.pictures)
    segmentation_table(model, args.images)
    legrad_layers_table(model, args.images)
    class_sensitivity_table(model, args.images)
    sanity_table(model, args.sanity_images)
    timing_table(args.repeats)


if __name__ == "__main__":
    main()
