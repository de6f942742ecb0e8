"""Ablation-CAM (Desai & Ramaswamy, WACV 2020, https://ieeexplore.ieee.org/document/9093360)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import ttach
from torch import nn
from tqdm.auto import tqdm

from pytorch_grad_cam.activations_and_gradients import is_tensor_mapping, split_first_tensor
from pytorch_grad_cam.base_cam import LayerContext, ReshapeTransform
from pytorch_grad_cam.perturbation_cam import PerturbationCAM, check_batch_size
from pytorch_grad_cam.utils.maps import spatial_axes
from pytorch_grad_cam.utils.model_outputs import OutputSelector
from pytorch_grad_cam.utils.model_tail import TailUnavailable, TracedModel, repeat_rows

logger = logging.getLogger(__name__)

TAIL_PATH = "tail"
FULL_FORWARD_PATH = "full forward"


class AblationCAM(PerturbationCAM):
    """Weights each channel by how much the score drops when the channel is removed.

    ``w_k = (y - y_k) / y``, with ``y`` the target score and ``y_k`` the score when
    channel ``k`` of the target layer's activations is set to zero;
    ``map = ReLU(sum_k w_k A^k)``. No gradients.

    Only the part of the network after the target layer sees the ablation, so the
    model is traced with ``torch.fx``, the part before the layer runs once per call, and
    batches of ablated activations go through the rest (``ablation_paths[i] == "tail"``).
    When the rest cannot be run on its own (the model cannot be traced, the layer runs
    more than once, the rest does not reproduce the model's scores, or the model takes
    ``extra_inputs`` / ``model_kwargs``), each batch of ablations runs the whole model
    with the layer's output replaced (``"full forward"``): slower, same result. The path
    is logged at DEBUG level.

    Args:
        ratio_channels_to_ablate: fraction of channels to ablate, those with the largest
            total activation magnitude per image; the others keep weight 0.

    ``batch_size`` and ``progress_bar`` are those of
    :class:`~pytorch_grad_cam.perturbation_cam.PerturbationCAM`.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module] | None = None,
        reshape_transform: ReshapeTransform | None = None,
        tta_transforms: ttach.Compose | None = None,
        output_selector: OutputSelector = None,
        batch_size: int = 32,
        ratio_channels_to_ablate: float = 1.0,
        progress_bar: bool = False,
        *,
        target_layer: nn.Module | None = None,
        use_cuda: bool | None = None,
    ) -> None:
        super().__init__(
            model,
            target_layers,
            reshape_transform,
            tta_transforms,
            output_selector,
            batch_size,
            progress_bar,
            target_layer=target_layer,
            use_cuda=use_cuda,
        )
        self.ratio_channels_to_ablate = ratio_channels_to_ablate
        #: For each target layer, the path the last call took: "tail" or "full forward".
        self.ablation_paths: list[str] = []
        self._traced: TracedModel | None = None
        #: Whether this call's forward pass ran through the traced model.
        self._traced_inputs = False
        self._trace_failure: str | None = None

    # ----------------------------------------------------------------- forward pass
    def _run_model(self, input_tensor: torch.Tensor) -> Any:
        traced = self._traced_model()
        if traced is None or self._model_inputs.args or self._model_inputs.kwargs:
            self._traced_inputs = False
            return self._call_model(input_tensor)
        self._traced_inputs = True
        return traced.run_and_record(input_tensor)

    def _traced_model(self) -> TracedModel | None:
        """Trace once per CAM object (in eval mode, during the first call)."""
        if self._traced is None and self._trace_failure is None:
            try:
                self._traced = TracedModel(self.model, self.target_layers)
            except TailUnavailable as reason:
                self._trace_failure = str(reason)
        return self._traced

    def _maps(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.ablation_paths = []
        try:
            return super()._maps(*args, **kwargs)
        finally:
            if self._traced is not None:
                self._traced.release()

    # ----------------------------------------------------------------- the weights
    def get_cam_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, context: LayerContext
    ) -> torch.Tensor:
        _check_ratio(self.ratio_channels_to_ablate)
        _check_one_tensor(context)
        batch, channels = activations.shape[:2]
        chosen = self._channels_to_ablate(activations)  # B x k, on the device
        # Zeroing a channel that is already all zero changes nothing (y_k = y): those rows
        # are not run. Their count per image is read once (one sync per layer and call).
        active = activations.flatten(2).ne(0).any(dim=2).gather(1, chosen)
        image_rows = [b for b, count in enumerate(active.sum(dim=1).tolist()) for _ in range(count)]
        weight_shape = (batch, channels, *[1] * len(spatial_axes(activations)))
        if not image_rows:
            return activations.new_zeros(weight_shape)
        channel_rows = chosen[active]  # image 0's active channels, then image 1's, ...
        positions = _channel_positions(context, channels)  # C x P positions in one image
        scores, ablated = self._ablated_scores(context, image_rows, channel_rows, positions)
        scores = scores.to(activations.device)
        ablated_scores = scores[:, None].expand(batch, channels).clone()
        image_of_row = torch.arange(batch, device=chosen.device)[:, None].expand_as(chosen)
        ablated_scores[image_of_row[active], channel_rows] = ablated.to(ablated_scores.dtype)
        drop = scores[:, None] - ablated_scores
        safe_scores = torch.where(scores != 0, scores, torch.ones_like(scores))[:, None]
        weights = torch.where(scores[:, None] != 0, drop / safe_scores, torch.zeros_like(drop))
        return weights.view(weight_shape)

    def _channels_to_ablate(self, activations: torch.Tensor) -> torch.Tensor:
        batch, channels = activations.shape[:2]
        every = torch.arange(channels, device=activations.device)
        if self.ratio_channels_to_ablate >= 1.0:
            return every.expand(batch, channels)
        count = max(1, math.ceil(self.ratio_channels_to_ablate * channels))
        magnitude = activations.abs().sum(dim=spatial_axes(activations))
        return magnitude.topk(count, dim=1).indices

    def _ablated_scores(
        self,
        context: LayerContext,
        image_rows: list[int],
        channel_rows: torch.Tensor,
        positions: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's unablated score, and the score of every (image, channel) row with
        that channel set to zero, both computed by the same path."""
        batch_size = min(check_batch_size(self.batch_size), len(image_rows))
        run, path, scores = self._ablation_runner(context, batch_size)
        self.ablation_paths.append(path)
        logger.debug("AblationCAM target_layers[%d]: %s path", context.layer_index, path)
        chunks = []
        starts = range(0, len(image_rows), batch_size)
        with torch.inference_mode():
            for start in tqdm(starts, desc="AblationCAM", disable=not self.progress_bar):
                rows = image_rows[start : start + batch_size]
                output = run(rows, positions[channel_rows[start : start + batch_size]])
                chunks.append(self._target_scores(output, [context.targets[r] for r in rows]))
        return scores, torch.cat(chunks)

    def _ablation_runner(self, context: LayerContext, batch_size: int):
        """A function (rows, zeroed positions) -> model output, its path name, and
        each image's unablated score computed by that path."""
        traced = self._traced
        problem = self._trace_failure
        if traced is not None and not self._traced_inputs:
            problem = "the model takes extra_inputs / model_kwargs, which the tail does not"
        elif traced is not None:
            problem = traced.tail_problem(context.layer_index)
        if problem is None:
            problem, tail_scores = self._tail_scores(context)
        if problem is None:
            # The recorder's copy: the traced value may have been changed in place downstream.
            tensor = context.layer_output
            _, rebuild = split_first_tensor(traced.layer_output(context.layer_index))
            # One buffer for every chunk: the rows are copied in, then ablated in place.
            buffer = torch.empty(
                (batch_size, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device
            )

            def run_tail(rows: list[int], zeroed: torch.Tensor) -> Any:
                ablated = _zero_positions(repeat_rows(tensor, rows, buffer[: len(rows)]), zeroed)
                return traced.run_tail(context.layer_index, rebuild(ablated), rows)

            return run_tail, TAIL_PATH, tail_scores

        logger.debug("AblationCAM: no tail for target_layers[%d]: %s", context.layer_index, problem)

        def run_full_forward(rows: list[int], zeroed: torch.Tensor) -> Any:
            def replace_output(module: nn.Module, inputs: Any, output: Any) -> Any:
                tensor, rebuild = split_first_tensor(output)
                return rebuild(_zero_positions(tensor.clone(), zeroed))

            handle = context.layer.register_forward_hook(replace_output)
            try:
                return self._call_model(repeat_rows(context.input_tensor, rows), rows)
            finally:
                handle.remove()

        return run_full_forward, FULL_FORWARD_PATH, context.target_scores

    def _tail_scores(self, context: LayerContext) -> tuple[str | None, torch.Tensor | None]:
        """Each image's score through the tail, unablated; checked once per call against the
        model's own (a problem if they differ). The check runs one row more than the batch
        (the first image twice), so that a batch size the tail reuses must be adapted."""
        traced = self._traced
        batch = context.input_tensor.shape[0]
        rows = [*range(batch), 0]
        with torch.inference_mode():
            tensor = context.layer_output
            _, rebuild = split_first_tensor(traced.layer_output(context.layer_index))
            try:
                output = traced.run_tail(
                    context.layer_index, rebuild(repeat_rows(tensor, rows)), rows
                )
                scores = self._target_scores(output, [context.targets[row] for row in rows])
            except Exception as error:  # the tail cannot run on its own, or its output
                # does not fit the targets
                return f"the part after the layer fails when run on its own: {error}", None
        expected = context.target_scores.to(scores.device)[rows]
        tolerance = 1e-4 * (1.0 + float(expected.abs().max()))
        if scores.shape != expected.shape or not torch.allclose(scores, expected, atol=tolerance):
            problem = "the part after the layer, run on its own, does not reproduce the scores"
            return problem, None
        return None, scores[:batch]


def _check_ratio(ratio: Any) -> None:
    if not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ValueError(
            f"ratio_channels_to_ablate must be in (0, 1], got {ratio!r}; 1.0 ablates every channel."
        )


def _check_one_tensor(context: LayerContext) -> None:
    """A mapping of tensors (a feature pyramid) has no channels of its own to set to zero."""
    if is_tensor_mapping(context.layer_output):
        layer = type(context.layer).__name__
        raise ValueError(
            "AblationCAM needs a layer whose output is one tensor, to set its channels to "
            f"zero; target_layers[{context.layer_index}] ({layer}) outputs a mapping "
            f"({type(context.layer_output).__name__}) of tensors (keys "
            f"{list(context.layer_output.keys())}). Use a level of the pyramid, e.g. "
            "model.backbone.fpn.layer_blocks[0], or GradCAM / EigenCAM / ScoreCAM, which "
            "take the mapping with its reshape_transform."
        )


def _channel_positions(context: LayerContext, channels: int) -> torch.Tensor:
    """``C x P``: where each channel of the (reshaped) activations lies in one image's raw
    layer output, found by passing element indices through ``reshape_transform``."""
    raw = context.layer_output[:1]
    index = torch.arange(raw.numel(), device=raw.device, dtype=torch.float64).view(raw.shape)
    if context.reshape_transform is None:
        return index.view(channels, -1).long()
    mapped = context.reshape_transform(index)
    is_index = mapped.shape[1] == channels and bool(
        ((mapped >= 0) & (mapped < raw.numel()) & (mapped == mapped.round())).all()
    )
    if not is_index or not torch.equal(
        context.reshape_transform(raw).float(), raw.reshape(-1)[mapped.long()].float()
    ):
        raise ValueError(
            "AblationCAM needs a reshape_transform that only rearranges or drops elements "
            "(reshape, permute, slicing), so that each channel can be traced back to the "
            "layer's output and set to zero; this one computes new values."
        )
    return mapped[0].reshape(channels, -1).long()


def _zero_positions(rows: torch.Tensor, zeroed: torch.Tensor) -> torch.Tensor:
    """Set the flat positions ``zeroed[r]`` of each row ``r`` (one image) to zero, in place
    (``rows`` is always a copy the caller made)."""
    rows.view(rows.shape[0], -1).scatter_(1, zeroed, 0)
    return rows
