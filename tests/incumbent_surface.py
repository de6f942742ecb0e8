"""The public surface of grad-cam 1.5.7, read from ``tests/data/incumbent_surface.md``.

The file lists every module path of the incumbent, every public name in it and the
signatures of its classes, functions and methods (as ``inspect.signature`` printed them).
This module turns it into data for ``test_incumbent_surface.py``.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

SURFACE_FILE = Path(__file__).resolve().parent / "data" / "incumbent_surface.md"

#: Defaults that are not literals, as the file prints them, and what stands for them here.
#: ``AblationLayer()`` was one instance shared by every AblationCAM; here ``None`` makes a
#: fresh one per object. ``typing.Optional[typing.Callable]`` is an annotation that was
#: written as a default; ``None`` is what it means.
NON_LITERAL_DEFAULTS = {
    "AblationLayer()": "AblationLayer()",
    "typing.Optional[typing.Callable]": None,
}


@dataclass
class Parameter:
    name: str
    kind: str  # "positional", "var_positional", "var_keyword"
    has_default: bool = False
    default: object = None


@dataclass
class Callable_:
    name: str
    parameters: list[Parameter]


@dataclass
class Entry:
    kind: str  # "class", "function", "name"
    name: str
    signature: Callable_ | None = None
    methods: list[Callable_] = field(default_factory=list)


@dataclass
class Module:
    path: str
    entries: list[Entry] = field(default_factory=list)


def split_top_level(text: str) -> list[str]:
    """Split at the commas that are outside brackets and quotes."""
    parts, depth, current, quote = [], 0, "", None
    for char in text:
        if quote:
            current += char
            if char == quote:
                quote = None
            continue
        if char in "'\"":
            quote = char
        elif char in "([{<":
            depth += 1
        elif char in ")]}>":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += char
    if current.strip():
        parts.append(current.strip())
    return parts


def parse_default(text: str) -> object:
    text = text.strip()
    if text in NON_LITERAL_DEFAULTS:
        return NON_LITERAL_DEFAULTS[text]
    class_match = re.fullmatch(r"<class '([\w.]+)'>", text)
    if class_match:
        return ("class", class_match.group(1).rsplit(".", 1)[-1])
    return ast.literal_eval(text)


def parse_parameter(text: str) -> Parameter:
    if text.startswith("**"):
        return Parameter(text[2:].split(":", maxsplit=1)[0].strip(), "var_keyword")
    if text.startswith("*"):
        return Parameter(text[1:].split(":", maxsplit=1)[0].strip(), "var_positional")
    # "name", "name: annotation", "name=default" or "name: annotation = default"
    match = re.match(r"^(\w+)\s*(?::\s*(.*?))?\s*(?:=\s*(.*))?$", text, re.DOTALL)
    if match is None:
        raise ValueError(f"cannot parse parameter {text!r}")
    if match.group(3) is None:
        return Parameter(match.group(1), "positional")
    return Parameter(match.group(1), "positional", True, parse_default(match.group(3)))


def parse_signature(text: str) -> Callable_:
    """``name(params) -> ret   [effective: ...]`` as a name and its parameters."""
    text = re.sub(r"\s+\[effective: [^\]]*\]$", "", text.strip())
    name, rest = text.split("(", 1)
    depth, end = 1, 0
    for index, char in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            end = index
            break
    parameters = [parse_parameter(part) for part in split_top_level(rest[:end])]
    return Callable_(name.strip(), [p for p in parameters if p.name != "self"])


def read_surface(path: Path = SURFACE_FILE) -> list[Module]:
    modules: list[Module] = []
    entry: Entry | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"^## `([\w.]+)`", line)
        if heading:
            modules.append(Module(heading.group(1)))
            entry = None
            continue
        if not modules:
            continue
        item = re.match(r"^- (class|function) `(.*)`(?:\s+\*re-export.*)?$", line)
        if item:
            signature = parse_signature(item.group(2))
            entry = Entry(item.group(1), signature.name, signature)
            modules[-1].entries.append(entry)
            continue
        name = re.match(r"^- `(\w+)`\s+\*re-export", line)
        if name:
            entry = Entry("name", name.group(1))
            modules[-1].entries.append(entry)
            continue
        method = re.match(r"^  - `(.*)`$", line)
        if method and entry is not None:
            entry.methods.append(parse_signature(method.group(1)))
    return modules
