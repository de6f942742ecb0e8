"""Bad input gets a clear error that names the argument; old spellings keep working."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchvision
from conftest import GapLinearNet
from torch import nn

from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget


class TinyTokenModel(nn.Module):
    """A ViT-like model: patches -> tokens (B x 1+N x C) -> class token -> head."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.block = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = self.block(tokens)
        return self.head(tokens.mean(1))


class BranchingModel(GapLinearNet):
    """Has a submodule that forward() never calls."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Conv2d(8, 8, 1)


def test_layer_of_another_model(gap_net):
    other = GapLinearNet()
    with pytest.raises(ValueError, match=r"target_layers\[0\].*not a submodule"):
        GradCAM(gap_net, [other.features])


def test_layer_never_reached(image_batch):
    model = BranchingModel().eval()
    cam = GradCAM(model, [model.features, model.unused])
    with pytest.raises(ValueError, match=r"target_layers\[1\] \(Conv2d\) was never reached"):
        cam(image_batch)


def test_pooled_output_without_reshape_transform_says_what_is_needed(gap_net, image_batch):
    with pytest.raises(ValueError) as error:
        GradCAM(gap_net, [gap_net.fc])(image_batch)
    message = str(error.value)
    assert "target_layers[0] (Linear)" in message and "(3, 5)" in message
    assert "B x C x H x W" in message and "reshape_transform" in message


def test_token_output_with_the_vit_transform_works():
    from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

    torch.manual_seed(0)
    model = TinyTokenModel().eval()

    def transform(tokens):
        return vit_reshape_transform(tokens, height=4, width=4)

    maps = GradCAM(model, [model.block], reshape_transform=transform)(torch.randn(2, 3, 16, 16))
    assert maps.shape == (2, 16, 16)
    assert maps.reshape(2, -1).max(1).tolist() == [1.0, 1.0]


def test_a_reshape_transform_returning_the_wrong_rank(gap_net, image_batch):
    cam = GradCAM(gap_net, [gap_net.features], reshape_transform=lambda t: t.flatten(2))
    with pytest.raises(ValueError, match="reshape_transform turned the output"):
        cam(image_batch)


def test_target_count_differs_from_batch(gap_net, image_batch):
    cam = GradCAM(gap_net, [gap_net.features])
    with pytest.raises(ValueError, match="targets has 1 entries but input_tensor has 3 images"):
        cam(image_batch, [ClassifierOutputTarget(1)])
    with pytest.raises(TypeError, match=r"targets must be a list.*\[target\] \* batch_size"):
        cam(image_batch, ClassifierOutputTarget(1))
    with pytest.raises(TypeError, match=r"targets\[1\] is a str"):
        cam(image_batch, [ClassifierOutputTarget(1), "cat", ClassifierOutputTarget(1)])


@pytest.mark.parametrize(
    "bad_input, error, pattern",
    [
        (np.zeros((1, 3, 8, 8), np.float32), TypeError, "input_tensor must be a torch.Tensor"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), TypeError, "must be a float tensor"),
        (torch.zeros(3, 8, 8), ValueError, r"unsqueeze\(0\)"),
        (torch.full((1, 3, 8, 8), float("nan")), ValueError, "NaN or infinite"),
        (torch.full((1, 3, 8, 8), float("inf")), ValueError, "NaN or infinite"),
    ],
)
def test_bad_input_tensor(gap_net, bad_input, error, pattern):
    with pytest.raises(error, match=pattern):
        GradCAM(gap_net, [gap_net.features])(bad_input)


def test_bad_constructor_arguments(gap_net):
    with pytest.raises(TypeError, match=r"single Sequential; pass target_layers=\[layer\]"):
        GradCAM(gap_net, gap_net.features)
    with pytest.raises(ValueError, match="target_layers is empty"):
        GradCAM(gap_net, [])
    with pytest.raises(TypeError, match=r"target_layers\[0\] must be an nn.Module"):
        GradCAM(gap_net, ["features"])
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        GradCAM(lambda x: x, [gap_net.features])
    with pytest.raises(TypeError, match="reshape_transform must be a callable"):
        GradCAM(gap_net, [gap_net.features], reshape_transform="vit")


def test_top_class_needs_a_classifier_output(image_batch):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()
    with pytest.raises(ValueError, match="targets=None picks each image's top class"):
        GradCAM(model, [model[0]])(image_batch)


# ------------------------------------------------------------------ old spellings
def seed_style_model():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def test_seed_readme_code_runs_unchanged():
    """The seeds' README example, word for word (pretrained weights replaced by random)."""
    model = seed_style_model()
    target_layer = model.layer4[-1]
    input_tensor = torch.randn(2, 3, 64, 64)
    with pytest.warns(DeprecationWarning) as record:
        cam = GradCAM(model=model, target_layer=target_layer, use_cuda=False)
        grayscale_cam = cam(input_tensor=input_tensor, target_category=281)
    messages = " ".join(str(w.message) for w in record)
    assert "target_layers=[module]" in messages and "use_cuda" in messages
    assert "targets=[ClassifierOutputTarget(category)" in messages

    new = GradCAM(model=model, target_layers=[target_layer])
    expected = new(input_tensor=input_tensor, targets=[ClassifierOutputTarget(281)] * 2)
    np.testing.assert_array_equal(grayscale_cam, expected)


def test_target_category_spellings_match_targets():
    model = seed_style_model()
    x = torch.randn(2, 3, 64, 64)
    new = GradCAM(model, target_layers=[model.layer4[-1]])
    per_image = new(x, [ClassifierOutputTarget(5), ClassifierOutputTarget(9)])
    top = new(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = GradCAM(model, target_layers=[model.layer4[-1]])
        np.testing.assert_array_equal(old(x, target_category=[5, 9]), per_image)
        np.testing.assert_array_equal(old(x, [5, 9]), per_image)  # positional, seeds' era
        np.testing.assert_array_equal(old(x, target_category=None), top)
    with pytest.warns(DeprecationWarning, match="target_category"):
        old(x, 281)
    with pytest.raises(ValueError, match="targets has 3 entries"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old(x, target_category=[1, 2, 3])


def test_use_cuda_positional_from_the_old_signature():
    model = seed_style_model()
    with pytest.warns(DeprecationWarning, match="use_cuda"):
        cam = GradCAM(model, [model.layer4[-1]], False)
    assert cam.reshape_transform is None


def test_both_spellings_at_once_is_an_error(gap_net, image_batch):
    with pytest.raises(TypeError, match="not both"):
        GradCAM(gap_net, [gap_net.features], target_layer=gap_net.features)
    with pytest.raises(TypeError, match="not both"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        GradCAM(gap_net, [gap_net.features])(
            image_batch, [ClassifierOutputTarget(0)] * 3, target_category=1
        )
