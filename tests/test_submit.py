"""``lakeferry submit`` checks events with the daemon's own rules before sending anything.

Found: ``--file missing.jsonl`` or a folder gave a traceback; ``--id X`` with two URLs was
silently ignored; ``--sha256 xyz``, ``not-a-url`` and ``--path ../../x`` were accepted and
dead-lettered later; an empty file said "give URLs or --file"; a 3 MB event was accepted while
the spool refused lines over 1 MiB.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.daemon import harness

# Every test here runs lakeferry submit as a process.
pytestmark = pytest.mark.slow

GOOD = "http://127.0.0.1:9/f.bin"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    data = harness.config_dict(tmp_path / "state")
    return harness.write_config(tmp_path / "lakeferry.toml", data)


def refused(config: Path, *args: str, stdin: str | None = None) -> str:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "lakeferry", "submit", *args, "-c", str(config)],
        capture_output=True, text=True, input=stdin, timeout=60, cwd=harness.ROOT,
    )  # fmt: skip
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    [line] = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.stdout == ""
    return line.removeprefix("lakeferry: ")


def test_bad_arguments_are_refused_and_nothing_is_sent(config: Path, tmp_path: Path) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    cases = {
        ("--file", str(tmp_path / "missing.jsonl")): (
            f"--file {tmp_path / 'missing.jsonl'}: cannot read it (No such file or directory)"
        ),
        ("--file", str(folder)): f"--file {folder}: is a folder, not a file of events",
        ("--file", str(empty)): f"{empty} holds no events (blank lines only)",
        ("--id", "x", GOOD, GOOD + "2"): "--id describes one event: give one URL and no --file",
        ("--path", "p", GOOD, GOOD): "--path describes one event: give one URL and no --file",
        (): "nothing to submit: give URLs or --file FILE (- for standard input)",
        ("not-a-url",): "URL 1 (not-a-url): malformed: url: URL without a scheme (nothing sent)",
        ("ftp://h/f.bin",): (
            "URL 1 (ftp://h/f.bin): unsupported_scheme: url: no downloader for scheme 'ftp' "
            "(have: file, http, https, sftp) (nothing sent)"
        ),
        ("--path", "../../x", GOOD): (
            f"URL 1 ({GOOD}): invalid_path: unsafe destination path '../../x': path component "
            "'..' (nothing sent)"
        ),
    }
    for args, message in cases.items():
        assert refused(config, *args) == message, args
    sha = refused(config, "--sha256", "xyz", GOOD)
    assert sha.startswith(f"URL 1 ({GOOD}): malformed: Expected `str` matching regex")
    assert "`$.sha256`" in sha
    assert not (tmp_path / "state").exists()  # no bus was opened, let alone written


def test_a_file_with_one_bad_event_is_refused_whole(config: Path, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(
        json.dumps({"id": "a", "url": GOOD}) + "\n"
        + json.dumps({"id": "b", "url": GOOD, "path": "/etc/passwd"}) + "\n\n"
        + json.dumps({"id": "c", "url": "nope"}) + "\n"
    )  # fmt: skip
    assert refused(config, "--file", str(events)) == (
        f"{events} line 2: invalid_path: unsafe destination path '/etc/passwd': absolute path "
        "(nothing sent; 2 of 3 events refused)"
    )
    piped = events.read_text()
    assert refused(config, "--file", "-", stdin=piped).startswith("standard input line 2:")


def test_one_size_limit_for_every_way_in(config: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.jsonl"
    line = json.dumps({"id": "big", "url": GOOD, "metadata": {"x": "y" * (3 << 20)}})
    big.write_text(line + "\n")
    assert refused(config, "--file", str(big)) == (
        f"{big} line 1: malformed: event of {len(line)} bytes is larger than "
        "ingest.max_event_bytes (1048576 bytes) (nothing sent)"
    )
