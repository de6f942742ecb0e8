"""Reliability under a service's load: no_grad callers, lifetimes, threads, bad input.

Each test here failed before the fix it guards (issue 10): FullGrad inside ``no_grad``,
AblationCAM keeping its input and a ``linecache`` entry per object, torch.fx tracing that
broke other threads' forwards, two threads sharing one model, and inputs whose errors
named no argument.
"""

from __future__ import annotations

import gc
import linecache
import threading
import tracemalloc
import weakref

import numpy as np
import pytest
import torch
from conftest import GapLinearNet
from torch import nn

from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    FullGrad,
    GradCAM,
    GradCAMPlusPlus,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

ORIGINAL_MODULE_CALL = nn.Module.__call__
ORIGINAL_MODULE_GETATTR = nn.Module.__getattr__


class ResidualNet(nn.Module):
    """conv -> BN -> ReLU -> residual block -> dropout -> GAP -> linear: a tail that needs a
    value from before the target layer, and modules whose train / eval mode matters."""

    def __init__(self, channels: int = 8, classes: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels))
        self.block = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = torch.relu(self.stem(x))
        features = self.block(stem) + stem
        return self.fc(self.dropout(features.mean(dim=(2, 3))))


def residual_net(seed: int = 0) -> ResidualNet:
    torch.manual_seed(seed)
    model = ResidualNet()
    with torch.no_grad():
        model.stem[1].running_mean.uniform_(-0.2, 0.2)
        model.stem[1].running_var.uniform_(0.5, 1.5)
    return model.eval()


def hook_count(model: nn.Module) -> int:
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return sum(len(getattr(module, name)) for module in model.modules() for name in names)


# --------------------------------------------------------------------- 1. FullGrad, no_grad
def test_fullgrad_inside_no_grad_equals_the_map_outside_it(gap_net, image_batch):
    targets = [ClassifierOutputTarget(c) for c in (1, 3, 0)]
    expected = FullGrad(gap_net, [])(image_batch, targets)
    with torch.no_grad():
        inside = FullGrad(gap_net, [])(image_batch, targets)
    assert expected.max() > 0
    np.testing.assert_allclose(inside, expected, rtol=0, atol=1e-6)


