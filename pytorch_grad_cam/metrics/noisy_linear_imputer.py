"""ROAD's Noisy Linear Imputer (Rong, Leemann, Borisov, Kasneci & Kasneci, ICML 2022, "A
Consistent and Efficient Evaluation Strategy for Attribution Methods",
https://arxiv.org/abs/2202.00449, section 4).

Removed pixels are not set to a constant, whose shape would tell the model where the
removed pixels were, but filled from their neighbourhood: each removed pixel is the
weighted average of its 8 neighbours (1/6 for the 4 direct ones, 1/12 for the 4
diagonal ones), kept pixels fixed. That is one sparse linear system in the removed
pixels, solved exactly; Gaussian noise is then added to the imputed pixels.

:func:`noisy_linear_impute` is the one implementation; :class:`NoisyLinearImputer` is
the same as a callable object ``imputer(img, mask)``, the form grad-cam 1.5.7's users
call, with its two steps as static methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch

#: One neighbour: its offset ``(row, column)`` from the pixel, and its weight.
Neighbour = tuple[tuple[int, int], float]
ArrayLike = Union[torch.Tensor, np.ndarray]

#: The paper's neighbourhood: 1/6 for the 4 direct neighbours, 1/12 for the 4 diagonal
#: ones (they sum to 1). A list, in this order, as grad-cam 1.5.7 spells it.
DEFAULT_WEIGHTING: list[Neighbour] = [
    ((1, 1), 1 / 12),
    ((0, 1), 1 / 6),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((0, -1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((-1, 0), 1 / 6),
]


def to_numpy(value: ArrayLike) -> np.ndarray:
    """A tensor (any device) or array as a numpy array; a tensor is read back once."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def check_weighting(weighting: Any) -> list[Neighbour]:
    """``weighting`` as a list of ``((row offset, column offset), weight)``."""
    try:
        pairs = [((int(dy), int(dx)), float(weight)) for (dy, dx), weight in weighting]
    except (TypeError, ValueError):
        raise TypeError(
            "weighting must be a list of ((row offset, column offset), weight) pairs, e.g. "
            f"[((0, 1), 1 / 6), ...], got {weighting!r}."
        ) from None
    if not pairs:
        raise ValueError("weighting is empty; pass at least one ((dy, dx), weight) neighbour.")
    if any(offset == (0, 0) for offset, _ in pairs):
        raise ValueError("weighting has the offset (0, 0): a pixel is not its own neighbour.")
    if any(not weight > 0 for _, weight in pairs):
        raise ValueError(f"weighting's weights must be > 0, got {[w for _, w in pairs]}.")
    return pairs


def check_image_and_mask(image: np.ndarray, mask: np.ndarray, name: str) -> None:
    """``image`` is ``C x H x W`` and ``mask`` ``H x W``, or an error that names them."""
    if image.ndim != 3:
        raise ValueError(f"image must be C x H x W, got shape {image.shape}.")
    if mask.shape != image.shape[1:]:
        raise ValueError(
            f"{name} must be an H x W mask of the image's size {image.shape[1:]}, got shape "
            f"{mask.shape}."
        )


