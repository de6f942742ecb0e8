"""select_output, and CAM classes on models whose forward returns a tuple, a dict or a
Hugging-Face-like ModelOutput, with and without ``output_selector=``."""

from __future__ import annotations

import collections
import types

import numpy as np
import pytest
import torch
from torch import nn

from pytorch_grad_cam import (
    GradCAM,
    GradCAMPlusPlus,
    GuidedBackpropReLUModel,
    HiResCAM,
    LayerCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_outputs import select_output
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget


class FakeModelOutput(collections.OrderedDict):
    """Behaves like ``transformers.utils.ModelOutput``: an OrderedDict whose keys are
    also attributes (fields left ``None`` are absent), integer indexing goes through
    the tuple of values."""

    def __init__(self, **fields):
        super().__init__()
        for key, value in fields.items():
            if value is not None:
                self[key] = value

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        super().__setattr__(key, value)

    def __setattr__(self, name, value):
        if name in self:
            super().__setitem__(name, value)
        super().__setattr__(name, value)

    def __getitem__(self, key):
        if isinstance(key, str):
            return super().__getitem__(key)
        return tuple(self.values())[key]

    def to_tuple(self):
        return tuple(self.values())


# --------------------------------------------------------------------- select_output
A = torch.arange(6.0).reshape(2, 3)
B = -torch.arange(8.0).reshape(2, 4)
C = torch.ones(2, 5)


class TestSelectOutputDefault:
    def test_tensor_is_itself(self):
        assert select_output(A) is A

    def test_tuple_gives_first_tensor(self):
        assert select_output((A, B)) is A
        assert select_output((None, "text", B, A)) is B

    def test_list_gives_first_tensor(self):
        assert select_output([B, A]) is B

    def test_dict_logits_key(self):
        assert select_output({"hidden": B, "logits": A, "aux": C}) is A

    def test_dict_out_key(self):
        assert select_output({"aux": B, "out": A}) is A

    def test_dict_logits_preferred_over_out(self):
        assert select_output({"out": B, "logits": A}) is A

    def test_dict_single_tensor(self):
        assert select_output({"scores": A, "name": "x", "n": 3}) is A

    def test_dict_preferred_key_not_a_tensor_falls_back(self):
        assert select_output({"logits": None, "scores": A}) is A

    def test_model_output_logits(self):
        output = FakeModelOutput(loss=torch.tensor(1.0), logits=A, hidden_states=(B, C))
        assert select_output(output) is A

    def test_object_with_logits_attribute(self):
        output = types.SimpleNamespace(logits=A, other=B)
        assert select_output(output) is A

    def test_dict_with_several_tensors_and_no_preferred_key_is_an_error(self):
        with pytest.raises(TypeError, match="output_selector=") as info:
            select_output({"aux": B, "main": A})
        assert "['aux', 'main']" in str(info.value)
        assert "dict" in str(info.value)

    def test_tuple_without_tensor_is_an_error(self):
        with pytest.raises(TypeError, match="output_selector=") as info:
            select_output((None, "a"))
        assert "['NoneType', 'str']" in str(info.value)

    def test_other_object_is_an_error(self):
        with pytest.raises(TypeError, match="Cannot tell which part") as info:
            select_output(42)
        assert "int" in str(info.value)


class TestSelectOutputSelector:
    def test_str_key(self):
        assert select_output({"aux": B, "main": A}, "main") is A
        assert select_output({"logits": A, "aux": B}, "aux") is B

    def test_str_key_on_model_output(self):
        output = FakeModelOutput(logits=A, pooled=B)
        assert select_output(output, "pooled") is B

    def test_str_attribute(self):
        output = types.SimpleNamespace(scores=B, logits=A)
        assert select_output(output, "scores") is B

    def test_str_attribute_of_namedtuple(self):
        pair = collections.namedtuple("Pair", "aux main")(B, A)
        assert select_output(pair, "main") is A

    @pytest.mark.parametrize("index, expected", [(0, A), (1, B), (-1, C), (2, C)])
    def test_int_index(self, index, expected):
        assert select_output((A, B, C), index) is expected
        assert select_output([A, B, C], index) is expected

    def test_callable(self):
        assert select_output({"x": {"y": (A, B)}}, lambda out: out["x"]["y"][1]) is B
        doubled = select_output(A, lambda out: out * 2)
        torch.testing.assert_close(doubled, A * 2)

    def test_selector_overrides_default_on_plain_tensor(self):
        torch.testing.assert_close(select_output(A, lambda out: out[:, :2]), A[:, :2])

    def test_missing_key_error_names_selector_and_keys(self):
        with pytest.raises(ValueError) as info:
            select_output({"aux": B, "main": A}, "logits")
        message = str(info.value)
        assert "output_selector='logits'" in message
        assert "['aux', 'main']" in message

    def test_missing_attribute_error(self):
        with pytest.raises(ValueError, match="output_selector='scores'") as info:
            select_output(A, "scores")
        assert "Tensor" in str(info.value)

    def test_int_on_dict_is_a_type_error(self):
        with pytest.raises(TypeError, match="output_selector=0 does not fit") as info:
            select_output({"logits": A}, 0)
        assert "dict" in str(info.value)

    def test_int_out_of_range(self):
        with pytest.raises(IndexError):
            select_output((A, B), 5)

    def test_selected_non_tensor_is_a_type_error(self):
        with pytest.raises(TypeError, match="output_selector=1 picked a str") as info:
            select_output((A, "label"), 1)
        assert "not a tensor" in str(info.value)
        with pytest.raises(TypeError, match="picked a NoneType"):
            select_output({"logits": A, "loss": None}, "loss")
        with pytest.raises(TypeError, match="picked a tuple"):
            select_output({"hidden": (A, B)}, lambda out: out["hidden"])

    def test_int_on_a_model_output_indexes_its_tuple(self):
        output = FakeModelOutput(loss=None, logits=A, hidden_states=B)
        assert select_output(output, 0) is A
        assert select_output(output, 1) is B

    @pytest.mark.parametrize("selector", [1.5, b"logits", ("logits",)])
    def test_unsupported_selector_type(self, selector):
        with pytest.raises(TypeError, match="does not fit"):
            select_output({"logits": A}, selector)


# --------------------------------------------------------------------- CAMs on such models
CLASSES = 4


class Backbone(nn.Module):
    """conv -> ReLU (target layer) -> GAP; two heads: ``fc`` (the scores) and ``aux``."""

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(6, CLASSES)
        self.aux = nn.Linear(6, CLASSES)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator))

    def heads(self, x):
        pooled = self.relu(self.conv(x)).mean(dim=(2, 3))
        return self.fc(pooled), self.aux(pooled)


