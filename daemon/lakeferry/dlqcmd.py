"""``lakeferry dlq list|show|replay|purge``: the dead-letter topic for the person on call.

Safe by default, and safe in scripts:

- ``replay`` and ``purge`` act on the letters a filter selects (ids, ``--reason``, ``--stage``,
  ``--older-than``, ``--newer-than``, ``--url``); to act on every letter, say ``--all``.
- They ask before acting on a terminal; without one (a script, cron, a pipe) nothing happens
  unless ``--yes`` says so. ``--dry-run`` prints what would happen (counts by reason) and
  changes nothing.
- ``--json`` prints JSON Lines (one object per line) for every action, so ``jq`` reads it.
- A closed pipe (``dlq show | head -1``) ends the command quietly (:func:`lakeferry.cli.main`).

Attempts: a letter's task keeps every failed try since the event first arrived, across replays
(``history``); ``attempt`` counts the tries since the last replay. ``list`` shows both, as
``tries this cycle/all cycles``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections import Counter
from typing import Any

from lakeferry import dlq
from lakeferry.messages import to_builtins
from lakeferry.urls import redact_url

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class Refused(Exception):
    """Bad usage of a dlq command: exit 2 with this one line."""


def letter_filter(args: argparse.Namespace) -> dlq.LetterFilter:
    def duration(flag: str, value: str | None) -> float | None:
        try:
            return dlq.parse_age(value)
        except ValueError as exc:
            raise Refused(f"{flag} {exc}") from None

    return dlq.LetterFilter(
        reasons=frozenset(args.reason or ()),
        stage=args.stage,
        older_than=duration("--older-than", args.older_than),
        newer_than=duration("--newer-than", args.newer_than),
        url_contains=args.url,
        keys=frozenset(args.ids or ()),
    )


def filtered(args: argparse.Namespace) -> bool:
    return bool(
        args.ids or args.reason or args.stage or args.older_than or args.newer_than or args.url
    )


def summary(item: dlq.Letter) -> dict[str, Any]:
    letter = item.letter
    task = letter.task
    return {
        "key": item.key,
        "event_id": item.event_id,
        "reason": letter.reason,
        "stage": letter.stage,
        "error": letter.error,
        "dead_at": letter.dead_at.isoformat(timespec="seconds"),
        "attempts": len(letter.attempts),
        "attempts_this_cycle": task.attempt if task is not None else 0,
        "replays": task.replays if task is not None else 0,
        "url": redact_url(item.url) if item.url else None,
        "source": letter.source,
    }


def full(item: dlq.Letter) -> dict[str, Any]:
    data = to_builtins(item.letter)
    if item.letter.raw is not None:
        data["raw"] = item.letter.raw.decode(errors="replace")
    if data.get("task"):  # query strings are secrets (SAS tokens, signatures)
        data["task"]["event"]["url"] = redact_url(data["task"]["event"]["url"])
    return {"key": item.key, "partition": item.record.partition,
            "offset": item.record.offset, "letter": data}  # fmt: skip


def by_reason(letters: list[dlq.Letter]) -> dict[str, int]:
    return dict(sorted(Counter(x.letter.reason for x in letters).items()))


def emit(obj: Any) -> None:
    print(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))


def print_list(letters: list[dlq.Letter], as_json: bool) -> None:
    if as_json:
        for item in letters:
            emit(summary(item))
        return
    rows = [summary(item) for item in letters]
    print(f"{'dead at (UTC)':<25} {'reason':<18} {'stage':<8} {'tries':>9} {'replays':>7}  "
          f"{'key':<36}  url or source")  # fmt: skip
    for s in rows:
        tries = f"{s['attempts_this_cycle']}/{s['attempts']}"
        print(f"{s['dead_at']:<25} {s['reason']:<18} {s['stage']:<8} {tries:>9} "
              f"{s['replays']:>7}  {s['key']:<36}  {s['url'] or s['source'] or ''}")  # fmt: skip
    counts = ", ".join(f"{k}: {v}" for k, v in by_reason(letters).items())
    tail = "; tries: this cycle/all cycles (a replay starts a new cycle)" if rows else ""
    print(f"{len(letters)} letter(s)" + (f" ({counts})" if counts else "") + tail)


def print_show(letters: list[dlq.Letter], as_json: bool) -> None:
    for i, item in enumerate(letters):
        if as_json:
            emit(full(item))
        else:
            if i:
                print()
            print(json.dumps(full(item), indent=2, ensure_ascii=False))


def confirm(args: argparse.Namespace, letters: list[dlq.Letter]) -> str | None:
    """None when the action may go ahead; else why not (a one-line message)."""
    from lakeferry.cliparse import confirm as ask

    counts = ", ".join(f"{k}: {v}" for k, v in by_reason(letters).items())
    return ask(
        args.yes,
        f"{args.action} {len(letters)} letter(s) ({counts})?",
        f"dlq {args.action}: {len(letters)} letter(s) match; nothing asked, nothing done "
        "without a terminal: add --yes (or --dry-run to see them)",
    )


async def run(args: argparse.Namespace, bus: Any, topics: Any) -> int:
    if args.action in ("replay", "purge") and not filtered(args) and not args.all:
        raise Refused(
            f"dlq {args.action}: name the letters (event ids, --reason, --stage, --older-than, "
            "--newer-than, --url) or say --all"
        )
    flt = letter_filter(args)
    letters = dlq.select(await dlq.current_letters(bus, topics.dlq), flt)
    if args.action == "list":
        print_list(letters, args.json)
        return EXIT_OK
    if args.action == "show":
        print_show(letters, args.json)
        return EXIT_OK
    counts = by_reason(letters)
    if args.dry_run or not letters:
        if args.json:
            emit({"action": args.action, "dry_run": bool(args.dry_run), "letters": len(letters),
                  "by_reason": counts})  # fmt: skip
        else:
            detail = ", ".join(f"{k}: {v}" for k, v in counts.items())
            verb = "would" if args.dry_run else "nothing to"
            print(f"{verb} {args.action} {len(letters)} letter(s)"
                  + (f" ({detail})" if detail else ""))  # fmt: skip
        return EXIT_OK
    why_not = confirm(args, letters)
    if why_not is not None:
        print(f"lakeferry: {why_not}", file=sys.stderr)
        return EXIT_USAGE if why_not != "aborted" else EXIT_FAILED
    by = getpass.getuser()
    if args.action == "purge":
        n = await dlq.purge(bus, letters, dlq_topic=topics.dlq, by=by)
    else:
        n = await dlq.replay(
            bus, letters, dlq_topic=topics.dlq, pending_topic=topics.pending,
            intake_topic=topics.intake, by=by,
        )  # fmt: skip
    if args.json:
        emit({"action": args.action, "dry_run": False, "letters": n, "by_reason": counts})
    elif args.action == "purge":
        print(f"purged {n} letter(s)")
    else:
        print(f"replayed {n} letter(s) to {topics.pending}")
    return EXIT_OK


def add_parser(sub: Any, with_config: Any, fn: Any) -> None:
    from lakeferry.cliparse import command, group
    from lakeferry.stages.catalog import STAGES

    dsub = group(
        sub,
        "dlq",
        summary="inspect and handle dead letters",
        description="Inspect and handle dead letters (the DLQ topic). Replay and purge act on\n"
        "the letters a filter selects, or on every letter with --all; without a terminal\n"
        "they also need --yes. --dry-run shows what would happen.",
        examples=["lakeferry dlq list", "lakeferry dlq replay --reason http_server_error --yes"],
    )
    examples = {
        "list": "lakeferry dlq list --reason not_found --older-than 1h",
        "show": "lakeferry dlq show EVENT_ID --json | jq .letter.error",
        "replay": "lakeferry dlq replay --reason http_server_error --dry-run",
        "purge": "lakeferry dlq purge --reason not_found --older-than 7d --yes",
    }
    for action, text in (
        ("list", "list current letters, one line each, with counts by reason"),
        ("show", "show letters in full: error, stage, attempt history, headers"),
        ("replay", "send letters back to downloads.pending with a fresh attempt count"),
        ("purge", "retire letters without replaying them"),
    ):
        p = with_config(command(dsub, action, summary=text, examples=[examples[action]]))
        p.add_argument("ids", nargs="*", metavar="ID", help="event ids (DLQ keys) to act on")
        p.add_argument("--reason", action="append", help="only this reason (repeatable)")
        p.add_argument("--stage", choices=STAGES, help="only letters from this stage: %(choices)s")
        p.add_argument("--older-than", metavar="AGE", help="only letters older than AGE (1h)")
        p.add_argument("--newer-than", metavar="AGE", help="only letters newer than AGE (30m)")
        p.add_argument("--url", metavar="TEXT", help="only letters whose URL contains TEXT")
        p.add_argument("--json", action="store_true", help="JSON Lines: one object per line")
        if action in ("replay", "purge"):
            p.add_argument("--all", action="store_true", help="every letter (no filter needed)")
            p.add_argument(
                "--yes", "-y", action="store_true", help="do not ask (needed without a terminal)"
            )
            p.add_argument(
                "--dry-run", action="store_true", help="print what would happen, change nothing"
            )
        p.set_defaults(fn=fn)
