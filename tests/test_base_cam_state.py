"""The user's model is left as found, and a CAM object holds nothing between calls."""

from __future__ import annotations

import gc
import warnings

import numpy as np
import pytest
import torch
import torchvision
from conftest import GapLinearNet
from helpers import assert_same_state, resnet_in_training_mode, snapshot
from torch import nn

from pytorch_grad_cam import (
    CAM,
    AblationCAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    LayerCAM,
    ScoreCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget


@pytest.mark.parametrize("method", [GradCAM, GradCAMPlusPlus, EigenCAM])
def test_model_state_is_unchanged_by_a_call(method):
    model = resnet_in_training_mode()
    x = torch.randn(2, 3, 64, 64)
    before = snapshot(model)
    maps = method(model, [model.layer4[-1]])(x, [ClassifierOutputTarget(3)] * 2)
    assert_same_state(before, snapshot(model))
    # The call ran in eval mode: same maps as for an eval-mode copy, and batch-norm
    # running statistics were not updated (checked above through state_dict).
    model.eval()
    again = method(model, [model.layer4[-1]])(x, [ClassifierOutputTarget(3)] * 2)
    np.testing.assert_allclose(maps, again, atol=1e-6)


def test_model_state_is_unchanged_when_the_target_raises_midway():
    model = resnet_in_training_mode()
    x = torch.randn(2, 3, 64, 64)
    before = snapshot(model)

    def failing_target(output):
        raise KeyError("raised by the user's target")

    with pytest.raises(KeyError, match="user's target"):
        GradCAM(model, [model.layer4[-1]])(x, [ClassifierOutputTarget(1), failing_target])
    assert_same_state(before, snapshot(model))


def test_model_state_is_unchanged_when_the_forward_raises():
    model = resnet_in_training_mode()
    before = snapshot(model)
    with pytest.raises(RuntimeError):
        GradCAM(model, [model.layer4[-1]])(torch.randn(2, 1, 64, 64))  # 1 channel, not 3
    assert_same_state(before, snapshot(model))


def test_context_manager_never_swallows_an_exception(gap_net, image_batch):
    with pytest.raises(IndexError), GradCAM(gap_net, [gap_net.features]) as cam:
        cam(image_batch, [ClassifierOutputTarget(99)] * 3)  # only 5 classes
    assert cam.outputs is None


def test_close_is_idempotent_and_outputs_are_released(gap_net, image_batch):
    cam = GradCAM(gap_net, [gap_net.features])
    cam(image_batch)
    assert cam.outputs is not None and not cam.outputs.requires_grad
    cam.close()
    cam.close()
    assert cam.outputs is None
    fresh = GradCAM(gap_net, [gap_net.features])
    np.testing.assert_array_equal(cam(image_batch), fresh(image_batch))


def count_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on torch's deprecated module aliases warns
        warnings.simplefilter("ignore")
        return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


def test_one_hundred_cam_objects_leave_no_hooks_or_tensors_behind(gap_net, image_batch):
    with GradCAM(gap_net, [gap_net.features]) as warm_up:
        warm_up(image_batch)
    del warm_up
    tensors_before = count_tensors()
    for _ in range(100):
        with GradCAM(gap_net, [gap_net.features]) as cam:
            cam(image_batch)
        other = LayerCAM(gap_net, [gap_net.features])
        other(image_batch)
        other.close()
    del cam, other
    assert count_tensors() == tensors_before
    assert snapshot(gap_net)["hooks"] == 0


def test_a_failed_constructor_leaves_nothing_to_tear_down(gap_net):
    stranger = nn.Linear(2, 2)
    for _ in range(3):
        with pytest.raises(ValueError):
            GradCAM(gap_net, [stranger])
    gc.collect()  # no __del__ that could raise a second, confusing error
    assert snapshot(gap_net)["hooks"] == 0


def test_works_inside_no_grad(gap_net, image_batch):
    expected = GradCAM(gap_net, [gap_net.features])(image_batch)
    with torch.no_grad():
        got = GradCAM(gap_net, [gap_net.features])(image_batch)
        assert not torch.is_grad_enabled()
    np.testing.assert_array_equal(got, expected)
    assert got.max() == 1.0


def test_inference_mode_raises_a_clear_error(gap_net, image_batch):
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        GradCAM(gap_net, [gap_net.features])(image_batch)


def test_an_input_made_in_inference_mode_works(gap_net, image_batch):
    with torch.inference_mode():
        frozen_input = image_batch.clone()
    np.testing.assert_array_equal(
        GradCAM(gap_net, [gap_net.features])(frozen_input),
        GradCAM(gap_net, [gap_net.features])(image_batch),
    )


def vgg_like(inplace: bool) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(inplace=inplace),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.ReLU(inplace=inplace),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    ).eval()


