"""The model's output on perturbed copies of a target layer's output, batch by batch.

Methods that change a layer's output many times (AblationCAM zeroes channels, ReciproCAM
keeps one position) need only the part of the network after the layer to see each
change. :class:`TailRunner` traces the model once per CAM object
(``utils.model_tail.TracedModel``), records what the part after each target layer needs
during the call's one forward pass, and runs only that part on batches of perturbed
copies: the ``"tail"`` path. Where that part cannot run on its own (the model cannot be
traced, the layer runs more than once, the tail does not reproduce the model's scores,
the model takes ``extra_inputs`` / ``model_kwargs``, or the method says so), each batch
runs the whole model with the layer's output replaced: the ``"full forward"`` path,
slower, same result.

A method describes its perturbation as ``perturb(copies, items)``: ``copies`` holds one
row per perturbed copy, each a copy of its image's layer output (a tensor the method may
change in place), and ``items`` says which perturbation each row gets (a tensor on the
device, or a list).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from pytorch_grad_cam.activations_and_gradients import split_first_tensor
from pytorch_grad_cam.cam_call import CamCall, LayerContext
from pytorch_grad_cam.utils.model_tail import TailUnavailable, TailValues, TracedModel, repeat_rows
from pytorch_grad_cam.utils.model_targets import Target

logger = logging.getLogger(__name__)

TAIL_PATH = "tail"
FULL_FORWARD_PATH = "full forward"
#: Where a pass keeps its traced values in ``call.method_state``.
TAIL_VALUES = "tail_runs.tail_values"

#: ``perturb(copies, items)``: the perturbed copies (``copies`` may be changed in place).
Perturb = Callable[[torch.Tensor, Any], torch.Tensor]
#: ``score(output, targets)``: each row's target score, shape ``N`` (the CAM's scoring).
Score = Callable[[Any, Sequence[Target]], torch.Tensor]
#: ``replace(output, items)``: the layer's whole output (any type) replaced, for the full
#: forward path of a layer whose output is not one tensor (a feature pyramid).
Replace = Callable[[Any, Any], Any]


class PerturbedRuns(NamedTuple):
    """How the perturbed copies of one target layer's output are run."""

    #: ``run(rows, items)``: the model's output for a batch whose row ``r`` is a copy of
    #: image ``rows[r]``'s layer output perturbed by ``items[r]``.
    run: Callable[[list[int], Any], Any]
    #: ``"tail"`` or ``"full forward"``.
    path: str
    #: Each image's unperturbed target score computed by the same path (``None`` for a
    #: class-agnostic call).
    scores: torch.Tensor | None


class TailRunner:
    """The traced model of one CAM object and the runs of its target layers' tails.

    Args:
        model: the CAM's model (never modified: tracing reads it, hooks live for one batch).
        layers: the CAM's target layers (each kept as one opaque call in the trace).
    """

    def __init__(self, model: nn.Module, layers: Sequence[nn.Module]) -> None:
        self.model = model
        self.layers = list(layers)
        #: The model traced at the first call (kept: tracing once per object is enough).
        self.traced: TracedModel | None = None
        #: Why the model could not be traced, once a trace failed.
        self.trace_failure: str | None = None

    def traced_model(self) -> TracedModel | None:
        """The traced model, traced at the first call (in eval mode, during a call)."""
        if self.traced is None and self.trace_failure is None:
            try:
                self.traced = TracedModel(self.model, self.layers)
            except TailUnavailable as reason:
                self.trace_failure = str(reason)
        return self.traced

    def run_model(self, call: CamCall) -> Any:
        """The pass's forward, through the traced model when it can be: the values the
        tails need are kept in the call (``call.method_state``), dropped with it."""
        traced = self.traced_model()
        if traced is None or call.model_inputs.given:
            return call.run_model(call.input_tensor)
        output, values = traced.run_and_record(call.input_tensor)
        call.method_state[TAIL_VALUES] = values
        return output

    def runs(
        self,
        context: LayerContext,
        batch_size: int,
        perturb: Perturb,
        score: Score,
        *,
        unavailable: str | None = None,
        replace: Replace | None = None,
    ) -> PerturbedRuns:
        """How to run ``context``'s layer perturbed, ``batch_size`` rows at most per run.

        ``unavailable`` names a reason of the method's own to skip the tail; ``replace``
        replaces the layer's whole output in the full forward path (default: its first
        tensor, cloned and perturbed).
        """
        traced = self.traced
        values = None if context.call is None else context.call.method_state.get(TAIL_VALUES)
        problem = unavailable
        if problem is None:
            if traced is None:
                problem = self.trace_failure or "the model was not traced"
            elif values is None:
                problem = "no traced values (the model takes extra_inputs / model_kwargs)"
            else:
                problem = traced.tail_problem(context.layer_index, values)
        if problem is None and traced is not None and values is not None:
            problem, tail_scores = _tail_scores(context, traced, values, score)
            if problem is None:
                return PerturbedRuns(
                    _tail_run(context, traced, values, batch_size, perturb), TAIL_PATH, tail_scores
                )
        logger.debug("no tail for target_layers[%d]: %s", context.layer_index, problem)
        return PerturbedRuns(
            _full_forward_run(context, perturb, replace), FULL_FORWARD_PATH, context.target_scores
        )


