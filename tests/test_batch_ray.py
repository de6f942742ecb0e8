"""The Ray engine writes the same store as the local one, and resumes the same way.

The test starts a local Ray cluster itself (2 CPUs, a small object store, no
dashboard) and shuts it down. Ray's start and its actors' imports take seconds, so
there is one Ray run: it finishes a store whose first chunk the local engine wrote
before a crash, and the result must equal the local engine's uninterrupted store bit
for bit, and the per-image API's maps to float16 precision.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from batch_helpers import (
    FLOAT16_ATOL,
    model_input,
    read_store,
    reference,
    run_tiny_job,
    tiny_cnn,
    write_image_folder,
)

from pytorch_grad_cam.batch import RayOptions
from pytorch_grad_cam.batch.store import MapStore

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(
        num_cpus=2, object_store_memory=80 * 2**20, include_dashboard=False, log_to_driver=False
    )
    yield
    ray.shutdown()


def run(folder, out, **options):
    return run_tiny_job(folder, out, metrics=["deletion"], metric_steps=4, **options)


def test_the_ray_engine_finishes_a_store_as_the_local_engine_would(
    tmp_path, ray_cluster, monkeypatch
):
    folder = tmp_path / "images"
    ids = write_image_folder(folder, count=10)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))  # a header only
    ids = sorted([*ids, "broken.png"])
    local = run(folder, tmp_path / "local")

    original = MapStore.write_chunk

    def crash_after_chunk_0(self, maps, chunk, values, part):
        if chunk > 0:
            raise RuntimeError("killed")
        original(self, maps, chunk, values, part)

    monkeypatch.setattr(MapStore, "write_chunk", crash_after_chunk_0)
    with pytest.raises(RuntimeError, match="killed"):
        run(folder, tmp_path / "ray")
    monkeypatch.undo()
    assert MapStore(tmp_path / "ray").committed_chunks() == {0}

    on_ray = run(folder, tmp_path / "ray", engine="ray", ray_options=RayOptions(actors=2))
    assert on_ray.explained == len(ids) - 3 and ray.is_initialized()  # ours: left running
    assert (on_ray.ok, on_ray.failed) == (local.ok, local.failed) == (10, 1)

    maps, index = read_store(tmp_path / "ray")
    local_maps, local_index = read_store(tmp_path / "local")
    np.testing.assert_array_equal(maps, local_maps)
    assert index == local_index and index["id"] == ids
    broken = ids.index("broken.png")
    assert index["status"][broken] == "failed" and index["row"][broken] is None

    good = [row for row, sample_id in enumerate(ids) if sample_id != "broken.png"]
    model = tiny_cnn()
    inputs = torch.stack([model_input(folder / ids[row]) for row in good])
    expected, scores = reference(model, model[3], inputs)
    np.testing.assert_allclose(maps[good].astype(np.float32), expected, atol=FLOAT16_ATOL)
    assert [index["top_class"][row] for row in good] == scores.argmax(1).tolist()
