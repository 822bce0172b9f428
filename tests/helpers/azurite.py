"""Azurite for tests: the session fixture ``azurite`` (``tools/azurite/azurite.py``).

Yields an ``Azurite`` with ``.blob_url`` (``http://127.0.0.1:PORT/devstoreaccount1``) and
``.connection_string``. Without Node.js the fixture fails, naming what to install.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from helpers.markers import starts_processes
from helpers.tools import load_tool

if TYPE_CHECKING:
    from azurite import azurite as azurite_tool  # tools/ is on mypy's path: the checker reads it
else:
    azurite_tool = load_tool("azurite/azurite")


@pytest.fixture(scope="session")
@starts_processes
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    try:
        port = load_tool("harness").free_port()
        running = azurite_tool.start(port, tmp_path_factory.mktemp("azurite"))
    except azurite_tool.AzuriteError as exc:
        pytest.fail(f"cannot run Azurite for the tests: {exc}", pytrace=False)
    try:
        yield running
    finally:
        running.stop()