class PlainNet(Backbone):
    def forward(self, x):
        return self.heads(x)[0]


class AuxFirstTupleNet(Backbone):
    """Returns ``(aux, scores)``: the default rule picks the wrong one."""

    def forward(self, x):
        scores, aux = self.heads(x)
        return aux, scores


class ScoresFirstTupleNet(Backbone):
    def forward(self, x):
        scores, aux = self.heads(x)
        return scores, aux


class LogitsDictNet(Backbone):
    def forward(self, x):
        scores, aux = self.heads(x)
        return {"aux": aux, "logits": scores}


class OutDictNet(Backbone):
    def forward(self, x):
        scores, aux = self.heads(x)
        return {"aux": aux, "out": scores}


class AmbiguousDictNet(Backbone):
    def forward(self, x):
        scores, aux = self.heads(x)
        return {"aux": aux, "scores": scores}


class ModelOutputNet(Backbone):
    def forward(self, x):
        scores, aux = self.heads(x)
        return FakeModelOutput(loss=None, logits=scores, hidden_states=(aux,))


class AuxModelOutputNet(Backbone):
    """A ModelOutput whose ``.logits`` is not the head to explain."""

    def forward(self, x):
        scores, aux = self.heads(x)
        return FakeModelOutput(logits=aux, class_scores=scores)


