"""Models with several inputs: ``extra_inputs`` and ``model_kwargs`` reach the model, and
perturbation methods keep each perturbed copy with its own image's inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pytorch_grad_cam import AblationCAM, EigenCAM, FinerCAM, FullGrad, GradCAM, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget


class ImageAndVectorNet(nn.Module):
    """``y = fc(GAP(features(image)) * scale) + shift``: ``scale`` (B x C) weighs the
    channels per image, ``shift`` (B x K, a keyword) moves the scores."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(6, 4)

    def forward(self, image, scale, *, shift=None):
        scores = self.fc(self.features(image).mean(dim=(2, 3)) * scale)
        return scores if shift is None else scores + shift


class WithFixedInputs(nn.Module):
    """The model of one image with its extra inputs fixed, as a one-input model."""

    def __init__(self, model, scale, shift):
        super().__init__()
        self.model, self.scale, self.shift = model, scale, shift

    def forward(self, image):
        count = image.shape[0]
        return self.model(image, self.scale.expand(count, -1), shift=self.shift.expand(count, -1))


@pytest.fixture
def inputs():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 8, 6, generator=generator)
    scale = torch.rand(2, 6, generator=generator) + 0.5
    shift = torch.randn(2, 4, generator=generator)
    return x, scale, shift


def test_gradcam_sees_the_extra_inputs(inputs):
    x, scale, shift = inputs
    model = ImageAndVectorNet().eval()
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(3)]
    cam = GradCAM(model, [model.features])
    maps = cam(
        x,
        targets,
        scale=False,
        as_tensor=True,
        extra_inputs=(scale,),
        model_kwargs={"shift": shift},
    )
    # dy_c/dA_k = w_ck s_k / (H W): the classifier's row weighted by the image's scale.
    with torch.no_grad():
        activations = model.features(x)
        weights = model.fc.weight[[1, 3]] * scale / (8 * 6)
    expected = torch.relu(torch.einsum("bk,bkhw->bhw", weights, activations))
    torch.testing.assert_close(maps, expected)
    torch.testing.assert_close(cam.outputs, model(x, scale, shift=shift).detach())


@pytest.mark.parametrize("method", [ScoreCAM, AblationCAM], ids=lambda m: m.__name__)
def test_perturbed_copies_keep_their_images_inputs(inputs, method):
    """Each image's map equals the one-input model of that image with its inputs fixed."""
    x, scale, shift = inputs
    model = ImageAndVectorNet().eval()
    targets = [ClassifierOutputTarget(2), ClassifierOutputTarget(0)]
    cam = method(model, [model.features], batch_size=4)
    maps = cam(x, targets, extra_inputs=(scale,), model_kwargs={"shift": shift})
    for image in range(2):
        fixed = WithFixedInputs(model, scale[image : image + 1], shift[image : image + 1])
        alone = method(fixed, [model.features], batch_size=4)(
            x[image : image + 1], [targets[image]]
        )
        np.testing.assert_allclose(maps[image], alone[0], atol=1e-5)
        assert alone[0].max() == 1.0
    if method is AblationCAM:
        assert cam.ablation_paths == ["full forward"]  # the tail takes the image alone


def test_inputs_shared_by_every_image_are_passed_as_they_are(inputs):
    x, scale, shift = inputs
    model = ImageAndVectorNet().eval()
    shared_scale = scale[:1]  # one row for both images: the model broadcasts it
    maps = ScoreCAM(model, [model.features], batch_size=3)(
        x, [ClassifierOutputTarget(1)] * 2, extra_inputs=(shared_scale,)
    )
    fixed = WithFixedInputs(model, shared_scale, torch.zeros(1, 4))
    np.testing.assert_allclose(
        maps, ScoreCAM(fixed, [model.features])(x, [ClassifierOutputTarget(1)] * 2), atol=1e-5
    )


def test_eigencam_and_smoothing_pass_the_inputs_too(inputs):
    x, scale, shift = inputs
    model = ImageAndVectorNet().eval()
    fixed = WithFixedInputs(model, scale[:1], shift[:1])
    one = x[:1]
    for method in (EigenCAM, GradCAM):
        got = method(model, [model.features])(
            one, aug_smooth=True, extra_inputs=(scale[:1],), model_kwargs={"shift": shift[:1]}
        )
        want = method(fixed, [model.features])(one, aug_smooth=True)
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_a_method_that_cannot_take_them_says_so(inputs):
    x, scale, _ = inputs
    model = ImageAndVectorNet().eval()
    for method in (FullGrad, FinerCAM):
        with pytest.raises(ValueError, match=f"{method.__name__} does not take extra_inputs"):
            method(model, [model.features])(x, extra_inputs=(scale,))