def add_offset_to_indices(
    indices: np.ndarray, offset: tuple[int, int], mask_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The flat indices of the neighbours at ``offset`` of the pixels ``indices``.

    Args:
        indices: flat (raster-order) pixel indices into an ``H x W`` grid.
        offset: ``(row offset, column offset)`` of the neighbour.
        mask_shape: ``(H, W)``.

    Returns:
        ``(neighbours, inside)``: the neighbours' flat indices, and whether each lies
        inside the grid; where it does not, its index is 0 (a placeholder to mask out).
    """
    height, width = mask_shape
    rows, columns = np.divmod(np.asarray(indices, dtype=np.int64), width)
    rows, columns = rows + offset[0], columns + offset[1]
    inside = (rows >= 0) & (rows < height) & (columns >= 0) & (columns < width)
    return np.where(inside, rows * width + columns, 0), inside


def setup_sparse_system(
    mask: ArrayLike, img: ArrayLike, neighbors_weights: Sequence[Neighbour]
) -> tuple[Any, np.ndarray]:
    """The imputer's linear system ``A z = b`` in the pixels to impute.

    Unknown ``i`` (the ``i``-th pixel with ``mask == 0``, in raster order) satisfies
    ``z_i - sum_j w_ij z_j = sum_k w_ik x_k``: its imputed neighbours ``j`` on the left,
    its kept neighbours ``k`` (values ``x`` of ``img``) on the right, with the
    ``neighbors_weights`` of the neighbours inside the image renormalised to sum to 1.

    Args:
        mask: ``H x W``, 1 (nonzero) for a pixel to keep, 0 for one to impute.
        img: ``C x H x W``.
        neighbors_weights: ``[((row offset, column offset), weight), ...]``.

    Returns:
        ``(A, b)``: ``A`` a ``scipy.sparse.csc_matrix`` (unknowns x unknowns), ``b`` a
        float64 array (unknowns x C).
    """
    from scipy import sparse

    values = to_numpy(img).astype(np.float64)
    keep = to_numpy(mask).astype(bool)
    check_image_and_mask(values, keep, "mask")
    neighbours = check_weighting(neighbors_weights)
    channels = values.shape[0]
    flat_keep = keep.reshape(-1)
    flat_values = values.reshape(channels, -1)
    unknown = np.flatnonzero(~flat_keep)
    count = unknown.size
    index = np.full(flat_keep.size, -1, dtype=np.int64)
    index[unknown] = np.arange(count)
    located = [add_offset_to_indices(unknown, offset, keep.shape) for offset, _ in neighbours]
    inside_weights = [np.where(inside, w, 0.0) for (_, inside), (_, w) in zip(located, neighbours)]
    total = np.sum(inside_weights, axis=0)
    rows, cols, entries = [np.arange(count)], [np.arange(count)], [np.ones(count)]
    rhs = np.zeros((count, channels))
    for (neighbour, inside), (_, weight) in zip(located, neighbours):
        share = np.where(inside, weight, 0.0) / np.where(total > 0, total, 1.0)
        free = inside & ~flat_keep[neighbour]
        fixed = inside & flat_keep[neighbour]
        rows.append(np.flatnonzero(free))
        cols.append(index[neighbour[free]])
        entries.append(-share[free])
        rhs[fixed] += share[fixed, None] * flat_values[:, neighbour[fixed]].T
    matrix = sparse.csc_matrix(
        (np.concatenate(entries), (np.concatenate(rows), np.concatenate(cols))),
        shape=(count, count),
    )
    return matrix, rhs


def noisy_linear_impute(
    image: ArrayLike,
    removed: ArrayLike,
    noise: float = 0.01,
    rng: np.random.Generator | int | None = None,
    weighting: Sequence[Neighbour] = DEFAULT_WEIGHTING,
) -> ArrayLike:
    """The paper's Noisy Linear Imputer: fill the ``removed`` pixels from their neighbours.

    ``image`` is ``C x H x W``, ``removed`` an ``H x W`` boolean mask (True: impute).
    Each removed pixel ``i`` is the weighted average of its neighbours ``j``:
    ``x_i = sum_j w_ij x_j / sum_j w_ij``, with ``w = 1/6`` for the direct neighbours and
    ``1/12`` for the diagonal ones (``weighting``), over the neighbours inside the image
    (the weights are renormalised at the border). Kept pixels are fixed, so this is one
    sparse linear system in the removed pixels (:func:`setup_sparse_system`), solved
    exactly (``scipy.sparse.linalg.spsolve``, one factorisation for all channels). Its
    solution is the discrete harmonic interpolation of the kept pixels: a linear ramp
    is reproduced exactly away from the border. Gaussian noise of std ``noise`` (in the
    image's units) is then added to the removed pixels only, drawn from ``rng`` (a
    ``numpy.random.Generator`` or a seed).

    Every 8-connected region of removed pixels must touch a kept pixel, which holds
    whenever at least one pixel is kept. Returns the imputed image, of ``image``'s type
    (and, for a tensor, its dtype and device).
    """
    from scipy.sparse.linalg import spsolve

    values = to_numpy(image).astype(np.float64)
    mask = to_numpy(removed)
    check_image_and_mask(values, mask, "removed")
    mask = mask.astype(bool)
    if mask.all():
        raise ValueError("removed covers every pixel; keep at least one to impute from.")
    channels = values.shape[0]
    result = values.reshape(channels, -1).copy()
    unknown = np.flatnonzero(mask)
    if unknown.size:
        matrix, rhs = setup_sparse_system(~mask, values, weighting)
        solution = np.asarray(spsolve(matrix, rhs)).reshape(unknown.size, channels).T
        if noise > 0:
            generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
            solution = solution + generator.normal(0.0, noise, size=solution.shape)
        result[:, unknown] = solution
    imputed = result.reshape(values.shape)
    if isinstance(image, torch.Tensor):
        return torch.from_numpy(imputed).to(dtype=image.dtype, device=image.device)
    dtype = np.asarray(image).dtype
    return imputed.astype(dtype) if np.issubdtype(dtype, np.floating) else imputed


class NoisyLinearImputer:
    """ROAD's Noisy Linear Imputer as a callable: ``imputer(img, mask)``.

    ``mask`` marks the pixels to **keep** with 1 and those to impute with 0 (the keep
    mask that :class:`~pytorch_grad_cam.metrics.perturbation_confidence.RemoveMostRelevantFirst`
    hands over). The ROAD paper's binary mask ``M`` marks the opposite, the removed
    pixels: pass ``1 - M``.

    Args:
        noise: std of the Gaussian noise added to the imputed pixels, in the image's units.
        weighting: the neighbours, ``[((row offset, column offset), weight), ...]``;
            default the paper's 1/6 (direct) and 1/12 (diagonal).
        seed: seeds the noise (an int, a ``numpy.random.Generator`` to draw from, or
            ``None`` for fresh entropy); successive calls draw new noise.
    """

    def __init__(
        self,
        noise: float = 0.01,
        weighting: list[Neighbour] = DEFAULT_WEIGHTING,
        seed: np.random.Generator | int | None = None,
    ) -> None:
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
            raise ValueError(f"NoisyLinearImputer: noise must be a number >= 0, got {noise!r}.")
        self.noise = float(noise)
        self.weighting = check_weighting(weighting)
        self.rng = np.random.default_rng(seed)

    def __call__(self, img: torch.Tensor, mask: torch.Tensor) -> ArrayLike:
        """``img`` (``C x H x W``) with the pixels where ``mask == 0`` imputed.

        Returns a tensor of ``img``'s dtype and device (an array for an array).
        """
        keep = to_numpy(mask)
        return noisy_linear_impute(img, keep == 0, self.noise, self.rng, self.weighting)

    add_offset_to_indices = staticmethod(add_offset_to_indices)
    setup_sparse_system = staticmethod(setup_sparse_system)
