"""Relative paths in a config are relative to its folder, and only ``run`` creates a bus.

Found: ``submit`` and ``audit`` with ``-c`` pointing at a config whose relative paths resolved
against another working directory silently created a new ``./var/lakeferry/`` bus that no daemon
reads, rc 0.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers.daemon import harness

# The test here runs the lakeferry CLI as a process.
pytestmark = pytest.mark.slow

CONFIG = """
[daemon]
state_dir = "state"
[metrics]
listen = ""
[live]
listen = ""
[cache]
kind = "localfs"
path = "state/cache"
[sink]
kind = "localfs"
root = "../lake"
[inventory]
kind = "delta"
inventory_uri = "state/inventory"
events_uri = "state/events"
[downloaders.http]
allow_networks = ["127.0.0.0/8"]
"""


def lakeferry(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lakeferry", *args], capture_output=True, text=True,
        cwd=cwd, timeout=timeout,
    )  # fmt: skip


def test_relative_paths_follow_the_config_file_and_tools_create_no_bus(tmp_path: Path) -> None:
    site = tmp_path / "site" / "etc"
    site.mkdir(parents=True)
    config = site / "lakeferry.toml"
    config.write_text(CONFIG)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    bus = site / "state" / "bus.sqlite"
    for args in (
        ["submit", "http://127.0.0.1:9/a.bin"], ["dlq", "list"], ["audit"], ["topics", "list"],
    ):  # fmt: skip
        result = lakeferry(elsewhere, *args, "-c", str(config))
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr == (
            f"lakeferry: bus error: no bus at {bus} — is a daemon configured with this file? "
            "(relative paths in a config are relative to its folder; a daemon creates the bus "
            "when it first starts)\n"
        ), args
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["site", "etc", "lakeferry.toml", "elsewhere"]
    )  # nothing created, in either folder

    daemon = harness.DaemonProcess(config, tmp_path / "daemon.log")
    daemon.start()
    try:
        assert bus.exists()
        assert (tmp_path / "site" / "lake").is_dir()  # "../lake" from etc/
        sent = lakeferry(elsewhere, "submit", "http://127.0.0.1:9/a.bin", "-c", str(config))
        assert sent.returncode == 0, sent.stderr
        assert not (elsewhere / "var").exists()
    finally:
        assert daemon.terminate() == 0
