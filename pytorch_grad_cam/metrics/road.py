"""ROAD: RemOve And Debias (Rong, Leemann, Borisov, Kasneci & Kasneci, ICML 2022, "A
Consistent and Efficient Evaluation Strategy for Attribution Methods",
https://arxiv.org/abs/2202.00449).

A map is judged by how the target's score changes when the pixels it ranks most (MoRF)
or least (LeRF) relevant are removed. Removed pixels are not set to a constant, whose
shape would itself tell the model where the removed pixels were, but imputed from their
surroundings by the Noisy Linear Imputer (:func:`noisy_linear_impute`).

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
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.base_cam import Target
from pytorch_grad_cam.metrics._common import (
    batched_scores,
    check_cams,
    check_input_tensor,
    check_int,
    check_metric_targets,
    check_model,
    check_noise,
    check_percentile,
    check_percentiles,
    evaluating,
    original_scores,
    relevance_ranks,
    to_numpy,
)
from pytorch_grad_cam.utils.model_outputs import OutputSelector

DEFAULT_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)

#: The imputer's neighbourhood: (dy, dx, weight). 1/6 for the 4 direct neighbours and
#: 1/12 for the 4 diagonal ones (they sum to 1), as in the paper.
NEIGHBOURS = (
    (-1, 0, 1 / 6),
    (1, 0, 1 / 6),
    (0, -1, 1 / 6),
    (0, 1, 1 / 6),
    (-1, -1, 1 / 12),
    (-1, 1, 1 / 12),
    (1, -1, 1 / 12),
    (1, 1, 1 / 12),
)

MORF, LERF = "most relevant first", "least relevant first"


def noisy_linear_impute(
    image: torch.Tensor | np.ndarray,
    removed: torch.Tensor | np.ndarray,
    noise: float = 0.01,
    rng: np.random.Generator | int | None = None,
) -> torch.Tensor | np.ndarray:
    """The paper's Noisy Linear Imputer: fill the ``removed`` pixels from their neighbours.

    ``image`` is ``C x H x W``, ``removed`` an ``H x W`` boolean mask. Each removed pixel
    ``i`` is the weighted average of its 8 neighbours ``j``:
    ``x_i = sum_j w_ij x_j / sum_j w_ij``, with ``w = 1/6`` for the direct neighbours and
    ``1/12`` for the diagonal ones, over the neighbours inside the image (the weights
    are renormalised at the border). Kept pixels are fixed, so this is one sparse linear
    system in the removed pixels, solved exactly (``scipy.sparse.linalg.spsolve``, one
    factorisation for all channels). Its solution is the discrete harmonic interpolation
    of the kept pixels: a linear ramp is reproduced exactly away from the border.
    Gaussian noise of std ``noise`` (in the image's units) is then added to the removed
    pixels only, drawn from ``rng`` (a ``numpy.random.Generator`` or a seed).

    Every 8-connected region of removed pixels must touch a kept pixel, which holds
    whenever at least one pixel is kept. Returns the imputed image, of ``image``'s type
    (and, for a tensor, its dtype and device).
    """
    from scipy import sparse
    from scipy.sparse.linalg import spsolve

    as_tensor = isinstance(image, torch.Tensor)
    if as_tensor:
        values = image.detach().cpu().double().numpy()
    else:
        values = np.asarray(image, dtype=np.float64)
    mask = removed.cpu().numpy() if isinstance(removed, torch.Tensor) else np.asarray(removed)
    if values.ndim != 3:
        raise ValueError(f"image must be C x H x W, got shape {values.shape}.")
    channels, height, width = values.shape
    if mask.shape != (height, width):
        raise ValueError(
            f"removed must be an H x W mask of the image's size {(height, width)}, got shape "
            f"{mask.shape}."
        )
    mask = mask.astype(bool).reshape(-1)
    unknown = np.flatnonzero(mask)
    result = values.reshape(channels, -1).copy()
    if unknown.size == mask.size:
        raise ValueError("removed covers every pixel; keep at least one to impute from.")
    if unknown.size:
        count = unknown.size
        index = np.full(mask.size, -1, dtype=np.int64)
        index[unknown] = np.arange(count)
        ys, xs = np.divmod(unknown, width)
        neighbours, weights = [], []
        for dy, dx, weight in NEIGHBOURS:
            y, x = ys + dy, xs + dx
            inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
            neighbours.append((np.where(inside, y * width + x, 0), inside))
            weights.append(np.where(inside, weight, 0.0))
        total = np.sum(weights, axis=0)
        rows, cols, entries = [np.arange(count)], [np.arange(count)], [np.ones(count)]
        rhs = np.zeros((count, channels))
        for (neighbour, inside), weight in zip(neighbours, weights):
            weight = weight / total
            neighbour_removed = mask[neighbour]
            free = inside & neighbour_removed
            fixed = inside & ~neighbour_removed
            rows.append(np.flatnonzero(free))
            cols.append(index[neighbour[free]])
            entries.append(-weight[free])
            rhs[fixed] += weight[fixed, None] * result[:, neighbour[fixed]].T
        matrix = sparse.csc_matrix(
            (np.concatenate(entries), (np.concatenate(rows), np.concatenate(cols))),
            shape=(count, count),
        )
        solution = np.asarray(spsolve(matrix, rhs)).reshape(count, channels).T
        if noise > 0:
            generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
            solution = solution + generator.normal(0.0, noise, size=solution.shape)
        result[:, unknown] = solution
    result = result.reshape(channels, height, width)
    if as_tensor:
        return torch.from_numpy(result).to(dtype=image.dtype, device=image.device)
    dtype = np.asarray(image).dtype
    return result.astype(dtype) if np.issubdtype(dtype, np.floating) else result


def removed_count(percentage: float, pixels: int) -> int:
    """``round(percentage / 100 * pixels)``, keeping at least one pixel."""
    return min(int(round(percentage / 100 * pixels)), pixels - 1)


class _ROAD:
    """The shared machinery: a plan of (order, percentile) removals, all imputed images
    scored ``batch_size`` at a time through one reused buffer."""

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

    def _changes(
        self,
        input_tensor: torch.Tensor,
        grayscale_cams: Any,
        targets: list[Target] | None,
        model: nn.Module,
        plan: list[tuple[str, float]],
        keep_images: bool = False,
    ) -> tuple[np.ndarray, torch.Tensor | None]:
        """``B x len(plan)`` score changes, and with ``keep_images`` the imputed images of
        a one-step plan (``B x C x H x W``)."""
        model = check_model(model, self.name)
        x = check_input_tensor(input_tensor, model, self.name)
        if x.ndim != 4:
            raise ValueError(
                f"{self.name}: ROAD's imputer works on 2-D images, B x C x H x W; got "
                f"input_tensor of shape {tuple(x.shape)}."
            )
        cams = check_cams(grayscale_cams, x, self.name)
        targets = check_metric_targets(targets, x.shape[0], self.name)
        batch_size = check_int(self.batch_size, "batch_size", self.name)
        images, channels, height, width = x.shape
        pixels = height * width
        rng = np.random.default_rng(self.seed)
        # One permutation breaks the ties of every map; one sync brings the ranks over.
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        ranks = relevance_ranks(cams, generator).cpu().numpy().reshape(images, height, width)
        host_images = x.detach().cpu()
        masks = []
        for mode, percentile in plan:
            if mode == MORF:
                count = removed_count(100 - percentile, pixels)
                masks.append(lambda r, count=count: r < count)
            else:
                count = removed_count(percentile, pixels)
                masks.append(lambda r, count=count: r >= pixels - count)
        kept = [] if keep_images else None

        def fill(rows: torch.Tensor, start: int, stop: int) -> None:
            for row, job in enumerate(range(start, stop)):
                image, step = divmod(job, len(plan))
                removed = masks[step](ranks[image])
                imputed = noisy_linear_impute(host_images[image], removed, self.noise, rng)
                rows[row].copy_(imputed)
                if kept is not None:
                    kept.append(imputed)

        with evaluating(model):
            before, targets = original_scores(model, x, targets, self.output_selector, batch_size)
            job_targets = [target for target in targets for _ in plan]
            after = batched_scores(
                model,
                x[0],
                images * len(plan),
                fill,
                job_targets,
                self.output_selector,
                batch_size,
            )
        changes = to_numpy(after).reshape(images, len(plan)) - to_numpy(before)[:, None]
        imputed = torch.stack(kept).to(x.device) if keep_images else None
        return changes.astype(np.float32), imputed


class ROADMostRelevantFirst(_ROAD):
    """ROAD, most relevant first: ``y(X with the 100 - percentile % most relevant pixels
    imputed) - y(X)`` per image. Lower (a larger drop) is better.

    Called as ``metric(input_tensor, grayscale_cams, targets, model,
    return_visualization=False)`` (``grayscale_cams``: ``B x H x W`` maps, any scale;
    ``targets``: one per image, or ``None`` for each image's top class as a softmax
    probability). Returns a float32 numpy array of ``B`` values, and with
    ``return_visualization=True`` also the imputed images (a tensor on the model's
    device).

    Args:
        percentile: the map's percentile above which pixels are removed, in (0, 100).
        noise: std of the imputer's Gaussian noise, in the input tensor's units.
        seed: seeds the tie-breaking and the noise; a call is reproducible.
        batch_size: imputed images per forward pass.
        output_selector: where the scores are in the model's output, as for the CAMs.
    """

    name = "ROADMostRelevantFirst"
    mode = MORF

    def __init__(
        self,
        percentile: float = 80,
        noise: float = 0.01,
        seed: int = 0,
        batch_size: int = 32,
        output_selector: OutputSelector = None,
    ) -> None:
        super().__init__(noise, seed, batch_size, output_selector)
        self.percentile = check_percentile(percentile, "percentile", self.name)

    def __call__(
        self,
        input_tensor: torch.Tensor,
        grayscale_cams: Any,
        targets: list[Target] | None,
        model: nn.Module,
        return_visualization: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, torch.Tensor]:
        percentile = check_percentile(self.percentile, "percentile", self.name)
        changes, imputed = self._changes(
            input_tensor,
            grayscale_cams,
            targets,
            model,
            [(self.mode, percentile)],
            keep_images=return_visualization,
        )
        if return_visualization:
            return changes[:, 0], imputed
        return changes[:, 0]


class ROADLeastRelevantFirst(ROADMostRelevantFirst):
    """ROAD, least relevant first: ``y(X with the percentile % least relevant pixels
    imputed) - y(X)`` per image. Higher (a smaller drop) is better.

    Arguments and call as :class:`ROADMostRelevantFirst`; ``percentile`` (default 20) is
    the map's percentile below which pixels are removed.
    """

    name = "ROADLeastRelevantFirst"
    mode = LERF

    def __init__(
        self,
        percentile: float = 20,
        noise: float = 0.01,
        seed: int = 0,
        batch_size: int = 32,
        output_selector: OutputSelector = None,
    ) -> None:
        super().__init__(percentile, noise, seed, batch_size, output_selector)


class ROADMostRelevantFirstAverage(_ROAD):
    """The mean of :class:`ROADMostRelevantFirst` over ``percentiles`` (default 10, 20,
    ..., 90), per image: lower is better. Called as
    ``metric(input_tensor, grayscale_cams, targets, model)``; returns ``B`` float32 values.
    All ``B x len(percentiles)`` imputed images go through the model ``batch_size`` at a
    time."""

    name = "ROADMostRelevantFirstAverage"
    mode = MORF

    def __init__(
        self,
        percentiles: Any = DEFAULT_PERCENTILES,
        noise: float = 0.01,
        seed: int = 0,
        batch_size: int = 32,
        output_selector: OutputSelector = None,
    ) -> None:
        super().__init__(noise, seed, batch_size, output_selector)
        self.percentiles = check_percentiles(percentiles, self.name)

    def _plan(self) -> list[tuple[str, float]]:
        return [(self.mode, p) for p in check_percentiles(self.percentiles, self.name)]

    def __call__(
        self,
        input_tensor: torch.Tensor,
        grayscale_cams: Any,
        targets: list[Target] | None,
        model: nn.Module,
    ) -> np.ndarray:
        changes, _ = self._changes(input_tensor, grayscale_cams, targets, model, self._plan())
        return self._reduce(changes)

    def _reduce(self, changes: np.ndarray) -> np.ndarray:
        return changes.mean(axis=1).astype(np.float32)


class ROADLeastRelevantFirstAverage(ROADMostRelevantFirstAverage):
    """The mean of :class:`ROADLeastRelevantFirst` over ``percentiles`` (default 10, 20,
    ..., 90), per image: higher is better. Arguments and call as
    :class:`ROADMostRelevantFirstAverage`."""

    name = "ROADLeastRelevantFirstAverage"
    mode = LERF


class ROADCombined(ROADMostRelevantFirstAverage):
    """``mean_p (LeRF(p) - MoRF(p)) / 2`` over ``percentiles`` (default 10, 20, ..., 90),
    per image: higher is better (the least relevant pixels matter less than the most
    relevant ones). The unperturbed score cancels. Arguments and call as
    :class:`ROADMostRelevantFirstAverage`; its ``2 x len(percentiles)`` imputed images per
    image go through the model ``batch_size`` at a time."""

    name = "ROADCombined"

    def _plan(self) -> list[tuple[str, float]]:
        percentiles = check_percentiles(self.percentiles, self.name)
        return [(LERF, p) for p in percentiles] + [(MORF, p) for p in percentiles]

    def _reduce(self, changes: np.ndarray) -> np.ndarray:
        half = changes.shape[1] // 2
        lerf, morf = changes[:, :half], changes[:, half:]
        return ((lerf - morf) / 2).mean(axis=1).astype(np.float32)
