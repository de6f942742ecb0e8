"""Finer-CAM (Zhang, Gu, Chowdhury, Mai, Carlyn, Berger-Wolf, Su and Chao, CVPR 2025,
"Finer-CAM: Spotting the Difference Reveals Finer Details for Visual Explanation")."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.grad_cam import GradCAM
from pytorch_grad_cam.utils.caller_warnings import warn_deprecated
from pytorch_grad_cam.utils.model_outputs import select_output
from pytorch_grad_cam.utils.model_state import model_in_eval_mode
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputTarget,
    Target,
)
from pytorch_grad_cam.utils.model_targets import (
    FinerWeightedTarget as FinerWeightedTarget,  # re-exported: the incumbent's path
)
from pytorch_grad_cam.utils.reshape_transforms import ReshapeTransform
from pytorch_grad_cam.utils.validation import check_cam_input as check_input
from pytorch_grad_cam.utils.validation import check_targets, is_integer, looks_like_categories
from pytorch_grad_cam.wrapped_cam import WrappedCAM, check_base_method

#: The default comparison ranks: the three classes nearest the main one.
DEFAULT_RANKS = (1, 2, 3)


class FinerCAM(WrappedCAM):
    """A base method explaining a class against the classes it is most easily confused with.

    For each image with class scores ``y`` and main class ``c``, the other classes are
    ranked by how close their score is to ``c``'s, ``|y_j - y_c|`` ascending (ties by class
    index), with ``c`` itself at rank 0. With ``D`` the classes at the ranks in
    ``comparison_categories`` (default ``[1, 2, 3]``: the three nearest), the base method
    (default :class:`~pytorch_grad_cam.grad_cam.GradCAM`) explains

    ``y_c - alpha * mean_{d in D} y_d``
    (:class:`~pytorch_grad_cam.utils.model_targets.FinerWeightedTarget`),

    so what ``c`` shares with its look-alikes cancels and what tells them apart remains.
    With ``alpha=0`` the map is the base method's map of ``y_c``. For GradCAM,
    ``w_k = mean_ij d(y_c - alpha mean_d y_d)/dA^k_ij``;  ``map = ReLU(sum_k w_k A^k)``.

    The main class is, per image: ``target_idx`` if given, else the category of a
    ``ClassifierOutputTarget`` in ``targets``, else the top-scoring class. A
    ``FinerWeightedTarget`` in ``targets`` is used as given. The comparison classes are
    ranked on the unaugmented input with one extra forward pass (no gradients), so every
    ``aug_smooth`` pass explains the same difference; ``cam.finer_targets`` holds the
    targets of the last call.

    Args:
        model, target_layers, reshape_transform: as for every method.
        base_method: the CAM class that computes the map (it must use targets).
        **kwargs: passed to ``base_method``'s constructor (``batch_size``,
            ``output_selector``, ``tta_transforms``, ...).

    ``cam.base`` is the base method's instance.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module] | None = None,
        reshape_transform: ReshapeTransform | None = None,
        base_method: type[BaseCAM] = GradCAM,
        **kwargs: Any,
    ) -> None:
        check_base_method(base_method)
        if not base_method.uses_targets:
            raise ValueError(
                f"base_method={base_method.__name__} does not use targets (it is "
                "class-agnostic), so it cannot contrast classes; use a method that explains "
                "a target, such as GradCAM, LayerCAM or ScoreCAM."
            )
        self.base = base_method(model, target_layers, reshape_transform, **kwargs)
        self.finer_targets: list[FinerWeightedTarget] | None = None

    def __call__(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Target] | None = None,
        eigen_smooth: bool = False,
        alpha: float = 1,
        comparison_categories: Sequence[int] | None = None,
        target_idx: int | Sequence[int] | None = None,
        *,
        aug_smooth: bool = False,
        scale: bool = True,
        as_tensor: bool = False,
        target_category: Any = None,
        extra_inputs: Sequence[Any] = (),
        model_kwargs: Any = None,
    ) -> np.ndarray | torch.Tensor:
        """The base method's maps of ``y_c - alpha * mean_d y_d``, one per image.

        Args:
            input_tensor: the images, ``B x C x H x W``.
            targets: ``None`` (each image's top class is ``c``), a
                ``ClassifierOutputTarget(c)`` or a ``FinerWeightedTarget`` per image.
            eigen_smooth: as for every method.
            alpha: the weight of the comparison classes (0 gives the base method's map).
            comparison_categories: ranks (1 = the nearest other class) of the classes to
                compare with; ``None`` for ``[1, 2, 3]``.
            target_idx: the main class ``c``: an int, or one per image.
            aug_smooth: average over test-time augmentations, as for every method.
            scale: scale each map to [0, 1] (``False``: the raw maps).
            as_tensor: return a tensor on the model's device instead of numpy.
            target_category: deprecated spelling of ``target_idx``.
            extra_inputs: not supported yet (a clear error).
            model_kwargs: not supported yet (a clear error).
        """
        if extra_inputs or model_kwargs:
            raise ValueError(
                "FinerCAM does not take extra_inputs / model_kwargs yet; wrap the model in "
                "a module whose forward takes the image alone."
            )
        if looks_like_categories(targets):
            target_category, targets = targets, None
        if target_category is not None:
            if targets is not None or target_idx is not None:
                raise TypeError("Pass one of targets=, target_idx= or target_category=.")
            warn_deprecated("target_category= is deprecated; pass target_idx=category (or a list).")
            target_idx = target_category
        alpha = _check_alpha(alpha)
        ranks = _check_ranks(
            DEFAULT_RANKS if comparison_categories is None else comparison_categories
        )
        input_tensor = check_input(input_tensor, self.base.model)
        self.finer_targets = self._finer_targets(input_tensor, targets, target_idx, alpha, ranks)
        return self.base(
            input_tensor,
            self.finer_targets,
            aug_smooth,
            eigen_smooth,
            scale=scale,
            as_tensor=as_tensor,
        )

    def forward(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Target] | None = None,
        eigen_smooth: bool = False,
        alpha: float = 1,
        comparison_categories: Sequence[int] | None = None,
        target_idx: int | Sequence[int] | None = None,
    ) -> np.ndarray:
        """The maps as a numpy array: ``cam(...)`` with the same arguments."""
        maps = self(input_tensor, targets, eigen_smooth, alpha, comparison_categories, target_idx)
        return cast(np.ndarray, maps)

    def _finer_targets(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Target] | None,
        target_idx: int | Sequence[int] | None,
        alpha: float,
        ranks: list[int],
    ) -> list[FinerWeightedTarget]:
        batch = input_tensor.shape[0]
        if targets is not None:
            if target_idx is not None:
                raise TypeError("Pass targets=[...] or target_idx=..., not both.")
            targets = check_targets(targets, batch)
            given = [target for target in targets if isinstance(target, FinerWeightedTarget)]
            if len(given) == len(targets):
                return given
        model = self.base.model
        with model_in_eval_mode(model), torch.no_grad():
            scores = select_output(model(input_tensor), self.base.output_selector)
        if scores.ndim != 2:
            raise ValueError(
                "FinerCAM compares class scores, so the model's output must have shape B x K; "
                f"it has shape {tuple(scores.shape)}. Pass output_selector= to pick the "
                "scores, or targets=[FinerWeightedTarget(...), ...] to choose the classes."
            )
        classes = scores.shape[1]
        if max(ranks) >= classes:
            raise ValueError(
                f"comparison_categories={ranks} asks for rank {max(ranks)}, but the model has "
                f"{classes} classes (ranks 1 to {classes - 1}); pass smaller ranks."
            )
        main = _main_categories(scores, targets, target_idx, batch)
        if bool(((main < 0) | (main >= classes)).any()):
            raise ValueError(
                f"The main classes {main.tolist()} must lie in 0 to {classes - 1}: the model "
                f"has {classes} classes. Check targets / target_idx."
            )
        main_column = main.unsqueeze(1)
        distance = (scores - scores.gather(1, main_column)).abs().float()
        distance.scatter_(1, main_column, -1.0)  # the main class is rank 0
        order = distance.argsort(dim=1, stable=True)
        rows = torch.cat([main_column, order[:, ranks]], dim=1).tolist()  # one sync per call
        resolved: list[FinerWeightedTarget] = []
        for index, (category, *comparison) in enumerate(rows):
            target = None if targets is None else targets[index]
            if isinstance(target, FinerWeightedTarget):
                resolved.append(target)
            else:
                resolved.append(FinerWeightedTarget(category, comparison, alpha))
        return resolved