def _images(batch=2, seed=5):
    return torch.randn(batch, 3, 5, 6, generator=torch.Generator().manual_seed(seed))


def _class_weight_cam(model: Backbone, x, weights) -> np.ndarray:
    """``ReLU(sum_k w_k A_k)``, min-max scaled per image: GradCAM on GAP + linear."""
    with torch.no_grad():
        activations = model.relu(model.conv(x)).double()
    cam = torch.relu(torch.einsum("bk,bkhw->bhw", weights.double(), activations)).numpy()
    for index in range(cam.shape[0]):
        spread = cam[index].max() - cam[index].min()
        assert spread > 1e-6
        cam[index] = (cam[index] - cam[index].min()) / spread
    return cam


CATEGORIES = [2, 0]


def _expected(model, x, head="fc", categories=CATEGORIES):
    return _class_weight_cam(model, x, getattr(model, head).weight.detach()[categories])


def _gradcam(model, x, categories=CATEGORIES, **kwargs):
    cam = GradCAM(model, target_layers=[model.relu], **kwargs)
    return cam(x, targets=[ClassifierOutputTarget(c) for c in categories])


def test_the_two_heads_give_different_maps():
    """So that picking the wrong output is detected by the tests below."""
    model = PlainNet()
    x = _images()
    assert np.abs(_expected(model, x, "fc") - _expected(model, x, "aux")).max() > 0.1
    np.testing.assert_allclose(_gradcam(model, x), _expected(model, x, "fc"), atol=1e-5)


@pytest.mark.parametrize(
    "net",
    [ScoresFirstTupleNet, LogitsDictNet, OutDictNet, ModelOutputNet],
    ids=lambda c: c.__name__,
)
def test_default_rule_finds_the_scores(net):
    model = net().eval()
    x = _images()
    np.testing.assert_allclose(_gradcam(model, x), _expected(model, x, "fc"), atol=1e-5)


def test_default_rule_on_aux_first_tuple_takes_the_first_tensor():
    model = AuxFirstTupleNet().eval()
    x = _images()
    np.testing.assert_allclose(_gradcam(model, x), _expected(model, x, "aux"), atol=1e-5)


@pytest.mark.parametrize(
    "net, selector",
    [
        (AuxFirstTupleNet, 1),
        (AuxFirstTupleNet, -1),
        (AuxFirstTupleNet, lambda out: out[1]),
        (ScoresFirstTupleNet, 0),
        (AmbiguousDictNet, "scores"),
        (AmbiguousDictNet, lambda out: out["scores"]),
        (LogitsDictNet, "logits"),
        (ModelOutputNet, "logits"),
        (AuxModelOutputNet, "class_scores"),
        (AuxModelOutputNet, lambda out: out.class_scores),
    ],
    ids=[
        "tuple-int",
        "tuple-negative-int",
        "tuple-callable",
        "tuple-int-0",
        "dict-str",
        "dict-callable",
        "dict-logits",
        "modeloutput-attr",
        "modeloutput-other-key",
        "modeloutput-callable",
    ],
)
def test_output_selector_picks_the_scores(net, selector):
    model = net().eval()
    x = _images()
    result = _gradcam(model, x, output_selector=selector)
    np.testing.assert_allclose(result, _expected(model, x, "fc"), atol=1e-5)


def test_output_selector_can_pick_the_aux_head():
    model = LogitsDictNet().eval()
    x = _images()
    result = _gradcam(model, x, output_selector="aux")
    np.testing.assert_allclose(result, _expected(model, x, "aux"), atol=1e-5)


