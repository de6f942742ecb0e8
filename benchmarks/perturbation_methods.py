"""AblationCAM and ScoreCAM: time and memory against plain forward passes of the same model.

    python benchmarks/perturbation_methods.py [--repeats 5] [--models resnet18 resnet50]

Random weights, one 224 px image, target layer ``layer4[-1]``, batch size 32, CPU.
Printed per model:
- AblationCAM time / time of one plain ``no_grad`` forward (target: at most 3);
- ScoreCAM time / (distinct channel maps x per-image time of a plain forward at batch
  size 32) (target: at most 1.15);
- peak resident memory of ScoreCAM above the model's own forward (target: under 300 MB
  for resnet50), measured in a fresh subprocess per figure with Linux's VmHWM.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import torch
import torchvision

from pytorch_grad_cam import AblationCAM
from pytorch_grad_cam.score_cam import ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

BATCH_SIZE = 32
CATEGORY = 281


def median_seconds(function, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def distinct_channel_maps(model, x) -> int:
    """Channels of layer4[-1] whose min-max normalised maps differ (ScoreCAM's forwards)."""
    captured = []
    handle = model.layer4[-1].register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        model(x)
    handle.remove()
    maps = captured[0][0].flatten(1)
    low = maps.min(dim=1, keepdim=True).values
    spread = maps.max(dim=1, keepdim=True).values - low
    normalised = torch.where(spread > 0, (maps - low) / spread.clamp_min(1e-30), 0.0)
    return torch.unique(normalised, dim=0).shape[0]


def build(name: str):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    return model, torch.randn(1, 3, 224, 224)


def timings(name: str, repeats: int) -> None:
    model, x = build(name)
    targets = [ClassifierOutputTarget(CATEGORY)]
    batch = x.expand(BATCH_SIZE, -1, -1, -1).contiguous()

    def plain(inputs):
        with torch.no_grad():
            model(inputs)

    forward = median_seconds(lambda: plain(x), repeats)
    per_image = median_seconds(lambda: plain(batch), repeats) / BATCH_SIZE
    ablation = AblationCAM(model, [model.layer4[-1]], batch_size=BATCH_SIZE)
    ablation_seconds = median_seconds(lambda: ablation(x, targets), repeats)
    score = ScoreCAM(model, [model.layer4[-1]], batch_size=BATCH_SIZE)
    score_seconds = median_seconds(lambda: score(x, targets), max(1, repeats // 2))
    distinct = distinct_channel_maps(model, x)
    print(f"\n{name} @224px, layer4[-1], batch_size={BATCH_SIZE}")
    print(f"  plain forward, 1 image            {forward * 1e3:8.1f} ms")
    print(f"  plain forward per image @32       {per_image * 1e3:8.1f} ms")
    print(
        f"  AblationCAM ({ablation.ablation_paths[0]} path)      {ablation_seconds * 1e3:8.1f} ms"
        f"   = {ablation_seconds / forward:5.2f} x forward   (target <= 3)"
    )
    print(
        f"  ScoreCAM ({distinct} distinct maps)     {score_seconds * 1e3:8.1f} ms"
        f"   = {score_seconds / (distinct * per_image):5.2f} x distinct x per-image forward"
        "   (target <= 1.15)"
    )


MEMORY_PROBE = """
import sys, torch, torchvision
from pytorch_grad_cam.score_cam import ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

torch.manual_seed(0)
model = getattr(torchvision.models, sys.argv[1])(weights=None).eval()
x = torch.randn(1, 3, 224, 224)
with torch.no_grad():
    model(x)
reset_peak()
with torch.no_grad():
    model(x)
forward_peak = peak_mb()
cam = ScoreCAM(model, [model.layer4[-1]], batch_size=int(sys.argv[2]))
reset_peak()
cam(x, [ClassifierOutputTarget(281)])
print(forward_peak, peak_mb())
"""


def memory(name: str, batch_size: int) -> None:
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, name, str(batch_size)],
        capture_output=True,
        text=True,
        check=True,
    )
    forward_peak, score_peak = (float(v) for v in result.stdout.split())
    print(
        f"  ScoreCAM peak RSS above the forward's, batch_size={batch_size:3d}: "
        f"{score_peak - forward_peak:7.1f} MB   (forward alone peaks at {forward_peak:.0f} MB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    for name in args.models:
        timings(name, args.repeats)
        for batch_size in (8, 32):
            memory(name, batch_size)


if __name__ == "__main__":
    main()
