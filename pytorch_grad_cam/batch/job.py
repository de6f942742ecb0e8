"""``explain_dataset``: a whole dataset's maps into a store, resumable, on either engine."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Union

from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.batch.explainer import (
    MAP_DTYPES,
    METRICS,
    ExplainerSpec,
    TargetSpec,
    check_target_spec,
)
from pytorch_grad_cam.batch.layout import probe_layout
from pytorch_grad_cam.batch.local_engine import run_local
from pytorch_grad_cam.batch.manifest import (
    FORMAT,
    check_same_job,
    ids_digest,
    job_description,
    layer_names,
)
from pytorch_grad_cam.batch.ray_engine import RayOptions, run_ray
from pytorch_grad_cam.batch.samples import SampleReader
from pytorch_grad_cam.batch.sources import SampleSource, make_source
from pytorch_grad_cam.batch.store import MapStore
from pytorch_grad_cam.batch.summary import DatasetSummary, summarize
from pytorch_grad_cam.batch.writer import BackgroundWriter, ChunkWriter
from pytorch_grad_cam.cli.explainable import IMAGENET_MEAN, IMAGENET_STD
from pytorch_grad_cam.grad_cam import GradCAM
from pytorch_grad_cam.utils.find_layers import suggest_target_layers

DEFAULT_BATCH_SIZE = 32
ENGINES = ("local", "ray")

DatasetLike = Union[str, os.PathLike, Dataset, Iterable[Any]]


def explain_dataset(
    model: nn.Module,
    dataset: DatasetLike,
    out: str | os.PathLike,
    method: type[BaseCAM] = GradCAM,
    target_layers: Sequence[nn.Module] | None = None,
    *,
    method_kwargs: Mapping[str, Any] | None = None,
    targets: TargetSpec = "top",
    labels: Mapping[str, Any] | None = None,
    image_size: int | tuple[int, int] = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    batch_size: int | None = None,
    num_workers: int = 2,
    multiprocessing_context: str | None = None,
    dtype: str = "float16",
    metrics: Sequence[str] = (),
    metric_steps: int = 20,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    engine: str = "local",
    ray_options: RayOptions | None = None,
    model_name: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> DatasetSummary:
    """Explain every sample of ``dataset`` and store the maps and an index in ``out``.

    Writes ``out/maps.zarr`` (array ``maps``, one ``H x W`` map in [0, 1] per sample, at
    the model's input size), ``out/index.parquet`` (one row per sample) and
    ``out/manifest.json``. A run on a folder that holds an unfinished store of the same
    job continues it (each sample is written once); on a finished one it does nothing.

    Args:
        model: the model, on the device to run on (it is left as it was found).
        dataset: an image folder, a map-style ``torch.utils.data.Dataset`` (items: an
            image or ``(image, label, ...)``), or an iterable of ``(id, image[, label])``.
            An image is a path, an array, a PIL image, or a tensor that is already the
            model's ``C x H x W`` input (then ``image_size``, ``mean`` and ``std`` do not
            apply to it).
        out: the output folder (new, empty, or a store to resume).
        method: a CAM class such as ``GradCAM``, ``HiResCAM``, ``ScoreCAM``.
        target_layers: default: ``suggest_target_layers(model)``.
        method_kwargs: more arguments for the method's constructor.
        targets: ``"top"`` (each image's top class), a class index, or ``"label"``.
        labels: ``{id: class index}`` for an image folder and ``targets="label"``.
        image_size: the size (``int`` or ``(height, width)``) images are resized to.
        mean: the per-channel mean that decoded images are normalised with.
        std: their per-channel standard deviation.
        batch_size: images per batch and rows per chunk of ``maps`` (default 32, or the
            store's when resuming; another value than the store's is an error).
        num_workers: ``DataLoader`` worker processes that read the images.
        multiprocessing_context: how they start (``DataLoader``'s argument): default
            the platform's (``fork`` on Linux); ``"forkserver"`` or ``"spawn"`` when the
            calling process runs threads that may hold locks (a web server), which a
            forked worker would wait on forever. The dataset is then pickled.
        dtype: ``"float16"`` or ``"uint8"`` (``round(255 * map)``).
        metrics: any of ``"deletion"``, ``"insertion"``: the RISE curves' AUC per image
            (``deletion_auc``, ``insertion_auc`` columns).
        metric_steps: the number of steps of each curve.
        aug_smooth: the CAM call's test-time augmentation.
        eigen_smooth: the CAM call's first principal component.
        engine: ``"local"`` or ``"ray"``.
        ray_options: how the Ray engine runs (``RayOptions``: address, actors, GPUs).
        model_name: the model's name in the manifest (default: its class name).
        overwrite: delete a store already in ``out`` and start again.
        progress: show a tqdm bar (images/s, ETA).
        on_batch: called after each batch with the number of samples explained so far.

    Returns:
        A ``DatasetSummary``; ``str(summary)`` is the summary the command line prints.

    Raises:
        StoreMismatchError: ``out`` holds a store of another job (method, model, ...).
    """
    started = time.perf_counter()
    checked_targets = _check_options(
        method, targets, dtype, metrics, engine, batch_size, num_workers
    )
    source = make_source(dataset, labels)
    if checked_targets == "label" and not source.has_labels:
        raise ValueError(
            "targets='label' needs labels: pass labels={id: class} for an image folder"
        )
    layers = list(target_layers) if target_layers is not None else suggest_target_layers(model)
    spec = ExplainerSpec(
        model=model,
        method=method,
        layer_names=layer_names(model, layers),
        method_kwargs=dict(method_kwargs or {}),
        targets=checked_targets,
        dtype=dtype,
        metrics=list(metrics),
        metric_steps=metric_steps,
        aug_smooth=aug_smooth,
        eigen_smooth=eigen_smooth,
    )
    size = _pair(image_size)
    preprocessing = {"image_size": list(size), "mean": list(mean), "std": list(std)}
    job = _job(spec, model_name, preprocessing, source)
    store = MapStore(out)
    manifest = _existing_manifest(store, job, batch_size, overwrite)
    if manifest is not None and store.is_complete():
        seconds = time.perf_counter() - started
        return summarize(store, manifest["layout"], source.skipped_files, 0, seconds)

    reader = SampleReader(source, size, mean, std, needs_label=checked_targets == "label")
    if manifest is None:
        selector = spec.method_kwargs.get("output_selector")
        layout = probe_layout(model, reader, batch_size or DEFAULT_BATCH_SIZE, dtype, selector)
        manifest = {"format": FORMAT, "job": job, "layout": layout}
        store.create(manifest)
    layout = manifest["layout"]
    _check_fixed_target(checked_targets, layout["num_classes"])
    reader = replace(
        reader, input_shape=tuple(layout["input_shape"]), num_classes=layout["num_classes"]
    )
    spec = replace(spec, map_size=tuple(layout["map_size"]))
    store.remove_unfinished_commits()
    chunks = store.pending_chunks(layout)
    writer = ChunkWriter(
        store, store.open_maps(layout), source.ids, method.__name__, spec.layer_names, metrics
    )
    todo = sum(len(rows) for rows in chunks)
    with (
        _Progress(len(source), len(source) - todo, progress, on_batch) as counter,
        BackgroundWriter(writer) as background,
    ):
        if engine == "ray":
            options = ray_options or RayOptions()
            chunk_rows = layout["chunk_rows"]
            run_ray(spec, reader, chunks, chunk_rows, background, options, counter.update)
        else:
            run_local(
                spec, reader, chunks, background, num_workers, counter.update,
                multiprocessing_context,
            )  # fmt: skip
    store.finish(layout, metrics)
    seconds = time.perf_counter() - started
    return summarize(store, layout, source.skipped_files, counter.explained, seconds)


class _Progress:
    """A tqdm bar over all samples (images/s, ETA), and the caller's ``on_batch``."""

    def __init__(
        self, total: int, done: int, show: bool, on_batch: Callable[[int], None] | None
    ) -> None:
        self.bar = tqdm(
            total=total, initial=done, unit="img", desc="explaining", disable=not show,
            dynamic_ncols=True,
        )  # fmt: skip
        self.on_batch = on_batch
        self.explained = 0

    def update(self, explained: int) -> None:
        """``explained`` samples are done in this run."""
        self.bar.update(explained - self.explained)
        self.explained = explained
        if self.on_batch is not None:
            self.on_batch(explained)

    def __enter__(self) -> _Progress:
        """Show the bar."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the bar."""
        self.bar.close()


def _job(
    spec: ExplainerSpec,
    model_name: str | None,
    preprocessing: dict[str, Any],
    source: SampleSource,
) -> dict[str, Any]:
    """The manifest's ``job`` for ``spec`` on ``source``."""
    job = job_description(
        method=spec.method,
        method_kwargs=spec.method_kwargs,
        model=spec.model,
        model_name=model_name,
        layers=spec.layer_names,
        targets=spec.targets,
        preprocessing=preprocessing,
        dtype=spec.dtype,
        metrics=spec.metrics,
        metric_steps=spec.metric_steps,
        smoothing={"aug_smooth": spec.aug_smooth, "eigen_smooth": spec.eigen_smooth},
        ids_digest=ids_digest(source.ids),
    )
    job["samples"] = len(source)
    return job


def _existing_manifest(
    store: MapStore, job: dict[str, Any], batch_size: int | None, overwrite: bool
) -> dict[str, Any] | None:
    """The manifest of the store in ``store.out`` if there is one and it is ``job``'s
    (else an error); ``None`` for a new (or, with ``overwrite``, cleared) folder."""
    if overwrite:
        store.clear()
    store.check_usable()
    manifest = store.manifest()
    if manifest is not None:
        check_same_job(manifest["job"], job, f"out={str(store.out)!r}")
        _check_batch_size(batch_size, manifest["layout"]["chunk_rows"])
    return manifest


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``size`` as ``(height, width)``."""
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _check_options(
    method: Any,
    targets: Any,
    dtype: str,
    metrics: Sequence[str],
    engine: str,
    batch_size: int | None,
    num_workers: int,
) -> TargetSpec:
    """The arguments that need neither the data nor the model, checked; returns the
    checked ``targets``."""
    if not (isinstance(method, type) and issubclass(method, BaseCAM)):
        raise TypeError(
            f"method={method!r}: pass a CAM class such as pytorch_grad_cam.GradCAM (the "
            "class, not an instance)"
        )
    if dtype not in MAP_DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose one of {', '.join(MAP_DTYPES)}")
    unknown = [name for name in metrics if name not in METRICS]
    if isinstance(metrics, str) or unknown:
        raise ValueError(
            f"metrics={metrics!r}: a list of names from {', '.join(METRICS)}, e.g. "
            "['deletion', 'insertion']"
        )
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: choose one of {', '.join(ENGINES)}")
    if batch_size is not None and not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size={batch_size!r}: a whole number of at least 1")
    if not (isinstance(num_workers, int) and num_workers >= 0):
        raise ValueError(f"num_workers={num_workers!r}: a whole number of at least 0")
    return check_target_spec(targets)


def _check_batch_size(batch_size: int | None, stored: int) -> None:
    if batch_size is not None and batch_size != stored:
        raise ValueError(
            f"batch_size={batch_size}: the store was started with batch size {stored} (its "
            f"chunk size); pass {stored} or leave it out to resume"
        )


def _check_fixed_target(targets: TargetSpec, num_classes: int) -> None:
    if isinstance(targets, int) and targets >= num_classes:
        raise ValueError(
            f"targets={targets}: out of range 0..{num_classes - 1} for a model with "
            f"{num_classes} classes"
        )
