"""Built-in plugins use only the public plugin API of the core (``lakeferry.api``)."""

from __future__ import annotations

import ast
from pathlib import Path

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


def core_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [n for n in names if n == "lakeferry" or n.startswith("lakeferry.")]
    return found


def test_plugins_import_only_the_public_api() -> None:
    files = sorted(PLUGINS.glob("lakeferry_*/**/*.py"))
    assert len(files) >= 5
    offenders = {
        str(f.relative_to(PLUGINS)): bad
        for f in files
        if (bad := [m for m in core_imports(f) if m != "lakeferry.api"])
    }
    assert offenders == {}
