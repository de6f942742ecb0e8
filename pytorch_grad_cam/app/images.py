"""Reading the image a user uploads: decoded safely, scaled down when huge, explained why.

Pillow reads the header first, so a file that is not an image, or one whose pixel count
would exhaust memory when decoded (a "decompression bomb"), is refused before it is
decoded. A large image is scaled down to ``MAX_SIDE`` pixels on its longer side (the
model sees it at ``224`` pixels on its shorter side anyway) and the note says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pytorch_grad_cam.app.errors import AppInputError

#: A larger image is scaled down to this many pixels on its longer side for the page.
MAX_SIDE = 1024
#: More pixels than this are not decoded at all (about 200 MB as 8-bit RGB).
MAX_DECODED_PIXELS = 64_000_000


@dataclass(frozen=True)
class LoadedImage:
    """An image ready to explain."""

    #: ``H x W x 3`` RGB float32 in [0, 1], at most ``MAX_SIDE`` pixels on a side.
    rgb: np.ndarray
    #: The file's name as the user knows it.
    name: str
    #: Why the image was changed (scaled down), or ``""``.
    note: str = ""


def load_image(path: str | Path, name: str | None = None) -> LoadedImage:
    """The image file at ``path`` as RGB float32, scaled down when larger than ``MAX_SIDE``.

    Args:
        path: the file to read.
        name: the name to show in messages (default: the file's own name).

    Raises:
        AppInputError: the file is missing, is not an image Pillow can read, or has
            more than ``MAX_DECODED_PIXELS`` pixels.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    shown = name or path.name
    if not path.is_file():
        raise AppInputError(f"Image {shown}: no such file; upload it again.")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_DECODED_PIXELS:
                raise AppInputError(
                    f"Image {shown}: {width} x {height} pixels is too large to decode "
                    f"(at most {MAX_DECODED_PIXELS // 1_000_000} megapixels); scale it "
                    "down first."
                )
            image.draft("RGB", (MAX_SIDE, MAX_SIDE))  # JPEG: decode at a reduced size
            rgb = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise AppInputError(
            f"Image {shown}: not an image file that can be read ({type(error).__name__}); "
            "upload a PNG, JPEG, WebP, BMP or TIFF picture."
        ) from error
    rgb_float = rgb.astype(np.float32) / 255
    scaled, note = fit_to_page(rgb_float, (width, height), shown)
    return LoadedImage(rgb=scaled, name=shown, note=note)


def fit_to_page(
    rgb: np.ndarray, original_size: tuple[int, int], name: str
) -> tuple[np.ndarray, str]:
    """``rgb`` scaled down to ``MAX_SIDE`` on its longer side, and a note saying so.

    Args:
        rgb: the decoded image, ``H x W x 3``.
        original_size: the file's ``(width, height)`` (a JPEG may decode smaller).
        name: the image's name, for the note.
    """
    height, width = rgb.shape[:2]
    scale = MAX_SIDE / max(height, width)
    if scale >= 1 and (width, height) == tuple(original_size):
        return rgb, ""
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    new_height, new_width = rgb.shape[:2]
    note = (
        f"Image {name} is {original_size[0]} x {original_size[1]} pixels; it was scaled down "
        f"to {new_width} x {new_height} for the page (the model sees it smaller still)."
    )
    return np.clip(rgb, 0, 1), note
