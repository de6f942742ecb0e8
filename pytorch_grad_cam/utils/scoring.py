"""Scores of targets on model outputs, and their gradients: shared by the CAMs and metrics."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pytorch_grad_cam.activations_and_gradients import is_tensor_mapping, map_tensors
from pytorch_grad_cam.utils.model_outputs import OutputSelector, select_output
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, Target

_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def target_scores(output: Any, targets: Sequence[Target], selector: OutputSelector) -> torch.Tensor:
    """Each row's target score, float32, shape ``B`` (a target's values are summed).

    Consecutive rows that share one target object whose ``rowwise`` attribute is true
    (it maps a block of rows to their per-row results, as the classifier targets do)
    are scored with one call: perturbation methods and metrics score thousands of rows.
    """
    per_image = per_image_outputs(output, selector)
    scores = []
    start = 0
    for _, run in itertools.groupby(targets, key=id):
        count = len(list(run))
        target = targets[start]
        if getattr(target, "rowwise", False) and isinstance(per_image, torch.Tensor):
            block = _as_score(target(per_image[start : start + count]), targets, start)
            scores.append(block.reshape(count, -1).sum(dim=1).float())
        else:
            scores.extend(
                _as_score(target(per_image[row]), targets, row).sum().float().reshape(1)
                for row in range(start, start + count)
            )
        start += count
    return torch.cat(scores)


def _as_score(value: Any, targets: Sequence[Target], row: int) -> torch.Tensor:
    """What ``targets[row]`` returned, as a real tensor; anything else is a TypeError."""
    score = None
    if not isinstance(value, (bool, np.bool_, str, bytes)) and value is not None:
        try:
            score = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            score = None
    if score is not None and (score.is_floating_point() or score.dtype in _INTEGER_DTYPES):
        return score
    raise TypeError(
        f"targets[{row}] ({type(targets[row]).__name__}) returned "
        f"{type(value).__name__} {value!r:.60}, not a score: a target maps its image's model "
        "output to a real tensor (or number) to explain, e.g. ClassifierOutputTarget(category) "
        "returns model_output[category]."
    )


def per_image_outputs(output: Any, selector: OutputSelector) -> Any:
    """What each image's target is called with: its row of the scores, or its entry of a
    list of per-image dicts (torchvision detection models)."""
    if selector is None and isinstance(output, list) and output and isinstance(output[0], dict):
        return output
    return select_output(output, selector)


def top_class_targets(output: Any, selector: OutputSelector) -> list[Target]:
    """``targets=None``: each image's top-scoring class, kept on the device (no sync)."""
    scores = select_output(output, selector)
    if scores.ndim != 2:
        raise ValueError(
            "targets=None picks each image's top class, which needs scores of shape "
            f"B x K; the model's output has shape {tuple(scores.shape)}. Pass "
            "targets=[...] (one per image) from pytorch_grad_cam.utils.model_targets."
        )
    return [ClassifierOutputTarget(category) for category in scores.detach().argmax(dim=1)]


def layer_gradients(
    scores: torch.Tensor, activations: list[Any], create_graph: bool = False
) -> list[Any]:
    """d(sum of the images' scores)/d(activation) for every layer (images are independent);
    zeros where the scores do not depend on it. A layer's mapping of tensors gets a
    mapping of their gradients."""
    with torch.enable_grad():
        score = scores.sum()
    flat = [
        tensor
        for activation in activations
        for tensor in (activation.values() if is_tensor_mapping(activation) else [activation])
    ]
    flat_gradients: Sequence[torch.Tensor | None] = [None] * len(flat)
    if score.requires_grad:
        flat_gradients = torch.autograd.grad(
            score, flat, allow_unused=True, create_graph=create_graph
        )
    remaining = iter(
        [torch.zeros_like(a) if g is None else g for a, g in zip(flat, flat_gradients)]
    )
    # map_tensors visits a mapping's tensors in the order flattened above.
    return [map_tensors(lambda _: next(remaining), activation) for activation in activations]