@pytest.mark.parametrize(
    "net, selector",
    [(AuxFirstTupleNet, 1), (AmbiguousDictNet, "scores"), (ModelOutputNet, None)],
)
def test_targets_none_uses_top_class_of_selected_scores(net, selector):
    model = net().eval()
    x = _images(3, seed=6)
    with torch.no_grad():
        top = PlainNet()(x).argmax(dim=1).tolist()  # same weights (same seed)
    result = GradCAM(model, target_layers=[model.relu], output_selector=selector)(x)
    np.testing.assert_allclose(result, _expected(model, x, "fc", top), atol=1e-5)


def test_targets_none_on_aux_first_tuple_uses_the_aux_top_class():
    model = AuxFirstTupleNet().eval()
    x = _images(3, seed=6)
    with torch.no_grad():
        top = model(x)[0].argmax(dim=1).tolist()
    result = GradCAM(model, target_layers=[model.relu])(x)
    np.testing.assert_allclose(result, _expected(model, x, "aux", top), atol=1e-5)


@pytest.mark.parametrize("method", [HiResCAM, GradCAMPlusPlus, XGradCAM, LayerCAM])
def test_other_methods_with_selector_equal_plain_model(method):
    plain = PlainNet().eval()
    selected = AmbiguousDictNet().eval()  # same weights (same seed)
    x = _images()
    targets = [ClassifierOutputTarget(c) for c in CATEGORIES]
    expected = method(plain, target_layers=[plain.relu])(x, targets=targets)
    result = method(selected, target_layers=[selected.relu], output_selector="scores")(
        x, targets=targets
    )
    np.testing.assert_allclose(result, expected, atol=1e-6)
    assert np.abs(expected).max() > 0


def test_aug_smooth_with_selector_equals_plain_model():
    plain = PlainNet().eval()
    selected = AuxFirstTupleNet().eval()
    x = _images()
    expected = GradCAM(plain, target_layers=[plain.relu])(x, aug_smooth=True)
    result = GradCAM(selected, target_layers=[selected.relu], output_selector=1)(x, aug_smooth=True)
    np.testing.assert_allclose(result, expected, atol=1e-6)


def test_raw_maps_with_selector():
    plain = PlainNet().eval()
    selected = ModelOutputNet().eval()
    x = _images()
    targets = [ClassifierOutputTarget(c) for c in CATEGORIES]
    expected = GradCAM(plain, target_layers=[plain.relu])(
        x, targets=targets, scale=False, as_tensor=True
    )
    result = GradCAM(selected, target_layers=[selected.relu], output_selector="logits")(
        x, targets=targets, scale=False, as_tensor=True
    )
    assert isinstance(result, torch.Tensor)
    torch.testing.assert_close(result, expected)
    assert float(result.max()) > 0


# --------------------------------------------------------------------- errors through a CAM
def test_ambiguous_dict_without_selector_is_an_error():
    model = AmbiguousDictNet().eval()
    with pytest.raises(TypeError, match="output_selector=") as info:
        _gradcam(model, _images())
    assert "['aux', 'scores']" in str(info.value)
    with pytest.raises(TypeError, match="output_selector="):
        GradCAM(model, target_layers=[model.relu])(_images())


def test_missing_key_selector_error_through_cam():
    model = LogitsDictNet().eval()
    with pytest.raises(ValueError) as info:
        _gradcam(model, _images(), output_selector="scores")
    message = str(info.value)
    assert "output_selector='scores'" in message
    assert "['aux', 'logits']" in message


def test_int_selector_on_dict_error_through_cam():
    model = LogitsDictNet().eval()
    with pytest.raises(TypeError, match="output_selector=1 does not fit a model output of type"):
        GradCAM(model, target_layers=[model.relu], output_selector=1)(_images())


def test_selector_picking_non_tensor_error_through_cam():
    class WithName(Backbone):
        def forward(self, x):
            return self.heads(x)[0], "name"

    model = WithName().eval()
    with pytest.raises(TypeError, match="output_selector=1 picked a str"):
        _gradcam(model, _images(), output_selector=1)


