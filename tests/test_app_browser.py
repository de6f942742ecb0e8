"""The web app end to end: ``python -m pytorch_grad_cam.app`` in a subprocess, driven by
Playwright in the system's Chromium, as a user would drive it.

The oracles are the library's public API: the overlays are compared with
``show_cam_on_image`` on the downloaded ``.npy`` maps, the maps with GradCAM and ScoreCAM
called directly, and the scores with ``DeletionCurve``, ``InsertionCurve`` and
``CamMultImageConfidenceChange`` on those maps.

Slow for a test (about a minute on a shared CPU) for a reason: ScoreCAM on the default
model's 1280-channel layer is the slow method the page has to show progress for. The
page runs it at 112 pixels (the input-size menu), about 800 forward passes, and the test
runs it once more as the oracle.

``GRADCAM_APP_SCREENSHOT=docs/app_screenshot.png python -m pytest tests/test_app_browser.py``
also saves the README's screenshot; otherwise screenshots go to pytest's tmp folder.
"""

from __future__ import annotations

import csv
import io
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import cv2
import numpy as np
import pytest
import torch

from pytorch_grad_cam import GradCAM, ScoreCAM, cli
from pytorch_grad_cam.metrics import CamMultImageConfidenceChange, DeletionCurve, InsertionCurve
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
)

pytest.importorskip("gradio", reason="the app needs the app extra (Gradio)")
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (test extra)")

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip(
        "no Chromium executable (apt-get install chromium) for the browser test",
        allow_module_level=True,
    )
#: Headless, and nothing that calls Google's servers (they are refused here, slowly).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIGER_CAT = 282
INPUT_SIDE = 112  # the page's input-size menu: ScoreCAM in tens of seconds, not minutes
BATCH_SIZE = 32  # the app's default
METRIC_STEPS = 20  # the app's default
SLOW = 300_000  # ms: ScoreCAM with scores on a shared CPU


@dataclass
class AppProcess:
    """The app running in a subprocess."""

    url: str
    process: subprocess.Popen
    spawned: float
    lines: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def app() -> Iterator[AppProcess]:
    """``python -m pytorch_grad_cam.app --port N``, stopped with SIGTERM afterwards."""
    port = free_port()
    spawned = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "pytorch_grad_cam.app", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            log.append(line.rstrip())
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    url = None
    deadline = time.monotonic() + 180
    while url is None and time.monotonic() < deadline and process.poll() is None:
        try:
            match = re.search(r"serving (http://\S+)", lines.get(timeout=1))
        except queue.Empty:
            continue
        if match:
            url = match.group(1)
    if url is None:
        process.kill()
        pytest.fail("the app did not start:\n" + "\n".join(log))
    print(f"\napp: serving after {time.perf_counter() - spawned:.1f} s")
    yield AppProcess(url, process, spawned, log)
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
    print("app log:\n" + "\n".join(log[-20:]))


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


