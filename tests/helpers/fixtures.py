"""Shared pytest fixtures; registered in ``tests/conftest.py`` via ``pytest_plugins``.

- ``origin``: the test HTTP origin (``tools/origin.py``) on 127.0.0.1 at a free port, one per
  session. Tests share it, so each test uses its own file names (counts and the flaky routes'
  state are per name).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from helpers.origin import Origin, serve


@pytest.fixture(scope="session")
def origin() -> Iterator[Origin]:
    with serve() as running:
        yield running
