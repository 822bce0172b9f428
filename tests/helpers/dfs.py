"""The DFS (ADLS Gen2) emulator for tests (``tools/dfs_emulator.py``): fixture ``dfs_emulator``.

Function-scoped: each test gets its own emulator on a free port with its own state directory,
so faults and request counters never leak between tests (it starts in milliseconds). Tests talk
to it with ``account_url=dfs_emulator.account_url()`` and a SAS or account-key credential (the
emulator checks that one is present, not that it is valid), fault it with
``dfs_emulator.fail_next(...)`` / ``storm(...)`` / ``drop_connections(...)`` or, from another
process, through ``RemoteControl(dfs_emulator.url)``, and look at what landed with
``dfs_emulator.files(filesystem)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from helpers.tools import load_tool

if TYPE_CHECKING:
    import dfs_emulator as _module  # tools/ is on mypy's path: the checker reads it

    dfs_tool = _module
else:
    dfs_tool = load_tool("dfs_emulator")

DEFAULT_ACCOUNT = dfs_tool.DEFAULT_ACCOUNT
RemoteControl = dfs_tool.RemoteControl


@pytest.fixture
def dfs_emulator(tmp_path: Path) -> Iterator[Any]:
    with dfs_tool.serve(tmp_path / "dfs-emulator") as emulator:
        yield emulator
