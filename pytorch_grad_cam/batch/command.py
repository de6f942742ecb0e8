"""``gradcam explain-dataset``: explain every image of a folder into a map store.

``gradcam explain-dataset IMAGES_DIR --out OUT`` runs GradCAM with the offline default
model (ImageNet EfficientNet-Lite0) over the images under ``IMAGES_DIR`` (default: the
shipped tiny folder) and writes ``OUT/maps.zarr``, ``OUT/index.parquet`` and
``OUT/manifest.json`` (see ``pytorch_grad_cam.batch``). Running the same command again
resumes an interrupted run, or does nothing when it finished. The model flags are those
of ``cam.py``. Errors are one line, ``gradcam explain-dataset: error: ...``, status 2;
Ctrl-C stops with status 130 and keeps every finished batch.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from pytorch_grad_cam.batch.explainer import MAP_DTYPES, METRICS
from pytorch_grad_cam.batch.job import ENGINES, explain_dataset
from pytorch_grad_cam.batch.manifest import StoreMismatchError
from pytorch_grad_cam.batch.ray_engine import RayOptions
from pytorch_grad_cam.cli import (
    DATA_DIR,
    DEFAULT_MODEL,
    RANDOM_WEIGHTS_HELP,
    CommandLineError,
    load_model,
    pick_device,
    resolve_category,
    resolve_target_method,
    run_command,
)

PROG = "gradcam explain-dataset"
#: The shipped image folder for a first try: crops of the example photo.
EXAMPLE_FOLDER = DATA_DIR / "tiny_images"
#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130
#: The API's argument names in its error messages, as this command's flags.
_FLAGS = {
    "batch_size=": "--batch-size ",
    "targets=": "--target-category ",
    "dataset=": "IMAGES_DIR ",
    "out=": "--out ",
    "ray_options.address=": "--ray-address ",
    "engine=": "--engine ",
}


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message`` and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number above 0")
        return value

    return parse


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 0")
    return int(text)


def _metrics(text: str) -> list[str]:
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a comma-separated list of {', '.join(METRICS)}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``gradcam explain-dataset``."""
    parser = _Parser(
        prog=PROG,
        description="Explain every image under a folder with a CAM and store the maps "
        "(zarr), an index (parquet) and a manifest in --out. Run it again to resume.",
    )
    add = parser.add_argument
    add(
        "images_dir",
        metavar="IMAGES_DIR",
        nargs="?",
        default=str(EXAMPLE_FOLDER),
        help="folder of images, searched recursively (default: a tiny shipped folder)",
    )
    add("--out", metavar="OUT", required=True, help="output folder (new, empty, or to resume)")
    add("--method", metavar="NAME", default="gradcam", help="a CAM method (default: gradcam)")
    add(
        "--model",
        metavar="NAME",
        default=DEFAULT_MODEL,
        help=f"as cam.py (default: {DEFAULT_MODEL})",
    )
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--weights", metavar="PATH", help="a local checkpoint for --model")
    weights.add_argument("--random-weights", action="store_true", help=RANDOM_WEIGHTS_HELP)
    add("--target-layer", action="append", metavar="PATH", help="dotted layer path (repeatable)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--target-category",
        metavar="INDEX|NAME",
        help="explain this class for every image (default: each image's top class)",
    )
    target.add_argument(
        "--labels",
        metavar="CSV",
        help="explain each image's label: a CSV file with columns id (the path under "
        "IMAGES_DIR) and label (a class index)",
    )
    add("--image-size", metavar="N", type=_positive(int), help="input size (default: 224)")
    add("--batch-size", metavar="N", type=_positive(int), help="images per batch (default: 32)")
    add("--workers", metavar="N", type=_count, default=2, help="image-reading processes (2)")
    add("--dtype", choices=MAP_DTYPES, default="float16", help="map type (default: float16)")
    add("--metrics", type=_metrics, default=[], help="deletion,insertion: AUC per image")
    add("--metric-steps", metavar="N", type=_positive(int), default=20, help="curve steps (20)")
    add("--aug-smooth", action="store_true", help="average over test-time augmentations")
    add("--eigen-smooth", action="store_true", help="first principal component")
    add("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="where to run")
    add("--engine", choices=ENGINES, default="local", help="local (default) or ray")
    add("--ray-address", metavar="ADDR", help="Ray cluster to join (default: start a local one)")
    add("--ray-actors", metavar="N", type=_positive(int), help="actors (default: one per GPU/CPU)")
    add("--ray-gpus-per-actor", metavar="F", type=float, help="default: 1 if the cluster has GPUs")
    add("--ray-cpus-per-actor", metavar="F", type=_positive(float), default=1.0, help="default: 1")
    add("--overwrite", action="store_true", help="delete the store in --out and start again")
    add("--no-progress", action="store_true", help="no progress bar")
    return parser


def read_labels(path: str) -> dict[str, int]:
    """``{id: label}`` from a CSV file with columns ``id`` and ``label``."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise CommandLineError(f"--labels {path}: {error.strerror}") from error
    labels: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        if "id" not in row or "label" not in row:
            raise CommandLineError(f"--labels {path}: needs a header line with columns id,label")
        text = (row["label"] or "").strip()
        if not text.lstrip("-").isdigit():
            raise CommandLineError(
                f"--labels {path}: line {line}: label {text!r} is not a class index"
            )
        labels[row["id"].strip()] = int(text)
    return labels


def run(args: argparse.Namespace) -> None:
    """Check the arguments, load the model, run the job and print its summary."""
    method = resolve_target_method(args.method)
    device = pick_device(args.device)
    if not Path(args.images_dir).is_dir():
        raise CommandLineError(f"IMAGES_DIR {args.images_dir}: no such folder")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise CommandLineError(f"--out {args.out}: a file is in the way; pass a folder")
    labels = read_labels(args.labels) if args.labels else None
    explainable = load_model(args)
    model = explainable.model.to(device)
    target: Any = "label" if labels is not None else "top"
    if args.target_category is not None:
        target = resolve_category(args.target_category, explainable.categories)
    size = explainable.input_size or (args.image_size or 224,) * 2
    if explainable.input_size and args.image_size and (args.image_size,) * 2 != size:
        raise CommandLineError(f"--image-size {args.image_size}: --model takes {size[0]} only")
    method_kwargs = {}
    if explainable.reshape_transform is not None:
        method_kwargs["reshape_transform"] = explainable.reshape_transform
    explained = {"label": "each image's label", "top": "each image's top class"}
    print(
        f"{explainable.description or args.model} on {device}: {method.__name__} of "
        f"{explained.get(target, f'class {target}')}"
    )
    ray_options = RayOptions(
        address=args.ray_address,
        actors=args.ray_actors,
        num_gpus=args.ray_gpus_per_actor,
        num_cpus=args.ray_cpus_per_actor,
    )
    try:
        summary = explain_dataset(
            model,
            args.images_dir,
            args.out,
            method,
            explainable.target_layers,
            method_kwargs=method_kwargs,
            targets=target,
            labels=labels,
            image_size=size,
            mean=explainable.mean,
            std=explainable.std,
            batch_size=args.batch_size,
            num_workers=args.workers,
            dtype=args.dtype,
            metrics=args.metrics,
            metric_steps=args.metric_steps,
            aug_smooth=args.aug_smooth,
            eigen_smooth=args.eigen_smooth,
            engine=args.engine,
            ray_options=ray_options,
            model_name=args.model,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except StoreMismatchError as error:
        raise CommandLineError(
            f"{_as_flags(str(error))}; pass another --out, or --overwrite to start again"
        ) from error
    except (ValueError, TypeError, ImportError, ConnectionError) as error:
        raise CommandLineError(_as_flags(str(error))) from error
    print(summary)


def _as_flags(message: str) -> str:
    """An API error message with its argument names spelled as this command's flags."""
    for argument, flag in _FLAGS.items():
        if message.startswith(argument):
            return flag + message[len(argument) :]
    return message


def main(argv: Sequence[str] | None = None) -> int:
    """``gradcam explain-dataset ARGS...``: returns the exit status."""
    try:
        return run_command(run, build_parser(), argv)
    except SystemExit as stop:  # argparse's --help (0) or usage error (2), printed already
        return stop.code if isinstance(stop.code, int) else 2
    except KeyboardInterrupt:
        print(
            f"{PROG}: interrupted; the finished batches are stored: run the same command "
            "again to continue",
            file=sys.stderr,
        )
        return INTERRUPTED
