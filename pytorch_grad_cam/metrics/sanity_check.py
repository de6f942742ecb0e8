"""Model-parameter randomisation test (Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim,
NeurIPS 2018, "Sanity Checks for Saliency Maps", https://arxiv.org/abs/1810.03292,
section 3.1).

A map that explains the model must change when the model's learned parameters are
destroyed. Cascading randomisation re-initialises the layers from the top (output)
down, one step at a time, keeping the earlier steps' randomisation, and recomputes the
map after each step; independent randomisation re-initialises one step's layers at a
time on an otherwise intact model. Similarity to the original map is measured per
image by the Spearman rank correlation (the paper's main measure), the Pearson
correlation, and the mean absolute difference of the maps. A method that passes has
low similarity once the top layers are randomised.

Everything runs on a deep copy of the model; the user's model is never modified.
"""

from __future__ import annotations

import copy
import numbers
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.metrics.arguments import check_input_tensor, check_metric_targets, check_model
from pytorch_grad_cam.utils.find_layers import get_layer
from pytorch_grad_cam.utils.model_outputs import OutputSelector, select_output
from pytorch_grad_cam.utils.model_state import model_device
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, Target

#: A target layer given so that it can be found in the model's copy.
LayerSpec = Union[str, nn.Module, Callable[[nn.Module], nn.Module]]
#: A step: a module's dotted name, or a list of names re-initialised together. A name
#: may be a container: every module with parameters inside it is re-initialised.
StepSpec = Union[str, Sequence[str]]

NAME = "CascadingRandomization"


@dataclass
class RandomizationStep:
    """One step of the test: the map recomputed after re-initialising ``modules``.

    ``correlation`` (Spearman), ``pearson`` and ``mean_absolute_difference`` compare,
    per image (``B`` float32 values), the map after this step with the original one;
    the maps are compared as the CAM returns them (scaled to [0, 1] per image). A
    correlation is NaN when either map is constant (e.g. all zeros).
    """

    name: str
    modules: tuple[str, ...]
    correlation: np.ndarray
    pearson: np.ndarray
    mean_absolute_difference: np.ndarray
    maps: np.ndarray | None = field(default=None, repr=False)


