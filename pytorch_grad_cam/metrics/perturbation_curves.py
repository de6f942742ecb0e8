"""Deletion and insertion curves (Petsiuk, Das & Saenko, BMVC 2018, "RISE: Randomized
Input Sampling for Explanation of Black-box Models", https://arxiv.org/abs/1806.07421,
section 4.1).

The pixels of each image are ranked by its map, most relevant first (ties broken at
random, seeded). With ``n = n_steps`` and ``N`` pixels, step ``k = 0 .. n`` acts on the
first ``round(k / n * N)`` pixels of that ranking (a pixel is all its channels):

- deletion: they are replaced by the baseline (default: zeros, in the input tensor's
  units, i.e. the normalisation mean for a mean/std-normalised image); step 0 is the
  image, step ``n`` the baseline. A good map makes the score fall fast: lower is better.
- insertion: they are copied from the image into the baseline (default: the image
  blurred with a Gaussian of std ``blur_sigma`` pixels); step 0 is the baseline, step
  ``n`` the image. A good map makes the score rise fast: higher is better.

The curve is the target's score at each step (by default each image's top class as a
softmax probability, as in the paper), and the metric its area under the curve over
the fraction of pixels acted on, ``k / n`` in [0, 1], by the trapezoid rule:
``AUC = sum_k (s_k + s_{k+1}) / (2 n)``.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable, Union

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
)
from pytorch_grad_cam.metrics.batch_scoring import (
    batched_scores,
    evaluating,
    original_scores,
    relevance_ranks,
    to_numpy,
)
from pytorch_grad_cam.utils.model_outputs import OutputSelector
from pytorch_grad_cam.utils.model_targets import Target

Baseline = Union[str, float, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]
MODES = ("deletion", "insertion")


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """``B x C x H x W`` images blurred with a Gaussian of std ``sigma`` pixels (kernel
    ``2 ceil(3 sigma) + 1``, shrunk to fit small images; reflected at the border)."""
    size = 2 * math.ceil(3 * sigma) + 1
    largest = 2 * min(images.shape[-2:]) - 1  # reflection padding must fit in the image
    size = min(size, largest if largest % 2 else largest - 1)
    # Imported here: torchvision's import costs seconds, and only blurring needs it.
    import torchvision.transforms.functional as TF

    return TF.gaussian_blur(images, kernel_size=[size, size], sigma=[sigma, sigma])


class PerturbationCurve:
    """RISE's deletion (``mode="deletion"``) or insertion (``mode="insertion"``) metric.

    Called as ``metric(input_tensor, grayscale_cams, targets, model,
    return_curves=False)`` (``cams=`` is accepted for ``grayscale_cams=``):

    - ``grayscale_cams``: ``B x H x W`` maps (any scale; only their ranking is used).
    - ``targets``: one per image (e.g. ``ClassifierOutputSoftmaxTarget(c)``), or ``None``
      for each image's top class on the unperturbed input as a softmax probability.

    Returns the area under each image's curve (float32 numpy, ``B``); with
    ``return_curves=True`` also the curves, ``B x (n_steps + 1)`` (the scores at the
    fractions ``metric.fractions``).

    The ``B x n_steps`` perturbed images (the unperturbed end of each curve is scored
    once) are built ``batch_size`` at a time in one reused buffer, on the model's device:
    memory grows with ``batch_size``, not with ``n_steps``.

    Args:
        mode: ``"deletion"`` or ``"insertion"``.
        n_steps: the number of steps (RISE used one row of pixels, 224, per step).
        baseline: what removed pixels become (deletion) or the starting image
            (insertion): ``"zeros"``, ``"blur"``, a number, a tensor broadcastable to the
            input (``C x H x W`` or ``B x C x H x W``), or a callable mapping the input
            batch to such a tensor. Default: ``"zeros"`` for deletion, ``"blur"`` for
            insertion.
        blur_sigma: the std of the ``"blur"`` baseline's Gaussian, in pixels.
        seed: seeds the tie-breaking of equal map values.
        batch_size: perturbed images per forward pass.
        output_selector: where the scores are in the model's output, as for the CAMs.
    """

    mode: str
    n_steps: int
    baseline: Any
    blur_sigma: float
    seed: int
    batch_size: int
    output_selector: OutputSelector

    name = "PerturbationCurve"

    def __init__(
        self,
        mode: str,
        n_steps: int = 50,
        baseline: Baseline | None = None,
        blur_sigma: float = 5.0,
        seed: int = 0,
        batch_size: int = 32,
        output_selector: OutputSelector = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"{self.name}: mode must be one of {MODES}, got {mode!r}.")
        self.mode = mode
        self.n_steps = check_int(n_steps, "n_steps", self.name)
        self.baseline = (
            ("zeros" if mode == "deletion" else "blur") if baseline is None else baseline
        )
        if isinstance(self.baseline, str) and self.baseline not in ("zeros", "blur"):
            raise ValueError(
                f"{self.name}: baseline must be 'zeros', 'blur', a number, a tensor or a "
                f"callable, got {self.baseline!r}."
            )
        if isinstance(blur_sigma, bool) or not isinstance(blur_sigma, numbers.Real):
            raise ValueError(f"{self.name}: blur_sigma must be a positive number.")
        if not blur_sigma > 0:
            raise ValueError(f"{self.name}: blur_sigma must be > 0, got {blur_sigma!r}.")
        self.blur_sigma = float(blur_sigma)
        self.seed = check_int(seed, "seed", self.name, minimum=0)
        self.batch_size = check_int(batch_size, "batch_size", self.name)
        self.output_selector = output_selector

    @property
    def fractions(self) -> np.ndarray:
        """The fraction of pixels acted on at each step: ``k / n_steps``."""
        return np.linspace(0.0, 1.0, self.n_steps + 1)

    @also_accepts("cams", "grayscale_cams")
    def __call__(
        self,
        input_tensor: torch.Tensor,
        grayscale_cams: Any,
        targets: list[Target] | None,
        model: nn.Module,
        return_curves: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Each image's area under its curve (and the curves with ``return_curves``)."""
        model = check_model(model, self.name)
        x = check_input_tensor(input_tensor, model, self.name)
        cams = check_cams(grayscale_cams, x, self.name, "grayscale_cams")
        targets = check_metric_targets(targets, x.shape[0], self.name)
        steps = check_int(self.n_steps, "n_steps", self.name)
        batch_size = check_int(self.batch_size, "batch_size", self.name)
        images = x.shape[0]
        spatial = x.shape[2:]
        pixels = math.prod(spatial)
        baseline = self._baseline(x)
        ranks = relevance_ranks(cams, torch.Generator().manual_seed(self.seed))
        ranks = ranks.view(images, 1, *spatial)
        counts = [round(k / steps * pixels) for k in range(steps + 1)]
        # The perturbed steps: deletion 1 .. n, insertion 0 .. n-1 (the image is the other end).
        deletion = self.mode == "deletion"
        perturbed_steps = range(1, steps + 1) if deletion else range(steps)

        def fill(rows: torch.Tensor, start: int, stop: int) -> None:
            for row, job in enumerate(range(start, stop)):
                image, index = divmod(job, steps)
                acted_on = ranks[image] < counts[perturbed_steps[index]]
                if deletion:
                    torch.where(acted_on, baseline[image], x[image], out=rows[row])
                else:
                    torch.where(acted_on, x[image], baseline[image], out=rows[row])

        with evaluating(model):
            unperturbed, targets = original_scores(
                model, x, targets, self.output_selector, batch_size
            )
            job_targets = [target for target in targets for _ in range(steps)]
            scores = batched_scores(
                model, x[0], images * steps, fill, job_targets, self.output_selector, batch_size
            )
        step_scores = to_numpy(scores).reshape(images, steps)
        first = to_numpy(unperturbed)[:, None]
        pieces = (first, step_scores) if deletion else (step_scores, first)
        curves = np.concatenate(pieces, axis=1).astype(np.float32)
        auc = ((curves[:, 1:] + curves[:, :-1]) / 2).sum(axis=1) / steps
        auc = auc.astype(np.float32)
        return (auc, curves) if return_curves else auc

    def _baseline(self, x: torch.Tensor) -> torch.Tensor:
        """The baseline as a ``B x C x *spatial`` tensor (possibly an expanded view)."""
        baseline = self.baseline
        if isinstance(baseline, str):
            if baseline == "zeros":
                return torch.zeros((), dtype=x.dtype, device=x.device).expand_as(x)
            if x.ndim != 4:
                raise ValueError(
                    f"{self.name}: baseline='blur' blurs 2-D images (B x C x H x W); for an "
                    f"input of shape {tuple(x.shape)} pass a baseline tensor or 'zeros'."
                )
            with torch.no_grad():
                return gaussian_blur(x, self.blur_sigma)
        if callable(baseline) and not isinstance(baseline, torch.Tensor):
            with torch.no_grad():
                baseline = baseline(x)
        if isinstance(baseline, numbers.Real) and not isinstance(baseline, bool):
            return torch.full((), float(baseline), dtype=x.dtype, device=x.device).expand_as(x)
        if not isinstance(baseline, torch.Tensor):
            raise TypeError(
                f"{self.name}: baseline must be 'zeros', 'blur', a number, a tensor or a "
                f"callable returning a tensor, got {type(baseline).__name__}."
            )
        try:
            return baseline.detach().to(device=x.device, dtype=x.dtype).expand_as(x)
        except RuntimeError:
            raise ValueError(
                f"{self.name}: the baseline tensor has shape {tuple(baseline.shape)}, which "
                f"does not broadcast to input_tensor's {tuple(x.shape)}; pass C x H x W or "
                "B x C x H x W."
            ) from None


class DeletionCurve(PerturbationCurve):
    """RISE's deletion metric: the area under the score as the most relevant pixels are
    set to the baseline (default zeros). Lower is better. See :class:`PerturbationCurve`
    for the call and the arguments."""

    name = "DeletionCurve"
    #: ``PerturbationCurve``'s constructor with ``mode="deletion"`` (default baseline zeros).
    __init__ = functools.partialmethod(PerturbationCurve.__init__, "deletion")


class InsertionCurve(PerturbationCurve):
    """RISE's insertion metric: the area under the score as the most relevant pixels are
    copied into the baseline (default a blurred copy of the image). Higher is better.
    See :class:`PerturbationCurve` for the call and the arguments."""

    name = "InsertionCurve"
    #: ``PerturbationCurve``'s constructor with ``mode="insertion"`` (default baseline blur).
    __init__ = functools.partialmethod(PerturbationCurve.__init__, "insertion")
