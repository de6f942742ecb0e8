"""Every CAM method on real transformer architectures (random weights, small inputs), with
the seeds' target layers: timm DeiT and Swin, torchvision ViT and Swin, Hugging Face ViT
(whose output is a ``ModelOutput``)."""

from __future__ import annotations

import functools
import warnings

import pytest
import timm
import torch
import torchvision
from helpers import assert_same_state, snapshot
from transformers import ViTConfig, ViTForImageClassification

import pytorch_grad_cam as methods
from pytorch_grad_cam.layer_layout import InferredReshapeWarning
from pytorch_grad_cam.utils.maps import resize_maps
from pytorch_grad_cam.utils.reshape_transforms import (
    swinT_reshape_transform,
    vit_reshape_transform,
)


def timm_deit():
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=(32, 48))
    return model, model.blocks[-1].norm1, (32, 48), (2, 3)


def timm_swin():
    model = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, img_size=64, window_size=2
    )
    return model, model.layers[-1].blocks[-1].norm1, (64, 64), None


def torchvision_vit():
    model = torchvision.models.vit_b_16(weights=None, image_size=32)
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zeroes the head
    return model, model.encoder.layers[-1].ln_1, (32, 32), (2, 2)


def torchvision_swin():
    # swin_t's architecture with 2 x 2 windows (as for timm's above): at 64 px, 7 x 7
    # windows would pad every stage's grid to a multiple of 7 and multiply its cost.
    model = torchvision.models.swin_transformer.SwinTransformer(
        patch_size=[4, 4],
        embed_dim=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=[2, 2],
    )
    return model, model.features[-1][-1].norm1, (64, 64), None


def hugging_face_vit():
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
    return model, model.vit.layers[-1].layernorm_before, (64, 64), (4, 4)


MODELS = {
    "timm-deit": timm_deit,
    "timm-swin": timm_swin,
    "torchvision-vit": torchvision_vit,
    "torchvision-swin": torchvision_swin,
    "hf-vit": hugging_face_vit,
}
GRADIENT_METHODS = [
    methods.GradCAM,
    methods.HiResCAM,
    methods.GradCAMElementWise,
    methods.GradCAMPlusPlus,
    methods.XGradCAM,
    methods.LayerCAM,
    methods.EigenCAM,
    methods.EigenGradCAM,
]


@functools.cache
def built(name):
    torch.manual_seed(0)
    model, layer, size, grid = MODELS[name]()
    return model.eval(), layer, size, grid


def seeds_transform(grid):
    """The seeds' transforms with the grid spelled out: ViT tokens, or Swin's B x H x W x C."""
    if grid is None:
        return swinT_reshape_transform
    return functools.partial(vit_reshape_transform, height=grid[0], width=grid[1])


def inputs(size, batch=2):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", MODELS)
def test_gradcam_equals_the_formula_on_the_token_grid(name):
    """GradCAM through the inferred transform equals ``ReLU(sum_k mean(dy/dA^k) A^k)``
    computed here from the layer's recorded tokens and their gradient."""
    model, layer, size, grid = built(name)
    x = inputs(size)
    recorded = []
    handle = layer.register_forward_hook(lambda m, i, o: recorded.append(o))
    try:
        output = model(x)
    finally:
        handle.remove()
    logits = output.logits if hasattr(output, "logits") else output
    categories = logits.argmax(dim=1)
    (gradient,) = torch.autograd.grad(logits[[0, 1], categories].sum(), recorded[0])
    to_maps = seeds_transform(grid)
    activations, gradients = to_maps(recorded[0].detach()), to_maps(gradient)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    expected = resize_maps(torch.relu((weights * activations).sum(dim=1)), size)
    assert float(expected.amax()) > 0

    with pytest.warns(InferredReshapeWarning) as caught:
        maps = methods.GradCAM(model, [layer])(x, scale=False, as_tensor=True)
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-5 * float(expected.amax()))
    transform = "channels_last_to_first" if grid is None else "tokens_to_grid"
    assert len(caught) == 1 and transform in str(caught[0].message)
    if grid is not None:
        assert f"as a {grid[0]} x {grid[1]} grid" in str(caught[0].message)


@pytest.mark.parametrize("method", GRADIENT_METHODS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("name", MODELS)
def test_every_gradient_method_with_the_inferred_transform_equals_the_seeds_transform(name, method):
    model, layer, size, grid = built(name)
    x = inputs(size)
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InferredReshapeWarning)
        inferred = method(model, [layer])(x)
    explicit = method(model, [layer], reshape_transform=seeds_transform(grid))(x)
    assert_same_state(before, snapshot(model))
    assert inferred.shape == (2, *size)
    assert (inferred == explicit).all()
    # Each map is scaled to [0, 1]; with random weights on a small grid an image's map
    # can be all zero (no position with a positive weighted sum), but not every image's.
    assert inferred.min() == 0.0
    peaks = inferred.reshape(2, -1).max(axis=1).tolist()
    assert set(peaks) <= {0.0, 1.0} and 1.0 in peaks


@pytest.mark.parametrize(
    "method", [methods.AblationCAM, methods.ScoreCAM], ids=lambda m: m.__name__
)
@pytest.mark.parametrize("name", MODELS)
def test_perturbation_methods_run_on_every_transformer(name, method):
    model, layer, size, grid = built(name)
    x = inputs(size, batch=1)
    before = snapshot(model)
    cam = method(model, [layer], reshape_transform=seeds_transform(grid), batch_size=64)
    # The principal component of the weighted activations, sign-fixed to agree with their
    # channel sum, has positive parts even where the random model's channel sum has none.
    maps = cam(x, eigen_smooth=True)
    assert_same_state(before, snapshot(model))
    assert maps.shape == (1, *size)
    assert maps.min() == 0.0 and maps.max() == 1.0
    if method is methods.AblationCAM:
        # Only the last block and the head run per ablation, except for the Hugging Face
        # model, which torch.fx cannot trace.
        assert cam.ablation_paths == ["full forward" if name == "hf-vit" else "tail"]
