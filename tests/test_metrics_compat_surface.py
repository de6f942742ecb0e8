"""Every module path, name and signature of grad-cam 1.5.7 under ``pytorch_grad_cam.metrics``
works here: frozen from the incumbent's surface listing (``inspect.signature`` of each).

For each incumbent parameter: the same name at the same position (so a positional call
binds to the same meaning), accepted by keyword, with the same default; every parameter
of this project's own beyond them has a default (or is keyword-only with one), so every
incumbent call binds. A failure here is a break of a user's code.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest

import pytorch_grad_cam.metrics

REQUIRED = inspect.Parameter.empty
PERCENTILES = [10, 20, 30, 40, 50, 60, 70, 80, 90]
WEIGHTING = [
    ((1, 1), 0.08333333333333333),
    ((0, 1), 0.16666666666666666),
    ((-1, 1), 0.08333333333333333),
    ((1, -1), 0.08333333333333333),
    ((0, -1), 0.16666666666666666),
    ((-1, -1), 0.08333333333333333),
    ((1, 0), 0.16666666666666666),
    ((-1, 0), 0.16666666666666666),
]
MAPS_CALL = [("input_tensor", REQUIRED), ("cams", REQUIRED), ("targets", REQUIRED)]
MAPS_CALL += [("model", REQUIRED)]
#: PerturbationConfidenceMetric.__call__, which the confidence and ROAD metrics inherit.
CONFIDENCE_CALL = MAPS_CALL + [("return_visualization", False), ("return_diff", True)]
ARCC_CALL = [("input_tensor", REQUIRED), ("grayscale_cams", REQUIRED), ("targets", REQUIRED)]
ARCC_CALL += [("model", REQUIRED)]

Params = list[tuple[str, Any]]


def cls(init: Params, **methods: Params) -> dict:
    return {"kind": "class", "init": init, "methods": methods}


def function(params: Params) -> dict:
    return {"kind": "function", "params": params}


def reexport(source: str) -> dict:
    return {"kind": "reexport", "source": source}


PC = "pytorch_grad_cam.metrics.perturbation_confidence"

# The listing, module by module. Methods marked "inherited" are not printed in the listing
# (the incumbent's classes inherit them) but are what a user calls.
SURFACE: dict[str, dict[str, dict]] = {
    "pytorch_grad_cam.metrics": {},
    "pytorch_grad_cam.metrics.arcc": {
        "ARCC": cls(
            [("base_method", REQUIRED), ("road_percentiles", [20, 40, 60, 80])],
            __call__=ARCC_CALL,
        ),
        "Coherency": cls([], __call__=ARCC_CALL + [("base_method", REQUIRED)]),
        "Complexity": cls([], __call__=[("grayscale_cams", REQUIRED)]),
        "batch_pearson_coherency": function([("A", REQUIRED), ("B", REQUIRED)]),
        "BaseCAM": reexport("pytorch_grad_cam.base_cam"),
        "ROADCombined": reexport("pytorch_grad_cam.metrics.road"),
    },
    "pytorch_grad_cam.metrics.cam_mult_image": {
        "CamMultImageConfidenceChange": cls([], __call__=CONFIDENCE_CALL),  # inherited
        "DropInConfidence": cls([], __call__=CONFIDENCE_CALL),
        "IncreaseInConfidence": cls([], __call__=CONFIDENCE_CALL),
        "multiply_tensor_with_cam": function([("input_tensor", REQUIRED), ("cam", REQUIRED)]),
        "PerturbationConfidenceMetric": reexport(PC),
    },
    PC: {
        "AveragerAcrossThresholds": cls(
            [("imputer", REQUIRED), ("percentiles", PERCENTILES)], __call__=MAPS_CALL
        ),
        "PerturbationConfidenceMetric": cls([("perturbation", REQUIRED)], __call__=CONFIDENCE_CALL),
        "RemoveLeastRelevantFirst": cls(
            [("percentile", REQUIRED), ("imputer", REQUIRED)],
            __call__=[("input_tensor", REQUIRED), ("mask", REQUIRED)],
        ),
        "RemoveMostRelevantFirst": cls(
            [("percentile", REQUIRED), ("imputer", REQUIRED)],
            __call__=[("input_tensor", REQUIRED), ("mask", REQUIRED)],
        ),
    },
    "pytorch_grad_cam.metrics.road": {
        "NoisyLinearImputer": cls(
            [("noise", 0.01), ("weighting", WEIGHTING)],
            __call__=[("img", REQUIRED), ("mask", REQUIRED)],
            add_offset_to_indices=[
                ("indices", REQUIRED),
                ("offset", REQUIRED),
                ("mask_shape", REQUIRED),
            ],
            setup_sparse_system=[
                ("mask", REQUIRED),
                ("img", REQUIRED),
                ("neighbors_weights", REQUIRED),
            ],
        ),
        "ROADCombined": cls([("percentiles", PERCENTILES)], __call__=MAPS_CALL),
        "ROADLeastRelevantFirst": cls([("percentile", 20)], __call__=CONFIDENCE_CALL),  # inherited
        "ROADLeastRelevantFirstAverage": cls([("percentiles", PERCENTILES)], __call__=MAPS_CALL),
        "ROADMostRelevantFirst": cls([("percentile", 80)], __call__=CONFIDENCE_CALL),  # inherited
        "ROADMostRelevantFirstAverage": cls([("percentiles", PERCENTILES)], __call__=MAPS_CALL),
        "AveragerAcrossThresholds": reexport(PC),
        "PerturbationConfidenceMetric": reexport(PC),
        "RemoveLeastRelevantFirst": reexport(PC),
        "RemoveMostRelevantFirst": reexport(PC),
    },
}

NAMES = [(module, name) for module, names in SURFACE.items() for name in names]


def own_parameters(owner: type | None, name: str, target: Any) -> list[inspect.Parameter]:
    """The parameters a caller passes: without ``self`` for a method called on an object."""
    parameters = list(inspect.signature(target).parameters.values())
    if owner is not None and not isinstance(inspect.getattr_static(owner, name), staticmethod):
        assert parameters and parameters[0].name == "self", (owner, name)
        parameters = parameters[1:]
    return parameters


def check_parameters(where: str, parameters: list[inspect.Parameter], incumbent: Params) -> None:
    """The incumbent's parameters by position, name and default; ours beyond them optional."""
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    assert len(positional) >= len(incumbent), f"{where}: fewer positional parameters"
    for index, (name, default) in enumerate(incumbent):
        ours = positional[index]
        assert ours.name == name, f"{where}: parameter {index} is {ours.name!r}, not {name!r}"
        assert ours.kind == ours.POSITIONAL_OR_KEYWORD, f"{where}: {name} not by keyword"
        assert type(ours.default) is type(default) or default is REQUIRED, (where, name)
        assert ours.default == default, f"{where}: {name}={ours.default!r}, not {default!r}"
    for extra in parameters:
        if extra in positional[: len(incumbent)]:
            continue
        variadic = extra.kind in (extra.VAR_POSITIONAL, extra.VAR_KEYWORD)
        assert variadic or extra.default is not REQUIRED, f"{where}: extra {extra.name} required"


