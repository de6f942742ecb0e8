"""The output folder: maps in zarr, one index row per sample in parquet, a manifest.

Layout of ``OUT/``::

    manifest.json     what made the store (see ``manifest``)
    maps.zarr/        a zarr group; its array ``maps`` is N x H x W, chunked by batch
    index.parquet     one row per sample, in row order: written when the run is done
    parts/            while running: one committed parquet file per finished chunk

Rows are assigned from the sources' fixed order (sample ``i`` is row ``i``) and chunk
``k`` holds rows ``k * chunk_rows ..``, so a run's layout depends only on its inputs.

Crash consistency: a chunk's maps are written to zarr first; only then is its part of
the index committed, written to a temporary file and renamed into ``parts/`` (an atomic
rename). A chunk counts as done exactly when its part exists. A run killed at any point
(SIGINT, SIGKILL, a lost node) leaves whole chunks with their parts, and perhaps one
chunk whose maps were (partly) written without a part: a resumed run computes that
chunk again and overwrites it with the same values. When every chunk has its part the
parts are compacted into ``index.parquet`` (again by rename) and removed. This holds
for a killed process; after a power cut, only what the operating system had flushed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from pytorch_grad_cam.batch.explainer import FILL_VALUES, METRICS
from pytorch_grad_cam.batch.manifest import FORMAT

MANIFEST = "manifest.json"
MAPS = "maps.zarr"
MAPS_ARRAY = "maps"
INDEX = "index.parquet"
PARTS = "parts"
_PART_NAME = re.compile(r"chunk-(\d{8})\.parquet")

#: The index's columns besides the metrics', in order.
INDEX_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("row", pa.int64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("target", pa.int64()),
        ("score", pa.float32()),
        ("top_class", pa.int64()),
        ("method", pa.string()),
        ("layer", pa.string()),
    ]
)


def index_schema(metrics: Sequence[str]) -> pa.Schema:
    """``INDEX_SCHEMA`` plus a float32 column per metric (``deletion_auc``, ...)."""
    schema = INDEX_SCHEMA
    for name in metrics:
        schema = schema.append(pa.field(METRICS[name], pa.float32()))
    return schema


class MapStore:
    """An output folder ``out`` (see the module's docstring)."""

    def __init__(self, out: str | os.PathLike) -> None:
        self.out = Path(out)
        self.manifest_path = self.out / MANIFEST
        self.maps_path = self.out / MAPS
        self.index_path = self.out / INDEX
        self.parts_path = self.out / PARTS

    # ----------------------------------------------------------------- state
    def manifest(self) -> dict[str, Any] | None:
        """The manifest, or ``None`` when the folder holds no store."""
        if not self.manifest_path.is_file():
            return None
        manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ValueError(
                f"{self.manifest_path} is not a gradcam dataset store's manifest (format "
                f"{FORMAT}); choose another output folder"
            )
        return manifest

    def is_complete(self) -> bool:
        """Whether the run finished: ``index.parquet`` exists."""
        return self.index_path.is_file()

    def check_usable(self) -> None:
        """Fail when ``out`` is a file, or a folder with other things and no manifest."""
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"out={str(self.out)!r} is a file; pass a folder for the store")
        if self.out.is_dir() and not self.manifest_path.exists():
            others = sorted(
                path.name for path in self.out.iterdir() if not path.name.endswith(".tmp")
            )
            if others:
                shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
                raise ValueError(
                    f"out={str(self.out)!r} is a folder with other files ({shown}) and no "
                    f"{MANIFEST}; pass an empty or new folder"
                )

    def clear(self) -> None:
        """Remove the store's own files (and nothing else) from ``out``."""
        for path in (self.index_path, self.manifest_path):
            path.unlink(missing_ok=True)
        for folder in (self.maps_path, self.parts_path):
            if folder.exists():
                shutil.rmtree(folder)

    def create(self, manifest: dict[str, Any]) -> None:
        """Write the manifest, then the empty ``maps`` array of its layout."""
        layout = manifest["layout"]
        self.out.mkdir(parents=True, exist_ok=True)
        write_atomically(self.manifest_path, json.dumps(manifest, indent=2).encode())
        self.open_maps(layout, create=True)
        self.parts_path.mkdir(exist_ok=True)

    def open_maps(self, layout: dict[str, Any], create: bool = False) -> zarr.Array:
        """The ``maps`` array, created (when ``create`` and missing) with ``layout``."""
        shape = (layout["samples"], *layout["map_size"])
        if not create or (self.maps_path / MAPS_ARRAY).exists():
            array = zarr.open_array(str(self.maps_path), path=MAPS_ARRAY, mode="r+")
            if tuple(array.shape) != shape or array.chunks[0] != layout["chunk_rows"]:
                raise ValueError(
                    f"{self.maps_path} has shape {array.shape} and chunks {array.chunks}, not "
                    f"the manifest's {shape} in chunks of {layout['chunk_rows']}; it was "
                    "changed by hand: remove the folder and start again"
                )
            return array
        group = zarr.open_group(str(self.maps_path), mode="a")
        return group.create_array(
            MAPS_ARRAY,
            shape=shape,
            chunks=(layout["chunk_rows"], *layout["map_size"]),
            dtype=layout["dtype"],
            fill_value=FILL_VALUES[layout["dtype"]],
            dimension_names=("sample", "y", "x"),
            overwrite=True,
        )

    def committed_chunks(self) -> set[int]:
        """The chunks whose index part is committed (their maps are written)."""
        if not self.parts_path.is_dir():
            return set()
        matches = (_PART_NAME.fullmatch(path.name) for path in self.parts_path.iterdir())
        return {int(match.group(1)) for match in matches if match}

    def pending_chunks(self, layout: dict[str, Any]) -> list[range]:
        """The rows of each chunk still to do, in order (a chunk is done once its part
        is committed)."""
        samples, chunk_rows = layout["samples"], layout["chunk_rows"]
        done = self.committed_chunks()
        return [
            range(start, min(start + chunk_rows, samples))
            for start in range(0, samples, chunk_rows)
            if start // chunk_rows not in done
        ]

    def remove_unfinished_commits(self) -> None:
        """Delete the temporary files of commits that a killed run did not finish."""
        for folder in (self.out, self.parts_path):
            if folder.is_dir():
                for path in folder.glob("*.tmp"):
                    path.unlink(missing_ok=True)

    # ----------------------------------------------------------------- writing
    def write_chunk(self, maps: zarr.Array, chunk: int, values: np.ndarray, part: pa.Table) -> None:
        """Chunk ``chunk``'s maps, then (atomically) its part of the index."""
        start = chunk * maps.chunks[0]
        maps[start : start + len(values)] = values
        sink = pa.BufferOutputStream()
        pq.write_table(part, sink)
        write_atomically(self.part_path(chunk), sink.getvalue().to_pybytes())

    def part_path(self, chunk: int) -> Path:
        """Where chunk ``chunk``'s part of the index goes."""
        return self.parts_path / f"chunk-{chunk:08d}.parquet"

    def finish(self, layout: dict[str, Any], metrics: Sequence[str]) -> pa.Table:
        """Join the parts into ``index.parquet``, then remove them; every chunk must be
        committed."""
        chunks = -(-layout["samples"] // layout["chunk_rows"])
        missing = sorted(set(range(chunks)) - self.committed_chunks())
        if missing:
            raise RuntimeError(f"chunks {missing[:10]} were not written; run again to resume")
        schema = index_schema(metrics)
        tables = [pq.read_table(self.part_path(chunk), schema=schema) for chunk in range(chunks)]
        index = pa.concat_tables(tables) if tables else schema.empty_table()
        sink = pa.BufferOutputStream()
        pq.write_table(index, sink)
        write_atomically(self.index_path, sink.getvalue().to_pybytes())
        shutil.rmtree(self.parts_path, ignore_errors=True)
        return index

    def read_index(self) -> pa.Table:
        """The finished run's index."""
        return pq.read_table(self.index_path)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` by a rename, so that ``path`` is whole or absent."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
