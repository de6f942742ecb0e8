"""Recipro-CAM (Byun & Lee, "Recipro-CAM: Fast gradient-free visual explanations for
convolutional neural networks", arXiv 2209.14074; CVPR-W 2024 as "ReciproCAM") and its
vision-transformer variant, ViT-ReciproCAM (Byun & Lee, arXiv 2310.02588)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pytorch_grad_cam.activations_and_gradients import is_tensor_mapping
from pytorch_grad_cam.cam_call import CamCall, CamOptions, LayerContext
from pytorch_grad_cam.layer_layout import channel_positions
from pytorch_grad_cam.perturbation_cam import PerturbationCAM, check_batch_size
from pytorch_grad_cam.tail_runs import TailRunner
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    Target,
)
from pytorch_grad_cam.utils.reshape_transforms import ReshapeTransform
from pytorch_grad_cam.utils.scoring import top_class_targets

if TYPE_CHECKING:
    from typing_extensions import Unpack

#: The masks a position can keep: its 3 x 3 Gaussian neighbourhood, or itself alone.
MASKS = ("gaussian", "position")
#: One axis of the Gaussian kernel: ``[1, 2, 1] / 4``; in 2-D ``[[1, 2, 1], [2, 4, 2],
#: [1, 2, 1]] / 16``.
GAUSSIAN_AXIS = (0.25, 0.5, 0.25)


class ReciproCAM(PerturbationCAM):
    """Keeps one position of the target layer's features at a time and reads the score.

    For image ``x``, the target layer's features ``A`` (``C x H x W`` after the reshape)
    and each position ``p`` of the ``P = H W`` positions, a spatial mask ``M_p`` keeps
    ``p`` and zeroes the rest: ``mask="gaussian"`` (default) keeps ``p``'s 3 x 3
    neighbourhood weighted by the Gaussian kernel ``G = [[1, 2, 1], [2, 4, 2], [1, 2, 1]]
    / 16`` centred on ``p`` (cut off at the map's border), ``mask="position"`` keeps ``p``
    alone (``M_p(p) = 1``). The part of the network after the layer runs on each masked
    copy ``A * M_p`` (the mask broadcast over the channels), and the target's score there
    is the map's value at ``p``:

    ``S(p) = y(f_after(A * M_p))``;  ``map = S - min_q S(q)``, scaled to [0, 1] per image
    (the paper's min-max normalisation) and resized to the input.

    The paper's score is the class's softmax probability: ``targets=None`` explains each
    image's top class with ``ClassifierOutputSoftmaxTarget`` (pass
    ``ClassifierOutputTarget(c)`` for the logit instead; any target works). No gradients.
    The map is the scores themselves, not a weighting of channels, so ``eigen_smooth`` has
    nothing to decompose (a ValueError); the shift by ``min S`` only makes the raw map
    (``scale=False``) non-negative, so that the pipeline's ReLU changes nothing.

    Vision transformers (ViT-ReciproCAM): the positions are the patch tokens, laid out by
    the reshape (given or inferred); tokens the reshape drops, the class token among
    them, are kept unmasked. The ViT paper masks the tokens entering the explained block,
    residual stream included: for a timm ViT that is ``target_layers=[model.blocks[-2]]``
    (the tokens the last block receives); ``model.blocks[-1].norm1`` masks only the input of
    the last block's attention and MLP. A ``reshape_transform`` must only rearrange or drop
    elements, so that each position can be traced back to the layer's output.

    Only the part of the network after the target layer sees the masks, so the model is
    traced with ``torch.fx`` and batches of ``batch_size`` masked copies go through that
    part only (``tail_paths[i] == "tail"``), as in AblationCAM; where it cannot run on its
    own (see :mod:`pytorch_grad_cam.tail_runs`), each batch runs the whole model with the
    layer's output replaced (``"full forward"``): slower, same maps. The paper reports
    Recipro-CAM about 148 times faster than Score-CAM.

    Args:
        mask: ``"gaussian"`` (default) or ``"position"``, see above. Also an attribute.

    ``batch_size`` (masked copies per forward pass) and ``progress_bar`` are those of
    :class:`~pytorch_grad_cam.perturbation_cam.PerturbationCAM`.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module] | None = None,
        reshape_transform: ReshapeTransform | None = None,
        mask: str = "gaussian",
        *,
        batch_size: int = 32,
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
        self.mask = check_mask(mask)
        #: For each target layer, the path the last call took: "tail" or "full forward".
        self.tail_paths: list[str] = []
        #: The model traced at the first call, and the runs of the layers' tails.
        self._tails = TailRunner(self.model, self.target_layers)

    def run_model(self, call: CamCall) -> Any:
        """The pass's forward, through the traced model when it can be (see
        :class:`~pytorch_grad_cam.tail_runs.TailRunner`)."""
        self.tail_paths = []
        return self._tails.run_model(call)

    def default_targets(self, output: Any) -> list[Target]:
        """``targets=None``: each image's top class, scored by its softmax probability (the
        paper's score), kept on the device."""
        return [
            ClassifierOutputSoftmaxTarget(target.category)
            for target in top_class_targets(output, self.output_selector)
            if isinstance(target, ClassifierOutputTarget)
        ]

    def weighted_activations(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, context: LayerContext
    ) -> torch.Tensor:
        """The map as one channel, ``B x 1 x *spatial``: ``S - min S`` per image."""
        if context.call is not None and context.call.eigen_smooth:
            raise ValueError(
                "eigen_smooth=True: ReciproCAM's map is one score per position, with no "
                "channels to take a principal component of; call it without eigen_smooth."
            )
        scores = self.position_scores(activations, context)
        shifted = scores - scores.min(dim=1, keepdim=True).values
        return shifted.view(activations.shape[0], 1, *activations.shape[2:])

    def position_scores(self, activations: torch.Tensor, context: LayerContext) -> torch.Tensor:
        """``B x P``: each image's target score with only position ``p``'s mask of the
        layer's features kept, for every position ``p`` (in the activations' order)."""
        mask = check_mask(self.mask)
        batch, channels = activations.shape[:2]
        spatial = tuple(activations.shape[2:])
        count = math.prod(spatial)
        if is_tensor_mapping(context.layer_output):
            raise ValueError(
                f"ReciproCAM: target_layers[{context.layer_index}] outputs a mapping of "
                "tensors (a feature pyramid); masking positions needs one tensor: use one "
                "level of the pyramid as the target layer."
            )
        keeping = PositionKeeping(context, channels, spatial, mask)
        image_rows = [image for image in range(batch) for _ in range(count)]
        positions = torch.arange(count, device=context.layer_output.device).repeat(batch)
        batch_size = min(check_batch_size(self.batch_size), len(image_rows))
        runs = self._tails.runs(context, batch_size, keeping, self._target_scores)
        self.tail_paths.append(runs.path)
        targets = context.targets
        assert targets is not None  # uses_targets: BaseCAM resolved targets=None
        chunks = []
        starts = range(0, len(image_rows), batch_size)
        with torch.inference_mode():
            for start in tqdm(starts, desc="ReciproCAM", disable=not self.progress_bar):
                rows = image_rows[start : start + batch_size]
                output = runs.run(rows, positions[start : start + batch_size])
                chunks.append(self._target_scores(output, [targets[row] for row in rows]))
            scores = torch.cat(chunks).to(activations.device)
        # Outside inference mode: an ordinary tensor for the rest of the pipeline.
        return scores.clone().view(batch, count)


