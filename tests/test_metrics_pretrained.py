"""The metrics tell Grad-CAM from a random map on a real photo, with the pretrained
ImageNet EfficientNet-Lite0 (offline weights)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from helpers import IMAGE, load_model

from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.metrics import (
    CascadingRandomization,
    DeletionCurve,
    InsertionCurve,
    ROADMostRelevantFirst,
)
from pytorch_grad_cam.random_cam import RandomCAM
from pytorch_grad_cam.utils.image import preprocess_image
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
)

ESPRESSO = 967
RANDOM_MAPS = 2


@pytest.fixture(scope="module")
def espresso():
    """The espresso half of the shipped photo (224 x 224); row 0 of the maps is Grad-CAM's,
    rows 1-2 RandomCAM's (two draws), all for the same image."""
    model = load_model()
    rgb = cv2.cvtColor(cv2.imread(str(IMAGE)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    x = preprocess_image(rgb[:, 224:])
    grad_cam = GradCAM(model, [model._bn1])(x, [ClassifierOutputTarget(ESPRESSO)])
    random_maps = RandomCAM(model, [model._bn1], seed=0)(x.repeat(RANDOM_MAPS, 1, 1, 1))
    maps = np.concatenate([grad_cam, random_maps])
    inputs = x.repeat(1 + RANDOM_MAPS, 1, 1, 1)
    return model, x, inputs, maps


def test_grad_cam_beats_random_cam_on_deletion_insertion_and_road(espresso):
    model, _, inputs, maps = espresso
    targets = [ClassifierOutputSoftmaxTarget(ESPRESSO)] * len(inputs)
    # Few steps: the model is slow on a CPU, and the gaps are wide.
    deletion = DeletionCurve(n_steps=5)(inputs, maps, targets, model)
    insertion = InsertionCurve(n_steps=5)(inputs, maps, targets, model)
    morf = ROADMostRelevantFirst(percentile=80)(inputs, maps, targets, model)
    print(f"deletion {deletion}, insertion {insertion}, MoRF {morf}")
    # Lower deletion area, higher insertion area, a larger drop when the 20 % most
    # relevant pixels are imputed.
    assert deletion[0] < deletion[1:].mean() - 0.1
    assert insertion[0] > insertion[1:].mean() + 0.05
    assert morf[0] < morf[1:].mean() - 0.3


def test_randomising_the_classifier_changes_grad_cams_map(espresso):
    model, x, _, _ = espresso
    state = {k: v.clone() for k, v in model.state_dict().items()}
    check = CascadingRandomization(GradCAM, target_layers=["_bn1"], steps=["_fc"])
    original, randomised = check(x, [ClassifierOutputTarget(ESPRESSO)], model)
    assert original.correlation[0] == pytest.approx(1.0)
    assert randomised.modules == ("_fc",)
    assert randomised.correlation[0] < 0.5
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
