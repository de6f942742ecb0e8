"""Time of each gradient method / time of one plain inference forward of the same model.

    python benchmarks/gradient_methods.py [--repeats 20] [--models resnet18 resnet50]

Random weights, one 224 px image, target layer ``layer4[-1]``, on the CPU (or the
device given). Also printed, for reference: a hand-written forward pass with autograd
on throughout, plus the gradient of the target score with respect to the target layer's
activations only. The library beats it by recording autograd only after the first
target layer.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

from pytorch_grad_cam import (
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

METHODS = [
    GradCAM,
    HiResCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    XGradCAM,
    LayerCAM,
    EigenCAM,
    EigenGradCAM,
]


def median_seconds(function, repeats: int, device: torch.device) -> float:
    for _ in range(3):
        function()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def reference_pass(model, layer, x, category):
    """Forward with autograd on, then d(score)/d(activations) only, written by hand."""
    captured = {}

    def hook(module, inputs, output):
        captured["a"] = output

    handle = layer.register_forward_hook(hook)
    try:
        score = model(x)[:, category].sum()
        torch.autograd.grad(score, captured["a"])
    finally:
        handle.remove()


def benchmark_model(name: str, repeats: int, device: torch.device) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval().to(device)
    x = torch.randn(1, 3, 224, 224, device=device)
    layer = model.layer4[-1]
    targets = [ClassifierOutputTarget(281)]

    def plain_forward():
        with torch.no_grad():
            model(x)

    forward = median_seconds(plain_forward, repeats, device)
    reference = median_seconds(lambda: reference_pass(model, layer, x, 281), repeats, device)
    print(f"\n{name} @224px: plain no_grad forward {forward * 1e3:.1f} ms")
    label = "reference: autograd forward + grad wrt layer4"
    print(f"  {label:46s} {reference / forward:5.2f} x  ({reference * 1e3:.1f} ms)")
    for method in METHODS:
        cam = method(model, target_layers=[layer])
        seconds = median_seconds(lambda: cam(x, targets), repeats, device)  # noqa: B023
        print(f"  {method.__name__:46s} {seconds / forward:5.2f} x  ({seconds * 1e3:.1f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    for name in args.models:
        benchmark_model(name, args.repeats, device)


if __name__ == "__main__":
    main()
