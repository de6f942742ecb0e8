"""cam.py on the shipped image with the pretrained EfficientNet-Lite0 (offline)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch

from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.cli import EXAMPLE_IMAGE, load_default_model, read_image
from pytorch_grad_cam.utils.image import preprocess_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

ROOT = Path(__file__).resolve().parent.parent
TIGER_CAT, ESPRESSO = 282, 967


def run_cam_py(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "cam.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cam_py_writes_the_three_images(tmp_path):
    result = run_cam_py("--output-dir", str(tmp_path), "--method", "GradCAM")
    assert result.returncode == 0, result.stderr
    assert "explaining: 967 espresso" in result.stdout
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == ["gradcam_cam.jpg", "gradcam_cam_gb.jpg", "gradcam_gb.jpg"]
    for name in names:
        image = cv2.imread(str(tmp_path / name))
        assert image.shape == (224, 448, 3)
        assert image.std() > 5  # a picture, not a flat field


@pytest.fixture(scope="module")
def pretrained():
    model, layer = load_default_model()
    return model, layer, preprocess_image(read_image(str(EXAMPLE_IMAGE)))


@pytest.mark.parametrize("category, object_half", [(TIGER_CAT, "left"), (ESPRESSO, "right")])
def test_each_class_is_found_on_its_object(pretrained, category, object_half):
    model, layer, x = pretrained
    grayscale = GradCAM(model, [layer])(x, [ClassifierOutputTarget(category)])[0]
    left, right = grayscale[:, :224].mean(), grayscale[:, 224:].mean()
    inside, outside = (left, right) if object_half == "left" else (right, left)
    assert inside > 2 * outside
    assert next(model.parameters()).grad is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["--image-path", "no/such/image.png"], "--image-path no/such/image.png: no such file"),
        (["--method", "nosuchcam"], "--method nosuchcam: unknown method; choose one of"),
        (["--target-category", "1000"], "--target-category 1000: out of range 0..999"),
    ],
)
def test_errors_exit_non_zero_and_write_nothing(tmp_path, args, message):
    output_dir = tmp_path / "out"
    result = run_cam_py("--output-dir", str(output_dir), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not output_dir.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_cuda(tmp_path):
    result = run_cam_py("--output-dir", str(tmp_path / "out"), "--device", "cuda")
    assert result.returncode == 2
    assert "--device cuda: not available on this machine" in result.stderr


def test_cam_py_gradient_free_method_shows_progress(tmp_path):
    result = run_cam_py(
        "--output-dir", str(tmp_path), "--method", "ablationcam", "--batch-size", "256"
    )
    assert result.returncode == 0, result.stderr
    assert "AblationCAM" in result.stderr and "100%" in result.stderr
    overlay = cv2.imread(str(tmp_path / "ablationcam_cam.jpg"))
    assert overlay.shape == (224, 448, 3) and overlay.std() > 5
