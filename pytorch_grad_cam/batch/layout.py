"""The store's layout, fixed when it is created: sample count, chunk size, map size.

The first sample that loads gives the input shape (every other sample must have it;
decoded images all do) and so the maps' size; one forward pass on it gives the model's
number of classes, against which labels and a fixed target are checked.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pytorch_grad_cam.batch.samples import SampleReader
from pytorch_grad_cam.utils.model_outputs import OutputSelector, select_output
from pytorch_grad_cam.utils.model_state import model_device, model_in_eval_mode


def probe_layout(
    model: nn.Module,
    reader: SampleReader,
    chunk_rows: int,
    dtype: str,
    output_selector: OutputSelector = None,
) -> dict[str, Any]:
    """The layout of a new store for ``reader``'s samples (see the module's docstring)."""
    probe = SampleReader(reader.source, reader.image_size, reader.mean, reader.std)
    image = None
    for row in range(len(reader.source)):
        image = probe.read(row).image
        if image is not None:
            break
    if image is None:  # nothing loads: every sample will be recorded as failed
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
