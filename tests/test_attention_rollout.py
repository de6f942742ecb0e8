"""Attention Rollout: the formula on hand-set attentions, and the attentions it captures
from timm, torchvision and Hugging Face ViTs checked against independent recomputations."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from attention_models import FixedAttention, assert_unchanged, model_state
from conftest import GapLinearNet
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer
from transformers import ViTConfig, ViTForImageClassification

from pytorch_grad_cam.attention_rollout import AttentionRollout, _patch_grid, rollout


# --------------------------------------------------------------------- the formula, directly
def reference_rollout(attentions, head_fusion="mean", discard_ratio=0.0) -> np.ndarray:
    """R = Â_L ... Â_1 with Â = (A + I) / rowsum, per image, in float64 numpy."""
    attentions = [np.asarray(a, dtype=np.float64) for a in attentions]
    batch, _, n, _ = attentions[0].shape
    result = np.stack([np.eye(n)] * batch)
    for attention in attentions:
        fused = {"mean": np.mean, "max": np.max, "min": np.min}[head_fusion](attention, axis=1)
        for image in fused:
            flat = image.reshape(-1)  # a view: zeroing it zeroes the image's matrix
            count = int(flat.size * discard_ratio)
            flat[1 + np.argsort(flat[1:])[:count]] = 0.0  # never [0, 0], the class token's own
        residual = fused + np.eye(n)
        result = (residual / residual.sum(axis=-1, keepdims=True)) @ result
    return result


def random_attentions(layers, batch, heads, n, seed=0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (3 * torch.randn(batch, heads, n, n, generator=generator)).softmax(-1)
        for _ in range(layers)
    ]


def test_rollout_of_two_hand_set_layers_is_the_product_first_layer_rightmost():
    first = torch.tensor([[0.2, 0.8, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    second = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    # (A + I) / 2: first -> [0.6, 0.4, 0], second -> [0.5, 0, 0.5] in the class row.
    joint = rollout([first[None, None], second[None, None]])
    np.testing.assert_allclose(joint[0, 0], [0.3, 0.2, 0.5], atol=1e-7)
    reversed_order = rollout([second[None, None], first[None, None]])
    np.testing.assert_allclose(reversed_order[0, 0], [0.3, 0.4, 0.3], atol=1e-7)
    assert joint.dtype == torch.float32 and joint.shape == (1, 3, 3)


@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("discard_ratio", [0.0, 0.5, 0.9])
def test_rollout_matches_the_formula_on_random_attentions(head_fusion, discard_ratio):
    attentions = random_attentions(layers=3, batch=2, heads=3, n=5)
    joint = rollout(attentions, head_fusion, discard_ratio)
    expected = reference_rollout(attentions, head_fusion, discard_ratio)
    np.testing.assert_allclose(joint.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(joint.sum(-1).numpy(), 1.0, atol=1e-6)  # rows stay stochastic


def test_head_fusion_mean_max_min_give_the_defined_rows():
    identity_rows = [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    heads = torch.tensor([[[0.8, 0.1, 0.1], *identity_rows], [[0.2, 0.4, 0.4], *identity_rows]])
    attentions = [heads[None]]
    expected = {
        "mean": [0.75, 0.125, 0.125],  # ([0.5, 0.25, 0.25] + e0) / 2
        "max": [1.8 / 2.6, 0.4 / 2.6, 0.4 / 2.6],  # ([0.8, 0.4, 0.4] + e0) / 2.6
        "min": [1.2 / 1.4, 0.1 / 1.4, 0.1 / 1.4],  # ([0.2, 0.1, 0.1] + e0) / 1.4
    }
    for head_fusion, row in expected.items():
        joint = rollout(attentions, head_fusion)
        np.testing.assert_allclose(joint[0, 0], row, rtol=1e-6)
        np.testing.assert_allclose(joint[0, 1:], torch.eye(3)[1:], atol=1e-7)


def test_discard_ratio_zeroes_each_images_lowest_entries_but_never_the_class_tokens_own():
    fused = torch.tensor(
        [
            # lowest: [0, 0] = 0.04 (kept), then 0.09, 0.12, 0.21
            [[0.04, 0.61, 0.35], [0.12, 0.30, 0.58], [0.21, 0.70, 0.09]],
            # lowest: 0.15, 0.20, 0.25
            [[0.50, 0.20, 0.30], [0.45, 0.40, 0.15], [0.33, 0.25, 0.42]],
        ]
    )
    kept = torch.tensor(
        [
            [[0.04, 0.61, 0.35], [0.00, 0.30, 0.58], [0.00, 0.70, 0.00]],
            [[0.50, 0.00, 0.30], [0.45, 0.40, 0.00], [0.33, 0.00, 0.42]],
        ]
    )
    residual = kept + torch.eye(3)
    expected = residual / residual.sum(-1, keepdim=True)
    joint = rollout([fused[:, None]], discard_ratio=0.34)  # int(9 * 0.34) = 3 entries
    np.testing.assert_allclose(joint, expected, rtol=1e-6)
    # Fewer than one entry to discard: as without discarding.
    unchanged = rollout([fused[:, None]], discard_ratio=0.1)
    np.testing.assert_allclose(unchanged, rollout([fused[:, None]]))


# --------------------------------------------------------------------- injected attentions
class InjectedModel(nn.Module):
    """A class token, then one token per ``patch x patch`` patch (its mean); each layer
    mixes the tokens with its injected attention (plus the residual)."""

    def __init__(self, probabilities: list[torch.Tensor], patch: int = 1):
        super().__init__()
        self.patch = patch
        self.layers = nn.ModuleList(FixedAttention(p) for p in probabilities)
        self.unused = FixedAttention(probabilities[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = F.avg_pool2d(x, self.patch).flatten(2).transpose(1, 2)
        tokens = torch.cat([torch.zeros_like(tokens[:, :1]), tokens], dim=1)
        for layer in self.layers:
            tokens = tokens + layer(tokens).mean(dim=1) @ tokens
        return tokens[:, 0]


@pytest.mark.parametrize("head_fusion", ["mean", "max"])
def test_rollout_maps_of_injected_attentions_equal_the_formula(head_fusion):
    probabilities = [a[0] for a in random_attentions(layers=2, batch=1, heads=2, n=7, seed=3)]
    model = InjectedModel(probabilities)
    x = torch.randn(2, 3, 2, 3)  # 2 x 3 pixels: a non-square 2 x 3 patch grid
    cam = AttentionRollout(model, list(model.layers), head_fusion, discard_ratio=0.2)
    class_row = reference_rollout(
        [p[None].expand(2, -1, -1, -1) for p in probabilities], head_fusion, 0.2
    )[:, 0, 1:]
    raw = cam(x, scale=False)
    np.testing.assert_allclose(raw, class_row.reshape(2, 2, 3), rtol=1e-5)
    low, high = class_row.min(1, keepdims=True), class_row.max(1, keepdims=True)
    scaled = ((class_row - low) / (high - low)).reshape(2, 2, 3)
    maps = cam(x)
    assert maps.dtype == np.float32 and maps.shape == (2, 2, 3)
    np.testing.assert_allclose(maps, scaled, atol=1e-5)
    np.testing.assert_allclose(cam.outputs, model(x))


def test_maps_are_resized_bilinearly_to_the_input():
    probabilities = [a[0] for a in random_attentions(layers=2, batch=1, heads=2, n=7, seed=4)]
    model = InjectedModel(probabilities, patch=4)  # a 2 x 3 grid of 4 x 4 patches
    cam = AttentionRollout(model, list(model.layers))
    maps = cam(torch.randn(1, 3, 8, 12), scale=False, as_tensor=True)
    class_row = torch.from_numpy(reference_rollout([p[None] for p in probabilities]))[:, 0, 1:]
    grid = class_row.float().reshape(1, 1, 2, 3)
    expected = F.interpolate(grid, size=(8, 12), mode="bilinear", align_corners=False)[:, 0]
    assert isinstance(maps, torch.Tensor) and maps.dtype == torch.float32
    torch.testing.assert_close(maps, expected)


# --------------------------------------------------------------------- model state
def in_mixed_training_mode(model: nn.Module, blocks) -> nn.Module:
    """Training mode but for the first block: every module's flag must come back."""
    model.train()
    blocks(model)[0].eval()
    return model


