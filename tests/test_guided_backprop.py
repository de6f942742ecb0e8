"""GuidedBackpropReLUModel against guided backpropagation computed in closed form.

Guided backpropagation: at each ReLU the backward gradient is
``grad * (input > 0) * (grad > 0)``; every other layer backpropagates normally.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pytorch_grad_cam import GuidedBackpropReLUModel

SHAPE = (2, 3, 2)  # C x H x W of the images
IN_FEATURES = 2 * 3 * 2
HIDDEN1 = 10
HIDDEN2 = 8
CLASSES = 4


class MLP(nn.Module):
    """Flatten -> Linear -> ReLU -> Linear -> ReLU -> Linear."""

    def __init__(self, inplace: bool = False, dropout: float = 0.0):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(IN_FEATURES, HIDDEN1)
        self.relu1 = nn.ReLU(inplace=inplace)
        self.fc2 = nn.Linear(HIDDEN1, HIDDEN2)
        self.relu2 = nn.ReLU(inplace=inplace)
        self.drop = nn.Dropout(dropout)
        self.fc3 = nn.Linear(HIDDEN2, CLASSES)

    def forward(self, x):
        h = self.relu1(self.fc1(self.flatten(x)))
        h = self.drop(self.relu2(self.fc2(h)))
        return self.fc3(h)


def make_mlp(inplace: bool = False, seed: int = 0, dropout: float = 0.0) -> MLP:
    torch.manual_seed(seed)
    model = MLP(inplace=inplace, dropout=dropout)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (model.fc1, model.fc2, model.fc3):
            layer.weight.copy_(0.5 * torch.randn(layer.weight.shape, generator=generator))
        # Biases that put some units on each side of zero.
        model.fc1.bias.copy_(torch.linspace(-1.0, 1.0, HIDDEN1))
        model.fc2.bias.copy_(torch.linspace(-2.0, 2.0, HIDDEN2))
        model.fc3.bias.copy_(torch.tensor([0.1, -0.1, 0.2, 0.0]))
    return model


def images(batch: int = 3, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *SHAPE, generator=generator)


def mlp_guided_oracle(model: MLP, x: torch.Tensor, category: int) -> np.ndarray:
    """Guided gradient of ``y_category`` w.r.t. one image ``x`` (C x H x W), by hand, in
    float64. Returns H x W x C."""
    w1 = model.fc1.weight.detach().double()
    b1 = model.fc1.bias.detach().double()
    w2 = model.fc2.weight.detach().double()
    b2 = model.fc2.bias.detach().double()
    w3 = model.fc3.weight.detach().double()
    v = x.double().reshape(-1)
    z1 = w1 @ v + b1
    z2 = w2 @ torch.relu(z1) + b2
    g = w3[category]  # d y_c / d a2
    g = g * (z2 > 0) * (g > 0)  # guided ReLU 2
    g = w2.T @ g  # d / d a1
    g = g * (z1 > 0) * (g > 0)  # guided ReLU 1
    g = w1.T @ g  # d / d x
    return g.reshape(SHAPE).permute(1, 2, 0).numpy()


def plain_gradient(model: nn.Module, x: torch.Tensor, category: int) -> np.ndarray:
    x = x.detach().clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(x[None])[0, category], x)
    return gradient.permute(1, 2, 0).numpy()


# --------------------------------------------------------------------- values
def test_single_image_matches_closed_form():
    model = make_mlp().eval()
    x = images(1)
    for category in range(CLASSES):
        result = GuidedBackpropReLUModel(model)(x, target_category=category)
        assert result.shape == (3, 2, 2)  # H x W x C for one image
        assert result.dtype == np.float32
        expected = mlp_guided_oracle(model, x[0], category)
        np.testing.assert_allclose(result, expected, rtol=0, atol=1e-6)


def test_oracle_is_discriminating():
    """On these weights both gates (input > 0 and grad > 0) change the result, so the
    closed-form comparison really tests guided backpropagation: the result differs from
    the plain gradient (input gate only) and from the 'deconvnet' rule (grad gate only)."""
    model = make_mlp().eval()
    x = images(1)[0]
    guided = mlp_guided_oracle(model, x, 0)
    plain = plain_gradient(model, x, 0)
    w1 = model.fc1.weight.detach().double()
    w2 = model.fc2.weight.detach().double()
    g = model.fc3.weight.detach().double()[0]
    g = g.clamp(min=0)
    g = (w2.T @ g).clamp(min=0)
    deconvnet = (w1.T @ g).reshape(SHAPE).permute(1, 2, 0).numpy()
    assert np.abs(guided - plain).max() > 1e-3
    assert np.abs(guided - deconvnet).max() > 1e-3
    result = GuidedBackpropReLUModel(model)(x[None], target_category=0)
    np.testing.assert_allclose(result, guided, rtol=0, atol=1e-6)


def test_target_category_none_uses_each_images_top_class():
    model = make_mlp().eval()
    with torch.no_grad():
        model.fc3.bias.zero_()
    x = 3 * images(4, seed=3)
    with torch.no_grad():
        top = model(x).argmax(dim=1).tolist()
    assert len(set(top)) > 1, "the example should have different top classes"
    result = GuidedBackpropReLUModel(model)(x)
    assert result.shape == (4, 3, 2, 2)
    for index in range(4):
        expected = mlp_guided_oracle(model, x[index], top[index])
        np.testing.assert_allclose(result[index], expected, atol=1e-6)


def test_target_category_int_applies_to_every_image():
    model = make_mlp().eval()
    x = images(3)
    result = GuidedBackpropReLUModel(model)(x, target_category=2)
    for index in range(3):
        np.testing.assert_allclose(result[index], mlp_guided_oracle(model, x[index], 2), atol=1e-6)


@pytest.mark.parametrize("as_type", [list, tuple])
def test_target_category_list_one_per_image(as_type):
    model = make_mlp().eval()
    x = images(3)
    categories = [3, 0, 1]
    result = GuidedBackpropReLUModel(model)(x, target_category=as_type(categories))
    for index, category in enumerate(categories):
        expected = mlp_guided_oracle(model, x[index], category)
        np.testing.assert_allclose(result[index], expected, atol=1e-6)


def test_batch_equals_per_image_results():
    model = make_mlp().eval()
    x = images(3, seed=4)
    guided = GuidedBackpropReLUModel(model)
    categories = [1, 2, 0]
    batch = guided(x, target_category=categories)
    assert batch.shape == (3, 3, 2, 2)
    for index, category in enumerate(categories):
        single = guided(x[index : index + 1], target_category=category)
        np.testing.assert_allclose(batch[index], single, atol=1e-6)


def test_inplace_relu_gives_same_result_as_not_inplace():
    x = images(3, seed=5)
    plain = make_mlp(inplace=False).eval()
    inplace = make_mlp(inplace=True).eval()
    expected = GuidedBackpropReLUModel(plain)(x, target_category=[0, 1, 2])
    result = GuidedBackpropReLUModel(inplace)(x, target_category=[0, 1, 2])
    np.testing.assert_allclose(result, expected, atol=1e-6)
    for index, category in enumerate([0, 1, 2]):
        np.testing.assert_allclose(
            result[index], mlp_guided_oracle(plain, x[index], category), atol=1e-6
        )


def test_input_tensor_is_not_modified():
    model = make_mlp(inplace=True).eval()
    x = images(2)
    before = x.clone()
    GuidedBackpropReLUModel(model)(x, target_category=1)
    assert torch.equal(x, before)
    assert x.grad is None and not x.requires_grad


class SharedReLUNet(nn.Module):
    """The same ReLU module used twice: guided at both uses."""

    def __init__(self, mlp: MLP):
        super().__init__()
        self.flatten, self.fc1, self.fc2, self.fc3 = mlp.flatten, mlp.fc1, mlp.fc2, mlp.fc3
        self.relu = nn.ReLU()

    def forward(self, x):
        h = self.relu(self.fc1(self.flatten(x)))
        return self.fc3(self.relu(self.fc2(h)))


def test_relu_module_used_twice_is_guided_at_each_use():
    mlp = make_mlp().eval()
    shared = SharedReLUNet(mlp).eval()
    x = images(2, seed=6)
    result = GuidedBackpropReLUModel(shared)(x, target_category=[2, 3])
    for index, category in enumerate([2, 3]):
        np.testing.assert_allclose(
            result[index], mlp_guided_oracle(mlp, x[index], category), atol=1e-6
        )


class ConvNet(nn.Module):
    """Conv -> ReLU -> global average pool -> Linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, CLASSES)

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


