"""Shared pieces of the tests of ``pytorch_grad_cam.batch``: a tiny CNN, small image
folders, the per-image reference maps, and reading a store back."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import torch
import zarr
from torch import nn

from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.batch import explain_dataset
from pytorch_grad_cam.cli import Explainable, read_image, to_input_tensor
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

SIZE = 32
MEAN = (0.5, 0.4, 0.3)
STD = (0.25, 0.2, 0.3)
#: float16 keeps 11 significant bits: a map value in [0, 1] is off by at most 2**-12.
FLOAT16_ATOL = 2.5e-4


def tiny_cnn(classes: int = 5, seed: int = 0) -> nn.Sequential:
    """conv, ReLU, stride-2 conv, ReLU (the target layer, ``model[3]``), GAP, linear."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes, bias=False),  # no bias: the top class has positive evidence
    ).eval()


def write_image_folder(folder: Path, count: int = 7, seed: int = 0) -> list[str]:
    """``count`` small images of several kinds (RGB and grayscale PNG, RGBA PNG, JPEG,
    in a subfolder too) and a text file; returns the images' ids, sorted."""
    rng = np.random.default_rng(seed)
    names = []
    for number in range(count):
        height, width = 24 + 3 * (number % 8), 40 - 2 * (number % 8)
        smooth = cv2.GaussianBlur(rng.uniform(0, 255, (height, width, 3)), (5, 5), 2)
        image = smooth.astype(np.uint8)
        kind = number % 4
        if kind == 0:
            name, data = f"rgb_{number}.png", image
        elif kind == 1:
            name, data = f"gray_{number}.png", cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        elif kind == 2:
            alpha = rng.integers(0, 256, (height, width, 1), dtype=np.uint8)
            name, data = f"rgba_{number}.png", np.concatenate([image, alpha], axis=2)
        else:
            name, data = f"sub/photo_{number}.jpg", image
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(folder / name), data)
        names.append(name)
    (folder / "notes.txt").write_text("not an image")
    return sorted(names)


def model_input(path: Path, size: int = SIZE, mean=MEAN, std=STD) -> torch.Tensor:
    """The image as cam.py prepares it (an oracle independent of the batch module)."""
    explainable = Explainable(None, [], [], mean=mean, std=std, input_size=(size, size))  # type: ignore[arg-type]
    return to_input_tensor(read_image(str(path)), explainable)[0]


def reference(
    model: nn.Module, layer: nn.Module, inputs: torch.Tensor, categories=None, method=GradCAM
) -> tuple[np.ndarray, np.ndarray]:
    """Per image, one call each: the map (float32) and the model's scores."""
    maps, scores = [], []
    with method(model=model, target_layers=[layer]) as cam:
        for index, image in enumerate(inputs):
            targets = None
            if categories is not None:
                targets = [ClassifierOutputTarget(int(categories[index]))]
            maps.append(cam(image[None], targets)[0])
            scores.append(cam.outputs[0].numpy())
    return np.stack(maps), np.stack(scores)


def read_store(out: Path) -> tuple[np.ndarray, dict[str, list]]:
    """The store's maps and its index as ``{column: values}``."""
    maps = zarr.open_array(str(out / "maps.zarr"), path="maps", mode="r")[:]
    index = pq.read_table(out / "index.parquet").to_pydict()
    return maps, index


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax."""
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def run_tiny_job(folder: Path, out: Path, batch_size: int = 3, **options):
    """``explain_dataset`` with GradCAM on ``tiny_cnn()`` in this process (no loader
    workers, no progress bar); ``options`` are passed on."""
    model = tiny_cnn()
    return explain_dataset(
        model,
        folder,
        out,
        GradCAM,
        [model[3]],
        image_size=SIZE,
        mean=MEAN,
        std=STD,
        batch_size=batch_size,
        num_workers=0,
        progress=False,
        **options,
    )
