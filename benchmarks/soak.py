"""Soak: what a long-running service keeps after many calls and many CAM objects.

    python benchmarks/soak.py [--calls 1000] [--objects 300] [--model small|resnet18]

Per method, on one model (random weights, CPU):
- ``calls``: one CAM object called ``--calls`` times on the same 2-image batch;
- ``objects``: ``--objects`` CAM objects, each made, called once and closed (a
  ``with`` block per request).

Printed per phase, measured after a warm-up of 20 calls / objects: hooks left on the
model, growth of the number of Python objects the garbage collector tracks, of
tracemalloc's traced bytes (Python allocations) and of the process's resident memory
(RSS, from /proc), and the growth of ``linecache`` (torch.fx's generated source).
``small`` is a 16-channel residual CNN at 32 px (seconds per method); ``resnet18``
runs at 64 px (minutes for the perturbation methods).
"""

from __future__ import annotations

import argparse
import gc
import linecache
import time
import tracemalloc
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    FullGrad,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

METHODS = [
    GradCAM,
    HiResCAM,
    GradCAMPlusPlus,
    XGradCAM,
    LayerCAM,
    EigenCAM,
    FullGrad,
    AblationCAM,
    ScoreCAM,
]
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
WARM_UP = 20


class SmallResidualNet(nn.Module):
    """conv-BN-ReLU, a residual block (the target layer), GAP, linear."""

    def __init__(self, channels: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU()
        )
        self.block = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``x``."""
        stem = self.stem(x)
        return self.fc((self.block(stem) + stem).mean(dim=(2, 3)))


def rss_bytes() -> int:
    """The process's resident set size."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def hooks_on(model: nn.Module) -> int:
    """Forward and backward hooks on every module of ``model``."""
    return sum(len(getattr(module, name)) for module in model.modules() for name in HOOK_DICTS)


def measure(step: Callable[[], None], repeats: int, model: nn.Module) -> dict[str, float]:
    """Growth over ``repeats`` steps after ``WARM_UP`` steps."""
    for _ in range(WARM_UP):
        step()
    gc.collect()
    objects, rss, lines = len(gc.get_objects()), rss_bytes(), len(linecache.cache)
    tracemalloc.start()
    traced = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    seconds = time.perf_counter() - start
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - traced
    tracemalloc.stop()
    return {
        "hooks": hooks_on(model),
        "objects": len(gc.get_objects()) - objects,
        "traced_kib": traced / 1024,
        "rss_mib": (rss_bytes() - rss) / 2**20,
        "linecache": len(linecache.cache) - lines,
        "seconds": seconds,
    }


def model_and_layer(name: str) -> tuple[nn.Module, nn.Module, int]:
    """The model, its target layer and the input size."""
    torch.manual_seed(0)
    if name == "resnet18":
        model = torchvision.models.resnet18(weights=None).eval()
        return model, model.layer4[-1], 64
    model = SmallResidualNet().eval()
    return model, model.block, 32


def main() -> None:
    """Print the growth figures of every method."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--objects", type=int, default=300)
    parser.add_argument("--model", choices=["small", "resnet18"], default="small")
    args = parser.parse_args()
    model, layer, size = model_and_layer(args.model)
    batch = torch.randn(2, 3, size, size)
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(2)]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {args.model} "
        f"@{size}px, batch 2; growth after {WARM_UP} warm-up steps"
    )
    header = "hooks  objects  traced KiB  RSS MiB  linecache  seconds"
    print(f"{'method':<18}{'phase':<18}{header}")
    for method in METHODS:
        cam = method(model, [layer])

        def call(cam: object = cam) -> None:
            cam(batch, targets)

        def one_object(method: type = method) -> None:
            with method(model, [layer]) as fresh:
                fresh(batch, targets)

        for phase, step, repeats in (
            (f"{args.calls} calls", call, args.calls),
            (f"{args.objects} objects", one_object, args.objects),
        ):
            figures = measure(step, repeats, model)
            print(
                f"{method.__name__:<18}{phase:<18}{figures['hooks']:>5}"
                f"{figures['objects']:>9}{figures['traced_kib']:>12.1f}"
                f"{figures['rss_mib']:>9.1f}{figures['linecache']:>11}"
                f"{figures['seconds']:>9.1f}"
            )
        cam.close()


if __name__ == "__main__":
    main()
