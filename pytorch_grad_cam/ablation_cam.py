"""Ablation-CAM (Desai & Ramaswamy, WACV 2020, https://ieeexplore.ieee.org/document/9093360)."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pytorch_grad_cam.ablation_layer import AblationLayer
from pytorch_grad_cam.activations_and_gradients import is_tensor_mapping, split_first_tensor
from pytorch_grad_cam.base_cam import BaseCAM as BaseCAM  # re-exported: the incumbent's path
from pytorch_grad_cam.cam_call import CamCall, CamOptions, LayerContext
from pytorch_grad_cam.layer_layout import channel_positions as channel_positions  # re-exported
from pytorch_grad_cam.perturbation_cam import PerturbationCAM, check_batch_size
from pytorch_grad_cam.tail_runs import FULL_FORWARD_PATH as FULL_FORWARD_PATH  # re-exported
from pytorch_grad_cam.tail_runs import TAIL_PATH as TAIL_PATH  # re-exported
from pytorch_grad_cam.tail_runs import TailRunner
from pytorch_grad_cam.utils.find_layers import (
    replace_layer_recursive as replace_layer_recursive,  # re-exported: the incumbent's path
)
from pytorch_grad_cam.utils.maps import spatial_axes
from pytorch_grad_cam.utils.reshape_transforms import ReshapeTransform
from pytorch_grad_cam.utils.validation import check_cam_input as check_input

if TYPE_CHECKING:
    from typing_extensions import Unpack

logger = logging.getLogger(__name__)


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
        ablation_layer: AblationLayer | None = None,
        batch_size: int = 32,
        ratio_channels_to_ablate: float = 1.0,
        *,
        progress_bar: bool = False,
        **options: Unpack[CamOptions],
    ) -> None:
        super().__init__(
            model,
            target_layers,
            reshape_transform,
            batch_size=batch_size,
            progress_bar=progress_bar,
            **options,
        )
        if ablation_layer is not None and not isinstance(ablation_layer, AblationLayer):
            raise TypeError(
                "ablation_layer must be an AblationLayer (AblationLayer, AblationLayerVit, "
                "AblationLayerFasterRCNN from pytorch_grad_cam.ablation_layer), got "
                f"{type(ablation_layer).__name__}."
            )
        #: What an ablated channel becomes (the default, :class:`AblationLayer`: 0).
        self.ablation_layer = AblationLayer() if ablation_layer is None else ablation_layer
        self.ratio_channels_to_ablate = ratio_channels_to_ablate
        #: For each target layer, the path the last call took: "tail" or "full forward".
        self.ablation_paths: list[str] = []
        #: The model traced at the first call, and the runs of the layers' tails.
        self._tails = TailRunner(self.model, self.target_layers)

    # ----------------------------------------------------------------- the incumbent's API
    def get_cam_weights(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: Sequence[Any] | None,
        activations: Any,
        grads: Any,
    ) -> np.ndarray:
        """The incumbent's numpy hook (see ``BaseCAM.get_cam_weights``): ``B x C`` weights.
        Every ablation runs the whole model with ``target_layer``'s output replaced."""
        activations_t = torch.as_tensor(np.asarray(activations), device=self.device).float()
        input_tensor = check_input(input_tensor, self.model)
        with torch.no_grad():
            output = self.model(input_tensor)
        if targets is None:
            targets = self.default_targets(output)
        scores = self._target_scores(output, list(targets))
        context = LayerContext(
            model=self.model,
            layer=target_layer,
            layer_index=0,
            input_tensor=input_tensor,
            targets=list(targets),
            target_scores=scores.detach(),
            layer_output=activations_t,
            reshape_transform=None,
        )
        # Outside a call no traced values were recorded: every ablation runs the model.
        weights = self.layer_weights(activations_t, None, context)
        return weights.flatten(1).cpu().numpy()

    def assemble_ablation_scores(
        self,
        new_scores: list,
        original_score: float,
        ablated_channels: np.ndarray,
        number_of_channels: int,
    ) -> np.ndarray:
        """One score per channel: ``new_scores[i]`` for ``ablated_channels[i]``, the
        ``original_score`` for the channels that were not ablated."""
        scores = np.full(number_of_channels, float(original_score), dtype=np.float32)
        scores[np.asarray(ablated_channels, dtype=np.int64)] = np.asarray(
            [float(score) for score in new_scores], dtype=np.float32
        )
        return scores

    def save_activation(self, module: nn.Module, input: Any, output: Any) -> None:
        """A forward hook that keeps ``output`` as ``self.activations`` (detached)."""
        tensor, _ = split_first_tensor(output)
        self.activations = (tensor if tensor is not None else output).detach()

    # ----------------------------------------------------------------- forward pass
    def run_model(self, call: CamCall) -> Any:
        """The pass's forward, through the traced model when it can be (see
        :class:`~pytorch_grad_cam.tail_runs.TailRunner`)."""
        self.ablation_paths = []
        return self._tails.run_model(call)

    # ----------------------------------------------------------------- the weights
    def layer_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, context: LayerContext
    ) -> torch.Tensor:
        """``(y - y_k) / y`` for each ablated channel ``k``, 0 for the others."""
        _check_ratio(self.ratio_channels_to_ablate)
        batch, channels = activations.shape[:2]
        chosen = self._channels_to_ablate(activations)  # B x k, on the device
        value = self.ablation_layer.ablation_value(context.layer_output)  # one sync per layer
        if value == 0:
            # Zeroing a channel that is already all zero changes nothing (y_k = y): those
            # rows are not run. Their count per image is read once per layer and call.
            active = activations.flatten(2).ne(0).any(dim=2).gather(1, chosen)
        else:
            active = torch.ones_like(chosen, dtype=torch.bool)
        image_rows = [b for b, count in enumerate(active.sum(dim=1).tolist()) for _ in range(count)]
        weight_shape = (batch, channels, *[1] * len(spatial_axes(activations)))
        if not image_rows:
            return activations.new_zeros(weight_shape)
        channel_rows = chosen[active]  # image 0's active channels, then image 1's, ...
        ablation = _Ablation(context, channels, value)
        scores, ablated = self._ablated_scores(context, image_rows, channel_rows, ablation)
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
        ablation: _Ablation,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's unablated score, and the score of every (image, channel) row with
        that channel ablated, both computed by the same path."""
        batch_size = min(check_batch_size(self.batch_size), len(image_rows))
        run, path, scores = self._tails.runs(
            context,
            batch_size,
            ablation,
            self._target_scores,
            unavailable=None if ablation.levels is None else "the layer outputs a feature pyramid",
            replace=None if ablation.levels is None else ablation.levels_ablated,
        )
        self.ablation_paths.append(path)
        logger.debug("AblationCAM target_layers[%d]: %s path", context.layer_index, path)
        chunks = []
        starts = range(0, len(image_rows), batch_size)
        # A pyramid's levels are ablated channel by channel from the host: one sync here.
        channels = channel_rows.tolist() if ablation.levels is not None else channel_rows
        targets = context.targets
        assert targets is not None and scores is not None  # AblationCAM uses targets
        with torch.inference_mode():
            for start in tqdm(starts, desc="AblationCAM", disable=not self.progress_bar):
                rows = image_rows[start : start + batch_size]
                output = run(rows, channels[start : start + batch_size])
                chunks.append(self._target_scores(output, [targets[r] for r in rows]))
        return scores, torch.cat(chunks)


def _check_ratio(ratio: Any) -> None:
    if not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ValueError(
            f"ratio_channels_to_ablate must be in (0, 1], got {ratio!r}; 1.0 ablates every channel."
        )


class _Ablation:
    """Ablates channels of copies of one layer's output: channel ``k`` of the (reshaped)
    activations, traced back to the raw output, set to ``value``."""

    def __init__(self, context: LayerContext, channels: int, value: float) -> None:
        self.value = value
        output = context.layer_output
        self.levels: list[tuple[Any, int]] | None = None
        self.positions: torch.Tensor | None = None
        if is_tensor_mapping(output):
            self.levels = _level_channels(context, output, channels)
        else:
            # C x P positions in one image
            self.positions = channel_positions(output, channels, context.reshape_transform)

    def __call__(self, rows: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
        """Set the positions of channel ``channels[r]`` of each row ``r`` (one image's
        output) to the value, in place (``rows`` is always a copy the caller made)."""
        assert self.positions is not None  # a tensor layer
        rows.view(rows.shape[0], -1).scatter_(1, self.positions[channels], self.value)
        return rows

    def levels_ablated(self, output: Any, channels: list[int]) -> Any:
        """A copy of the mapping ``output`` (a batch of copies of one image each) with
        channel ``channels[r]`` of the levels concatenated in order ablated in row ``r``."""
        ablated = copy.copy(output)
        for key, level in output.items():
            ablated[key] = level.clone()
        assert self.levels is not None  # a mapping layer
        for row, channel in enumerate(channels):
            key, local = self.levels[channel]
            ablated[key][row, local] = self.value
        return ablated


def _level_channels(context: LayerContext, output: Any, channels: int) -> list[tuple[Any, int]]:
    """``(level key, channel)`` for each channel of the levels concatenated in order, the
    layout ``fasterrcnn_reshape_transform`` makes."""
    pairs = [(key, c) for key, level in output.items() for c in range(level.shape[1])]
    if len(pairs) != channels:
        layer = type(context.layer).__name__
        raise ValueError(
            f"AblationCAM: target_layers[{context.layer_index}] ({layer}) outputs a mapping "
            f"of {len(pairs)} channels in all, but its reshape_transform gives {channels}; "
            "ablating a feature pyramid needs a transform that concatenates the levels' "
            "channels in order, such as fasterrcnn_reshape_transform, or use a level of the "
            "pyramid as the target layer."
        )
    return pairs
