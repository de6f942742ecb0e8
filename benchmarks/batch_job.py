"""Throughput and memory of ``explain_dataset`` next to plain batched inference.

    python benchmarks/batch_job.py [--images 1000] [--batch-size 32] [--workers 2]
                                   [--rounds 1] [--breakdown] [--no-ray]

A folder of JPEG images (224 px crops of the shipped photo, shifted and noised) is
explained with GradCAM on a random-weight resnet50 (``layer4[-1]``) by the local
engine, and the same images go through a plain ``torch.no_grad()`` forward loop over
the same ``DataLoader`` (same reader, batch sampler, workers). Printed: both
throughputs and their ratio (goal: at least 0.8), the main process's RSS after 100
images and at the end (goal: within 100 MB), and the Ray engine with 2 CPU actors on a
local cluster of 2 CPUs. ``--breakdown`` also times, per batch and back to back, a plain
forward, the job's device work and its store write, which a changing load hits alike;
it splits the job's cost into the CAM and the rest. On a shared
machine the load changes during a run: ``--rounds N`` alternates the loops N times and
the best round of each is compared.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader

from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.batch import RayOptions, explain_dataset
from pytorch_grad_cam.batch.explainer import ExplainerSpec
from pytorch_grad_cam.batch.local_engine import make_loader
from pytorch_grad_cam.batch.manifest import FORMAT
from pytorch_grad_cam.batch.samples import SampleReader
from pytorch_grad_cam.batch.sources import FolderSource
from pytorch_grad_cam.batch.store import MapStore
from pytorch_grad_cam.batch.writer import ChunkWriter
from pytorch_grad_cam.cli import EXAMPLE_IMAGE, IMAGENET_MEAN, IMAGENET_STD

SIZE = 224


def rss_mb() -> float:
    """This process's resident memory, MB (Linux ``/proc``)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def describe_breakdown(seconds: dict[str, float], images: int) -> str:
    """The side-by-side timings as ms per image and ratios to the plain forward."""
    plain, explain, write = (1000 * seconds[key] / images for key in ("plain", "explain", "write"))
    return (
        f"side by side per batch: plain forward {plain:.1f} ms/image; the job's device work "
        f"{explain:.1f} ms/image ({plain / explain:.2f} x the forward's throughput); store "
        f"write {write:.1f} ms/image (in a background thread in the job)"
    )


