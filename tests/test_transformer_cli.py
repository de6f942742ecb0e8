"""``cam.py --method transformerattribution`` and ``--method legrad``: offered by name,
the library's own maps through ``compute_map``, and clear errors where they do not fit
(a CNN, smoothing flags, the target-layer scripts and the app)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from attention_models import timm_deit
from conftest import GapLinearNet

import pytorch_grad_cam
from pytorch_grad_cam import LeGrad, TransformerAttribution, cli
from pytorch_grad_cam.app.service import method_names
from pytorch_grad_cam.cli.methods import maps_attention
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

METHODS = {"transformerattribution": TransformerAttribution, "legrad": LeGrad}


@pytest.mark.parametrize("name", METHODS)
def test_offered_by_name_and_spelled_loosely(name):
    method = METHODS[name]
    assert cli.available_methods()[name] is method
    assert cli.resolve_method(method.__name__.upper()) is method
    assert cli.resolve_method("Transformer-Attribution") is TransformerAttribution
    assert maps_attention(method) and not cli.explains_layers(method)
    assert getattr(pytorch_grad_cam, method.__name__) is method


@pytest.mark.parametrize("name", METHODS)
def test_compute_map_is_the_librarys_map_for_the_asked_category(name):
    method = METHODS[name]
    model = timm_deit()
    x = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(5))
    expected = {c: method(model)(x, [ClassifierOutputTarget(c)])[0] for c in (3, 7)}
    got = {c: cli.compute_map(method, model, [], None, x, c, method_name=name) for c in (3, 7)}
    for category in (3, 7):
        np.testing.assert_array_equal(got[category], expected[category])
    assert got[3].shape == (32, 48) and got[3].max() == pytest.approx(1.0)
    assert np.abs(got[3] - got[7]).max() > 1e-3  # the category reaches the method


@pytest.mark.parametrize("name", METHODS)
def test_clear_errors_where_the_methods_do_not_fit(name):
    method = METHODS[name]
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(cli.CommandLineError, match="works on vision transformers only") as cnn:
        cli.compute_map(method, GapLinearNet().eval(), [], None, x, 0, method_name=name)
    assert (cnn.value.flag, cnn.value.value) == ("--method", name)
    with pytest.raises(cli.CommandLineError, match="--aug-smooth and --eigen-smooth"):
        cli.compute_map(method, timm_deit(), [], None, x, 0, method_name=name, aug_smooth=True)
    with pytest.raises(cli.CommandLineError, match=f"--method {name}: maps a vision trans"):
        cli.resolve_target_method(name)
    assert method.__name__ not in method_names()