def check_calls(where: str, target: Any, bound_self: bool, incumbent: Params) -> None:
    """The incumbent's full positional call and keyword call bind, to the same names."""
    signature = inspect.signature(target)
    head = [object()] if bound_self else []
    values = [object() for _ in incumbent]
    by_position = signature.bind(*head, *values)
    by_keyword = signature.bind(*head, **{name: v for (name, _), v in zip(incumbent, values)})
    for (name, _), value in zip(incumbent, values):
        assert by_position.arguments[name] is value, f"{where}: positional {name}"
        assert by_keyword.arguments[name] is value, f"{where}: keyword {name}"


@pytest.mark.parametrize("module", list(SURFACE))
def test_every_module_path_imports_and_is_an_attribute_of_the_metrics_package(module):
    imported = importlib.import_module(module)
    parent, _, leaf = module.rpartition(".")
    if parent == "pytorch_grad_cam.metrics":
        assert getattr(pytorch_grad_cam.metrics, leaf) is imported


@pytest.mark.parametrize("module, name", NAMES, ids=[f"{m}.{n}" for m, n in NAMES])
def test_every_name_exists_with_the_incumbents_signature(module, name):
    entry = SURFACE[module][name]
    value = getattr(importlib.import_module(module), name)
    where = f"{module}.{name}"
    if entry["kind"] == "reexport":
        assert value is getattr(importlib.import_module(entry["source"]), name), where
        return
    if entry["kind"] == "function":
        assert inspect.isfunction(value), where
        check_parameters(where, own_parameters(None, name, value), entry["params"])
        check_calls(where, value, False, entry["params"])
        return
    assert inspect.isclass(value), where
    check_parameters(where, own_parameters(None, name, value), entry["init"])
    check_calls(where, value, False, entry["init"])
    for method, params in entry["methods"].items():
        target = getattr(value, method)
        method_where = f"{where}.{method}"
        check_parameters(method_where, own_parameters(value, method, target), params)
        static = isinstance(inspect.getattr_static(value, method), staticmethod)
        check_calls(method_where, target, not static, params)


def test_the_frozen_listing_covers_every_metrics_module_path_of_the_incumbent():
    # 5 module paths and 25 names under pytorch_grad_cam.metrics in the listing.
    assert len(SURFACE) == 5
    assert len(NAMES) == 25