class PositionKeeping:
    """Copies of one layer's output with only one position's mask kept per row.

    Called as ``keeping(copies, positions)``: row ``r`` of ``copies`` (a copy of its image's
    raw layer output) is multiplied, in place, by the mask of position ``positions[r]``,
    traced back through the reshape to the raw layout (elements the reshape drops are kept).
    """

    def __init__(
        self, context: LayerContext, channels: int, spatial: tuple[int, ...], mask: str
    ) -> None:
        output = context.layer_output
        self.spatial = spatial
        self.count = math.prod(spatial)
        self.mask = mask
        #: For each element of one image's raw output, its position (``count``: none, kept);
        #: ``None`` when the raw output is already ``C x *spatial``.
        self.element_position: torch.Tensor | None = None
        if context.reshape_transform is not None:
            located = channel_positions(output, channels, context.reshape_transform, "ReciproCAM")
            element_position = torch.full(
                (output[0].numel(),), self.count, dtype=torch.long, device=output.device
            )
            element_position[located.flatten()] = torch.arange(
                self.count, device=output.device
            ).repeat(channels)
            self.element_position = element_position

    def masks(self, positions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``N x P``: the mask of each of ``positions`` over the layer's positions."""
        kept = torch.zeros((positions.shape[0], self.count), dtype=dtype, device=positions.device)
        kept.scatter_(1, positions.view(-1, 1), 1.0)
        if self.mask == "position":
            return kept
        rank = len(self.spatial)
        axis = torch.tensor(GAUSSIAN_AXIS, dtype=dtype, device=positions.device)
        kernel = axis
        for _ in range(rank - 1):
            kernel = kernel.unsqueeze(-1) * axis
        convolve = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[rank]
        spread = convolve(
            kept.view(-1, 1, *self.spatial), kernel.view(1, 1, *kernel.shape), padding=1
        )
        return spread.view(-1, self.count)

    def __call__(self, copies: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``copies`` with row ``r`` masked by position ``positions[r]``, in place."""
        rows = copies.shape[0]
        dtype = torch.promote_types(copies.dtype, torch.float32)
        masks = self.masks(positions.to(copies.device), dtype)
        if self.element_position is None:
            return copies.mul_(masks.view(rows, 1, *self.spatial).to(copies.dtype))
        kept_elements = torch.ones((rows, 1), dtype=dtype, device=copies.device)
        weights = torch.cat([masks, kept_elements], dim=1)[:, self.element_position]
        return copies.mul_(weights.view(copies.shape).to(copies.dtype))


def check_mask(mask: Any) -> str:
    """``mask`` if it is one of :data:`MASKS`, or a ValueError that names it."""
    if not isinstance(mask, str) or mask not in MASKS:
        raise ValueError(
            f"mask must be 'gaussian' (each position's 3 x 3 Gaussian neighbourhood, the "
            f"default) or 'position' (the position alone), got {mask!r}."
        )
    return mask
