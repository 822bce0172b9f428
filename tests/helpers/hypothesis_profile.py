"""Hypothesis profiles for the property tests (a pytest plugin: list it in ``pytest_plugins``).

- ``lakeferry`` (loaded by default): no deadline (examples start trio, SQLite and httpx, whose
  first call is slow), failures printed with a reproduction blob, and the example database in
  ``.hypothesis/examples`` at the repository root. That directory is git-ignored: on a
  developer's machine a failing example is replayed first on every run until it is fixed, which
  is what the database is for.
- ``lakeferry-ci`` (``pytest --hypothesis-profile=lakeferry-ci``): the same, derandomized and
  without a database, so a CI run explores the same examples every time and a red build
  reproduces exactly.

Why the database is not committed: its files are keyed by hashes of test names and arguments,
change on every run and merge badly, and replaying stale entries after a test changes finds
nothing. An example that once broke something is pinned instead, in the test itself, with
``@example(...)`` (see ``tests/test_hostile_input.py``): reviewed, readable, and run everywhere.

The budget (``max_examples``) is set by each test with ``@settings``, so it is the same
whichever profile is loaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase

DATABASE = Path(__file__).resolve().parents[2] / ".hypothesis" / "examples"

settings.register_profile(
    "lakeferry",
    deadline=None,
    print_blob=True,
    database=DirectoryBasedExampleDatabase(str(DATABASE)),
)
settings.register_profile(
    "lakeferry-ci", settings.get_profile("lakeferry"), derandomize=True, database=None
)


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("hypothesis_profile", default=None):
        settings.load_profile("lakeferry")
