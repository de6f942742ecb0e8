"""Batches of results into whole chunks of the store, committed one chunk at a time.

The local engine's batches are the store's chunks; Ray's may cut across them, in any
order. ``ChunkWriter`` collects rows until a chunk is complete, then writes its maps and
commits its part of the index (``MapStore.write_chunk``). ``BackgroundWriter`` runs it in
one thread beside the computation, at most a few batches behind, so that compressing
and writing maps overlaps with the next batch on the device.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import zarr

from pytorch_grad_cam.batch.explainer import METRICS, BatchResult
from pytorch_grad_cam.batch.store import MapStore, index_schema


@dataclass
class _ChunkBuffer:
    """The rows of one chunk received so far."""

    results: list[BatchResult] = field(default_factory=list)
    rows: int = 0


class ChunkWriter:
    """Writes results into ``store`` chunk by chunk (not thread-safe: one thread calls it).

    Args:
        store: the output folder.
        maps: its ``maps`` array.
        ids: every sample's id, in row order.
        method: the method's name, for the index.
        layers: the target layers' names, for the index (joined by commas).
        metrics: the metric names computed (their columns are written).
    """

    def __init__(
        self,
        store: MapStore,
        maps: zarr.Array,
        ids: Sequence[str],
        method: str,
        layers: Sequence[str],
        metrics: Sequence[str],
    ) -> None:
        self.store = store
        self.maps = maps
        self.ids = ids
        self.method = method
        self.layer = ",".join(layers)
        self.metric_columns = [METRICS[name] for name in metrics]
        self.schema = index_schema(metrics)
        self.chunk_rows = maps.chunks[0]
        self.buffers: dict[int, _ChunkBuffer] = {}
        self.written_chunks = 0

    def chunk_size(self, chunk: int) -> int:
        """The number of rows of ``chunk`` (the last one may be short)."""
        return min(self.chunk_rows, len(self.ids) - chunk * self.chunk_rows)

    def add(self, result: BatchResult) -> None:
        """Take a batch's rows; write every chunk that they complete."""
        chunks = result.rows // self.chunk_rows
        for chunk in np.unique(chunks):
            selected = np.flatnonzero(chunks == chunk)
            part = _select(result, selected) if len(selected) < len(result.rows) else result
            buffer = self.buffers.setdefault(int(chunk), _ChunkBuffer())
            buffer.results.append(part)
            buffer.rows += len(part.rows)
            if buffer.rows == self.chunk_size(int(chunk)):
                self._write(int(chunk), self.buffers.pop(int(chunk)).results)

    def _write(self, chunk: int, results: list[BatchResult]) -> None:
        joined = _concatenate(results)
        order = np.argsort(joined.rows, kind="stable")
        joined = _select(joined, order)
        expected = np.arange(chunk * self.chunk_rows, chunk * self.chunk_rows + len(order))
        if not np.array_equal(joined.rows, expected):
            raise RuntimeError(f"chunk {chunk} got rows {joined.rows.tolist()}, not each once")
        self.store.write_chunk(self.maps, chunk, joined.maps, self._records(joined))
        self.written_chunks += 1

    def _records(self, result: BatchResult) -> pa.Table:
        """The index rows of ``result``: nulls where a sample failed."""
        ok = result.ok
        count = len(result.rows)
        columns = {
            "id": pa.array([self.ids[row] for row in result.rows], pa.string()),
            "row": pa.array(result.rows, pa.int64(), mask=~ok),
            "status": pa.array(np.where(ok, "ok", "failed").tolist(), pa.string()),
            "error": pa.array(result.errors, pa.string()),
            "target": pa.array(result.target, pa.int64(), mask=~ok),
            "score": pa.array(result.score, pa.float32(), mask=~ok),
            "top_class": pa.array(result.top_class, pa.int64(), mask=~ok),
            "method": pa.array([self.method] * count, pa.string()),
            "layer": pa.array([self.layer] * count, pa.string()),
        }
        for column in self.metric_columns:
            columns[column] = pa.array(result.metrics[column], pa.float32(), mask=~ok)
        return pa.table(columns, schema=self.schema)


def _select(result: BatchResult, positions: np.ndarray) -> BatchResult:
    return BatchResult(
        rows=result.rows[positions],
        ok=result.ok[positions],
        maps=result.maps[positions],
        errors=[result.errors[position] for position in positions],
        target=result.target[positions],
        top_class=result.top_class[positions],
        score=result.score[positions],
        metrics={name: values[positions] for name, values in result.metrics.items()},
    )


def _concatenate(results: list[BatchResult]) -> BatchResult:
    if len(results) == 1:
        return results[0]
    return BatchResult(
        rows=np.concatenate([result.rows for result in results]),
        ok=np.concatenate([result.ok for result in results]),
        maps=np.concatenate([result.maps for result in results]),
        errors=[error for result in results for error in result.errors],
        target=np.concatenate([result.target for result in results]),
        top_class=np.concatenate([result.top_class for result in results]),
        score=np.concatenate([result.score for result in results]),
        metrics={
            name: np.concatenate([result.metrics[name] for result in results])
            for name in results[0].metrics
        },
    )


class BackgroundWriter:
    """``writer.add`` in one background thread, at most ``pending`` results behind.

    Use as a context manager: leaving it waits for the queued writes (also when leaving
    on an error or Ctrl-C, so that every finished batch is kept); an error in a write is
    raised in the caller at the next ``add`` or on leaving.
    """

    def __init__(self, writer: ChunkWriter, pending: int = 2) -> None:
        self.writer = writer
        self.pending = pending
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gradcam-writer")
        self.futures: deque[Future] = deque()
        self.failed = threading.Event()

    def add(self, result: BatchResult) -> None:
        """Queue ``result``; wait while ``pending`` results are queued already."""
        self.futures.append(self.executor.submit(self._add, result))
        while len(self.futures) > self.pending:
            self.futures.popleft().result()

    def _add(self, result: BatchResult) -> None:
        """In the thread: ``writer.add``, unless an earlier write failed (then the store
        stays as that failure left it, and the error reaches the caller)."""
        if self.failed.is_set():
            return
        try:
            self.writer.add(result)
        except BaseException:
            self.failed.set()
            raise

    def drain(self) -> None:
        """Wait for every queued write (and raise its error, if any)."""
        while self.futures:
            self.futures.popleft().result()

    def __enter__(self) -> BackgroundWriter:
        """Start writing."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Finish the queued writes and stop the thread."""
        try:
            self.drain()
        finally:
            self.executor.shutdown(wait=True)
