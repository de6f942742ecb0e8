"""AblationCAM and ScoreCAM: time and memory against plain forward passes of the same model.

    python benchmarks/perturbation_methods.py [--repeats 5] [--score-repeats 1]

ScoreCAM on resnet50 runs about 1900 masked images: several minutes on 2 CPU cores.

Random weights, one 224 px image, target layer ``layer4[-1]``, batch size 32, CPU.
Printed per model:
- AblationCAM time / time of one plain ``no_grad`` forward (target: at most 3);
- ScoreCAM time / (distinct channel maps x per-image time of a plain forward at batch
  size 32) (target: at most 1.15);
- peak resident memory of ScoreCAM above the model's own forward at the same batch
  size (target: under 300 MB for resnet50), measured in a fresh subprocess per figure
  with Linux's VmHWM (reset through /proc/self/clear_refs).
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
    """Median of ``repeats`` timed calls after one warm-up call."""
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_forward_rows(model):
    """A list that receives the batch size of every forward pass of ``model``."""
    rows = []
    model.register_forward_pre_hook(lambda module, inputs: rows.append(inputs[0].shape[0]))
    return rows


def build(name: str):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    return model, torch.randn(1, 3, 224, 224)


def interleaved_medians(first, second, repeats: int) -> tuple[float, float]:
    """Median times of ``first`` and ``second`` called alternately (after a warm-up of
    each), so that a machine whose speed drifts affects both alike."""
    first()
    second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for function, bucket in zip((first, second), times):
            start = time.perf_counter()
            function()
            bucket.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def timings(name: str, repeats: int, score_repeats: int) -> None:
    model, x = build(name)
    targets = [ClassifierOutputTarget(CATEGORY)]
    batch = x.expand(BATCH_SIZE, -1, -1, -1).contiguous()

    def plain(inputs):
        with torch.no_grad():
            model(inputs)

    ablation = AblationCAM(model, [model.layer4[-1]], batch_size=BATCH_SIZE)
    forward, ablation_seconds = interleaved_medians(
        lambda: plain(x), lambda: ablation(x, targets), repeats
    )
    # ScoreCAM: batch-32 forwards timed before and after each call, medians of both.
    score = ScoreCAM(model, [model.layer4[-1]], batch_size=BATCH_SIZE)
    rows = count_forward_rows(model)
    batched, score_times = [], []
    for _ in range(score_repeats):
        batched.append(median_seconds(lambda: plain(batch), 2))
        rows.clear()
        start = time.perf_counter()
        score(x, targets)
        score_times.append(time.perf_counter() - start)
        distinct = sum(rows) - 1  # every masked image, less the one unmasked forward
        batched.append(median_seconds(lambda: plain(batch), 2))
    per_image = statistics.median(batched) / BATCH_SIZE
    score_seconds = statistics.median(score_times)
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
batch_size = int(sys.argv[2])
x = torch.randn(1, 3, 224, 224)
peaks = []
for inputs in (x, x.expand(batch_size, -1, -1, -1).contiguous()):
    with torch.no_grad():
        model(inputs)
    reset_peak()
    with torch.no_grad():
        model(inputs)
    peaks.append(peak_mb())
cam = ScoreCAM(model, [model.layer4[-1]], batch_size=batch_size)
reset_peak()
cam(x, [ClassifierOutputTarget(281)])
print(*peaks, peak_mb())
"""


def memory(name: str, batch_size: int) -> None:
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, name, str(batch_size)],
        capture_output=True,
        text=True,
        check=True,
    )
    single, batched, score = (float(v) for v in result.stdout.split())
    print(
        f"  ScoreCAM batch_size={batch_size:3d}: peak RSS {score:6.0f} MB = "
        f"{score - batched:+6.0f} MB over a plain forward of {batch_size} images "
        f"({batched:.0f} MB), {score - single:+6.0f} MB over one image's ({single:.0f} MB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--repeats", type=int, default=9, help="timed forward / AblationCAM calls")
    parser.add_argument("--score-repeats", type=int, default=1, help="timed ScoreCAM calls")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    for name in args.models:
        timings(name, args.repeats, args.score_repeats)
        for batch_size in (8, 32):
            memory(name, batch_size)


if __name__ == "__main__":
    main()
