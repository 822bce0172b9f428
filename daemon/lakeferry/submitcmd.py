"""``lakeferry submit``: events onto the intake topic, checked first by the daemon's own rules.

Every event — a URL argument or a line of ``--file`` — passes :mod:`lakeferry.admission` before
anything is sent: the size limit (``ingest.max_event_bytes``), the event schema, the URL and a
downloader for its scheme, a safe destination. One refused event refuses the submission (exit 2,
naming the event and the problem, nothing sent), so an operator learns at once what the daemon
would only say in the DLQ.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Iterator
from typing import Any

from lakeferry.admission import Admission, Refusal
from lakeferry.config import LANES
from lakeferry.messages import EVENT, Event, utcnow

EXIT_OK, EXIT_USAGE = 0, 2


class Refused(Exception):
    """Nothing sent: exit 2 with this one line."""


def events_of(args: argparse.Namespace) -> list[tuple[str, bytes]]:
    """``(where, raw event)`` for every event the arguments name, in order."""
    many = len(args.urls) > 1
    for flag, value in (("--id", args.id), ("--path", args.path), ("--sha256", args.sha256)):
        if value is not None and (many or args.file):
            raise Refused(f"{flag} describes one event: give one URL and no --file")
    out: list[tuple[str, bytes]] = []
    if args.file:
        out.extend(_lines(args.file))
        if not out:
            raise Refused(f"{_name(args.file)} holds no events (blank lines only)")
    for n, url in enumerate(args.urls, start=1):
        event = Event(
            id=args.id or str(uuid.uuid4()), url=url, path=args.path, sha256=args.sha256,
            created_at=utcnow(),
        )  # fmt: skip
        out.append((f"URL {n} ({url[:80]})", EVENT.encode(event)))
    if not out:
        raise Refused("nothing to submit: give URLs or --file FILE (- for standard input)")
    return out


def _name(path: str) -> str:
    return "standard input" if path == "-" else path


def _lines(path: str) -> Iterator[tuple[str, bytes]]:
    try:
        source = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    except IsADirectoryError:
        raise Refused(f"--file {path}: is a folder, not a file of events") from None
    except OSError as exc:
        raise Refused(f"--file {path}: cannot read it ({exc.strerror or exc})") from None
    with source:
        for number, line in enumerate(source, start=1):
            if line.strip():
                yield f"{_name(path)} line {number}", line.strip()


def check(rules: Admission, events: list[tuple[str, bytes]]) -> None:
    """Refuse the whole submission at the first bad event, saying how many are bad."""
    received = utcnow()
    bad: list[tuple[str, Refusal]] = []
    for where, raw in events:
        try:
            rules.admit(raw, received)
        except Refusal as refusal:
            bad.append((where, refusal))
    if bad:
        first_where, first = bad[0]
        count = f"; {len(bad)} of {len(events)} events refused" if len(events) > 1 else ""
        raise Refused(f"{first_where}: {first.reason}: {first} (nothing sent{count})")


def key_of(raw: bytes) -> bytes | None:
    """The partition key: the event's id (admitted events all have one)."""
    data = json.loads(raw)
    ident = data.get("id") if isinstance(data, dict) else None
    return ident.encode() if isinstance(ident, str) else None


def add_parser(sub: Any, with_config: Any, fn: Any) -> None:
    from lakeferry.cliparse import command

    p = with_config(
        command(
            sub,
            "submit",
            summary="submit events (URLs or a JSONL file), checked first by the daemon's rules",
            description="Submit events to the intake topic. Every event is checked as the\n"
            "daemon would check it; one bad event refuses the submission (exit 2, nothing sent).",
            examples=[
                "lakeferry submit https://example.org/a.bin --path in/a.bin",
                "lakeferry submit --file events.jsonl --quiet",
                "lakeferry submit --file history.jsonl --lane backfill",
            ],
        )
    )
    p.add_argument("urls", nargs="*", metavar="URL", help="one event per URL (a new UUID each)")
    p.add_argument("--file", "-f", help="JSONL file of events, one per line ('-' for stdin)")
    p.add_argument("--id", help="the event's id (one URL only; default: a new UUID)")
    p.add_argument("--path", help="destination relative to the sink root (one URL only)")
    p.add_argument("--sha256", help="expected sha256 of the file, lowercase hex (one URL only)")
    p.add_argument(
        "--lane", choices=LANES, default="live",
        help="live (default), or backfill: downloads only in the capacity live events leave",
    )  # fmt: skip
    p.add_argument("--batch", type=int, default=500, metavar="N", help="events per bus write (500)")
    p.add_argument(
        "--quiet", "-q", action="store_true", help="no progress bar, no summary on stderr"
    )
    p.set_defaults(fn=fn)