def _main_categories(
    scores: torch.Tensor,
    targets: Sequence[Target] | None,
    target_idx: int | Sequence[int] | None,
    batch: int,
) -> torch.Tensor:
    """Each image's main class, a ``B`` long tensor on the scores' device."""
    categories: list[Any]
    if target_idx is not None:
        categories = (
            [target_idx] * batch if is_integer(target_idx) else list(target_idx)  # type: ignore[arg-type]
        )
        if len(categories) != batch or not all(is_integer(c) for c in categories):
            raise ValueError(
                f"target_idx must be a class index, or one per image ({batch}), got {target_idx!r}."
            )
    elif targets is not None:
        categories = []
        for index, target in enumerate(targets):
            if isinstance(target, FinerWeightedTarget):
                categories.append(target.main_category)
            elif isinstance(target, ClassifierOutputTarget):
                categories.append(target.category)
            else:
                raise TypeError(
                    f"targets[{index}] is a {type(target).__name__}; FinerCAM needs each "
                    "image's main class: pass ClassifierOutputTarget(category), "
                    "FinerWeightedTarget(...), or target_idx=category."
                )
    else:
        return scores.argmax(dim=1)
    return torch.stack([torch.as_tensor(c, dtype=torch.long).to(scores.device) for c in categories])


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha):
        raise ValueError(
            f"alpha must be a finite number (the weight of the comparison classes; 0 gives "
            f"the base method's map), got {alpha!r}."
        )
    return float(alpha)


def _check_ranks(ranks: Any) -> list[int]:
    values = [ranks] if is_integer(ranks) else list(ranks) if _iterable(ranks) else None
    if not values or not all(is_integer(r) and int(r) >= 1 for r in values):
        raise ValueError(
            "comparison_categories must be a non-empty list of ranks of at least 1 (1 = the "
            f"class whose score is nearest the main class's; 0 is the main class itself), got "
            f"{ranks!r}."
        )
    return [int(r) for r in values]


def _iterable(value: Any) -> bool:
    return isinstance(value, (list, tuple, range, np.ndarray, torch.Tensor)) and not (
        isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0
    )
