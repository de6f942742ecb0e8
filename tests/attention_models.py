"""Models and independent references for the gradient attention methods' tests.

- ``HandSetTransformer``: attention probabilities set by hand and a score that is a known
  function of them, with the gradients back-propagated by hand (float64 numpy).
- Small real transformers built from configs (timm DeiT, torchvision ViT, Hugging Face
  ViT, CLIP's image encoder), and for each a recording of the attention probabilities
  that the model multiplies with the values, their gradients, and each block's output,
  taken by hand (a hand-written forward pass, or hooks with ``torch.autograd.grad`` on
  the recorded tensors): no code of the library is used.
- The two methods' formulas in float64 numpy, and the map of a token relevance.
- A random-weight timm ViT with a planted dependency: class 0 reads the red, class 1 the
  green of the patches through the last block's attention.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import timm
import torch
import torch.nn.functional as F
from helpers import HOOK_DICTS
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer
from transformers import CLIPConfig, CLIPModel, ViTConfig, ViTForImageClassification

from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, SimilarityToConceptTarget


# --------------------------------------------------------------------- formulas
def chefer_reference(attentions, gradients) -> np.ndarray:
    """R = I; R <- R + mean_h(ReLU(grad * A)) R, first layer first; B x N x N."""
    attentions = [np.asarray(a, dtype=np.float64) for a in attentions]
    gradients = [np.asarray(g, dtype=np.float64) for g in gradients]
    batch, _, n, _ = attentions[0].shape
    relevance = np.stack([np.eye(n)] * batch)
    for attention, gradient in zip(attentions, gradients):
        weighted = np.maximum(gradient * attention, 0.0).mean(axis=1)
        relevance = relevance + weighted @ relevance
    return relevance


def legrad_reference(gradients) -> np.ndarray:
    """mean over layers of mean over heads and queries of ReLU(grad): B x N."""
    per_layer = [
        np.maximum(np.asarray(g, dtype=np.float64), 0.0).mean(axis=(1, 2)) for g in gradients
    ]
    return np.mean(per_layer, axis=0)


def relevance_maps(relevance, prefix, grid, size, scale=True) -> np.ndarray:
    """The patch tokens' relevance on the grid, resized bilinearly, min-max scaled."""
    patches = torch.as_tensor(np.asarray(relevance)[:, prefix:]).float()
    maps = patches.reshape(-1, 1, *grid)
    maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)[:, 0]
    if scale:
        low = maps.flatten(1).min(1).values[:, None, None]
        high = maps.flatten(1).max(1).values[:, None, None]
        maps = (maps - low) / (high - low)
    return maps.numpy()


# --------------------------------------------------------------------- attention set by hand
class FixedAttention(nn.Module):
    """Returns fixed probabilities (heads x N x N) for every image."""

    def __init__(self, probabilities: torch.Tensor):
        super().__init__()
        self.register_buffer("probabilities", probabilities)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.probabilities.expand(tokens.shape[0], -1, -1, -1)


class HandSetBlock(nn.Module):
    """``T <- T + sum_h A_h T W_h``: the heads' attention mixes the tokens, each head with
    its own value matrix."""

    def __init__(self, probabilities: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.attn = FixedAttention(probabilities)
        self.values = nn.Parameter(values)  # heads x D x D

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mixed = torch.einsum("bhij,bjd,hde->bie", self.attn(tokens), tokens, self.values)
        return tokens + mixed


class HandSetTransformer(nn.Module):
    """One token per pixel (its channels), a zero class token first, ``HandSetBlock``s,
    logits ``T_L[0] U^T``."""

    def __init__(self, probabilities, values, classifier):
        super().__init__()
        self.blocks = nn.ModuleList(HandSetBlock(p, v) for p, v in zip(probabilities, values))
        self.classifier = nn.Parameter(classifier)  # K x D

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x.flatten(2).transpose(1, 2)
        return torch.cat([torch.zeros_like(pixels[:, :1]), pixels], dim=1)

    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 0] @ self.classifier.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.tokens(x)
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(tokens)


def hand_set_transformer(layers=2, heads=2, size=(2, 3), channels=3, classes=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    n = 1 + size[0] * size[1]
    probabilities = [
        (2 * torch.randn(heads, n, n, generator=generator)).softmax(-1) for _ in range(layers)
    ]
    values = [
        0.5 * torch.randn(heads, channels, channels, generator=generator) for _ in range(layers)
    ]
    classifier = torch.randn(classes, channels, generator=generator)
    return HandSetTransformer(probabilities, values, classifier).eval()


def hand_backprop(model: HandSetTransformer, x: torch.Tensor, categories, read_at=None):
    """Each layer's probabilities and d y / d A_l by hand (float64): ``y`` the category's
    logit read from the last layer's tokens, or, with ``read_at=l``, from layer ``l``'s
    own tokens (LeGrad's layer score)."""
    tokens = [model.tokens(x).detach().double().numpy()]
    probabilities = [b.attn.probabilities.double().numpy() for b in model.blocks]
    values = [b.values.detach().double().numpy() for b in model.blocks]
    for a, w in zip(probabilities, values):
        t = tokens[-1]
        tokens.append(t + np.einsum("hij,bjd,hde->bie", a, t, w))
    classifier = model.classifier.detach().double().numpy()
    last = len(model.blocks) if read_at is None else read_at + 1
    upstream = np.zeros_like(tokens[last])
    upstream[np.arange(len(categories)), 0] = classifier[list(categories)]  # dy/dT_last
    gradients = [None] * last
    for layer in reversed(range(last)):
        a, w, below = probabilities[layer], values[layer], tokens[layer]
        gradients[layer] = np.einsum("bie,hde,bjd->bhij", upstream, w, below)
        upstream = upstream + np.einsum("hij,bie,hde->bjd", a, upstream, w)
    batch = len(categories)
    attentions = [np.broadcast_to(a, (batch, *a.shape)) for a in probabilities[:last]]
    return attentions, gradients


# --------------------------------------------------------------------- real architectures
def timm_deit(name="deit_tiny_patch16_224", size=(32, 48), depth=2) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, img_size=size, depth=depth)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(8)  # sharper than random init's near-uniform attention
    return model


