"""Where a job's samples come from: an image folder, a torch ``Dataset``, or a list.

Every source has a fixed list of ids, in a fixed order: a sample's position in it is
its row in the map store, so the same inputs always give the same layout.

- An image folder: every image file under it (by extension, see ``IMAGE_EXTENSIONS``),
  found recursively, sorted by path; the id is the path relative to the folder, with
  ``/`` separators. Other files are skipped and counted; hidden files and folders
  (names starting with ``.``) are ignored. Labels can be given as ``{id: label}``.
- A map-style ``torch.utils.data.Dataset``: ids ``"0"``, ``"1"``, ...; an item is an
  image, an ``(image, label, ...)`` tuple (torchvision's datasets), or a dict with
  ``"image"`` and ``"label"``.
- Any other iterable of ``(id, image)`` or ``(id, image, label)``, read into a list
  up front, ids in the given order (they must be unique). For large data prefer a
  folder or a ``Dataset``, which load images only when they are explained.

Sources are picklable, so that ``DataLoader`` workers and Ray actors can load samples.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, IterableDataset

from pytorch_grad_cam.batch.images import IMAGE_EXTENSIONS, is_image_file


class SampleSource:
    """A fixed, ordered list of samples: ``ids`` and ``load(position)``."""

    #: Each sample's id, in row order.
    ids: list[str]
    #: Files under an input folder that are not images and were skipped.
    skipped_files: int = 0
    #: Whether samples can come with a label (``targets="label"`` needs one).
    has_labels: bool = True

    def __len__(self) -> int:
        """The number of samples."""
        return len(self.ids)

    def load(self, position: int) -> tuple[Any, Any]:
        """The raw ``(image, label)`` of the sample at ``position`` (``label`` may be
        ``None``); see ``ImageLike`` for what an image may be."""
        raise NotImplementedError

    def describe(self) -> str:
        """What the samples are, for messages."""
        raise NotImplementedError


class FolderSource(SampleSource):
    """The image files under a folder, sorted by their relative path.

    Args:
        root: the folder.
        labels: ``{id: class index}`` for ``targets="label"``; an image without an entry
            is recorded as failed.
    """

    def __init__(self, root: str | os.PathLike, labels: Mapping[str, Any] | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            what = "no such folder" if not self.root.exists() else "not a folder"
            raise ValueError(f"dataset={str(root)!r}: {what}; pass a folder of images")
        images, skipped = scan_image_folder(self.root)
        if not images:
            endings = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise ValueError(
                f"dataset={str(root)!r}: no image files under it ({skipped} other files); "
                f"images are found by their ending: {endings}"
            )
        self.ids = images
        self.skipped_files = skipped
        self.labels = dict(labels) if labels is not None else None
        self.has_labels = self.labels is not None

    def load(self, position: int) -> tuple[Any, Any]:
        """The file's path and its label (``None`` without ``labels``)."""
        sample_id = self.ids[position]
        label = None
        if self.labels is not None:
            if sample_id not in self.labels:
                raise LookupError(f"no label for {sample_id!r} in the labels given")
            label = self.labels[sample_id]
        return self.root / sample_id, label

    def describe(self) -> str:
        """``folder PATH``."""
        return f"folder {self.root}"


def scan_image_folder(root: Path) -> tuple[list[str], int]:
    """The image files under ``root`` (relative ``/`` paths, sorted) and how many other
    files were skipped; hidden files and folders are ignored."""
    images: list[str] = []
    skipped = 0
    for directory, folders, files in os.walk(root):
        folders[:] = [name for name in folders if not name.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            relative = (Path(directory) / name).relative_to(root).as_posix()
            if is_image_file(name):
                images.append(relative)
            else:
                skipped += 1
    return sorted(images), skipped


class DatasetSource(SampleSource):
    """A map-style ``torch.utils.data.Dataset``: ids are the indices as strings."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        try:
            count = len(dataset)  # type: ignore[arg-type]
        except TypeError as error:
            raise TypeError(
                f"dataset={type(dataset).__name__}: a map-style Dataset needs __len__; pass "
                "an iterable of (id, image[, label]) tuples instead"
            ) from error
        self.ids = [str(index) for index in range(count)]

    def load(self, position: int) -> tuple[Any, Any]:
        """``dataset[position]`` split into image and label."""
        item = self.dataset[position]
        if isinstance(item, Mapping):
            if "image" not in item:
                raise KeyError(f"the dataset's item is a dict without an 'image' key: {list(item)}")
            return item["image"], item.get("label")
        if isinstance(item, (tuple, list)):
            if not item:
                raise ValueError("the dataset gave an empty item")
            return item[0], item[1] if len(item) > 1 else None
        return item, None

    def describe(self) -> str:
        """``Dataset ClassName``."""
        return f"Dataset {type(self.dataset).__name__}"


class ItemsSource(SampleSource):
    """``(id, image)`` or ``(id, image, label)`` tuples, kept in a list in their order."""

    def __init__(self, items: Iterable[Any]) -> None:
        self.items: list[tuple[Any, Any]] = []
        self.ids = []
        for number, item in enumerate(items):
            if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
                got = type(item).__name__
                if isinstance(item, (tuple, list)):
                    got += f" of length {len(item)}"
                raise ValueError(
                    f"dataset item {number}: expected (id, image) or (id, image, label), "
                    f"got a {got}"
                )
            self.ids.append(str(item[0]))
            self.items.append((item[1], item[2] if len(item) == 3 else None))
        duplicates = _duplicates(self.ids)
        if duplicates:
            raise ValueError(
                f"dataset: ids must be unique; repeated: {', '.join(map(repr, duplicates[:5]))}"
            )

    def load(self, position: int) -> tuple[Any, Any]:
        """The item's image and label."""
        return self.items[position]

    def describe(self) -> str:
        """``N items``."""
        return f"{len(self.items)} items"


def _duplicates(ids: list[str]) -> list[str]:
    seen: set[str] = set()
    repeated: list[str] = []
    for sample_id in ids:
        if sample_id in seen and sample_id not in repeated:
            repeated.append(sample_id)
        seen.add(sample_id)
    return repeated


def make_source(dataset: Any, labels: Mapping[str, Any] | None = None) -> SampleSource:
    """The ``SampleSource`` for what ``explain_dataset`` was given as ``dataset``.

    Args:
        dataset: a folder path, a map-style ``torch.utils.data.Dataset``, or an iterable
            of ``(id, image[, label])``.
        labels: ``{id: class index}``, for an image folder only.
    """
    if isinstance(dataset, SampleSource):
        return dataset
    if isinstance(dataset, (str, os.PathLike)):
        return FolderSource(dataset, labels)
    if labels is not None:
        raise ValueError(
            "labels= is for an image folder; a Dataset or an iterable gives each sample's "
            "label itself, as (image, label) or (id, image, label)"
        )
    if isinstance(dataset, Dataset) and not isinstance(dataset, IterableDataset):
        return DatasetSource(dataset)
    if isinstance(dataset, Iterable):
        return ItemsSource(dataset)
    raise TypeError(
        f"dataset: expected an image folder path, a torch Dataset, or an iterable of "
        f"(id, image[, label]); got {type(dataset).__name__}"
    )
