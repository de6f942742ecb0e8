"""The model-parameter randomisation test (Adebayo et al. 2018) on small models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import GapLinearNet
from helpers import assert_same_state, snapshot
from torch import nn

from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.metrics import CascadingRandomization, cascading_randomization
from pytorch_grad_cam.metrics.sanity_check import _average_ranks
from pytorch_grad_cam.random_cam import RandomCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget


class HeadedNet(GapLinearNet):
    """GapLinearNet with a head that forward() never calls."""

    def __init__(self):
        super().__init__(channels=16)
        self.unused_head = nn.Linear(16, 5)


def headed_net() -> HeadedNet:
    torch.manual_seed(0)
    model = HeadedNet()
    model.train()  # the check must not depend on, nor change, the flags
    model.fc.weight.grad = torch.full_like(model.fc.weight, 0.5)
    return model


@pytest.fixture
def case():
    model = headed_net()
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    targets = [ClassifierOutputTarget(c) for c in (0, 1, 2, 3)]
    return model, x, targets


def test_the_map_survives_no_randomisation_and_an_unused_head(case):
    model, x, targets = case
    (original,) = CascadingRandomization(GradCAM, ["features"], steps=[])(x, targets, model)
    assert original.name == "original" and original.modules == ()
    np.testing.assert_array_equal(original.correlation, np.ones(4, dtype=np.float32))
    np.testing.assert_array_equal(original.mean_absolute_difference, np.zeros(4))
    check = CascadingRandomization(GradCAM, ["features"], steps=["unused_head"])
    _, head = check(x, targets, model, return_maps=True)
    assert head.modules == ("unused_head",)
    np.testing.assert_array_equal(head.correlation, np.ones(4, dtype=np.float32))
    np.testing.assert_array_equal(head.pearson, np.ones(4, dtype=np.float32))
    expected = GradCAM(model, [model.features])(x, targets)
    np.testing.assert_array_equal(head.maps, expected)


def test_the_original_step_recomputes_the_map_so_a_random_method_shows_its_noise(case):
    model, x, targets = case
    torch.manual_seed(0)
    (original,) = CascadingRandomization(RandomCAM, ["features"], steps=[])(x, targets, model)
    assert np.nanmean(original.correlation) < 0.99  # two calls, two different random maps


def test_the_cascade_goes_top_down_and_destroys_the_map(case):
    model, x, targets = case
    before = snapshot(model)
    state = torch.get_rng_state()
    results = CascadingRandomization(GradCAM, [model.features])(x, targets, model)
    assert_same_state(before, snapshot(model))
    assert torch.equal(torch.get_rng_state(), state)  # the user's RNG is untouched
    names = [step.name for step in results]
    # Called last first; the head is never called, so it goes with its caller, the model.
    assert names == ["original", "fc", "features.2", "features.0", "unused_head"]
    correlations = np.stack([step.correlation for step in results])
    assert correlations.shape == (5, 4) and correlations.dtype == np.float32
    # A random classifier: the gradients' weights change, the map with them.
    assert np.nanmean(correlations[1]) < 0.7
    # Nothing learned is left at the end of the cascade: no rank agreement.
    assert np.nanmean(np.abs(correlations[3])) < 0.4
    assert np.isnan(correlations[3]).sum() <= 2
    np.testing.assert_array_equal(correlations[4], correlations[3])  # the unused head


def test_independent_randomisation_changes_one_step_at_a_time(case):
    model, x, targets = case
    steps = ["fc", "features.0", "unused_head"]
    independent = CascadingRandomization(GradCAM, ["features"], steps=steps, cascading=False)
    cascading = CascadingRandomization(GradCAM, ["features"], steps=steps)
    single = CascadingRandomization(GradCAM, ["features"], steps=["features.0"])
    ind, cas, one = (check(x, targets, model) for check in (independent, cascading, single))
    # Independent: the first layer alone, and the unused head alone (unchanged map).
    np.testing.assert_array_equal(ind[2].correlation, one[1].correlation)
    np.testing.assert_array_equal(ind[3].correlation, np.ones(4, dtype=np.float32))
    assert not np.array_equal(ind[2].correlation, cas[2].correlation)
    np.testing.assert_array_equal(ind[1].correlation, cas[1].correlation)


def test_layers_may_be_named_given_as_modules_functions_or_found_by_the_factory(case):
    model, x, targets = case
    results = [
        CascadingRandomization(GradCAM, layers, steps=["fc"], seed=3)(x, targets, model)
        for layers in (["features"], [model.features], [lambda m: m.features])
    ]
    factory = CascadingRandomization(lambda m: GradCAM(m, [m.features]), steps=["fc"], seed=3)
    results.append(factory(x, targets, model))
    results.append(
        cascading_randomization(model, x, GradCAM, ["features"], targets, steps=["fc"], seed=3)
    )
    for result in results[1:]:
        np.testing.assert_array_equal(result[1].correlation, results[0][1].correlation)
        np.testing.assert_array_equal(
            result[1].mean_absolute_difference, results[0][1].mean_absolute_difference
        )
    other_seed = CascadingRandomization(GradCAM, ["features"], steps=["fc"], seed=4)
    assert not np.array_equal(
        other_seed(x, targets, model)[1].correlation, results[0][1].correlation
    )


def test_targets_none_keeps_the_original_models_top_class(case):
    model, x, _ = case
    with torch.no_grad():
        top = model.eval()(x).argmax(dim=1).tolist()
    model.train()
    explicit = [ClassifierOutputTarget(c) for c in top]
    check = CascadingRandomization(GradCAM, ["features"], steps=["fc", ["features.0"]])
    implicit_results, explicit_results = check(x, None, model), check(x, explicit, model)
    for a, b in zip(implicit_results, explicit_results):
        np.testing.assert_array_equal(a.correlation, b.correlation)
    assert explicit_results[2].name == "features.0" and explicit_results[2].modules == (
        "features.0",
    )


def test_a_container_step_reinitialises_everything_inside_it(case):
    model, x, targets = case
    check = CascadingRandomization(GradCAM, ["features"], steps=[["fc", "features"]])
    _, step = check(x, targets, model)
    assert step.name == "fc, features"
    assert step.modules == ("fc", "features.0", "features.2")


def test_a_custom_reinitialisation_is_used():
    model = headed_net()
    x = torch.rand(2, 3, 16, 16)
    calls = []

    def zero(module):
        calls.append(type(module).__name__)
        for parameter in module.parameters(recurse=False):
            parameter.data.zero_()

    check = CascadingRandomization(GradCAM, ["features"], steps=["fc"], reinitialize=zero)
    _, step = check(x, [ClassifierOutputTarget(0)] * 2, model)
    assert calls == ["Linear"]
    # A zero classifier has zero gradients: an all-zero map, so no correlation.
    assert np.isnan(step.correlation).all()
    assert model.fc.weight.abs().sum() > 0  # the user's model still has its weights


def test_spearman_uses_average_ranks_for_ties():
    np.testing.assert_array_equal(_average_ranks(np.array([3.0, 1.0, 3.0, 0.0])), [2.5, 1, 2.5, 0])


def test_errors_name_the_argument(case):
    model, x, targets = case
    with pytest.raises(ValueError, match="layer path 'featurez'.*nearest layer names: features"):
        CascadingRandomization(GradCAM, ["featurez"])(x, targets, model)
    with pytest.raises(ValueError, match="layer path 'head'.*unused_head"):
        CascadingRandomization(GradCAM, ["features"], steps=["head"])(x, targets, model)
    with pytest.raises(ValueError, match="no parameters to re-initialise"):
        CascadingRandomization(GradCAM, ["features"], steps=["pool"])(x, targets, model)
    with pytest.raises(TypeError, match="steps must be a list"):
        CascadingRandomization(GradCAM, ["features"], steps="fc")
    with pytest.raises(TypeError, match=r"steps\[0\] must be"):
        CascadingRandomization(GradCAM, ["features"], steps=[3])
    with pytest.raises(TypeError, match="target_layers must be a list"):
        CascadingRandomization(GradCAM, model.features)
    with pytest.raises(ValueError, match=r"target_layers\[0\].*not a submodule"):
        CascadingRandomization(GradCAM, [nn.Linear(2, 2)])(x, targets, model)
    with pytest.raises(ValueError, match="targets has 1 entries"):
        CascadingRandomization(GradCAM, ["features"])(x, targets[:1], model)
    # A factory that captured the original model's layer: that layer never runs in the copy.
    with pytest.raises(ValueError, match="not a submodule of the model"):
        CascadingRandomization(lambda m: GradCAM(m, [model.features]))(x, targets, model)
