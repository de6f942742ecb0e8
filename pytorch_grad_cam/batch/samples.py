"""Loading samples for a batch: each one becomes a model input, or a recorded failure.

``SampleReader.read`` never raises for a bad sample: a file that cannot be decoded
(truncated, not an image), an image of the wrong kind, a tensor of the wrong shape or
with NaNs, a label that is missing, not an integer, or out of range, each gives a
``Sample`` with its ``error``; the job records it as failed and goes on. ``collate``
stacks the good ones of a batch into one tensor, which is what reaches the device.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pytorch_grad_cam.batch.images import load_model_input
from pytorch_grad_cam.batch.sources import SampleSource


@dataclass
class Sample:
    """One sample, loaded: its model input, or why it failed."""

    #: Its position in the source, which is its row in the map store.
    row: int
    #: The model's ``C x H x W`` float32 input; ``None`` when it failed.
    image: torch.Tensor | None
    #: The class index to explain with ``targets="label"``; ``None`` otherwise.
    label: int | None = None
    #: Why the sample failed (``"ExceptionName: message"``); ``None`` when it loaded.
    error: str | None = None


@dataclass
class SampleReader:
    """Turns a source's raw samples into model inputs (picklable: runs in workers).

    Args:
        source: where the samples come from.
        image_size: ``(height, width)`` that decoded images are resized to.
        mean, std: their normalisation.
        input_shape: the ``C x H x W`` every input must have (``None``: not checked).
        num_classes: the model's number of classes, for checking labels.
        needs_label: whether each sample must come with a valid label.
    """

    source: SampleSource
    image_size: tuple[int, int]
    mean: Sequence[float]
    std: Sequence[float]
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    needs_label: bool = False

    def read(self, row: int) -> Sample:
        """The sample at ``row``; a failure is returned with its reason, not raised."""
        try:
            raw_image, raw_label = self.source.load(row)
            image = self.model_input(raw_image)
            label = self.checked_label(raw_label) if self.needs_label else None
        except Exception as error:  # any bad sample is recorded and the run goes on
            return Sample(row, None, error=f"{type(error).__name__}: {error}")
        return Sample(row, image, label)

    def model_input(self, raw_image: Any) -> torch.Tensor:
        """``raw_image`` as a ``C x H x W`` float32 input of the expected shape."""
        if isinstance(raw_image, torch.Tensor):
            if not raw_image.is_floating_point() or raw_image.ndim != 3:
                raise ValueError(
                    "a tensor sample must be the model's C x H x W float input, got "
                    f"{raw_image.dtype} of shape {tuple(raw_image.shape)}"
                )
            image = raw_image.detach().to("cpu", torch.float32)
        else:
            image = load_model_input(raw_image, self.image_size, self.mean, self.std)
        if self.input_shape is not None and tuple(image.shape) != tuple(self.input_shape):
            raise ValueError(
                f"the input has shape {_shape(image.shape)}, the others "
                f"{_shape(self.input_shape)}; give every sample the same size (resize "
                "in the dataset's transform)"
            )
        if not bool(torch.isfinite(image).all()):
            raise ValueError("the input has NaN or infinite values")
        return image

    def checked_label(self, raw_label: Any) -> int:
        """``raw_label`` as a class index in range, or a ``ValueError`` saying why not."""
        if raw_label is None:
            raise ValueError("no label: targets='label' needs one for every sample")
        if isinstance(raw_label, torch.Tensor) and raw_label.numel() == 1:
            raw_label = raw_label.item()  # on the host already: the sample's own value
        if isinstance(raw_label, np.ndarray) and raw_label.size == 1:
            raw_label = raw_label.item()
        if isinstance(raw_label, bool) or not isinstance(raw_label, numbers.Integral):
            raise ValueError(f"label {raw_label!r} is not an integer class index")
        label = int(raw_label)
        if self.num_classes is not None and not 0 <= label < self.num_classes:
            raise ValueError(
                f"label {label} is out of range 0..{self.num_classes - 1} for a model "
                f"with {self.num_classes} classes"
            )
        return label


def _shape(shape: Sequence[int]) -> str:
    return " x ".join(str(size) for size in shape)


class ReaderDataset(Dataset):
    """``reader.read(row)`` as a ``Dataset``, for a ``DataLoader`` with a batch sampler
    of rows."""

    def __init__(self, reader: SampleReader) -> None:
        self.reader = reader

    def __len__(self) -> int:
        """The source's number of samples."""
        return len(self.reader.source)

    def __getitem__(self, row: int) -> Sample:
        """The sample at ``row``."""
        return self.reader.read(row)


@dataclass
class LoadedBatch:
    """A batch of samples: the good ones stacked, the failed ones with their reasons."""

    #: Every sample's row, in order.
    rows: np.ndarray
    #: Whether each sample loaded.
    ok: np.ndarray
    #: The loaded samples' inputs, ``n_ok x C x H x W`` (``n_ok`` may be 0).
    images: torch.Tensor
    #: Their labels (``n_ok``, int64), when the samples carry them.
    labels: torch.Tensor | None
    #: Each sample's error, ``None`` for the loaded ones.
    errors: list[str | None] = field(default_factory=list)

    def pin_memory(self) -> LoadedBatch:
        """The batch with its tensors in pinned memory (``DataLoader(pin_memory=True)``)."""
        labels = self.labels.pin_memory() if self.labels is not None else None
        return LoadedBatch(self.rows, self.ok, self.images.pin_memory(), labels, self.errors)


def collate(samples: Sequence[Sample]) -> LoadedBatch:
    """Stack the loaded samples of a batch; failed ones keep only their error."""
    loaded = [sample for sample in samples if sample.image is not None]
    images = torch.stack([sample.image for sample in loaded]) if loaded else torch.empty(0)  # type: ignore[misc]
    with_labels = [sample.label for sample in loaded if sample.label is not None]
    labels = None
    if loaded and len(with_labels) == len(loaded):
        labels = torch.tensor(with_labels, dtype=torch.int64)
    return LoadedBatch(
        rows=np.array([sample.row for sample in samples], dtype=np.int64),
        ok=np.array([sample.image is not None for sample in samples], dtype=bool),
        images=images,
        labels=labels,
        errors=[sample.error for sample in samples],
    )
