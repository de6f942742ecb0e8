"""Score-CAM (Wang et al., CVPR-W 2020, https://arxiv.org/abs/1910.01279)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pytorch_grad_cam.base_cam import BaseCAM as BaseCAM  # re-exported: the incumbent's path
from pytorch_grad_cam.cam_call import LayerContext
from pytorch_grad_cam.perturbation_cam import PerturbationCAM, check_batch_size
from pytorch_grad_cam.utils.maps import resize_maps, scale_to_unit_range
from pytorch_grad_cam.utils.model_targets import Target


class ScoreCAM(PerturbationCAM):
    """Weights each channel by the target score of the input masked with that channel.

    For image ``X`` and channel ``k`` of the target layer's activations ``A``:
    ``H^k = s(Up(A^k))``, the channel upsampled to the input's size (bilinear, corners
    aligned, as grad-cam 1.5.7 upsamples these masks; the paper does not say) and min-max
    normalised to [0, 1] (``s(M) = (M - min M) / (max M - min M)``; a constant map is
    all zeros); ``S^k = y(X * H^k)``, the target's score on the masked input (the mask
    is broadcast over the input's channels);

    ``w_k = softmax_k(S^k) = exp(S^k) / sum_j exp(S^j)``;  ``map = ReLU(sum_k w_k A^k)``.

    The paper's score increase ``S^k - y(X_baseline)`` gives the same weights: the
    softmax is unchanged by subtracting the same value from every score. No gradients
    are used; the model runs once per distinct mask.

    Channels with the same normalised map (all-zero channels after a ReLU are common)
    share one forward pass: the map min-max normalised at the layer's resolution is an
    exact key, since (bi/tri)linear upsampling is linear and maps constants to
    constants. The masked inputs are built ``batch_size`` at a time in one reused
    buffer, so memory grows with ``batch_size``, not with the number of channels.

    ``batch_size`` (masked images per forward pass) and ``progress_bar`` are those of
    :class:`~pytorch_grad_cam.perturbation_cam.PerturbationCAM`.
    """

    def get_cam_weights(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: Sequence[Any] | None,
        activations: Any,
        grads: Any,
    ) -> np.ndarray:
        """The incumbent's numpy hook, with its names here (see ``BaseCAM.get_cam_weights``)."""
        return super().get_cam_weights(input_tensor, target_layer, targets, activations, grads)

    def layer_weights(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor | None,
        context: LayerContext,
    ) -> torch.Tensor:
        """``softmax_k`` of the target scores of the input masked by each channel."""
        batch_size = check_batch_size(self.batch_size)
        input_tensor = context.input_tensor
        images, channels = activations.shape[:2]
        targets = context.targets
        assert targets is not None  # uses_targets: BaseCAM resolved targets=None
        masking = self.masked_inputs(context)

        with torch.inference_mode():
            # The dedup keys, one (small, layer-resolution) set per image: one sync each.
            distinct = []
            for image in range(images):
                canonical = scale_to_unit_range(activations[image].flatten(1))
                maps, inverse = torch.unique(canonical, dim=0, return_inverse=True)
                distinct.append((maps.view(-1, *activations.shape[2:]), inverse))
            rows = min(batch_size, masking.variants * max(maps.shape[0] for maps, _ in distinct))
            buffer = torch.empty(
                (rows, *input_tensor.shape[1:]),
                dtype=input_tensor.dtype,
                device=input_tensor.device,
            )
            bar = self._progress(distinct, rows, masking.variants, context.layer_index)
            per_image = []
            for image, (maps, inverse) in enumerate(distinct):
                masking.start_image(image, input_tensor[image])
                distinct_scores = self._masked_scores(
                    maps, image, input_tensor[image], targets[image], buffer, bar, masking, context
                )
                per_image.append(distinct_scores[inverse])
            if bar is not None:
                bar.close()
            scores = torch.stack(per_image)
        # Outside inference mode: the weights are an ordinary tensor.
        weights = torch.softmax(scores, dim=1).to(activations.device)
        return weights.view(images, channels, *[1] * (activations.ndim - 2))

    def masked_inputs(self, context: LayerContext) -> MaskedInputs:
        """How the masked inputs of one layer are built (ScoreCAM: the image times each
        mask, scored once). SS-CAM and IS-CAM replace it with their variants."""
        return MaskedInputs()

    def _masked_scores(
        self,
        maps: torch.Tensor,
        image_index: int,
        image: torch.Tensor,
        target: Target,
        buffer: torch.Tensor,
        bar: Any,
        masking: MaskedInputs,
        context: LayerContext,
    ) -> torch.Tensor:
        """The target's score on ``image`` masked with each of ``maps`` (``N x *spatial``,
        normalised), averaged over the variants of each masked image,
        ``buffer.shape[0]`` masked images per forward pass.

        Row ``r`` of the ``variants * N`` rows is variant ``r // N`` of mask ``r % N``.
        """
        distinct = maps.shape[0]
        variants = masking.variants
        size = image.shape[1:]
        sums = torch.zeros(distinct, device=image.device)
        for start in range(0, variants * distinct, buffer.shape[0]):
            rows = range(start, min(start + buffer.shape[0], variants * distinct))
            index = torch.arange(rows.start, rows.stop, device=maps.device) % distinct
            masks = _upsampled_masks(maps[index], size)
            masked = masking.fill(buffer[: len(rows)], masks, image, rows, distinct)
            output = context.run_model(masked, [image_index] * len(rows))
            scores = self._target_scores(output, [target] * len(rows))
            sums = sums.to(scores.device)
            sums.index_add_(0, index.to(scores.device), scores)
            if bar is not None:
                bar.update(1)
        return sums / variants

    def _progress(self, distinct: list, rows: int, variants: int, layer_index: int) -> Any:
        if not self.progress_bar:
            return None
        passes = sum(-(-variants * maps.shape[0] // rows) for maps, _ in distinct)
        name = type(self).__name__
        return tqdm(total=passes, desc=f"{name}, target layer {layer_index}", unit="batch")


class MaskedInputs:
    """How ScoreCAM builds the masked inputs of one target layer: each image times each
    of its (upsampled, normalised) channel masks, scored once (``variants = 1``).

    One object serves one layer of one call (per-call state lives here, not on the CAM).
    Row ``r`` of the ``variants * N`` rows of an image is variant ``r // N`` of mask
    ``r % N``; the scores of an image's variants of one mask are averaged.
    """

    #: How many variants of each masked image are scored.
    variants: int = 1

    def start_image(self, image_index: int, image: torch.Tensor) -> None:
        """Called before the rows of image ``image_index`` are built."""

    def fill(
        self,
        out: torch.Tensor,
        masks: torch.Tensor,
        image: torch.Tensor,
        rows: range,
        distinct: int,
    ) -> torch.Tensor:
        """Write the inputs of ``rows`` into ``out`` and return it: ``image * mask``, each
        mask (``len(rows) x *spatial``, upsampled) broadcast over the image's channels."""
        return torch.mul(masks.unsqueeze(1), image, out=out)


def _upsampled_masks(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``maps`` (normalised at their own resolution) upsampled to ``size`` and min-max
    normalised there (in place: two full-size temporaries fewer per chunk)."""
    upsampled = resize_maps(maps, size, align_corners=True)
    if upsampled is maps:
        return maps  # already at the input's size, and normalisation is idempotent
    return scale_to_unit_range(upsampled, in_place=True)
