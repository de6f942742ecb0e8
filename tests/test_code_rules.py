"""Rules that keep the package easy to change (docs/ARCHITECTURE.md):

- no module of the package is over 500 lines;
- no module imports a private name (``_x``) of another module;
- no class overrides a private method of a class it inherits from: the extension
  points are public (``layer_weights``, ``weighted_activations``, ...).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import pytorch_grad_cam

PACKAGE_DIR = Path(pytorch_grad_cam.__file__).resolve().parent
SOURCES = sorted(PACKAGE_DIR.rglob("*.py"))
MAX_LINES = 500


def module_names() -> list[str]:
    names = ["pytorch_grad_cam"]
    for info in pkgutil.walk_packages([str(PACKAGE_DIR)], prefix="pytorch_grad_cam."):
        if info.name.startswith("pytorch_grad_cam.app"):
            continue  # Gradio is an optional extra; the app's modules are checked by ast only
        names.append(info.name)
    return names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE_DIR)))
def test_no_module_is_over_500_lines(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE_DIR)))
def test_no_private_name_is_imported_from_another_module(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pytorch_grad_cam"):
            parts = node.module.split(".")
            assert not any(part.startswith("_") for part in parts), (
                f"{path.name} imports from the private module {node.module}"
            )
            for alias in node.names:
                assert not alias.name.startswith("_"), (
                    f"{path.name} imports the private name {alias.name} from {node.module}"
                )


def package_classes() -> list[type]:
    classes = []
    for name in module_names():
        module = importlib.import_module(name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if value.__module__ == name:
                classes.append(value)
    return classes


@pytest.mark.parametrize("cls", package_classes(), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_no_class_overrides_a_private_method(cls):
    for name, value in vars(cls).items():
        method = inspect.isfunction(value) or isinstance(value, (staticmethod, classmethod))
        if not name.startswith("_") or name.startswith("__") or not method:
            continue
        for base in cls.__mro__[1:]:
            assert name not in vars(base), (
                f"{cls.__name__}.{name} overrides {base.__name__}.{name}: make the step a "
                "public extension point instead"
            )
