"""The pytest plugin of the conformance kit (entry point ``pytest11``: ``lakeferry``).

Loaded by pytest in every project where lakeferry is installed, so it only defines fixtures,
all named ``lakeferry_*`` to stay out of the way of a project's own:

- ``lakeferry_context``: a :class:`lakeferry.api.PluginContext` on a temporary state directory;
- ``lakeferry_memory_cache``: a fresh :class:`lakeferry.testing.MemoryCache`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from lakeferry.api import PluginContext
from lakeferry.testing.memory import MemoryCache


@pytest.fixture
def lakeferry_context(tmp_path: Path) -> PluginContext:
    state = tmp_path / "lakeferry-state"
    state.mkdir(exist_ok=True)
    return PluginContext(state_dir=state, logger=logging.getLogger("lakeferry.testing"))


@pytest.fixture
def lakeferry_memory_cache() -> MemoryCache:
    return MemoryCache()