@pytest.mark.parametrize(
    "method", [GradCAM, LayerCAM, GradCAMPlusPlus, EigenCAM, AblationCAM, ScoreCAM, CAM]
)
@pytest.mark.filterwarnings("ignore:CAM. the model's scores are not")
def test_inplace_relu_after_the_target_layer_changes_nothing(method):
    x = torch.randn(2, 3, 10, 10)
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(2)]
    results = []
    for inplace in (False, True):
        model = vgg_like(inplace)
        # The target is the conv whose output the in-place ReLU overwrites.
        results.append(method(model, [model[2]])(x, targets, scale=False, as_tensor=True))
    torch.testing.assert_close(results[0], results[1])


def test_gradcam_of_a_conv_followed_by_inplace_relu_sees_its_negative_outputs():
    x = torch.randn(2, 3, 10, 10)
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(2)]
    model = vgg_like(True)
    conv = GradCAM(model, [model[2]])(x, targets, scale=False, as_tensor=True)
    after_relu = GradCAM(model, [model[3]])(x, targets, scale=False, as_tensor=True)
    # The pre-activation's gradient is zero where it is negative; the ReLU output's is not.
    assert (conv - after_relu).abs().max() > 1e-4


def test_frozen_parameters_give_the_same_maps(image_batch):
    torch.manual_seed(0)
    trainable = GapLinearNet().eval()
    frozen = GapLinearNet().eval()
    frozen.load_state_dict(trainable.state_dict())
    frozen.requires_grad_(False)
    expected = GradCAM(trainable, [trainable.features[1]])(image_batch)
    got = GradCAM(frozen, [frozen.features[1]])(image_batch)
    np.testing.assert_array_equal(got, expected)
    assert all(not p.requires_grad and p.grad is None for p in frozen.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models(dtype, image_batch):
    torch.manual_seed(0)
    model = GapLinearNet().eval()
    reference = GradCAM(model, [model.features])(image_batch)
    model = model.to(dtype)
    maps = GradCAM(model, [model.features])(image_batch.to(dtype))
    assert maps.dtype == np.float32 and np.isfinite(maps).all()
    assert np.corrcoef(maps.ravel(), reference.ravel())[0, 1] > 0.99
    assert next(model.parameters()).dtype == dtype


def test_autocast(image_batch):
    torch.manual_seed(0)
    model = GapLinearNet().eval()
    reference = GradCAM(model, [model.features])(image_batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = GradCAM(model, [model.features])(image_batch)
    assert maps.dtype == np.float32
    assert np.corrcoef(maps.ravel(), reference.ravel())[0, 1] > 0.99


def test_target_layer_called_twice_uses_its_last_output():
    # torchvision's BasicBlock calls self.relu twice; the block's output is the last call.
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    x = torch.randn(1, 3, 64, 64)
    targets = [ClassifierOutputTarget(2)]
    via_relu = GradCAM(model, [model.layer4[-1].relu])(x, targets)
    via_block = GradCAM(model, [model.layer4[-1]])(x, targets)
    np.testing.assert_allclose(via_relu, via_block, atol=1e-6)


def test_data_parallel_wrapper_explains_the_whole_batch(gap_net, image_batch):
    wrapped = nn.DataParallel(gap_net)
    cam = GradCAM(wrapped, [gap_net.features])
    assert cam.model is gap_net
    expected = GradCAM(gap_net, [gap_net.features])(image_batch)
    np.testing.assert_array_equal(cam(image_batch), expected)