def describe_memory(memory: list[tuple[int, float]]) -> str:
    """RSS after about 100 images, halfway and at the end, and the growth since 100."""
    first = next((entry for entry in memory if entry[0] >= 100), memory[0])
    middle = next(entry for entry in memory if entry[0] >= memory[-1][0] // 2)
    last = memory[-1]
    points = ", ".join(f"{rss:.0f} MB after {done}" for done, rss in (first, middle, last))
    return f"{points}: {last[1] - first[1]:+.0f} MB"


def make_folder(folder: Path, count: int) -> None:
    """``count`` 224 px JPEGs: random crops of the shipped photo, flipped, with noise."""
    rng = np.random.default_rng(0)
    photo = cv2.imread(str(EXAMPLE_IMAGE))  # 224 x 448
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(count):
        left = int(rng.integers(0, photo.shape[1] - SIZE))
        crop = photo[:, left : left + SIZE].astype(np.float32)
        if number % 2:
            crop = crop[:, ::-1]
        crop += rng.normal(0, 8, crop.shape)
        image = np.clip(crop, 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"{number:05d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])


def loader_for(folder: Path, batch_size: int, workers: int) -> DataLoader:
    """The local engine's own DataLoader over the folder (``make_loader``)."""
    source = FolderSource(folder)
    reader = SampleReader(source, (SIZE, SIZE), IMAGENET_MEAN, IMAGENET_STD)
    rows = range(len(source))
    chunks = [rows[start : start + batch_size] for start in rows[::batch_size]]
    return make_loader(reader, chunks, workers, pin_memory=False)


def timed(function: Callable[[], object]) -> float:
    """Wall-clock seconds of ``function()``."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def plain_inference(model: torch.nn.Module, loader: DataLoader) -> None:
    """A batched ``no_grad`` forward over the loader: the baseline."""
    with torch.no_grad():
        for batch in loader:
            model(batch.images)


def side_by_side(
    model: torch.nn.Module, loader: DataLoader, batch_size: int, out: Path
) -> dict[str, float]:
    """Per batch of the loader, back to back on the same images (so that a changing load
    hits all alike; the order alternates): a plain ``no_grad`` forward, the job's device
    work (``BatchExplainer.explain``: GradCAM, scores, one host copy) and its store write
    (``ChunkWriter.add``: zarr chunk and index part). Seconds of each, summed."""
    spec = ExplainerSpec(model, GradCAM, ["layer4.2"], map_size=(SIZE, SIZE))
    store = MapStore(out)
    count = len(loader.dataset)  # type: ignore[arg-type]
    layout = {"samples": count, "chunk_rows": batch_size, "map_size": [SIZE, SIZE],
              "dtype": "float16"}  # fmt: skip
    store.create({"format": FORMAT, "job": {}, "layout": layout})
    ids = [str(row) for row in range(count)]
    writer = ChunkWriter(store, store.open_maps(layout), ids, "GradCAM", ["layer4.2"], [])
    explainer = spec.build()
    seconds = {"plain": 0.0, "explain": 0.0, "write": 0.0}
    for number, batch in enumerate(loader):
        steps = ["plain", "explain"] if number % 2 == 0 else ["explain", "plain"]
        for step in steps:
            start = time.perf_counter()
            if step == "plain":
                with torch.no_grad():
                    model(batch.images)
            else:
                result = explainer.explain(batch)
            seconds[step] += time.perf_counter() - start
        start = time.perf_counter()
        writer.add(result)
        seconds["write"] += time.perf_counter() - start
    explainer.close()
    return seconds


def parse_arguments() -> argparse.Namespace:
    """The benchmark's options (see the module's docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="alternate the loops N times")
    parser.add_argument("--breakdown", action="store_true", help="also time per batch")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray engine")
    return parser.parse_args()


def main() -> None:
    """Run the benchmark and print its figures."""
    args = parse_arguments()
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    work = Path(tempfile.mkdtemp(prefix="gradcam-batch-bench-"))
    try:
        make_folder(work / "images", args.images)
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu; resnet50 "
            f"(random weights) @{SIZE}px, {args.images} JPEG images, batch {args.batch_size}, "
            f"{args.workers} loader workers"
        )
        loader = loader_for(work / "images", args.batch_size, args.workers)
        with torch.no_grad():  # warm-up: first calls allocate
            model(torch.zeros(args.batch_size, 3, SIZE, SIZE))

        memory: list[tuple[int, float]] = []  # (images done, RSS MB) after each batch

        def record(done: int) -> None:
            memory.append((done, rss_mb()))

        plain_rates: list[float] = []
        job_rates: list[float] = []
        breakdowns: list[dict[str, float]] = []
        for round_number in range(args.rounds):
            memory.clear()
            out = work / f"local-{round_number}"

            def plain_loop() -> None:
                plain_rates.append(args.images / timed(lambda: plain_inference(model, loader)))

            def job(out: Path = out) -> None:
                local = explain_dataset(
                    model, work / "images", out, GradCAM, [model.layer4[-1]],
                    image_size=SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    batch_size=args.batch_size, num_workers=args.workers, progress=False,
                    on_batch=record,
                )  # fmt: skip
                job_rates.append(local.images_per_second)

            # Every other round the other way round: a load that changes favours neither.
            for step in (plain_loop, job) if round_number % 2 == 0 else (job, plain_loop):
                step()
            shutil.rmtree(out)
            line = (
                f"round {round_number + 1}: plain no_grad loop {plain_rates[-1]:6.2f} images/s, "
                f"explain_dataset {job_rates[-1]:6.2f} images/s"
            )
            print(line + f"; RSS {describe_memory(memory)}")
            if args.breakdown:
                parts = side_by_side(model, loader, args.batch_size, work / f"parts-{round_number}")
                breakdowns.append(parts)
                print("  " + describe_breakdown(parts, args.images))

        plain_rate, job_rate = max(plain_rates), max(job_rates)
        print(f"plain no_grad inference loop      {plain_rate:7.2f} images/s  (best round)")
        print(
            f"explain_dataset, local, GradCAM   {job_rate:7.2f} images/s  (best round)  "
            f"ratio {job_rate / plain_rate:.2f} x the plain loop (goal >= 0.8)"
        )
        if breakdowns:
            ratios = sorted(parts["plain"] / parts["explain"] for parts in breakdowns)
            print(
                f"side by side per batch (median of {len(ratios)} rounds): plain forward / the "
                f"job's device work = {ratios[len(ratios) // 2]:.2f}"
            )
        print(f"RSS of the main process, last round: {describe_memory(memory)} (goal: the last")
        print("  within 100 MB of the one after 100 images)")
        if not args.no_ray:
            run_ray(model, work, args, job_rate)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_ray(model: torch.nn.Module, work: Path, args: argparse.Namespace, local: float) -> None:
    """The Ray engine with 2 CPU actors on a local 2-CPU cluster, next to the local one."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        stamps: list[tuple[float, int]] = []
        summary = explain_dataset(
            model, work / "images", work / "ray", GradCAM, [model.layer4[-1]],
            image_size=SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD,
            batch_size=args.batch_size, progress=False, engine="ray",
            ray_options=RayOptions(actors=2, num_cpus=1),
            on_batch=lambda done: stamps.append((time.perf_counter(), done)),
        )  # fmt: skip
    finally:
        ray.shutdown()
    (first_time, first_done), (last_time, last_done) = stamps[0], stamps[-1]
    steady = (last_done - first_done) / (last_time - first_time) if last_done > first_done else 0
    print(
        f"explain_dataset, Ray, 2 CPU actors {summary.images_per_second:6.2f} images/s "
        f"({summary.seconds:.1f} s, with the actors' start); after the first batch "
        f"{steady:.2f} images/s; local engine {local:.2f} images/s"
    )


if __name__ == "__main__":
    main()
