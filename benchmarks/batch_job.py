"""Throughput and memory of ``explain_dataset`` next to plain batched inference.

    python benchmarks/batch_job.py [--images 1000] [--batch-size 32] [--workers 2]
                                   [--breakdown] [--no-ray]

A folder of JPEG images (224 px crops of the shipped photo, shifted and noised) is
explained with GradCAM on a random-weight resnet50 (``layer4[-1]``) by the local
engine, and the same images go through a plain ``torch.no_grad()`` forward loop over
the same ``DataLoader`` (same reader, batch sampler, workers). Printed: both
throughputs and their ratio (goal: at least 0.8), the main process's RSS after 100
images and at the end (goal: within 100 MB), and the Ray engine with 2 CPU actors on a
local cluster of 2 CPUs. ``--breakdown`` also times the GradCAM calls alone over the
same loader (no store), to split the job's cost into the CAM and the rest.
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
from pytorch_grad_cam.batch.samples import ReaderDataset, SampleReader, collate
from pytorch_grad_cam.batch.sources import FolderSource
from pytorch_grad_cam.cli import EXAMPLE_IMAGE, IMAGENET_MEAN, IMAGENET_STD

SIZE = 224


def rss_mb() -> float:
    """This process's resident memory, MB (Linux ``/proc``)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


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
    """The local engine's DataLoader over the folder: same reader, sampler and collate."""
    source = FolderSource(folder)
    reader = SampleReader(source, (SIZE, SIZE), IMAGENET_MEAN, IMAGENET_STD)
    rows = range(len(source))
    batches = [list(rows[start : start + batch_size]) for start in rows[::batch_size]]
    return DataLoader(
        ReaderDataset(reader), batch_sampler=batches, num_workers=workers, collate_fn=collate
    )


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


def cam_calls(model: torch.nn.Module, loader: DataLoader) -> None:
    """GradCAM over the loader, maps kept on the device and dropped: no store."""
    with GradCAM(model, [model.layer4[-1]]) as cam:
        for batch in loader:
            cam(batch.images, as_tensor=True)


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="alternate the loops N times")
    parser.add_argument("--breakdown", action="store_true", help="also time GradCAM alone")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray engine")
    args = parser.parse_args()

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

        memory: dict[str, float] = {}

        def record(done: int) -> None:
            if done >= min(100, args.images) and "first" not in memory:
                memory["first"], memory["first_at"] = rss_mb(), done
            memory["last"], memory["last_at"] = rss_mb(), done

        plain_rates, job_rates, cam_rates = [], [], []
        for round_number in range(args.rounds):
            plain = timed(lambda: plain_inference(model, loader))
            plain_rates.append(args.images / plain)
            memory.clear()
            out = work / f"local-{round_number}"
            local = explain_dataset(
                model, work / "images", out, GradCAM, [model.layer4[-1]],
                image_size=SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                batch_size=args.batch_size, num_workers=args.workers, progress=False,
                on_batch=record,
            )  # fmt: skip
            shutil.rmtree(out)
            job_rates.append(local.images_per_second)
            line = (
                f"round {round_number + 1}: plain no_grad loop {plain_rates[-1]:6.2f} images/s, "
                f"explain_dataset {job_rates[-1]:6.2f} images/s"
            )
            if args.breakdown:
                cam_rates.append(args.images / timed(lambda: cam_calls(model, loader)))
                line += f", GradCAM calls alone (no store) {cam_rates[-1]:6.2f} images/s"
            print(line + f"; RSS {memory['first']:.0f} -> {memory['last']:.0f} MB")

        plain_rate, job_rate = max(plain_rates), max(job_rates)
        print(f"plain no_grad inference loop      {plain_rate:7.2f} images/s  (best round)")
        print(
            f"explain_dataset, local, GradCAM   {job_rate:7.2f} images/s  (best round)  "
            f"ratio {job_rate / plain_rate:.2f} x the plain loop (goal >= 0.8)"
        )
        if cam_rates:
            print(
                f"  GradCAM calls alone, no store   {max(cam_rates):7.2f} images/s  "
                f"ratio {max(cam_rates) / plain_rate:.2f}"
            )
        print(
            f"RSS of the main process (last round) after {memory['first_at']} images "
            f"{memory['first']:.0f} MB, after {memory['last_at']}: {memory['last']:.0f} MB, "
            f"growth {memory['last'] - memory['first']:+.0f} MB (goal within 100 MB)"
        )
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
