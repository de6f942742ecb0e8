"""Targets for segmentation and detection on the real torchvision models (random weights),
the feature-pyramid reshape, target layers that output a mapping of tensors (a pyramid's
levels), and the two usage examples run as scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_same_state, snapshot
from torch import nn
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

from pytorch_grad_cam import AblationCAM, EigenCAM, GradCAM, GradCAMPlusPlus, ScoreCAM
from pytorch_grad_cam.ablation_layer import AblationLayerFasterRCNN
from pytorch_grad_cam.activations_and_gradients import LayerRecorder
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputTarget,
    FasterRCNNBoxScoreTarget,
    SemanticSegmentationTarget,
)
from pytorch_grad_cam.utils.reshape_transforms import fpn_reshape_transform

REPO = Path(__file__).resolve().parent.parent
SEGMENTATION_CLASSES = 3
DETECTION_CLASSES = 5


def batch_norm_statistics_from(module: nn.Module, x: torch.Tensor) -> None:
    """Untrained MobileNets shrink their features to ~1e-8 with the default batch-norm
    statistics (degenerate maps, and slow denormal arithmetic); set them from ``x``."""
    for norm in module.modules():
        if isinstance(norm, nn.BatchNorm2d):
            norm.reset_running_stats()
            norm.momentum = None
    module.train()
    with torch.no_grad():
        module(x)
    module.eval()


def image_batch(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=generator)


def segmenter() -> nn.Module:
    torch.manual_seed(0)
    model = deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=SEGMENTATION_CLASSES
    )
    batch_norm_statistics_from(model.backbone, image_batch(2, 64, 96, seed=1))
    return model.eval()


def detector() -> nn.Module:
    torch.manual_seed(0)
    model = fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=DETECTION_CLASSES,
        box_score_thresh=0.0,  # untrained scores are about 1 / classes
        min_size=128,  # 128 px images are not resized
        max_size=256,
        rpn_pre_nms_top_n_test=50,
        rpn_post_nms_top_n_test=20,
        box_detections_per_img=10,
    )
    model.eval()
    x = image_batch(1, 128, 128, seed=2)
    batch_norm_statistics_from(model.backbone, model.transform([x[0]])[0].tensors)
    return model


@pytest.fixture(scope="module")
def seg_model() -> nn.Module:
    return segmenter()


@pytest.fixture(scope="module")
def det_model() -> nn.Module:
    return detector()


def gradcam_by_hand(model, layers, x, score_of_output, transform=None) -> np.ndarray:
    """Grad-CAM from its formula: hooked activations A and gradients dS/dA (for a layer
    that outputs a mapping of levels: the levels and their gradients, each combined by
    ``transform``); weights the spatial mean of the gradient, ``ReLU(sum_k w_k A_k)``,
    bilinear resize to the input, min-max scaling per image, mean over layers."""
    captured: dict[int, torch.Tensor] = {}
    handles = [
        layer.register_forward_hook(lambda m, i, o, k=k: captured.__setitem__(k, o))
        for k, layer in enumerate(layers)
    ]
    try:
        with torch.enable_grad():
            score = score_of_output(model(x))
    finally:
        for handle in handles:
            handle.remove()
    outputs = [captured[k] for k in range(len(layers))]
    levels = [list(o.values()) if isinstance(o, Mapping) else [o] for o in outputs]
    flat = [level for layer_levels in levels for level in layer_levels]
    remaining = iter(torch.autograd.grad(score, flat, allow_unused=True))
    maps = []
    for output, layer_levels in zip(outputs, levels):
        grads = [next(remaining) for _ in layer_levels]
        a = [level.detach() for level in layer_levels]
        g = [torch.zeros_like(level) if grad is None else grad for level, grad in zip(a, grads)]
        if isinstance(output, Mapping):
            a = [transform(OrderedDict(zip(output.keys(), a)))]
            g = [transform(OrderedDict(zip(output.keys(), g)))]
        a, g = a[0].double(), g[0].double()
        cam = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0]
        low = cam.amin(dim=(1, 2), keepdim=True)
        high = cam.amax(dim=(1, 2), keepdim=True)
        assert bool((high - low > 1e-6 * high.abs()).all()), "the oracle's map is constant"
        maps.append((cam - low) / (high - low))
    return torch.stack(maps).mean(dim=0).numpy()


# --------------------------------------------------------------------- segmentation
def predicted_masks(model, x) -> tuple[torch.Tensor, list[int]]:
    """Each image's most frequent predicted class and its mask (the usual target)."""
    with torch.no_grad():
        prediction = model(x)["out"].argmax(dim=1)
    categories = [int(torch.bincount(p.flatten()).argmax()) for p in prediction]
    masks = torch.stack([(p == c).float() for p, c in zip(prediction, categories)])
    return masks, categories