class CascadingRandomization:
    """The model-parameter randomisation test for one CAM method.

    Called as ``check(input_tensor, targets, model, return_maps=False)``; returns a list
    of :class:`RandomizationStep`: first ``"original"`` (the map recomputed on the
    unchanged copy: correlation 1 for a deterministic method), then one per step.

    Args:
        cam: builds the CAM for a model: a CAM class (``GradCAM``) called as
            ``cam(model_copy, target_layers=[...])``, or any callable taking the model's
            copy and returning a CAM object when ``target_layers`` is ``None`` (then it
            must find its layers in the model it is given, e.g.
            ``lambda m: GradCAM(m, [m.layer4[-1]])``).
        target_layers: the layers to explain, found in each copy: dotted names
            (``"layer4.1"``), modules of the original model (looked up by their name),
            or callables ``model -> module``.
        steps: what is re-initialised at each step, top first: a list whose items are a
            module's dotted name or a list of names (re-initialised together). Default:
            every module that has parameters of its own, one per step, in the reverse
            of the order the forward pass calls them (modules it never calls directly,
            like an ``nn.MultiheadAttention``'s ``out_proj``, with their caller).
        cascading: keep earlier steps' randomisation (default); ``False``: independent
            randomisation, each step on a fresh copy.
        reinitialize: how a module's own parameters are re-drawn, ``f(module)``; the
            default calls the module's ``reset_parameters()`` (PyTorch's default
            initialisation for the layer type; normalisation layers also reset their
            running statistics) and, for modules without one, draws each parameter from
            ``N(0, std of the trained parameter)``. Seeded by ``seed`` with torch's RNG
            state saved and restored.
        seed: makes the randomisation reproducible.
        cam_kwargs: passed to each CAM call (e.g. ``{"aug_smooth": True}``).
        output_selector: where the scores are in the model's output, used when
            ``targets`` is ``None``.
    """

    cam: Callable[..., Any]
    target_layers: list[LayerSpec] | None
    steps: list[StepSpec] | None
    cascading: bool
    reinitialize: Callable[[nn.Module], None]
    seed: int
    cam_kwargs: dict
    output_selector: OutputSelector

    def __init__(
        self,
        cam: Callable[..., Any],
        target_layers: Sequence[LayerSpec] | None = None,
        steps: Sequence[StepSpec] | None = None,
        cascading: bool = True,
        reinitialize: Callable[[nn.Module], None] | None = None,
        seed: int = 0,
        cam_kwargs: dict | None = None,
        output_selector: OutputSelector = None,
    ) -> None:
        if not callable(cam):
            raise TypeError(
                f"{NAME}: cam must be a CAM class or a callable model -> CAM, got "
                f"{type(cam).__name__}."
            )
        if isinstance(target_layers, (str, nn.Module)) or callable(target_layers):
            raise TypeError(
                f"{NAME}: target_layers must be a list, got a single "
                f"{type(target_layers).__name__}; pass target_layers=[layer]."
            )
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"{NAME}: seed must be an int, got {seed!r}.")
        self.cam = cam
        self.target_layers = None if target_layers is None else list(target_layers)
        if self.target_layers is not None and not self.target_layers:
            raise ValueError(f"{NAME}: target_layers is empty; pass at least one layer.")
        self.steps = None if steps is None else _check_steps(steps)
        self.cascading = bool(cascading)
        self.reinitialize = reinitialize if reinitialize is not None else default_reinitialize
        self.seed = int(seed)
        self.cam_kwargs = dict(cam_kwargs or {})
        self.output_selector = output_selector

    def __call__(
        self,
        input_tensor: torch.Tensor,
        targets: list[Target] | None,
        model: nn.Module,
        return_maps: bool = False,
    ) -> list[RandomizationStep]:
        """Randomise the model step by step and compare each step's maps with the
        original's (see the class docstring)."""
        model = check_model(model, NAME)
        x = check_input_tensor(input_tensor, model, NAME)
        targets = check_metric_targets(targets, x.shape[0], NAME)
        layer_names = self._layer_names(model)
        pristine = copy.deepcopy(model).eval()
        steps = self.steps if self.steps is not None else _default_steps(pristine, x)
        step_modules = [_expand_step(pristine, step) for step in steps]
        if targets is None:
            with torch.no_grad():
                scores = select_output(pristine(x), self.output_selector)
            top = scores.reshape(scores.shape[0], -1).argmax(dim=1).tolist()
            targets = [ClassifierOutputTarget(category) for category in top]

        original = self._maps(pristine, layer_names, x, targets)
        again = self._maps(pristine, layer_names, x, targets)
        results = [_compare("original", (), original, again, return_maps)]
        # Cascading randomises the copy in place: the pristine one is no longer needed.
        working = pristine
        for step, names in zip(steps, step_modules):
            if not self.cascading:
                working = copy.deepcopy(pristine)
            for name in names:
                self._reinitialize(working, name)
            maps = self._maps(working, layer_names, x, targets)
            label = step if isinstance(step, str) else ", ".join(step)
            results.append(_compare(label, tuple(names), original, maps, return_maps))
        return results

    # ----------------------------------------------------------------- helpers
    def _layer_names(self, model: nn.Module) -> list | None:
        """Each target layer as something that finds it in a copy: a dotted name or a
        callable."""
        if self.target_layers is None:
            return None
        names = {id(module): name for name, module in model.named_modules()}
        resolved = []
        for index, layer in enumerate(self.target_layers):
            if isinstance(layer, nn.Module):
                if id(layer) not in names:
                    raise ValueError(
                        f"{NAME}: target_layers[{index}] ({type(layer).__name__}) is not a "
                        "submodule of the model; pass a layer of this model, its dotted "
                        "name, or a function of the model."
                    )
                resolved.append(names[id(layer)])
            elif isinstance(layer, str):
                get_layer(model, layer)  # fails early, with the nearest names
                resolved.append(layer)
            elif callable(layer):
                resolved.append(layer)
            else:
                raise TypeError(
                    f"{NAME}: target_layers[{index}] must be a dotted name, a module of the "
                    f"model or a callable model -> module, got {type(layer).__name__}."
                )
        return resolved

    def _maps(
        self, model: nn.Module, layer_names: list | None, x: torch.Tensor, targets: list
    ) -> np.ndarray:
        if layer_names is None:
            cam = self.cam(model)
        else:
            layers = [
                get_layer(model, name) if isinstance(name, str) else name(model)
                for name in layer_names
            ]
            cam = self.cam(model, target_layers=layers)
        maps = cam(x, targets, **self.cam_kwargs)
        if isinstance(maps, torch.Tensor):
            maps = maps.detach().cpu().numpy()
        return np.asarray(maps, dtype=np.float32)

    def _reinitialize(self, model: nn.Module, name: str) -> None:
        """Re-draw the own parameters of the module ``name``: seeded by ``seed`` and the
        name, so a module gets the same new values however the steps group it, and no
        module reuses a small seed the model itself may have been built with."""
        mixed = np.random.SeedSequence([self.seed, zlib.crc32(name.encode())]).generate_state(2)
        seed = int(mixed[0]) << 32 | int(mixed[1])
        module = get_layer(model, name) if name else model
        device = model_device(module)
        if device is not None and device.type != "cpu":
            module.cpu()  # draw on the CPU: reproducible across devices
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.reinitialize(module)
        if device is not None and device.type != "cpu":
            module.to(device)


