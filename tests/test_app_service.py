"""The app's service layer without a browser: its maps, overlays and scores are the
library's, bad inputs get the named message, and Stop stops at the next forward pass."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from pytorch_grad_cam import AblationCAM, GradCAM, ScoreCAM, cli
from pytorch_grad_cam.app import images
from pytorch_grad_cam.app.errors import AppInputError, Cancelled
from pytorch_grad_cam.app.images import LoadedImage, load_image
from pytorch_grad_cam.app.models import LoadedModel
from pytorch_grad_cam.app.outputs import scores_markdown, write_run_files
from pytorch_grad_cam.app.service import (
    ExplainRequest,
    ExplanationService,
    MapResult,
    method_names,
)
from pytorch_grad_cam.metrics import CamMultImageConfidenceChange, DeletionCurve, InsertionCurve
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
)

CATEGORIES = ["apple", "banana", "cherry", "date", "elderberry"]


class TinyNet(nn.Module):
    """A strided convolution (the map is coarser than the input), GAP, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, len(CATEGORIES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.fixture
def loaded() -> LoadedModel:
    torch.manual_seed(0)
    model = TinyNet().eval()
    explainable = cli.Explainable(model, [model.features], CATEGORIES)
    names = [name for name, _ in model.named_modules() if name]
    return LoadedModel("test:tiny", explainable, torch.device("cpu"), names, ["features"])


@pytest.fixture
def image() -> LoadedImage:
    rgb = np.random.default_rng(0).random((20, 30, 3), dtype=np.float32)
    return LoadedImage(rgb, "test.png")


@pytest.fixture
def service() -> ExplanationService:
    return ExplanationService(batch_size=4, metric_steps=5)


def library_map(method: type, model: nn.Module, x: torch.Tensor, category: int) -> np.ndarray:
    options = {"batch_size": 4} if method in (ScoreCAM, AblationCAM) else {}
    with method(model, [model.features], **options) as cam:
        return cam(x, [ClassifierOutputTarget(category)])[0]


# ----------------------------------------------------------------------- maps
def test_maps_overlays_and_input_are_the_librarys(service, loaded, image):
    request = ExplainRequest(["GradCAM", "ScoreCAM", "AblationCAM"], "features", 2, input_side=10)
    results = service.explain(loaded, image, request)
    assert [result.method for result in results] == ["GradCAM", "ScoreCAM", "AblationCAM"]
    x = service.input_tensor(loaded, image, 10)
    assert tuple(x.shape) == (1, 3, 10, 15)  # the shorter side 20 -> 10
    small = cv2.resize(image.rgb, (15, 10), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), (small - 0.485) / 0.229, atol=2)
    for result, method in zip(results, (GradCAM, ScoreCAM, AblationCAM)):
        expected = library_map(method, loaded.model, x, 2)
        np.testing.assert_array_equal(result.input_map, expected)
        resized = cv2.resize(expected, (30, 20), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(result.grayscale, resized)
        np.testing.assert_array_equal(
            result.overlay, show_cam_on_image(image.rgb, resized, use_rgb=True)
        )
        assert result.scores is None


def test_input_tensor_is_cli_preprocessing(service, loaded, image):
    x = service.input_tensor(loaded, image, 224)  # smaller than 224: kept at its size
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = ((image.rgb - mean) / std).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-6)


def test_scores_equal_the_metrics_api(service, loaded, image):
    request = ExplainRequest(["GradCAM", "EigenCAM"], "features.2", 4, with_scores=True)
    results = service.explain(loaded, image, request)
    x = service.input_tensor(loaded, image)
    targets = [ClassifierOutputSoftmaxTarget(4)]
    for result in results:
        scored = (x, result.input_map[None], targets, loaded.model)
        deletion = DeletionCurve(n_steps=5, batch_size=4)
        auc, curves = deletion(*scored, return_curves=True)
        assert result.scores.deletion_auc == float(auc[0])
        np.testing.assert_array_equal(result.scores.deletion_curve, curves[0])
        np.testing.assert_allclose(result.scores.fractions, [0, 0.2, 0.4, 0.6, 0.8, 1], atol=1e-12)
        insertion = InsertionCurve(n_steps=5, batch_size=4)(*scored)
        assert result.scores.insertion_auc == float(insertion[0])
        change = CamMultImageConfidenceChange(batch_size=4)(*scored)
        assert result.scores.confidence_change == float(change[0])
    # The curve starts at the class's probability on the image.
    probability = torch.softmax(loaded.model(x), dim=1)[0, 4].item()
    assert results[0].scores.deletion_curve[0] == pytest.approx(probability, abs=1e-6)


