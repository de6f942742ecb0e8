"""Showing Deep Feature Factorization concepts on an image."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import cv2
import numpy as np


def concept_colors(n_components: int) -> np.ndarray:
    """``n_components x 3`` RGB colours in [0, 1]: hues evenly spaced, full saturation."""
    return np.array(
        [colorsys.hsv_to_rgb(i / n_components, 1.0, 1.0) for i in range(n_components)],
        dtype=np.float32,
    ).reshape(n_components, 3)


def show_factorization_on_image(
    img: np.ndarray,
    explanations: np.ndarray,
    colors: Sequence[Sequence[float]] | np.ndarray | None = None,
    image_weight: float = 0.5,
    concept_labels: Sequence[str] | None = None,
) -> np.ndarray:
    r"""Colour each pixel of ``img`` by its dominant concept.

    ``img``: ``H x W x 3`` float RGB in [0, 1]; ``explanations``: ``k x H x W`` concept
    heat maps in [0, 1] (one image's ``batch_explanations`` from
    :class:`~pytorch_grad_cam.deep_feature_factorization.DeepFeatureFactorization`);
    ``colors``: ``k x 3`` RGB in [0, 1] (default :func:`concept_colors`).

    With ``c(p) = argmax_i E_i(p)`` the dominant concept at pixel ``p``:
    ``result(p) = image_weight * img(p) + (1 - image_weight) * E_c(p)(p) * colors[c(p)]``,
    returned as uint8 (``round(255 * result)``), ``H x W x 3``. With ``concept_labels``
    (one string per concept; ``"\\n"`` separates lines) a white legend panel (a colour
    swatch and the label per concept, 8 to 24 pixels a line; lines beyond the image's
    height are cut) is appended on the right: ``H x (W + legend) x 3``.
    """
    img = np.asarray(img, dtype=np.float32)
    explanations = np.asarray(explanations, dtype=np.float32)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"img must be H x W x 3 (RGB), got shape {img.shape}.")
    if img.size and (img.min() < 0 or img.max() > 1):
        raise ValueError(
            f"img must be float in [0, 1], got values in [{img.min():.3g}, {img.max():.3g}]; "
            "divide a uint8 image by 255."
        )
    if explanations.ndim != 3 or explanations.shape[1:] != img.shape[:2]:
        raise ValueError(
            f"explanations must be k x H x W with H x W = {img.shape[:2]} (the image's size), "
            f"got shape {explanations.shape}; pass one image's maps, batch_explanations[i]."
        )
    if not 0 <= image_weight <= 1:
        raise ValueError(f"image_weight must be in [0, 1], got {image_weight}.")
    k = explanations.shape[0]
    palette = concept_colors(k) if colors is None else np.asarray(colors, dtype=np.float32)
    if palette.shape != (k, 3):
        raise ValueError(
            f"colors must be {k} x 3 (one RGB colour in [0, 1] per concept), got shape "
            f"{palette.shape}."
        )
    if concept_labels is not None and len(concept_labels) != k:
        raise ValueError(
            f"concept_labels has {len(concept_labels)} entries for {k} concepts; pass one "
            "label per concept."
        )
    dominant = explanations.argmax(axis=0)
    strength = np.clip(np.take_along_axis(explanations, dominant[None], axis=0)[0], 0, 1)
    overlay = palette[dominant] * strength[..., None]
    blended = image_weight * img + (1 - image_weight) * overlay
    result = np.round(255 * np.clip(blended, 0, 1)).astype(np.uint8)
    if concept_labels is None:
        return result
    return np.concatenate([result, _legend(palette, concept_labels, img.shape[0])], axis=1)


def _legend(palette: np.ndarray, labels: Sequence[str], height: int) -> np.ndarray:
    """A white ``height``-tall panel: per concept, a colour swatch and its label's lines."""
    lines = [str(label).split("\n") for label in labels]
    line_height = int(np.clip(height // max(1, sum(len(block) for block in lines)), 8, 24))
    font, scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, line_height / 30, 1
    text_width = max(
        cv2.getTextSize(line, font, scale, thickness)[0][0] for block in lines for line in block
    )
    swatch = line_height - 2
    panel = np.full((height, swatch + text_width + 12, 3), 255, dtype=np.uint8)
    top = 0
    for colour, block in zip(palette, lines):
        rgb = tuple(int(round(255 * c)) for c in colour)
        cv2.rectangle(panel, (2, top + 1), (2 + swatch, top + swatch), rgb, thickness=-1)
        for line in block:
            baseline = top + int(line_height * 0.75)
            cv2.putText(panel, line, (swatch + 8, baseline), font, scale, (0, 0, 0), thickness)
            top += line_height
    return panel
