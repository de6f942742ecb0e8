"""Scoring many perturbed copies of the input, ``batch_size`` at a time through one reused
buffer, on the model's device: what every metric runs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.utils.model_outputs import OutputSelector, select_output
from pytorch_grad_cam.utils.model_state import model_in_eval_mode
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, Target
from pytorch_grad_cam.utils.scoring import target_scores

#: ``fill(rows, start, stop)`` writes the perturbed inputs of jobs ``start:stop`` into
#: ``rows`` (``stop - start`` rows of the reused buffer).
Fill = Callable[[torch.Tensor, int, int], None]


def top_class_targets(output: Any, selector: OutputSelector) -> list[Target]:
    """Each image's highest-scoring class, as its softmax probability. The class stays a
    0-d tensor on the device: no host sync."""
    scores = select_output(output, selector)
    top = scores.reshape(scores.shape[0], -1).argmax(dim=1)
    return [ClassifierOutputSoftmaxTarget(category) for category in top]


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode (flags restored afterwards) and no autograd."""
    with model_in_eval_mode(model), torch.inference_mode():
        yield


def original_scores(
    model: nn.Module,
    input_tensor: torch.Tensor,
    targets: list[Target] | None,
    selector: OutputSelector,
    batch_size: int,
) -> tuple[torch.Tensor, list[Target]]:
    """The target score of each unperturbed image (``B``, on the device), and the targets
    (``None`` resolved to each image's top class, as a softmax probability)."""
    scores, resolved = [], []
    for start in range(0, input_tensor.shape[0], batch_size):
        chunk = input_tensor[start : start + batch_size]
        output = model(chunk)
        chunk_targets = (
            top_class_targets(output, selector)
            if targets is None
            else targets[start : start + chunk.shape[0]]
        )
        resolved.extend(chunk_targets)
        scores.append(target_scores(output, chunk_targets, selector))
    return torch.cat(scores), resolved


def batched_scores(
    model: nn.Module,
    sample: torch.Tensor,
    jobs: int,
    fill: Fill,
    job_targets: Sequence[Target],
    selector: OutputSelector,
    batch_size: int,
) -> torch.Tensor:
    """The target score of ``jobs`` perturbed inputs shaped like ``sample`` (one image),
    built by ``fill`` ``batch_size`` at a time in one reused buffer: memory grows with
    ``batch_size``, not with ``jobs``. No host sync per chunk. Returns ``jobs`` scores."""
    if jobs == 0:
        return torch.zeros(0, device=sample.device)
    rows = min(batch_size, jobs)
    buffer = torch.empty((rows, *sample.shape), dtype=sample.dtype, device=sample.device)
    scores = []
    for start in range(0, jobs, rows):
        stop = min(start + rows, jobs)
        chunk = buffer[: stop - start]
        fill(chunk, start, stop)
        scores.append(target_scores(model(chunk), job_targets[start:stop], selector))
    return torch.cat(scores)


def relevance_ranks(cams: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each pixel's rank in its map, ``B x N`` (``N`` pixels, flattened), on the maps'
    device: 0 for the most relevant (largest value), ``N - 1`` for the least. Ties are
    broken at random (one permutation from ``generator``), not by position."""
    flat = cams.flatten(1)
    count = flat.shape[1]
    shuffle = torch.randperm(count, generator=generator).to(flat.device)
    order = torch.argsort(flat[:, shuffle], dim=1, descending=True, stable=True)
    order = shuffle[order]
    ranks = torch.empty_like(order)
    positions = torch.arange(count, device=flat.device).expand_as(order)
    return ranks.scatter_(1, order, positions)


def to_numpy(scores: torch.Tensor) -> np.ndarray:
    """Scores as a float32 numpy array (one host copy)."""
    return scores.detach().float().cpu().numpy().astype(np.float32)
