"""CAM (Zhou et al., 2016): the classifier's weights over a global-average-pooled layer."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from conftest import GapLinearNet, class_weight_cam
from torch import nn

from pytorch_grad_cam import CAM, GradCAM
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    SoftmaxOutputTarget,
)


def categories_to_targets(categories):
    return [ClassifierOutputTarget(c) for c in categories]


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_equals_the_formula_computed_here(dims):
    torch.manual_seed(0)
    model = GapLinearNet(dims=dims).eval()
    x = torch.randn(3, 3, *[6] * dims)
    categories = [4, 0, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the structure fits: no warning
        maps = CAM(model, [model.features])(
            x, categories_to_targets(categories), scale=False, as_tensor=True
        )
    expected = class_weight_cam(model, x, categories)
    assert float(expected.max()) > 0
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-6)


def test_equals_gradcam_up_to_scale(gap_net, image_batch):
    targets = categories_to_targets([1, 3, 3])
    cam = CAM(gap_net, [gap_net.features])(image_batch, targets, scale=False, as_tensor=True)
    grad = GradCAM(gap_net, [gap_net.features])(image_batch, targets, scale=False, as_tensor=True)
    # GradCAM's weights are w_ck / (H W): the same maps, divided by the pooled area.
    torch.testing.assert_close(grad, cam / (12 * 10), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(
        CAM(gap_net, [gap_net.features])(image_batch, targets),
        GradCAM(gap_net, [gap_net.features])(image_batch, targets),
        rtol=1e-5,
        atol=1e-6,
    )


def test_targets_none_explains_each_images_top_class(gap_net, image_batch):
    with torch.no_grad():
        top = gap_net(image_batch).argmax(dim=1).tolist()
    cam = CAM(gap_net, [gap_net.features])
    maps = cam(image_batch, scale=False, as_tensor=True)
    torch.testing.assert_close(maps, class_weight_cam(gap_net, image_batch, top))
    # The softmax target of a class weights the map by the same classifier row.
    softmax = cam(image_batch, [ClassifierOutputSoftmaxTarget(c) for c in top], scale=False)
    torch.testing.assert_close(torch.from_numpy(softmax), maps)


def test_resnet_layer4_equals_gradcam_up_to_scale():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        targets = categories_to_targets(model(x).argmax(dim=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cam = CAM(model, [model.layer4[-1]])(x, targets)
    grad = GradCAM(model, [model.layer4[-1]])(x, targets)
    torch.testing.assert_close(torch.from_numpy(cam), torch.from_numpy(grad), atol=1e-5, rtol=0)
    assert cam.reshape(2, -1).max(axis=1).tolist() == [1.0, 1.0]


def test_the_classifier_can_be_given():
    """Two linear layers take 8 features: the classifier found is the last registered;
    given the other one, CAM uses its weights."""

    class TwoHeads(GapLinearNet):
        def __init__(self):
            super().__init__()
            self.aux = nn.Linear(8, 5)

    torch.manual_seed(0)
    model = TwoHeads().eval()
    x = torch.randn(2, 3, 6, 6)
    targets = categories_to_targets([1, 2])
    with pytest.warns(UserWarning, match="scores are not fc_layer"):
        found = CAM(model, [model.features])(x, targets, scale=False, as_tensor=True)
    given = CAM(model, [model.features], fc_layer=model.fc)(x, targets, scale=False)
    torch.testing.assert_close(torch.from_numpy(given), class_weight_cam(model, x, [1, 2]))
    with torch.no_grad():
        aux = torch.relu(torch.einsum("bc,bchw->bhw", model.aux.weight[[1, 2]], model.features(x)))
    torch.testing.assert_close(found, aux)


def test_a_layer_not_followed_by_pooling_and_the_classifier_warns_once(gap_net, image_batch):
    # features[2] is the conv before the last ReLU: the scores are fc(GAP(ReLU(A))).
    cam = CAM(gap_net, [gap_net.features[2]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cam(image_batch)
        cam(image_batch)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1
    assert "target_layers[0]" in messages[0] and "use GradCAM" in messages[0]
    assert caught[0].filename == __file__  # points at the caller


def test_a_model_without_a_matching_linear_layer():
    torch.manual_seed(0)
    model = torchvision.models.vgg11(weights=None).eval()
    cam = CAM(model, [model.features[-1]])
    with pytest.raises(ValueError) as error:
        cam(torch.randn(1, 3, 32, 32))
    message = str(error.value)
    assert "no nn.Linear with in_features=512" in message
    assert "fc_layer=" in message and "GradCAM" in message


def test_a_classifier_of_the_wrong_size(gap_net, image_batch):
    with pytest.raises(TypeError, match="fc_layer must be the model's final nn.Linear"):
        CAM(gap_net, [gap_net.features], fc_layer=gap_net.features[0])
    cam = CAM(gap_net, [gap_net.features], fc_layer=nn.Linear(3, 5))
    with pytest.raises(ValueError, match="in_features=3, but the target layer has 8 channels"):
        cam(image_batch)


def test_a_target_that_is_not_a_class(gap_net, image_batch):
    cam = CAM(gap_net, [gap_net.features])
    with pytest.raises(TypeError, match=r"targets\[0\] is a SoftmaxOutputTarget"):
        cam(image_batch, [SoftmaxOutputTarget()] * 3)