def test_callable_selector_error_propagates():
    def selector(output):
        raise KeyError("no such head")

    model = LogitsDictNet().eval()
    with pytest.raises(KeyError, match="no such head"):
        _gradcam(model, _images(), output_selector=selector)


def test_model_left_clean_after_selector_error():
    model = LogitsDictNet()
    model.train()
    with pytest.raises(ValueError):
        _gradcam(model, _images(), output_selector="missing")
    assert all(module.training for module in model.modules())
    for module in model.modules():
        assert not module._forward_hooks
        assert not module._forward_pre_hooks
        assert not module._backward_hooks
    # and it works afterwards
    x = _images()
    np.testing.assert_allclose(
        _gradcam(model.eval(), x, output_selector="logits"), _expected(model, x), atol=1e-5
    )


# --------------------------------------------------------------------- cam.outputs
def test_outputs_keep_the_model_output_type_and_are_detached():
    x = _images()
    for net, check in [
        (ScoresFirstTupleNet, lambda out: out[0]),
        (LogitsDictNet, lambda out: out["logits"]),
        (ModelOutputNet, lambda out: out.logits),
    ]:
        model = net().eval()
        cam = GradCAM(model, target_layers=[model.relu])
        cam(x, targets=[ClassifierOutputTarget(0)] * 2)
        assert type(cam.outputs) is type(model(x))
        scores = check(cam.outputs)
        assert not scores.requires_grad
        with torch.no_grad():
            torch.testing.assert_close(scores, PlainNet()(x))


def test_model_output_outputs_key_and_attribute_agree():
    model = ModelOutputNet().eval()
    cam = GradCAM(model, target_layers=[model.relu])
    cam(_images(), targets=[ClassifierOutputTarget(0)] * 2)
    assert cam.outputs["logits"] is cam.outputs.logits
    assert not cam.outputs["hidden_states"][0].requires_grad
    assert list(cam.outputs.keys()) == ["logits", "hidden_states"]


Scores = collections.namedtuple("Scores", "logits aux")


class NamedTupleNet(Backbone):
    def forward(self, x):
        scores, aux = self.heads(x)
        return Scores(scores, aux)


def test_namedtuple_output_default_and_selectors():
    model = NamedTupleNet().eval()
    x = _images()
    expected = _expected(model, x, "fc")
    np.testing.assert_allclose(_gradcam(model, x), expected, atol=1e-5)
    np.testing.assert_allclose(_gradcam(model, x, output_selector=0), expected, atol=1e-5)
    np.testing.assert_allclose(_gradcam(model, x, output_selector="logits"), expected, atol=1e-5)
    aux = _gradcam(model, x, output_selector="aux")
    np.testing.assert_allclose(aux, _expected(model, x, "aux"), atol=1e-5)


def test_namedtuple_outputs_are_detached():
    model = NamedTupleNet().eval()
    cam = GradCAM(model, target_layers=[model.relu])
    cam(_images(), targets=[ClassifierOutputTarget(0)] * 2)
    assert type(cam.outputs) is Scores
    assert not cam.outputs.logits.requires_grad
    assert not cam.outputs.aux.requires_grad


# --------------------------------------------------------------------- guided backprop
def test_guided_backprop_output_selector_on_dict_and_model_output():
    x = _images()
    plain = PlainNet().eval()
    expected = GuidedBackpropReLUModel(plain)(x, target_category=[1, 3])
    assert np.abs(expected).max() > 0
    for model, selector in [
        (AmbiguousDictNet().eval(), "scores"),
        (ModelOutputNet().eval(), None),
        (AuxFirstTupleNet().eval(), 1),
    ]:
        result = GuidedBackpropReLUModel(model, output_selector=selector)(x, target_category=[1, 3])
        np.testing.assert_allclose(result, expected, atol=1e-6)


def test_guided_backprop_selector_error():
    with pytest.raises(TypeError, match="output_selector="):
        GuidedBackpropReLUModel(AmbiguousDictNet())(_images())
