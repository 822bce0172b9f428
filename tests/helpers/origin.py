"""The test origin (``tools/origin.py``), importable from tests as ``helpers.origin``.

``tools/`` holds runnable dev services, not a package, and the origin must stay a standalone
script for ``make demo``; so this module loads that one file by path instead of putting
``tools/`` on ``sys.path`` (where its module names could shadow others).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

_PATH = Path(__file__).resolve().parents[2] / "tools" / "origin.py"
_NAME = "lakeferry_tools_origin"


def _load() -> ModuleType:
    module = sys.modules.get(_NAME)
    if module is None:
        spec = importlib.util.spec_from_file_location(_NAME, _PATH)
        assert spec is not None, _PATH
        assert spec.loader is not None, _PATH
        module = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:
    import origin as _origin  # tools/ is on mypy's path: the checker reads it
else:
    _origin = _load()

Origin = _origin.Origin
OriginServer = _origin.OriginServer
BLOCK_SIZE: int = _origin.BLOCK_SIZE
blocks = _origin.blocks
content = _origin.content
serve = _origin.serve
sha256_of = _origin.sha256_of

__all__ = ["BLOCK_SIZE", "Origin", "OriginServer", "blocks", "content", "serve", "sha256_of"]
