"""grad-cam 1.5.7's helper objects and functions, each against an independent computation:
ActivationsAndGradients, svd_on_activations, find_layers, image helpers, Deep Feature
Factorization's functions, the ablation layers, guided-backprop's pieces, FullGrad's steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import GapLinearNet, TinyViT
from torch import nn

from pytorch_grad_cam import (
    AblationCAM,
    AblationLayer,
    AblationLayerVit,
    ActivationsAndGradients,
    FullGrad,
    GradCAM,
)
from pytorch_grad_cam.ablation_cam_multilayer import AblationCAM as MultiLayerAblationCAM
from pytorch_grad_cam.ablation_cam_multilayer import AblationLayer as WrappingAblationLayer
from pytorch_grad_cam.feature_factorization.deep_feature_factorization import (
    dff,
    run_dff_on_image,
)
from pytorch_grad_cam.guided_backprop import (
    GuidedBackpropReLU,
    GuidedBackpropReLUasModule,
    GuidedBackpropReLUModel,
)
from pytorch_grad_cam.utils.find_layers import (
    find_layer_predicate_recursive,
    find_layer_types_recursive,
    replace_all_layer_type_recursive,
    replace_layer_recursive,
)
from pytorch_grad_cam.utils.image import create_labels_legend, scale_accross_batch_and_channels
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform
from pytorch_grad_cam.utils.svd_on_activations import (
    get_2d_projection,
    get_2d_projection_kernel,
    get_2d_projection_with_sign_correction,
)


# --------------------------------------------------------------------- ActivationsAndGradients
def test_activations_and_gradients_record_a_forward_and_a_backward(gap_net, image_batch):
    layers = [gap_net.features[1], gap_net.features[3]]
    with ActivationsAndGradients(gap_net, layers, None) as recorder:
        assert sum(len(layer._forward_hooks) for layer in layers) == 4
        output = recorder(image_batch)
        output[:, 2].sum().backward()
        with torch.no_grad():
            first = gap_net.features[:2](image_batch)
            second = gap_net.features(image_batch)
        torch.testing.assert_close(recorder.activations[0], first)
        torch.testing.assert_close(recorder.activations[1], second)
        assert (
            recorder.activations[0].device.type == "cpu"
            and not recorder.activations[0].requires_grad
        )
        # d(sum_b y_b,2)/dA at the last layer is W_2 / (H W) everywhere (GAP + linear).
        expected = gap_net.fc.weight[2].detach()[None, :, None, None].expand_as(second) / 120
        torch.testing.assert_close(recorder.gradients[1], expected)
        assert len(recorder.gradients) == 2
        recorder(image_batch)
        assert len(recorder.activations) == 2 and recorder.gradients == []  # cleared
    assert sum(len(layer._forward_hooks) for layer in layers) == 0
    gap_net.zero_grad()


def test_activations_and_gradients_reshape_and_keep_the_graph():
    torch.manual_seed(0)
    model = TinyViT().eval()
    layer = model.blocks[-1].norm1

    def transform(tensor):
        return vit_reshape_transform(tensor, 4, 4)

    recorder = ActivationsAndGradients(model, [layer], transform, detach=False)
    try:
        recorder(torch.randn(2, 3, 16, 16))
        assert recorder.activations[0].shape == (2, 16, 4, 4)
        assert recorder.activations[0].requires_grad
    finally:
        recorder.release()
        recorder.release()  # idempotent
    assert len(layer._forward_hooks) == 0


# --------------------------------------------------------------------- svd_on_activations
def test_get_2d_projection_is_the_first_principal_component():
    rng = np.random.default_rng(0)
    activations = rng.normal(size=(3, 6, 5, 4)).astype(np.float32)
    projection = get_2d_projection(activations)
    for image, result in zip(activations, projection):
        positions = torch.from_numpy(image.reshape(6, -1).T.astype(np.float64))
        centred = positions - positions.mean(dim=0)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        expected = (centred @ vh[0]).reshape(5, 4).numpy()
        sign = np.sign(np.sum(expected * result))  # a singular vector's sign is arbitrary
        np.testing.assert_allclose(result, sign * expected, rtol=1e-4, atol=1e-5)


def test_sign_correction_agrees_with_the_channel_sum():
    rng = np.random.default_rng(1)
    activations = np.abs(rng.normal(size=(4, 5, 6, 6))).astype(np.float32)
    corrected = get_2d_projection_with_sign_correction(activations)
    plain = get_2d_projection(activations)
    for image, signed, unsigned in zip(activations, corrected, plain):
        channel_sum = image.sum(axis=0)
        assert np.sum(signed * (channel_sum - channel_sum.mean())) >= 0
        np.testing.assert_allclose(np.abs(signed), np.abs(unsigned), rtol=1e-4, atol=1e-5)


def test_kernel_projection_with_a_linear_kernel_is_the_principal_component():
    rng = np.random.default_rng(2)
    activations = rng.normal(size=(2, 4, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(
        get_2d_projection_kernel(activations, kernel="linear"),
        get_2d_projection_with_sign_correction(activations),
        rtol=1e-3,
        atol=1e-4,
    )


# --------------------------------------------------------------------- find_layers
def test_find_and_replace_layers():
    model = GapLinearNet()
    relus = find_layer_types_recursive(model, [nn.ReLU])
    assert relus == [model.features[1], model.features[3]]
    convs = find_layer_predicate_recursive(model, lambda m: isinstance(m, nn.Conv2d))
    assert convs == [model.features[0], model.features[2]]
    replacement = nn.Tanh()
    assert replace_layer_recursive(model, model.features[2], replacement)
    assert model.features[2] is replacement
    assert not replace_layer_recursive(model, nn.ReLU(), nn.Identity())
    replace_all_layer_type_recursive(model, nn.ReLU, nn.ELU())
    assert [type(m) for m in model.features] == [nn.Conv2d, nn.ELU, nn.Tanh, nn.ELU]


# --------------------------------------------------------------------- image helpers
def test_scale_accross_batch_and_channels():
    rng = np.random.default_rng(3)
    tensor = rng.normal(size=(2, 3, 4, 6)).astype(np.float32)
    result = scale_accross_batch_and_channels(tensor, (12, 8))
    assert result.shape == (2, 3, 8, 12)
    for b in range(2):
        for c in range(3):
            m = tensor[b, c]
            scaled = (m - m.min()) / (m.max() - m.min())
            resized = torch.nn.functional.interpolate(
                torch.from_numpy(scaled)[None, None], size=(8, 12), mode="bilinear"
            )[0, 0].numpy()
            np.testing.assert_allclose(result[b, c], resized, atol=1e-6)


def test_create_labels_legend():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
    labels = {0: "cat", 1: "dog", 2: "cup"}
    assert create_labels_legend(scores, labels, top_k=2) == [
        "dog:0.70\ncup:0.20",
        "cat:0.50\ncup:0.30",
    ]


# --------------------------------------------------------------------- Deep Feature Factorization
def test_dff_factorises_a_planted_batch():
    rng = np.random.default_rng(4)
    heat = np.abs(rng.normal(size=(2, 2, 4, 4)))  # B x k x H x W
    heat[:, 0, :2] *= 5
    concepts = np.abs(rng.normal(size=(6, 2)))  # C x k
    activations = np.einsum("ck,bkhw->bchw", concepts, heat).astype(np.float32)
    found_concepts, explanations = dff(activations, n_components=2)
    assert found_concepts.shape == (6, 2) and explanations.shape == (2, 2, 4, 4)
    rebuilt = np.einsum("ck,bkhw->bchw", found_concepts, explanations)
    assert np.linalg.norm(rebuilt - activations) / np.linalg.norm(activations) < 1e-2


def test_run_dff_on_image_shows_the_image_and_its_concepts(gap_net):
    image = (np.random.default_rng(5).random((12, 10, 3)) * 255).astype(np.uint8)
    tensor = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)
    result = run_dff_on_image(gap_net, gap_net.features, gap_net.fc, image, tensor, None, 2, 1)
    assert result.dtype == np.uint8 and result.shape[0] == 12
    np.testing.assert_array_equal(result[:, :10], image)  # the image, then the concepts
    assert result.shape[1] > 20  # the concepts' picture and its legend


# --------------------------------------------------------------------- ablation layers
def test_ablation_layer_default_is_zero_and_vit_far_below(gap_net, image_batch):
    targets = [ClassifierOutputTarget(c) for c in (1, 3, 0)]
    default = AblationCAM(gap_net, [gap_net.features])(image_batch, targets)
    explicit = AblationCAM(gap_net, [gap_net.features], None, AblationLayer())(image_batch, targets)
    np.testing.assert_allclose(explicit, default)
    assert AblationLayerVit().ablation_value(torch.tensor([[-2.0, 3.0]])) == -2.0 - 1e7


def test_ablation_layer_vit_on_tokens_equals_a_full_forward_reference():
    """Channel c of the token layout set to min - 1e7 in every patch token (the class
    token is dropped by the transform, so it is left as it is)."""
    torch.manual_seed(0)
    model = TinyViT().double().eval()
    layer = model.blocks[-1].norm1
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)

    def transform(tensor):
        return vit_reshape_transform(tensor, 4, 4)

    cam = AblationCAM(model, [layer], transform, AblationLayerVit())
    maps = cam(x, [ClassifierOutputTarget(2)], scale=False, as_tensor=True)
    recorded = []
    handle = layer.register_forward_hook(lambda m, i, o: recorded.append(o.detach()))
    with torch.no_grad():
        score = model(x)[0, 2]
    handle.remove()
    tokens = recorded[0]
    value = float(tokens.min()) - 1e7
    weights = []
    for channel in range(tokens.shape[2]):

        def ablate(module, inputs, output, channel=channel):
            output = output.clone()
            output[:, 1:, channel] = value
            return output

        handle = layer.register_forward_hook(ablate)
        with torch.no_grad():
            ablated = model(x)[0, 2]
        handle.remove()
        weights.append((score - ablated) / score)
    activations = transform(tokens)
    expected = torch.relu((torch.stack(weights)[:, None, None] * activations[0]).sum(0))
    expected = torch.nn.functional.interpolate(
        expected[None, None], size=(16, 16), mode="bilinear"
    )[0]
    torch.testing.assert_close(maps.double(), expected, rtol=1e-4, atol=1e-6)


def test_assemble_ablation_scores(gap_net):
    cam = AblationCAM(gap_net, [gap_net.features])
    scores = cam.assemble_ablation_scores([0.5, 0.25], 1.0, np.array([3, 1]), 5)
    np.testing.assert_array_equal(scores, [1.0, 0.25, 1.0, 0.5, 1.0])


def test_legacy_ablation_layer_methods():
    layer = AblationLayer()
    activations = torch.arange(24.0).view(2, 3, 2, 2)
    layer.set_next_batch(1, activations, 3)
    layer.indices = [0, 1, 2]
    copies = layer()
    for row in range(3):
        expected = activations[1].clone()
        expected[row] = 0
        torch.testing.assert_close(copies[row], expected)
    assert layer.activations_to_be_ablated(activations[0], 0.4) == [2, 1]
    mask = layer.objectiveness_mask_from_svd(activations, threshold=0.5)
    assert mask.shape == (2, 2, 2) and mask.dtype == bool and mask.any()


def test_multilayer_ablation_wrapper_and_its_swaps(gap_net, image_batch):
    wrapper = WrappingAblationLayer(gap_net.features, None, [1, 0])
    with torch.no_grad():
        plain = gap_net.features(image_batch)
        wrapped = wrapper(image_batch)
    expected = plain.clone()
    expected[0, 1] = 0
    expected[1, 0] = 0
    torch.testing.assert_close(wrapped, expected)
    cam = MultiLayerAblationCAM(gap_net, [gap_net.features[3]])
    original = gap_net.features[3]
    cam.set_ablation_layers()
    assert isinstance(gap_net.features[3], WrappingAblationLayer)
    cam.set_ablation_layer_batch_indices([1, 2, 3])
    cam.trim_ablation_layer_batch_indices(2)
    assert list(gap_net.features[3].indices) == [1, 2]
    cam.unset_ablation_layers()
    assert gap_net.features[3] is original
    targets = [ClassifierOutputTarget(c) for c in (1, 3, 0)]
    np.testing.assert_allclose(
        cam(image_batch, targets), AblationCAM(gap_net, [original])(image_batch, targets)
    )


# --------------------------------------------------------------------- guided backpropagation
def test_guided_backprop_relu_function_and_module():
    x = torch.tensor([-1.0, 2.0, 3.0, -4.0], requires_grad=True)
    y = GuidedBackpropReLUasModule()(x)
    torch.testing.assert_close(y, torch.tensor([0.0, 2.0, 3.0, 0.0]))
    (grad,) = torch.autograd.grad(y, x, torch.tensor([1.0, -1.0, 5.0, 2.0]))
    torch.testing.assert_close(grad, torch.tensor([0.0, 0.0, 5.0, 0.0]))
    assert GuidedBackpropReLU.apply(torch.tensor([-3.0])).item() == 0.0


def test_guided_backprop_model_forward_and_replacements(gap_net, image_batch):
    guided = GuidedBackpropReLUModel(gap_net)
    with torch.no_grad():
        torch.testing.assert_close(guided.forward(image_batch), gap_net(image_batch))
    swapped = GapLinearNet()
    guided.recursive_replace_relu_with_guidedrelu(swapped)
    kinds = [type(m) for m in swapped.features]
    assert kinds == [nn.Conv2d, GuidedBackpropReLUasModule, nn.Conv2d, GuidedBackpropReLUasModule]
    guided.recursive_replace_guidedrelu_with_relu(swapped)
    assert [type(m) for m in swapped.features] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU]


# --------------------------------------------------------------------- FullGrad's steps
def test_fullgrad_terms_sum_to_its_map(gap_net, image_batch):
    cam = FullGrad(gap_net, [])
    targets = [ClassifierOutputTarget(c) for c in (1, 3, 0)]
    terms = cam.compute_cam_per_layer(image_batch, targets, False)
    assert all(t.shape == (3, 1, 12, 10) for t in terms) and len(terms) == 3  # input + 2 convs
    np.testing.assert_allclose(
        cam.aggregate_multi_layers(terms), cam(image_batch, targets), atol=1e-6
    )
    torch.testing.assert_close(
        cam.get_bias_data(gap_net.features[0]), gap_net.features[0].bias.detach()
    )
    assert cam.get_bias_data(gap_net.features[1]) is None


def test_gradcam_still_refuses_no_layer(gap_net):
    with pytest.raises(TypeError, match="target_layers is required"):
        GradCAM(gap_net)


# --------------------------------------------------------------------- Faster R-CNN's transform
def test_fasterrcnn_reshape_transform_is_the_incumbents():
    """|level| of every level, bilinearly resized to the last (coarsest) level's size and
    concatenated in order. From 8 x 8 to 2 x 2 (pixel centres aligned, no antialiasing),
    output pixel (i, j) samples input position (4 i + 1.5, 4 j + 1.5): the mean of the
    2 x 2 block at rows / columns 4 i + 1 and 4 i + 2."""
    from collections import OrderedDict

    from pytorch_grad_cam.utils.reshape_transforms import fasterrcnn_reshape_transform

    generator = torch.Generator().manual_seed(7)
    fine = torch.randn(2, 3, 8, 8, generator=generator)
    pool = torch.randn(2, 2, 2, 2, generator=generator)
    result = fasterrcnn_reshape_transform(OrderedDict([("0", fine), ("pool", pool)]))
    assert result.shape == (2, 5, 2, 2)
    expected = torch.empty(2, 3, 2, 2)
    for i in range(2):
        for j in range(2):
            block = fine.abs()[:, :, 4 * i + 1 : 4 * i + 3, 4 * j + 1 : 4 * j + 3]
            expected[:, :, i, j] = block.mean(dim=(2, 3))
    torch.testing.assert_close(result[:, :3], expected)
    torch.testing.assert_close(result[:, 3:], pool.abs())
    single = torch.randn(1, 4, 3, 3)
    assert fasterrcnn_reshape_transform(single) is single  # a plain tensor passes through