def test_fullgrad_decompose_inside_no_grad_equals_it_outside(gap_net, image_batch):
    targets = [ClassifierOutputTarget(c) for c in (2, 2, 4)]
    expected = FullGrad(gap_net, []).decompose(image_batch, targets)
    with torch.no_grad():
        inside = FullGrad(gap_net, []).decompose(image_batch, targets)
    torch.testing.assert_close(inside.scores, expected.scores)
    torch.testing.assert_close(inside.input_term, expected.input_term)
    assert inside.input_term.abs().sum() > 0
    for term_inside, term in zip(inside.bias_terms, expected.bias_terms):
        torch.testing.assert_close(term_inside, term)
    # Completeness still holds: the terms sum to the score (piecewise-linear network).
    torch.testing.assert_close(inside.total(), inside.scores, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------- 2. nothing outlives a call
@pytest.mark.parametrize(
    "method", [AblationCAM, ScoreCAM, GradCAM, GradCAMPlusPlus, EigenCAM, FullGrad]
)
def test_no_input_batch_outlives_the_call(method):
    model = residual_net()
    cam = method(model, [model.block])
    input_tensor = torch.randn(2, 3, 16, 16)
    alive = weakref.ref(input_tensor)
    maps = cam(input_tensor, [ClassifierOutputTarget(1)] * 2)
    del input_tensor
    gc.collect()
    assert alive() is None, f"{method.__name__} keeps the input batch after the call"
    assert maps.shape == (2, 16, 16) and maps.max() == pytest.approx(1.0)
    assert isinstance(cam.outputs, torch.Tensor) and cam.outputs.shape == (2, 4)


def test_ablation_cam_keeps_no_activations_after_the_call():
    model = residual_net()
    cam = AblationCAM(model, [model.block])
    input_tensor = torch.randn(2, 3, 16, 16)
    cam(input_tensor, [ClassifierOutputTarget(0)] * 2)
    assert cam.ablation_paths == ["tail"]
    activations_alive = []

    def record(module, inputs, output):
        activations_alive.append(weakref.ref(output))

    handle = model.block.register_forward_hook(record)
    try:
        cam(input_tensor, [ClassifierOutputTarget(0)] * 2)
    finally:
        handle.remove()
    gc.collect()
    assert activations_alive and all(ref() is None for ref in activations_alive)


# --------------------------------------------------------------------- 3. no growth per object
def test_three_hundred_ablation_cams_grow_neither_linecache_nor_memory():
    model = residual_net()
    input_tensor = torch.randn(1, 3, 8, 8)
    targets = [ClassifierOutputTarget(0)]

    def one_object() -> None:
        with AblationCAM(model, [model.block]) as cam:
            cam(input_tensor, targets)
            assert cam.ablation_paths == ["tail"]

    for _ in range(20):  # warm-up: torch's and fx's caches fill once
        one_object()
    gc.collect()
    cache_entries = len(linecache.cache)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(300):
            one_object()
        gc.collect()
        growth = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(linecache.cache) == cache_entries
    assert growth < 64 * 1024, f"{growth} bytes kept by 300 AblationCAM objects"
    assert hook_count(model) == 0


def test_tracing_leaves_the_users_model_unchanged():
    """fx stores constants it meets on the traced root; that root is not the user's model."""

    class WithConstant(ResidualNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * SCALE

    model = WithConstant().eval()
    attributes = set(vars(model))
    children = [name for name, _ in model.named_modules()]
    cam = AblationCAM(model, [model.block])
    maps = cam(torch.randn(1, 3, 8, 8), [ClassifierOutputTarget(2)])
    assert cam.ablation_paths == ["tail"]
    assert set(vars(model)) == attributes
    assert [name for name, _ in model.named_modules()] == children
    assert maps.max() == pytest.approx(1.0)


SCALE = torch.tensor(2.0)


# --------------------------------------------------------------------- 4. tracing and threads
def test_ablation_cam_first_calls_race_plain_forwards_of_other_models():
    """50 rounds: two AblationCAMs make their first call (a trace each) while two other
    threads run plain forwards of unrelated models without pause."""
    others = [residual_net(seed) for seed in (5, 6)]
    other_input = torch.randn(2, 3, 8, 8)
    expected_other = [model(other_input) for model in others]
    explained = [residual_net(seed) for seed in (1, 2)]
    input_tensor = torch.randn(1, 3, 8, 8)
    reference = [
        AblationCAM(model, [model.block])(input_tensor, [ClassifierOutputTarget(3)])
        for model in explained
    ]
    errors: list[BaseException] = []
    wrong: list[str] = []

    def forward_until(stop: threading.Event, index: int) -> None:
        try:
            while not stop.is_set():
                with torch.no_grad():
                    output = others[index](other_input)
                if not torch.allclose(output, expected_other[index]):
                    wrong.append(f"plain forward of model {index}")
        except BaseException as error:
            errors.append(error)

    def first_call(index: int, start: threading.Barrier) -> None:
        try:
            model = explained[index]
            cam = AblationCAM(model, [model.block])
            start.wait()
            maps = cam(input_tensor, [ClassifierOutputTarget(3)])
            if cam.ablation_paths != ["tail"] or not np.allclose(maps, reference[index]):
                wrong.append(f"AblationCAM {index}: {cam.ablation_paths}")
        except BaseException as error:
            errors.append(error)

    for _ in range(50):
        stop = threading.Event()
        start = threading.Barrier(2)
        forwards = [threading.Thread(target=forward_until, args=(stop, i)) for i in (0, 1)]
        cams = [threading.Thread(target=first_call, args=(i, start)) for i in (0, 1)]
        for thread in forwards + cams:
            thread.start()
        for thread in cams:
            thread.join()
        stop.set()
        for thread in forwards:
            thread.join()
        assert not errors, errors[0]
        assert not wrong, wrong
        assert nn.Module.__call__ is ORIGINAL_MODULE_CALL
        assert nn.Module.__getattr__ is ORIGINAL_MODULE_GETATTR


# --------------------------------------------------------------------- 5. one model, two threads
class DropoutNet(GapLinearNet):
    """GapLinearNet with a dropout before the classifier: train mode would change maps."""

    def __init__(self):
        super().__init__()
        self.dropout = nn.Dropout(0.9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pool(self.features(x)).flatten(1)))


@pytest.mark.parametrize("methods", [(GradCAM, GradCAM), (GradCAM, ScoreCAM), (LayerCAM, XGradCAM)])
def test_two_threads_sharing_one_model_get_the_sequential_maps(methods):
    torch.manual_seed(0)
    model = DropoutNet()
    model.train()
    model.features[0].eval()  # a mix of flags, to be restored module by module
    flags = [module.training for module in model.modules()]
    cams = [method(model, [model.features]) for method in methods]
    inputs = [torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in (1, 2)]
    targets = [[ClassifierOutputTarget(c) for c in pair] for pair in ((0, 1), (4, 2))]
    expected = [cam(x, t) for cam, x, t in zip(cams, inputs, targets)]
    assert [module.training for module in model.modules()] == flags
    errors: list[BaseException] = []
    results: list[list[np.ndarray]] = [[], []]

    def explain(index: int, start: threading.Barrier) -> None:
        try:
            start.wait()
            for _ in range(20):
                results[index].append(cams[index](inputs[index], targets[index]))
        except BaseException as error:
            errors.append(error)

    for _ in range(50 if methods == (GradCAM, GradCAM) else 5):
        results = [[], []]
        start = threading.Barrier(2)
        threads = [threading.Thread(target=explain, args=(i, start)) for i in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors[0]
        for index in (0, 1):
            assert len(results[index]) == 20
            for maps in results[index]:
                np.testing.assert_allclose(maps, expected[index], rtol=0, atol=1e-6)
        assert [module.training for module in model.modules()] == flags
        assert hook_count(model) == 0


def test_separate_models_in_separate_threads_run_at_the_same_time():
    """The lock is per model: a call on one model does not wait for a call on another."""
    models = [residual_net(seed) for seed in (1, 2)]
    inside = threading.Event()
    release = threading.Event()
    seen: list[bool] = []

    def slow_target(output: torch.Tensor) -> torch.Tensor:
        inside.set()
        seen.append(release.wait(timeout=30))
        return output[0]

    thread = threading.Thread(
        target=lambda: GradCAM(models[0], [models[0].block])(torch.randn(1, 3, 8, 8), [slow_target])
    )
    thread.start()
    assert inside.wait(timeout=30)
    # The first call is inside models[0]'s lock; one on models[1] goes ahead meanwhile.
    maps = GradCAM(models[1], [models[1].block])(
        torch.randn(1, 3, 8, 8), [ClassifierOutputTarget(1)]
    )
    release.set()
    thread.join()
    assert seen == [True]
    assert maps.shape == (1, 8, 8) and maps.max() == pytest.approx(1.0)


# --------------------------------------------------------------------- 6. bad input
@pytest.mark.parametrize("method", [GradCAM, AblationCAM, ScoreCAM, EigenCAM, FullGrad])
@pytest.mark.parametrize(
    ("make_input", "error", "message"),
    [
        (lambda: torch.zeros(0, 3, 8, 8), ValueError, r"input_tensor holds no images"),
        (lambda: torch.zeros(1, 3, 0, 8), ValueError, r"input_tensor has an axis of size 0"),
        (lambda: torch.zeros(1, 3, 8, 8, device="meta"), ValueError, r"on the meta device"),
    ],
)
def test_bad_inputs_name_the_argument_before_the_model_runs(method, make_input, error, message):
    model = residual_net()
    runs = []
    model.register_forward_pre_hook(lambda module, inputs: runs.append(1))
    cam = method(model, [model.block])
    with pytest.raises(error, match=message):
        cam(make_input(), None)
    assert runs == []


def test_a_model_on_the_meta_device_is_named():
    with torch.device("meta"):
        model = ResidualNet()
    with pytest.raises(ValueError, match=r"model's parameters are on the meta device"):
        GradCAM(model, [model.block])(torch.zeros(1, 3, 8, 8), None)


@pytest.mark.parametrize("method", [GradCAM, AblationCAM, ScoreCAM, GradCAMPlusPlus])
@pytest.mark.parametrize("returned", [None, "score", {"score": 1.0}, True])
def test_a_target_that_returns_no_score_is_named(method, returned):
    model = residual_net()
    targets = [ClassifierOutputTarget(0), lambda output: returned]
    with pytest.raises(TypeError, match=r"targets\[1\] \(function\) returned .* not a score"):
        method(model, [model.block])(torch.randn(2, 3, 8, 8), targets)
    assert hook_count(model) == 0


def test_targets_that_return_numbers_and_arrays_still_work(gap_net, image_batch):
    """A float, a numpy scalar or a one-element tensor: all scores (the float ones give
    GradCAM a zero gradient, the tensor ones the usual map)."""
    expected = GradCAM(gap_net, [gap_net.features])(
        image_batch, [ClassifierOutputTarget(c) for c in (0, 1, 2)]
    )
    maps = GradCAM(gap_net, [gap_net.features])(
        image_batch, [lambda o: o[0:1], lambda o: o[1].reshape(1, 1), lambda o: o[2]]
    )
    np.testing.assert_allclose(maps, expected, atol=1e-6)
    flat = GradCAM(gap_net, [gap_net.features])(
        image_batch, [lambda o: 1.5, lambda o: np.float32(2.0), lambda o: np.array(3.0)]
    )
    assert np.all(flat == 0)


def test_a_users_own_forward_can_take_the_models_lock():
    """``model_lock(model)`` (as the README suggests for plain forwards in other threads)
    makes a CAM call on that model wait until it is released."""
    from pytorch_grad_cam.utils.model_state import model_lock

    model = residual_net()
    model.train()
    events: list[str] = []
    cam_done = threading.Event()

    def explain() -> None:
        GradCAM(model, [model.block])(torch.randn(1, 3, 8, 8), [ClassifierOutputTarget(0)])
        events.append("cam")
        cam_done.set()

    with model_lock(model):
        thread = threading.Thread(target=explain)
        thread.start()
        assert not cam_done.wait(timeout=0.5)  # the CAM call waits for the lock
        events.append("plain forward")
        assert model.training and hook_count(model) == 0
    thread.join()
    assert events == ["plain forward", "cam"]
    assert model.training
