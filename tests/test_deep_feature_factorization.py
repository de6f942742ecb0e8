"""Deep Feature Factorization: the NMF (scikit-learn's, planted factors recovered), the
concept maps and names against computations in the test, the factorisation image."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import (
    SmallConvNet,
    assert_same_state,
    layer_outputs,
    min_max,
    net_in_training_mode,
    seeded,
    snapshot,
)
from torch import nn

from pytorch_grad_cam.deep_feature_factorization import (
    DeepFeatureFactorization,
    non_negative_factorization,
)
from pytorch_grad_cam.utils.factorization_image import (
    concept_colors,
    show_factorization_on_image,
)


def planted(k: int = 3, n: int = 60, m: int = 40, seed: int = 0):
    """``V = W0 H0`` with non-negative factors, each with ``k`` anchor rows / columns
    (pure positions and pure channels), so the factorisation is unique up to permutation
    and scale."""
    generator = torch.Generator().manual_seed(seed)
    w0 = torch.rand(n, k, generator=generator) ** 3
    h0 = torch.rand(k, m, generator=generator) ** 3
    w0[:k] = 2 * torch.eye(k)
    h0[:, :k] = torch.eye(k)
    return w0 @ h0, w0, h0


def unit_rows(matrix: torch.Tensor) -> torch.Tensor:
    return matrix / matrix.norm(dim=1, keepdim=True)


# --------------------------------------------------------------------- the factorisation
def test_the_factorisation_is_scikit_learns_nmf():
    """The factors are scikit-learn's NMF of the same matrix (the library, not a copy),
    and they reconstruct the planted matrix closely."""
    from sklearn.decomposition import NMF

    v, _, _ = planted()
    w, h = non_negative_factorization(v, 3, iterations=300)
    reference = NMF(n_components=3, max_iter=300, random_state=0)
    w_ref = reference.fit_transform(v.double().numpy())
    np.testing.assert_allclose(w.numpy(), w_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h.numpy(), reference.components_, rtol=1e-5, atol=1e-6)
    assert torch.linalg.norm(v - w @ h) / torch.linalg.norm(v) < 5e-3
    assert (w >= 0).all() and (h >= 0).all()


def test_planted_factors_are_recovered_up_to_permutation_and_scale():
    v, w0, h0 = planted(seed=1)
    w, h = non_negative_factorization(v, 3, iterations=500)
    similarity = max(
        (unit_rows(h[list(p)]) * unit_rows(h0)).sum(dim=1).min()
        for p in itertools.permutations(range(3))
    )
    assert similarity > 0.999
    best = max(
        itertools.permutations(range(3)),
        key=lambda p: float((unit_rows(h[list(p)]) * unit_rows(h0)).sum()),
    )
    assert (unit_rows(w.T[list(best)]) * unit_rows(w0.T)).sum(dim=1).min() > 0.999


def test_factorisation_is_deterministic_for_a_seed():
    """NNDSVDa starts need no seed; more components than rows start at random, seeded."""
    v, _, _ = planted(n=5, m=40)
    first = non_negative_factorization(v, 8, iterations=20, seed=4)
    second = non_negative_factorization(v, 8, iterations=20, seed=4)
    other = non_negative_factorization(v, 8, iterations=20, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[1], other[1])


# --------------------------------------------------------------------- the method
class TwoConceptNet(nn.Module):
    """Identity 1x1 convolution + ReLU, global average pooling, identity classifier:
    channel ``c`` is the evidence for class ``c``."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU())
        self.fc = nn.Linear(4, 4)
        with torch.no_grad():
            self.features[0].weight.copy_(torch.eye(4).view(4, 4, 1, 1))
            self.features[0].bias.zero_()
            self.fc.weight.copy_(torch.eye(4))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


