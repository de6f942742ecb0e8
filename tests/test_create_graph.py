"""``create_graph=True``: maps that a loss can back-propagate into the model (USER_PAINS:
a CAM inside a loss)."""

from __future__ import annotations

import pytest
import torch
from conftest import GapLinearNet
from helpers import assert_same_state, snapshot

from pytorch_grad_cam import (
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.smooth_grad_cam_pp import SmoothGradCAMpp
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

GRADIENT_METHODS = [
    GradCAM,
    HiResCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    XGradCAM,
    LayerCAM,
    EigenGradCAM,
]
CATEGORIES = [1, 3]


def gradcam_formula(model: GapLinearNet, x: torch.Tensor) -> torch.Tensor:
    """GradCAM on a GAP + linear model, differentiably: ``ReLU(sum_k w_ck A^k) / (H W)``."""
    activations = model.features(x)
    weights = model.fc.weight[CATEGORIES] / activations[0, 0].numel()
    return torch.relu(torch.einsum("bc,bchw->bhw", weights, activations))


def parameter_gradients(model, loss):
    return torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)


def test_the_loss_on_gradcams_maps_back_propagates_like_the_formula():
    torch.manual_seed(0)
    model = GapLinearNet().eval()
    x = torch.randn(2, 3, 6, 5)
    targets = [ClassifierOutputTarget(c) for c in CATEGORIES]
    before = snapshot(model)
    maps = GradCAM(model, [model.features])(
        x, targets, scale=False, as_tensor=True, create_graph=True
    )
    assert maps.requires_grad
    expected = gradcam_formula(model, x)
    torch.testing.assert_close(maps, expected.detach())
    assert_same_state(before, snapshot(model))  # nothing is back-propagated by the call
    got = parameter_gradients(model, (maps**2).sum())
    want = parameter_gradients(model, (expected**2).sum())
    for g, w in zip(got, want):
        if w is None:  # the bias of fc does not reach the map
            assert g is None or torch.count_nonzero(g) == 0
        else:
            torch.testing.assert_close(g, w)
    assert float(got[0].abs().max()) > 0  # the first convolution's weight gets a gradient


@pytest.mark.parametrize("method", GRADIENT_METHODS, ids=lambda m: m.__name__)
def test_every_gradient_method_gives_the_same_maps_with_a_graph(method):
    torch.manual_seed(0)
    model = GapLinearNet().eval()
    x = torch.randn(2, 3, 6, 5)
    targets = [ClassifierOutputTarget(c) for c in CATEGORIES]
    plain = method(model, [model.features])(x, targets, as_tensor=True)
    assert not plain.requires_grad
    with torch.no_grad():  # a graph is recorded even inside no_grad, as asked
        graphed = method(model, [model.features])(x, targets, as_tensor=True, create_graph=True)
    assert graphed.requires_grad
    torch.testing.assert_close(graphed.detach(), plain)
    (gradient,) = torch.autograd.grad(graphed.sum(), [model.features[0].weight])
    assert torch.isfinite(gradient).all()


def test_create_graph_needs_a_tensor_and_a_gradient_method(gap_net, image_batch):
    with pytest.raises(ValueError, match="create_graph=True needs as_tensor=True"):
        GradCAM(gap_net, [gap_net.features])(image_batch, create_graph=True)
    for method in (ScoreCAM, SmoothGradCAMpp):
        with pytest.raises(ValueError, match=f"not supported by {method.__name__}"):
            method(gap_net, [gap_net.features])(image_batch, as_tensor=True, create_graph=True)
