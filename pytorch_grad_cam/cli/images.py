"""The command line's image files: reading the image, composing and writing the three
pictures (the CAM on the image, guided backpropagation, their product)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from pytorch_grad_cam.cli.errors import CommandLineError
from pytorch_grad_cam.cli.methods import method_key
from pytorch_grad_cam.utils.image import deprocess_image, show_cam_on_image


def read_image(path: str) -> np.ndarray:
    """The image at ``path`` as an RGB float32 array in [0, 1], ``H x W x 3``.

    Raises:
        CommandLineError: about ``--image-path``: no such file, or not an image.
    """
    if not Path(path).is_file():
        raise CommandLineError("no such file", "--image-path", path)
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise CommandLineError("not an image OpenCV can read", "--image-path", path)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255


def resized(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """``image`` at ``size`` (``(height, width)``), bilinear; as it is if it has that size."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def compose_images(
    rgb_image: np.ndarray, grayscale: np.ndarray, guided: np.ndarray
) -> dict[str, np.ndarray]:
    """The three pictures at the image's size, BGR uint8 (OpenCV's file order).

    Args:
        rgb_image: the image, RGB float in [0, 1], ``H x W x 3``.
        grayscale: the map in [0, 1], at any size.
        guided: the guided-backpropagation image, RGB, at any size.

    Returns:
        ``{"cam": the map on the image, "gb": guided backpropagation, "cam_gb": their
        product}``.
    """
    size = rgb_image.shape[:2]
    grayscale = resized(grayscale, size)
    guided_bgr = resized(np.ascontiguousarray(guided[..., ::-1]), size)
    overlay = show_cam_on_image(np.ascontiguousarray(rgb_image[..., ::-1]), grayscale)
    return {
        "cam": overlay,
        "gb": deprocess_image(guided_bgr),
        "cam_gb": deprocess_image(grayscale[..., None] * guided_bgr),
    }


def file_stem(method: str) -> str:
    """The ``--method`` as written in file names: ``Grad-CAM++`` -> ``gradcampp``."""
    return method_key(method).replace("+", "p")


def write_images(images: dict[str, np.ndarray], output_dir: Path, stem: str) -> list[Path]:
    """Each image as ``<stem>_<key>.jpg`` in ``output_dir`` (cam.py's: ``<method>_cam.jpg``,
    ``<method>_gb.jpg`` and ``<method>_cam_gb.jpg``): all of them, or none (the images
    are encoded first, and files already written are removed if a later write fails).

    Raises:
        CommandLineError: an image cannot be encoded, or a file cannot be written.
    """
    encoded: dict[Path, bytes] = {}
    for suffix, image in images.items():
        ok, buffer = cv2.imencode(".jpg", image)
        if not ok:
            raise CommandLineError(f"cannot encode the {suffix} image as JPEG")
        encoded[output_dir / f"{stem}_{suffix}.jpg"] = buffer.tobytes()
    written: list[Path] = []
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        for path, data in encoded.items():
            path.write_bytes(data)
            written.append(path)
    except OSError as error:
        for path in written:
            path.unlink(missing_ok=True)
        raise CommandLineError(str(error.strerror), "--output-dir", str(output_dir)) from error
    for path in written:
        print(f"wrote {path}")
    return written
