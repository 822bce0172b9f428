"""deltalake's jemalloc gets lakeferry's options (lakeferry_delta.allocator), in a real process.

jemalloc prints its run-time options at exit when ``stats_print`` is on: that is how these
tests see what the library itself read, not what the environment says.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lakeferry_delta.allocator import ENVIRONMENT, OPTIONS, configure

# Imports the plugin the way the daemon does (before deltalake), adds stats_print to whatever
# the environment holds then, and makes deltalake's library allocate.
SCRIPT = """
import os, sys
import lakeferry_delta
os.environ[{env!r}] = os.environ.get({env!r}, "") + ",stats_print:true"
import pyarrow as pa
from deltalake import write_deltalake
write_deltalake(sys.argv[1], pa.table({{"a": [1, 2, 3]}}))
"""


def decay_read_by_jemalloc(tmp_path: Path, environment: dict[str, str]) -> int:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(env=ENVIRONMENT), str(tmp_path / "table")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found = re.search(r"opt\.dirty_decay_ms: (-?\d+)", result.stderr)
    assert found, result.stderr[-2000:]
    return int(found.group(1))


@pytest.mark.slow
def test_delta_writers_return_freed_pages_at_once(tmp_path: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if k != ENVIRONMENT}
    assert decay_read_by_jemalloc(tmp_path, environment) == 0


@pytest.mark.slow
def test_an_operators_own_allocator_options_win(tmp_path: Path) -> None:
    environment = {**os.environ, ENVIRONMENT: "dirty_decay_ms:5000"}
    assert decay_read_by_jemalloc(tmp_path, environment) == 5000


def test_configure_leaves_a_set_variable_alone() -> None:
    environ = {ENVIRONMENT: "narenas:1"}
    configure(environ)
    assert environ == {ENVIRONMENT: "narenas:1"}
    empty: dict[str, str] = {}
    configure(empty)
    assert empty == {ENVIRONMENT: OPTIONS}
