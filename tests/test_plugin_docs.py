"""Meta-tests (after datasette's ``tests/test_docs.py``): every hook is documented and tested.

The rules, also stated at the end of ``docs/plugins.md``:

1. every hook in ``lakeferry.hookspecs`` has a section ``### `<hook>``` in ``docs/plugins.md``
   whose code block holds its exact signature, rendered from ``inspect.signature``;
2. that section says ``first non-None result wins`` for a ``firstresult`` hook and ``every
   implementation is called`` for the others;
3. the page documents no hook that does not exist;
4. every hook has a test of its own: a test function under ``tests/`` whose name starts with
   ``test_hook_<hook name without the "lakeferry_" prefix>``.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pluggy
import pytest

from lakeferry import hookspecs

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "plugins.md"
TESTS = ROOT / "tests"


def hooks() -> dict[str, Callable[..., Any]]:
    return {
        name: fn
        for name, fn in vars(hookspecs).items()
        if name.startswith("lakeferry_") and callable(fn)
    }


def rendered_signature(name: str, fn: Callable[..., Any]) -> str:
    """``name(param: Type, ...) -> Return`` with the annotations as written in hookspecs.py."""
    sig = inspect.signature(fn)  # string annotations: hookspecs uses postponed evaluation
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"{name}({params}) -> {sig.return_annotation}"


def sections() -> dict[str, str]:
    text = DOC.read_text()
    found = {}
    for match in re.finditer(r"^### `(lakeferry_\w+)`\n(.*?)(?=^#{1,3} |\Z)", text, re.M | re.S):
        found[match[1]] = match[2]
    return found


def is_firstresult(name: str) -> bool:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    opts = pm.parse_hookspec_opts(hookspecs, name)
    assert opts is not None, name
    return bool(opts.get("firstresult"))


def function_names() -> set[str]:
    names = set()
    for path in TESTS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(node.name)
    return names


def test_hookspecs_are_found() -> None:
    assert len(hooks()) >= 6
    assert "lakeferry_classify_error" in hooks()


@pytest.mark.parametrize("name", sorted(hooks()))
def test_hook_is_documented_with_its_exact_signature(name: str) -> None:
    section = sections().get(name)
    assert section is not None, f"docs/plugins.md has no section ### `{name}`"
    signature = rendered_signature(name, hooks()[name])
    assert f"```\n{signature}\n```" in section, f"signature of {name} should read: {signature}"
    flat = " ".join(section.split())
    if is_firstresult(name):
        assert "first non-None result wins" in flat
    else:
        assert "every implementation is called" in flat


def test_documented_hooks_exist() -> None:
    assert set(sections()) <= set(hooks())


@pytest.mark.parametrize("name", sorted(hooks()))
def test_hook_has_a_test(name: str) -> None:
    prefix = "test_hook_" + name.removeprefix("lakeferry_")
    assert any(t.startswith(prefix) for t in function_names()), (
        f"no test function named {prefix}* under tests/"
    )


def test_rendered_signature() -> None:
    assert rendered_signature("lakeferry_classify_error", hooks()["lakeferry_classify_error"]) == (
        "lakeferry_classify_error(error: BaseException, stage: str) -> PipelineError | None"
    )


def test_every_component_kind_has_its_register_hook() -> None:
    """One table says which hook registers each kind: it names every register hook, once."""
    registering = {name for name in hooks() if name.startswith("lakeferry_register_")}
    assert sorted(hookspecs.REGISTER_HOOKS.values()) == sorted(registering)
    assert len(set(hookspecs.REGISTER_HOOKS.values())) == len(hookspecs.REGISTER_HOOKS)
