"""The files a run offers for download: each overlay as PNG, each map as ``.npy``, and
the scores as CSV (full precision; the page rounds them)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from pytorch_grad_cam.app.service import MapResult
from pytorch_grad_cam.cli.images import file_stem

SCORE_COLUMNS = ("method", "deletion_auc", "insertion_auc", "confidence_change")


def write_run_files(results: Sequence[MapResult], folder: Path) -> list[Path]:
    """``<method>_overlay.png`` and ``<method>_map.npy`` for each result, and
    ``scores.csv`` when the results were scored; returns the paths, overlays first.

    The PNG is the overlay exactly (lossless); the ``.npy`` is the float32 map at the
    image's size, in [0, 1].
    """
    folder.mkdir(parents=True, exist_ok=True)
    overlays, maps = [], []
    for result in results:
        stem = file_stem(result.method)
        overlay = folder / f"{stem}_overlay.png"
        if not cv2.imwrite(str(overlay), cv2.cvtColor(result.overlay, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {overlay}")
        overlays.append(overlay)
        raw = folder / f"{stem}_map.npy"
        np.save(raw, result.grayscale.astype(np.float32))
        maps.append(raw)
    paths = overlays + maps
    scored = [result for result in results if result.scores is not None]
    if scored:
        table = folder / "scores.csv"
        with table.open("w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(SCORE_COLUMNS)
            for result in scored:
                assert result.scores is not None
                scores = result.scores
                writer.writerow(
                    [
                        result.method,
                        repr(scores.deletion_auc),
                        repr(scores.insertion_auc),
                        repr(scores.confidence_change),
                    ]
                )
        paths.append(table)
    return paths


def scores_markdown(results: Sequence[MapResult]) -> str:
    """The scores as a Markdown table (4 decimals), or ``""`` when nothing was scored."""
    scored = [result for result in results if result.scores is not None]
    if not scored:
        return ""
    lines = [
        "| Method | Deletion AUC ↓ | Insertion AUC ↑ | Confidence change ↑ |",
        "|---|---|---|---|",
    ]
    for result in scored:
        assert result.scores is not None
        scores = result.scores
        lines.append(
            f"| {result.method} | {scores.deletion_auc:.4f} | {scores.insertion_auc:.4f} "
            f"| {scores.confidence_change:+.4f} |"
        )
    lines.append("")
    lines.append(
        "↓ lower is better, ↑ higher is better. The class's probability as the target; "
        "the exact values are in scores.csv."
    )
    return "\n".join(lines)
