"""RandomCAM: a baseline for the metrics in :mod:`pytorch_grad_cam.metrics`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.cam_call import CamOptions, LayerContext
from pytorch_grad_cam.incumbent_hooks import CategoryNamedWeights
from pytorch_grad_cam.utils.reshape_transforms import ReshapeTransform
from pytorch_grad_cam.utils.validation import is_integer

if TYPE_CHECKING:
    from typing_extensions import Unpack


class RandomCAM(CategoryNamedWeights, BaseCAM):
    """Weights each channel by a random number: what a map that knows nothing scores.

    ``w_k ~ Uniform[-1, 1]``, drawn independently for every image, channel and target
    layer; ``map = ReLU(sum_k w_k A^k)``. Where that map would be empty (every weighted
    sum <= 0), the image's weights are negated (``-w`` has the same distribution), so
    the baseline always ranks the pixels by a smooth random map rather than by ties.
    No gradients are taken and the target is not used: the map is the same whatever is
    explained. A method worth using should beat it
    on the metrics (deletion, insertion, ROAD, ...).

    Args:
        seed: seeds a private ``torch.Generator`` (on the CPU) at construction:
            ``RandomCAM(model, layers, seed=0)`` gives the same maps in every process and
            on every device. Successive calls of one object draw new weights.
        generator: a ``torch.Generator`` to draw from instead (its device is used for the
            draw). With neither, torch's global generator is used, so
            ``torch.manual_seed`` makes the maps reproducible.

    The other arguments are those of :class:`~pytorch_grad_cam.base_cam.BaseCAM`.
    """

    uses_gradients = False
    uses_targets = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module] | None = None,
        reshape_transform: ReshapeTransform | None = None,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        **options: Unpack[CamOptions],
    ) -> None:
        super().__init__(
            model,
            target_layers,
            reshape_transform,
            **options,
        )
        if seed is not None and generator is not None:
            raise TypeError("Pass seed= or generator=, not both.")
        if seed is not None:
            if not is_integer(seed):
                raise TypeError(f"seed must be an int, got {type(seed).__name__}.")
            generator = torch.Generator().manual_seed(int(seed))
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator, got {type(generator).__name__}; "
                "pass seed=<int> for a seeded one."
            )
        self.generator = generator

    def layer_weights(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor | None,
        context: LayerContext,
    ) -> torch.Tensor:
        """Uniform random weights in [-1, 1] (negated where the map would be empty)."""
        images, channels = activations.shape[:2]
        device = self.generator.device if self.generator is not None else None
        uniform = torch.rand((images, channels), generator=self.generator, device=device)
        weights = (2 * uniform - 1).to(device=activations.device, dtype=activations.dtype)
        weights = weights.view(images, channels, *[1] * (activations.ndim - 2))
        # Where every weighted sum is <= 0 the map would be empty (all zeros after the
        # ReLU) and rank nothing: flip that image's weights (the distribution is symmetric).
        weighted_sum = (weights * activations).sum(dim=1).flatten(1)
        empty = (weighted_sum <= 0).all(dim=1)
        sign = 1 - 2 * empty.to(weights.dtype)
        return weights * sign.view(images, *[1] * (weights.ndim - 1))