def test_conv_net_matches_closed_form():
    torch.manual_seed(7)
    model = ConvNet().eval()
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]] * CLASSES))
    x = torch.randn(2, 2, 5, 4, generator=torch.Generator().manual_seed(8))
    result = GuidedBackpropReLUModel(model)(x, target_category=0)
    assert result.shape == (2, 5, 4, 2)
    weight = model.conv.weight.detach().double()
    with torch.no_grad():
        z = F.conv2d(x.double(), weight, model.conv.bias.double(), padding=1)
    positions = z.shape[2] * z.shape[3]
    g = model.fc.weight.detach().double()[0].view(1, 3, 1, 1).expand_as(z) / positions
    g = g * (z > 0) * (g > 0)
    expected = F.conv_transpose2d(g, weight, padding=1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(result, expected, atol=1e-6)
    # Channel 1 has a negative class weight: the guided gradient ignores it entirely,
    # so the result differs from the plain gradient.
    plain = plain_gradient(model, x[0], 0)
    assert np.abs(plain - expected[0]).max() > 1e-3


def test_output_selector_picks_the_scores():
    class TupleNet(nn.Module):
        def __init__(self, mlp):
            super().__init__()
            self.mlp = mlp

        def forward(self, x):
            scores = self.mlp(x)
            return -scores, scores  # the scores are the second entry

    mlp = make_mlp().eval()
    x = images(2)
    result = GuidedBackpropReLUModel(TupleNet(mlp), output_selector=1)(x, target_category=1)
    for index in range(2):
        np.testing.assert_allclose(result[index], mlp_guided_oracle(mlp, x[index], 1), atol=1e-6)


def test_rejects_non_batched_input():
    with pytest.raises(ValueError, match="B x C x H x W"):
        GuidedBackpropReLUModel(make_mlp())(images(1)[0])


# --------------------------------------------------------------------- model left as found
def _snapshot(model: nn.Module):
    return {
        "modules": [(name, id(module)) for name, module in model.named_modules()],
        "training": [(name, module.training) for name, module in model.named_modules()],
        "inplace": [
            (name, module.inplace)
            for name, module in model.named_modules()
            if isinstance(module, nn.ReLU)
        ],
        "params": {name: p.detach().clone() for name, p in model.named_parameters()},
        "grads": {
            name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()
        },
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
    }


def _assert_unchanged(model: nn.Module, before) -> None:
    after = _snapshot(model)
    assert after["modules"] == before["modules"]
    assert after["training"] == before["training"]
    assert after["inplace"] == before["inplace"]
    assert after["requires_grad"] == before["requires_grad"]
    for name, value in before["params"].items():
        assert torch.equal(after["params"][name], value), name
    for name, grad in before["grads"].items():
        if grad is None:
            assert after["grads"][name] is None, name
        else:
            assert torch.equal(after["grads"][name], grad), name
    for name, module in model.named_modules():
        assert not module._forward_hooks, name
        assert not module._forward_pre_hooks, name
        assert not module._backward_hooks, name
        if hasattr(module, "_backward_pre_hooks"):
            assert not module._backward_pre_hooks, name


def _prepare(model: nn.Module) -> None:
    """train() mode, a known .grad on some parameters, None on the others."""
    model.train()
    model.fc1.weight.grad = torch.full_like(model.fc1.weight, 0.25)
    model.fc3.bias.grad = torch.arange(CLASSES, dtype=torch.float32)
    assert model.fc2.weight.grad is None


@pytest.mark.parametrize("inplace", [False, True])
def test_model_left_as_found_after_a_call(inplace):
    model = make_mlp(inplace=inplace, dropout=0.5)
    _prepare(model)
    before = _snapshot(model)
    x = images(3)
    result = GuidedBackpropReLUModel(model)(x, target_category=[0, 1, 2])
    _assert_unchanged(model, before)
    assert model.training and model.drop.training
    # The call ran in eval mode: dropout was off, so the result is the deterministic one.
    for index, category in enumerate([0, 1, 2]):
        expected = mlp_guided_oracle(model, x[index], category)
        np.testing.assert_allclose(result[index], expected, atol=1e-6)


def test_mixed_train_eval_flags_are_restored():
    model = make_mlp(dropout=0.5)
    model.train()
    model.fc2.eval()
    model.drop.eval()
    before = _snapshot(model)
    GuidedBackpropReLUModel(model)(images(2), target_category=0)
    _assert_unchanged(model, before)
    assert model.training and not model.fc2.training and not model.drop.training


def test_batchnorm_statistics_untouched():
    torch.manual_seed(9)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(3, CLASSES),
    ).train()
    running_mean = model[1].running_mean.clone()
    running_var = model[1].running_var.clone()
    batches = model[1].num_batches_tracked.clone()
    GuidedBackpropReLUModel(model)(torch.randn(2, 2, 4, 4), target_category=1)
    assert torch.equal(model[1].running_mean, running_mean)
    assert torch.equal(model[1].running_var, running_var)
    assert torch.equal(model[1].num_batches_tracked, batches)
    assert all(module.training for module in model.modules())