def test_prediction_is_the_softmax_top_five(service, loaded, image):
    prediction = service.predict(loaded, image)
    with torch.no_grad():
        probabilities = torch.softmax(loaded.model(service.input_tensor(loaded, image)), 1)[0]
    order = torch.argsort(probabilities, descending=True).tolist()
    assert [index for index, _, _ in prediction.top] == order
    assert [name for _, name, _ in prediction.top] == [CATEGORIES[i] for i in order]
    np.testing.assert_allclose([p for *_, p in prediction.top], probabilities[order], atol=1e-7)
    assert prediction.class_names == CATEGORIES


def test_method_menu_lists_target_methods_popular_first():
    names = method_names()
    assert names[:3] == ["GradCAM", "GradCAMPlusPlus", "HiResCAM"]
    assert "ScoreCAM" in names and "AblationCAM" in names and "AttentionRollout" not in names
    assert len(names) == len(set(names))  # the alias gradcam++ is not listed twice


# ----------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ("fc", "Target layer fc: outputs shape (1, 5), which has no spatial axes"),
        ("pool", "Target layer pool: outputs shape (1, 8, 1, 1), a single position"),
        ("nowhere", "Target layer: layer path 'nowhere': the model has no submodule"),
        ("", "Target layer: choose one, e.g. features"),
    ],
)
def test_a_layer_without_a_map_is_refused_by_name(service, loaded, image, layer, message):
    with pytest.raises(AppInputError) as caught:
        service.explain(loaded, image, ExplainRequest(["GradCAM"], layer, 0))
    assert str(caught.value).startswith(message)
    if layer in ("fc", "pool"):
        assert "choose a convolutional layer, e.g. features" in str(caught.value)


@pytest.mark.parametrize(
    ("methods", "category", "message"),
    [
        ([], 0, "Methods: choose at least one method"),
        (["NoSuchCAM"], 0, "Method NoSuchCAM: unknown method; choose one of"),
        (["GradCAM"], 5, "Class 5: out of range; the model has classes 0..4"),
    ],
)
def test_bad_requests_get_the_named_message(service, loaded, image, methods, category, message):
    with pytest.raises(AppInputError, match=f"^{message}"):
        service.explain(loaded, image, ExplainRequest(methods, "features", category))


class StopAfter:
    """A Stop flag that is set after ``checks`` forward passes of modules."""

    def __init__(self, checks: int) -> None:
        self.checks = checks
        self.calls = 0

    def is_set(self) -> bool:
        self.calls += 1
        return self.calls > self.checks


def test_stop_ends_scorecam_at_the_next_forward_and_leaves_no_hook(service, loaded, image):
    request = ExplainRequest(["ScoreCAM"], "features", 1)
    modules = len(list(loaded.model.modules()))  # 8: each forward checks each module once
    stop = StopAfter(3 * modules)  # the prediction, the CAM's forward, one masked batch
    with pytest.raises(Cancelled):
        service.explain(loaded, image, request, cancel=stop)
    assert stop.calls == 3 * modules + 1
    loaded.model(service.input_tensor(loaded, image))  # no hook left to ask the flag
    assert stop.calls == 3 * modules + 1
    assert not loaded.lock.locked()
    again = service.explain(loaded, image, request)  # and the model works as before
    x = service.input_tensor(loaded, image)
    np.testing.assert_array_equal(again[0].input_map, library_map(ScoreCAM, loaded.model, x, 1))