def _tail_run(
    context: LayerContext,
    traced: TracedModel,
    values: TailValues,
    batch_size: int,
    perturb: Perturb,
) -> Callable[[list[int], Any], Any]:
    # The recorder's copy: the traced value may have been changed in place downstream.
    tensor = context.layer_output
    _, rebuild = split_first_tensor(traced.layer_output(context.layer_index, values))
    # One buffer for every batch: the rows are copied in, then perturbed in place.
    buffer = torch.empty((batch_size, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)

    def run_tail(rows: list[int], items: Any) -> Any:
        copies = perturb(repeat_rows(tensor, rows, buffer[: len(rows)]), items)
        return traced.run_tail(context.layer_index, rebuild(copies), rows, values)

    return run_tail


def _full_forward_run(
    context: LayerContext, perturb: Perturb, replace: Replace | None
) -> Callable[[list[int], Any], Any]:
    def run_full_forward(rows: list[int], items: Any) -> Any:
        def replace_output(module: nn.Module, inputs: Any, output: Any) -> Any:
            if replace is not None:
                return replace(output, items)
            tensor, rebuild = split_first_tensor(output)
            return rebuild(perturb(tensor.clone(), items))

        handle = context.layer.register_forward_hook(replace_output)
        try:
            return context.run_model(repeat_rows(context.input_tensor, rows), rows)
        finally:
            handle.remove()

    return run_full_forward


def _tail_scores(
    context: LayerContext, traced: TracedModel, values: TailValues, score: Score
) -> tuple[str | None, torch.Tensor | None]:
    """Each image's score through the tail, unperturbed; checked once per layer and call
    against the model's own (a problem if they differ). The check runs one row more than
    the batch (the first image twice), so that a batch size the tail reuses must be
    adapted."""
    targets, expected_scores = context.targets, context.target_scores
    assert targets is not None and expected_scores is not None  # the methods use targets
    batch = context.input_tensor.shape[0]
    rows = [*range(batch), 0]
    with torch.inference_mode():
        tensor = context.layer_output
        _, rebuild = split_first_tensor(traced.layer_output(context.layer_index, values))
        try:
            output = traced.run_tail(
                context.layer_index, rebuild(repeat_rows(tensor, rows)), rows, values
            )
            scores = score(output, [targets[row] for row in rows])
        except Exception as error:  # the tail cannot run on its own, or its output
            # does not fit the targets
            return f"the part after the layer fails when run on its own: {error}", None
    expected = expected_scores.to(scores.device)[rows]
    tolerance = 1e-4 * (1.0 + float(expected.abs().max()))
    if scores.shape != expected.shape or not torch.allclose(scores, expected, atol=tolerance):
        return "the part after the layer, run on its own, does not reproduce the scores", None
    return None, scores[:batch]
