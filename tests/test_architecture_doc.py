"""The architecture document's "How to write a new method" example runs and gives the map
its formula says."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from conftest import GapLinearNet

from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

DOC = Path(__file__).resolve().parent.parent / "docs" / "ARCHITECTURE.md"


def test_the_new_method_example_is_its_formula():
    (example,) = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    namespace: dict = {}
    exec(compile(example, str(DOC), "exec"), namespace)
    torch.manual_seed(0)
    model = GapLinearNet().eval()
    x = torch.randn(2, 3, 9, 8)
    cam = namespace["MyCAM"](model, [model.features])
    maps = cam(x, [ClassifierOutputTarget(1), ClassifierOutputTarget(3)], scale=False)
    with torch.no_grad():
        activations = model.features(x)
    # GAP + linear: dy/dA is W_c / (H W) everywhere, so w_k = |W_ck| / (H W).
    weights = model.fc.weight.detach()[[1, 3]].abs() / (9 * 8)
    expected = torch.relu((weights[:, :, None, None] * activations).sum(1))
    torch.testing.assert_close(torch.from_numpy(maps), expected, rtol=1e-5, atol=1e-6)
