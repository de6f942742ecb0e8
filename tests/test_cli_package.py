"""The command line as a package: the old module's names, typed errors, and the library's
own functions (maps, reshape inference, layer checks) behind the pipeline.

Tiny models, in-process: ``tests/test_cli.py`` runs the real command.
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import pytorch_grad_cam
from pytorch_grad_cam import GradCAM, cli
from pytorch_grad_cam.app.errors import page_message
from pytorch_grad_cam.cli import arguments, models, pipeline, support
from pytorch_grad_cam.layer_layout import InferredReshapeWarning
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

#: Every name ``pytorch_grad_cam.cli`` had as one module (less the standard library's).
# fmt: off
OLD_MODULE_NAMES = [
    "AttentionRollout", "BaseCAM", "CONNECT_TIMEOUT", "ClassifierOutputTarget",
    "CommandLineError", "DEFAULT_MODEL", "DEFAULT_MODEL_LAYER", "EXAMPLE_IMAGE", "Explainable",
    "Explanation", "IMAGENET_MEAN", "IMAGENET_STD", "LITE_MEAN", "LITE_STD", "MAX_SHORT_SIDE",
    "METHODS", "METHOD_ALIASES", "OFFLINE_CAM_PY", "OFFLINE_DEFAULT", "RANDOM_WEIGHTS_HELP",
    "ReshapeTransform", "SUBCOMMANDS", "TOP_CLASSES", "attention_rollout", "available_methods",
    "base_parser", "batch_norm_statistics_from", "build_parser", "check_arguments",
    "check_output_dir", "compose_images", "compute_map", "deprocess_image", "explain_and_write",
    "file_stem", "get_layer", "imagenet_categories", "infer_reshape_transform", "is_cam_method",
    "load_efficientnet_lite0", "load_model", "load_timm_model", "load_torchvision_model",
    "load_weights", "main", "pick_device", "predict", "print_top_classes", "reachable",
    "read_image", "resolve_category", "resolve_method", "resolve_target_layers",
    "resolve_target_method", "run", "run_command", "show_cam_on_image",
    "suggest_target_layer_names", "timm_explainable", "to_input_tensor",
    "torchvision_model_names", "with_pretrained_weights", "write_images",
    "_timm_cached_weights",
]
# fmt: on

#: ``cam.py --method`` before the command line became a package.
# fmt: off
OFFERED_BEFORE_THE_SPLIT = [
    "ablationcam", "attentionrollout", "cam", "eigencam", "eigengradcam", "fem", "fullgrad",
    "gradcam", "gradcam++", "gradcamelementwise", "gradcamplusplus", "hirescam", "iscam",
    "kpca_cam", "layercam", "randomcam", "scorecam", "segeigencam", "shapleycam",
    "smoothgradcampp", "sscam", "xgradcam",
]
# fmt: on


class PatchNet(nn.Module):
    """A class token and 4 x 4 patch tokens of a 16 x 16 image, a norm (the target), a
    linear head on the class token: the layout a CAM has to infer."""

    def __init__(self) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, 8, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 8))
        self.norm = nn.LayerNorm(8)
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)
        self.unused = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)
        tokens = self.norm(tokens)
        mixed = tokens + self.mix(tokens.mean(dim=1, keepdim=True))
        return self.head(mixed[:, 0])


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)
        self.unused = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------- names
def test_every_name_of_the_old_module_is_importable():
    assert [name for name in OLD_MODULE_NAMES if not hasattr(cli, name)] == []
    assert cli.main is pipeline.main  # the console entry point pytorch_grad_cam.cli:main
    assert cli.load_model is models.load_model and cli.Explainable is support.Explainable
    assert list(cli.METHODS) == list(cli.available_methods())


def test_the_method_table_is_every_exported_cam_and_the_rollout():
    exported = {
        name.lower(): getattr(pytorch_grad_cam, name)
        for name in pytorch_grad_cam.__all__
        if cli.is_cam_method(getattr(pytorch_grad_cam, name))
    }
    expected = {
        **exported,
        "attentionrollout": pytorch_grad_cam.AttentionRollout,
        "transformerattribution": pytorch_grad_cam.TransformerAttribution,
        "legrad": pytorch_grad_cam.LeGrad,
    }
    expected["gradcam++"] = pytorch_grad_cam.GradCAMPlusPlus
    assert cli.available_methods() == dict(sorted(expected.items()))
    assert set(OFFERED_BEFORE_THE_SPLIT) <= set(cli.available_methods())
    wrappers = (pytorch_grad_cam.FinerCAM, pytorch_grad_cam.RefineCAM, pytorch_grad_cam.SESS)
    assert not any(cli.is_cam_method(wrapper) for wrapper in wrappers)


# ----------------------------------------------------------------------- typed errors
def test_errors_carry_their_flag_and_value(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cases = [
        (["--image-path", "no/such.png"], "--image-path", "no/such.png", "no such file"),
        (["--method", "x"], "--method", "x", None),
        (["--device", "cuda"], "--device", "cuda", "cuda is not available on this machine"),
        (["--use-cuda"], "--use-cuda", None, "cuda is not available on this machine"),
        (["--target-category", "esp"], "--target-category", "'esp'", None),
    ]
    for argv, flag, value, start in cases:
        with pytest.raises(cli.CommandLineError) as caught:
            cli.check_arguments(cli.build_parser().parse_args(argv))
        error = caught.value
        assert (error.flag, error.value) == (flag, value)
        subject = flag if value is None else f"{flag} {value}"
        assert str(error) == f"{subject}: {error.message}"
        assert start is None or error.message.startswith(start)


def test_an_error_without_a_flag_is_its_message():
    error = cli.CommandLineError("--use-cuda contradicts --device cpu; pass one of them")
    assert (error.flag, str(error)) == (None, error.message)
    renamed = cli.CommandLineError("out of range 0..9", "--target-category", "10").for_flag("-c")
    assert str(renamed) == "-c 10: out of range 0..9"


def test_the_page_takes_the_message_of_a_typed_error():
    error = cli.CommandLineError("no such file", "--weights", "/tmp/my weights.pt")
    assert str(page_message(error, "Weights file my weights.pt")) == (
        "Weights file my weights.pt: no such file"
    )


# ----------------------------------------------------------------------- the library's functions
def test_compute_map_is_the_librarys_map(x):
    torch.manual_seed(0)
    model = ConvNet().eval()
    with GradCAM(model, [model.features]) as cam:
        expected = cam(x, [ClassifierOutputTarget(2)])[0]
    got = cli.compute_map(GradCAM, model, [model.features], None, x, 2, method_name="gradcam")
    np.testing.assert_array_equal(got, expected)
    assert got.shape == (16, 16) and got.max() == pytest.approx(1.0)


def test_tokens_are_laid_out_as_basecam_infers_them(x):
    torch.manual_seed(0)
    model = PatchNet().eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with GradCAM(model, [model.norm]) as cam:
            expected = cam(x, [ClassifierOutputTarget(1)])[0]
    assert [w.category for w in caught] == [InferredReshapeWarning]
    with pytest.warns(InferredReshapeWarning):  # compute_map leaves it to its caller
        got = cli.compute_map(GradCAM, model, [model.norm], None, x, 1)
    np.testing.assert_array_equal(got, expected)
    assert float(got.std()) > 0  # a 4 x 4 grid upsampled, not a flat map


def test_cam_py_lets_basecam_infer_the_layout_silently(x, tmp_path, capsys):
    torch.manual_seed(0)
    model = PatchNet().eval()
    rgb = x[0].permute(1, 2, 0).sigmoid().numpy()  # an image in [0, 1], 16 x 16
    explainable = cli.Explainable(model, [model.norm], ["a", "b", "c"], input_size=(16, 16))
    args = cli.build_parser().parse_args(["--target-category", "1", "--output-dir", str(tmp_path)])
    checked = dataclasses.replace(cli.check_arguments(args), rgb_image=rgb)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explanation = cli.explain_and_write(checked, explainable)
    assert [w for w in caught if issubclass(w.category, InferredReshapeWarning)] == []
    with pytest.warns(InferredReshapeWarning), GradCAM(model, [model.norm]) as cam:
        expected = cam(cli.to_input_tensor(rgb, explainable), [ClassifierOutputTarget(1)])[0]
    np.testing.assert_array_equal(explanation.grayscale, expected)
    assert explanation.category == 1 and len(explanation.paths) == 3
    assert "explaining: 1 b with GradCAM" in capsys.readouterr().out


@pytest.mark.parametrize(
    "layer, oracle_layer",
    [("unused", "unused"), ("fc", "fc"), ("features", None)],
)
def test_a_layer_the_library_cannot_map_is_blamed_on_target_layer(x, layer, oracle_layer):
    """The pre-check's message is the library's own, from GradCAM on the same layer."""
    torch.manual_seed(0)
    model = ConvNet().eval()
    layers = [model.get_submodule(layer)]
    output, outputs = cli.forward_recording(model, x, layers)
    assert torch.equal(cli.class_scores(output), model(x)[0])
    if oracle_layer is None:  # a convolution's output is a map: no error
        cli.check_layer_outputs(model, layers, outputs, None, (16, 16))
        return
    with pytest.raises(ValueError) as library, GradCAM(model, layers) as cam:
        cam(x, [ClassifierOutputTarget(0)])
    with pytest.raises(cli.CommandLineError) as caught:
        cli.check_layer_outputs(model, layers, outputs, None, (16, 16))
    assert caught.value.flag == "--target-layer"
    assert str(caught.value) == f"--target-layer: {str(library.value).rstrip('.')}"


def test_a_method_that_does_not_fit_is_blamed_on_method(x):
    model = ConvNet().eval()
    with pytest.raises(cli.CommandLineError) as caught:
        cli.compute_map(GradCAM, model, [model.fc], None, x, 0, method_name="Grad-CAM")
    assert (caught.value.flag, caught.value.value) == ("--method", "Grad-CAM")
    assert "target_layers[0] (Linear) outputs a tensor of shape (1, 3)" in caught.value.message


def test_the_input_tensor_is_the_librarys_preprocessing():
    rgb = np.random.default_rng(0).random((40, 60, 3), dtype=np.float32)
    explainable = cli.Explainable(nn.Identity(), [], [], mean=(0.5,) * 3, std=(0.25,) * 3)
    tensor = cli.to_input_tensor(rgb, explainable)
    expected = (torch.from_numpy(rgb).permute(2, 0, 1)[None] - 0.5) / 0.25
    torch.testing.assert_close(tensor, expected, rtol=0, atol=1e-6)


def test_the_one_pass_reads_the_image_once(monkeypatch, tmp_path):
    reads = []
    read_image = arguments.read_image
    monkeypatch.setattr(
        arguments, "read_image", lambda path: reads.append(path) or read_image(path)
    )
    args = cli.build_parser().parse_args(["--output-dir", str(tmp_path)])
    checked = cli.check_arguments(args)
    assert reads == [str(cli.EXAMPLE_IMAGE)] and checked.rgb_image.shape == (224, 448, 3)
    assert checked.model == cli.ModelChoice()  # the default model, weights and layer
    assert isinstance(args, argparse.Namespace) and checked.method is GradCAM
