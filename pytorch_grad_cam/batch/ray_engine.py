"""The Ray Data engine: a pool of actors, each holding the model and the CAM.

The rows still to do become a Ray dataset (``ray.data.from_items``), mapped by
``map_batches`` with a callable class, ``CamActor``, in a fixed pool of actors
(``ActorPoolStrategy(size=actors)``), each with ``num_gpus`` GPUs (the CAM then runs on
its GPU) and ``num_cpus`` CPUs (threads that decode its batches). ``batch_size`` is the
store's chunk size. The actors read the samples themselves, so an input folder must be
at the same path on every node; the results stream back to this process
(``iter_batches``), which alone writes the store: the output folder need only exist here.

Ray is imported only here, when this engine runs. Without an initialised Ray,
``run_ray`` starts a local cluster (or connects to ``address``) and shuts it down at the
end; an initialised one (``ray.init(...)`` called before) is used as it is and left up.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from pytorch_grad_cam.batch.explainer import BatchResult, ExplainerSpec
from pytorch_grad_cam.batch.local_engine import BatchCallback
from pytorch_grad_cam.batch.memory import release_freed_memory
from pytorch_grad_cam.batch.samples import SampleReader, collate
from pytorch_grad_cam.batch.writer import BackgroundWriter
from pytorch_grad_cam.utils.model_state import model_device


@dataclass
class RayOptions:
    """How the Ray engine runs.

    Args:
        address: the cluster to connect to (``"auto"``, ``"ray://host:10001"``,
            ``"host:6379"``); ``None``: start a local one (unless Ray is initialised).
        actors: the size of the actor pool; default: one per GPU of the cluster when the
            actors use GPUs, else the cluster's CPUs divided by ``num_cpus``.
        num_gpus: GPUs per actor; default: 1 when the cluster has GPUs, else 0.
        num_cpus: CPUs per actor (its torch threads and decoding threads).
    """

    address: str | None = None
    actors: int | None = None
    num_gpus: float | None = None
    num_cpus: float = 1.0


def import_ray() -> Any:
    """The ``ray`` module, or an ``ImportError`` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the engine's API)
    except ImportError as error:
        raise ImportError(
            "engine='ray' needs Ray Data: pip install 'gradcam[ray]' (or pip install "
            "'ray[data]'); the default engine='local' needs nothing more"
        ) from error
    return ray


class CamActor:
    """A Ray Data callable class: the model and the CAM, built once per actor.

    Args:
        spec: the explainer to build, its model on the CPU.
        reader: turns rows into model inputs.
        use_gpu: run on this actor's GPU (Ray sets ``CUDA_VISIBLE_DEVICES``).
        threads: torch threads, and threads decoding a batch's samples.
    """

    def __init__(
        self, spec: ExplainerSpec, reader: SampleReader, use_gpu: bool, threads: int
    ) -> None:
        torch.set_num_threads(threads)
        device = torch.device("cuda" if use_gpu else "cpu")
        self.explainer = spec.build(spec.model.to(device))
        self.reader = reader
        self.decoders = ThreadPoolExecutor(max_workers=threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Explain the batch's rows; the columns of ``BatchResult.to_columns``."""
        samples = list(self.decoders.map(self.reader.read, batch["row"].tolist()))
        columns = self.explainer.explain(collate(samples)).to_columns()
        del samples
        release_freed_memory()
        return columns


def run_ray(
    spec: ExplainerSpec,
    reader: SampleReader,
    chunks: Sequence[Sequence[int]],
    chunk_rows: int,
    writer: BackgroundWriter,
    options: RayOptions,
    on_batch: BatchCallback,
) -> None:
    """Explain the rows of ``chunks`` on Ray and hand the results to ``writer``."""
    ray = import_ray()
    if not chunks:
        return
    started = not ray.is_initialized()
    if started and options.address:
        try:
            ray.init(address=options.address)
        except ConnectionError as error:
            raise ConnectionError(
                f"ray_options.address={options.address!r}: cannot connect ({error}); start "
                "the cluster with `ray start --head` and pass the address it prints, or "
                "leave the address out for a local cluster"
            ) from error
    elif started:
        ray.init(include_dashboard=False)  # a local cluster, for this run only
    context = ray.data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars)
    try:
        num_gpus, actors = _resources(ray.cluster_resources(), options)
        # In order, so that chunks complete one after the other; our own progress bar.
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        dataset = ray.data.from_items([{"row": row} for rows in chunks for row in rows])
        results = dataset.map_batches(
            CamActor,
            fn_constructor_kwargs={
                "spec": _on_cpu(spec),
                "reader": reader,
                "use_gpu": num_gpus > 0,
                "threads": max(1, int(options.num_cpus)),
            },
            batch_size=chunk_rows,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=options.num_cpus,
            num_gpus=num_gpus,
            batch_format="numpy",
            udf_modifying_row_count=False,
        )
        done = 0
        for columns in results.iter_batches(batch_size=None, batch_format="numpy"):
            result = BatchResult.from_columns(columns)
            writer.add(result)
            done += len(result.rows)
            del columns, result
            release_freed_memory()
            on_batch(done)
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
        if started:
            ray.shutdown()


def _resources(cluster: dict[str, float], options: RayOptions) -> tuple[float, int]:
    """GPUs per actor and the number of actors, from ``options`` or the cluster's size."""
    gpus, cpus = cluster.get("GPU", 0.0), cluster.get("CPU", 1.0)
    num_gpus = options.num_gpus if options.num_gpus is not None else (1.0 if gpus >= 1 else 0.0)
    if options.actors is not None:
        return num_gpus, options.actors
    if num_gpus > 0:
        return num_gpus, max(1, int(gpus // num_gpus))
    return num_gpus, max(1, int(cpus // options.num_cpus))


def _on_cpu(spec: ExplainerSpec) -> ExplainerSpec:
    """``spec`` with its model on the CPU, to be pickled for the actors (a copy when the
    model is elsewhere: the caller's model stays where it is)."""
    device = model_device(spec.model)
    if device is None or device.type == "cpu":
        return spec
    return replace(spec, model=copy.deepcopy(spec.model).to("cpu"))
