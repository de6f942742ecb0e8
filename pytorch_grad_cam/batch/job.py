"""``explain_dataset``: a whole dataset's maps into a store, resumable, on either engine."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from pytorch_grad_cam.base_cam import BaseCAM, model_device, model_in_eval_mode
from pytorch_grad_cam.batch.explainer import (
    MAP_DTYPES,
    METRICS,
    ExplainerSpec,
    TargetSpec,
    check_target_spec,
)
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
from pytorch_grad_cam.batch.store import MapStore, index_schema
from pytorch_grad_cam.batch.writer import BackgroundWriter, ChunkWriter
from pytorch_grad_cam.grad_cam import GradCAM
from pytorch_grad_cam.utils.find_layers import suggest_target_layers
from pytorch_grad_cam.utils.model_outputs import select_output

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_BATCH_SIZE = 32
ENGINES = ("local", "ray")

DatasetLike = Union[str, os.PathLike, Dataset, Iterable[Any]]


@dataclass
class DatasetSummary:
    """What a run did, and what the store holds."""

    out: Path
    #: Samples in the store, and how many of them are ``ok`` / ``failed``.
    samples: int
    ok: int
    failed: int
    #: Samples explained by this run (0 when the store was complete already).
    explained: int
    seconds: float
    #: Files of an input folder that are not images.
    skipped_files: int = 0
    map_shape: tuple[int, ...] = ()
    map_dtype: str = "float16"
    #: The first few failures: ``(id, error)``.
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        """The throughput of this run."""
        return self.explained / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        """A few lines: images, time, images/s, failures, where the store is."""
        if self.explained:
            head = (
                f"explained {self.explained} images in {self.seconds:.1f} s "
                f"({self.images_per_second:.1f} images/s)"
            )
        else:
            head = "nothing to do: the store is complete"
        counts = f"{self.samples} samples: {self.ok} ok, {self.failed} failed"
        if self.skipped_files:
            counts += f"; {self.skipped_files} files skipped (not images)"
        lines = [head, counts]
        lines += [f"  failed: {sample_id}: {error}" for sample_id, error in self.failures]
        shape = " x ".join(map(str, self.map_shape))
        lines.append(f"maps:  {self.out / 'maps.zarr'} (array 'maps', {shape} {self.map_dtype})")
        lines.append(f"index: {self.out / 'index.parquet'}")
        return "\n".join(lines)


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
    options = _check_options(method, targets, dtype, metrics, engine, batch_size, num_workers)
    size = _pair(image_size)
    source = make_source(dataset, labels)
    if options["targets"] == "label" and not source.has_labels:
        raise ValueError(
            "targets='label' needs labels: pass labels={id: class} for an image folder"
        )
    layers = list(target_layers) if target_layers is not None else suggest_target_layers(model)
    names = layer_names(model, layers)
    kwargs = dict(method_kwargs or {})
    job = job_description(
        method=method,
        method_kwargs=kwargs,
        model=model,
        model_name=model_name,
        layers=names,
        targets=options["targets"],
        preprocessing={"image_size": list(size), "mean": list(mean), "std": list(std)},
        dtype=dtype,
        metrics=list(metrics),
        metric_steps=metric_steps,
        smoothing={"aug_smooth": aug_smooth, "eigen_smooth": eigen_smooth},
        ids_digest=ids_digest(source.ids),
    )
    job["samples"] = len(source)
    store = MapStore(out)
    if overwrite:
        store.clear()
    store.check_usable()
    manifest = store.manifest()
    if manifest is not None:
        check_same_job(manifest["job"], job, f"out={str(out)!r}")
        _check_batch_size(batch_size, manifest["layout"]["chunk_rows"])
    if manifest is not None and store.is_complete():
        return _summary(store, manifest, source, 0, time.perf_counter() - started)

    reader = SampleReader(source, size, mean, std, needs_label=options["targets"] == "label")
    if manifest is None:
        selector = kwargs.get("output_selector")
        layout = _probe_layout(model, reader, batch_size or DEFAULT_BATCH_SIZE, dtype, selector)
        manifest = {"format": FORMAT, "job": job, "layout": layout}
        store.create(manifest, metrics)
    layout = manifest["layout"]
    _check_fixed_target(options["targets"], layout["num_classes"])
    reader.input_shape = tuple(layout["input_shape"])
    reader.num_classes = layout["num_classes"]
    maps = store.open_maps(layout)
    store.remove_unfinished_commits()
    chunk_rows = layout["chunk_rows"]
    done_chunks = store.committed_chunks()
    chunks = [
        range(start, min(start + chunk_rows, len(source)))
        for start in range(0, len(source), chunk_rows)
        if start // chunk_rows not in done_chunks
    ]
    spec = ExplainerSpec(
        model=model,
        method=method,
        layer_names=names,
        method_kwargs=kwargs,
        targets=options["targets"],
        dtype=dtype,
        metrics=list(metrics),
        metric_steps=metric_steps,
        aug_smooth=aug_smooth,
        eigen_smooth=eigen_smooth,
        map_size=tuple(layout["map_size"]),
    )
    writer = ChunkWriter(store, maps, source.ids, method.__name__, ",".join(names), metrics)
    todo = sum(len(rows) for rows in chunks)
    bar = tqdm(
        total=len(source),
        initial=len(source) - todo,
        unit="img",
        desc="explaining",
        disable=not progress,
        dynamic_ncols=True,
    )
    explained = 0

    def batch_done(count: int) -> None:
        nonlocal explained
        bar.update(count - explained)
        explained = count
        if on_batch is not None:
            on_batch(count)

    try:
        with BackgroundWriter(writer) as background:
            if engine == "ray":
                options_ = ray_options or RayOptions()
                run_ray(spec, reader, chunks, chunk_rows, background, options_, batch_done)
            else:
                explainer = spec.build()
                try:
                    run_local(explainer, reader, chunks, background, num_workers, batch_done)
                finally:
                    explainer.close()
    finally:
        bar.close()
    chunk_count = -(-len(source) // chunk_rows)
    missing = set(range(chunk_count)) - store.committed_chunks()
    if missing:
        raise RuntimeError(f"chunks {sorted(missing)[:10]} were not written; run again to resume")
    store.compact(chunk_count, index_schema(metrics))
    return _summary(store, manifest, source, explained, time.perf_counter() - started)


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
) -> dict[str, Any]:
    """The arguments that need neither the data nor the model, checked."""
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
    return {"targets": check_target_spec(targets)}


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


def _probe_layout(
    model: nn.Module,
    reader: SampleReader,
    chunk_rows: int,
    dtype: str,
    output_selector: Any,
) -> dict[str, Any]:
    """The store's layout: the first sample that loads gives the input shape (every
    other must match), one forward pass on it the model's number of classes."""
    probe = SampleReader(reader.source, reader.image_size, reader.mean, reader.std)
    image = None
    for row in range(len(reader.source)):
        image = probe.read(row).image
        if image is not None:
            break
    if image is None:
        image = torch.zeros(3, *reader.image_size)
    device = model_device(model) or torch.device("cpu")
    with torch.no_grad(), model_in_eval_mode(model):
        scores = select_output(model(image[None].to(device)), output_selector)
    if scores.ndim != 2:
        raise ValueError(
            f"the model's output has shape {tuple(scores.shape)}; a dataset job explains a "
            "classifier's B x K scores (pass method_kwargs={'output_selector': ...} to pick "
            "them from a tuple or dict)"
        )
    return {
        "samples": len(reader.source),
        "chunk_rows": chunk_rows,
        "input_shape": list(image.shape),
        "map_size": list(image.shape[1:]),
        "num_classes": int(scores.shape[1]),
        "dtype": dtype,
    }


def _summary(
    store: MapStore,
    manifest: dict[str, Any],
    source: SampleSource,
    explained: int,
    seconds: float,
) -> DatasetSummary:
    index = store.read_index()
    status = index.column("status").to_pylist()
    failed = [
        (sample_id, error)
        for sample_id, state, error in zip(
            index.column("id").to_pylist(), status, index.column("error").to_pylist()
        )
        if state == "failed"
    ]
    layout = manifest["layout"]
    return DatasetSummary(
        out=store.out,
        samples=index.num_rows,
        ok=status.count("ok"),
        failed=len(failed),
        explained=explained,
        seconds=seconds,
        skipped_files=source.skipped_files,
        map_shape=(layout["samples"], *layout["map_size"]),
        map_dtype=layout["dtype"],
        failures=failed[:5],
    )