def default_reinitialize(module: nn.Module) -> None:
    """``module.reset_parameters()`` when it has one; otherwise each of its own parameters
    is drawn from ``N(0, std of the parameter)`` (``N(0, 1)`` for a constant one)."""
    with torch.no_grad():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
            return
        for parameter in module.parameters(recurse=False):
            std = float(parameter.float().std()) if parameter.numel() > 1 else 0.0
            parameter.normal_(0.0, std if std > 0 else 1.0)


def cascading_randomization(
    model: nn.Module,
    input_tensor: torch.Tensor,
    cam: Callable[..., Any],
    target_layers: Sequence[LayerSpec] | None = None,
    targets: list[Target] | None = None,
    **kwargs: Any,
) -> list[RandomizationStep]:
    """``CascadingRandomization(cam, target_layers, **kwargs)(input_tensor, targets,
    model)``."""
    return CascadingRandomization(cam, target_layers, **kwargs)(input_tensor, targets, model)


def _check_steps(steps: Any) -> list:
    if isinstance(steps, str):
        raise TypeError(
            f"{NAME}: steps must be a list of module names (or of lists of names), got the "
            f"single string {steps!r}; pass [{steps!r}]."
        )
    checked: list[StepSpec] = []
    for index, step in enumerate(steps):
        if isinstance(step, str):
            checked.append(step)
        elif isinstance(step, Sequence) and all(isinstance(name, str) for name in step):
            checked.append(list(step))
        else:
            raise TypeError(
                f"{NAME}: steps[{index}] must be a module's dotted name or a list of names, "
                f"got {step!r}."
            )
    return checked


def _expand_step(model: nn.Module, step: StepSpec) -> list[str]:
    """The names of the modules with parameters of their own that ``step`` covers."""
    names = [step] if isinstance(step, str) else list(step)
    expanded = []
    for name in names:
        module = get_layer(model, name) if name else model
        for child_name, child in module.named_modules():
            if any(True for _ in child.parameters(recurse=False)):
                full = ".".join(part for part in (name, child_name) if part)
                if full not in expanded:
                    expanded.append(full)
    if not expanded:
        raise ValueError(
            f"{NAME}: step {step!r} has no parameters to re-initialise; name modules with "
            "parameters (or containers of them)."
        )
    return expanded


def _default_steps(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Modules with parameters of their own, top (last called) first."""
    names = {id(module): name for name, module in model.named_modules()}
    called: list[str] = []
    handles = [
        module.register_forward_pre_hook(
            lambda m, inputs: called.append(names[id(m)]) if names[id(m)] not in called else None
        )
        for module in model.modules()
    ]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for handle in handles:
            handle.remove()
    order = {name: position for position, name in enumerate(called)}
    ranked = []
    for name, module in model.named_modules():
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        # A module never called itself runs as part of its nearest called ancestor.
        ancestor = name
        while ancestor not in order and ancestor:
            ancestor = ancestor.rpartition(".")[0]
        ranked.append((order.get(ancestor, -1), name))
    ranked.sort(key=lambda item: item[0])  # stable: ties in registration order
    return [name for _, name in reversed(ranked)]


def _compare(
    name: str,
    modules: tuple[str, ...],
    original: np.ndarray,
    maps: np.ndarray,
    keep_maps: bool,
) -> RandomizationStep:
    a = original.reshape(original.shape[0], -1).astype(np.float64)
    b = maps.reshape(maps.shape[0], -1).astype(np.float64)
    spearman = np.array([_pearson(_average_ranks(u), _average_ranks(v)) for u, v in zip(a, b)])
    pearson = np.array([_pearson(u, v) for u, v in zip(a, b)])
    difference = np.abs(a - b).mean(axis=1)
    return RandomizationStep(
        name=name,
        modules=modules,
        correlation=spearman.astype(np.float32),
        pearson=pearson.astype(np.float32),
        mean_absolute_difference=difference.astype(np.float32),
        maps=maps if keep_maps else None,
    )


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0 .. n-1, ties given the mean of the ranks they span (as for Spearman)."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts_group = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    group = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.append(starts[1:], len(values))
    ranks = np.empty(len(values))
    ranks[order] = ((starts + ends - 1) / 2)[group]
    return ranks


def _pearson(u: np.ndarray, v: np.ndarray) -> float:
    u, v = u - u.mean(), v - v.mean()
    norm = np.sqrt((u * u).sum() * (v * v).sum())
    return float((u * v).sum() / norm) if norm > 0 else float("nan")
