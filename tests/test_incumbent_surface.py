"""Code written for grad-cam 1.5.7 runs unchanged: every module path, name and signature.

``tests/data/incumbent_surface.md`` lists the incumbent's whole public surface. For each
entry: the module imports from the same path, the name exists there, and every
parameter of the incumbent's classes, functions and methods is accepted at its position
(same name, same place, positional) and by keyword, with the same default. The
project's own options come after them or are keyword-only.
"""

from __future__ import annotations

import importlib
import inspect

import pytest
from incumbent_surface import Callable_, Entry, Module, read_surface

import pytorch_grad_cam

SURFACE = read_surface()
POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def entries() -> list[tuple[Module, Entry]]:
    return [(module, entry) for module in SURFACE for entry in module.entries]


def test_the_surface_file_is_read_whole():
    """39 module paths and every entry in them (guards the parser, not the package)."""
    assert len(SURFACE) == 39
    assert sum(len(module.entries) for module in SURFACE) == 163
    assert sum(len(entry.methods) for _, entry in entries()) > 100


@pytest.mark.parametrize("path", [module.path for module in SURFACE])
def test_every_module_path_imports(path):
    module = importlib.import_module(path)
    assert module.__name__ == path


@pytest.mark.parametrize("path", [module.path for module in SURFACE if module.path.count(".") >= 1])
def test_submodules_are_attributes_after_a_bare_import(path):
    """``import pytorch_grad_cam`` then ``pytorch_grad_cam.metrics.road.ROADCombined``."""
    value = pytorch_grad_cam
    for part in path.split(".")[1:]:
        value = getattr(value, part)
    assert value.__name__ == path


@pytest.mark.parametrize(
    ("path", "name"), [(module.path, entry.name) for module, entry in entries()]
)
def test_every_name_exists(path, name):
    module = importlib.import_module(path)
    assert hasattr(module, name), f"{path}.{name} is missing"


def check_signature(function: object, expected: Callable_, where: str) -> None:
    signature = inspect.signature(function)
    ours = [p for p in signature.parameters.values() if p.name != "self"]
    has_var_keyword = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in ours)
    positional = [p for p in ours if p.kind in POSITIONAL]
    index = 0
    for parameter in expected.parameters:
        if parameter.kind == "var_keyword":
            assert has_var_keyword, f"{where}: takes no **{parameter.name}"
            continue
        if parameter.kind == "var_positional":
            assert any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in ours), (
                f"{where}: takes no *{parameter.name}"
            )
            continue
        assert index < len(positional), (
            f"{where}: parameter {parameter.name!r} (position {index}) is missing; "
            f"ours: {[p.name for p in positional]}"
        )
        mine = positional[index]
        assert mine.name == parameter.name, (
            f"{where}: position {index} is {mine.name!r}, the incumbent's is {parameter.name!r}"
        )
        if parameter.has_default:
            assert mine.default is not inspect.Parameter.empty, (
                f"{where}: {parameter.name!r} needs a default ({parameter.default!r})"
            )
            check_default(mine.default, parameter.default, f"{where}: {parameter.name}")
        index += 1


def check_default(ours: object, theirs: object, where: str) -> None:
    if theirs == "AblationLayer()":
        # One instance shared by every AblationCAM there; here a fresh one per object.
        assert ours is None, where
    elif isinstance(theirs, tuple) and len(theirs) == 2 and theirs[0] == "class":
        assert inspect.isclass(ours) and ours.__name__ == theirs[1], (
            f"{where}: default {ours!r}, the incumbent's is the class {theirs[1]}"
        )
    elif isinstance(theirs, (list, tuple)):
        assert list(ours) == list(theirs), f"{where}: default {ours!r} != {theirs!r}"
    else:
        assert (
            ours == theirs
            and type(ours) is type(theirs)
            or (
                isinstance(theirs, (int, float)) and not isinstance(theirs, bool) and ours == theirs
            )
        ), f"{where}: default {ours!r} != {theirs!r}"


CALLABLES = [
    (module.path, entry) for module, entry in entries() if entry.kind in ("class", "function")
]


@pytest.mark.parametrize(("path", "entry"), CALLABLES, ids=[f"{p}.{e.name}" for p, e in CALLABLES])
def test_every_signature_accepts_the_incumbents_calls(path, entry):
    value = getattr(importlib.import_module(path), entry.name)
    check_signature(value, entry.signature, f"{path}.{entry.name}")
    for method in entry.methods:
        assert hasattr(value, method.name), f"{path}.{entry.name}.{method.name} is missing"
        check_signature(getattr(value, method.name), method, f"{path}.{entry.name}.{method.name}")
