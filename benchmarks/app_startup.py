"""``gradcam app``: seconds from starting the process to a usable page, and where they go.

    python benchmarks/app_startup.py [--repeats 3]

Printed (medians over ``--repeats`` fresh processes):
- the imports alone, each in a fresh interpreter: the library (torch, torchvision) and
  the web framework (Gradio);
- ``python -m pytorch_grad_cam.app``: spawn -> "serving" line, and spawn -> the page
  shows the default model's top classes in headless Chromium (target: under 10 s).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def import_seconds(module: str) -> float:
    """Wall seconds of ``python -c "import module"`` in a fresh interpreter."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, check=True)
    return time.perf_counter() - started


def startup_seconds(browser) -> tuple[float, float]:
    """(spawn -> serving, spawn -> usable page) for one fresh app process."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "pytorch_grad_cam.app", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "serving" in line:
                break
        serving = time.perf_counter() - started
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.locator("#top-classes").get_by_text("espresso").first.wait_for(timeout=120_000)
        usable = time.perf_counter() - started
        page.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
    return serving, usable


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    for module in ("pytorch_grad_cam", "gradio"):
        seconds = statistics.median(import_seconds(module) for _ in range(args.repeats))
        print(f"import {module:<20} {seconds:5.1f} s")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS
        )
        runs = [startup_seconds(browser) for _ in range(args.repeats)]
        browser.close()
    serving = statistics.median(run[0] for run in runs)
    usable = statistics.median(run[1] for run in runs)
    print(f"spawn -> serving           {serving:5.1f} s")
    print(f"spawn -> usable page       {usable:5.1f} s  (target: under 10 s)")


if __name__ == "__main__":
    main()
