"""ROAD: RemOve And Debias (Rong, Leemann, Borisov, Kasneci & Kasneci, ICML 2022, "A
Consistent and Efficient Evaluation Strategy for Attribution Methods",
https://arxiv.org/abs/2202.00449).

A map is judged by how the target's score changes when the pixels it ranks most (MoRF)
or least (LeRF) relevant are removed. Removed pixels are not set to a constant, whose
shape would itself tell the model where the removed pixels were, but imputed from their
surroundings by the Noisy Linear Imputer (:class:`NoisyLinearImputer`, the callable form
of :func:`noisy_linear_impute`).

Every metric here returns, per image, ``y(X_removed) - y(X)``: the target score on the
imputed image minus the score on the image itself.

- ``ROADMostRelevantFirst(percentile=p)``: removes the pixels above the ``p``-th
  percentile of the image's map, the ``100 - p`` % most relevant. A good map makes the
  score drop: lower (more negative) is better.
- ``ROADLeastRelevantFirst(percentile=p)``: removes the pixels below the ``p``-th
  percentile, the ``p`` % least relevant. A good map keeps the score: higher (closer to
  zero, or positive) is better.
- ``...Average(percentiles)``: the mean of the above over ``percentiles``.
- ``ROADCombined(percentiles)``: ``mean_p (LeRF(p) - MoRF(p)) / 2``; higher is better.
  With the default, symmetric percentiles (10, 20, ..., 90) both curves cover the same
  fractions of removed pixels.

"Removes the ``k`` % most relevant pixels" means exactly ``round(k / 100 * N)`` of the
``N`` pixels (at least one pixel is kept), the pixels ranked by the map's value with ties
broken at random (seeded), so that maps with large flat regions (ReLU zeros) still remove
the stated fraction. A pixel is removed in all the input's channels.

Each metric is built from :mod:`~pytorch_grad_cam.metrics.perturbation_confidence`, as
in grad-cam 1.5.7: ``ROADMostRelevantFirst(p)`` is a ``PerturbationConfidenceMetric``
whose perturbation is ``RemoveMostRelevantFirst(p, NoisyLinearImputer())``, and
``ROADMostRelevantFirstAverage(ps)`` an ``AveragerAcrossThresholds`` of
``ROADMostRelevantFirst`` over ``ps``. They rank all maps at once and score every
imputed image of every percentile ``batch_size`` at a time through one reused buffer.
Called as ``metric(input_tensor, cams, targets, model)`` (``grayscale_cams=`` is accepted
for ``cams=``); the single-percentile metrics also take ``return_visualization=False,
return_diff=True`` (``return_diff=False``: the scores on the imputed images).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.metrics.arguments import (
    also_accepts,
    check_cams,
    check_int,
    check_noise,
    check_percentile,
    check_percentiles,
)
from pytorch_grad_cam.metrics.batch_scoring import relevance_ranks
from pytorch_grad_cam.metrics.noisy_linear_imputer import NoisyLinearImputer, noisy_linear_impute
from pytorch_grad_cam.metrics.perturbation_confidence import (
    DEFAULT_PERCENTILES,
    AveragerAcrossThresholds,
    PerturbationConfidenceMetric,
    PerturbedBatch,
    RelevanceRemoval,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
    perturbed_scores,
)
from pytorch_grad_cam.utils.model_outputs import OutputSelector
from pytorch_grad_cam.utils.model_targets import Target

__all__ = [
    "AveragerAcrossThresholds",
    "NoisyLinearImputer",
    "PerturbationConfidenceMetric",
    "ROADCombined",
    "ROADLeastRelevantFirst",
    "ROADLeastRelevantFirstAverage",
    "ROADMostRelevantFirst",
    "ROADMostRelevantFirstAverage",
    "RemoveLeastRelevantFirst",
    "RemoveMostRelevantFirst",
    "noisy_linear_impute",
]

#: A ROAD plan: the removals of each image, in order.
Plan = list[tuple[type[RelevanceRemoval], float]]


def imputed_batch(
    metric: str,
    x: torch.Tensor,
    maps: torch.Tensor,
    plan: Plan,
    noise: float,
    seed: int,
    keep_images: bool,
) -> PerturbedBatch:
    """Every removal of ``plan`` for every image, imputed on the host.

    The maps are ranked once (one permutation from ``seed`` breaks every tie) and read
    back with the images in one transfer each; each job is then
    ``removal.imputer(image, removal.keep_mask(ranks))``, the noise drawn from one
    generator in job order, so a call is reproducible and independent of the batch size.
    """
    if x.ndim != 4:
        raise ValueError(
            f"{metric}: ROAD's imputer works on 2-D images, B x C x H x W; got "
            f"input_tensor of shape {tuple(x.shape)}."
        )
    images, _, height, width = x.shape
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    ranks = relevance_ranks(maps, generator).cpu().numpy().reshape(images, height, width)
    host_images = x.detach().cpu()
    imputer = NoisyLinearImputer(noise, seed=rng)
    removals = [removal(percentile, imputer) for removal, percentile in plan]
    kept: list[torch.Tensor] = []

    def fill(rows: torch.Tensor, start: int, stop: int) -> None:
        for row, job in enumerate(range(start, stop)):
            image, step = divmod(job, len(removals))
            removal = removals[step]
            imputed = removal.imputer(host_images[image], removal.keep_mask(ranks[image]))
            rows[row].copy_(imputed)
            if keep_images:
                kept.append(imputed)

    def kept_images() -> torch.Tensor | None:
        return torch.stack(kept).to(x.device) if keep_images else None

    return PerturbedBatch(len(removals), fill, kept_images)


class ROADBase:
    """The settings every ROAD metric shares, and its scoring of a plan of removals."""

    name = "ROAD"

    def __init__(
        self,
        noise: float = 0.01,
        seed: int = 0,
        batch_size: int = 32,
        output_selector: OutputSelector = None,
    ) -> None:
        self.noise = check_noise(noise, self.name)
        self.seed = check_int(seed, "seed", self.name, minimum=0)
        self.batch_size = check_int(batch_size, "batch_size", self.name)
        self.output_selector = output_selector

    def road_changes(
        self, input_tensor: Any, cams: Any, targets: Any, model: Any, plan: Plan
    ) -> np.ndarray:
        """``B x len(plan)`` score changes ``y(X imputed) - y(X)``."""

        def make_batch(x: torch.Tensor, maps: torch.Tensor, keep: bool) -> PerturbedBatch:
            return imputed_batch(self.name, x, maps, plan, self.noise, self.seed, keep)

        before, after, _ = perturbed_scores(
            self.name,
            input_tensor,
            cams,
            targets,
            model,
            lambda maps, x: check_cams(maps, x, self.name),
            make_batch,
            self.batch_size,
            self.output_selector,
        )
        return (after - before[:, None]).astype(np.float32)


class ROADMostRelevantFirst(ROADBase, PerturbationConfidenceMetric):
    """ROAD, most relevant first: ``y(X with the 100 - percentile % most relevant pixels
    imputed) - y(X)`` per image. Lower (a larger drop) is better.

    Called as ``metric(input_tensor, cams, targets, model, return_visualization=False,
    return_diff=True)`` (``cams``: ``B x H x W`` maps, any scale; ``targets``: one per
    image, or ``None`` for each image's top class as a softmax probability). Returns a
    float32 numpy array of ``B`` values (``return_diff=False``: the scores on the imputed
    images), and with ``return_visualization=True`` also the imputed images (a tensor on
    the model's device).

    Args:
        percentile: the map's percentile above which pixels are removed, in (0, 100).
        noise: std of the imputer's Gaussian noise, in the input tensor's units.
        seed: seeds the tie-breaking and the noise; a call is reproducible.
        batch_size: imputed images per forward pass.
        output_selector: where the scores are in the model's output, as for the CAMs.
    """

    name = "ROADMostRelevantFirst"
    removal: type[RelevanceRemoval] = RemoveMostRelevantFirst

    def __init__(
        self,
        percentile: float = 80,
        noise: float = 0.01,
        seed: int = 0,
        batch_size: int = 32,
        output_selector: OutputSelector = None,
    ) -> None:
        ROADBase.__init__(self, noise, seed, batch_size, output_selector)
        self.percentile = check_percentile(percentile, "percentile", self.name)
        imputer = NoisyLinearImputer(self.noise, seed=self.seed)
        self.perturbation = self.removal(self.percentile, imputer, self.seed)

    def perturbed_batch(
        self, x: torch.Tensor, maps: torch.Tensor, keep_images: bool
    ) -> PerturbedBatch:
        """The fast path: :func:`imputed_batch` with this metric's one removal."""
        percentile = check_percentile(self.percentile, "percentile", self.name)
        plan: Plan = [(self.removal, percentile)]
        return imputed_batch(self.name, x, maps, plan, self.noise, self.seed, keep_images)


class ROADLeastRelevantFirst(ROADMostRelevantFirst):
    """ROAD, least relevant first: ``y(X with the percentile % least relevant pixels
    imputed) - y(X)`` per image. Higher (a smaller drop) is better.

    Arguments and call as :class:`ROADMostRelevantFirst`; ``percentile`` (default 20) is
    the map's percentile below which pixels are removed.
    """

    name = "ROADLeastRelevantFirst"
    removal = RemoveLeastRelevantFirst

    def __init__(
        self,
        percentile: float = 20,
        noise: float = 0.01,
        seed: int = 0,
        batch_size: int = 32,
        output_selector: OutputSelector = None,
    ) -> None:
        super().__init__(percentile, noise, seed, batch_size, output_selector)


class ROADMostRelevantFirstAverage(ROADBase, AveragerAcrossThresholds):
    """The mean of :class:`ROADMostRelevantFirst` over ``percentiles`` (default 10, 20,
    ..., 90), per image: lower is better. Called as
    ``metric(input_tensor, cams, targets, model)``; returns ``B`` float32 values.
    All ``B x len(percentiles)`` imputed images go through the model ``batch_size`` at a
    time (``AveragerAcrossThresholds`` would run one metric per percentile)."""

    name = "ROADMostRelevantFirstAverage"
    single: type[ROADMostRelevantFirst] = ROADMostRelevantFirst

    def __init__(
        self,
        percentiles: list[float] = DEFAULT_PERCENTILES,
        noise: float = 0.01,
        seed: int = 0,
        batch_size: int = 32,
        output_selector: OutputSelector = None,
    ) -> None:
        ROADBase.__init__(self, noise, seed, batch_size, output_selector)
        single = functools.partial(
            self.single,
            noise=self.noise,
            seed=self.seed,
            batch_size=self.batch_size,
            output_selector=output_selector,
        )
        AveragerAcrossThresholds.__init__(self, single, percentiles)

    @also_accepts("grayscale_cams", "cams")
    def __call__(
        self,
        input_tensor: torch.Tensor,
        cams: Any,
        targets: list[Target] | None,
        model: nn.Module,
    ) -> np.ndarray:
        """The mean over the percentiles, float32 numpy ``B``."""
        percentiles = check_percentiles(self.percentiles, self.name)
        plan: Plan = [(self.single.removal, p) for p in percentiles]
        changes = self.road_changes(input_tensor, cams, targets, model, plan)
        return changes.mean(axis=1).astype(np.float32)


class ROADLeastRelevantFirstAverage(ROADMostRelevantFirstAverage):
    """The mean of :class:`ROADLeastRelevantFirst` over ``percentiles`` (default 10, 20,
    ..., 90), per image: higher is better. Arguments and call as
    :class:`ROADMostRelevantFirstAverage`."""

    name = "ROADLeastRelevantFirstAverage"
    single = ROADLeastRelevantFirst


class ROADCombined(ROADBase):
    """``mean_p (LeRF(p) - MoRF(p)) / 2`` over ``percentiles`` (default 10, 20, ..., 90),
    per image: higher is better (the least relevant pixels matter less than the most
    relevant ones). The unperturbed score cancels. That is
    ``(ROADLeastRelevantFirstAverage(ps) - ROADMostRelevantFirstAverage(ps)) / 2``, with
    all ``2 x len(percentiles)`` imputed images per image going through the model
    ``batch_size`` at a time. Called as ``metric(input_tensor, cams, targets, model)``;
    arguments as :class:`ROADMostRelevantFirstAverage`."""

    name = "ROADCombined"

    def __init__(
        self,
        percentiles: list[float] = DEFAULT_PERCENTILES,
        noise: float = 0.01,
        seed: int = 0,
        batch_size: int = 32,
        output_selector: OutputSelector = None,
    ) -> None:
        super().__init__(noise, seed, batch_size, output_selector)
        self.percentiles = check_percentiles(percentiles, self.name)

    @also_accepts("grayscale_cams", "cams")
    def __call__(
        self,
        input_tensor: torch.Tensor,
        cams: Any,
        targets: list[Target] | None,
        model: nn.Module,
    ) -> np.ndarray:
        """``mean_p (LeRF(p) - MoRF(p)) / 2``, float32 numpy ``B``."""
        percentiles = check_percentiles(self.percentiles, self.name)
        plan: Plan = [(RemoveLeastRelevantFirst, p) for p in percentiles]
        plan += [(RemoveMostRelevantFirst, p) for p in percentiles]
        changes = self.road_changes(input_tensor, cams, targets, model, plan)
        lerf, morf = changes[:, : len(percentiles)], changes[:, len(percentiles) :]
        return ((lerf - morf) / 2).mean(axis=1).astype(np.float32)
