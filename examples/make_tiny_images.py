"""Regenerate pytorch_grad_cam/data/tiny_images/: a handful of small crops of the shipped
photo, the image folder that ``gradcam explain-dataset`` explains when given none.

python examples/make_tiny_images.py
"""

from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
PHOTO = HERE / "cat_and_coffee.png"
FOLDER = HERE.parent / "pytorch_grad_cam" / "data" / "tiny_images"
SIDE = 112


def square(image: np.ndarray, rows: slice, columns: slice) -> np.ndarray:
    """The crop, resized to ``SIDE`` x ``SIDE``."""
    return cv2.resize(image[rows, columns], (SIDE, SIDE), interpolation=cv2.INTER_AREA)


def main() -> None:
    photo = cv2.imread(str(PHOTO))  # BGR, 224 x 448: the cat on the left, the cup right
    cat = square(photo, slice(0, 224), slice(0, 216))
    cup = square(photo, slice(8, 180), slice(262, 406))
    alpha = np.full((SIDE, SIDE, 1), 255, dtype=np.uint8)
    alpha[:, : SIDE // 8] = 0  # a transparent strip: the file is RGBA
    images = {
        "cat.jpg": cat,
        "cup.jpg": cup,
        "cat_and_cup.jpg": cv2.resize(photo, (2 * SIDE, SIDE), interpolation=cv2.INTER_AREA),
        "cup_mirrored.jpg": cup[:, ::-1],
        "cat_grayscale.png": cv2.cvtColor(cat, cv2.COLOR_BGR2GRAY),
        "cup_rgba.png": np.concatenate([cup, alpha], axis=2),
    }
    FOLDER.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        options = [cv2.IMWRITE_JPEG_QUALITY, 90] if name.endswith(".jpg") else []
        cv2.imwrite(str(FOLDER / name), np.ascontiguousarray(image), options)
        print(f"wrote {FOLDER / name}")


if __name__ == "__main__":
    main()
