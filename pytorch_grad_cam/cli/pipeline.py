"""The command line's pipeline, and its entry points (``cam.py``, ``gradcam``).

``run`` is ``cam.py``: check the flags once (``check_arguments``), load the model
(``load_model``), then ``explain_and_write``:

1. predict: one forward pass, which also records the target layers' outputs;
2. print the top classes and resolve ``--target-category`` against the model's classes;
3. check that the library can lay each target layer's output out as a map, so that a
   layer that cannot be explained is blamed on ``--target-layer``;
4. compute the map (``compute_map``: the method called as ``cam(input_tensor,
   targets)``), then guided backpropagation;
5. compose and write the three pictures.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.activations_and_gradients import (
    check_reached,
    is_tensor_mapping,
    split_first_tensor,
)
from pytorch_grad_cam.attention_rollout import AttentionRollout
from pytorch_grad_cam.cli.arguments import (
    ExplainArguments,
    build_parser,
    check_arguments,
    resolve_category,
)
from pytorch_grad_cam.cli.errors import CommandLineError, blamed_on
from pytorch_grad_cam.cli.explainable import Explainable, to_input_tensor
from pytorch_grad_cam.cli.images import compose_images, file_stem, resized, write_images
from pytorch_grad_cam.cli.methods import explains_layers, maps_attention
from pytorch_grad_cam.cli.models import load_model, resolve_target_layers
from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUModel
from pytorch_grad_cam.layer_layout import InferredReshapeWarning, LayerLayout
from pytorch_grad_cam.utils.model_outputs import select_output
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.reshape_transforms import ReshapeTransform, infer_reshape_transform

TOP_CLASSES = 5


@dataclass
class Explanation:
    """What ``explain_and_write`` computed and wrote.

    Attributes:
        category: the class explained.
        grayscale: the map at the image's size, float32 in [0, 1].
        images: ``{"cam": overlay, "gb": guided backpropagation, "cam_gb": product}``,
            BGR uint8.
        paths: the files written.
    """

    category: int
    grayscale: np.ndarray
    images: dict[str, np.ndarray]
    paths: list[Path]


# --------------------------------------------------------------------------- the steps
def forward_recording(
    model: nn.Module, input_tensor: torch.Tensor, layers: Sequence[nn.Module]
) -> tuple[Any, dict[int, Any]]:
    """Run ``model(input_tensor)`` without autograd, recording the layers' outputs.

    Returns:
        The model's output, and ``{index: first output of layers[index]}`` (a layer the
        forward pass never reached has no entry).
    """
    outputs: dict[int, Any] = {}

    def recorder(index: int) -> Callable[[nn.Module, Any, Any], None]:
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            outputs.setdefault(index, output)

        return record

    handles = []
    try:
        for index, layer in enumerate(layers):
            handles.append(layer.register_forward_hook(recorder(index)))
        with torch.no_grad():
            output = model(input_tensor)
    finally:
        for handle in handles:
            handle.remove()
    return output, outputs


def class_scores(output: Any) -> torch.Tensor:
    """The first image's class scores in a model's output, float32 on the CPU (the
    library's ``select_output`` finds them: a tensor, ``.logits``, a tuple's first)."""
    return select_output(output)[0].float().cpu()


def predict(
    model: nn.Module, input_tensor: torch.Tensor, layer: nn.Module
) -> tuple[torch.Tensor, tuple[int, ...] | None]:
    """The model's scores for the one image, and the shape of ``layer``'s output
    (``None``: not a tensor, or never reached)."""
    output, outputs = forward_recording(model, input_tensor, [layer])
    first = outputs.get(0)
    shape = tuple(first.shape) if isinstance(first, torch.Tensor) else None
    return class_scores(output), shape


def check_layer_outputs(
    model: nn.Module,
    layers: Sequence[nn.Module],
    outputs: dict[int, Any],
    reshape_transform: ReshapeTransform | None,
    image_size: Sequence[int],
) -> None:
    """Fail about ``--target-layer`` when the library cannot lay a target layer's output
    out as a map, with the library's own message: the layer was never reached or, with
    no ``reshape_transform`` (the layout inferred), it outputs a mapping of tensors or a
    tensor without the image's spatial axes.

    Args:
        model: the model.
        layers: its target layers.
        outputs: ``forward_recording``'s record of them.
        reshape_transform: the transform the method will use; a given one is trusted
            (what it does not fit is the method's problem).
        image_size: the input's ``(height, width)``.

    Raises:
        CommandLineError: about ``--target-layer``.
    """
    with blamed_on("--target-layer"):
        # check_reached names the first layer whose entry is None.
        check_reached([True if index in outputs else None for index in range(len(layers))], layers)
        if reshape_transform is not None:
            return
        layout = LayerLayout(model, layers, None)
        for index, output in sorted(outputs.items()):
            if is_tensor_mapping(output):
                layout.transform(index, output, image_size)  # a mapping needs a transform
            tensor, _ = split_first_tensor(output)
            if tensor is not None and infer_reshape_transform(tensor.shape, image_size) is None:
                layout.reshape(index, tensor, None, len(image_size))


def print_top_classes(scores: torch.Tensor, categories: Sequence[str]) -> None:
    """The top classes with their softmax probabilities, one a line."""
    top = scores.softmax(dim=0).topk(min(TOP_CLASSES, scores.numel()))
    for probability, index in zip(top.values.tolist(), top.indices.tolist()):
        print(f"{probability:6.3f}  {index:4d}  {categories[index]}")


def attention_rollout(
    model: nn.Module, method_name: str, aug_smooth: bool = False, eigen_smooth: bool = False
) -> AttentionRollout:
    """An ``AttentionRollout`` of ``model`` (see ``attention_method``)."""
    return attention_method(AttentionRollout, model, method_name, aug_smooth, eigen_smooth)


def attention_method(
    method: type,
    model: nn.Module,
    method_name: str,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
) -> Any:
    """``method(model)`` for an attention method (``AttentionRollout``,
    ``TransformerAttribution``, ``LeGrad``).

    Raises:
        CommandLineError: about ``--method``: a model without attention layers, or
            smoothing flags (these methods have no target layers to smooth).
    """
    if aug_smooth or eigen_smooth:
        raise CommandLineError(
            "--aug-smooth and --eigen-smooth do not apply to it", "--method", method_name
        )
    try:
        return method(model)
    except ValueError as error:
        raise CommandLineError(
            f"works on vision transformers only, and {type(model).__name__} has no attention "
            "layers it can find",
            "--method",
            method_name,
        ) from error


def compute_map(
    method: type,
    model: nn.Module,
    layers: list[nn.Module],
    reshape_transform: ReshapeTransform | None,
    input_tensor: torch.Tensor,
    category: int,
    *,
    method_name: str | None = None,
    batch_size: int = 32,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
) -> np.ndarray:
    """The ``H x W`` map of ``method`` for ``category`` at the input tensor's size.

    Args:
        method: a CAM method class (``BaseCAM`` subclass) or an attention method
            (``AttentionRollout``, ``TransformerAttribution``, ``LeGrad``).
        model: the model, on the input's device.
        layers: its target layers.
        reshape_transform: for the layers' outputs; ``None``: as ``BaseCAM`` infers it.
        input_tensor: ``1 x 3 x H x W``.
        category: the class to explain.
        method_name: ``--method`` as the user wrote it (default: the class name).
        batch_size: forward passes at once, for the methods that run many.
        aug_smooth: test-time augmentation.
        eigen_smooth: the first principal component.

    Raises:
        CommandLineError: about ``--method``: the method does not fit the model or layer
            (the library's message).
    """
    name = method_name or method.__name__
    if maps_attention(method):
        explainer = attention_method(method, model, name, aug_smooth, eigen_smooth)
        with explainer, blamed_on("--method", name):
            if method is AttentionRollout:  # explains no target
                return np.asarray(explainer(input_tensor)[0])
            return np.asarray(explainer(input_tensor, [ClassifierOutputTarget(category)])[0])
    options: dict[str, Any] = {}
    parameters = inspect.signature(method).parameters
    if "batch_size" in parameters:
        options["batch_size"] = batch_size
    if "progress_bar" in parameters:
        options["progress_bar"] = True
    targets = [ClassifierOutputTarget(category)]
    with blamed_on("--method", name):
        cam = method(
            model=model, target_layers=layers, reshape_transform=reshape_transform, **options
        )
    with cam, blamed_on("--method", name):
        return cam(input_tensor, targets, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)[0]


# --------------------------------------------------------------------------- the pipeline
def explain_and_write(arguments: ExplainArguments, explainable: Explainable) -> Explanation:
    """Predict, explain ``--target-category`` (or the top class) with ``--method`` and
    write the three images to ``--output-dir``; print the top classes and the paths.

    Args:
        arguments: the checked flags (``check_arguments``); a ``--target-layer`` there
            replaces ``explainable``'s target layers.
        explainable: the model, as a loader returns it.

    Raises:
        CommandLineError: the flag at fault.
    """
    method, device = arguments.method, arguments.device
    model = explainable.model.to(device)
    paths = arguments.model.target_layer
    layers = resolve_target_layers(model, paths) if paths else explainable.target_layers
    if maps_attention(method):  # fail before predicting on a CNN
        attention_method(
            method, model, arguments.method_name, arguments.aug_smooth, arguments.eigen_smooth
        ).close()
    input_tensor = to_input_tensor(arguments.rgb_image, explainable).to(device)
    output, layer_outputs = forward_recording(model, input_tensor, layers)
    scores = class_scores(output)
    categories = _names_for(explainable.categories, scores.numel())
    category = resolve_category(arguments.target_category, categories)
    described = explainable.description or type(model).__name__
    print(f"{described} on {device}, target layer {', '.join(_layer_names(model, layers))}")
    print_top_classes(scores, categories)
    category = int(scores.argmax()) if category is None else category
    print(f"explaining: {category} {categories[category]} with {method.__name__}")

    reshape = explainable.reshape_transform
    if explains_layers(method):
        check_layer_outputs(model, layers, layer_outputs, reshape, input_tensor.shape[2:])
    del layer_outputs
    with warnings.catch_warnings():
        # The command line lets BaseCAM infer the layout (tokens, channels-last) for the
        # user, who has no flag to choose it: no advice to pass reshape_transform=.
        warnings.simplefilter("ignore", InferredReshapeWarning)
        grayscale = compute_map(
            method,
            model,
            layers,
            reshape,
            input_tensor,
            category,
            method_name=arguments.method_name,
            batch_size=arguments.batch_size,
            aug_smooth=arguments.aug_smooth,
            eigen_smooth=arguments.eigen_smooth,
        )
    guided = GuidedBackpropReLUModel(model)(input_tensor, category)
    images = compose_images(arguments.rgb_image, grayscale, guided)
    written = write_images(images, arguments.output_dir, file_stem(arguments.method_name))
    return Explanation(category, resized(grayscale, arguments.rgb_image.shape[:2]), images, written)


def _layer_names(model: nn.Module, layers: Sequence[nn.Module]) -> list[str]:
    names = {id(module): name for name, module in model.named_modules()}
    return [names.get(id(layer), type(layer).__name__) for layer in layers]


def _names_for(categories: Sequence[str], count: int) -> list[str]:
    return list(categories) if len(categories) == count else [f"class {i}" for i in range(count)]


# --------------------------------------------------------------------------- entry points
def run(args: argparse.Namespace) -> Explanation:
    """``cam.py``: check the arguments, load ``--model``, explain and write."""
    arguments = check_arguments(args)
    return explain_and_write(arguments, load_model(arguments.model))


def run_command(
    function: Callable[[argparse.Namespace], Any],
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``argv`` and call ``function(args)``; a ``CommandLineError`` becomes one line
    on stderr and exit status 2, a warning one line ``prog: warning: ...``.

    Returns:
        The exit status: 0, or 2 after a ``CommandLineError``.
    """
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(parser.prog)
            function(args)
    except CommandLineError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    return 0


def _one_line_warning(prog: str) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints ``prog: warning: message`` (no source line)."""

    def show(message: Warning | str, category: type, *args: Any, **kwargs: Any) -> None:
        print(f"{prog}: warning: {message}", file=sys.stderr)

    return show


#: ``gradcam <subcommand> ...``: the module whose ``main(argv) -> int`` runs it, imported
#: only when asked for (the app's and Ray's packages are optional extras).
SUBCOMMANDS = {
    "explain-dataset": "pytorch_grad_cam.batch.command",
    "app": "pytorch_grad_cam.app",
}


def main(argv: Sequence[str] | None = None) -> int:
    """``cam.py`` / ``gradcam``: returns the exit status.

    ``gradcam explain-dataset ...`` and ``gradcam app ...`` run a subcommand; anything
    else explains one image.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in SUBCOMMANDS:
        subcommand = importlib.import_module(SUBCOMMANDS[arguments[0]])
        status: int = subcommand.main(arguments[1:])
        return status
    return run_command(run, build_parser(), arguments)
