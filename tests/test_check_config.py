"""``lakeferry check-config`` refuses what a start refuses, with the same key.

Found: ``allow_networks = ["10.0.0.0/33"]`` and ``path_template = "{event.nope}/{filename}"``
passed check-config (rc 0) while ``run`` exited 2 — and the runbook's answer to a refused
reload is "fix the file (``lakeferry check-config``)". Each config below is run through both.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers.daemon import harness

# Every test here runs lakeferry as a process (check-config, run).
pytestmark = pytest.mark.slow

Mutation = Callable[[dict[str, Any], Path], None]


def _set(path: str, value: Any) -> Mutation:
    def mutate(data: dict[str, Any], root: Path) -> None:
        node = data
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value(root) if callable(value) else value

    return mutate


def _cache_is_a_file(data: dict[str, Any], root: Path) -> None:
    (root / "a-file").write_text("not a folder")
    data["cache"]["path"] = str(root / "a-file")


def _spool_done_is_the_spool(data: dict[str, Any], root: Path) -> None:
    data["sources"][0]["done_dir"] = data["sources"][0]["path"]


def _delta_sas_unset(data: dict[str, Any], root: Path) -> None:
    data["inventory"].update(
        {
            "inventory_uri": "abfss://lake@acct.dfs.core.windows.net/inventory",
            "events_uri": "abfss://lake@acct.dfs.core.windows.net/events",
            "credential": "sas",
            "sas_token_env": "LAKEFERRY_TEST_NO_SUCH_VAR",
        }
    )


def _sftp_key_missing(data: dict[str, Any], root: Path) -> None:
    data["downloaders"]["sftp"] = {"private_key_file": str(root / "no-such-key")}


REFUSED: dict[str, tuple[Mutation, str]] = {
    "allow-list": (
        _set("downloaders.http.allow_networks", ["10.0.0.0/33"]),
        "downloaders.http.allow_networks",
    ),
    "path template": (_set("sink.path_template", "{event.nope}/{filename}"), "sink.path_template"),
    "absolute template": (_set("sink.path_template", "/srv/{event.id}"), "sink.path_template"),
    "ladder": (_set("retry.topics", ["retry.a"]), "retry.topics"),
    "listen port": (_set("metrics.listen", "127.0.0.1:99999"), "metrics.listen"),
    "listen form": (_set("live.listen", "localhost"), "live.listen"),
    "duration": (_set("daemon.shutdown_grace", "soon"), "daemon.shutdown_grace"),
    "unknown key": (_set("download.concurency", 5), "download.concurency"),
    "unknown sink": (_set("sink.kind", "nope"), "sink.kind"),
    "cache path": (_cache_is_a_file, "cache.path"),
    "file roots": (_set("downloaders.file.roots", ["relative/dir"]), "downloaders.file.roots"),
    "spool": (_spool_done_is_the_spool, "sources[0].done_dir"),
    "delta credential": (_delta_sas_unset, "inventory.sas_token_env"),
    "sftp key": (_sftp_key_missing, "downloaders.sftp.private_key_file"),
}


def key_of(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    [line] = [x for x in stderr.splitlines() if x.strip()]
    assert line.startswith("lakeferry: config error: "), line
    return line.removeprefix("lakeferry: config error: ").split(": ", 1)[0]


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_check_config_refuses_what_a_start_refuses_with_the_same_key(
    tmp_path: Path, case: str
) -> None:
    mutate, key = REFUSED[case]
    data = harness.config_dict(tmp_path / "state")
    bad = copy.deepcopy(data)
    mutate(bad, tmp_path)
    config = harness.write_config(tmp_path / "lakeferry.toml", bad)
    run = harness.cli(config, "run", timeout=60)
    check = harness.cli(config, "check-config", timeout=60)
    assert (run.returncode, check.returncode) == (2, 2), (run.stderr, check.stderr)
    assert key_of(run.stderr).startswith(key), run.stderr
    assert key_of(check.stderr) == key_of(run.stderr)
    assert not (tmp_path / "state" / "bus.sqlite").exists()  # refused before the bus is opened


def test_check_config_creates_nothing_and_accepts_a_good_file(tmp_path: Path) -> None:
    data = harness.config_dict(tmp_path / "state")
    config = harness.write_config(tmp_path / "lakeferry.toml", data)
    positional = harness.cli(config, "check-config", str(config))
    assert positional.returncode == 0, positional.stderr
    assert positional.stdout.startswith(f"{config}: ok (bus embedded, sink localfs")
    assert not (tmp_path / "state").exists()  # no folder, no bus, no cache scan
