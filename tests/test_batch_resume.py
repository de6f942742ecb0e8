"""A killed run resumes to the same store as an uninterrupted one, each id once.

The oracle is the store of the same job run without interruption: maps bit for bit,
the index row for row. A subprocess is killed with SIGINT (Ctrl-C) and with SIGKILL
(nothing runs after it) part-way; a crash between a chunk's maps and its index part is
made in-process, where it can be placed exactly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from batch_helpers import read_store, run_tiny_job, write_image_folder

from pytorch_grad_cam.batch.store import MapStore

ROOT = Path(__file__).resolve().parent.parent
IMAGES, BATCH = 24, 2
CHUNKS = IMAGES // BATCH

#: The job, slowed down by a sleep after each batch so that it can be killed part-way.
SCRIPT = """
import sys, time
sys.path[:0] = [{root!r}, {tests!r}]
from batch_helpers import MEAN, SIZE, STD, tiny_cnn
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.batch import explain_dataset

model = tiny_cnn()
explain_dataset(model, sys.argv[1], sys.argv[2], GradCAM, [model[3]], image_size=SIZE,
                mean=MEAN, std=STD, batch_size={batch}, num_workers=1, progress=False,
                on_batch=lambda done: time.sleep(0.1))
"""


def run(folder: Path, out: Path, **options):
    return run_tiny_job(folder, out, batch_size=BATCH, **options)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The images and the uninterrupted run's store."""
    base = tmp_path_factory.mktemp("resume")
    ids = write_image_folder(base / "images", count=IMAGES)
    run(base / "images", base / "reference")
    return base / "images", ids, read_store(base / "reference")


def assert_same_store(out: Path, reference, ids) -> None:
    maps, index = read_store(out)
    reference_maps, reference_index = reference
    np.testing.assert_array_equal(maps, reference_maps)
    assert index == reference_index
    assert index["id"] == ids and len(set(index["id"])) == IMAGES  # each id once


@pytest.mark.parametrize(
    "signal_number", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"]
)
def test_a_killed_run_resumes_to_the_uninterrupted_store(tmp_path, job, signal_number):
    folder, ids, reference = job
    script = tmp_path / "job.py"
    tests = str(ROOT / "tests")
    script.write_text(textwrap.dedent(SCRIPT.format(root=str(ROOT), tests=tests, batch=BATCH)))
    out = tmp_path / "out"
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, str(script), str(folder), str(out)],
        env=environment,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a job started in a terminal
    )
    store = MapStore(out)
    deadline = time.monotonic() + 120
    while len(store.committed_chunks()) < 3:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.02)
    os.killpg(process.pid, signal_number)  # Ctrl-C reaches the loader's workers too
    stderr = process.communicate(timeout=60)[1]
    assert process.returncode != 0
    if signal_number == signal.SIGINT:
        assert "KeyboardInterrupt" in stderr
    assert not (out / "index.parquet").exists()
    committed = store.committed_chunks()
    assert 3 <= len(committed) < CHUNKS and committed == set(range(len(committed)))

    resumed = run(folder, out)
    assert resumed.explained == IMAGES - BATCH * len(committed)  # the rest, and only it
    assert_same_store(out, reference, ids)
    assert run(folder, out).explained == 0


def test_a_crash_between_the_maps_and_the_index_part_redoes_that_chunk(tmp_path, job, monkeypatch):
    folder, ids, reference = job
    out = tmp_path / "out"
    original = MapStore.write_chunk

    def crash_at_chunk_3(self, maps, chunk, values, part):
        if chunk == 3:
            maps[chunk * BATCH : chunk * BATCH + len(values)] = values  # maps written...
            raise RuntimeError("killed")  # ... and the part never committed
        original(self, maps, chunk, values, part)

    monkeypatch.setattr(MapStore, "write_chunk", crash_at_chunk_3)
    with pytest.raises(RuntimeError, match="killed"):
        run(folder, out)
    monkeypatch.undo()
    store = MapStore(out)
    assert store.committed_chunks() == {0, 1, 2} and not store.is_complete()
    stale = store.parts_path / "chunk-00000005.parquet.4242.tmp"
    stale.write_bytes(b"half a file")  # a commit that a kill interrupted

    resumed = run(folder, out)
    assert resumed.explained == IMAGES - 3 * BATCH
    assert not stale.exists() and not store.parts_path.exists()  # compacted
    assert_same_store(out, reference, ids)
