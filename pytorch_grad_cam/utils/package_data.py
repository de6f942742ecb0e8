"""Files shipped with the package: the example image and the ImageNet class names."""

from __future__ import annotations

import functools
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
#: The shipped example image: a cat and an espresso cup (``examples/cat_and_coffee.png``).
EXAMPLE_IMAGE = DATA_DIR / "cat_and_coffee.png"
#: The 1000 ImageNet class names, one a line, in index order (torchvision's list).
IMAGENET_CLASSES_FILE = DATA_DIR / "imagenet_classes.txt"


@functools.lru_cache(maxsize=1)
def _categories() -> tuple[str, ...]:
    return tuple(IMAGENET_CLASSES_FILE.read_text(encoding="utf-8").splitlines())


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names, in index order."""
    return list(_categories())
