"""TransformerAttribution (Chefer, Gur & Wolf, ICCV 2021): the formula on attention set by
hand, and on timm, torchvision, Hugging Face ViTs and CLIP's image encoder against
attentions and gradients recorded independently."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import timm
import torch
from attention_models import (
    CASES,
    assert_unchanged,
    case_targets,
    chefer_reference,
    gradients_of,
    hand_backprop,
    hand_set_transformer,
    in_mixed_training_mode,
    logits_of,
    model_state,
    planted_vit,
    relevance_maps,
    timm_deit,
    two_object_image,
)
from conftest import GapLinearNet
from helpers import CountScalarReads

from pytorch_grad_cam import AttentionRollout, TransformerAttribution
from pytorch_grad_cam.metrics import CascadingRandomization
from pytorch_grad_cam.transformer_attribution import relevance_rollout
from pytorch_grad_cam.utils.model_state import lock_of
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget


# --------------------------------------------------------------------- the formula, directly
def test_two_hand_set_layers_roll_out_as_r_plus_abar_r():
    a1 = torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    a2 = torch.tensor([[0.2, 0.0, 0.8], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    g1 = torch.tensor([[2.0, -2.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    g2 = torch.tensor([[1.0, 1.0, 0.5], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    # Abar_1 class row: ReLU([1, -1, 0]) = [1, 0, 0]; Abar_2: [0.2, 0, 0.4].
    # R_1 = I + Abar_1 -> class row [2, 0, 0]; R_2 = R_1 + Abar_2 R_1 -> [2.4, 0, 0.4].
    relevance = relevance_rollout(
        [a1[None, None], a2[None, None]], [g1[None, None], g2[None, None]]
    )
    np.testing.assert_allclose(relevance[0, 0], [2.4, 0.0, 0.4], rtol=1e-6)
    np.testing.assert_allclose(relevance[0, 1:], torch.eye(3)[1:])
    assert relevance.dtype == torch.float32


def test_relevance_rollout_matches_the_formula_on_random_heads():
    generator = torch.Generator().manual_seed(0)
    attentions = [torch.rand(2, 3, 5, 5, generator=generator).softmax(-1) for _ in range(3)]
    gradients = [torch.randn(2, 3, 5, 5, generator=generator) for _ in range(3)]
    expected = chefer_reference(attentions, gradients)
    np.testing.assert_allclose(relevance_rollout(attentions, gradients), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="one gradient per attention"):
        relevance_rollout(attentions, gradients[:2])
    with pytest.raises(ValueError, match=r"shape \(2, 3, 5, 5\) has a gradient of shape"):
        relevance_rollout(attentions, [g[:, :2] for g in gradients])


# --------------------------------------------------------------------- attention set by hand
def test_maps_of_a_hand_set_transformer_equal_the_hand_computed_formula():
    model = hand_set_transformer()
    x = torch.randn(2, 3, 2, 3, generator=torch.Generator().manual_seed(1))  # 2 x 3 grid
    categories = [1, 3]
    attentions, gradients = hand_backprop(model, x, categories)
    class_row = chefer_reference(attentions, gradients)[:, 0]
    cam = TransformerAttribution(model, [b.attn for b in model.blocks], num_prefix_tokens=1)
    targets = [ClassifierOutputTarget(c) for c in categories]
    raw = cam(x, targets, scale=False)
    np.testing.assert_allclose(raw, class_row[:, 1:].reshape(2, 2, 3), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        cam(x, targets), relevance_maps(class_row, 1, (2, 3), (2, 3)), atol=1e-5
    )
    np.testing.assert_allclose(cam.outputs, model(x).detach())
    # targets=None: each image's top class.
    top = model(x).argmax(1).tolist()
    np.testing.assert_allclose(cam(x), cam(x, [ClassifierOutputTarget(c) for c in top]))
    assert model.classifier.grad is None and all(b.values.grad is None for b in model.blocks)


# --------------------------------------------------------------------- real architectures
@pytest.mark.parametrize("name", CASES)
def test_real_architectures_equal_an_independent_recomputation(name):
    model, first_block, size, prefix, grid, record = CASES[name]()
    model = in_mixed_training_mode(model, first_block)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))
    targets, scores_of = case_targets(name, model)

    before = model_state(model)
    cam = TransformerAttribution(model)
    maps = cam(x, targets)
    assert_unchanged(before, model_state(model))

    model.eval()
    attentions, gradients = gradients_of(scores_of, record(model, x))
    assert len(attentions) == 2
    expected = relevance_maps(
        chefer_reference([a.detach() for a in attentions], [g.detach() for g in gradients])[:, 0],
        prefix,
        grid,
        size,
    )
    assert maps.shape == (2, *size) and maps.dtype == np.float32 and np.isfinite(maps).all()
    np.testing.assert_allclose(maps, expected, atol=2e-4)
    np.testing.assert_allclose(maps.reshape(2, -1).max(1), 1.0)
    np.testing.assert_allclose(maps.reshape(2, -1).min(1), 0.0)
    with torch.no_grad():
        torch.testing.assert_close(
            logits_of(cam.outputs), logits_of(model(x)), rtol=1e-4, atol=1e-5
        )


def test_frozen_model_no_grad_caller_and_tensor_output_give_the_same_maps():
    model = timm_deit()
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(3))
    cam = TransformerAttribution(model)
    maps = cam(x)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    with torch.no_grad():
        frozen = cam(x, as_tensor=True)
    assert isinstance(frozen, torch.Tensor) and frozen.dtype == torch.float32
    np.testing.assert_allclose(frozen.numpy(), maps, atol=1e-6)
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    inference = pytest.raises(RuntimeError, match=r"cannot run inside torch.inference_mode")
    with inference, torch.inference_mode():
        cam(x)


def test_state_is_restored_when_the_forward_raises_midway():
    model = in_mixed_training_mode(timm_deit(), timm_deit().blocks[0])
    before = model_state(model)

    def fail(*args):
        raise KeyError("raised inside the model")

    handle = model.blocks[1].mlp.register_forward_pre_hook(fail)
    try:
        with pytest.raises(KeyError, match="raised inside the model"):
            TransformerAttribution(model)(torch.randn(1, 3, 32, 48))
    finally:
        handle.remove()
    assert_unchanged(before, model_state(model))


# --------------------------------------------------------------------- class sensitivity
def test_two_classes_of_a_planted_vit_give_different_maps_on_their_objects():
    """EfficientNet-Lite0 is no transformer: a random-weight timm ViT whose class 0 reads
    the red and class 1 the green patches, on an image with a red and a green square."""
    model, x = planted_vit(), two_object_image()
    cam = TransformerAttribution(model)
    red, green = cam(x, [ClassifierOutputTarget(0)]), cam(x, [ClassifierOutputTarget(1)])
    # At the centres of the 4 x 4 patches: the red square covers rows 1-2, columns 0-1.
    red, green = red[0, 4::8, 4::8], green[0, 4::8, 4::8]
    assert red[1:3, :2].min() > 0.8 and red[1:3, 2:].max() < 0.15
    assert green[1:3, 2:].min() > 0.8 and green[1:3, :2].max() < 0.15
    assert np.corrcoef(red.ravel(), green.ravel())[0, 1] < -0.3


def test_cascading_randomisation_changes_the_map_once_the_top_layers_are_reinitialised():
    """Adebayo et al.'s test on the planted ViT: re-initialising its learned (planted)
    parameters from the top down must change the map. Spearman correlation with the
    original map: 0.69 after the head, 0.24 after the last block (a pass: the map follows
    the parameters); AttentionRollout, which never reads the head, stays at 1.0."""
    model, x = planted_vit(), two_object_image()
    steps = ["head", "blocks.1", "blocks.0", "patch_embed"]
    check = CascadingRandomization(TransformerAttribution, steps=steps)
    results = check(x, [ClassifierOutputTarget(0)], model)
    correlation = {step.name: float(step.correlation[0]) for step in results}
    assert list(correlation) == ["original", *steps]
    assert correlation["original"] == pytest.approx(1.0)
    assert correlation["head"] < 0.8 and correlation["blocks.1"] < 0.4
    assert abs(correlation["patch_embed"]) < 0.4

    def rollout(copy):
        return lambda images, targets: AttentionRollout(copy)(images)

    head_only = CascadingRandomization(rollout, steps=["head"])(
        x, [ClassifierOutputTarget(0)], model
    )
    assert float(head_only[1].correlation[0]) == pytest.approx(1.0)


# --------------------------------------------------------------------- clear errors
def test_clear_errors():
    model = timm_deit()
    cam = TransformerAttribution(model)
    with pytest.raises(ValueError, match="targets has 1 entries but input_tensor has 2 images"):
        cam(torch.randn(2, 3, 32, 48), [ClassifierOutputTarget(0)])
    with pytest.raises(ValueError, match="TransformerAttribution: input_tensor must have shape"):
        cam(torch.randn(3, 32, 48))
    with pytest.raises(ValueError, match="found no attention layers in GapLinearNet"):
        TransformerAttribution(GapLinearNet())
    no_class_token = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        depth=1,
        class_token=False,
        global_pool="avg",
    )
    with pytest.raises(ValueError, match=r"no class token .*TransformerAttribution reads"):
        TransformerAttribution(no_class_token)
    with pytest.raises(TypeError, match="reshape_transform must be a callable"):
        TransformerAttribution(model, reshape_transform="vit")
    with TransformerAttribution(model) as cam:
        cam(torch.randn(1, 3, 32, 48))
        assert cam.outputs is not None
    assert cam.outputs is None


def test_one_host_read_whatever_the_batch_and_depth_and_the_models_lock_is_held():
    """The input's finiteness check is the call's only copy to the host (none per image or
    layer); another thread cannot take the model's lock while the model runs."""
    model = timm_deit(depth=4)
    held = []

    def try_lock_from_another_thread(module, args):
        thread = threading.Thread(target=lambda: held.append(not lock_of(model).acquire(False)))
        thread.start()
        thread.join()

    handle = model.blocks[0].register_forward_pre_hook(try_lock_from_another_thread)
    try:
        with CountScalarReads() as reads:
            TransformerAttribution(model)(torch.randn(3, 3, 32, 48), as_tensor=True)
    finally:
        handle.remove()
    assert reads.count == 1
    assert held == [True]


def test_a_target_per_image_in_a_batch_equals_each_image_alone_with_its_target():
    """The batch's gradients come from one backward pass of the summed scores; each
    image's map must be the one it gets alone (images are independent), here with the
    red class for one image and the green class for its mirror image."""
    model = planted_vit()
    x = torch.cat([two_object_image(), two_object_image().flip(-1)])
    targets = [ClassifierOutputTarget(0), ClassifierOutputTarget(1)]
    cam = TransformerAttribution(model)
    batch = cam(x, targets)
    alone = np.concatenate([cam(x[i : i + 1], [targets[i]]) for i in range(2)])
    np.testing.assert_allclose(batch, alone, atol=1e-6)
    # Red on the left of image 0, green on the left of the mirrored image 1: both maps
    # light the left half's patches.
    centres = batch[:, 4::8, 4::8]
    assert centres[:, 1:3, :2].min() > 0.8 and centres[:, 1:3, 2:].max() < 0.15