# --------------------------------------------------------------------- timm
def timm_vit(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(pretrained=False, depth=2, **kwargs)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(8)  # sharper than random init's near-uniform attention
    return model


def timm_attentions(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """softmax(q k^T * scale) from each block's qkv, the blocks run with fused attention."""
    attentions = []
    with torch.no_grad():
        tokens = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        for block in model.blocks:
            attn = block.attn
            batch, n, _ = tokens.shape
            qkv = attn.qkv(block.norm1(tokens)).reshape(batch, n, 3, attn.num_heads, -1)
            q, k, _ = qkv.permute(2, 0, 3, 1, 4)
            q, k = attn.q_norm(q), attn.k_norm(k)
            attentions.append((q @ k.transpose(-2, -1) * attn.scale).softmax(dim=-1))
            tokens = block(tokens)
    return attentions


def class_row_maps(attentions, prefix, grid, size, head_fusion="mean", discard_ratio=0.0):
    joint = torch.from_numpy(reference_rollout(attentions, head_fusion, discard_ratio)).float()
    maps = joint[:, 0, prefix:].reshape(-1, *grid)[:, None]
    maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)[:, 0]
    low = maps.flatten(1).min(1).values[:, None, None]
    high = maps.flatten(1).max(1).values[:, None, None]
    return ((maps - low) / (high - low)).numpy()


@pytest.mark.parametrize(
    "name, size, prefix",
    [
        ("deit_tiny_patch16_224", (48, 96), 1),  # non-square: a 3 x 6 grid
        ("deit_tiny_distilled_patch16_224", (64, 64), 2),  # class + distillation tokens
        ("vit_small_patch14_reg4_dinov2", (56, 42), 5),  # class + 4 register tokens
    ],
)
def test_timm_vits(name, size, prefix):
    model = in_mixed_training_mode(timm_vit(model_name=name, img_size=size), lambda m: m.blocks)
    x = torch.randn(2, 3, *size)
    cam = AttentionRollout(model, head_fusion="max", discard_ratio=0.5)
    assert cam.num_prefix_tokens == prefix
    assert cam.attention_layers == [block.attn for block in model.blocks]
    before = model_state(model)
    attentions = cam.attentions(x)
    maps = cam(x)
    assert_unchanged(before, model_state(model))

    model.eval()
    expected_attentions = timm_attentions(model, x)
    assert len(attentions) == len(expected_attentions) == 2
    for got, expected in zip(attentions, expected_attentions):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    patch = model.patch_embed.patch_size
    grid = (size[0] // patch[0], size[1] // patch[1])
    expected_maps = class_row_maps(expected_attentions, prefix, grid, size, "max", 0.5)
    assert maps.shape == (2, *size) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, expected_maps, atol=1e-4)
    np.testing.assert_allclose(maps.max(axis=(1, 2)), 1.0)
    np.testing.assert_allclose(maps.min(axis=(1, 2)), 0.0)
    with torch.no_grad():
        torch.testing.assert_close(cam.outputs, model(x), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------- torchvision
def torchvision_vit() -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    )
    with torch.no_grad():
        for layer in model.encoder.layers:
            layer.self_attention.in_proj_weight.mul_(4)
    return model


def torchvision_attentions(model: VisionTransformer, x: torch.Tensor) -> list[torch.Tensor]:
    attentions = []
    with torch.no_grad():
        tokens = model._process_input(x)
        tokens = torch.cat([model.class_token.expand(len(x), -1, -1), tokens], dim=1)
        tokens = tokens + model.encoder.pos_embedding
        for layer in model.encoder.layers:
            mha = layer.self_attention
            normed = layer.ln_1(tokens)
            q, k, _ = F.linear(normed, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
            q, k = (t.unflatten(-1, (mha.num_heads, -1)).transpose(1, 2) for t in (q, k))
            attentions.append((q @ k.transpose(-2, -1) / math.sqrt(mha.head_dim)).softmax(-1))
            tokens = layer(tokens)
    return attentions


def test_torchvision_vit():
    model = in_mixed_training_mode(torchvision_vit(), lambda m: m.encoder.layers)
    x = torch.randn(2, 3, 32, 32)
    cam = AttentionRollout(model, head_fusion="min")
    assert cam.attention_layers == [layer.self_attention for layer in model.encoder.layers]
    before = model_state(model)
    attentions = cam.attentions(x)
    maps = cam(x, as_tensor=True)
    assert_unchanged(before, model_state(model))

    model.eval()
    expected_attentions = torchvision_attentions(model, x)
    assert len(attentions) == len(expected_attentions) == 2
    for got, expected in zip(attentions, expected_attentions):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    expected_maps = class_row_maps(expected_attentions, 1, (4, 4), (32, 32), "min")
    assert isinstance(maps, torch.Tensor) and maps.dtype == torch.float32
    np.testing.assert_allclose(maps.numpy(), expected_maps, atol=1e-4)
    assert maps.amax(dim=(1, 2)).tolist() == [1.0, 1.0]
    with torch.no_grad():
        torch.testing.assert_close(cam.outputs, model(x), rtol=1e-4, atol=1e-5)


class CallsAttentionThreeWays(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x: torch.Tensor):
        tokens = x.flatten(2).transpose(1, 2)
        _, nothing = self.attn(tokens, tokens, tokens, need_weights=False)
        _, averaged = self.attn(tokens, tokens, tokens)
        _, per_head = self.attn(tokens, tokens, tokens, None, True, None, False)
        return nothing, averaged, per_head


def test_multihead_attention_callers_get_what_they_asked_for():
    torch.manual_seed(0)
    model = CallsAttentionThreeWays().eval()
    x = torch.randn(2, 4, 2, 2)
    cam = AttentionRollout(model)
    attentions = cam.attentions(x)
    nothing, averaged, per_head = cam.outputs
    expected = model(x)
    assert nothing is None and expected[0] is None
    assert averaged.shape == (2, 4, 4) and per_head.shape == (2, 2, 4, 4)
    torch.testing.assert_close(averaged, expected[1])
    torch.testing.assert_close(per_head, expected[2])
    assert len(attentions) == 3  # one per call, in call order
    for attention in attentions:
        torch.testing.assert_close(attention, expected[2])


# --------------------------------------------------------------------- Hugging Face
def hugging_face_vit() -> ViTForImageClassification:
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=64,
        patch_size=16,
        num_labels=10,
    )
    model = ViTForImageClassification(config)
    assert model.config._attn_implementation == "sdpa"
    return model


def test_hugging_face_vit():
    model = in_mixed_training_mode(hugging_face_vit(), lambda m: m.vit.layers)
    x = torch.randn(2, 3, 64, 64)
    cam = AttentionRollout(model, discard_ratio=0.3)
    before = model_state(model)
    attentions = cam.attentions(x)
    maps = cam(x)
    assert_unchanged(before, model_state(model))
    assert model.config._attn_implementation == "sdpa"

    # transformers 5 installs hooks of its own, for good, on a model asked for
    # output_attentions=True: AttentionRollout never asks.
    assert not hasattr(model, "_output_capturing_hooks_installed")
    eager = copy.deepcopy(model).eval()
    eager.config._attn_implementation = "eager"
    with torch.no_grad():
        expected = eager(x, output_attentions=True)
    assert len(attentions) == len(expected.attentions) == 2
    for got, want in zip(attentions, expected.attentions):
        torch.testing.assert_close(got, want)
    expected_maps = class_row_maps(expected.attentions, 1, (4, 4), (64, 64), discard_ratio=0.3)
    np.testing.assert_allclose(maps, expected_maps, atol=1e-4)
    np.testing.assert_allclose(maps.max(axis=(1, 2)), 1.0)
    torch.testing.assert_close(cam.outputs.logits, expected.logits, rtol=1e-4, atol=1e-5)

    # The attention modules given by hand (they return (output, probabilities)): same maps.
    layers = [layer.attention for layer in model.vit.layers]
    np.testing.assert_allclose(AttentionRollout(model, layers, discard_ratio=0.3)(x), maps)
    assert_unchanged(before, model_state(model))


# --------------------------------------------------------------------- errors midway
@pytest.mark.parametrize(
    "make, second_block, size",
    [
        (lambda: timm_vit(model_name="deit_tiny_patch16_224", img_size=32), "blocks.1", 32),
        (torchvision_vit, "encoder.layers.encoder_layer_1.mlp", 32),
        (hugging_face_vit, "vit.layers.1.mlp", 64),
    ],
)
def test_model_state_is_restored_when_the_forward_raises_after_an_attention(
    make, second_block, size
):
    model = in_mixed_training_mode(make(), lambda m: [m.get_submodule(second_block)])
    before = model_state(model)

    def fail(*args):
        raise KeyError("raised inside the model")

    handle = model.get_submodule(second_block).register_forward_pre_hook(fail)
    try:
        with pytest.raises(KeyError, match="raised inside the model"):
            AttentionRollout(model)(torch.randn(1, 3, size, size))
    finally:
        handle.remove()
    assert_unchanged(before, model_state(model))


def test_context_manager_releases_the_output_and_never_swallows_an_exception():
    model = timm_vit(model_name="deit_tiny_patch16_224", img_size=32)
    with AttentionRollout(model) as cam:
        cam(torch.randn(1, 3, 32, 32))
        assert cam.outputs is not None
    assert cam.outputs is None
    with pytest.raises(ValueError, match="B x C x H x W"), AttentionRollout(model) as cam:
        cam(torch.randn(3, 32, 32))


# --------------------------------------------------------------------- clear errors
@pytest.mark.parametrize("head_fusion", ["median", "MEAN", None, ["mean"]])
def test_unknown_head_fusion(head_fusion):
    message = r"head_fusion must be one of 'mean', 'max', 'min'"
    with pytest.raises(ValueError, match=message):
        rollout(random_attentions(1, 1, 2, 3), head_fusion=head_fusion)
    with pytest.raises(ValueError, match=message):
        AttentionRollout(torchvision_vit(), head_fusion=head_fusion)


@pytest.mark.parametrize("discard_ratio", [1.0, -0.1, 1.5, True, "0.5", None])
def test_discard_ratio_outside_zero_one(discard_ratio):
    message = r"discard_ratio must be a number in \[0, 1\)"
    with pytest.raises(ValueError, match=message):
        rollout(random_attentions(1, 1, 2, 3), discard_ratio=discard_ratio)
    with pytest.raises(ValueError, match=message):
        AttentionRollout(torchvision_vit(), discard_ratio=discard_ratio)


def test_rollout_rejects_attentions_that_are_not_b_heads_n_n():
    with pytest.raises(ValueError, match="attentions is empty"):
        rollout([])
    with pytest.raises(ValueError, match=r"attentions\[0\] has shape \(2, 3, 3\)"):
        rollout([torch.rand(2, 3, 3)])
    with pytest.raises(ValueError, match=r"attentions\[1\] has shape \(1, 2, 4, 4\) but"):
        rollout([torch.rand(1, 2, 3, 3), torch.rand(1, 2, 4, 4)])


def test_a_model_without_attention_layers():
    message = "found no attention layers in GapLinearNet.*Pass attention_layers="
    with pytest.raises(ValueError, match=message):
        AttentionRollout(GapLinearNet())


def test_tokens_that_do_not_form_a_grid_name_num_prefix_tokens():
    model = timm_vit(model_name="deit_tiny_patch16_224", img_size=(48, 96))
    cam = AttentionRollout(model, num_prefix_tokens=2)  # 1 + 18 tokens: 17 are no 3 x 6 grid
    message = r"19 tokens do not form a patch grid of an image of 48 x 96 after dropping 2 "
    with pytest.raises(ValueError, match=message):
        cam(torch.randn(1, 3, 48, 96))
    model = InjectedModel([a[0] for a in random_attentions(1, 1, 1, 7)])
    with pytest.raises(ValueError, match="7 tokens do not form a patch grid"):
        AttentionRollout(model, list(model.layers), num_prefix_tokens=2)(torch.randn(1, 3, 2, 3))
    # 6 tokens of a 2 x 3 image are a grid with no class token before it.
    with pytest.raises(ValueError, match="2 x 3 patch grid with no class token"):
        _patch_grid(6, None, (1, 3, 2, 3))


def test_attention_layers_must_be_modules_of_the_model_that_run():
    model = InjectedModel([a[0] for a in random_attentions(1, 1, 1, 7)])
    with pytest.raises(ValueError, match=r"attention_layers\[0\] \(Linear\) is not a submodule"):
        AttentionRollout(model, [nn.Linear(2, 2)])
    with pytest.raises(TypeError, match=r"pass attention_layers=\[layer\]"):
        AttentionRollout(model, model.layers[0])
    cam = AttentionRollout(model, [model.layers[0], model.unused])
    message = r"attention_layers\[1\] \(FixedAttention\) recorded no attention"
    with pytest.raises(ValueError, match=message):
        cam(torch.randn(1, 3, 2, 3))
    cam = AttentionRollout(model, [model])  # outputs B x 3 tokens, not probabilities
    with pytest.raises(ValueError, match=r"expected probabilities of shape B x heads x N x N"):
        cam(torch.randn(1, 3, 2, 3))


def test_prefix_tokens_must_include_a_class_token():
    with pytest.raises(ValueError, match="num_prefix_tokens must be >= 1"):
        AttentionRollout(torchvision_vit(), num_prefix_tokens=0)
    model = timm_vit(
        model_name="vit_tiny_patch16_224", img_size=32, class_token=False, global_pool="avg"
    )
    with pytest.raises(ValueError, match=r"has no class token \(model.cls_token is None\)"):
        AttentionRollout(model)
