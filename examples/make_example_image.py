"""Regenerate examples/cat_and_coffee.png from scikit-image's public-domain photos, and
its copy pytorch_grad_cam/data/cat_and_coffee.png (package data: cam.py's default image).

pip install scikit-image && python examples/make_example_image.py
"""

from pathlib import Path

import cv2
import numpy as np
from skimage import data

HERE = Path(__file__).resolve().parent
PACKAGE_DATA = HERE.parent / "pytorch_grad_cam" / "data"


def fit_height(image: np.ndarray, height: int) -> np.ndarray:
    width = round(image.shape[1] * height / image.shape[0])
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def main() -> None:
    cat = fit_height(data.chelsea(), 224)
    cup = fit_height(data.coffee(), 224)
    cat_left = (cat.shape[1] - 224) // 2 + 20
    cup_left = (cup.shape[1] - 224) // 2
    image = np.concatenate(
        [cat[:, cat_left : cat_left + 224], cup[:, cup_left : cup_left + 224]], axis=1
    )
    # The copy in the package is cam.py's default image, from any install.
    for path in (HERE / "cat_and_coffee.png", PACKAGE_DATA / "cat_and_coffee.png"):
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
