"""SS-CAM: Smoothed Score-CAM (Wang et al., 2020, https://arxiv.org/abs/2006.14255)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from pytorch_grad_cam.cam_call import CamOptions, LayerContext
from pytorch_grad_cam.score_cam import MaskedInputs, ScoreCAM
from pytorch_grad_cam.smooth_grad_cam_pp import (
    NoiseSource,
    check_generator,
    check_n_samples,
    check_stdev_spread,
    noise_drawer,
)
from pytorch_grad_cam.utils.reshape_transforms import ReshapeTransform

if TYPE_CHECKING:
    from typing_extensions import Unpack


class SSCAM(ScoreCAM):
    """Score-CAM with each channel's score averaged over noisy copies of its masked input.

    With ScoreCAM's normalised, upsampled masks ``H^k`` of image ``X`` and the noise added
    to the masked input (SS-CAM's input-space variant):

    ``S^k = (1/n) sum_{s=1..n} y(X * H^k + eps_s)``,  ``eps_s ~ N(0, sigma^2)``,
    ``sigma = stdev_spread * (max X - min X)``;
    ``w_k = softmax_k(S^k)``;  ``map = ReLU(sum_k w_k A^k)``.

    The same ``n`` noise images ``eps_1..eps_n`` serve every channel of an image (common
    random numbers: the channels' scores differ by their masks, not by their noise), so
    channels with equal masks still share their forward passes. Noise ``s`` of image ``b``
    is the ``(b * n + s)``-th image-shaped standard normal draw from ``generator``; an int
    seed restarts the draws for each target layer of each call. With ``stdev_spread=0``
    this is :class:`~pytorch_grad_cam.score_cam.ScoreCAM`.

    Memory grows with ``batch_size`` (one reused buffer of masked inputs, one noise image),
    not with ``n_samples`` or the channels; the model runs ``n_samples`` times per distinct
    mask. ``batch_size`` and ``progress_bar`` are those of ScoreCAM.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module] | None = None,
        reshape_transform: ReshapeTransform | None = None,
        batch_size: int = 32,
        n_samples: int = 10,
        stdev_spread: float = 0.15,
        *,
        generator: NoiseSource = None,
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
        self.n_samples = check_n_samples(n_samples)
        self.stdev_spread = check_stdev_spread(stdev_spread)
        self.generator = check_generator(generator)

    def masked_inputs(self, context: LayerContext) -> MaskedInputs:
        """The masked inputs with ``n_samples`` noise images added, the noise drawn afresh
        for this layer of this call."""
        n_samples = check_n_samples(self.n_samples)
        stdev_spread = check_stdev_spread(self.stdev_spread)
        draw = noise_drawer(check_generator(self.generator), context.input_tensor)
        return NoisyMaskedInputs(draw, n_samples, stdev_spread)


class NoisyMaskedInputs(MaskedInputs):
    """``image * mask + eps_s`` for row ``r`` = (sample ``s = r // N``, mask ``r % N``)."""

    def __init__(
        self, draw: Callable[..., torch.Tensor], n_samples: int, stdev_spread: float
    ) -> None:
        self.draw = draw
        self.variants = n_samples
        self.stdev_spread = stdev_spread
        self.noise: _NoiseStream | None = None

    def start_image(self, image_index: int, image: torch.Tensor) -> None:
        """A new stream of noise images for this image, scaled to its value range."""
        sigma = self.stdev_spread * (image.max() - image.min())
        self.noise = _NoiseStream(self.draw, image, sigma)

    def fill(
        self,
        out: torch.Tensor,
        masks: torch.Tensor,
        image: torch.Tensor,
        rows: range,
        distinct: int,
    ) -> torch.Tensor:
        """The masked image of each row plus its sample's noise image."""
        masked = super().fill(out, masks, image, rows, distinct)
        assert self.noise is not None  # start_image comes first
        first, last = rows.start // distinct, (rows.stop - 1) // distinct
        for sample in range(first, last + 1):
            begin = max(rows.start, sample * distinct) - rows.start
            end = min(rows.stop, (sample + 1) * distinct) - rows.start
            masked[begin:end] += self.noise.sample(sample)
        return masked


class _NoiseStream:
    """The noise images of one image, drawn in order; only the latest one is kept."""

    def __init__(self, draw: Callable[..., torch.Tensor], image: torch.Tensor, sigma: Any) -> None:
        self.draw, self.image, self.sigma = draw, image, sigma
        self.index = -1
        self.current: torch.Tensor | None = None

    def sample(self, index: int) -> torch.Tensor:
        """Noise ``index`` (indices must not decrease from call to call)."""
        while self.index < index:
            self.current = self.draw(out=torch.empty_like(self.image)).mul_(self.sigma)
            self.index += 1
        assert self.current is not None and self.index == index
        return self.current