def test_segmentation_target_is_the_masked_sum_of_the_class_scores(seg_model):
    x = image_batch(2, 64, 96, seed=3)
    with torch.no_grad():
        out = seg_model(x)["out"]
    assert out.shape == (2, SEGMENTATION_CLASSES, 64, 96)
    mask = np.random.default_rng(0).random((64, 96)).astype(np.float32)
    for image in range(2):
        for category in range(SEGMENTATION_CLASSES):
            target = SemanticSegmentationTarget(category, mask)
            expected = (mask.astype(np.float64) * out[image, category].double().numpy()).sum()
            assert float(target(out[image])) == pytest.approx(expected, rel=1e-5)
    # A block of images (rowwise) gives one score per image.
    target = SemanticSegmentationTarget(1, torch.from_numpy(mask))
    block = target(out)
    assert block.shape == (2,)
    torch.testing.assert_close(block, torch.stack([target(out[0]), target(out[1])]))


def test_gradcam_with_segmentation_target_is_the_formula(seg_model):
    x = image_batch(2, 64, 96, seed=4)
    masks, categories = predicted_masks(seg_model, x)
    assert all(float(m.mean()) > 0 for m in masks)
    targets = [SemanticSegmentationTarget(c, m.numpy()) for c, m in zip(categories, masks)]
    layer = seg_model.backbone["16"]
    result = GradCAM(seg_model, [layer])(x, targets=targets)

    def score(output):
        return sum(t(output["out"][i]) for i, t in enumerate(targets))

    expected = gradcam_by_hand(seg_model, [layer], x, score)
    assert result.shape == (2, 64, 96) and result.dtype == np.float32
    np.testing.assert_allclose(result, expected, atol=2e-5)


def test_segmentation_mask_goes_to_the_outputs_device_once():
    # The meta device stands in for a GPU: the mask moves there on the first call only.
    target = SemanticSegmentationTarget(2, np.ones((6, 5), dtype=bool))
    output = torch.empty(3, 6, 5, device="meta")
    assert target(output).device.type == "meta"
    moved = target.mask
    assert moved.device.type == "meta" and moved.dtype == torch.float32
    target(output)
    target(torch.empty(4, 3, 6, 5, device="meta"))
    assert target.mask is moved


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_segmentation_target_on_cuda():
    target = SemanticSegmentationTarget(1, np.ones((4, 4), np.float32))
    result = target(torch.ones(2, 4, 4, device="cuda"))
    assert result.device.type == "cuda" and float(result) == 16.0


def test_segmentation_mask_of_the_wrong_size_is_a_clear_error(seg_model):
    x = image_batch(1, 64, 96, seed=5)
    target = SemanticSegmentationTarget(1, np.ones((96, 64)))  # transposed
    with pytest.raises(ValueError, match=r"mask has shape \(96, 64\).*\(64, 96\)"):
        GradCAM(seg_model, [seg_model.backbone["16"]])(x, targets=[target])


def test_gradcam_on_segmenter_leaves_it_as_found():
    model = segmenter()
    model.train()
    model.backbone.eval()
    model.classifier[-1].weight.grad = torch.full_like(model.classifier[-1].weight, 0.5)
    x = image_batch(2, 64, 96, seed=6)
    masks, categories = predicted_masks(model, x)
    model.train()
    model.backbone.eval()
    before = snapshot(model)
    targets = [SemanticSegmentationTarget(c, m) for c, m in zip(categories, masks)]
    GradCAM(model, [model.backbone["16"]])(x, targets=targets)
    assert_same_state(before, snapshot(model))