def torchvision_vit() -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=10,
    )
    with torch.no_grad():
        nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision zeroes the head
        for layer in model.encoder.layers:
            layer.self_attention.in_proj_weight.mul_(4)
    return model


def hugging_face_vit() -> ViTForImageClassification:
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=10,
    )
    return ViTForImageClassification(config)


def clip_model() -> CLIPModel:
    torch.manual_seed(0)
    text = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        vocab_size=100,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    return CLIPModel(config).eval()


class ImageEmbedding(nn.Module):
    """CLIP's image encoder as a model: pixels -> the projected image embedding."""

    def __init__(self, clip: CLIPModel):
        super().__init__()
        self.clip = clip

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.clip.get_image_features(pixel_values=pixel_values)
        return getattr(features, "pooler_output", features)  # a ModelOutput in transformers 5


def text_embedding(clip: CLIPModel, token_ids) -> torch.Tensor:
    with torch.no_grad():
        features = clip.get_text_features(input_ids=torch.tensor([token_ids]))
    return getattr(features, "pooler_output", features)[0]


def record_timm(model, x):
    """Probabilities (attn_drop's output, fused kernel off), their gradients, and each
    block's output, on a copy."""
    model = copy.deepcopy(model).eval()
    attentions, tokens = [], []
    for block in model.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda m, i, o: attentions.append(o))
        block.register_forward_hook(lambda m, i, o: tokens.append(o))
    output = model(x.clone().requires_grad_(True))

    def head(z):
        return model.forward_head(model.norm(z))

    return output, attentions, tokens, head


def record_torchvision(model: VisionTransformer, x):
    """A hand-written forward pass of torchvision's ViT with explicit probabilities."""
    model = copy.deepcopy(model).eval()
    attentions, tokens = [], []
    patches = model.conv_proj(x.clone().requires_grad_(True)).flatten(2).transpose(1, 2)
    t = torch.cat([model.class_token.expand(len(x), -1, -1), patches], dim=1)
    t = t + model.encoder.pos_embedding
    for layer in model.encoder.layers:
        mha = layer.self_attention
        q, k, v = F.linear(layer.ln_1(t), mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (u.unflatten(-1, (mha.num_heads, -1)).transpose(1, 2) for u in (q, k, v))
        a = (q @ k.transpose(-2, -1) / math.sqrt(mha.head_dim)).softmax(-1)
        attentions.append(a)
        mixed = (a @ v).transpose(1, 2).flatten(2)
        t = t + F.linear(mixed, mha.out_proj.weight, mha.out_proj.bias)
        t = t + layer.mlp(layer.ln_2(t))
        tokens.append(t)

    def head(z):
        return model.heads(model.encoder.ln(z)[:, 0])

    return head(t), attentions, tokens, head


def record_hugging_face(model, x, attention_modules, blocks, head_of):
    """Eager attention on a copy; each attention module's probabilities and each block's
    output by hooks."""
    model = copy.deepcopy(model).eval()
    (getattr(model, "clip", None) or model).set_attn_implementation("eager")
    attentions, tokens = [], []
    for module in attention_modules(model):
        module.register_forward_hook(lambda m, i, o: attentions.append(o[1]))
    for block in blocks(model):
        block.register_forward_hook(
            lambda m, i, o: tokens.append(o[0] if isinstance(o, tuple) else o)
        )
    output = model(x.clone().requires_grad_(True))
    return output, attentions, tokens, head_of(model)


def gradients_of(scores_of, recording, per_layer_head=False):
    """d score / d A_l for each layer: the model's score, or each layer's own score read
    from its block's output with the head (LeGrad)."""
    output, attentions, tokens, head = recording
    if not per_layer_head:
        return attentions, list(torch.autograd.grad(scores_of(output).sum(), attentions))
    gradients = [
        torch.autograd.grad(scores_of(head(t)).sum(), a, retain_graph=True)[0]
        for a, t in zip(attentions, tokens)
    ]
    return attentions, gradients


# --------------------------------------------------------------------- planted dependency
def planted_vit(size=32, patch=8) -> nn.Module:
    """A random-weight timm ViT (2 blocks, no normalisation layers) whose patch embedding
    puts a patch's mean red in channel 0 and mean green in channel 1, whose last block's
    values copy the tokens (uniform attention, no MLP), and whose head reads class 0 from
    the class token's channel 0 and class 1 from its channel 1."""
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=size,
        patch_size=patch,
        depth=2,
        embed_dim=8,
        num_heads=2,
        mlp_ratio=2,
        norm_layer=nn.Identity,
        num_classes=2,
    )
    dim = 8
    with torch.no_grad():
        proj = model.patch_embed.proj
        proj.weight[:2] = 0.0
        proj.bias[:2] = 0.0
        proj.weight[0, 0] = proj.weight[1, 1] = 1.0 / (patch * patch)
        last = model.blocks[-1]
        last.attn.qkv.weight.zero_()
        last.attn.qkv.bias.zero_()
        last.attn.qkv.weight[2 * dim :] = torch.eye(dim)  # v = x; q = k = 0: uniform
        last.attn.proj.weight.copy_(torch.eye(dim))
        last.attn.proj.bias.zero_()
        last.mlp.fc2.weight.zero_()
        last.mlp.fc2.bias.zero_()
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.weight[0, 0] = model.head.weight[1, 1] = 4.0
    return model.eval()