def test_progress_reports_each_method(service, loaded, image):
    reports = []
    request = ExplainRequest(["GradCAM", "HiResCAM"], "features", 0, with_scores=True)
    service.explain(loaded, image, request, progress=lambda f, text: reports.append((f, text)))
    assert reports == [
        (0.0, "GradCAM (1/2)"),
        (0.25, "scores of GradCAM"),
        (0.5, "HiResCAM (2/2)"),
        (0.75, "scores of HiResCAM"),
        (1.0, "done"),
    ]


# ----------------------------------------------------------------------- images
def test_an_image_file_is_read_as_rgb(tmp_path):
    bgr = np.random.default_rng(1).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "small.png"), bgr)
    loaded = load_image(tmp_path / "small.png")
    np.testing.assert_array_equal(loaded.rgb, bgr[..., ::-1] / np.float32(255))
    assert loaded.rgb.dtype == np.float32 and loaded.note == "" and loaded.name == "small.png"
    shipped = load_image(cli.EXAMPLE_IMAGE)
    np.testing.assert_array_equal(shipped.rgb, cli.read_image(str(cli.EXAMPLE_IMAGE)))


def test_a_huge_image_is_scaled_down_with_a_note(tmp_path):
    bgr = np.random.default_rng(2).integers(0, 256, (1100, 2200, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "wide.png"), bgr)
    loaded = load_image(tmp_path / "wide.png", "wide.png")
    assert loaded.rgb.shape == (512, 1024, 3)
    rgb = bgr[..., ::-1].astype(np.float32) / 255
    expected = cv2.resize(rgb, (1024, 512), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(loaded.rgb, expected, atol=1e-6)
    assert loaded.note == (
        "Image wide.png is 2200 x 1100 pixels; it was scaled down to 1024 x 512 for the "
        "page (the model sees it smaller still)."
    )


def test_a_file_that_is_not_an_image_is_refused(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not a picture")
    with pytest.raises(AppInputError, match=r"^Image notes.png: not an image file that can be"):
        load_image(path)
    with pytest.raises(AppInputError, match=r"^Image gone.png: no such file"):
        load_image(tmp_path / "gone.png")


def test_too_many_pixels_are_not_decoded(tmp_path, monkeypatch):
    cv2.imwrite(str(tmp_path / "big.png"), np.zeros((40, 50, 3), np.uint8))
    monkeypatch.setattr(images, "MAX_DECODED_PIXELS", 1999)
    with pytest.raises(AppInputError, match=r"^Image big.png: 50 x 40 pixels is too large"):
        load_image(tmp_path / "big.png")


# ----------------------------------------------------------------------- downloads
def test_downloads_hold_the_overlay_map_and_scores_exactly(service, loaded, image, tmp_path):
    request = ExplainRequest(["GradCAM", "ScoreCAM"], "features", 3, with_scores=True)
    results = service.explain(loaded, image, request)
    paths = write_run_files(results, tmp_path / "run")
    assert [path.name for path in paths] == [
        "gradcam_overlay.png",
        "scorecam_overlay.png",
        "gradcam_map.npy",
        "scorecam_map.npy",
        "scores.csv",
    ]
    for result, png, npy in zip(results, paths[:2], paths[2:4]):
        decoded = cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(decoded, result.overlay)
        np.testing.assert_array_equal(np.load(npy), result.grayscale)
    with paths[4].open() as file:
        rows = list(csv.DictReader(file))
    for row, result in zip(rows, results):
        assert row["method"] == result.method
        assert float(row["deletion_auc"]) == result.scores.deletion_auc
        assert float(row["insertion_auc"]) == result.scores.insertion_auc
        assert float(row["confidence_change"]) == result.scores.confidence_change
    table = scores_markdown(results)
    first = results[0].scores
    row = f"| GradCAM | {first.deletion_auc:.4f} | {first.insertion_auc:.4f} |"
    assert row in table
    unscored = MapResult("GradCAM", results[0].grayscale, results[0].input_map, results[0].overlay)
    assert scores_markdown([unscored]) == ""
