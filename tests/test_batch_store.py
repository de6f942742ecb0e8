"""``explain_dataset`` on the local engine: the store holds the per-image API's maps.

Oracles: the library's per-image call on inputs prepared by cam.py's own functions, the
model's scores (top class, softmax probability), the metrics called per image, and the
store of the same job run another way.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from batch_helpers import (
    FLOAT16_ATOL,
    MEAN,
    SIZE,
    STD,
    model_input,
    read_store,
    reference,
    softmax,
    tiny_cnn,
    write_image_folder,
)
from torch.utils.data import Dataset

from pytorch_grad_cam import GradCAM, HiResCAM
from pytorch_grad_cam.batch import explain_dataset
from pytorch_grad_cam.cli import Explainable, to_input_tensor
from pytorch_grad_cam.metrics import DeletionCurve, InsertionCurve
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget


def run(model, dataset, out, **options):
    defaults = dict(image_size=SIZE, mean=MEAN, std=STD, num_workers=0, progress=False)
    return explain_dataset(model, dataset, out, GradCAM, [model[3]], **{**defaults, **options})


@pytest.mark.parametrize("num_workers", [0, 2])
def test_folder_maps_equal_the_per_image_api_and_the_index_the_model(tmp_path, num_workers):
    ids = write_image_folder(tmp_path / "images")
    model = tiny_cnn()
    model.train()  # the job runs in eval mode and gives the flag back
    before = {name: value.clone() for name, value in model.state_dict().items()}
    # Workers from a fork server: earlier tests in this process (the app's) leave threads
    # running, and a worker forked while one of them holds a lock can wait forever.
    context = "forkserver" if num_workers else None
    summary = run(
        model, tmp_path / "images", tmp_path / "out", batch_size=3, num_workers=num_workers,
        multiprocessing_context=context,
    )  # fmt: skip
    assert model.training and all(p.grad is None and p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    model.eval()

    maps, index = read_store(tmp_path / "out")
    inputs = torch.stack([model_input(tmp_path / "images" / name) for name in ids])
    expected, scores = reference(model, model[3], inputs)
    assert index["id"] == ids and index["row"] == list(range(len(ids)))
    assert index["status"] == ["ok"] * len(ids) and index["error"] == [None] * len(ids)
    assert maps.dtype == np.float16 and maps.shape == (len(ids), SIZE, SIZE)
    np.testing.assert_allclose(maps.astype(np.float32), expected, rtol=0, atol=FLOAT16_ATOL)
    assert expected.reshape(len(ids), -1).max(axis=1).min() == 1.0  # maps with signal
    top = scores.argmax(axis=1)
    assert index["top_class"] == top.tolist() and index["target"] == top.tolist()
    probabilities = softmax(scores)[np.arange(len(ids)), top]
    np.testing.assert_allclose(index["score"], probabilities, rtol=1e-5)
    assert set(index["method"]) == {"GradCAM"} and set(index["layer"]) == {"3"}
    assert (summary.samples, summary.ok, summary.failed, summary.explained) == (7, 7, 0, 7)
    assert summary.skipped_files == 1 and summary.map_shape == (7, SIZE, SIZE)


def test_fixed_class_and_uint8_maps(tmp_path):
    ids = write_image_folder(tmp_path / "images", count=4)
    model = tiny_cnn()
    run(model, tmp_path / "images", tmp_path / "out", targets=3, dtype="uint8", batch_size=4)
    maps, index = read_store(tmp_path / "out")
    inputs = torch.stack([model_input(tmp_path / "images" / name) for name in ids])
    expected, scores = reference(model, model[3], inputs, categories=[3] * len(ids))
    assert maps.dtype == np.uint8
    difference = np.abs(maps.astype(np.int32) - np.round(expected * 255).astype(np.int32))
    assert difference.max() <= 1 and (difference == 0).mean() > 0.99  # 1: ties at .5
    assert index["target"] == [3] * 4 and index["top_class"] == scores.argmax(1).tolist()
    np.testing.assert_allclose(index["score"], softmax(scores)[:, 3], rtol=1e-5)


class TensorsWithLabels(Dataset):
    """Model-ready tensors and labels, as a torchvision dataset with a transform gives."""

    def __init__(self, inputs: torch.Tensor, labels: list[int]) -> None:
        self.inputs, self.labels = inputs, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.inputs[index], self.labels[index]


def test_a_dataset_of_tensors_explains_each_label_and_fails_a_bad_one(tmp_path):
    torch.manual_seed(3)
    inputs = torch.randn(5, 3, 24, 20)
    labels = [0, 4, 7, 2, -1]  # 7 and -1 are out of range for 5 classes
    model = tiny_cnn()
    summary = run(
        model, TensorsWithLabels(inputs, labels), tmp_path / "out", targets="label", batch_size=2
    )
    maps, index = read_store(tmp_path / "out")
    good = [0, 1, 3]
    expected, scores = reference(model, model[3], inputs[good], categories=[0, 4, 2])
    assert maps.shape == (5, 24, 20)  # the tensors' own size
    np.testing.assert_allclose(maps[good].astype(np.float32), expected, atol=FLOAT16_ATOL)
    assert np.isnan(maps[[2, 4]]).all()  # failed rows hold the fill value
    assert index["id"] == ["0", "1", "2", "3", "4"]
    assert index["status"] == ["ok", "ok", "failed", "ok", "failed"]
    assert index["row"] == [0, 1, None, 3, None] and index["target"] == [0, 4, None, 2, None]
    assert index["error"][2] == (
        "ValueError: label 7 is out of range 0..4 for a model with 5 classes"
    )
    assert "label -1 is out of range" in index["error"][4]
    np.testing.assert_allclose(
        [index["score"][i] for i in good], softmax(scores)[[0, 1, 2], [0, 4, 2]], rtol=1e-5
    )
    assert (summary.ok, summary.failed) == (3, 2)
    assert [sample_id for sample_id, _ in summary.failures] == ["2", "4"]


def test_corrupt_files_are_recorded_as_failed_and_the_rest_is_right(tmp_path):
    folder = tmp_path / "images"
    ids = write_image_folder(folder, count=6)
    clean = run(tiny_cnn(), folder, tmp_path / "clean", batch_size=4)
    whole = (folder / "sub" / "photo_3.jpg").read_bytes()
    (folder / "sub" / "photo_3.jpg").write_bytes(whole[: len(whole) // 2])  # truncated
    (folder / "zz_noise.png").write_bytes(np.random.default_rng(0).bytes(300))
    summary = run(tiny_cnn(), folder, tmp_path / "out", batch_size=4)
    maps, index = read_store(tmp_path / "out")
    clean_maps, clean_index = read_store(tmp_path / "clean")
    assert index["id"] == [*ids, "zz_noise.png"]
    failed = {
        sample_id: error
        for sample_id, status, error in zip(index["id"], index["status"], index["error"])
        if status == "failed"
    }
    assert set(failed) == {"sub/photo_3.jpg", "zz_noise.png"}
    assert failed["sub/photo_3.jpg"].startswith("OSError: image file is truncated")
    assert failed["zz_noise.png"].startswith("UnidentifiedImageError: cannot identify")
    for row, sample_id in enumerate(ids):
        if sample_id not in failed:
            assert index["row"][row] == row
            np.testing.assert_array_equal(maps[row], clean_maps[clean_index["id"].index(sample_id)])
    assert (clean.failed, summary.ok, summary.failed) == (0, 5, 2)


def test_grayscale_rgba_arrays_and_pil_images_in_an_iterable(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    rgb = rng.uniform(0, 1, (30, 26, 3)).astype(np.float32)
    gray = (rgb.mean(axis=2) * 255).astype(np.uint8)
    rgba = np.concatenate([(rgb * 255).astype(np.uint8), np.zeros((30, 26, 1), np.uint8)], 2)
    items = [
        ("rgb", rgb),
        ("gray", gray),
        ("rgba", rgba),
        ("pil", Image.fromarray(rgba[..., :3])),
        ("wrong", rgb * 255),
    ]
    model = tiny_cnn()
    run(model, items, tmp_path / "out", batch_size=8)
    maps, index = read_store(tmp_path / "out")
    as_rgb = [rgb, np.repeat(gray[..., None], 3, 2) / 255, rgba[..., :3] / 255, rgba[..., :3] / 255]
    explainable = Explainable(None, [], [], mean=MEAN, std=STD, input_size=(SIZE, SIZE))
    inputs = torch.cat([to_input_tensor(image.astype(np.float32), explainable) for image in as_rgb])
    expected, _ = reference(model, model[3], inputs)
    np.testing.assert_allclose(maps[:4].astype(np.float32), expected, atol=FLOAT16_ATOL)
    assert index["status"] == ["ok"] * 4 + ["failed"]
    assert "must be in [0, 1], got values in [0" in index["error"][4]


def test_deletion_and_insertion_auc_equal_the_metrics_per_image(tmp_path):
    ids = write_image_folder(tmp_path / "images", count=3)
    model = tiny_cnn()
    run(
        model,
        tmp_path / "images",
        tmp_path / "out",
        metrics=["deletion", "insertion"],
        metric_steps=8,
        batch_size=2,
    )
    _, index = read_store(tmp_path / "out")
    inputs = torch.stack([model_input(tmp_path / "images" / name) for name in ids])
    maps, scores = reference(model, model[3], inputs)
    for metric, column in (
        (DeletionCurve(n_steps=8), "deletion_auc"),
        (InsertionCurve(n_steps=8), "insertion_auc"),
    ):
        for row in range(3):
            target = [ClassifierOutputSoftmaxTarget(int(scores[row].argmax()))]
            expected = metric(inputs[row : row + 1], maps[row : row + 1], target, model)[0]
            assert index[column][row] == pytest.approx(float(expected), abs=1e-5)


def test_a_finished_run_is_not_run_again_and_a_different_job_is_refused(tmp_path):
    from pytorch_grad_cam.batch import StoreMismatchError

    folder, out = tmp_path / "images", tmp_path / "out"
    write_image_folder(folder, count=3)
    model = tiny_cnn()
    run(model, folder, out)
    stamps = {path: path.stat().st_mtime_ns for path in out.rglob("*") if path.is_file()}
    again = run(model, folder, out)
    assert again.explained == 0 and (again.samples, again.ok) == (3, 3)
    assert stamps == {path: path.stat().st_mtime_ns for path in out.rglob("*") if path.is_file()}

    with pytest.raises(StoreMismatchError, match="method: 'GradCAM' there, 'HiResCAM' now"):
        explain_dataset(
            model,
            folder,
            out,
            HiResCAM,
            [model[3]],
            image_size=SIZE,
            mean=MEAN,
            std=STD,
            num_workers=0,
            progress=False,
        )
    with pytest.raises(StoreMismatchError, match=r"\(weights differ\)"):
        run(tiny_cnn(seed=1), folder, out)
    with pytest.raises(ValueError, match="batch_size=8: the store was started with batch size 32"):
        run(model, folder, out, batch_size=8)
    write_image_folder(folder, count=4)  # one more image: other inputs
    with pytest.raises(StoreMismatchError, match=r"\(ids differ; samples: 3 there, 4 now\)"):
        run(model, folder, out)
    redone = run(model, folder, out, overwrite=True, batch_size=8)
    assert (redone.explained, redone.samples) == (4, 4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"targets": "label"}, "targets='label' needs labels"),
        ({"targets": -2}, "targets=-2: pass 'top'"),
        ({"targets": 5}, "targets=5: out of range 0..4"),
        ({"dtype": "float32"}, "dtype='float32': choose one of float16, uint8"),
        ({"metrics": ["road"]}, "metrics=\\['road'\\]: a list of names from deletion"),
        ({"engine": "spark"}, "engine='spark': choose one of local, ray"),
        ({"batch_size": 0}, "batch_size=0: a whole number"),
    ],
)
def test_bad_arguments_get_clear_errors(tmp_path, options, message):
    write_image_folder(tmp_path / "images", count=1)
    with pytest.raises(ValueError, match=message):
        run(tiny_cnn(), tmp_path / "images", tmp_path / "out", **options)


def test_an_output_folder_with_other_files_or_a_missing_input_folder_is_refused(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("keep me")
    write_image_folder(tmp_path / "images", count=1)
    with pytest.raises(ValueError, match="other files \\(thesis.tex\\) and no manifest.json"):
        run(tiny_cnn(), tmp_path / "images", tmp_path / "busy")
    with pytest.raises(ValueError, match="dataset='.*nowhere': no such folder"):
        run(tiny_cnn(), str(tmp_path / "nowhere"), tmp_path / "out")
    assert (tmp_path / "busy" / "thesis.tex").read_text() == "keep me"


def test_sixteen_bit_and_palette_files_are_explained_as_rgb(tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(2)
    deep = rng.integers(0, 65536, (20, 30), dtype=np.uint16)
    cv2.imwrite(str(folder / "deep.png"), deep)  # 16-bit grayscale
    colours = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(colours).quantize(colors=16).save(folder / "palette.png")  # mode P
    model = tiny_cnn()
    run(model, folder, tmp_path / "out")
    maps, index = read_store(tmp_path / "out")
    explainable = Explainable(None, [], [], mean=MEAN, std=STD, input_size=(SIZE, SIZE))
    deep_rgb = np.repeat(deep[..., None].astype(np.float32) / 65535, 3, axis=2)
    inputs = torch.cat(
        [to_input_tensor(deep_rgb, explainable), model_input(folder / "palette.png")[None]]
    )
    expected, _ = reference(model, model[3], inputs)
    assert index["id"] == ["deep.png", "palette.png"] and index["status"] == ["ok", "ok"]
    np.testing.assert_allclose(maps.astype(np.float32), expected, atol=FLOAT16_ATOL)


def test_the_readme_example_reads_a_store_back(tmp_path):
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.DOTALL) if "zarr" in b]
    ids = write_image_folder(tmp_path / "images", count=3)
    (tmp_path / "images" / ids[0]).write_bytes(b"broken")
    model = tiny_cnn()
    run(model, tmp_path / "images", tmp_path / "out")
    code = block.replace('"OUT"', repr(str(tmp_path / "out")))
    namespace: dict = {}
    exec(code.replace('"IMAGES_DIR"', repr(str(tmp_path / "images"))), namespace)
    assert namespace["failed"].id.tolist() == [ids[0]]
    assert namespace["sample"].id == ids[1]
    maps, _ = read_store(tmp_path / "out")
    np.testing.assert_array_equal(
        namespace["heatmap"].shape, cv2.imread(str(tmp_path / "images" / ids[1])).shape[:2]
    )
    assert namespace["overlay"].dtype == np.uint8 and maps[1].max() == 1.0


def test_the_manifest_names_the_job_and_hashes_the_weights(tmp_path):
    import hashlib
    import json

    import pytorch_grad_cam

    ids = write_image_folder(tmp_path / "images", count=3)
    model = tiny_cnn()
    run(model, tmp_path / "images", tmp_path / "out", batch_size=2, model_name="tiny")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    job = manifest["job"]
    digest = hashlib.sha256()  # the state dict, entry by entry, computed here again
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    ids_digest = hashlib.sha256(b"".join(i.encode() + b"\0" for i in ids)).hexdigest()
    assert (job["library"], job["library_version"]) == ("gradcam", pytorch_grad_cam.__version__)
    assert (job["method"], job["model"], job["layers"]) == ("GradCAM", "tiny", ["3"])
    assert (job["weights_sha256"], job["ids_sha256"]) == (digest.hexdigest(), ids_digest)
    assert (job["targets"], job["dtype"], job["metrics"]) == ("top", "float16", None)
    assert manifest["layout"] == {
        **manifest["layout"],
        "samples": 3,
        "chunk_rows": 2,
        "map_size": [SIZE, SIZE],
        "num_classes": 5,
    }



def test_workers_from_a_fork_server_while_another_thread_holds_a_lock(tmp_path):
    import threading

    write_image_folder(tmp_path / "images", count=4)
    model = tiny_cnn()
    run(model, tmp_path / "images", tmp_path / "plain", batch_size=2)
    lock, release = threading.Lock(), threading.Event()
    holder = threading.Thread(target=lambda: (lock.acquire(), release.wait(), lock.release()))
    holder.start()  # a thread that holds a lock, as a web server's may
    try:
        run(
            model, tmp_path / "images", tmp_path / "workers", batch_size=2, num_workers=2,
            multiprocessing_context="forkserver",
        )  # fmt: skip
    finally:
        release.set()
        holder.join()
    maps, index = read_store(tmp_path / "workers")
    plain_maps, plain_index = read_store(tmp_path / "plain")
    np.testing.assert_array_equal(maps, plain_maps)
    assert index == plain_index and index["status"] == ["ok"] * 4
