"""``lakeferry dlq``: safe in scripts, JSON Lines, quiet on a closed pipe.

Found: ``dlq purge`` with no filter and no terminal purged all 34 letters, rc 0; ``dlq show``
with several letters printed objects no JSON parser accepts and ignored ``--json``; ``dlq show
| head -1`` died with ``BrokenPipeError``.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.daemon import DaemonEnv, harness
from helpers.wait import wait_until

# Every test here runs the lakeferry CLI against a daemon's bus.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def letters_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonEnv]:
    """A stopped daemon's state with five letters: four ``blocked`` (file:// without roots)
    and one ``malformed``."""
    env = DaemonEnv(tmp_path_factory.mktemp("dlq"))
    try:
        daemon = env.start()
        path = env.root / "events.jsonl"
        lines = [
            json.dumps({"id": f"gone-{i}", "url": f"file:///nowhere/{i}.bin"}) for i in range(4)
        ]
        path.write_text("\n".join([*lines, '{"id": "bad", "url": 5}']) + "\n")
        env.spool(path)  # `lakeferry submit` would refuse the malformed one
        wait_until(lambda: len(env.letters()) == 5, timeout=60, what="five letters")
        assert daemon.terminate() == 0
        yield env
    finally:
        for d in env.daemons:
            d.stop()


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    [line] = [x for x in stderr.splitlines() if x.strip()]
    return line


@pytest.mark.parametrize("action", ["purge", "replay"])
def test_without_a_filter_nothing_happens_unless_all_is_said(
    letters_env: DaemonEnv, action: str
) -> None:
    env = letters_env
    refused = env.cli("dlq", action)  # no terminal on stdin here: a script
    assert refused.returncode == 2
    assert one_line(refused.stderr) == (
        f"lakeferry: dlq {action}: name the letters (event ids, --reason, --stage, "
        "--older-than, --newer-than, --url) or say --all"
    )
    unconfirmed = env.cli("dlq", action, "--all")
    assert unconfirmed.returncode == 2
    assert one_line(unconfirmed.stderr) == (
        f"lakeferry: dlq {action}: 5 letter(s) match; nothing asked, nothing done without a "
        "terminal: add --yes (or --dry-run to see them)"
    )
    assert len(env.letters()) == 5


def test_dry_run_counts_by_reason_and_changes_nothing(letters_env: DaemonEnv) -> None:
    env = letters_env
    text = env.cli("dlq", "purge", "--all", "--dry-run")
    assert (text.returncode, text.stdout) == (
        0,
        "would purge 5 letter(s) (blocked: 4, malformed: 1)\n",
    )
    lines = env.cli("dlq", "replay", "--reason", "blocked", "--dry-run", "--json")
    assert [json.loads(x) for x in lines.stdout.splitlines()] == [
        {"action": "replay", "dry_run": True, "letters": 4, "by_reason": {"blocked": 4}}
    ]
    assert len(env.letters()) == 5


def test_json_is_json_lines_for_list_and_show(letters_env: DaemonEnv) -> None:
    env = letters_env
    listed = env.cli("dlq", "list", "--json").stdout.splitlines()
    assert len(listed) == 5
    assert {json.loads(x)["reason"] for x in listed} == {"blocked", "malformed"}
    shown = env.cli("dlq", "show", "--json").stdout.splitlines()
    assert [json.loads(x)["key"] for x in shown] == [json.loads(x)["key"] for x in listed]
    assert all("letter" in json.loads(x) for x in shown)


def test_list_has_a_header_and_says_which_tries_it_counts(letters_env: DaemonEnv) -> None:
    lines = letters_env.cli("dlq", "list").stdout.splitlines()
    assert lines[0].split()[:3] == ["dead", "at", "(UTC)"]
    assert "tries" in lines[0]
    assert lines[-1].startswith("5 letter(s) (blocked: 4, malformed: 1); tries: this cycle/all")
    assert any(" 1/1 " in line for line in lines[1:-1])


def test_a_closed_pipe_ends_quietly(letters_env: DaemonEnv) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lakeferry", "dlq", "show", "-c", str(letters_env.config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert proc.stdout is not None
    first = proc.stdout.readline()  # `| head -1`
    proc.stdout.close()
    _, stderr = proc.communicate(timeout=60)
    assert first.startswith(b"{")
    assert stderr.decode() == ""
    assert proc.returncode in (0, 1)


def test_on_a_terminal_it_asks_and_no_means_no(letters_env: DaemonEnv) -> None:
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lakeferry", "dlq", "purge", "--reason", "malformed", "-c",
         str(letters_env.config)],
        stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    os.close(terminal)
    assert proc.stderr is not None
    prompt = b""
    while b"[y/N]" not in prompt:
        chunk = os.read(proc.stderr.fileno(), 1024)
        assert chunk, prompt
        prompt += chunk
    assert prompt == b"purge 1 letter(s) (malformed: 1)? [y/N] "
    os.write(controller, b"n\n")
    stdout, stderr = proc.communicate(timeout=60)
    os.close(controller)
    assert proc.returncode == 1
    assert (stdout, stderr.decode()) == (b"", "lakeferry: aborted\n")
    assert len(letters_env.letters()) == 5


def test_a_filtered_purge_with_yes_purges_exactly_those(letters_env: DaemonEnv) -> None:
    env = letters_env
    done = env.cli("dlq", "purge", "gone-0", "gone-1", "--yes")
    assert (done.returncode, done.stdout) == (0, "purged 2 letter(s)\n")
    assert sorted(x["key"] for x in env.letters() if x["reason"] == "blocked") == [
        "gone-2", "gone-3",
    ]  # fmt: skip
    assert harness.cli(env.config, "dlq", "list", "--older-than", "soon").returncode == 2
