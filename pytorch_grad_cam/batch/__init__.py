"""Explain a whole dataset: a streaming, resumable batch job into a map store.

``explain_dataset(model, dataset, out, method=GradCAM, ...)`` runs a CAM over every
sample of an image folder, a torch ``Dataset`` or an iterable of ``(id, image[, label])``
and writes ``out/maps.zarr`` (array ``maps``: N x H x W, float16 or uint8), an index
``out/index.parquet`` (one row per sample: id, row, status, error, target, score,
top_class, method, layer, and optional deletion / insertion AUCs) and
``out/manifest.json``. A killed run resumes where it stopped; a finished one is not
run again. ``engine="ray"`` runs it on a Ray cluster (``pip install 'gradcam[ray]'``).
The command line is ``gradcam explain-dataset`` (``pytorch_grad_cam.batch.command``).

Reading a store back::

    import pyarrow.parquet as pq
    import zarr

    maps = zarr.open_array("OUT/maps.zarr", path="maps", mode="r")
    index = pq.read_table("OUT/index.parquet").to_pandas()
    first_ok = index[index.status == "ok"].iloc[0]
    heatmap = maps[int(first_ok.row)]  # H x W float16 in [0, 1]
"""

from __future__ import annotations

from pytorch_grad_cam.batch.images import IMAGE_EXTENSIONS
from pytorch_grad_cam.batch.job import explain_dataset
from pytorch_grad_cam.batch.manifest import StoreMismatchError
from pytorch_grad_cam.batch.ray_engine import RayOptions
from pytorch_grad_cam.batch.store import INDEX, MANIFEST, MAPS, MAPS_ARRAY
from pytorch_grad_cam.batch.summary import DatasetSummary

__all__ = [
    "IMAGE_EXTENSIONS",
    "INDEX",
    "MANIFEST",
    "MAPS",
    "MAPS_ARRAY",
    "DatasetSummary",
    "RayOptions",
    "StoreMismatchError",
    "explain_dataset",
]
