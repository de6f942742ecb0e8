"""ARCC tells Grad-CAM from a random map on the shipped photo with the pretrained
EfficientNet-Lite0 (offline weights). About 6 s on a CPU (two ROAD percentiles, not
four, to halve the 224 x 224 imputations): the one check of ARCC, and of Coherency
through a real CAM, on a trained model."""

from __future__ import annotations

import cv2
import numpy as np
from helpers import IMAGE, load_model

from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.metrics import ARCC, Coherency, Complexity, ROADCombined
from pytorch_grad_cam.random_cam import RandomCAM
from pytorch_grad_cam.utils.image import preprocess_image


def test_grad_cam_beats_random_cam_on_arcc_and_each_of_its_terms():
    model = load_model()
    rgb = cv2.cvtColor(cv2.imread(str(IMAGE)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    x = preprocess_image(rgb[:, 224:])  # the espresso half
    scores = {}
    for name, make_cam in [
        ("GradCAM", lambda: GradCAM(model, [model._bn1])),
        ("RandomCAM", lambda: RandomCAM(model, [model._bn1], seed=0)),
    ]:
        # RandomCAM draws new weights at every call: a fresh one per computation, so that
        # ARCC's own Coherency and the oracle's see the same two draws.
        cam = make_cam()
        maps = cam(x)  # each image's top class
        arcc = ARCC(cam, road_percentiles=[20, 80])(x, maps, None, model)
        cam = make_cam()
        np.testing.assert_array_equal(cam(x), maps)
        coherency = Coherency()(x, maps, None, model, cam)
        complexity = Complexity()(maps)
        road = np.clip(ROADCombined([20, 80])(x, maps, None, model) + 0.5, 0, 1)
        expected = 3 / (1 / coherency + 1 / (1 - complexity) + 1 / road)
        np.testing.assert_allclose(arcc, expected, rtol=1e-5)
        scores[name] = arcc[0], coherency[0], road[0]
    print({name: [round(float(v), 3) for v in values] for name, values in scores.items()})
    (grad_arcc, grad_coherency, grad_road) = scores["GradCAM"]
    (random_arcc, random_coherency, random_road) = scores["RandomCAM"]
    assert grad_arcc > random_arcc + 0.3
    assert grad_coherency > random_coherency + 0.2 and grad_road > random_road + 0.2
