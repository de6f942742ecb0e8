"""The default engine: a ``DataLoader`` on this machine, the model where it is.

Each batch of the loader is one chunk of the store (a batch sampler over the chunks
still to do), read and decoded by ``num_workers`` worker processes; its good samples
go to the model's device as one tensor (pinned memory on CUDA), and its maps come back
as one array, written by a background thread while the next batch runs. Freed host
memory is handed back after each batch (``release_freed_memory``), so that the resident
memory stays flat.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
from torch.utils.data import DataLoader

from pytorch_grad_cam.batch.explainer import BatchExplainer, ExplainerSpec
from pytorch_grad_cam.batch.memory import release_freed_memory
from pytorch_grad_cam.batch.samples import ReaderDataset, SampleReader, collate
from pytorch_grad_cam.batch.writer import BackgroundWriter

#: Called with the number of samples explained so far in this run, after each batch.
BatchCallback = Callable[[int], None]


def run_local(
    spec: ExplainerSpec,
    reader: SampleReader,
    chunks: Sequence[Sequence[int]],
    writer: BackgroundWriter,
    num_workers: int,
    on_batch: BatchCallback,
    multiprocessing_context: str | None = None,
) -> None:
    """Explain the rows of ``chunks`` (one batch each) with ``spec``'s model where it is,
    and hand them to ``writer``; the loader's workers start as ``multiprocessing_context``
    says (``DataLoader``'s argument; default: the platform's)."""
    if not chunks:
        return
    explainer = spec.build()
    try:
        loader = make_loader(
            reader, chunks, num_workers, explainer.device.type == "cuda", multiprocessing_context
        )
        _explain_batches(explainer, loader, writer, on_batch)
    finally:
        explainer.close()


def make_loader(
    reader: SampleReader,
    chunks: Sequence[Sequence[int]],
    num_workers: int,
    pin_memory: bool,
    multiprocessing_context: str | None = None,
) -> DataLoader:
    """The engine's ``DataLoader``: one ``LoadedBatch`` per chunk of rows, read by
    ``num_workers`` processes (0: in this one)."""
    return DataLoader(
        ReaderDataset(reader),
        batch_sampler=[list(rows) for rows in chunks],
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        prefetch_factor=2 if num_workers else None,
        worker_init_fn=_one_opencv_thread,
        multiprocessing_context=multiprocessing_context if num_workers else None,
    )


def _explain_batches(
    explainer: BatchExplainer, loader: DataLoader, writer: BackgroundWriter, on_batch: BatchCallback
) -> None:
    done = 0
    for batch in loader:
        writer.add(explainer.explain(batch))
        done += len(batch.rows)
        del batch  # freed before the allocator is trimmed
        release_freed_memory()
        on_batch(done)


def _one_opencv_thread(worker_id: int) -> None:
    """In a loader worker: OpenCV resizes on one thread (torch sets its own to one), so
    that the workers do not crowd the cores the model runs on."""
    cv2.setNumThreads(1)