def test_classifier_head_names_each_concept_by_its_class():
    model = TwoConceptNet().eval()
    x = 0.05 * torch.rand(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    x[0, 0, :, :4] += 1.0  # class 0's evidence on the left
    x[0, 2, :, 4:] += 1.0  # class 2's on the right
    dff = DeepFeatureFactorization(model, model.features, computation_on_concepts=model.fc)
    concepts, explanations, outputs = dff(x, n_components=2)
    assert concepts.shape == (4, 2) and explanations.shape == (1, 2, 8, 8)
    assert outputs.shape == (2, 4)
    named = outputs.argmax(axis=1)
    assert sorted(named.tolist()) == [0, 2]
    for concept, category in enumerate(named):
        heat = explanations[0, concept]
        inside, outside = (
            (heat[:, :4], heat[:, 4:]) if category == 0 else (heat[:, 4:], heat[:, :4])
        )
        assert inside.min() > 0.9 and outside.max() < 0.1
    np.testing.assert_allclose(outputs, model.fc(torch.from_numpy(concepts.T)).detach().numpy())


@pytest.mark.parametrize("layer_index", [5, 4])  # after the ReLU; before it (negative values)
def test_explanations_and_concepts_match_the_factorisation_of_the_recorded_activations(
    layer_index,
):
    model = seeded(SmallConvNet)
    layer = model.features[layer_index]
    x = torch.randn(2, 3, 14, 10, generator=torch.Generator().manual_seed(2))
    (activations,) = layer_outputs(model, [layer], x)  # 2 x 16 x 7 x 5
    matrix = activations.permute(0, 2, 3, 1).reshape(-1, 16)
    if layer_index == 4:
        assert matrix.min() < 0
    matrix = matrix - min(float(matrix.min()), 0.0)
    w, h = non_negative_factorization(matrix, 5, iterations=50, seed=3)
    heat = w.view(2, 7, 5, 5).permute(0, 3, 1, 2)  # image x concept x positions
    up = F.interpolate(heat, size=(14, 10), mode="bilinear", align_corners=False)
    expected = min_max(up.reshape(10, 14, 10)).view(2, 5, 14, 10)

    dff = DeepFeatureFactorization(
        model, layer, computation_on_concepts=model.fc, iterations=50, seed=3
    )
    concepts, explanations, outputs = dff(x, 5)
    np.testing.assert_allclose(explanations, expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(concepts, h.T.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs, model.fc(h).detach().numpy(), rtol=1e-4, atol=1e-4)
    assert explanations.dtype == np.float32 and explanations.max() == 1.0
    assert dff.outputs.shape == (2, 5)


def test_without_computation_on_concepts_and_with_a_one_layer_list():
    model = seeded(SmallConvNet)
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    _, explanations, outputs = DeepFeatureFactorization(model, [model.features[5]])(x, 3)
    assert outputs is None and explanations.shape == (1, 3, 8, 8)


def test_model_state_is_unchanged():
    model = net_in_training_mode()
    before = snapshot(model)
    DeepFeatureFactorization(model, model.bn2, computation_on_concepts=model.fc1)(
        torch.randn(2, 3, 16, 16), 4
    )
    assert_same_state(before, snapshot(model))


def test_bad_arguments_are_named():
    model = seeded(SmallConvNet)
    x = torch.randn(1, 3, 8, 8)
    dff = DeepFeatureFactorization(model, model.features[5])
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n_components must be a positive int"):
            dff(x, bad)
    with pytest.raises(ValueError, match="one layer; got 2 layers"):
        DeepFeatureFactorization(model, [model.features[3], model.features[5]])
    with pytest.raises(TypeError, match="target_layer is required"):
        DeepFeatureFactorization(model)
    with pytest.raises(TypeError, match="computation_on_concepts must be a callable"):
        DeepFeatureFactorization(model, model.features[5], computation_on_concepts=3)
    with pytest.raises(ValueError, match="iterations must be a positive int"):
        DeepFeatureFactorization(model, model.features[5], iterations=0)


# --------------------------------------------------------------------- the image
def test_each_pixel_is_coloured_by_its_dominant_concept():
    rng = np.random.default_rng(0)
    img = rng.random((6, 5, 3), dtype=np.float32)
    explanations = rng.random((3, 6, 5), dtype=np.float32)
    explanations[1, 0, 0] = 1.0  # pixel (0, 0): concept 1 at full strength
    colors = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    got = show_factorization_on_image(img, explanations, colors, image_weight=0.3)
    assert got.dtype == np.uint8 and got.shape == img.shape
    expected = np.empty_like(img)
    for i, j in itertools.product(range(6), range(5)):
        dominant = int(np.argmax(explanations[:, i, j]))
        overlay = explanations[dominant, i, j] * colors[dominant]
        expected[i, j] = 0.3 * img[i, j] + 0.7 * overlay
    np.testing.assert_array_equal(got, np.uint8(np.round(255 * expected)))
    assert got[0, 0, 1] == round(255 * (0.3 * img[0, 0, 1] + 0.7))


def test_default_colours_are_distinct_and_labels_add_a_legend():
    colors = concept_colors(4)
    assert colors.shape == (4, 3) and len({tuple(c) for c in colors.round(3)}) == 4
    rng = np.random.default_rng(1)
    img = rng.random((64, 24, 3), dtype=np.float32)
    explanations = rng.random((4, 64, 24), dtype=np.float32)
    plain = show_factorization_on_image(img, explanations)
    labelled = show_factorization_on_image(
        img, explanations, concept_labels=["dog: 0.9\ncat: 0.1", "car", "sky", "tree"]
    )
    assert labelled.shape[0] == 64 and labelled.shape[1] > 24
    np.testing.assert_array_equal(labelled[:, :24], plain)
    legend = labelled[:, 24:]
    for colour in colors:  # each concept's swatch is drawn
        rgb = np.uint8(np.round(255 * colour))
        assert (legend == rgb).all(axis=2).any()


def test_image_arguments_are_checked():
    img = np.zeros((4, 4, 3), dtype=np.float32)
    maps = np.zeros((2, 4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="explanations must be k x H x W"):
        show_factorization_on_image(img, maps[:, :3])
    with pytest.raises(ValueError, match="colors must be 2 x 3"):
        show_factorization_on_image(img, maps, colors=[[1, 0, 0]])
    with pytest.raises(ValueError, match="img must be float in"):
        show_factorization_on_image(img + 2, maps)
    with pytest.raises(ValueError, match="concept_labels has 1 entries"):
        show_factorization_on_image(img, maps, concept_labels=["a"])
