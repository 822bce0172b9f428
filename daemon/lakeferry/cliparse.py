"""How every ``lakeferry`` command is declared: a one-line summary for the command list, a
description and at least one example in its own ``--help``, help text on every flag, and a usage
mistake reported on one line (exit 2) that names the mistake and where the help is."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn


class Parser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line: ``lakeferry dlq purge: unrecognized
    arguments: --al (see lakeferry dlq purge --help)``. Subparsers inherit the class. Flags are
    never abbreviated: ``--al`` must not quietly mean ``--all`` on a destructive command."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def command(
    sub: Any,
    name: str,
    *,
    summary: str,
    examples: Sequence[str],
    description: str = "",
) -> Parser:
    """Add subcommand ``name`` to ``sub`` (an argparse subparsers action). ``summary`` is its line
    in the parent's command list; ``description`` (default: the summary as a sentence) and the
    ``examples`` open and close its own ``--help``."""
    if not examples:
        raise ValueError(f"command {name!r} needs at least one example")
    label = "example" if len(examples) == 1 else "examples"
    parser: Parser = sub.add_parser(
        name,
        help=summary,
        description=description or sentence(summary),
        epilog=f"{label}:\n" + "\n".join(f"  {line}" for line in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(parser=parser)  # the innermost command wins: it reports leftovers
    return parser


def group(
    sub: Any, name: str, *, summary: str, examples: Sequence[str], description: str = ""
) -> Any:
    """A command whose work is done by subcommands (``lakeferry dlq list``): returns the
    subparsers action to add them to with :func:`command`; one of them is required."""
    parent = command(sub, name, summary=summary, examples=examples, description=description)
    return parent.add_subparsers(dest="action", required=True, metavar="ACTION")


def parse(parser: Parser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; an argument no command takes is reported by the command it follows
    (``lakeferry dlq purge: unrecognized arguments: --al``), not by the top-level parser."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        owner: Parser = getattr(args, "parser", parser)
        owner.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def sentence(text: str) -> str:
    """``"list plugins"`` → ``"List plugins."``."""
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def confirm(yes: bool, question: str, without_terminal: str) -> str | None:
    """None when a destructive action may go ahead (``--yes``, or "y" on a terminal); else why
    not: ``without_terminal`` when no terminal can answer, "aborted" on any other answer. The
    question goes to stderr, so that stdout stays what the command prints."""
    if yes:
        return None
    if not sys.stdin.isatty():
        return without_terminal
    print(f"{question} [y/N] ", end="", file=sys.stderr)
    sys.stderr.flush()
    answer = sys.stdin.readline()
    return None if answer.strip().lower() in ("y", "yes") else "aborted"
