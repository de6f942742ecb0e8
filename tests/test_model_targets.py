"""Every target of pytorch_grad_cam.utils.model_targets against its formula, and targets
used through a CAM on models whose CAM is known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import (
    BinaryClassifierOutputTarget,
    ClassifierOutputReST,
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    FasterRCNNBoxScoreTarget,
    FinerWeightedTarget,
    RawScoresOutputTarget,
    SemanticSegmentationTarget,
    SoftmaxOutputTarget,
)

LOGITS = [2.0, -1.0, 0.5, 3.0, 0.0]


def logits() -> torch.Tensor:
    return torch.tensor(LOGITS)


def softmax_by_hand(values) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


# --------------------------------------------------------------------- classifier targets
@pytest.mark.parametrize("category", range(5))
def test_classifier_output_target_is_the_logit(category):
    result = ClassifierOutputTarget(category)(logits())
    assert result.ndim == 0
    assert float(result) == LOGITS[category]


def test_classifier_output_target_on_a_batch_and_tensor_category():
    batch = torch.tensor([LOGITS, [0.0, 1.0, 2.0, 3.0, 4.0]])
    np.testing.assert_array_equal(ClassifierOutputTarget(3)(batch).numpy(), [3.0, 3.0])
    assert float(ClassifierOutputTarget(torch.tensor(2))(logits())) == 0.5


def test_classifier_output_target_gradient_is_one_hot():
    y = logits().requires_grad_(True)
    (grad,) = torch.autograd.grad(ClassifierOutputTarget(1)(y), y)
    np.testing.assert_array_equal(grad.numpy(), [0, 1, 0, 0, 0])


@pytest.mark.parametrize("category", range(5))
def test_classifier_output_softmax_target(category):
    result = ClassifierOutputSoftmaxTarget(category)(logits())
    assert result.ndim == 0
    assert float(result) == pytest.approx(softmax_by_hand(LOGITS)[category], rel=1e-6)


def test_softmax_target_is_stable_for_large_logits():
    y = torch.tensor([1000.0, 999.0, -1000.0])
    result = ClassifierOutputSoftmaxTarget(1)(y)
    expected = math.exp(-1) / (1 + math.exp(-1))
    assert float(result) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("category", range(5))
def test_classifier_output_rest_is_logit_plus_probability(category):
    result = ClassifierOutputReST(category)(logits())
    expected = LOGITS[category] + softmax_by_hand(LOGITS)[category]
    assert result.ndim == 0
    assert float(result) == pytest.approx(expected, rel=1e-6)


def test_classifier_output_rest_gradient():
    # d/dy_j (y_c + p_c) = [j == c] + p_c ([j == c] - p_j)
    y = logits().requires_grad_(True)
    category = 2
    (grad,) = torch.autograd.grad(ClassifierOutputReST(category)(y), y)
    p = softmax_by_hand(LOGITS)
    expected = [
        (j == category) + p[category] * ((j == category) - p[j]) for j in range(len(LOGITS))
    ]
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-5, atol=1e-7)


def test_repr_names_the_category():
    assert repr(ClassifierOutputTarget(7)) == "ClassifierOutputTarget(7)"
    assert "3" in repr(ClassifierOutputSoftmaxTarget(3))


# --------------------------------------------------------------------- binary classifier
def test_binary_classifier_category_1_is_the_logit():
    y = torch.tensor([1.75])
    np.testing.assert_array_equal(BinaryClassifierOutputTarget(1)(y).numpy(), [1.75])


def test_binary_classifier_category_0_is_minus_the_logit():
    y = torch.tensor([1.75])
    np.testing.assert_array_equal(BinaryClassifierOutputTarget(0)(y).numpy(), [-1.75])
    y = torch.tensor([-0.5])
    np.testing.assert_array_equal(BinaryClassifierOutputTarget(0)(y).numpy(), [0.5])


@pytest.mark.parametrize("category", [2, -1])
def test_binary_classifier_rejects_other_categories(category):
    with pytest.raises(ValueError, match=f"category={category}"):
        BinaryClassifierOutputTarget(category)


# --------------------------------------------------------------------- vector targets
def test_softmax_output_target_is_the_whole_softmax():
    result = SoftmaxOutputTarget()(logits())
    np.testing.assert_allclose(result.numpy(), softmax_by_hand(LOGITS), rtol=1e-6)
    assert float(result.sum()) == pytest.approx(1.0, abs=1e-6)


def test_raw_scores_output_target_is_the_output():
    y = logits()
    result = RawScoresOutputTarget()(y)
    np.testing.assert_array_equal(result.numpy(), LOGITS)
    assert float(result.sum()) == sum(LOGITS)


# --------------------------------------------------------------------- segmentation
def _score_maps() -> torch.Tensor:
    return torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)


def test_semantic_segmentation_target_with_tensor_mask():
    mask = torch.zeros(3, 4)
    mask[0, 0] = 1
    mask[2, 3] = 1
    mask[1, 2] = 0.5
    # category 1 maps hold 12 .. 23: 12 + 23 + 0.5 * 18
    result = SemanticSegmentationTarget(1, mask)(_score_maps())
    assert result.ndim == 0
    assert float(result) == 12 + 23 + 0.5 * 18


def test_semantic_segmentation_target_with_numpy_mask():
    mask = np.zeros((3, 4), dtype=np.uint8)
    mask[1, :] = 1
    result = SemanticSegmentationTarget(0, mask)(_score_maps())
    assert float(result) == 4 + 5 + 6 + 7
    # float64 and bool masks work too.
    assert float(SemanticSegmentationTarget(0, mask.astype(np.float64))(_score_maps())) == 22
    assert float(SemanticSegmentationTarget(0, mask.astype(bool))(_score_maps())) == 22


def test_semantic_segmentation_target_gradient_is_the_mask():
    maps = _score_maps().requires_grad_(True)
    mask = np.random.default_rng(0).random((3, 4)).astype(np.float32)
    (grad,) = torch.autograd.grad(SemanticSegmentationTarget(1, mask)(maps), maps)
    np.testing.assert_array_equal(grad[0].numpy(), np.zeros((3, 4)))
    np.testing.assert_allclose(grad[1].numpy(), mask, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(4, 3), (3, 5), (1, 3, 4)])
def test_semantic_segmentation_target_rejects_wrong_mask_shape(shape):
    target = SemanticSegmentationTarget(1, np.ones(shape))
    with pytest.raises(ValueError, match="mask has shape") as info:
        target(_score_maps())
    assert str(tuple(shape)) in str(info.value)
    assert "(3, 4)" in str(info.value)


# --------------------------------------------------------------------- detection
def detections(scores=(0.9, 0.8, 0.7, 0.6)) -> dict[str, torch.Tensor]:
    """torchvision detection output for one image; IoUs with the references below are
    known by hand."""
    return {
        "boxes": torch.tensor(
            [
                [0.0, 0.0, 10.0, 10.0],  # = reference A: IoU 1
                [0.0, 0.0, 10.0, 5.0],  # half of A: IoU 0.5 with A
                [20.0, 20.0, 30.0, 30.0],  # = reference B, but label 2
                [22.0, 20.0, 32.0, 30.0],  # shifted B: IoU 80 / 120 = 2/3, label 1
            ]
        ),
        "labels": torch.tensor([1, 1, 2, 1]),
        "scores": torch.tensor(scores),
    }


REFERENCE_A = [0.0, 0.0, 10.0, 10.0]
REFERENCE_B = [20.0, 20.0, 30.0, 30.0]


def test_faster_rcnn_target_hand_computed_ious():
    iou = torchvision.ops.box_iou(
        torch.tensor([REFERENCE_A, REFERENCE_B]), detections()["boxes"]
    ).numpy()
    np.testing.assert_allclose(iou[0], [1.0, 0.5, 0.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(iou[1], [0.0, 0.0, 1.0, 2 / 3], atol=1e-7)


def test_faster_rcnn_target_best_match_is_iou_plus_score():
    result = FasterRCNNBoxScoreTarget([1], [REFERENCE_A])(detections())
    assert result.shape == (1,)  # as grad-cam 1.5.7
    assert float(result) == pytest.approx(1.0 + 0.9, abs=1e-6)


def test_faster_rcnn_target_match_is_the_highest_iou_whatever_its_score():
    """A reference's match is its detection of highest IoU (box 0 for A, IoU 1), not the
    one of highest IoU + score: box 1 (IoU 0.5) with a score of 0.99 does not win."""
    output = detections(scores=(0.1, 0.99, 0.7, 0.6))
    assert float(FasterRCNNBoxScoreTarget([1], [REFERENCE_A])(output)) == pytest.approx(1.1)
    result = FasterRCNNBoxScoreTarget([1], [REFERENCE_A], iou_threshold=0.4)(output)
    assert float(result) == pytest.approx(1.0 + 0.1, abs=1e-6)


def test_faster_rcnn_target_a_better_box_of_another_class_gives_zero():
    """Reference B's best box (IoU 1) has label 2: with label 1 the reference scores 0,
    although box 3 (label 1, IoU 2/3) overlaps it (grad-cam 1.5.7's rule)."""
    assert float(FasterRCNNBoxScoreTarget([1], [REFERENCE_B])(detections())) == 0.0
    result = FasterRCNNBoxScoreTarget([2], [REFERENCE_B])(detections())
    assert float(result) == pytest.approx(1.0 + 0.7, abs=1e-6)
    assert float(FasterRCNNBoxScoreTarget([5], [REFERENCE_B])(detections())) == 0.0
    # Without box 2, box 3 is B's best match and its label matches.
    output = detections()
    output = {key: value[[0, 1, 3]] for key, value in output.items()}
    result = FasterRCNNBoxScoreTarget([1], [REFERENCE_B], iou_threshold=0.6)(output)
    assert float(result) == pytest.approx(2 / 3 + 0.6, abs=1e-6)


def test_faster_rcnn_target_sums_over_reference_boxes():
    target = FasterRCNNBoxScoreTarget([1, 1, 2], [REFERENCE_A, REFERENCE_B, REFERENCE_B])
    expected = (1.0 + 0.9) + 0.0 + (1.0 + 0.7)
    assert float(target(detections())) == pytest.approx(expected, abs=1e-6)


def test_faster_rcnn_target_threshold_excludes_low_iou():
    # Without box 2, shifted B (box 3) has IoU 2/3: above 0.6, not above 0.7.
    output = {key: value[[0, 1, 3]] for key, value in detections().items()}
    assert float(FasterRCNNBoxScoreTarget([1], [REFERENCE_B], 0.6)(output)) == pytest.approx(
        2 / 3 + 0.6
    )
    assert float(FasterRCNNBoxScoreTarget([1], [REFERENCE_B], 0.7)(output)) == 0.0


def test_faster_rcnn_target_keeps_the_boxes_dtype():
    """numpy boxes are float64, so is the score (as grad-cam 1.5.7); float32 boxes give
    float32; integer boxes are taken as float32."""
    output = detections()
    as_float64 = FasterRCNNBoxScoreTarget(np.array([1]), np.array([REFERENCE_A]))(output)
    assert as_float64.dtype == torch.float64 and as_float64.shape == (1,)
    assert float(as_float64) == pytest.approx(1.9, abs=1e-7)
    as_float32 = FasterRCNNBoxScoreTarget([1], torch.tensor([REFERENCE_A]))(output)
    assert as_float32.dtype == torch.float32
    as_int = FasterRCNNBoxScoreTarget([1], torch.tensor([[0, 0, 10, 10]]))(output)
    assert as_int.dtype == torch.float32 and float(as_int) == pytest.approx(1.9, abs=1e-6)


def test_faster_rcnn_target_by_keyword():
    target = FasterRCNNBoxScoreTarget(labels=[1], bounding_boxes=[REFERENCE_A], iou_threshold=0.5)
    assert float(target(model_outputs=detections())) == pytest.approx(1.9, abs=1e-6)


def test_faster_rcnn_target_no_overlap_gives_zero():
    target = FasterRCNNBoxScoreTarget([1], [[100.0, 100.0, 110.0, 110.0]])
    assert float(target(detections())) == 0.0


def test_faster_rcnn_target_empty_detections():
    empty = {
        "boxes": torch.zeros((0, 4)),
        "labels": torch.zeros((0,), dtype=torch.int64),
        "scores": torch.zeros((0,)),
    }
    result = FasterRCNNBoxScoreTarget([1, 2], [REFERENCE_A, REFERENCE_B])(empty)
    assert isinstance(result, torch.Tensor)
    assert result.shape == (1,)
    assert float(result) == 0.0


def test_faster_rcnn_target_accepts_numpy_boxes_and_gradient_reaches_scores():
    output = detections()
    output["scores"] = output["scores"].clone().requires_grad_(True)
    target = FasterRCNNBoxScoreTarget(np.array([1, 2]), np.array([REFERENCE_A, REFERENCE_B]))
    result = target(output)
    assert float(result.detach()) == pytest.approx((1.0 + 0.9) + (1.0 + 0.7), abs=1e-6)
    (grad,) = torch.autograd.grad(result, output["scores"])
    np.testing.assert_array_equal(grad.numpy(), [1.0, 0.0, 1.0, 0.0])


def test_faster_rcnn_target_negative_scores_still_match():
    output = detections(scores=(-3.0, -0.2, -1.0, -5.0))
    result = FasterRCNNBoxScoreTarget([1], [REFERENCE_A])(output)
    assert float(result) == pytest.approx(1.0 - 3.0, abs=1e-6)


# --------------------------------------------------------------------- Finer-CAM
def test_finer_weighted_target_formula():
    target = FinerWeightedTarget(3, [0, 2], alpha=0.6)
    expected = 3.0 - 0.6 * (2.0 + 0.5) / 2
    assert float(target(logits())) == pytest.approx(expected, abs=1e-6)


def test_finer_weighted_target_alpha_zero_is_the_class_score():
    assert float(FinerWeightedTarget(1, [0, 2, 4], alpha=0.0)(logits())) == -1.0


def test_finer_weighted_target_alpha_one_single_comparison_is_difference():
    assert float(FinerWeightedTarget(0, [3], alpha=1.0)(logits())) == pytest.approx(-1.0)


def test_finer_weighted_target_empty_comparisons_is_the_class_score():
    assert float(FinerWeightedTarget(4, [], alpha=0.9)(logits())) == 0.0


def test_finer_weighted_target_gradient():
    y = logits().requires_grad_(True)
    (grad,) = torch.autograd.grad(FinerWeightedTarget(2, [0, 1, 4], alpha=0.3)(y), y)
    np.testing.assert_allclose(grad.numpy(), [-0.1, -0.1, 1.0, 0.0, -0.1], atol=1e-7)


# --------------------------------------------------------------------- through a CAM
CLASSES = 5


class GapNet(nn.Module):
    """conv (size kept) -> ReLU -> global average pool -> linear."""

    def __init__(self, classes: int = CLASSES, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(6, classes)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator))

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).mean(dim=(2, 3)))


