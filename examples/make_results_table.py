"""Regenerate the README's results table: the seeds' methods and CAM on the shipped image,
for the cat class and for the espresso class, with cam.py's default model (no network).

    python examples/make_results_table.py

Runs cam.py's pipeline for each picture, writes ``docs/results/<method>_<class>.jpg`` (the
CAM over the image, as ``cam.py`` writes it, as a smaller JPEG) and, after cam.py's own
output, prints the Markdown table that the README shows. Takes minutes on a CPU (ScoreCAM
runs a forward pass per channel).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np

from pytorch_grad_cam.cli.support import available_methods, build_parser, run

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "docs" / "results"
#: (label, --target-category) for the columns.
CLASSES = [("tiger cat", "tiger cat"), ("espresso", "espresso")]
#: The rows: the seeds' methods in the README's order, the original CAM (this model ends
#: in global average pooling and one linear layer, so CAM applies exactly), and the fast
#: perturbation methods.
METHODS_SHOWN = [
    "gradcam",
    "hirescam",
    "gradcamelementwise",
    "gradcamplusplus",
    "xgradcam",
    "layercam",
    "eigencam",
    "eigengradcam",
    "ablationcam",
    "scorecam",
    "cam",
    "reciprocam",
    "gscorecam",
]
JPEG_QUALITY = 75
#: The transformer methods' pictures, written by benchmarks/transformer_methods.py.
TOY_VIT_PREFIX = "toy_vit_"
#: The methods cam.py offers, by name.
METHODS = available_methods()


def table_methods() -> list[str]:
    """The rows' method names that this version of the package has."""
    return [name for name in METHODS_SHOWN if name in METHODS]


def explain(method: str, category: str, output_dir: Path) -> dict[str, np.ndarray]:
    """cam.py's three pictures for ``method`` and ``category`` (BGR arrays by kind)."""
    args = build_parser().parse_args(
        ["--method", method, "--target-category", category, "--output-dir", str(output_dir)]
    )
    return run(args).images


def write_picture(image: np.ndarray, name: str) -> str:
    """Save a small JPEG under docs/results and return its path relative to the repo."""
    path = RESULTS_DIR / f"{name}.jpg"
    if not cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise OSError(f"cannot write {path}")
    return path.relative_to(ROOT).as_posix()


def file_label(text: str) -> str:
    """A class label as written in file names: ``tiger cat`` -> ``tiger_cat``."""
    return text.replace(" ", "_")


def compute_pictures() -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """cam.py's pictures for every (method, class label) of the table."""
    with tempfile.TemporaryDirectory() as scratch:
        return {
            (method, label): explain(method, category, Path(scratch))
            for method in table_methods()
            for label, category in CLASSES
        }


def main() -> None:
    pictures = compute_pictures()  # all of them first: a failed run leaves docs/ as it was
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    for old in RESULTS_DIR.glob("*.jpg"):  # the table's pictures, not the toy ViT's
        if not old.name.startswith(TOY_VIT_PREFIX):
            old.unlink()
    header = "| Method | " + " | ".join(label for label, _ in CLASSES) + " |"
    rows = [header, "|---" * (len(CLASSES) + 1) + "|"]
    guided_cells = []
    for method in table_methods():
        cells = []
        for label, _ in CLASSES:
            images = pictures[method, label]
            path = write_picture(images["cam"], f"{method}_{file_label(label)}")
            cells.append(f"![{METHODS[method].__name__}, {label}]({path})")
            if method == "gradcam":
                name = f"guided_gradcam_{file_label(label)}"
                guided = write_picture(images["cam_gb"], name)
                guided_cells.append(f"![Guided Grad-CAM, {label}]({guided})")
        rows.append(f"| `{METHODS[method].__name__}` | " + " | ".join(cells) + " |")
    rows.append("| Guided Grad-CAM (`gradcam_cam_gb.jpg`) | " + " | ".join(guided_cells) + " |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
