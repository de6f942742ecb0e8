"""ReciproCAM and GScoreCAM on hand-set features (the map written down in the test), and
on real architectures built from configs: ViT-ReciproCAM on timm's, torchvision's and
Hugging Face's vision transformers and on CLIP's image encoder (text prompts as targets)
against a reference that runs the whole model once per mask, GScoreCAM on the same ViTs
against ScoreCAM, and both methods on CNNs: shape, finite, [0, 1]."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from helpers import seeded
from torch import nn

from pytorch_grad_cam import GScoreCAM, ReciproCAM, ScoreCAM
from pytorch_grad_cam.tail_runs import TAIL_PATH
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    SimilarityToConceptTarget,
)
from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform


class FeaturesHead(nn.Module):
    """The input *is* the target layer's features (an identity layer), then global
    average pooling and a linear head whose weights the test sets."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0]).double()
        with torch.no_grad():
            self.fc.weight.copy_(weight)
            self.fc.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


# --------------------------------------------------------------------- hand-set features
#: Two channels on a 5 x 5 grid, each 0 but for one hot spot; class c reads channel c.
HOT = {0: (1, 1), 1: (3, 3)}


def hot_spots() -> torch.Tensor:
    features = torch.zeros(1, 2, 5, 5, dtype=torch.float64)
    for channel, (row, column) in HOT.items():
        features[0, channel, row, column] = 4.0
    return features


