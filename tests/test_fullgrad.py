"""FullGrad: completeness of the raw decomposition, the map against the formula computed
in the test, model state, ignored target layers, token models."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import TinyViT
from helpers import (
    PiecewiseLinearNet,
    assert_same_state,
    net_in_training_mode,
    seeded_net,
    snapshot,
)
from torch import nn

from pytorch_grad_cam.fullgrad import FullGrad
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget


def randomise_batch_norm(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters: the effective biases matter."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                c = module.num_features
                module.running_mean.copy_(torch.rand(c, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(c, generator=generator) - 0.5)
    return model


TARGETS = [ClassifierOutputTarget(2), ClassifierOutputTarget(0)]


# --------------------------------------------------------------------- completeness
def test_decomposition_sums_to_the_score_of_a_piecewise_linear_net():
    model = seeded_net()
    x = torch.randn(2, 3, 16, 12, generator=torch.Generator().manual_seed(1))
    terms = FullGrad(model).decompose(x, TARGETS)
    with torch.no_grad():
        expected = model(x)[[0, 1], [2, 0]]
    torch.testing.assert_close(terms.scores, expected)
    torch.testing.assert_close(terms.total(), expected, rtol=1e-5, atol=1e-5)
    # Every biased layer appears once, with its bias axis; the bias terms matter.
    assert terms.bias_layers == [
        model.conv1,
        model.bn1,
        model.conv2,
        model.bn2,
        model.fc1,
        model.fc2,
    ]
    assert terms.bias_axes == [1, 1, 1, 1, -1, -1]
    input_only = terms.input_term.flatten(1).sum(dim=1)
    assert (input_only - expected).abs().min() > 1e-2


def test_bias_terms_alone_give_the_score_of_a_zero_input():
    """``x = 0``: the input term vanishes and the biases carry the whole score."""
    model = seeded_net()
    x = torch.zeros(1, 3, 8, 8)
    terms = FullGrad(model).decompose(x, [ClassifierOutputTarget(1)])
    assert torch.count_nonzero(terms.input_term) == 0
    bias_sum = sum(term.sum() for term in terms.bias_terms)
    torch.testing.assert_close(bias_sum.reshape(1), terms.scores, rtol=1e-5, atol=1e-6)
    assert terms.scores.abs().item() > 1e-2


def test_each_bias_term_sums_to_the_bias_gradient_times_the_bias():
    """``sum over positions of dy/dz * b = dy/db . b``, with ``dy/db`` from autograd on the
    parameter (for batch norm's effective bias, its ``beta`` shifted by the statistics)."""
    model = seeded_net()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    terms = FullGrad(model).decompose(x, [ClassifierOutputTarget(3)])
    score = model(x)[0, 3]
    for layer in (model.conv1, model.conv2, model.fc1, model.fc2):
        (bias_gradient,) = torch.autograd.grad(score, layer.bias, retain_graph=True)
        term = terms.bias_terms[terms.bias_layers.index(layer)]
        torch.testing.assert_close(term.sum(), (bias_gradient * layer.bias).sum().detach())


def test_resnet18_decomposition_is_complete():
    """Also checks that the recorded outputs are the layers' own: torchvision's ResNet
    applies ReLU(inplace=True) to batch-norm outputs and adds the shortcut in place."""
    model = randomise_batch_norm(torchvision.models.resnet18(weights=None, num_classes=10))
    model.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    terms = FullGrad(model).decompose(x, [ClassifierOutputTarget(4), ClassifierOutputTarget(7)])
    torch.testing.assert_close(terms.total(), terms.scores, rtol=1e-4, atol=1e-4)
    assert len(terms.bias_terms) == 21  # 20 batch norms and the classifier


# --------------------------------------------------------------------- the map
def psi(maps: torch.Tensor, size) -> torch.Tensor:
    """|.| -> bilinear upsampling -> min-max per image and channel: ``B x C x *size``."""
    up = F.interpolate(maps.abs(), size=tuple(size), mode="bilinear", align_corners=False)
    flat = up.flatten(2)
    low, high = flat.min(dim=2, keepdim=True).values, flat.max(dim=2, keepdim=True).values
    spread = high - low
    constant = spread <= torch.finfo(torch.float32).eps * torch.maximum(high.abs(), low.abs())
    scaled = torch.where(constant, torch.zeros_like(flat), (flat - low) / spread)
    return scaled.view_as(up)


def reference_fullgrad(model: PiecewiseLinearNet, x: torch.Tensor, categories) -> torch.Tensor:
    """The formula, with the net's forward written out so every output is at hand."""
    x = x.clone().requires_grad_(True)
    z1 = model.conv1(x)
    b1 = model.bn1(z1)
    z2 = model.conv2(F.max_pool2d(torch.relu(b1), 2))
    b2 = model.bn2(z2)
    f1 = model.fc1(torch.relu(b2).mean(dim=(2, 3)))
    out = model.fc2(torch.relu(f1))
    score = out[torch.arange(len(categories)), list(categories)].sum()
    grads = torch.autograd.grad(score, [x, z1, b1, z2, b2])

    def bn_bias(bn: nn.BatchNorm2d) -> torch.Tensor:
        scale = 1 / torch.sqrt(bn.running_var + bn.eps)
        if bn.affine:
            return bn.bias - bn.running_mean * bn.weight * scale
        return -bn.running_mean * scale

    biases = [model.conv1.bias, bn_bias(model.bn1), model.conv2.bias, bn_bias(model.bn2)]
    size = x.shape[2:]
    # One psi over all the input's channels (the paper's psi(grad_x f * x)), then their sum:
    # the input term is at the input's size, so psi is |.| and a min-max over C x H x W.
    input_term = (grads[0] * x).abs().flatten(1)
    low, high = input_term.min(dim=1, keepdim=True).values, input_term.max(1, keepdim=True).values
    total = ((input_term - low) / (high - low)).view_as(x).sum(dim=1)
    for grad, bias in zip(grads[1:], biases):
        total = total + psi(grad * bias.view(1, -1, 1, 1), size).sum(dim=1)
    # fc1 and fc2 have no spatial axes: constant maps, zero after psi.
    return total.detach()


def test_map_matches_the_formula():
    model = seeded_net()
    x = torch.randn(2, 3, 16, 12, generator=torch.Generator().manual_seed(4))
    expected = reference_fullgrad(model, x, [2, 0])
    got = FullGrad(model)(x, TARGETS, scale=False, as_tensor=True)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert expected.amax() > 3  # several channels contribute
    scaled = FullGrad(model)(x, TARGETS)
    assert isinstance(scaled, np.ndarray) and scaled.dtype == np.float32
    low = expected.flatten(1).min(dim=1).values.view(-1, 1, 1)
    high = expected.flatten(1).max(dim=1).values.view(-1, 1, 1)
    np.testing.assert_allclose(scaled, ((expected - low) / (high - low)).numpy(), atol=1e-5)


def test_targets_none_explains_the_top_class_and_target_layers_are_ignored():
    model = seeded_net()
    x = torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        top = model(x).argmax(dim=1).tolist()
    expected = reference_fullgrad(model, x, top)
    for cam in (FullGrad(model), FullGrad(model, [model.conv2]), FullGrad(model, target_layers=[])):
        got = cam(x, None, scale=False, as_tensor=True)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cam.outputs, model(x).detach())


