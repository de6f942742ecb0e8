"""What a run did and what its store holds: ``DatasetSummary``, printed at the end."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytorch_grad_cam.batch.store import INDEX, MAPS, MAPS_ARRAY, MapStore

#: How many failures the summary lists (the index has them all).
LISTED_FAILURES = 5


@dataclass
class DatasetSummary:
    """What a run did, and what the store holds."""

    out: Path
    #: Samples in the store, and how many of them are ``ok`` / ``failed``.
    samples: int
    ok: int
    failed: int
    #: Samples explained by this run (0 when the store was complete already).
    explained: int
    seconds: float
    #: Files of an input folder that are not images.
    skipped_files: int = 0
    map_shape: tuple[int, ...] = ()
    map_dtype: str = "float16"
    #: The first few failures: ``(id, error)``.
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        """The throughput of this run."""
        return self.explained / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        """A few lines: images, time, images/s, failures, where the store is."""
        if self.explained:
            head = (
                f"explained {self.explained} images in {self.seconds:.1f} s "
                f"({self.images_per_second:.1f} images/s)"
            )
        else:
            head = "nothing to do: the store is complete"
        counts = f"{self.samples} samples: {self.ok} ok, {self.failed} failed"
        if self.skipped_files:
            plural = "s" if self.skipped_files > 1 else ""
            counts += f"; {self.skipped_files} file{plural} skipped (not images)"
        lines = [head, counts]
        lines += [f"  failed: {sample_id}: {error}" for sample_id, error in self.failures]
        if self.failed > len(self.failures):
            lines.append(f"  ... and {self.failed - len(self.failures)} more (see the index)")
        shape = " x ".join(map(str, self.map_shape))
        lines.append(f"maps:  {self.out / MAPS} (array '{MAPS_ARRAY}', {shape} {self.map_dtype})")
        lines.append(f"index: {self.out / INDEX}")
        return "\n".join(lines)


def summarize(
    store: MapStore, layout: dict[str, Any], skipped_files: int, explained: int, seconds: float
) -> DatasetSummary:
    """The summary of a finished store (its index read back)."""
    index = store.read_index()
    status = index.column("status").to_pylist()
    ids = index.column("id").to_pylist()
    errors = index.column("error").to_pylist()
    failed = [(i, error) for i, state, error in zip(ids, status, errors) if state == "failed"]
    return DatasetSummary(
        out=store.out,
        samples=index.num_rows,
        ok=status.count("ok"),
        failed=len(failed),
        explained=explained,
        seconds=seconds,
        skipped_files=skipped_files,
        map_shape=(layout["samples"], *layout["map_size"]),
        map_dtype=layout["dtype"],
        failures=failed[:LISTED_FAILURES],
    )