def open_page(browser, app: AppProcess, outside: list[str]):
    """A new tab on the app, requests to any other host refused (and recorded)."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(120_000)  # a shared, busy CPU

    def only_the_app(route) -> None:
        url = route.request.url
        if url.startswith(app.url) or url.startswith("data:") or url.startswith("blob:"):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    page.route("**/*", only_the_app)
    page.goto(app.url)
    page.locator("#top-classes").get_by_text("espresso").first.wait_for()
    return page


def choose(page, menu: str, typed: str, option: str) -> None:
    """Type ``typed`` into the dropdown ``menu`` (an elem_id) and pick ``option``."""
    field_ = page.locator(f"#{menu} input")
    field_.click()
    field_.press("Control+a")
    field_.press_sequentially(typed, delay=20)
    page.get_by_role("option", name=option, exact=True).click()


def fetch(page, url: str) -> bytes:
    response = page.request.get(url)
    assert response.ok, (url, response.status)
    return response.body()


def served_path(url: str) -> Path:
    """The file behind a ``/gradio_api/file=...`` URL."""
    return Path(unquote(url.split("file=", 1)[1]))


def library_maps(input_tensor: torch.Tensor, model: torch.nn.Module) -> dict[str, np.ndarray]:
    """GradCAM's and ScoreCAM's maps for tiger cat, called directly (the oracle)."""
    targets = [ClassifierOutputTarget(TIGER_CAT)]
    layers = [model.head_activation]
    with GradCAM(model, layers) as cam:
        gradcam = cam(input_tensor, targets)[0]
    with ScoreCAM(model, layers, batch_size=BATCH_SIZE) as cam:
        scorecam = cam(input_tensor, targets)[0]
    return {"GradCAM": gradcam, "ScoreCAM": scorecam}


def library_scores(input_tensor: torch.Tensor, model: torch.nn.Module, grayscale: np.ndarray):
    """Deletion AUC, insertion AUC and confidence change of one map, as the app asks."""
    args = (input_tensor, grayscale[None], [ClassifierOutputSoftmaxTarget(TIGER_CAT)], model)
    return (
        float(DeletionCurve(n_steps=METRIC_STEPS, batch_size=BATCH_SIZE)(*args)[0]),
        float(InsertionCurve(n_steps=METRIC_STEPS, batch_size=BATCH_SIZE)(*args)[0]),
        float(CamMultImageConfidenceChange(batch_size=BATCH_SIZE)(*args)[0]),
    )


def test_page_compares_gradcam_and_scorecam_for_tiger_cat(app, browser, tmp_path):
    outside: list[str] = []
    page = open_page(browser, app, outside)
    print(f"app: page usable {time.perf_counter() - app.spawned:.1f} s after the start")
    upload = tmp_path / "shipped_cat_and_coffee.png"
    shutil.copyfile(cli.EXAMPLE_IMAGE, upload)
    page.locator("#upload input[type=file]").set_input_files(str(upload))
    page.locator("#notes").get_by_text(upload.name).wait_for()
    choose(page, "input-side", "112", f"{INPUT_SIDE} px")
    choose(page, "class", "tiger cat", f"{TIGER_CAT}: tiger cat")
    page.locator("#methods").get_by_label("ScoreCAM", exact=True).check()
    page.locator("#with-scores").get_by_label("Faithfulness scores").check()
    started = time.perf_counter()
    page.locator("#explain").click()
    page.locator("#overlays").get_by_text("ScoreCAM").wait_for(timeout=SLOW)
    page.locator("#scores table").wait_for(timeout=SLOW)
    print(f"app: GradCAM + ScoreCAM with scores in {time.perf_counter() - started:.1f} s")
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    if os.environ.get("GRADCAM_APP_SCREENSHOT"):
        page.screenshot(path=os.environ["GRADCAM_APP_SCREENSHOT"], full_page=True)

    images = page.locator("#overlays img")
    assert images.count() == 2
    overlays = {}
    for method, image in zip(["GradCAM", "ScoreCAM"], images.all()):
        data = np.frombuffer(fetch(page, image.get_attribute("src")), np.uint8)
        overlays[method] = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    links = {
        served_path(href).name: href
        for href in (link.get_attribute("href") for link in page.locator("#downloads a").all())
    }
    assert sorted(links) == sorted(
        [
            "gradcam_overlay.png",
            "scorecam_overlay.png",
            "gradcam_map.npy",
            "scorecam_map.npy",
            "scores.csv",
        ]
    )
    maps = {
        "GradCAM": np.load(io.BytesIO(fetch(page, links["gradcam_map.npy"]))),
        "ScoreCAM": np.load(io.BytesIO(fetch(page, links["scorecam_map.npy"]))),
    }
    table = list(csv.DictReader(io.StringIO(fetch(page, links["scores.csv"]).decode())))
    shown = page.locator("#scores table tbody tr").all_inner_texts()

    # The overlays are show_cam_on_image of the maps on the image.
    rgb = cli.read_image(str(cli.EXAMPLE_IMAGE))
    for method, overlay in overlays.items():
        expected = show_cam_on_image(rgb, maps[method], use_rgb=True)
        assert overlay.shape == expected.shape == (224, 448, 3)
        assert np.abs(overlay.astype(int) - expected.astype(int)).max() <= 1, method

    # The maps are the library's at the 112 x 224 input, resized to the image.
    model = cli.load_efficientnet_lite0()
    explainable = cli.Explainable(
        model,
        [model.head_activation],
        cli.imagenet_categories(),
        mean=cli.LITE_MEAN,
        std=cli.LITE_STD,
        input_size=(INPUT_SIDE, 2 * INPUT_SIDE),
    )
    input_tensor = cli.to_input_tensor(rgb, explainable)
    expected_maps = library_maps(input_tensor, model)
    for method, expected in expected_maps.items():
        resized = cv2.resize(expected, (448, 224), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(maps[method], resized, atol=1e-5, err_msg=method)

    # The scores (the CSV exactly, the page to its 4 decimals) are the metrics API's.
    assert [row["method"] for row in table] == ["GradCAM", "ScoreCAM"]
    for row, text in zip(table, shown):
        expected = library_scores(input_tensor, model, expected_maps[row["method"]])
        got = [float(row[key]) for key in ("deletion_auc", "insertion_auc", "confidence_change")]
        np.testing.assert_allclose(got, expected, atol=1e-6, err_msg=row["method"])
        numbers = [float(value) for value in re.findall(r"[+-]?\d+\.\d{4}", text)]
        np.testing.assert_allclose(numbers, expected, atol=5.1e-5, err_msg=text)
    assert outside == []  # the page fetched nothing from the network
    page.close()


def test_a_slow_method_shows_progress_and_stops(app, browser):
    outside: list[str] = []
    page = open_page(browser, app, outside)
    page.locator("#top-classes").get_by_text("282: tiger cat").click()  # a top-5 class
    page.wait_for_function("document.querySelector('#class input').value === '282: tiger cat'")
    methods = page.locator("#methods")
    methods.get_by_label("GradCAM", exact=True).uncheck()
    methods.get_by_label("ScoreCAM", exact=True).check()
    page.locator("#explain").click()  # at 224 pixels: minutes of forward passes
    overlays = page.locator("#overlays")
    progress = overlays.get_by_text(re.compile(r"ScoreCAM, target layer 0"))
    try:
        progress.first.wait_for()
        overlays.get_by_text(re.compile(r"\d+/\d+ batch")).first.wait_for()  # a counter
    finally:  # stopped even when a check fails, so that the next tests find the app free
        pressed = time.perf_counter()
        page.locator("#stop").click()
    progress.first.wait_for(state="hidden")
    print(f"app: progress gone {time.perf_counter() - pressed:.1f} s after Stop")
    # The computation itself stopped: the next explanation does not wait for it.
    methods.get_by_label("ScoreCAM", exact=True).uncheck()
    methods.get_by_label("GradCAM", exact=True).check()
    page.locator("#explain").click()
    page.locator("#overlays").get_by_text("GradCAM", exact=True).wait_for()
    print(f"app: GradCAM done {time.perf_counter() - pressed:.1f} s after Stop")
    assert page.locator("#overlays img").count() == 1
    assert outside == []
    page.close()


def test_bad_inputs_show_a_message_and_uploads_are_deleted(app, browser, tmp_path):
    outside: list[str] = []
    page = open_page(browser, app, outside)
    # Uploads are bounded (--max-file-size, 20 MB by default).
    too_big = tmp_path / "huge.png"
    too_big.write_bytes(bytes(21_000_000))
    page.locator("#upload input[type=file]").set_input_files(str(too_big))
    page.get_by_text("exceed the maximum allowed size of 20.0 Mb").first.wait_for()

    not_an_image = tmp_path / "holiday.png"
    not_an_image.write_text("these are my notes, not a picture\n")
    page.locator("#upload input[type=file]").set_input_files(str(not_an_image))
    toast = page.locator(".toast-body").filter(has_text="not an image file that can be read")
    toast.first.wait_for()
    assert "Image holiday.png: not an image file that can be read" in toast.first.inner_text()
    assert "Traceback" not in page.content()
    uploaded = served_path(page.locator("#upload a").first.get_attribute("href"))
    assert uploaded.read_bytes() == not_an_image.read_bytes()

    # A layer without a spatial map: the message names it and a layer that works.
    choose(page, "layer", "_fc", "_fc")
    page.locator("#explain").click()
    page.get_by_text("no spatial axes").first.wait_for()
    assert "e.g. head_activation" in page.get_by_text("no spatial axes").first.inner_text()

    # Another model offers its own layers; a weights file that does not load is refused.
    untrained = "torchvision resnet18 (random weights, untrained)"
    choose(page, "model", "resnet18", untrained)
    page.locator("#notes").get_by_text("torchvision resnet18 (untrained)").wait_for()
    assert page.locator("#layer input").input_value() == "layer4.1"
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00 not a checkpoint")
    page.get_by_text("Weights file for the model (optional)").click()
    page.locator("#weights input[type=file]").set_input_files(str(garbage))
    page.get_by_text("Weights file garbage.pt: not a checkpoint").first.wait_for()

    # Only uploads and outputs are served: not the working folder, not the system.
    for path in (ROOT / "README.md", Path("/etc/passwd")):
        assert page.request.get(f"{app.url}gradio_api/file={path}").status == 403

    # The upload is deleted when the tab closes (the session ends).
    assert uploaded.exists()
    page.close()
    deadline = time.monotonic() + 30
    while uploaded.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not uploaded.exists()
    assert outside == []
