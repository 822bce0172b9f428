"""``lakeferry plugin new``: the files of a new plugin package, ready to install and test.

The package a site team starts from: ``pyproject.toml`` with the ``lakeferry`` entry point, a
component written against :mod:`lakeferry.api` that already works (a toy the author replaces
step by step: every place to change is marked ``TODO``), tests that subclass the conformance
kit (:mod:`lakeferry.testing`), and a README.

The texts are package data, ``lakeferry/templates/`` (shipped in the wheel, read through
:mod:`importlib.resources`): ``common/`` holds what every kind shares, and each kind has a
folder of its own with ``kind.toml`` (its class name, hook and ``register`` call),
``module.py.tmpl``, ``test.py.tmpl`` and ``config.toml.tmpl``. A folder with a ``kind.toml``
is a kind: adding one needs no change here. Tokens filled in: ``__NAME__`` (the plugin's
name), ``__MOD__`` (the import name), ``__CLASS__`` (the class-name prefix), ``__SCHEME__``,
``__KIND__``, and from ``kind.toml`` ``__KIND_CLASS__``, ``__HOOK__``, ``__REGISTER__``,
``__REGISTER_CALL__``; ``__CONFIG__`` is the kind's configuration example.
"""

from __future__ import annotations

import re
import tomllib
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TypeAlias

Kind: TypeAlias = str
"""One of :data:`KINDS`."""

NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")

TEMPLATES: Traversable = files("lakeferry") / "templates"
COMMON = "common"


def _kinds() -> tuple[Kind, ...]:
    found = [d.name for d in TEMPLATES.iterdir() if d.is_dir() and (d / "kind.toml").is_file()]
    return tuple(sorted(found))


KINDS: tuple[Kind, ...] = _kinds()
"""The kinds a package can be made for: the template folders with a ``kind.toml``."""


def _text(*parts: str) -> str:
    return TEMPLATES.joinpath(*parts).read_text(encoding="utf-8")


def _register_call(args: list[str], kind_class: str) -> str:
    """``register(...)`` with the kind's arguments, then the component and its settings."""
    lines = [*args, f"__CLASS__{kind_class}", f"__CLASS__{kind_class}Settings"]
    return "register(\n" + "".join(f"        {line},\n" for line in lines) + "    )"


def render(name: str, kind: Kind) -> dict[str, str]:
    """The package's files, by path relative to its directory. ValueError for a bad name."""
    if not NAME.match(name):
        raise ValueError(
            f"plugin name {name!r}: use lower-case letters and digits, words joined by - or _"
        )
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
    spec = tomllib.loads(_text(kind, "kind.toml"))
    module = "lakeferry_" + name.replace("-", "_")
    tokens = {  # in order: values may hold the tokens after them
        "__REGISTER_CALL__": _register_call(spec["register_args"], spec["class"]),
        "__CONFIG__": _text(kind, "config.toml.tmpl").strip(),
        "__KIND_CLASS__": spec["class"],
        "__HOOK__": spec["hook"],
        "__REGISTER__": spec["register"],
        "__KIND__": kind,
        "__MOD__": module,
        "__CLASS__": "".join(part.capitalize() for part in re.split(r"[-_]", name)),
        "__SCHEME__": name.replace("_", "-"),
        "__NAME__": name,
    }

    def fill(text: str) -> str:
        for token, value in tokens.items():
            text = text.replace(token, value)
        return text

    return {
        "pyproject.toml": fill(_text(COMMON, "pyproject.toml.tmpl")),
        "README.md": fill(_text(COMMON, "README.md.tmpl")),
        f"{module}/__init__.py": fill(_text(COMMON, "__init__.py.tmpl")),
        f"{module}/{kind}.py": fill(_text(kind, "module.py.tmpl")),
        f"{module}/py.typed": "",
        f"tests/test_{module}.py": fill(_text(kind, "test.py.tmpl")),
    }


def write(name: str, kind: Kind, directory: Path) -> Path:
    """Write the package into ``directory / "lakeferry-<name>"``; FileExistsError if present."""
    target = directory / f"lakeferry-{name}"
    if target.exists():
        raise FileExistsError(f"{target} already exists")
    for rel, text in render(name, kind).items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return target