# --------------------------------------------------------------------- state, tokens


def test_model_state_is_unchanged():
    model = net_in_training_mode()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    before = snapshot(model)
    maps = FullGrad(model, [model.conv2])(x, [ClassifierOutputTarget(3)] * 2)
    assert_same_state(before, snapshot(model))
    assert np.isfinite(maps).all() and np.allclose(maps.reshape(2, -1).max(axis=1), 1.0)
    FullGrad(model).decompose(x)
    assert_same_state(before, snapshot(model))


def test_hooks_are_removed_when_a_target_raises():
    model = net_in_training_mode()
    before = snapshot(model)

    def broken(output):
        raise KeyError("raised by the user's target")

    with pytest.raises(KeyError, match="user's target"):
        FullGrad(model)(torch.randn(1, 3, 8, 8), [broken])
    assert_same_state(before, snapshot(model))


def test_token_layers_are_left_out_with_one_warning():
    torch.manual_seed(0)
    model = TinyViT().eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    cam = FullGrad(model)
    with pytest.warns(UserWarning, match=r"left out the bias terms .*\(Linear\)"):
        maps = cam(x, [ClassifierOutputTarget(1)] * 2)
    assert maps.shape == (2, 16, 16) and np.isfinite(maps).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cam(x, [ClassifierOutputTarget(1)] * 2)  # warned once per object
