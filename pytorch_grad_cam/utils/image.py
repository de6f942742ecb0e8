"""Image helpers: preprocessing, overlaying a CAM on an image, scaling maps."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from pytorch_grad_cam.utils.factorization_image import (
    show_factorization_on_image as show_factorization_on_image,  # re-exported: API.md
)
from pytorch_grad_cam.utils.maps import resize_maps, scale_to_unit_range


def preprocess_image(
    img: np.ndarray,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
) -> torch.Tensor:
    """``H x W x 3`` float image in [0, 1] -> normalised ``1 x 3 x H x W`` float32 tensor."""
    img = np.asarray(img, dtype=np.float32)
    if img.ndim != 3:
        raise ValueError(f"img must be H x W x C, got shape {img.shape}.")
    normalised = (img - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1))).unsqueeze(0)


def deprocess_image(img: np.ndarray) -> np.ndarray:
    """Gradient image -> viewable uint8: centre, scale to 0.1 std, shift to 0.5, clip."""
    img = np.asarray(img, dtype=np.float32)
    img = (img - img.mean()) / (img.std() + 1e-5)
    img = np.clip(img * 0.1 + 0.5, 0, 1)
    return np.round(img * 255).astype(np.uint8)


def show_cam_on_image(
    img: np.ndarray,
    mask: np.ndarray,
    use_rgb: bool = False,
    colormap: int = cv2.COLORMAP_JET,
    image_weight: float = 0.5,
) -> np.ndarray:
    """Overlay a [0, 1] ``mask`` (``H x W``) as a heat map on a float ``img`` in [0, 1].

    ``result = (1 - image_weight) * heatmap + image_weight * img``, rescaled so its
    maximum is 1, returned as uint8. ``use_rgb=True`` gives an RGB heat map (OpenCV's
    colour maps are BGR).
    """
    img = np.asarray(img, dtype=np.float32)
    mask = np.asarray(mask, dtype=np.float32)
    if img.max() > 1 or img.min() < 0:
        raise ValueError(
            "img must be float in [0, 1], got values in "
            f"[{img.min():.3g}, {img.max():.3g}]; divide a uint8 image by 255."
        )
    if not 0 <= image_weight <= 1:
        raise ValueError(f"image_weight must be in [0, 1], got {image_weight}.")
    if mask.shape != img.shape[:2]:
        raise ValueError(
            f"mask has shape {mask.shape} but img is {img.shape[:2]}; the CAM must be at the "
            "image's size (cam(...) returns maps at the input tensor's size)."
        )
    heatmap = cv2.applyColorMap(np.round(255 * np.clip(mask, 0, 1)).astype(np.uint8), colormap)
    if use_rgb:
        heatmap = cv2.cvtColor(heatmap, cv2.COLOR_BGR2RGB)
    blended = (1 - image_weight) * (heatmap.astype(np.float32) / 255) + image_weight * img
    blended = blended / max(float(blended.max()), 1e-12)
    return np.round(255 * blended).astype(np.uint8)


def scale_cam_image(cam: np.ndarray, target_size: Sequence[int] | None = None) -> np.ndarray:
    """Min-max scale each map of ``cam`` (``B x ...``) to [0, 1], then resize.

    ``target_size`` is ``(width, height)`` as in OpenCV (or ``(width, height, depth)`` for
    3-D maps). Constant maps become zeros.
    """
    maps = torch.as_tensor(np.asarray(cam, dtype=np.float32))
    scaled = scale_to_unit_range(maps)
    if target_size is not None:
        scaled = resize_maps(scaled, tuple(reversed(tuple(target_size))))
    return scaled.numpy()


def scale_accross_batch_and_channels(tensor: np.ndarray, target_size: Sequence[int]) -> np.ndarray:
    """Min-max scale every ``tensor[b, c]`` map of a ``B x C x *spatial`` array to [0, 1] and
    resize it to ``target_size`` (OpenCV's ``(width, height)`` order): ``B x C x *size``.
    (The incumbent's spelling of "across".)."""
    array = np.asarray(tensor, dtype=np.float32)
    batch, channels = array.shape[:2]
    flat = scale_cam_image(array.reshape(batch * channels, *array.shape[2:]), target_size)
    return flat.reshape(batch, channels, *flat.shape[1:])


def create_labels_legend(
    concept_scores: np.ndarray, labels: dict[int, str], top_k: int = 2
) -> list[str]:
    """One legend text per concept: its ``top_k`` categories by score, best first, one
    ``"name:score"`` line each (score with two decimals).

    ``concept_scores`` is ``k x classes`` (what a classifier head gives for the concept
    embeddings); ``labels`` maps a category index to its name.
    """
    scores = np.asarray(concept_scores, dtype=np.float32)
    if scores.ndim != 2:
        raise ValueError(
            f"concept_scores must be k x classes (one row per concept), got shape {scores.shape}."
        )
    legend = []
    for row in scores:
        best = np.argsort(-row, kind="stable")[:top_k]
        legend.append("\n".join(f"{labels[int(c)]}:{row[c]:.2f}" for c in best))
    return legend
