"""``gradcam app``: a local web page to compare explanations (the ``app`` extra, Gradio).

Modules, by concern:

- ``service``: predictions, maps, overlays and scores, with no web framework;
- ``models``, ``images``: what the page may load (models, uploads) and how;
- ``outputs``, ``plots``, ``sessions``: downloads, figures, per-session files;
- ``handlers``, ``ui``: the page (Gradio, imported only here);
- ``server``: the command line and how the page is served.

``import pytorch_grad_cam.app`` needs no Gradio; ``main`` imports it when it starts.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """``gradcam app [--host H] [--port N] ...``: serve the page; returns the exit status."""
    from pytorch_grad_cam.app.server import main as serve

    return serve(argv)


__all__ = ["main"]