# --------------------------------------------------------------------- detection
def box_iou_by_hand(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    intersection = width * height
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return intersection / (area - intersection)


def box_score_by_hand(references, reference_labels, detection, threshold=0.5) -> float:
    boxes = detection["boxes"].tolist()
    labels = detection["labels"].tolist()
    scores = detection["scores"].tolist()
    total = 0.0
    for reference, label in zip(references, reference_labels):
        candidates = [
            box_iou_by_hand(reference, box) + score
            for box, box_label, score in zip(boxes, labels, scores)
            if box_label == label and box_iou_by_hand(reference, box) > threshold
        ]
        total += max(candidates, default=0.0)
    return total


def detect(model, x) -> list[dict[str, torch.Tensor]]:
    with torch.no_grad():
        return model(x)


def test_detector_output_is_a_list_of_dicts_in_input_pixels(det_model):
    x = image_batch(2, 128, 128, seed=7)
    output = detect(det_model, x)
    assert isinstance(output, list) and len(output) == 2
    for detection in output:
        assert set(detection) == {"boxes", "labels", "scores"}
        assert detection["boxes"].shape == (10, 4)
        assert float(detection["boxes"].max()) <= 128


def test_box_score_target_is_iou_plus_score_of_the_matches(det_model):
    x = image_batch(1, 128, 128, seed=8)
    detection = detect(det_model, x)[0]
    boxes = detection["boxes"].tolist()
    labels = detection["labels"].tolist()
    references = [
        [boxes[0][0] + 2, boxes[0][1] + 1, boxes[0][2] + 2, boxes[0][3] - 1],
        [v * 1.03 for v in boxes[4]],
        boxes[7],
        [0.0, 0.0, 3.0, 3.0],  # matches nothing
    ]
    reference_labels = [labels[0], labels[4], (labels[7] + 1) % DETECTION_CLASSES, labels[1]]
    expected = box_score_by_hand(references, reference_labels, detection)
    assert expected > 1.0  # at least one match
    target = FasterRCNNBoxScoreTarget(reference_labels, np.array(references))
    assert float(target(detection)) == pytest.approx(expected, rel=1e-5)
    # The model's own detections as references: each matches itself (IoU 1) or better.
    own = FasterRCNNBoxScoreTarget(detection["labels"], detection["boxes"])
    own_expected = box_score_by_hand(boxes, labels, detection)
    assert own_expected >= len(boxes) * 1.0
    assert float(own(detection)) == pytest.approx(own_expected, rel=1e-5)


def test_box_score_target_rejects_label_count_mismatch():
    with pytest.raises(ValueError, match="2 labels for 3 bounding boxes"):
        FasterRCNNBoxScoreTarget([1, 2], np.zeros((3, 4)))


def test_box_score_target_keeps_references_on_the_outputs_device():
    target = FasterRCNNBoxScoreTarget([1], [[0.0, 0.0, 10.0, 10.0]])
    output = {
        "boxes": torch.empty(3, 4, device="meta"),
        "labels": torch.empty(3, dtype=torch.int64, device="meta"),
        "scores": torch.empty(3, device="meta"),
    }
    assert target(output).device.type == "meta"
    boxes, labels = target.bounding_boxes, target.labels
    assert boxes.device.type == labels.device.type == "meta"
    target(output)
    assert target.bounding_boxes is boxes and target.labels is labels


def test_gradcam_on_detector_is_the_formula(det_model):
    x = image_batch(1, 128, 128, seed=9)
    detection = detect(det_model, x)[0]
    target = FasterRCNNBoxScoreTarget(detection["labels"][:3], detection["boxes"][:3])
    layers = [det_model.backbone.fpn.layer_blocks[0]]
    result = GradCAM(det_model, layers)(x, targets=[target])
    expected = gradcam_by_hand(det_model, layers, x, lambda output: target(output[0]))
    assert result.shape == (1, 128, 128)
    np.testing.assert_allclose(result, expected, atol=2e-5)


def test_box_head_reads_only_the_first_pyramid_level_of_this_detector(det_model):
    # Both pyramid levels of the MobileNet 320 FPN have stride 32, so the RoI pooler's
    # level mapper sends every box to level "0"; the RPN's proposals are detached, so
    # level "1" gets no gradient from the detections: its Grad-CAM map is zero.
    x = image_batch(1, 128, 128, seed=9)
    detection = detect(det_model, x)[0]
    target = FasterRCNNBoxScoreTarget(detection["labels"][:3], detection["boxes"][:3])
    second = det_model.backbone.fpn.layer_blocks[1]
    raw = GradCAM(det_model, [second])(x, targets=[target], scale=False)
    np.testing.assert_array_equal(raw, np.zeros((1, 128, 128), np.float32))


def test_cams_on_detector_leave_it_as_found():
    model = detector()
    model.train()
    model.backbone.body.eval()  # mixed flags must come back as they were
    model.roi_heads.box_predictor.cls_score.weight.grad = torch.ones_like(
        model.roi_heads.box_predictor.cls_score.weight
    )
    x = image_batch(1, 128, 128, seed=10)
    model.eval()
    detection = detect(model, x)[0]
    model.train()
    model.backbone.body.eval()
    before = snapshot(model)
    layer = model.backbone.fpn.layer_blocks[0]
    target = FasterRCNNBoxScoreTarget(detection["labels"][:2], detection["boxes"][:2])
    gradcam = GradCAM(model, [layer])(x, targets=[target])
    eigencam = EigenCAM(model, [layer])(x)
    assert_same_state(before, snapshot(model))
    for maps in (gradcam, eigencam):
        assert maps.shape == (1, 128, 128)
        assert float(maps.min()) == 0.0 and float(maps.max()) == pytest.approx(1.0)


# --------------------------------------------------------------------- FPN reshape
def pyramid() -> OrderedDict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    return OrderedDict(
        [
            ("0", torch.randn(2, 2, 8, 12, generator=generator)),
            ("1", torch.randn(2, 3, 4, 6, generator=generator)),
            ("pool", torch.arange(2.0).reshape(2, 1, 1, 1).expand(2, 1, 2, 3).contiguous()),
        ]
    )


def test_fpn_reshape_transform_resizes_to_the_first_level_and_concatenates():
    levels = pyramid()
    result = fpn_reshape_transform(levels)
    assert result.shape == (2, 2 + 3 + 1, 8, 12)
    torch.testing.assert_close(result[:, :2], levels["0"], rtol=0, atol=0)
    upsampled = F.interpolate(levels["1"], size=(8, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(result[:, 2:5], upsampled)
    # A constant map stays constant: image 0's pool level is 0, image 1's is 1.
    torch.testing.assert_close(result[:, 5], torch.arange(2.0).reshape(2, 1, 1).expand(2, 8, 12))
    # Bilinear upsampling by 2 (align_corners=False) puts every even output pixel at
    # 3/4 of its source pixel and 1/4 of the previous one: checked by hand on one row.
    source, row = levels["1"][0, 0, 1], result[0, 2, 3]  # output row 3: 3/4 source row 1
    below = levels["1"][0, 0, 2]
    for j in range(1, 5):
        vertical = 0.75 * source + 0.25 * below
        expected = 0.75 * vertical[j] + 0.25 * vertical[j - 1]
        assert float(row[2 * j]) == pytest.approx(float(expected), abs=1e-5)


def test_fpn_reshape_transform_chosen_level_and_other_containers():
    levels = pyramid()
    coarse = fpn_reshape_transform(levels, level="pool")
    assert coarse.shape == (2, 6, 2, 3)
    shrunk = F.interpolate(
        levels["0"], size=(2, 3), mode="bilinear", align_corners=False, antialias=True
    )
    torch.testing.assert_close(coarse[:, :2], shrunk)
    torch.testing.assert_close(fpn_reshape_transform(levels, level=-1), coarse)
    middle = fpn_reshape_transform(list(levels.values()), level=1)
    assert middle.shape == (2, 6, 4, 6)
    torch.testing.assert_close(middle[:, 2:5], levels["1"], rtol=0, atol=0)
    single = levels["0"]
    assert fpn_reshape_transform(single) is single
    with pytest.raises(ValueError, match="level='p2' is not one of the levels"):
        fpn_reshape_transform(levels, level="p2")
    with pytest.raises(ValueError, match="out of range"):
        fpn_reshape_transform(levels, level=3)


def test_fpn_reshape_transform_on_the_detectors_backbone(det_model):
    x = image_batch(1, 128, 128, seed=12)
    images = det_model.transform([x[0]])[0].tensors
    with torch.no_grad():
        features = det_model.backbone(images)
    assert list(features) == ["0", "1", "pool"]
    result = fpn_reshape_transform(features)
    assert result.shape == (1, 3 * 256, *features["0"].shape[-2:])
    torch.testing.assert_close(result[:, 256:512], features["1"], rtol=0, atol=0)


def test_gradcam_on_the_whole_backbone_with_the_fpn_transform(det_model):
    x = image_batch(1, 128, 128, seed=13)
    detection = detect(det_model, x)[0]
    target = FasterRCNNBoxScoreTarget(detection["labels"][:3], detection["boxes"][:3])
    before = snapshot(det_model)
    cam = GradCAM(det_model, [det_model.backbone], reshape_transform=fpn_reshape_transform)
    result = cam(x, targets=[target])
    assert_same_state(before, snapshot(det_model))
    expected = gradcam_by_hand(
        det_model,
        [det_model.backbone],
        x,
        lambda output: target(output[0]),
        transform=fpn_reshape_transform,
    )
    assert result.shape == (1, 128, 128)
    np.testing.assert_allclose(result, expected, atol=2e-5)
    # Only level "0" gets a gradient from the boxes (see the test above), and the
    # transform keeps it as it is: the map is that of the level's own layer.
    first_level = GradCAM(det_model, [det_model.backbone.fpn.layer_blocks[0]])(x, targets=[target])
    np.testing.assert_allclose(result, first_level, atol=1e-6)


# --------------------------------------------------------------------- mapping outputs
PYRAMID_CLASSES = 3


class TwoLevels(nn.Module):
    """A feature pyramid in miniature: an OrderedDict of a fine level (4 channels at the
    input's size) and a coarse one (2 channels, stride 2)."""

    def __init__(self):
        super().__init__()
        self.fine = nn.Conv2d(3, 4, 3, padding=1)
        self.coarse = nn.Conv2d(3, 2, 3, stride=2, padding=1)

    def forward(self, x):
        return OrderedDict([("fine", self.fine(x)), ("coarse", self.coarse(x))])


class Combined(nn.Module):
    """The levels combined as one tensor, by the transform the CAMs are given."""

    def forward(self, levels):
        return fpn_reshape_transform(levels)


class PyramidNet(nn.Module):
    """stem -> TwoLevels -> a linear head on each level's spatial sum, added up: the
    score's gradient is ``factor * W_l[class, k]`` everywhere on channel ``k`` of level
    ``l``. ``probe`` outputs the levels combined (a single-tensor twin of
    ``levels`` for the methods that use activations only; the score does not use it).
    With ``in_place``, the head doubles the fine level in place and replaces the coarse
    one in the mapping by 3 times it (factors 2 and 3)."""

    def __init__(self, in_place: bool = False):
        super().__init__()
        self.stem = nn.Conv2d(3, 3, 3, padding=1)
        self.levels = TwoLevels()
        self.probe = Combined()
        self.fine_head = nn.Linear(4, PYRAMID_CLASSES, bias=False)
        self.coarse_head = nn.Linear(2, PYRAMID_CLASSES, bias=False)
        self.in_place = in_place

    def forward(self, x):
        levels = self.levels(torch.relu(self.stem(x)))
        self.probe(levels)
        if self.in_place:
            levels["fine"].mul_(2)
            levels["coarse"] = 3 * levels["coarse"]
        fine, coarse = levels["fine"].sum(dim=(2, 3)), levels["coarse"].sum(dim=(2, 3))
        return self.fine_head(fine) + self.coarse_head(coarse)


def pyramid_net(in_place: bool = False) -> PyramidNet:
    torch.manual_seed(16)
    return PyramidNet(in_place).eval()


PYRAMID_CATEGORIES = [2, 0]


def pyramid_setup(in_place: bool = False):
    model = pyramid_net(in_place)
    x = image_batch(2, 12, 16, seed=15)
    targets = [ClassifierOutputTarget(c) for c in PYRAMID_CATEGORIES]
    return model, x, targets


def pyramid_closed_form(model: PyramidNet, x: torch.Tensor, method: str) -> torch.Tensor:
    """The raw (unscaled) map from the levels computed directly and the analytic
    gradient: a constant per channel, so Grad-CAM's weight is that constant and Grad-CAM++'s
    is ``H W alpha ReLU(g)`` with ``alpha = g^2 / (2 g^2 + sum(A) g^3)``."""
    factors = (2.0, 3.0) if model.in_place else (1.0, 1.0)
    with torch.no_grad():
        levels = model.levels(torch.relu(model.stem(x)))
        activations = fpn_reshape_transform(levels).double()
        gradients = []
        for head, factor in zip((model.fine_head, model.coarse_head), factors):
            gradients.append(factor * head.weight[PYRAMID_CATEGORIES].double())  # B x channels
        g = torch.cat(gradients, dim=1)[:, :, None, None]  # B x C x 1 x 1
    if method == "gradcam":
        weights = g
    else:
        area = activations.shape[2] * activations.shape[3]
        total = activations.sum(dim=(2, 3), keepdim=True)
        denominator = 2 * g**2 + total * g**3
        alpha = torch.where(denominator != 0, g**2 / denominator, torch.zeros_like(g))
        weights = area * alpha * torch.relu(g)
    return torch.relu((weights * activations).sum(dim=1)).float()


def scaled(maps: torch.Tensor) -> torch.Tensor:
    low = maps.amin(dim=(1, 2), keepdim=True)
    high = maps.amax(dim=(1, 2), keepdim=True)
    return (maps - low) / (high - low)


GRADIENT_METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}


@pytest.mark.parametrize("name", list(GRADIENT_METHODS))
@pytest.mark.parametrize("in_place", [False, True], ids=["plain", "in_place_downstream"])
def test_gradient_cams_on_a_mapping_output_are_the_closed_form(name, in_place):
    model, x, targets = pyramid_setup(in_place)
    cam = GRADIENT_METHODS[name](model, [model.levels], reshape_transform=fpn_reshape_transform)
    raw = cam(x, targets=targets, scale=False, as_tensor=True)
    expected = pyramid_closed_form(model, x, name)
    assert raw.shape == (2, 12, 16)
    high, low = expected.amax(dim=(1, 2)), expected.amin(dim=(1, 2))
    assert bool((high - low > 1e-3 * high).all())  # neither map is constant
    torch.testing.assert_close(raw, expected, rtol=1e-5, atol=1e-6)
    maps = cam(x, targets=targets, as_tensor=True)
    torch.testing.assert_close(maps, scaled(expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", [EigenCAM, ScoreCAM], ids=lambda m: m.__name__)
def test_activation_cams_on_a_mapping_equal_its_single_tensor_twin(method):
    model, x, targets = pyramid_setup()
    on_mapping = method(model, [model.levels], reshape_transform=fpn_reshape_transform)
    on_twin = method(model, [model.probe])
    np.testing.assert_allclose(
        on_mapping(x, targets=targets), on_twin(x, targets=targets), rtol=1e-5, atol=1e-6
    )


def test_a_mapping_and_a_tensor_layer_together_average_their_maps():
    model, x, targets = pyramid_setup()
    transform = fpn_reshape_transform  # returns a single tensor as it is

    def maps(layers):
        return GradCAM(model, layers, reshape_transform=transform)(x, targets=targets)

    both = maps([model.levels, model.stem])
    mean = (maps([model.levels]) + maps([model.stem])) / 2
    low = mean.min(axis=(1, 2), keepdims=True)
    high = mean.max(axis=(1, 2), keepdims=True)
    # Averaged, then scaled to [0, 1] again (as grad-cam 1.5.7 does).
    np.testing.assert_allclose(both, (mean - low) / (high - low), rtol=1e-5, atol=1e-6)


def test_a_mapping_output_needs_a_reshape_transform():
    model, x, targets = pyramid_setup()
    with pytest.raises(
        ValueError,
        match=r"target_layers\[0\] \(TwoLevels\) outputs a mapping \(OrderedDict\) of "
        r"tensors \(keys \['fine', 'coarse'\]\); pass a reshape_transform .* "
        r"fpn_reshape_transform .* fasterrcnn_reshape_transform",
    ):
        GradCAM(model, [model.levels])(x, targets=targets)
    with pytest.raises(
        ValueError,
        match=r"of shape \{'fine': \(2, 4, 12, 16\), 'coarse': \(2, 2, 6, 8\)\}, "
        r"into \(2, 12, 16\)",
    ):
        GradCAM(model, [model.levels], reshape_transform=lambda levels: levels["fine"][:, 0])(
            x, targets=targets
        )


@pytest.mark.parametrize("ablation_layer", [None, AblationLayerFasterRCNN()], ids=["zero", "far"])
def test_ablation_cam_on_a_feature_pyramid_ablates_each_levels_channels(ablation_layer):
    """Channel k of the concatenated levels is channel k - offset of its level: ablating
    it equals a full forward pass with that level channel set to the ablation value
    (0, or min - 1e7 with AblationLayerFasterRCNN)."""
    model, x, targets = pyramid_setup()
    model = model.double()
    x = x.double()
    cam = AblationCAM(
        model,
        [model.levels],
        reshape_transform=fpn_reshape_transform,
        ablation_layer=ablation_layer,
    )
    maps = cam(x, targets=targets, scale=False, as_tensor=True)
    assert cam.ablation_paths == ["full forward"]
    with torch.no_grad():
        levels = model.levels(torch.relu(model.stem(x)))
        activations = fpn_reshape_transform(levels)
        scores = model(x)[torch.arange(2), PYRAMID_CATEGORIES]
        value = (
            0.0 if ablation_layer is None else min(float(v.min()) for v in levels.values()) - 1e7
        )
        keys = [(key, c) for key, level in levels.items() for c in range(level.shape[1])]
        weights = torch.zeros(2, len(keys), dtype=torch.float64)
        for k, (key, c) in enumerate(keys):

            def ablate(module, inputs, output, key=key, c=c):
                output = OrderedDict((name, level.clone()) for name, level in output.items())
                output[key][:, c] = value
                return output

            handle = model.levels.register_forward_hook(ablate)
            try:
                ablated = model(x)[torch.arange(2), PYRAMID_CATEGORIES]
            finally:
                handle.remove()
            weights[:, k] = (scores - ablated) / scores
        expected = torch.relu((weights[:, :, None, None] * activations).sum(1))
    torch.testing.assert_close(maps, expected.float(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("track_gradients", [True, False])
def test_in_place_changes_downstream_leave_the_recorded_mapping_alone(track_gradients):
    model, x, _ = pyramid_setup(in_place=True)
    with torch.no_grad():
        expected = model.levels(torch.relu(model.stem(x)))
    with LayerRecorder([model.levels], track_gradients) as recorder, torch.no_grad():
        model(x)
    recorded = recorder.outputs[0]
    assert type(recorded) is OrderedDict and list(recorded) == ["fine", "coarse"]
    for key, level in expected.items():
        assert recorded[key].requires_grad == track_gradients
        torch.testing.assert_close(recorded[key].detach(), level, rtol=0, atol=0)


# --------------------------------------------------------------------- the examples
@pytest.fixture(scope="module")
def example_runs(tmp_path_factory):
    """Both examples, run at once as scripts with --random-weights on a small image."""
    directory = tmp_path_factory.mktemp("examples")
    image = (np.random.default_rng(0).random((96, 136, 3)) * 255).astype(np.uint8)
    image_path = directory / "input.png"
    cv2.imwrite(str(image_path), image)
    runs = {}
    for name in ("detection", "segmentation"):
        command = [
            sys.executable,
            str(REPO / "usage_examples" / f"{name}_example.py"),
            "--random-weights",
            "--device",
            "cpu",
            "--image-path",
            str(image_path),
            "--output-dir",
            str(directory / name),
        ]
        runs[name] = subprocess.Popen(
            command,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},  # the two run side by side
        )
    results = {}
    for name, process in runs.items():
        stdout, stderr = process.communicate(timeout=300)
        results[name] = (process.returncode, stdout, stderr, directory / name)
    return results


@pytest.mark.parametrize("name", ["detection", "segmentation"])
def test_example_writes_its_picture(example_runs, name):
    returncode, stdout, stderr, output_dir = example_runs[name]
    assert returncode == 0, stderr
    path = output_dir / f"{name}_gradcam.jpg"
    assert f"wrote {path}" in stdout
    picture = cv2.imread(str(path))
    assert picture is not None and picture.shape == (96, 136, 3)
    assert picture.std() > 1.0  # not a blank image
