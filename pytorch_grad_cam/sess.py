"""SESS: Saliency Enhancing with Scaling and Sliding (Tursun, Denman, Sridharan and Fookes,
ECCV 2022, https://arxiv.org/abs/2207.01769).

A wrapper around any CAM method: the image at several scales, windows of the model's input
size slid over each, every window explained by the base method, and the windows' maps fused
back by their target scores (see :class:`SESS`). It runs in torch on the model's device.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.grad_cam import GradCAM as GradCAM  # re-exported, as on the incumbent
from pytorch_grad_cam.utils.image import scale_cam_image as scale_cam_image  # re-exported
from pytorch_grad_cam.utils.maps import resize_maps, scale_to_unit_range
from pytorch_grad_cam.utils.model_outputs import select_output
from pytorch_grad_cam.utils.model_state import model_in_eval_mode, model_lock
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.validation import check_input_tensor, check_positive_int, is_integer

#: A window's place in its scaled image: ``(y0, x0, y1, x1)``, end-exclusive, so the
#: window is ``image[..., y0:y1, x0:x1]``.
Coordinates = tuple[int, int, int, int]
Target = Callable[[Any], torch.Tensor]

#: The Gaussian weight of ``smooth=True`` has this standard deviation, in window widths.
SMOOTH_SIGMA = 0.25
POOLS = ("mean", "max")


class SESS:
    """SESS around ``base_method``: multi-scale sliding windows, fused by their scores.

    For one image ``X`` (``H x W``) and target ``t``, with window size ``w`` and step ``d``:

    1. **Scaling.** For each scale ``s`` of :meth:`get_scales` the image is resized
       (bilinear) so that its shorter side is ``s`` pixels, keeping its aspect ratio; the
       scale equal to the shorter side leaves it as it is.
    2. **Sliding.** ``w x w`` windows at the positions of :func:`sliding_window` (step
       ``d``, the last window flush with the border) cover every scaled image.
    3. **Scores.** Each window's score ``y_k`` is the target on the window's model output:
       ``t(softmax(output))`` with ``use_softmax_scores=True`` (for
       ``ClassifierOutputTarget(c)``, the probability of ``c``), ``t(output)`` otherwise.
    4. **Pre-filtering.** The ``floor(pre_filter_ratio * N)`` lowest-scoring of the ``N``
       windows (all scales together) are dropped, never all of them.
    5. **Explaining.** The base method maps each kept window, ``batch_size`` windows per
       call: ``m_k``, ``w x w``, scaled to [0, 1] by the base method. With ``theta > 0``
       values of ``m_k`` below ``theta`` are set to 0.
    6. **Fusion of a scale.** With the window weight ``a_k = y_k`` (``max(y_k, 0)`` for raw
       scores) and the spatial weight ``g_k(p)`` of pixel ``p`` inside window ``k`` (a
       Gaussian centred on the window, standard deviation ``w / 4``, with ``smooth=True``;
       1 otherwise), the scale's map at ``p`` is the spatial weighted average over the
       kept windows of that scale that cover ``p``:
       ``F_s(p) = sum_k a_k g_k(p) m_k(p) / sum_k g_k(p)``, and 0 where no kept window
       covers ``p``. A window with ``a_k = 0`` adds no saliency, whatever its map.
    7. **Fusion of the scales.** Each ``F_s`` is resized to ``H x W`` (bilinear); their mean
       (``pool='mean'``) or element-wise maximum (``pool='max'``) is min-max scaled to
       [0, 1] (a map with no signal is all zeros).

    With one scale equal to the image's shorter side and one window (a square image of
    the window's size), the result is the base method's map of the image.

    Args:
        model, target_layers, reshape_transform: passed to ``base_method``.
        base_method: the ``BaseCAM`` subclass that explains each window.
        scales: the shorter sides in pixels, each at least ``w``; default
            ``round(w * (1 + i * scale_step_ratio))`` for ``i < num_scales`` (224, 288,
            ..., 928 for ``w = 224``).
        window_size: ``w``; default: the input's shorter side (the model's input size).
        step_size: ``d``; default ``max(1, w // 2)``.
        pre_filter_ratio, theta: numbers in [0, 1), steps 4 and 5.
        pool, smooth, use_softmax_scores: steps 7, 6 and 3.
        batch_size: windows per forward pass, for scoring and for the base method.
        **kwargs: passed to ``base_method``'s constructor.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: list[nn.Module],
        reshape_transform: Callable | None = None,
        base_method: type[BaseCAM] = GradCAM,
        scales: list[int] | None = None,
        num_scales: int = 12,
        scale_step_ratio: float = 2 / 7,
        window_size: int | None = None,
        step_size: int | None = None,
        pre_filter_ratio: float = 0.0,
        theta: float = 0.0,
        pool: str = "mean",
        smooth: bool = True,
        use_softmax_scores: bool = True,
        batch_size: int = 32,
        **kwargs: Any,
    ) -> None:
        if not (isinstance(base_method, type) and issubclass(base_method, BaseCAM)):
            raise TypeError(
                f"base_method must be a CAM class (a BaseCAM subclass such as GradCAM), got "
                f"{base_method!r}; pass the class itself, not an instance."
            )
        self.scales = None if scales is None else _check_scales(scales)
        self.num_scales = check_positive_int(num_scales, "num_scales")
        self.scale_step_ratio = _check_fraction(
            "scale_step_ratio", scale_step_ratio, high=math.inf, open_low=True
        )
        self.window_size = (
            None if window_size is None else check_positive_int(window_size, "window_size")
        )
        self.step_size = None if step_size is None else check_positive_int(step_size, "step_size")
        self.pre_filter_ratio = _check_fraction("pre_filter_ratio", pre_filter_ratio)
        self.theta = _check_fraction("theta", theta)
        if pool not in POOLS:
            raise ValueError(f"pool must be 'mean' or 'max' (how scales combine), got {pool!r}.")
        self.pool = pool
        self.smooth = _check_bool("smooth", smooth)
        self.use_softmax_scores = _check_bool("use_softmax_scores", use_softmax_scores)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.output_selector = kwargs.get("output_selector")
        self.base = base_method(
            model, target_layers=target_layers, reshape_transform=reshape_transform, **kwargs
        )
        self.model = self.base.model
        self.target_layers = self.base.target_layers
        self.reshape_transform = reshape_transform
        self.outputs: Any = None

    # ----------------------------------------------------------------- the public call
    def forward(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Target] | None = None,
        eigen_smooth: bool = False,
        *,
        as_tensor: bool = False,
    ) -> np.ndarray | torch.Tensor:
        """One SESS map per image of ``input_tensor`` (``B x C x H x W``).

        Args:
            input_tensor: the images, at the model's input size.
            targets: one callable per image (``pytorch_grad_cam.utils.model_targets``), or
                class indices; ``None``: each image's top class on the whole image.
            eigen_smooth: passed to the base method.
            as_tensor: return a float32 tensor on the model's device instead of numpy.

        Returns:
            float32 maps ``B x H x W`` in [0, 1]; ``self.outputs`` is the model's output on
            the whole images.
        """
        input_tensor = check_input_tensor(input_tensor, self.model, ndims=(4,), who="SESS: ")
        batch = input_tensor.shape[0]
        targets = _check_targets(targets, batch)
        with model_lock(self.model):
            output = self._run_model(input_tensor)
            self.outputs = output
            if targets is None:
                scores = select_output(output, self.output_selector)
                targets = [ClassifierOutputTarget(c) for c in scores.argmax(dim=1)]
            maps = torch.stack(
                [
                    self._image_map(input_tensor[i : i + 1], targets[i], eigen_smooth)
                    for i in range(batch)
                ]
            )
        return maps if as_tensor else maps.cpu().numpy()

    __call__ = forward

    def forward_single_image(
        self, input_tensor: torch.Tensor, target: Target | None, eigen_smooth: bool = False
    ) -> np.ndarray:
        """The SESS map (``H x W`` numpy) of one image (``1 x C x H x W``); ``target=None``
        explains its top class (:meth:`get_target`)."""
        input_tensor = check_input_tensor(input_tensor, self.model, ndims=(4,), who="SESS: ")
        if input_tensor.shape[0] != 1:
            raise ValueError(f"input_tensor must hold one image, got {input_tensor.shape[0]}.")
        with model_lock(self.model):
            target = self.get_target(input_tensor) if target is None else target
            return self._image_map(input_tensor, target, eigen_smooth).cpu().numpy()

    # ----------------------------------------------------------------- the steps
    def get_scales(self, window_size: int) -> list[int]:
        """The scales (shorter sides in pixels) for windows of ``window_size``: ``scales``
        sorted, or ``round(window_size * (1 + i * scale_step_ratio))`` for
        ``i < num_scales`` without repeats."""
        window_size = check_positive_int(window_size, "window_size")
        if self.scales is not None:
            small = [scale for scale in self.scales if scale < window_size]
            if small:
                raise ValueError(
                    f"scales={self.scales}: {small} are smaller than window_size={window_size}; "
                    "each scale is the shorter side of a resized image and must hold a window."
                )
            return list(self.scales)
        ratio = self.scale_step_ratio
        steps = (round(window_size * (1 + i * ratio)) for i in range(self.num_scales))
        return list(dict.fromkeys(int(scale) for scale in steps))

    def get_target(self, input_tensor: torch.Tensor) -> Target:
        """``ClassifierOutputTarget`` of the top-scoring class of the (first) image."""
        scores = select_output(self._run_model(input_tensor), self.output_selector)
        return ClassifierOutputTarget(int(scores[0].argmax()))

    def collect_patches(
        self, input_tensor: torch.Tensor, window_size: int, step_size: int
    ) -> tuple[list[torch.Tensor], list[Coordinates]]:
        """The ``1 x C x window_size x window_size`` windows of one image (views, not
        copies) and their ``(y0, x0, y1, x1)`` coordinates, row by row."""
        if input_tensor.ndim == 3:
            input_tensor = input_tensor.unsqueeze(0)
        height, width = input_tensor.shape[-2:]
        coordinates = sliding_window(height, width, step_size, window_size)
        patches = [input_tensor[..., y0:y1, x0:x1] for y0, x0, y1, x1 in coordinates]
        return patches, coordinates

    def get_scores(self, patches: list[torch.Tensor], target: Target) -> np.ndarray:
        """Each patch's score (step 3 of the class docstring), as numpy."""
        return self._window_scores(patches, target).cpu().numpy()

    def paste_cam(
        self, cam: np.ndarray, coordinates: Coordinates, target_size: tuple[int, int]
    ) -> np.ndarray:
        """``cam`` placed at ``coordinates`` ``(y0, x0, y1, x1)`` on a zero canvas of
        ``target_size`` ``(height, width)``."""
        y0, x0, y1, x1 = (int(c) for c in coordinates)
        cam = np.asarray(cam, dtype=np.float32)
        canvas = np.zeros(tuple(int(size) for size in target_size), dtype=np.float32)
        window = canvas[max(y0, 0) : y1, max(x0, 0) : x1]
        if window.shape != cam.shape or cam.shape != (y1 - y0, x1 - x0):
            raise ValueError(
                f"cam of shape {cam.shape} does not fit coordinates {tuple(coordinates)} "
                f"(y0, x0, y1, x1) on a canvas of target_size {tuple(target_size)} (height, "
                "width); pass the window's own map and its place inside the canvas."
            )
        window[...] = cam
        return canvas

    # ----------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Release what the object holds (hooks only exist during a call)."""
        self.outputs = None
        self.base.__exit__(None, None, None)

    def __enter__(self) -> SESS:
        """Use as a context manager; leaving it calls :meth:`close`."""
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, exc_tb: Any) -> None:
        """Close; the caller's exception, if any, goes on."""
        self.close()

    # ----------------------------------------------------------------- internals
    def _image_map(self, image: torch.Tensor, target: Target, eigen_smooth: bool) -> torch.Tensor:
        """Steps 1-7 for one ``1 x C x H x W`` image: its ``H x W`` map on the device."""
        height, width = image.shape[2:]
        window = self.window_size if self.window_size is not None else min(height, width)
        step = self.step_size if self.step_size is not None else max(1, window // 2)
        sizes: list[tuple[int, int]] = []
        windows: list[tuple[int, torch.Tensor, Coordinates]] = []  # scale index, patch, place
        for index, scale in enumerate(self.get_scales(window)):
            scaled = rescale_image(image, scale)
            sizes.append((scaled.shape[2], scaled.shape[3]))
            patches, coordinates = self.collect_patches(scaled, window, step)
            windows.extend((index, patch, place) for patch, place in zip(patches, coordinates))
        scores = None
        if self.pre_filter_ratio > 0:
            scores = self._window_scores([patch for _, patch, _ in windows], target)
            dropped = math.floor(self.pre_filter_ratio * len(windows))
            keep = max(1, len(windows) - dropped)
            kept = torch.sort(scores, descending=True, stable=True).indices[:keep].sort().values
            scores = scores[kept]
            windows = [windows[i] for i in kept.tolist()]  # one sync per image
        fusion = WindowFusion(sizes, window, self.smooth, image.device)
        for start in range(0, len(windows), self.batch_size):
            chunk = windows[start : start + self.batch_size]
            batch = torch.cat([patch for _, patch, _ in chunk])
            targets = [target] * len(chunk)
            maps = torch.as_tensor(
                self.base(batch, targets, eigen_smooth=eigen_smooth, as_tensor=True, scale=True)
            )
            if scores is not None:
                batch_scores = scores[start : start + self.batch_size]
            else:
                batch_scores = self._scores_of_base_call(batch, target)
            if self.theta > 0:
                maps = maps * (maps >= self.theta)
            weights = batch_scores if self.use_softmax_scores else batch_scores.clamp(min=0)
            fusion.add(maps.detach().float(), weights, [(i, place) for i, _, place in chunk])
        return fusion.result((height, width), self.pool)

    def _run_model(self, batch: torch.Tensor) -> Any:
        """The model's output on ``batch``, in eval mode, without autograd."""
        with model_in_eval_mode(self.model), torch.no_grad():
            return self.model(batch)

    def _window_scores(self, patches: Sequence[torch.Tensor], target: Target) -> torch.Tensor:
        """Each window's score (a float32 tensor on the device), ``batch_size`` per forward."""
        scores = []
        for start in range(0, len(patches), self.batch_size):
            batch = torch.cat(list(patches[start : start + self.batch_size]))
            scores.append(self._score_output(self._run_model(batch), target, batch.shape[0]))
        return torch.cat(scores)

    def _scores_of_base_call(self, batch: torch.Tensor, target: Target) -> torch.Tensor:
        """The scores of the windows the base method has just explained, from its
        ``outputs`` (the model's output on them); a forward of their own if it has none."""
        if self.base.outputs is None:
            return self._window_scores([batch], target)
        return self._score_output(self.base.outputs, target, batch.shape[0])

    def _score_output(self, output: Any, target: Target, rows: int) -> torch.Tensor:
        """``target`` on each row of a model output (on its softmax, for softmax scores)."""
        scores = select_output(output, self.output_selector).detach()
        if scores.shape[0] != rows:
            raise ValueError(f"the model's output has {scores.shape[0]} rows, not {rows}.")
        if self.use_softmax_scores:
            scores = torch.softmax(scores.float(), dim=1 if scores.ndim > 1 else 0)
        if getattr(target, "rowwise", False):
            values = torch.as_tensor(target(scores))
        else:
            values = torch.stack([torch.as_tensor(target(scores[r])).sum() for r in range(rows)])
        return values.reshape(rows, -1).sum(dim=1).float()


class WindowFusion:
    """Steps 6-7 of :class:`SESS`: the windows' weighted maps, accumulated per scale.

    Maps arrive a batch at a time, so memory grows with the scaled images' sizes, not
    with the number of windows.

    Args:
        sizes: ``(height, width)`` of each scaled image.
        window_size: the windows' side.
        smooth: weight each window's pixels by a centred Gaussian (else uniformly).
        device: where the canvases live.
    """

    def __init__(
        self,
        sizes: Sequence[tuple[int, int]],
        window_size: int,
        smooth: bool,
        device: torch.device,
    ) -> None:
        self.numerators = [torch.zeros(size, device=device) for size in sizes]
        self.denominators = [torch.zeros(size, device=device) for size in sizes]
        self.profile = window_profile(window_size, smooth, device)

    def add(
        self,
        maps: torch.Tensor,
        weights: torch.Tensor,
        placements: Sequence[tuple[int, Coordinates]],
    ) -> None:
        """Add ``maps`` (``n x w x w``) with their ``weights`` (``n``) at their
        ``(scale index, (y0, x0, y1, x1))`` placements."""
        weighted = maps * weights.to(maps)[:, None, None] * self.profile
        for k, (index, (y0, x0, y1, x1)) in enumerate(placements):
            self.numerators[index][y0:y1, x0:x1] += weighted[k]
            self.denominators[index][y0:y1, x0:x1] += self.profile

    def result(self, size: tuple[int, int], pool: str) -> torch.Tensor:
        """The fused ``size`` map in [0, 1]: each scale's weighted average resized to
        ``size``, pooled over the scales (``'mean'`` or ``'max'``), min-max scaled."""
        fused = []
        for numerator, denominator in zip(self.numerators, self.denominators):
            covered = denominator > 0
            average = torch.where(covered, numerator / torch.where(covered, denominator, 1), 0)
            fused.append(resize_maps(average.unsqueeze(0), size)[0])
        stacked = torch.stack(fused)
        pooled = stacked.mean(dim=0) if pool == "mean" else stacked.amax(dim=0)
        return scale_to_unit_range(pooled.unsqueeze(0))[0]


# --------------------------------------------------------------------- windows and scales
def window_starts(length: int, step_size: int, window_size: int) -> list[int]:
    """Start offsets of windows of ``window_size`` along an axis of ``length`` pixels:
    ``0, step_size, 2 * step_size, ...`` while the window fits, then one flush with the
    end (``length - window_size``) if the steps do not land there. Every pixel is
    covered (``step_size <= window_size``); consecutive starts differ by ``step_size``,
    the last two by at most that."""
    length = check_positive_int(length, "length")
    step_size = check_positive_int(step_size, "step_size")
    window_size = check_positive_int(window_size, "window_size")
    if step_size > window_size:
        raise ValueError(
            f"step_size={step_size} is larger than window_size={window_size}, which would "
            "leave pixels between the windows; pass a step of at most the window size."
        )
    if window_size > length:
        raise ValueError(
            f"window_size={window_size} is larger than the image's side of {length} pixels; "
            "pass a smaller window_size, or scales of at least the window size."
        )
    starts = list(range(0, length - window_size + 1, step_size))
    if starts[-1] != length - window_size:
        starts.append(length - window_size)
    return starts


def sliding_window(height: int, width: int, step_size: int, window_size: int) -> list[Coordinates]:
    """The ``(y0, x0, y1, x1)`` windows (end-exclusive) covering a ``height x width``
    image, row by row: every pair of :func:`window_starts` of the two axes."""
    rows = window_starts(height, step_size, window_size)
    columns = window_starts(width, step_size, window_size)
    return [(y0, x0, y0 + window_size, x0 + window_size) for y0 in rows for x0 in columns]


def rescale_image(image: torch.Tensor, short_side: int) -> torch.Tensor:
    """``image`` (``B x C x H x W``) resized (bilinear, antialiased when shrinking) so its
    shorter side is ``short_side``, the aspect ratio kept; unchanged at its own size."""
    height, width = image.shape[-2:]
    if min(height, width) == short_side:
        return image
    factor = short_side / min(height, width)
    if height <= width:
        size = (short_side, max(short_side, round(width * factor)))
    else:
        size = (max(short_side, round(height * factor)), short_side)
    return F.interpolate(
        image, size=size, mode="bilinear", align_corners=False, antialias=factor < 1
    )


def window_profile(window_size: int, smooth: bool, device: torch.device) -> torch.Tensor:
    """A window's spatial weights ``g``: ones, or with ``smooth`` the separable Gaussian
    ``exp(-((u - c)^2 + (v - c)^2) / (2 sigma^2))``, ``c = (w - 1) / 2``,
    ``sigma = SMOOTH_SIGMA * w``."""
    if not smooth:
        return torch.ones(window_size, window_size, device=device)
    offsets = torch.arange(window_size, device=device, dtype=torch.float32) - (window_size - 1) / 2
    bump = torch.exp(-0.5 * (offsets / (SMOOTH_SIGMA * window_size)) ** 2)
    return bump[:, None] * bump[None, :]


# --------------------------------------------------------------------- argument checks
def _check_targets(targets: Any, batch: int) -> list[Target] | None:
    if targets is None:
        return None
    if not isinstance(targets, (list, tuple)):
        raise TypeError(
            f"targets must be a list with one target per image, got {type(targets).__name__}; "
            "pass e.g. [ClassifierOutputTarget(c)] * batch_size."
        )
    resolved = [ClassifierOutputTarget(int(t)) if is_integer(t) else t for t in targets]
    for index, target in enumerate(resolved):
        if not callable(target):
            raise TypeError(
                f"targets[{index}] is a {type(target).__name__}, not a callable; use e.g. "
                "ClassifierOutputTarget(category) from pytorch_grad_cam.utils.model_targets."
            )
    if len(resolved) != batch:
        raise ValueError(
            f"targets has {len(resolved)} entries but input_tensor has {batch} images; pass "
            "one target per image."
        )
    return resolved


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}.")
    return bool(value)


def _check_fraction(name: str, value: Any, high: float = 1.0, open_low: bool = False) -> float:
    """A number in [0, high) ((0, high) with ``open_low``)."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (real and (value > 0 if open_low else value >= 0) and value < high):
        interval = f"{'(' if open_low else '['}0, {high:g})"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}.")
    return float(value)


def _check_scales(scales: Any) -> list[int]:
    values = list(scales) if isinstance(scales, (list, tuple, range)) else []
    if not values or not all(is_integer(s) and s >= 1 for s in values):
        raise ValueError(
            f"scales must be a non-empty list of positive ints (the shorter side, in pixels, "
            f"of each resized image), got {scales!r}."
        )
    return sorted({int(s) for s in values})