@pytest.mark.parametrize("inplace", [False, True])
def test_model_left_as_found_after_wrong_length_target_category(inplace):
    model = make_mlp(inplace=inplace)
    _prepare(model)
    before = _snapshot(model)
    with pytest.raises(ValueError, match="target_category has 2 entries but the batch has 3"):
        GuidedBackpropReLUModel(model)(images(3), target_category=[0, 1])
    _assert_unchanged(model, before)
    # And it still works normally afterwards.
    x = images(1)
    np.testing.assert_allclose(
        GuidedBackpropReLUModel(model)(x, target_category=0),
        mlp_guided_oracle(model, x[0], 0),
        atol=1e-6,
    )


class FailingNet(MLP):
    """Raises in forward after the first ReLU has run."""

    def forward(self, x):
        h = self.relu1(self.fc1(self.flatten(x)))
        if h.shape[0] > 0:
            raise RuntimeError("deliberate failure after the first ReLU")
        return self.fc3(self.relu2(self.fc2(h)))


@pytest.mark.parametrize("inplace", [False, True])
def test_model_left_as_found_after_forward_raises(inplace):
    torch.manual_seed(0)
    model = FailingNet(inplace=inplace)
    _prepare(model)
    before = _snapshot(model)
    with pytest.raises(RuntimeError, match="deliberate failure"):
        GuidedBackpropReLUModel(model)(images(2), target_category=0)
    _assert_unchanged(model, before)
    assert model.training


