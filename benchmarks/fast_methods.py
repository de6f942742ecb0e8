"""ReciproCAM and GScoreCAM against ScoreCAM, AblationCAM and plain forward passes.

    python benchmarks/fast_methods.py            # resnet50 @ 224 px: ScoreCAM takes minutes
    python benchmarks/fast_methods.py --quick    # resnet18 @ 112 px: under a minute

Random weights, one image, target layer ``layer4[-1]``, batch size 32, CPU (or the
model's device with ``--device cuda``). Printed:
- ReciproCAM time as a multiple of one plain ``no_grad`` forward of the image, and as a
  fraction of ScoreCAM's time (goal: at most 1/100; Byun & Lee report about 1/148);
- AblationCAM's time the same way, for comparison (both run only the network's tail);
- GScoreCAM (k = 300) as a fraction of ScoreCAM's time (Chen et al. report 8 to 10 times
  faster on CLIP RN50x16's 3,072 channels, i.e. 1/8 to 1/10) and the number of masked
  forwards of each.
The fast methods' times are medians of ``--repeats`` calls, interleaved with plain
forwards so that a machine whose speed drifts affects both alike; ScoreCAM (every one of
the 2,048 channels, measured in full, about 4 minutes on 2 cores) and GScoreCAM are
timed ``--score-repeats`` times (default once). ``--extrapolate`` skips the full
ScoreCAM: its time is estimated as GScoreCAM's (k = 300) times 2,048 / (GScoreCAM's
masked forwards), i.e. ScoreCAM's batched loop timed on 300 channels and scaled to all
2,048 (an overestimate by the gradient pass times 2048/300 - 1, about 1% here, and by
the masks ScoreCAM would deduplicate). The load average is printed before and
after: on a shared machine the figures are under that load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's package

from pytorch_grad_cam import AblationCAM, GScoreCAM, ReciproCAM, ScoreCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

BATCH_SIZE = 32
CATEGORY = 281
TOPK = 300


def seconds(function) -> float:
    start = time.perf_counter()
    function()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_medians(functions, repeats: int) -> list[float]:
    """Median time of each function, called in turn ``repeats`` times after a warm-up."""
    for function in functions:
        function()
    times: list[list[float]] = [[] for _ in functions]
    for _ in range(repeats):
        for function, bucket in zip(functions, times):
            bucket.append(seconds(function))
    return [statistics.median(bucket) for bucket in times]


def count_rows(model):
    """A list receiving the batch size of every forward pass of ``model`` (the whole model;
    the tail runs of ReciproCAM and AblationCAM do not call it)."""
    rows: list[int] = []
    handle = model.register_forward_pre_hook(lambda module, inputs: rows.append(inputs[0].shape[0]))
    return rows, handle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="resnet18 at 112 px")
    parser.add_argument("--repeats", type=int, default=9, help="timed fast-method calls")
    parser.add_argument("--score-repeats", type=int, default=1, help="timed ScoreCAM calls")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--extrapolate", action="store_true", help="estimate ScoreCAM's time")
    args = parser.parse_args()
    name, size = ("resnet18", 112) if args.quick else ("resnet50", 224)
    load_before = os.getloadavg()[0]
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval().to(args.device)
    x = torch.randn(1, 3, size, size, device=args.device)
    targets = [ClassifierOutputTarget(CATEGORY)]
    layers = [model.layer4[-1]]

    def plain() -> None:
        with torch.no_grad():
            model(x)

    recipro = ReciproCAM(model, layers, batch_size=BATCH_SIZE)
    ablation = AblationCAM(model, layers, batch_size=BATCH_SIZE)
    forward, recipro_s, ablation_s = interleaved_medians(
        [plain, lambda: recipro(x, targets), lambda: ablation(x, targets)], args.repeats
    )
    rows, handle = count_rows(model)
    score = ScoreCAM(model, layers, batch_size=BATCH_SIZE)
    gscore = GScoreCAM(model, layers, topk=TOPK, batch_size=BATCH_SIZE)
    score_times, gscore_times = [], []
    for _ in range(args.score_repeats):
        rows.clear()
        gscore_times.append(seconds(lambda: gscore(x, targets)))
        gscore_rows = sum(rows) - 1  # less the one unmasked forward
        rows.clear()
        if args.extrapolate:
            channels = model.fc.in_features
            score_times.append(gscore_times[-1] * channels / gscore_rows)
            score_rows = channels
        else:
            score_times.append(seconds(lambda: score(x, targets)))
            score_rows = sum(rows) - 1
    handle.remove()
    score_s, gscore_s = statistics.median(score_times), statistics.median(gscore_times)
    channels = model.fc.in_features
    grid = size // 32
    load_after = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}")
    print(f"load average (1 min) {load_before:.2f} before, {load_after:.2f} after")
    print(f"{name} @{size}px (random weights), layer4[-1]: {channels} channels, {grid} x {grid}")
    print(f"  plain forward, 1 image          {forward * 1e3:9.1f} ms")
    print(
        f"  ReciproCAM ({recipro.tail_paths[0]}, {grid * grid} masks) {recipro_s * 1e3:9.1f} ms"
        f"  = {recipro_s / forward:6.2f} x forward  = 1/{score_s / recipro_s:.0f} of ScoreCAM"
        "  (goal <= 1/100; paper ~1/148)"
    )
    print(
        f"  AblationCAM ({ablation.ablation_paths[0]})         {ablation_s * 1e3:9.1f} ms"
        f"  = {ablation_s / forward:6.2f} x forward  = 1/{score_s / ablation_s:.0f} of ScoreCAM"
    )
    print(
        f"  ScoreCAM ({score_rows} masked forwards{', extrapolated' * args.extrapolate})"
        f" {score_s:9.2f} s"
        f"   = {score_s / forward:6.0f} x forward"
    )
    print(
        f"  GScoreCAM k={TOPK} ({gscore_rows} masked)   {gscore_s:9.2f} s"
        f"   = {gscore_s / score_s:5.3f} x ScoreCAM = 1/{score_s / gscore_s:.1f}"
        "  (paper: 1/8 to 1/10 on CLIP RN50x16)"
        + ("; extrapolated ScoreCAM: this ratio is the rows' by construction" * args.extrapolate)
    )


if __name__ == "__main__":
    main()
