"""Every command behaves like a well-kept Unix tool: bad arguments or a bad config end with exit 2
and one line on stderr naming the problem, never a traceback; every command's ``--help`` has a
description, an example and help on every flag.

Found: ``--batch``, ``--quiet``, ``--json`` had no help, descriptions showed reST markup, and
``lakeferry audit --events MISSING`` died with a ``FileNotFoundError`` traceback; argparse's
two-line usage errors buried the problem, and ``--al`` quietly meant ``--all`` on ``dlq purge``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from helpers.daemon import DaemonEnv
from helpers.markers import starts_processes
from lakeferry.cli import build_parser

# -- help ----------------------------------------------------------------------------------------


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _commands(child, (*path, name))


COMMANDS = list(_commands(build_parser()))


def test_the_command_tree_is_the_one_documented() -> None:
    leaves = {" ".join(path) for path, _ in COMMANDS}
    assert {
        "run", "check-config", "plugins", "plugin new", "submit", "dlq list", "dlq show",
        "dlq replay", "dlq purge", "top", "topics ensure", "topics list", "audit",
    } <= leaves  # fmt: skip


@pytest.mark.parametrize("path", [" ".join(p) or "(top)" for p, _ in COMMANDS])
def test_every_help_has_a_description_an_example_and_no_markup(path: str) -> None:
    parser = dict((" ".join(p) or "(top)", q) for p, q in COMMANDS)[path]
    text = parser.format_help()
    assert parser.description, f"lakeferry {path}: no description"
    assert "example" in (parser.epilog or ""), f"lakeferry {path}: no example in --help"
    for markup in ("``", ":mod:", ":func:", ":class:"):
        assert markup not in text, f"lakeferry {path}: reST markup {markup!r} in --help"
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                assert choice.help, f"lakeferry {path} {choice.dest}: no summary"
            continue
        flag = "/".join(action.option_strings) or action.dest
        assert action.help not in (None, "", argparse.SUPPRESS), f"lakeferry {path}: {flag}"


@pytest.mark.slow
def test_help_of_a_real_process_names_the_example() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lakeferry", "dlq", "purge", "--help"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "example:\n  lakeferry dlq purge --reason" in result.stdout
    assert "--yes, -y             do not ask (needed without a terminal)" in result.stdout


# -- bad arguments, bad configs ------------------------------------------------------------------

# Each case: the command line ({good} a config whose daemon has run, {nobus} a valid config no
# daemon ever ran with, {broken} not TOML, {unknown} an unknown key, {badnet} a value start
# refuses, {missing} a path that does not exist, {tmp} a scratch folder) and what the one line
# must say.
CASES: list[tuple[str, str]] = [
    ("", "lakeferry: the following arguments are required: COMMAND (see lakeferry --help)"),
    ("frobnicate", "invalid choice: 'frobnicate'"),
    # run
    ("run -c {good} --stages nope", "--stages: unknown stage(s) ['nope']"),
    ("run -c {good} --bogus", "lakeferry run: unrecognized arguments: --bogus"),
    ("run -c {unknown}", "bogus: unknown key"),
    ("run -c {badnet}", "allow_networks"),
    ("run -c {missing}", "cannot read"),
    # check-config
    ("check-config {good} extra", "lakeferry check-config: unrecognized arguments: extra"),
    ("check-config {badnet}", "allow_networks"),
    ("check-config -c {broken}", "is not valid TOML"),
    ("check-config {missing}", "cannot read"),
    # plugins, plugin new
    ("plugins --jsn", "lakeferry plugins: unrecognized arguments: --jsn"),
    ("plugins -c {broken}", "is not valid TOML"),
    ("plugin", "lakeferry plugin: the following arguments are required: ACTION"),
    ("plugin new acme", "the following arguments are required: --kind"),
    ("plugin new acme --kind tape", "argument --kind: invalid choice: 'tape'"),
    ("plugin new Bad_Name! --kind sink --dir {tmp}", "plugin name 'Bad_Name!'"),
    # submit
    ("submit -c {good}", "nothing to submit"),
    ("submit -c {good} --batch many https://example.org/a", "invalid int value: 'many'"),
    ("submit -c {good} --lane fast https://example.org/a", "invalid choice: 'fast'"),
    ("submit -c {good} ftp://example.org/a", "no downloader for scheme 'ftp'"),
    ("submit -c {good} --file {missing}", "cannot read it"),
    ("submit -c {nobus} https://example.org/a", "no bus at"),
    ("submit -c {unknown} https://example.org/a", "bogus: unknown key"),
    # dlq
    ("dlq", "lakeferry dlq: the following arguments are required: ACTION"),
    ("dlq list -c {good} --older-than soon", "invalid duration 'soon'"),
    ("dlq show -c {good} --stage nope", "argument --stage: invalid choice: 'nope'"),
    ("dlq purge -c {good}", "name the letters"),
    ("dlq purge -c {good} --al", "lakeferry dlq purge: unrecognized arguments: --al"),
    ("dlq replay -c {nobus} --all --yes", "no bus at"),
    ("dlq list -c {broken}", "is not valid TOML"),
    # top
    ("top --url notaurl --once", "--url notaurl: not a live feed URL"),
    ("top -c {unknown} --once", "bogus: unknown key"),
    ("top -c {good} --once", "takes any free port, so top cannot know it"),
    # topics
    ("topics", "lakeferry topics: the following arguments are required: ACTION"),
    ("topics drop", "invalid choice: 'drop'"),
    ("topics list -c {nobus}", "no bus at"),
    ("topics ensure -c {broken}", "is not valid TOML"),
    # audit
    ("audit -c {good} --events {missing}", "--events"),
    ("audit -c {nobus}", "no bus at"),
    ("audit -c {badnet}", "allow_networks"),
]


@pytest.fixture(scope="module")
@starts_processes
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every case run as a real process (four at a time), keyed by its command line."""
    root = tmp_path_factory.mktemp("usage")
    env = DaemonEnv(root / "good")
    try:
        assert env.start().terminate() == 0  # the bus and state exist, no daemon runs
    finally:
        for daemon in env.daemons:
            daemon.stop()
    fresh = DaemonEnv(root / "nobus")
    text = env.config.read_text()
    files = {
        "good": env.config,
        "nobus": fresh.config,
        "broken": root / "broken.toml",
        "unknown": root / "unknown.toml",
        "badnet": root / "badnet.toml",
    }
    files["broken"].write_text("sources = [\n")
    files["unknown"].write_text(text + "\n[bogus]\nx = 1\n")
    files["badnet"].write_text(
        text.replace("[download]\n", '[download]\nallow_networks = ["10.0.0.0/33"]\n', 1)
    )
    names = {k: str(v) for k, v in files.items()}
    names |= {"missing": str(root / "missing" / "nothing.toml"), "tmp": str(root)}
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LAKEFERRY_")}

    def run(case: str) -> subprocess.CompletedProcess[str]:
        argv = case.format(**names).split()
        return subprocess.run(
            [sys.executable, "-m", "lakeferry", *argv],
            capture_output=True, text=True, timeout=120, cwd=root, env=environ,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(
            zip([c for c, _ in CASES], pool.map(run, [c for c, _ in CASES]), strict=True)
        )
    return results


@pytest.mark.parametrize(("case", "expected"), CASES, ids=[c or "(nothing)" for c, _ in CASES])
def test_a_mistake_is_one_line_and_exit_2(
    outcomes: dict[str, Any], case: str, expected: str
) -> None:
    result = outcomes[case]
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lakeferry"), lines[0]
    assert expected in lines[0], lines[0]
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stdout == "", result.stdout


@pytest.mark.slow
def test_an_unexpected_error_is_one_line_that_says_it_is_a_bug(tmp_path: Path) -> None:
    """The last resort: an error no command expected is reported on one line (exit 1), with the
    way to see the traceback, and shown with ``LAKEFERRY_TRACEBACK=1``."""
    code = (
        "import lakeferry.cli as cli, sys\n"
        "def boom(args): raise RuntimeError('unplanned')\n"
        "cli.cmd_plugins = boom\n"
        "sys.exit(cli.main(['plugins']))\n"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LAKEFERRY_")}
    plain = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        cwd=tmp_path, env=environ,
    )  # fmt: skip
    assert plain.returncode == 1
    assert plain.stderr.splitlines() == [
        "lakeferry: unexpected error: RuntimeError: unplanned (a bug in lakeferry: run again "
        "with LAKEFERRY_TRACEBACK=1 to see where, and report it)"
    ]
    shown = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        cwd=tmp_path, env=environ | {"LAKEFERRY_TRACEBACK": "1"},
    )  # fmt: skip
    assert "Traceback" in shown.stderr
    assert "RuntimeError: unplanned" in shown.stderr
