"""Pictures besides the overlays: the deletion curves, and the colour scale's legend."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from pytorch_grad_cam.app.service import MapResult


def deletion_figure(results: Sequence[MapResult]) -> Any:
    """A small matplotlib figure with the deletion curve of each scored map (``None``
    when nothing was scored): the class probability as the most relevant pixels are
    deleted first."""
    scored = [result for result in results if result.scores is not None]
    if not scored:
        return None
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    figure = Figure(figsize=(4.5, 3.0), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    for result in scored:
        assert result.scores is not None
        scores = result.scores
        label = f"{result.method} (AUC {scores.deletion_auc:.3f})"
        axes.plot(scores.fractions, scores.deletion_curve, marker=".", label=label)
    axes.set_xlabel("fraction of pixels deleted, most relevant first")
    axes.set_ylabel("class probability")
    axes.set_xlim(0, 1)
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return figure


def colour_stops(count: int = 9, colormap: int = cv2.COLORMAP_JET) -> list[str]:
    """``count`` CSS colours (``#rrggbb``) of ``colormap`` from map value 0 to 1, as
    ``show_cam_on_image`` colours them."""
    levels = np.round(np.linspace(0, 255, count)).astype(np.uint8)[:, None]
    rgb = cv2.cvtColor(cv2.applyColorMap(levels, colormap), cv2.COLOR_BGR2RGB)[:, 0]
    return ["#{:02x}{:02x}{:02x}".format(*map(int, colour)) for colour in rgb]


def colour_scale_html() -> str:
    """A legend for the overlays: the colour bar from 0 to 1, and what it means."""
    gradient = ", ".join(colour_stops())
    return (
        '<div class="colour-scale">'
        "<span>0</span>"
        f'<div style="flex: 1; height: 14px; border-radius: 3px; '
        f'background: linear-gradient(to right, {gradient});"></div>'
        "<span>1</span></div>"
        "<p>One colour scale for every overlay: each map is scaled to [0, 1] on its own "
        "(per method), so the colours compare where each method looks, not how strongly.</p>"
    )
