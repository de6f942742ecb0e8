"""A model ready to explain, and how an image is fed to it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.utils.image import preprocess_image
from pytorch_grad_cam.utils.reshape_transforms import ReshapeTransform

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: A larger image is scaled down to this shorter side for a model that takes any size.
MAX_SHORT_SIDE = 224


@dataclass
class Explainable:
    """A model ready to explain: what to run, which layers to look at, how to feed it.

    Attributes:
        model: the model.
        target_layers: its layers to explain (their maps are averaged).
        categories: class names in output order; a model with another number of outputs
            gets numbers.
        mean: the normalisation's mean, per RGB channel.
        std: the normalisation's standard deviation, per RGB channel.
        input_size: ``(height, width)`` the model needs; ``None``: it takes the image at
            its own size, scaled down to ``MAX_SHORT_SIDE`` pixels on its shorter side
            when it is larger.
        reshape_transform: how the target layers' outputs become ``B x C x H x W``;
            ``None``: the CAM infers it (tokens or channels-last), as ``BaseCAM`` does.
        description: one line saying what was loaded, printed before the predictions.
    """

    model: nn.Module
    target_layers: list[nn.Module]
    categories: list[str]
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    input_size: tuple[int, int] | None = None
    reshape_transform: ReshapeTransform | None = None
    description: str = ""


def to_input_tensor(rgb_image: np.ndarray, explainable: Explainable) -> torch.Tensor:
    """``1 x 3 x H x W``, normalised, at the model's input size if it has one, else with
    the shorter side scaled down to ``MAX_SHORT_SIDE`` (the objects' scale in ImageNet).

    Args:
        rgb_image: RGB float32 in [0, 1], ``H x W x 3``.
        explainable: the model's input size and normalisation.
    """
    height, width = explainable.input_size or fitted_size(*rgb_image.shape[:2])
    if (height, width) != rgb_image.shape[:2]:
        rgb_image = cv2.resize(rgb_image, (width, height), interpolation=cv2.INTER_AREA)
    return preprocess_image(rgb_image, explainable.mean, explainable.std)


def fitted_size(height: int, width: int) -> tuple[int, int]:
    """``(height, width)`` with the shorter side scaled down to ``MAX_SHORT_SIDE``."""
    scale = min(1.0, MAX_SHORT_SIDE / min(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))