def two_object_image(size=32, seed=0) -> torch.Tensor:
    """A red square on the left, a green one on the right, on faint noise: 1 x 3 x H x W."""
    generator = torch.Generator().manual_seed(seed)
    image = 0.05 * torch.rand(1, 3, size, size, generator=generator)
    half, quarter = size // 2, size // 4
    image[0, 0, quarter : quarter + half, :half] += 1.0
    image[0, 1, quarter : quarter + half, half:] += 1.0
    return image


# --------------------------------------------------------------------- model state
def model_state(model: nn.Module) -> dict:
    modules = list(model.modules())
    return {
        "training": [m.training for m in modules],
        "attributes": [sorted(vars(m)) for m in modules],
        "hooks": [list(getattr(m, d, {})) for m in modules for d in HOOK_DICTS],
        "fused_attn": [getattr(m, "fused_attn", None) for m in modules],
        "attn_implementation": [
            getattr(getattr(m, "config", None), "_attn_implementation", None) for m in modules
        ],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad is None for p in model.parameters()],
        "tensors": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_unchanged(before: dict, after: dict) -> None:
    assert {k: v for k, v in after.items() if k != "tensors"} == {
        k: v for k, v in before.items() if k != "tensors"
    }
    assert after["tensors"].keys() == before["tensors"].keys()
    for key, value in before["tensors"].items():
        assert torch.equal(value, after["tensors"][key]), key


def in_mixed_training_mode(model: nn.Module, first_block: nn.Module) -> nn.Module:
    model.train()
    first_block.eval()
    return model


# --------------------------------------------------------------------- the real cases
def timm_case():
    model = timm_deit()
    return model, model.blocks[0], (32, 48), 1, (2, 3), record_timm


def torchvision_case():
    model = torchvision_vit()
    return model, model.encoder.layers[0], (32, 32), 1, (4, 4), record_torchvision


def vit_head(model):
    def head(tokens):
        return model.classifier(model.vit.layernorm(tokens)[:, 0])

    return head


def clip_head(model):
    def head(tokens):
        clip = model.clip
        return clip.visual_projection(clip.vision_model.post_layernorm(tokens[:, 0]))

    return head


def hugging_face_case():
    def record(model, x):
        return record_hugging_face(
            model,
            x,
            lambda m: [layer.attention for layer in m.vit.layers],
            lambda m: m.vit.layers,
            vit_head,
        )

    model = hugging_face_vit()
    return model, model.vit.layers[0], (32, 32), 1, (4, 4), record


def clip_case():
    def record(model, x):
        def layers(m):
            return m.clip.vision_model.encoder.layers

        return record_hugging_face(
            model, x, lambda m: [layer.self_attn for layer in layers(m)], layers, clip_head
        )

    model = ImageEmbedding(clip_model())
    return model, model.clip.vision_model.encoder.layers[0], (32, 32), 1, (4, 4), record


#: name -> (model, its first block, input size, prefix tokens, patch grid, recorder)
CASES = {
    "timm-deit": timm_case,
    "torchvision-vit": torchvision_case,
    "hf-vit": hugging_face_case,
    "hf-clip": clip_case,
}


def logits_of(output):
    return output.logits if hasattr(output, "logits") else output


def case_targets(name, model):
    """Two images' targets and the test's own scores of them: classes 3 and 7, or for
    CLIP the cosine similarity to a text embedding."""
    if name == "hf-clip":
        concept = text_embedding(model.clip, [0, 5, 7, 9, 1])

        def cosine(output):
            return torch.cosine_similarity(output, concept[None], dim=-1)

        return [SimilarityToConceptTarget(concept)] * 2, cosine

    def logits(output):
        return logits_of(output)[[0, 1], [3, 7]]

    return [ClassifierOutputTarget(3), ClassifierOutputTarget(7)], logits
