"""SimilarityToConceptTarget: the similarity of an image's embedding to a concept's, and
Grad-CAM with it on an embedding model whose gradient is known in closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from conftest import GapLinearNet
from torch import nn

from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import SimilarityToConceptTarget

DIM = 6


def vectors(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def cosine_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --------------------------------------------------------------------- the target
def test_cosine_similarity_is_computed_directly():
    embedding, concept = vectors(DIM, seed=1), vectors(DIM, seed=2)
    result = SimilarityToConceptTarget(concept)(embedding)
    assert result.ndim == 0
    expected = cosine_by_hand(embedding.numpy(), concept.numpy())
    assert float(result) == pytest.approx(expected, abs=1e-6)
    # The same vector: 1; its opposite: -1; scale does not matter.
    assert float(SimilarityToConceptTarget(concept)(3 * concept)) == pytest.approx(1.0)
    assert float(SimilarityToConceptTarget(concept)(-concept)) == pytest.approx(-1.0)


def test_dot_product_similarity():
    embedding, concept = vectors(DIM, seed=3), vectors(DIM, seed=4)
    result = SimilarityToConceptTarget(concept.numpy(), similarity="dot")(embedding)
    expected = float(embedding.double() @ concept.double())
    assert float(result) == pytest.approx(expected, abs=1e-5)


def test_custom_similarity_callable():
    def negative_distance(embeddings, features):
        return -(embeddings - features).norm(dim=-1)

    embedding, concept = vectors(DIM, seed=5), vectors(DIM, seed=6)
    result = SimilarityToConceptTarget(concept, similarity=negative_distance)(embedding)
    assert float(result) == pytest.approx(-float((embedding - concept).norm()), abs=1e-6)


def test_rowwise_block_gives_one_score_per_row():
    target = SimilarityToConceptTarget(vectors(DIM, seed=7))
    assert target.rowwise is True
    block = vectors(4, DIM, seed=8)
    result = target(block)
    assert result.shape == (4,)
    per_row = torch.stack([target(row) for row in block])
    torch.testing.assert_close(result, per_row)
    expected = [cosine_by_hand(row, target.features.numpy()) for row in block.numpy()]
    np.testing.assert_allclose(result.numpy(), expected, atol=1e-6)


def test_features_and_outputs_of_other_shapes():
    concept = vectors(1, DIM, seed=9)  # a batch of one, as model(image) returns it
    target = SimilarityToConceptTarget(concept.numpy().astype(np.float64))
    assert target.features.shape == (DIM,)
    embedding = vectors(DIM, seed=10)
    expected = cosine_by_hand(embedding.numpy(), concept[0].numpy())
    # A D x 1 x 1 output (a pooled feature map that is not flattened) is an embedding.
    assert float(target(embedding.reshape(DIM, 1, 1))) == pytest.approx(expected, abs=1e-6)
    block = torch.stack([embedding, -embedding]).reshape(2, DIM, 1, 1)
    np.testing.assert_allclose(target(block).numpy(), [expected, -expected], atol=1e-6)


def test_clear_errors():
    with pytest.raises(ValueError, match="one embedding"):
        SimilarityToConceptTarget(vectors(2, DIM))
    with pytest.raises(ValueError, match="similarity='euclid'"):
        SimilarityToConceptTarget(vectors(DIM), similarity="euclid")
    with pytest.raises(ValueError, match=r"shape \(5,\).*size 6"):
        SimilarityToConceptTarget(vectors(DIM))(vectors(5))


def test_features_go_to_the_outputs_device_once():
    # The meta device stands in for a GPU.
    target = SimilarityToConceptTarget(np.ones(DIM, dtype=np.float64))
    output = torch.empty(DIM, device="meta")
    assert target(output).device.type == "meta"
    placed = target._placed
    assert placed.device.type == "meta" and placed.dtype == torch.float32
    target(output)
    target(torch.empty(3, DIM, device="meta"))
    assert target._placed is placed
    assert target.features.device.type == "cpu"  # the original is kept as given


def test_half_precision_output_is_scored_in_float32():
    concept = vectors(DIM, seed=11)
    embedding = vectors(DIM, seed=12).half()
    result = SimilarityToConceptTarget(concept)(embedding)
    assert result.dtype == torch.float32
    expected = cosine_by_hand(embedding.float().numpy(), concept.numpy())
    assert float(result) == pytest.approx(expected, abs=1e-6)


# --------------------------------------------------------------------- through Grad-CAM
def embedding_model() -> GapLinearNet:
    """e = W GAP(A) + b, A = features(x): an embedding of size DIM."""
    torch.manual_seed(0)
    return GapLinearNet(channels=8, classes=DIM).eval()


def closed_form_gradcam(model: GapLinearNet, x: torch.Tensor, concepts, similarity: str):
    """Grad-CAM of sim(e, c) for e = W GAP(A) + b, by hand.

    cosine: d cos / d e = c / (|e| |c|) - (e . c) e / (|e|^3 |c|); dot: d / d e = c.
    d sim / d A_k,ij = (W^T g)_k / (H W), the same at every position, so Grad-CAM's
    weights are (W^T g)_k / (H W) and the raw map is ReLU(sum_k weight_k A_k).
    """
    with torch.no_grad():
        activations = model.features(x).double()
        embeddings = model(x).double()
    weight = model.fc.weight.detach().double()
    maps = []
    for e, concept, a in zip(embeddings, concepts, activations):
        c = torch.as_tensor(concept).double()
        if similarity == "cosine":
            g = c / (e.norm() * c.norm()) - (e @ c) * e / (e.norm() ** 3 * c.norm())
        else:
            g = c
        channel_weights = weight.T @ g / (a.shape[1] * a.shape[2])
        maps.append(torch.relu(torch.einsum("k,kij->ij", channel_weights, a)))
    return torch.stack(maps)


def scaled(maps: torch.Tensor) -> np.ndarray:
    flat = maps.flatten(1)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    assert bool((high > low).all()), "the closed form's map is constant"
    return ((flat - low) / (high - low)).reshape(maps.shape).numpy()


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_gradcam_equals_the_closed_form(similarity):
    model = embedding_model()
    x = vectors(2, 3, 10, 12, seed=13)
    concepts = [vectors(DIM, seed=14), vectors(DIM, seed=15)]
    targets = [SimilarityToConceptTarget(c, similarity=similarity) for c in concepts]
    cam = GradCAM(model, [model.features])
    expected = closed_form_gradcam(model, x, concepts, similarity)
    raw = cam(x, targets=targets, scale=False, as_tensor=True)
    torch.testing.assert_close(raw.double(), expected, atol=1e-6, rtol=1e-4)
    np.testing.assert_allclose(cam(x, targets=targets), scaled(expected), atol=1e-5)


def test_gradcam_with_one_shared_target_for_the_batch():
    # One target object for every image goes through the rowwise path.
    model = embedding_model()
    x = vectors(3, 3, 10, 12, seed=16)
    concept = vectors(DIM, seed=17)
    target = SimilarityToConceptTarget(concept)
    result = GradCAM(model, [model.features])(x, targets=[target] * 3)
    expected = scaled(closed_form_gradcam(model, x, [concept] * 3, "cosine"))
    np.testing.assert_allclose(result, expected, atol=1e-5)


def test_why_two_images_look_alike_with_a_resnet_feature_extractor():
    # A ResNet with fc = Identity outputs 512-d embeddings; explain why image 0 is close
    # to a reference image's embedding.
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    model.fc = nn.Identity()
    model.eval()
    images = vectors(2, 3, 64, 64, seed=18)
    with torch.no_grad():
        reference = model(images[1:])  # 1 x 512
    target = SimilarityToConceptTarget(reference)
    cam = GradCAM(model, [model.layer4[-1]])
    result = cam(images[:1], targets=[target])
    assert result.shape == (1, 64, 64)
    assert float(result.max()) == pytest.approx(1.0)
    with torch.no_grad():
        embedding = model(images[:1])[0]
    expected = cosine_by_hand(embedding.numpy(), reference[0].numpy())
    assert float(target(cam.outputs[0])) == pytest.approx(expected, abs=1e-5)