def _input(batch=2, seed=3):
    return torch.randn(batch, 3, 6, 5, generator=torch.Generator().manual_seed(seed))


def _scaled_cam(activations: torch.Tensor, channel_weights: torch.Tensor) -> np.ndarray:
    """``ReLU(sum_k v_k A_k)`` min-max scaled per image, in float64."""
    cam = torch.einsum("bk,bkhw->bhw", channel_weights.double(), activations.double())
    cam = torch.relu(cam).numpy()
    out = np.zeros_like(cam)
    for index, single in enumerate(cam):
        assert single.max() - single.min() > 1e-6, "oracle map should not be constant"
        out[index] = (single - single.min()) / (single.max() - single.min())
    return out


def _activations(model: GapNet, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.relu(model.conv(x))


def test_gradcam_classifier_target_equals_class_weight_cam():
    model = GapNet().eval()
    x = _input(3)
    categories = [0, 3, 1]
    result = GradCAM(model, target_layers=[model.relu])(
        x, targets=[ClassifierOutputTarget(c) for c in categories]
    )
    assert result.dtype == np.float32 and result.shape == (3, 6, 5)
    weights = model.fc.weight.detach()[categories]
    np.testing.assert_allclose(result, _scaled_cam(_activations(model, x), weights), atol=1e-5)


def test_gradcam_raw_map_is_class_weight_cam_over_positions():
    model = GapNet().eval()
    x = _input(2)
    raw = GradCAM(model, target_layers=[model.relu])(
        x, targets=[ClassifierOutputTarget(2)] * 2, scale=False, as_tensor=True
    )
    # dy_c / dA_k,ij = w_ck / (H W): GradCAM's weight is w_ck / (H W).
    weights = model.fc.weight.detach()[[2, 2]] / 30
    expected = torch.relu(torch.einsum("bk,bkhw->bhw", weights, _activations(model, x)))
    torch.testing.assert_close(raw, expected, atol=1e-6, rtol=1e-5)


def test_gradcam_softmax_target_weights():
    # d p_c / d A_k,ij = p_c (w_ck - sum_j p_j w_jk) / (H W); p_c > 0 does not change the
    # scaled map.
    model = GapNet().eval()
    x = _input(2, seed=4)
    categories = [1, 4]
    result = GradCAM(model, target_layers=[model.relu])(
        x, targets=[ClassifierOutputSoftmaxTarget(c) for c in categories]
    )
    with torch.no_grad():
        p = torch.softmax(model(x), dim=1)
    w = model.fc.weight.detach()
    weights = w[categories] - p @ w
    np.testing.assert_allclose(result, _scaled_cam(_activations(model, x), weights), atol=1e-5)


def test_gradcam_finer_target_weights():
    model = GapNet().eval()
    x = _input(2, seed=5)
    target = FinerWeightedTarget(2, [0, 4], alpha=0.7)
    result = GradCAM(model, target_layers=[model.relu])(x, targets=[target, target])
    w = model.fc.weight.detach()
    weights = (w[2] - 0.7 * (w[0] + w[4]) / 2).expand(2, -1)
    np.testing.assert_allclose(result, _scaled_cam(_activations(model, x), weights), atol=1e-5)


def test_gradcam_raw_scores_target_sums_all_classes():
    model = GapNet().eval()
    x = _input(2, seed=6)
    result = GradCAM(model, target_layers=[model.relu])(x, targets=[RawScoresOutputTarget()] * 2)
    weights = model.fc.weight.detach().sum(dim=0).expand(2, -1)
    np.testing.assert_allclose(result, _scaled_cam(_activations(model, x), weights), atol=1e-5)


def test_gradcam_binary_target_sign():
    model = GapNet(classes=1, seed=8).eval()
    x = _input(2, seed=8)
    cam = GradCAM(model, target_layers=[model.relu])
    w = model.fc.weight.detach()[0]
    positive = cam(x, targets=[BinaryClassifierOutputTarget(1)] * 2)
    negative = cam(x, targets=[BinaryClassifierOutputTarget(0)] * 2)
    activations = _activations(model, x)
    np.testing.assert_allclose(positive, _scaled_cam(activations, w.expand(2, -1)), atol=1e-5)
    np.testing.assert_allclose(negative, _scaled_cam(activations, -w.expand(2, -1)), atol=1e-5)


class SegNet(nn.Module):
    """conv -> ReLU -> 1x1 conv to class maps, returned as {"out": ...} like torchvision."""

    def __init__(self, classes: int = 3, seed: int = 9):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Conv2d(4, classes, 1)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator))

    def forward(self, x):
        return {"out": self.head(self.relu(self.conv(x)))}


