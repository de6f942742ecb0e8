"""The change of the target's score when each image is perturbed by its map.

The building blocks of grad-cam 1.5.7's confidence metrics, which every metric of
``cam_mult_image`` and ``road`` is an instance of:

- :class:`PerturbationConfidenceMetric` ``(perturbation)``: scores each image ``X`` and
  its perturbed copy ``perturbation(X, M)`` (``M`` its map) and returns ``O - Y``, the
  perturbed score minus the original one (or ``O`` itself with ``return_diff=False``).
- :class:`RemoveMostRelevantFirst` / :class:`RemoveLeastRelevantFirst`
  ``(percentile, imputer)``: perturbations that remove the pixels above (below) the
  map's ``percentile``-th percentile and let ``imputer(img, keep_mask)`` fill them in.
- :class:`AveragerAcrossThresholds` ``(metric_class, percentiles)``: the mean of
  ``metric_class(p)`` over the percentiles ``p``.

``ROADMostRelevantFirst(p)`` is ``PerturbationConfidenceMetric(RemoveMostRelevantFirst(p,
NoisyLinearImputer()))`` and ``CamMultImageConfidenceChange()`` is
``PerturbationConfidenceMetric(multiply_tensor_with_cam)``; those subclasses build their
perturbed images batch by batch on the model's device (the fast path) but give the same
numbers.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.metrics.arguments import (
    also_accepts,
    check_cams,
    check_input_tensor,
    check_int,
    check_metric_targets,
    check_model,
    check_percentile,
    check_percentiles,
)
from pytorch_grad_cam.metrics.batch_scoring import (
    Fill,
    batched_scores,
    evaluating,
    original_scores,
    relevance_ranks,
    to_numpy,
)
from pytorch_grad_cam.utils.model_outputs import OutputSelector
from pytorch_grad_cam.utils.model_targets import Target

#: ``perturbation(image, cam)``: one image ``C x H x W`` and its map ``H x W`` (tensors on
#: the model's device) to the perturbed image, of the image's shape.
Perturbation = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``imputer(image, keep_mask)``: fills the pixels where ``keep_mask == 0``.
Imputer = Callable[[torch.Tensor, Any], Any]

#: grad-cam 1.5.7's default percentiles (a list, as it spells them).
DEFAULT_PERCENTILES: list[float] = [10, 20, 30, 40, 50, 60, 70, 80, 90]


class PerturbedBatch(NamedTuple):
    """How a metric builds its perturbed images: ``per_image`` of them for each image,
    written by ``fill`` into rows of the reused buffer (jobs in image-major order), and
    ``images()`` the perturbed images kept for ``return_visualization`` (or ``None``)."""

    per_image: int
    fill: Fill
    images: Callable[[], torch.Tensor | None]


def perturbed_scores(
    metric: str,
    input_tensor: Any,
    cams: Any,
    targets: Any,
    model: Any,
    check_maps: Callable[[Any, torch.Tensor], torch.Tensor],
    make_batch: Callable[[torch.Tensor, torch.Tensor, bool], PerturbedBatch],
    batch_size: int,
    output_selector: OutputSelector,
    keep_images: bool = False,
) -> tuple[np.ndarray, np.ndarray, torch.Tensor | None]:
    """Check the arguments, then score the images and their perturbed copies.

    Returns ``Y`` (``B``), ``O`` (``B x per_image``), both float32 numpy, and the kept
    perturbed images. The model runs in eval mode without autograd, ``batch_size``
    images at a time; ``targets=None`` is each image's top class as a softmax probability.
    """
    model = check_model(model, metric)
    x = check_input_tensor(input_tensor, model, metric)
    maps = check_maps(cams, x)
    checked_targets = check_metric_targets(targets, x.shape[0], metric)
    batch_size = check_int(batch_size, "batch_size", metric)
    batch = make_batch(x, maps, keep_images)
    with evaluating(model):
        before, resolved = original_scores(model, x, checked_targets, output_selector, batch_size)
        job_targets = [target for target in resolved for _ in range(batch.per_image)]
        after = batched_scores(
            model, x[0], len(job_targets), batch.fill, job_targets, output_selector, batch_size
        )
    after_scores = to_numpy(after).reshape(x.shape[0], batch.per_image)
    return to_numpy(before), after_scores, batch.images()


class PerturbationConfidenceMetric:
    """``O - Y``: the target's score on each perturbed image minus its score on the image.

    Called as ``metric(input_tensor, cams, targets, model, return_visualization=False,
    return_diff=True)``:

    - ``input_tensor``: ``B x C x H x W`` (or ``B x C x D x H x W``), as the model takes it.
    - ``cams``: ``B x H x W`` maps, numpy or torch (``grayscale_cams=`` is accepted too).
    - ``targets``: one target per image (``pytorch_grad_cam.utils.model_targets``);
      ``None``: each image's top class on the unperturbed input, as a softmax probability.
    - ``model``: any ``nn.Module``; it runs in eval mode without autograd, on its own
      device, and its train/eval flags are restored afterwards.
    - ``return_diff``: ``True`` for ``O - Y``; ``False`` for the perturbed scores ``O``.
    - ``return_visualization``: also return the perturbed images (a tensor
      ``B x C x H x W`` on the model's device).

    Returns a float32 numpy array of ``B`` values (and the perturbed images).

    Args:
        perturbation: ``perturbation(image, cam) -> perturbed image`` for one image
            ``C x H x W`` and its map ``H x W`` (tensors on the model's device), e.g.
            ``RemoveMostRelevantFirst(80, NoisyLinearImputer())``.
        batch_size: perturbed images per forward pass.
        output_selector: where the scores are in the model's output, as for the CAMs.
    """

    name = "PerturbationConfidenceMetric"

    def __init__(
        self,
        perturbation: Perturbation,
        batch_size: int = 32,
        output_selector: OutputSelector = None,
    ) -> None:
        if not callable(perturbation):
            raise TypeError(
                f"{self.name}: perturbation must be a callable (image, cam) -> perturbed "
                f"image, got {type(perturbation).__name__}."
            )
        self.perturbation = perturbation
        self.batch_size = check_int(batch_size, "batch_size", self.name)
        self.output_selector = output_selector

    @also_accepts("grayscale_cams", "cams")
    def __call__(
        self,
        input_tensor: torch.Tensor,
        cams: Any,
        targets: list[Target] | None,
        model: nn.Module,
        return_visualization: bool = False,
        return_diff: bool = True,
    ) -> np.ndarray | tuple[np.ndarray, torch.Tensor]:
        """The metric of each image; see the class docstring."""
        before, after, images = perturbed_scores(
            self.name,
            input_tensor,
            cams,
            targets,
            model,
            self.check_maps,
            self.perturbed_batch,
            self.batch_size,
            self.output_selector,
            keep_images=bool(return_visualization),
        )
        values = self.combine(before, after[:, 0], bool(return_diff))
        if return_visualization:
            assert images is not None
            return values, images
        return values

    def check_maps(self, cams: Any, x: torch.Tensor) -> torch.Tensor:
        """The maps as a float32 tensor on the input's device, or an error naming them."""
        return check_cams(cams, x, self.name)

    def perturbed_batch(
        self, x: torch.Tensor, maps: torch.Tensor, keep_images: bool
    ) -> PerturbedBatch:
        """One perturbed copy per image, ``perturbation(x[i], maps[i])``."""
        kept: list[torch.Tensor] = []

        def fill(rows: torch.Tensor, start: int, stop: int) -> None:
            for row, image in enumerate(range(start, stop)):
                perturbed = self.perturbation(x[image], maps[image])
                if not isinstance(perturbed, torch.Tensor) or perturbed.shape != x[image].shape:
                    shape = getattr(perturbed, "shape", type(perturbed).__name__)
                    raise ValueError(
                        f"{self.name}: perturbation(image, cam) must return a tensor of the "
                        f"image's shape {tuple(x[image].shape)}, got {shape}."
                    )
                rows[row].copy_(perturbed)
                if keep_images:
                    kept.append(rows[row].clone())

        return PerturbedBatch(1, fill, lambda: torch.stack(kept) if keep_images else None)

    def combine(self, before: np.ndarray, after: np.ndarray, return_diff: bool) -> np.ndarray:
        """The metric from each image's scores before (``Y``) and after (``O``)."""
        return (after - before if return_diff else after).astype(np.float32)


def removed_count(percentage: float, pixels: int) -> int:
    """``round(percentage / 100 * pixels)``, keeping at least one pixel."""
    return min(int(round(percentage / 100 * pixels)), pixels - 1)


class RelevanceRemoval:
    """What :class:`RemoveMostRelevantFirst` and :class:`RemoveLeastRelevantFirst` share."""

    name = "RelevanceRemoval"
    #: True: remove the pixels above the percentile; False: those below it.
    most_relevant_first = True

    def __init__(self, percentile: float, imputer: Imputer, seed: int = 0) -> None:
        self.percentile = check_percentile(percentile, "percentile", self.name)
        if not callable(imputer):
            raise TypeError(
                f"{self.name}: imputer must be a callable (image, keep_mask) -> image, e.g. "
                f"NoisyLinearImputer(), got {type(imputer).__name__}."
            )
        self.imputer = imputer
        self.seed = check_int(seed, "seed", self.name, minimum=0)

    def removed(self, pixels: int) -> int:
        """How many of ``pixels`` pixels are removed."""
        share = 100 - self.percentile if self.most_relevant_first else self.percentile
        return removed_count(share, pixels)

    def keep_mask(self, ranks: Any) -> Any:
        """The float 0/1 keep mask (1: keep) from the pixels' relevance ranks (0: the
        most relevant), a numpy array or a tensor like ``ranks``."""
        pixels = int(np.prod(ranks.shape))
        count = self.removed(pixels)
        keep = ranks >= count if self.most_relevant_first else ranks < pixels - count
        return keep.astype(np.float32) if isinstance(keep, np.ndarray) else keep.float()

    def __call__(self, input_tensor: torch.Tensor, mask: Any) -> torch.Tensor:
        """``imputer(input_tensor, keep_mask)`` for one image ``C x H x W`` and its map
        ``mask`` (``H x W``, numpy or torch)."""
        if not isinstance(input_tensor, torch.Tensor) or input_tensor.ndim != 3:
            raise ValueError(
                f"{self.name}: input_tensor must be one image, a C x H x W tensor, got "
                f"{getattr(input_tensor, 'shape', type(input_tensor).__name__)}."
            )
        cam = torch.as_tensor(mask).to(input_tensor.device, torch.float32)
        if tuple(cam.shape) != tuple(input_tensor.shape[1:]):
            raise ValueError(
                f"{self.name}: mask (the map) must be H x W = {tuple(input_tensor.shape[1:])}"
                f", the image's size, got shape {tuple(cam.shape)}."
            )
        generator = torch.Generator().manual_seed(self.seed)
        ranks = relevance_ranks(cam[None], generator)[0].view(cam.shape)
        return self.imputer(input_tensor, self.keep_mask(ranks))


class RemoveMostRelevantFirst(RelevanceRemoval):
    """Removes the pixels above the map's ``percentile``-th percentile, the
    ``100 - percentile`` % most relevant, and imputes them: ``imputer(img, keep_mask)``.

    Exactly ``round((100 - percentile) / 100 * N)`` of the ``N`` pixels are removed (at
    least one is kept), ties in the map broken at random (seeded by ``seed``), so that
    maps with flat regions still remove the stated fraction.

    Args:
        percentile: in (0, 100).
        imputer: ``imputer(img, keep_mask)``, ``keep_mask`` ``H x W`` float, 1 to keep and
            0 to impute, e.g. :class:`~pytorch_grad_cam.metrics.road.NoisyLinearImputer`.
        seed: seeds the tie-breaking.
    """

    name = "RemoveMostRelevantFirst"
    most_relevant_first = True


class RemoveLeastRelevantFirst(RelevanceRemoval):
    """Removes the pixels below the map's ``percentile``-th percentile, the
    ``percentile`` % least relevant, and imputes them: ``imputer(img, keep_mask)``.
    Arguments as :class:`RemoveMostRelevantFirst`."""

    name = "RemoveLeastRelevantFirst"
    most_relevant_first = False


class AveragerAcrossThresholds:
    """The mean, per image, of ``imputer(p)(input_tensor, cams, targets, model)`` over
    the percentiles ``p``.

    Args:
        imputer: a metric class (or any callable) taking a percentile, e.g.
            ``ROADMostRelevantFirst``; grad-cam 1.5.7 names this argument ``imputer``.
        percentiles: the percentiles, each in (0, 100).
    """

    name = "AveragerAcrossThresholds"

    def __init__(
        self,
        imputer: Callable[[float], Callable[..., Any]],
        percentiles: list[float] = DEFAULT_PERCENTILES,
    ) -> None:
        if not callable(imputer):
            raise TypeError(
                f"{self.name}: imputer must be a metric class taking a percentile, e.g. "
                f"ROADMostRelevantFirst, got {type(imputer).__name__}."
            )
        self.imputer = imputer
        self.percentiles = check_percentiles(percentiles, self.name)

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
        scores = [
            np.asarray(self.imputer(p)(input_tensor, cams, targets, model), dtype=np.float64)
            for p in percentiles
        ]
        return np.mean(scores, axis=0).astype(np.float32)
