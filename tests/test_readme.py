"""The README's code runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)


def test_the_library_example_runs_and_gives_scaled_maps():
    example = python_blocks()[0]
    namespace: dict = {}
    torch.manual_seed(0)  # random weights: some seeds give a class no positive evidence
    exec(compile(example, str(README), "exec"), namespace)
    grayscale = namespace["grayscale_cam"]
    assert grayscale.shape == (2, 224, 224) and grayscale.dtype == np.float32
    assert grayscale.reshape(2, -1).max(axis=1).tolist() == [1.0, 1.0]
    assert grayscale.min() == 0.0
    assert namespace["visualization"].shape == (224, 224, 3)
    assert namespace["model_outputs"].shape == (2, 1000)
    assert namespace["cam"].outputs is None  # released when the with block ended


def test_the_attention_rollout_example_runs_on_a_timm_deit():
    import timm

    (rollout_example,) = [block for block in python_blocks() if "AttentionRollout" in block]
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=64)
    namespace: dict = {"model": model.eval(), "input_tensor": torch.randn(2, 3, 64, 64)}
    exec(compile(rollout_example, str(README), "exec"), namespace)
    maps = namespace["maps"]
    assert maps.shape == (2, 64, 64) and maps.dtype == np.float32
    assert maps.min() == 0.0 and maps.reshape(2, -1).max(axis=1).tolist() == [1.0, 1.0]


def test_the_metrics_example_runs_and_gradcam_is_scored():
    """The metrics snippet, on the first example's variables with a smaller model."""
    import torchvision

    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    (metrics_example,) = [block for block in python_blocks() if "ROADCombined" in block]
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    target_layers = [model.layer4[-1]]
    input_tensor = torch.randn(2, 3, 64, 64)
    targets = [ClassifierOutputTarget(281), ClassifierOutputTarget(285)]
    namespace: dict = {
        "model": model,
        "target_layers": target_layers,
        "input_tensor": input_tensor,
        "targets": targets,
        "grayscale_cam": GradCAM(model, target_layers)(input_tensor, targets),
    }
    exec(compile(metrics_example, str(README), "exec"), namespace)
    for name in ("morf", "road", "deletion", "insertion", "random_deletion"):
        values = namespace[name]
        assert values.shape == (2,) and np.isfinite(values).all(), name
    assert ((namespace["deletion"] >= 0) & (namespace["insertion"] <= 1)).all()
    assert list(namespace["correlations"]) == ["original", "fc", "layer4"]
    assert namespace["correlations"]["original"].tolist() == [1.0, 1.0]


def test_ci_runs_the_readme_test_command():
    ci_script = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert 'pip install -e "\\.\\[test\\]"' in ci_script
    commands = [line for line in README.read_text().splitlines() if line.startswith("pip ")]
    assert any(line.startswith('pip install -e ".[test]"') for line in commands)
    assert any("python cam.py" in line for line in commands)
