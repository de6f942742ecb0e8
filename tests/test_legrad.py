"""LeGrad (Bousselham et al., ICCV 2025): the formula on attention set by hand, and on timm,
torchvision, Hugging Face ViTs and CLIP's image encoder against per-layer scores,
attentions and gradients recorded independently."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from attention_models import (
    CASES,
    FixedAttention,
    ImageEmbedding,
    assert_unchanged,
    case_targets,
    clip_model,
    gradients_of,
    hand_backprop,
    hand_set_transformer,
    in_mixed_training_mode,
    legrad_reference,
    model_state,
    planted_vit,
    relevance_maps,
    text_embedding,
    timm_deit,
    two_object_image,
)
from helpers import CountScalarReads
from torch import nn

from pytorch_grad_cam import LeGrad
from pytorch_grad_cam.legrad import LayerHeadWarning, legrad_relevance
from pytorch_grad_cam.metrics import CascadingRandomization
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputTarget,
    SimilarityToConceptTarget,
)
from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform


# --------------------------------------------------------------------- the formula, directly
def test_relevance_is_the_mean_over_layers_heads_and_queries_of_the_positive_gradient():
    first = torch.tensor([[[[1.0, -2.0], [3.0, 0.0]], [[-1.0, 1.0], [1.0, 1.0]]]])  # 2 heads
    second = torch.tensor([[[[0.0, 4.0], [0.0, -4.0]], [[2.0, 0.0], [2.0, 0.0]]]])
    # ReLU, then the mean over the 2 heads and 2 queries: [1.25, 0.5] and [1.0, 1.0].
    np.testing.assert_allclose(legrad_relevance([first, second]), [[1.125, 0.75]])
    generator = torch.Generator().manual_seed(0)
    gradients = [torch.randn(2, 3, 5, 5, generator=generator) for _ in range(3)]
    np.testing.assert_allclose(legrad_relevance(gradients), legrad_reference(gradients), rtol=1e-6)
    with pytest.raises(ValueError, match="at least one layer"):
        legrad_relevance([])
    with pytest.raises(ValueError, match=r"a gradient has shape \(2, 3, 4, 4\)"):
        legrad_relevance([gradients[0], torch.zeros(2, 3, 4, 4)])


# --------------------------------------------------------------------- attention set by hand
def test_each_layer_scored_from_its_own_tokens_equals_the_hand_computed_formula():
    model = hand_set_transformer(layers=3)
    x = torch.randn(2, 3, 2, 3, generator=torch.Generator().manual_seed(1))
    categories = [2, 0]
    targets = [ClassifierOutputTarget(c) for c in categories]
    layers = [block.attn for block in model.blocks]
    # d s_l / d A_l with s_l the logit read from layer l's own tokens.
    gradients = [hand_backprop(model, x, categories, read_at=k)[1][k] for k in range(3)]
    cam = LeGrad(model, layers, layer_head=model.head)
    assert cam.blocks == list(model.blocks)
    raw = cam(x, targets, scale=False)
    expected = legrad_reference(gradients)
    np.testing.assert_allclose(raw, expected[:, 1:].reshape(2, 2, 3), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(
        cam(x, targets), relevance_maps(expected, 1, (2, 3), (2, 3)), atol=1e-5
    )
    # Only the class token's row of d s_l / d A_l is non-zero: s_l reads the class token.
    assert all(np.abs(g[:, :, 1:]).max() == 0 for g in gradients)

    # layer_head=None: every layer's attention differentiated by the final logit.
    _, final = hand_backprop(model, x, categories)
    cam = LeGrad(model, layers, layer_head=None)
    raw = cam(x, targets, scale=False)
    np.testing.assert_allclose(
        raw, legrad_reference(final)[:, 1:].reshape(2, 2, 3), rtol=1e-5, atol=1e-8
    )
    assert not np.allclose(legrad_reference(final), expected)

    # "auto" knows no head for this model: it warns and does as layer_head=None.
    with pytest.warns(LayerHeadWarning, match="knows no head for HandSetTransformer"):
        auto = LeGrad(model, layers)
    assert auto.layer_head is None and auto.blocks == []
    np.testing.assert_allclose(auto(x, targets, scale=False), raw)


# --------------------------------------------------------------------- real architectures
@pytest.mark.parametrize("name", CASES)
def test_real_architectures_equal_an_independent_recomputation(name):
    model, first_block, size, prefix, grid, record = CASES[name]()
    model = in_mixed_training_mode(model, first_block)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))
    targets, scores_of = case_targets(name, model)
    before = model_state(model)
    cam = LeGrad(model)
    maps = cam(x, targets)
    with torch.no_grad():
        raw = cam(x, targets, scale=False, as_tensor=True)
    assert_unchanged(before, model_state(model))

    model.eval()
    recording = record(model, x)
    output, attentions, tokens, head = recording
    # The head found for the model reads the last block's tokens as the model's output.
    torch.testing.assert_close(cam.layer_head(tokens[-1]), head(tokens[-1]))
    scored = output.logits if hasattr(output, "logits") else output
    torch.testing.assert_close(head(tokens[-1]), scored)
    assert len(cam.blocks) >= 2
    _, gradients = gradients_of(scores_of, recording, per_layer_head=True)
    expected = legrad_reference([g.detach() for g in gradients])
    assert maps.shape == (2, *size) and maps.dtype == np.float32 and np.isfinite(maps).all()
    np.testing.assert_allclose(maps, relevance_maps(expected, prefix, grid, size), atol=2e-4)
    expected_raw = relevance_maps(expected, prefix, grid, size, scale=False)
    np.testing.assert_allclose(raw.numpy(), expected_raw, rtol=1e-4, atol=1e-6 * expected_raw.max())
    np.testing.assert_allclose(maps.reshape(2, -1).max(1), 1.0)
    # Not the attention-weighted rule: the gradient alone is the signal.
    assert not np.allclose(expected, 0)


def test_reshape_transform_spelled_out_equals_the_inferred_grid_and_frozen_models_work():
    model = timm_deit()
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(3))
    inferred = LeGrad(model)(x)
    transform = functools.partial(vit_reshape_transform, height=2, width=3)
    np.testing.assert_allclose(LeGrad(model, reshape_transform=transform)(x), inferred)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    np.testing.assert_allclose(LeGrad(model)(x), inferred, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())
    inference = pytest.raises(RuntimeError, match=r"LeGrad cannot run inside torch.inference_mode")
    with inference, torch.inference_mode():
        LeGrad(model)(x)
    bad = functools.partial(vit_reshape_transform, height=1, width=6)
    with pytest.raises(ValueError, match=r"LeGrad: reshape_transform turned the relevance"):
        LeGrad(model, reshape_transform=lambda t: bad(t)[:, :, 0])(x)


# --------------------------------------------------------------------- class sensitivity
def test_two_classes_of_a_planted_vit_give_different_maps_on_their_objects():
    """EfficientNet-Lite0 is no transformer: a random-weight timm ViT whose class 0 reads
    the red and class 1 the green patches, on an image with a red and a green square."""
    model, x = planted_vit(), two_object_image()
    cam = LeGrad(model)
    red, green = cam(x, [ClassifierOutputTarget(0)]), cam(x, [ClassifierOutputTarget(1)])
    red, green = red[0, 4::8, 4::8], green[0, 4::8, 4::8]  # the 4 x 4 patches' centres
    assert red[1:3, :2].min() > 0.8 and red[1:3, 2:].max() < 0.15
    assert green[1:3, 2:].min() > 0.8 and green[1:3, :2].max() < 0.15


def test_cascading_randomisation_changes_the_map_once_the_top_layers_are_reinitialised():
    """Adebayo et al.'s test on the planted ViT: Spearman correlation with the original
    map 0.69 after re-initialising the head, 0.23 after the last block (a pass)."""
    model, x = planted_vit(), two_object_image()
    steps = ["head", "blocks.1", "blocks.0", "patch_embed"]
    results = CascadingRandomization(LeGrad, steps=steps)(x, [ClassifierOutputTarget(0)], model)
    correlation = {step.name: float(step.correlation[0]) for step in results}
    assert list(correlation) == ["original", *steps]
    assert correlation["original"] == pytest.approx(1.0)
    assert correlation["head"] < 0.8 and correlation["blocks.1"] < 0.4
    assert abs(correlation["patch_embed"]) < 0.5


# --------------------------------------------------------------------- clear errors
class TwiceAttention(nn.Module):
    def __init__(self):
        super().__init__()
        model = hand_set_transformer(layers=1)
        self.blocks = model.blocks
        self.model = model

    def forward(self, x):
        tokens = self.model.tokens(x)
        tokens = self.blocks[0](self.blocks[0](tokens))
        return self.model.head(tokens)


def test_clear_errors():
    model = hand_set_transformer(layers=1)
    layers = [model.blocks[0].attn]
    with pytest.raises(ValueError, match="layer_head must be 'auto', a callable"):
        LeGrad(model, layers, layer_head="final")
    with pytest.raises(TypeError, match="layer_head must be 'auto', a callable"):
        LeGrad(model, layers, layer_head=3)

    class Flat(nn.Module):  # the attention is itself the item of the Sequential
        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(FixedAttention(torch.eye(7)[None]))

    flat = Flat()
    with pytest.raises(ValueError, match=r"cannot tell which block attention_layers\[0\]"):
        LeGrad(flat, list(flat.layers), layer_head=lambda t: t[:, 0])
    twice = TwiceAttention()
    cam = LeGrad(twice, [twice.blocks[0].attn], layer_head=twice.model.head)
    with pytest.raises(ValueError, match=r"ran 2 times in one forward pass"):
        cam(torch.randn(1, 3, 2, 3), [ClassifierOutputTarget(0)])
    with LeGrad(twice, [twice.blocks[0].attn], layer_head=None) as cam:
        assert cam(torch.randn(1, 3, 2, 3), [ClassifierOutputTarget(0)]).shape == (1, 2, 3)
        assert cam.outputs.shape == (1, 4)
    assert cam.outputs is None


def test_one_host_read_whatever_the_batch_and_depth_and_two_prompts_differ():
    model = timm_deit(depth=4)
    with CountScalarReads() as reads:
        LeGrad(model)(torch.randn(3, 3, 32, 48), as_tensor=True)
    assert reads.count == 1  # the input's finiteness check; none per image or layer
    clip = ImageEmbedding(clip_model())
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    cat, cup = (text_embedding(clip.clip, ids) for ids in ([0, 5, 7, 1], [0, 42, 17, 1]))
    cam = LeGrad(clip)
    maps = [cam(x, [SimilarityToConceptTarget(concept)]) for concept in (cat, cup)]
    assert np.abs(maps[0] - maps[1]).mean() > 0.05


def test_a_target_per_image_in_a_batch_equals_each_image_alone_with_its_target():
    """One backward pass per layer for the whole batch; each image's map is the one it
    gets alone: on CLIP with a different text prompt per image, and on the planted ViT
    with the red class for one image and the green class for its mirror image."""
    clip = ImageEmbedding(clip_model())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    prompts = [text_embedding(clip.clip, ids) for ids in ([0, 5, 7, 1], [0, 42, 17, 1])]
    targets = [SimilarityToConceptTarget(prompt) for prompt in prompts]
    cam = LeGrad(clip)
    batch = cam(x, targets)
    alone = np.concatenate([cam(x[i : i + 1], [targets[i]]) for i in range(2)])
    np.testing.assert_allclose(batch, alone, atol=1e-5)
    swapped = cam(x, targets[::-1])
    assert np.abs(swapped - batch).mean() > 0.05  # the prompt, not the slot, decides

    model = planted_vit()
    x = torch.cat([two_object_image(), two_object_image().flip(-1)])
    targets = [ClassifierOutputTarget(0), ClassifierOutputTarget(1)]
    cam = LeGrad(model)
    batch = cam(x, targets)
    alone = np.concatenate([cam(x[i : i + 1], [targets[i]]) for i in range(2)])
    np.testing.assert_allclose(batch, alone, atol=1e-6)
    centres = batch[:, 4::8, 4::8]
    assert centres[:, 1:3, :2].min() > 0.8 and centres[:, 1:3, 2:].max() < 0.15
