"""``import pytorch_grad_cam`` loads torch and little else: the heavy optional libraries
are imported where they are used, so cam.py, the app and a service start fast."""

import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
#: Imported only by the code that needs them. torchvision alone pulls in torch._dynamo
#: (about two seconds); the rest are optional extras or slow to load.
LAZY = ("torchvision", "sklearn", "zarr", "pyarrow", "ray", "gradio", "matplotlib", "timm",
        "transformers", "scipy")  # fmt: skip


def test_the_package_import_loads_none_of_the_heavy_libraries():
    code = (
        "import sys, pytorch_grad_cam; "
        f"print(sorted(name for name in {LAZY!r} if name in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_lazy_imports_still_work_when_used():
    from pytorch_grad_cam.metrics.perturbation_curves import gaussian_blur
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    image = torch.zeros(1, 1, 9, 9)
    image[..., 4, 4] = 1.0
    blurred = gaussian_blur(image, sigma=1.0)
    assert abs(float(blurred.sum()) - 1.0) < 1e-4  # blurring keeps the mass
    assert float(blurred.max()) < 0.5

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    target = FasterRCNNBoxScoreTarget(labels=[1], bounding_boxes=boxes)
    output = {"boxes": boxes, "labels": torch.tensor([1]), "scores": torch.tensor([0.5])}
    assert float(target(output)) == 1.5  # IoU 1 + score 0.5