IDENTITY_HEAD = (torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("category", [0, 1])
def test_recipro_cam_on_a_hot_spot_is_the_gaussian_kernel_placed_on_it(category):
    # S(p) = w_c . mean(A * M_p) = 4 G(hot - p) / 25: keeping p's neighbourhood sees the
    # hot spot with the kernel's weight at the offset; scaled, the kernel over its centre
    # value: 1 on the spot, 1/2 beside it, 1/4 on its diagonals, 0 farther away.
    model = FeaturesHead(*IDENTITY_HEAD).eval()
    x = hot_spots()
    cam = ReciproCAM(model, [model.features])
    maps = cam(x, [ClassifierOutputTarget(category)], as_tensor=True)
    row, column = HOT[category]
    expected = torch.zeros(1, 5, 5)
    expected[0, row - 1 : row + 2, column - 1 : column + 2] = torch.tensor(
        [[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]]
    )
    assert cam.tail_paths == [TAIL_PATH]
    torch.testing.assert_close(maps, expected, rtol=0, atol=1e-6)
    # Unscaled: the score itself (its minimum, far from the spot, is the bias: 0).
    raw = cam(x, [ClassifierOutputTarget(category)], scale=False, as_tensor=True)
    torch.testing.assert_close(raw, expected * 4 / 16 * 4 / 25, rtol=0, atol=1e-7)
    # The position mask: the hot spot alone.
    alone = ReciproCAM(model, [model.features], mask="position")(
        x, [ClassifierOutputTarget(category)], as_tensor=True
    )
    torch.testing.assert_close(alone, (expected == 1).float(), rtol=0, atol=1e-6)


def test_recipro_cam_softmax_score_on_two_hot_spots():
    # The paper's score: class 0's probability, sigmoid(z0 - z1) with
    # z_c = 4 G(hot_c - p) / 25. Written out per position.
    model = FeaturesHead(*IDENTITY_HEAD).eval()
    kernel = {(-1, -1): 1, (-1, 0): 2, (-1, 1): 1, (0, -1): 2, (0, 0): 4}
    kernel.update({(-a, -b): v for (a, b), v in list(kernel.items())})

    def seen(hot, row, column):
        return 4.0 * kernel.get((hot[0] - row, hot[1] - column), 0) / 16 / 25

    expected = torch.tensor(
        [
            [1 / (1 + math.exp(seen(HOT[1], r, c) - seen(HOT[0], r, c))) for c in range(5)]
            for r in range(5)
        ]
    )
    expected = (expected - expected.min())[None].float()
    raw = ReciproCAM(model, [model.features])(
        hot_spots(), [ClassifierOutputSoftmaxTarget(0)], scale=False, as_tensor=True
    )
    assert expected.max() > 1e-3
    torch.testing.assert_close(raw, expected, rtol=0, atol=1e-7)


def test_gscore_cam_on_hand_set_features_keeps_the_top_gradient_channels():
    # Features = the input, 3 channels; the gradient of logit c by channel k is
    # w_ck / P everywhere, so the top-2 channels of class 0 are 0 and 2 (w = 3, 1),
    # not 1 (w = -2). ScoreCAM on them: S^k = b_0 + sum_j w_0j mean(X^j s(X^k)).
    features = torch.tensor(
        [
            [[1.0, 2.0, 0.0], [0.0, 3.0, 1.0], [2.0, 0.0, 0.0]],
            [[0.0, 1.0, 4.0], [1.0, 0.0, 0.0], [0.0, 2.0, 1.0]],
            [[2.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 3.0]],
        ],
        dtype=torch.float64,
    )
    weight = torch.tensor([[3.0, -2.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    bias = torch.tensor([0.5, 0.0], dtype=torch.float64)
    model = FeaturesHead(weight, bias).eval()

    def normalised(channel):
        return (channel - channel.min()) / (channel.max() - channel.min())

    scores = {
        k: float(
            bias[0]
            + sum(weight[0, j] * (features[j] * normalised(features[k])).mean() for j in range(3))
        )
        for k in (0, 2)
    }
    total = sum(math.exp(s) for s in scores.values())
    expected = torch.relu(sum(math.exp(scores[k]) / total * features[k] for k in (0, 2)))[
        None
    ].float()
    x = features[None]
    got = GScoreCAM(model, [model.features], topk=2)(
        x, [ClassifierOutputTarget(0)], scale=False, as_tensor=True
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # The channel of negative weight is what a ranking by |gradient| keeps instead of 2.
    scores_abs = {
        k: float(
            bias[0]
            + sum(weight[0, j] * (features[j] * normalised(features[k])).mean() for j in range(3))
        )
        for k in (0, 1)
    }
    total = sum(math.exp(s) for s in scores_abs.values())
    expected_abs = torch.relu(sum(math.exp(scores_abs[k]) / total * features[k] for k in (0, 1)))[
        None
    ].float()
    got_abs = GScoreCAM(model, [model.features], topk=2, absolute_gradients=True)(
        x, [ClassifierOutputTarget(0)], scale=False, as_tensor=True
    )
    torch.testing.assert_close(got_abs, expected_abs, rtol=0, atol=1e-6)
    assert (got_abs - got).abs().max() > 0.1


# --------------------------------------------------------------------- vision transformers
def timm_deit() -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2, num_classes=5
    )


def torchvision_vit() -> nn.Module:
    model = torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=24,
        mlp_dim=48,
        num_classes=5,
    )
    nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero
    return model


def hugging_face_vit() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        num_labels=5,
    )
    return transformers.ViTForImageClassification(config)


def entering_last_block(model: nn.Module) -> nn.Module:
    """The layer whose output is the tokens the last block receives (ViT-ReciproCAM)."""
    if isinstance(model, torchvision.models.VisionTransformer):
        return model.encoder.layers[-2]
    if hasattr(model, "vit"):  # Hugging Face; ``vit.encoder.layer`` before transformers 5
        vit = model.vit
        return (vit.layers if hasattr(vit, "layers") else vit.encoder.layer)[-2]
    return model.blocks[-2]


def reference_vit_scores(model, layer, x, targets):
    """``B x 4 x 4``: the whole model once per (image, position), the 16 patch tokens of
    the layer's output times that position's 3 x 3 Gaussian mask (cut at the border), the
    class token kept."""
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    scores = torch.zeros(x.shape[0], 16, dtype=torch.float64)
    for image in range(x.shape[0]):
        for position in range(16):
            row, column = divmod(position, 4)
            padded = torch.zeros(6, 6, dtype=torch.float64)
            padded[row : row + 3, column : column + 3] = kernel
            mask = padded[1:5, 1:5].flatten()

            def keep(module, inputs, output, mask=mask):
                output = output.clone()
                output[:, 1:] *= mask[:, None]
                return output

            handle = layer.register_forward_hook(keep)
            try:
                with torch.no_grad():
                    output = model(x[image : image + 1])
            finally:
                handle.remove()
            output = getattr(output, "logits", output)  # a Hugging Face ModelOutput
            scores[image, position] = targets[image](output[0])
    return scores.view(-1, 4, 4)


def unscaled_map(scores: torch.Tensor) -> torch.Tensor:
    """ReciproCAM's ``scale=False`` map of ``B x 4 x 4`` scores: shifted by each image's
    minimum and resized bilinearly to the 32 x 32 input (float32)."""
    shifted = scores - scores.flatten(1).min(dim=1).values[:, None, None]
    return nn.functional.interpolate(shifted[:, None].float(), size=(32, 32), mode="bilinear")[:, 0]


@pytest.mark.parametrize(
    "factory",
    [timm_deit, torchvision_vit, hugging_face_vit],
    ids=["timm", "torchvision", "hugging_face"],
)
def test_vit_recipro_cam_matches_the_reference_on_real_vits(factory):
    model = seeded(factory).double()
    layer = entering_last_block(model)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    targets = [ClassifierOutputSoftmaxTarget(1), ClassifierOutputTarget(3)]
    cam = ReciproCAM(
        model,
        [layer],
        reshape_transform=lambda t: vit_reshape_transform(t, height=4, width=4),
        batch_size=12,
    )
    maps = cam(x, targets, scale=False, as_tensor=True)
    scores = reference_vit_scores(model, layer, x, targets)
    expected = unscaled_map(scores)
    assert maps.shape == (2, 32, 32) and expected.abs().max() > 1e-4
    # torch.fx cannot trace Hugging Face's ViT (control flow on traced values): the whole
    # model runs per batch of masks instead (same maps, slower).
    if factory is not hugging_face_vit and cam.tail_paths != [TAIL_PATH]:
        pytest.fail(f"the tail was not used: {cam.tail_paths}")
    torch.testing.assert_close(maps, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


def test_vit_recipro_cam_on_clips_image_encoder_with_text_prompts():
    pytest.importorskip("transformers")
    from attention_models import ImageEmbedding, clip_model, text_embedding

    clip = clip_model().double()
    model = ImageEmbedding(clip).eval()
    layer = clip.vision_model.encoder.layers[-2]
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    prompts = [[0, 5, 7, 1], [0, 9, 3, 1]]  # one prompt per image
    targets = [SimilarityToConceptTarget(text_embedding(clip, ids)) for ids in prompts]
    cam = ReciproCAM(
        model,
        [layer],
        reshape_transform=lambda t: vit_reshape_transform(t, height=4, width=4),
        batch_size=8,
    )
    maps = cam(x, targets, scale=False, as_tensor=True)
    scores = reference_vit_scores(model, layer, x, targets)
    expected = unscaled_map(scores)
    assert expected.abs().max() > 1e-4
    torch.testing.assert_close(maps, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


def last_block_tokens(model: nn.Module) -> nn.Module:
    """The usual GradCAM-style layer of a ViT: the last block's first normalisation."""
    if isinstance(model, torchvision.models.VisionTransformer):
        return model.encoder.layers[-1].ln_1
    if hasattr(model, "vit"):
        vit = model.vit
        return (vit.layers if hasattr(vit, "layers") else vit.encoder.layer)[-1].layernorm_before
    return model.blocks[-1].norm1


@pytest.mark.parametrize(
    "factory",
    [timm_deit, torchvision_vit, hugging_face_vit],
    ids=["timm", "torchvision", "hugging_face"],
)
def test_gscore_cam_on_real_vits_is_score_cam_over_its_top_channels(factory):
    model = seeded(factory)
    layer = last_block_tokens(model)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(3)]
    options = {
        "reshape_transform": lambda t: vit_reshape_transform(t, height=4, width=4),
        "batch_size": 8,
    }
    top = GScoreCAM(model, [layer], topk=6, **options)(x, targets, as_tensor=True)
    assert top.shape == (2, 32, 32) and torch.isfinite(top).all()
    assert top.min() >= 0 and top.flatten(1).amax(dim=1).tolist() == [1.0, 1.0]
    every = GScoreCAM(model, [layer], topk=24, **options)(x, targets, as_tensor=True)
    expected = ScoreCAM(model, [layer], **options)(x, targets, as_tensor=True)
    torch.testing.assert_close(every, expected, rtol=0, atol=1e-6)  # 24 channels: all kept
    assert (top - every).abs().max() > 1e-3  # 6 of 24 channels: another map


# --------------------------------------------------------------------- CNNs from configs
def mobilenet() -> nn.Module:
    return torchvision.models.mobilenet_v3_small(weights=None, num_classes=7)


def densenet() -> nn.Module:
    return torchvision.models.DenseNet(
        growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=7
    )


@pytest.mark.parametrize("factory", [mobilenet, densenet], ids=["mobilenet_v3", "densenet"])
def test_both_methods_on_cnns_from_configs(factory):
    model = seeded(factory)
    layer = model.features[-1]
    x = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(2))
    targets = [ClassifierOutputTarget(2), ClassifierOutputTarget(5)]
    recipro = ReciproCAM(model, [layer], batch_size=16)
    gscore = GScoreCAM(model, [layer], topk=8, batch_size=16)
    for cam in (recipro, gscore):
        maps = cam(x, targets, as_tensor=True)
        assert maps.shape == (2, 64, 48) and torch.isfinite(maps).all()
        assert maps.min() >= 0 and maps.flatten(1).amax(dim=1).tolist() == [1.0, 1.0]
        assert (maps[0] - maps[1]).abs().max() > 0.05  # each image its own map
    assert recipro.tail_paths == [TAIL_PATH]
    if factory is densenet:  # few channels: every one kept is ScoreCAM's map
        everything = GScoreCAM(model, [layer], topk=10_000, batch_size=16)
        expected = ScoreCAM(model, [layer], batch_size=16)(x, targets, as_tensor=True)
        assert torch.equal(everything(x, targets, as_tensor=True), expected)


def test_the_command_line_offers_both_by_name():
    from pytorch_grad_cam.cli import available_methods, resolve_method

    assert available_methods()["reciprocam"] is ReciproCAM
    assert available_methods()["gscorecam"] is GScoreCAM
    assert resolve_method("Recipro-CAM") is ReciproCAM
    assert resolve_method("gScore_CAM") is GScoreCAM
