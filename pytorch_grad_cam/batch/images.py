"""One image of a dataset as the model's input: decoded to RGB, resized, normalised.

Files are decoded with Pillow, which also notices a truncated file (OpenCV decodes the
part it has and says nothing). Grayscale, palette, RGBA and CMYK images become RGB (an
alpha channel is dropped); an EXIF orientation is applied. Every image is resized to
one fixed size, the model's input size, without keeping its aspect ratio, so a map
resized back to the image's own size lines up with it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

#: File name endings taken as images (any case); other files in a folder are skipped.
IMAGE_EXTENSIONS = frozenset(
    {".bmp", ".gif", ".jpeg", ".jpg", ".pbm", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"}
)

#: An image as a dataset may give it: a path, an array, a Pillow image, or a tensor that
#: is already the model's input.
ImageLike = Union[str, os.PathLike, np.ndarray, Image.Image, torch.Tensor]

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` ends in one of ``IMAGE_EXTENSIONS`` (any case)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """The image file at ``path`` as ``H x W x 3`` float32 RGB in [0, 1].

    Raises ``OSError`` (Pillow's) for a file that cannot be decoded, including a
    truncated one.
    """
    with Image.open(path) as image:
        return to_rgb_array(ImageOps.exif_transpose(image))


def to_rgb_array(image: np.ndarray | Image.Image) -> np.ndarray:
    """A Pillow image or an ``H x W``, ``H x W x 1``, ``H x W x 3`` or ``H x W x 4`` array as
    ``H x W x 3`` float32 RGB in [0, 1].

    Arrays may be uint8 (0..255), uint16 (0..65535) or floating point in [0, 1]; a fourth
    channel (alpha) is dropped, one channel is repeated three times.
    """
    if isinstance(image, Image.Image):
        if image.mode in _SIXTEEN_BIT_MODES:
            return to_rgb_array(np.asarray(image, dtype=np.uint16))
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(
            f"an image array must be H x W, H x W x 3 or H x W x 4, got shape {array.shape}"
        )
    return _unit_range(array[..., :3])


def _unit_range(array: np.ndarray) -> np.ndarray:
    """An RGB array of a known dtype as float32 in [0, 1]."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise ValueError("the image array has NaN or infinite values")
        if array.size and (array.min() < 0 or array.max() > 1):
            raise ValueError(
                f"a floating-point image must be in [0, 1], got values in "
                f"[{array.min():g}, {array.max():g}]; divide by 255 or pass uint8"
            )
        return array
    raise ValueError(f"image arrays must be uint8, uint16 or float in [0, 1], got {array.dtype}")


def to_model_input(
    rgb: np.ndarray, size: tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """``H x W x 3`` RGB in [0, 1] as the model's ``3 x height x width`` float32 input:
    resized to ``size = (height, width)`` (OpenCV's area interpolation, as ``cam.py``)
    and normalised with ``mean`` and ``std``."""
    height, width = size
    if rgb.shape[:2] != (height, width):
        rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
    normalised = (rgb - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))


def load_model_input(
    image: Any, size: tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Any ``ImageLike`` but a tensor as the model's ``3 x height x width`` input (see
    ``to_model_input``): a path is read with ``read_rgb``, an array or Pillow image is
    converted with ``to_rgb_array``."""
    if isinstance(image, (str, os.PathLike)):
        rgb = read_rgb(image)
    elif isinstance(image, (np.ndarray, Image.Image)):
        rgb = to_rgb_array(image)
    else:
        raise TypeError(
            "an image must be a file path, a numpy array, a PIL image or a C x H x W "
            f"tensor, got {type(image).__name__}"
        )
    return to_model_input(rgb, size, mean, std)
