"""``gradcam explain-dataset``: the shipped folder with the pretrained default model,
the flags reaching the store, and one-line errors (status 2).

Run in-process through ``cli.main``, as the installed ``gradcam`` command dispatches.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from batch_helpers import read_store, reference, write_image_folder

from pytorch_grad_cam import GradCAM, cli
from pytorch_grad_cam.batch import command
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

SHIPPED = sorted(path.name for path in command.EXAMPLE_FOLDER.iterdir())


def explain_dataset(*args: str) -> int:
    return cli.main(["explain-dataset", *args])


def error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_the_shipped_folder_with_the_pretrained_model(tmp_path, capsys):
    out = tmp_path / "out"
    assert explain_dataset("--out", str(out), "--workers", "0", "--no-progress") == 0
    printed = capsys.readouterr().out
    assert "efficientnet_lite0 (ImageNet weights" in printed
    assert "explained 6 images" in printed and "6 samples: 6 ok, 0 failed" in printed
    assert f"maps:  {out / 'maps.zarr'} (array 'maps', 6 x 224 x 224 float16)" in printed

    maps, index = read_store(out)
    model = cli.load_efficientnet_lite0()
    explainable = cli.Explainable(
        model, [], [], mean=cli.LITE_MEAN, std=cli.LITE_STD, input_size=(224, 224)
    )
    inputs = torch.cat(
        [
            cli.to_input_tensor(cli.read_image(str(command.EXAMPLE_FOLDER / name)), explainable)
            for name in SHIPPED
        ]
    )
    layer = cli.get_layer(model, cli.DEFAULT_MODEL_LAYER)
    expected, scores = reference(model, layer, inputs)
    assert index["id"] == SHIPPED and index["status"] == ["ok"] * 6
    assert index["top_class"] == index["target"] == scores.argmax(1).tolist()
    names = dict(zip(SHIPPED, (cli.imagenet_categories()[c] for c in index["top_class"])))
    assert "cat" in names["cat.jpg"] and names["cup_mirrored.jpg"] == "espresso"
    np.testing.assert_allclose(maps.astype(np.float32), expected, atol=2.5e-4)
    assert set(index["layer"]) == {"head_activation"}

    assert explain_dataset("--out", str(out), "--no-progress") == 0
    assert "nothing to do: the store is complete" in capsys.readouterr().out
    assert explain_dataset("--out", str(out), "--method", "hirescam") == 2
    assert error_line(capsys) == (
        f"gradcam explain-dataset: error: --out '{out}' holds a store made by another job "
        "(method: 'GradCAM' there, 'HiResCAM' now); resuming would mix the two; pass "
        "another --out, or --overwrite to start again"
    )


def test_labels_dtype_metrics_and_model_flags_reach_the_store(tmp_path, capsys):
    folder = tmp_path / "images"
    ids = write_image_folder(folder, count=4)
    labels = tmp_path / "labels.csv"
    labels.write_text(f"id,label\n{ids[0]},7\n{ids[1]},1000\n{ids[3]},281\n")  # ids[2]: none
    out = tmp_path / "out"
    status = explain_dataset(
        str(folder),
        "--out",
        str(out),
        "--model",
        "resnet18",
        "--random-weights",
        "--image-size",
        "64",
        "--labels",
        str(labels),
        "--dtype",
        "uint8",
        "--metrics",
        "deletion",
        "--metric-steps",
        "4",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--no-progress",
    )
    assert status == 0, capsys.readouterr().err
    maps, index = read_store(out)
    assert index["status"] == ["ok", "failed", "failed", "ok"]
    assert index["target"] == [7, None, None, 281]
    assert index["error"][1] == (
        "ValueError: label 1000 is out of range 0..999 for a model with 1000 classes"
    )
    assert index["error"][2] == f"LookupError: no label for '{ids[2]}' in the labels given"
    assert maps.dtype == np.uint8 and maps.shape == (4, 64, 64)
    assert index["deletion_auc"][0] is not None and index["deletion_auc"][1] is None

    model = cli.load_torchvision_model("resnet18", random_weights=True)
    explainable = cli.Explainable(model, [], [], input_size=(64, 64))
    with GradCAM(model, [model.layer4[-1]]) as cam:
        for row, category in ((0, 7), (3, 281)):
            image = cli.to_input_tensor(cli.read_image(str(folder / ids[row])), explainable)
            expected = cam(image, [ClassifierOutputTarget(category)])[0]
            difference = np.abs(maps[row].astype(int) - np.round(expected * 255).astype(int))
            assert difference.max() <= 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["/no/such/folder"], "IMAGES_DIR /no/such/folder: no such folder"),
        (["--method", "nope"], "--method nope: unknown method; choose one of"),
        (["--method", "attentionrollout"], "--method attentionrollout: not a CAM method"),
        (["--labels", "/no/labels.csv"], "--labels /no/labels.csv: No such file or directory"),
        (["--metrics", "road"], "argument --metrics: 'road': a comma-separated list of"),
        (["--batch-size", "0"], "argument --batch-size: '0' is not a number above 0"),
    ],
)
def test_errors_are_one_line_with_status_2(tmp_path, capsys, arguments, message):
    assert explain_dataset("--out", str(tmp_path / "out"), *arguments) == 2
    line = error_line(capsys)
    assert line.startswith(f"gradcam explain-dataset: error: {message}"), line
    assert not (tmp_path / "out").exists()


def test_a_folder_without_images_is_an_error(tmp_path, capsys):
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("")
    arguments = ["--model", "resnet18", "--random-weights"]
    assert explain_dataset(str(tmp_path / "texts"), "--out", str(tmp_path / "out"), *arguments) == 2
    assert error_line(capsys) == (
        f"gradcam explain-dataset: error: IMAGES_DIR '{tmp_path / 'texts'}': no image files "
        "under it (1 other files); images are found by their ending: .bmp, .gif, .jpeg, "
        ".jpg, .pbm, .pgm, .png, .ppm, .tif, .tiff, .webp"
    )


def test_bad_labels_file_and_an_out_file_in_the_way(tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\ncat.jpg,tabby\n")
    assert explain_dataset("--out", str(tmp_path / "out"), "--labels", str(labels)) == 2
    assert error_line(capsys).endswith(
        f"--labels {labels}: line 2: label 'tabby' is not a class index"
    )
    (tmp_path / "file").write_text("")
    assert explain_dataset("--out", str(tmp_path / "file")) == 2
    assert error_line(capsys).endswith(
        f"--out {tmp_path / 'file'}: a file is in the way; pass a folder"
    )


def test_ctrl_c_stops_with_status_130_and_says_how_to_continue(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "explain_dataset", interrupted)
    arguments = ["--out", str(tmp_path / "out"), "--model", "resnet18", "--random-weights"]
    assert explain_dataset(*arguments) == 130
    assert error_line(capsys) == (
        "gradcam explain-dataset: interrupted; the finished batches are stored: run the same "
        "command again to continue"
    )


def test_ray_is_imported_only_when_its_engine_runs():
    import subprocess
    import sys

    code = (
        "import sys, pytorch_grad_cam, pytorch_grad_cam.batch, pytorch_grad_cam.batch.command; "
        "print(sorted(name for name in ('ray', 'gradio') if name in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        cwd=command.EXAMPLE_FOLDER.parents[2],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