def test_user_hooks_are_kept():
    model = make_mlp().eval()
    seen = []
    handle = model.relu1.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        GuidedBackpropReLUModel(model)(images(2), target_category=0)
        assert seen == [torch.Size([2, HIDDEN1])]
        assert len(model.relu1._forward_hooks) == 1
    finally:
        handle.remove()


def test_later_plain_backward_is_not_guided():
    """After a guided call the model backpropagates normally again."""
    model = make_mlp().eval()
    x = images(1)[0]
    GuidedBackpropReLUModel(model)(x[None], target_category=0)
    plain = plain_gradient(model, x, 0)
    guided = mlp_guided_oracle(model, x, 0)
    assert np.abs(plain - guided).max() > 1e-3
    # plain gradient by hand: the same chain without the (grad > 0) gates.
    w1, b1 = model.fc1.weight.detach().double(), model.fc1.bias.detach().double()
    w2, b2 = model.fc2.weight.detach().double(), model.fc2.bias.detach().double()
    z1 = w1 @ x.double().reshape(-1) + b1
    z2 = w2 @ torch.relu(z1) + b2
    g = model.fc3.weight.detach().double()[0] * (z2 > 0)
    g = (w2.T @ g) * (z1 > 0)
    expected = (w1.T @ g).reshape(SHAPE).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(plain, expected, atol=1e-6)


def test_model_starting_with_inplace_relu():
    mlp = make_mlp().eval()
    model = nn.Sequential(nn.ReLU(inplace=True), mlp).eval()
    x = images(2, seed=11)
    reference = GuidedBackpropReLUModel(nn.Sequential(nn.ReLU(), mlp))(x, target_category=[1, 3])
    result = GuidedBackpropReLUModel(model)(x, target_category=[1, 3])
    np.testing.assert_allclose(result, reference, atol=1e-6)
    # Guided ReLU on the input: d/dx = g * (x > 0) * (g > 0), g the MLP's guided gradient
    # at relu(x).
    for index, category in enumerate([1, 3]):
        g = mlp_guided_oracle(mlp, torch.relu(x[index]), category)
        mask = (x[index].permute(1, 2, 0).numpy() > 0) & (g > 0)
        assert mask.any()
        np.testing.assert_allclose(result[index], g * mask, atol=1e-6)


def test_target_category_numpy_array_and_tensor_lists():
    model = make_mlp().eval()
    x = images(2)
    expected = GuidedBackpropReLUModel(model)(x, target_category=[3, 1])
    for categories in (np.array([3, 1]), torch.tensor([3, 1])):
        result = GuidedBackpropReLUModel(model)(x, target_category=categories)
        np.testing.assert_allclose(result, expected, atol=0)
    np.testing.assert_allclose(expected[0], mlp_guided_oracle(model, x[0], 3), atol=1e-6)


@pytest.mark.parametrize("category", [np.int64(2), torch.tensor(2)], ids=["numpy", "tensor"])
def test_target_category_integer_scalar_types(category):
    model = make_mlp().eval()
    x = images(2)
    result = GuidedBackpropReLUModel(model)(x, target_category=category)
    for index in range(2):
        np.testing.assert_allclose(result[index], mlp_guided_oracle(model, x[index], 2), atol=1e-6)