def test_gradcam_semantic_segmentation_target():
    # score = sum_ij mask_ij (sum_k W_ck A_k,ij + b_c): GradCAM's weight is
    # W_ck * mean(mask), so the scaled map is that of ReLU(sum_k W_ck A_k).
    model = SegNet().eval()
    x = _input(2, seed=10)
    mask = np.zeros((6, 5), dtype=np.float32)
    mask[1:4, 2:5] = 1.0
    targets = [SemanticSegmentationTarget(2, mask), SemanticSegmentationTarget(0, mask)]
    cam = GradCAM(model, target_layers=[model.relu])
    result = cam(x, targets=targets)
    weights = model.head.weight.detach()[[2, 0], :, 0, 0]
    np.testing.assert_allclose(result, _scaled_cam(_activations(model, x), weights), atol=1e-5)
    raw = cam(x, targets=targets, scale=False, as_tensor=True)
    expected = torch.relu(
        torch.einsum("bk,bkhw->bhw", weights * mask.mean(), _activations(model, x))
    )
    torch.testing.assert_close(raw, expected, atol=1e-6, rtol=1e-5)


class FakeDetector(nn.Module):
    """A torchvision-like detector: returns, per image, a dict of fixed boxes and labels
    whose scores are probabilities of the pooled features (``sigmoid(W @ mean(A))``)."""

    def __init__(self, seed: int = 11):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.score = nn.Linear(4, 4, bias=False)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
        self.register_buffer("boxes", detections()["boxes"])
        self.register_buffer("labels", detections()["labels"])

    def forward(self, x):
        scores = torch.sigmoid(self.score(self.relu(self.conv(x)).mean(dim=(2, 3))))
        return [
            {"boxes": self.boxes, "labels": self.labels, "scores": image_scores}
            for image_scores in scores
        ]


def test_gradcam_faster_rcnn_target_on_list_of_dicts():
    model = FakeDetector().eval()
    x = _input(2, seed=12)
    # Image 0 explains reference A (label 1: detection 0); image 1 reference B with
    # label 2 (detection 2). d score_d / dA_k,ij = sigmoid'(.) W_dk / (H W), a positive
    # factor per image, so the scaled map is that of ReLU(sum_k W_dk A_k).
    targets = [
        FasterRCNNBoxScoreTarget([1], [REFERENCE_A]),
        FasterRCNNBoxScoreTarget([2], [REFERENCE_B]),
    ]
    result = GradCAM(model, target_layers=[model.relu])(x, targets=targets)
    weights = model.score.weight.detach()[[0, 2]]
    np.testing.assert_allclose(result, _scaled_cam(_activations(model, x), weights), atol=1e-5)


def test_gradcam_faster_rcnn_target_without_match_gives_zero_map():
    model = FakeDetector().eval()
    x = _input(1, seed=12)
    targets = [FasterRCNNBoxScoreTarget([7], [REFERENCE_A])]
    result = GradCAM(model, target_layers=[model.relu])(x, targets=targets)
    np.testing.assert_array_equal(result, np.zeros((1, 6, 5), np.float32))
