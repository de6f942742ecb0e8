"""The transformer usage examples run end to end as scripts (untrained timm models), and
without network they stop at once with a message that says what to do."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("timm")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = {
    "vit_example.py": "deit_tiny_patch16_224",
    "swinT_example.py": "swin_tiny_patch4_window7_224",
}
PICTURES = ("gradcam_cam.jpg", "gradcam_gb.jpg", "gradcam_cam_gb.jpg")


def run_example(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "usage_examples" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


@pytest.fixture(scope="module")
def small_image(tmp_path_factory) -> Path:
    """A 96 x 144 crop of the cat: the models see it at 224 x 224, the pictures keep its size."""
    image = cv2.imread(str(ROOT / "examples" / "cat_and_coffee.png"))[40:136, 30:174]
    path = tmp_path_factory.mktemp("image") / "cat.png"
    cv2.imwrite(str(path), image)
    return path


@pytest.mark.parametrize("script", EXAMPLES)
def test_example_writes_the_three_pictures(tmp_path, small_image, script):
    result = run_example(
        script, "--random-weights", "--image-path", str(small_image), "--output-dir", str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    assert f"timm {EXAMPLES[script]} (untrained) on cpu" in result.stdout
    assert "explaining: " in result.stdout and "with GradCAM" in result.stdout
    assert "InferredReshapeWarning" not in result.stderr  # the reshape is explicit
    plain = cv2.imread(str(small_image)).astype(float)
    pictures = [cv2.imread(str(tmp_path / name)) for name in PICTURES]
    assert all(picture.shape == (96, 144, 3) for picture in pictures)
    assert np.abs(pictures[0] - plain).mean() > 10  # the CAM is over the image
    assert all(picture.std() > 1 for picture in pictures)


@pytest.mark.parametrize("script", EXAMPLES)
def test_example_without_network_stops_at_once(tmp_path, script):
    """HF_HUB_OFFLINE=1 stands for a machine without network, deterministically: the
    examples check it (and otherwise try a 3 s TCP connection to the Hub) before timm
    would spend a minute retrying the download."""
    from pytorch_grad_cam.cli.pretrained import timm_cached_weights as _timm_cached_weights

    if _timm_cached_weights(EXAMPLES[script]) is not None:
        pytest.skip("the pretrained weights are cached on this machine")
    start = time.monotonic()
    result = run_example(script, "--output-dir", str(tmp_path / "out"), HF_HUB_OFFLINE="1")
    assert time.monotonic() - start < 60
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{script}: error: --model {EXAMPLES[script]}: no network")
    assert "--weights PATH" in lines[0] and "--random-weights" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "script, architecture",
    [("vit_example.py", "not a ViT / DeiT"), ("swinT_example.py", "not a Swin")],
)
def test_example_with_another_architecture_is_one_line(tmp_path, script, architecture):
    result = run_example(
        script, "--random-weights", "--model", "resnet18", "--output-dir", str(tmp_path / "out")
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{script}: error: --model resnet18: {architecture} (it lacks ")
    assert not (tmp_path / "out").exists()


def test_timm_names_with_a_pretrained_tag_are_models():
    from pytorch_grad_cam.cli.support import CommandLineError, load_timm_model

    model = load_timm_model("deit_tiny_patch16_224.fb_in1k", random_weights=True)
    assert type(model).__name__ == "VisionTransformer"
    with pytest.raises(CommandLineError, match="--model deit_tiny: not a timm model"):
        load_timm_model("deit_tiny", random_weights=True)
