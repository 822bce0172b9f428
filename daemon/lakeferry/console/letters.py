"""The dead letters as the console shows them: filters from a query string, rows, detail, and the
replay and purge actions (the same :mod:`lakeferry.dlq` functions the CLI calls).

Nothing here renders HTML; everything it returns is already redacted (URLs without userinfo or
query strings, error texts scrubbed of URLs' query strings).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lakeferry import dlq
from lakeferry.livefeed import age
from lakeferry.messages import utcnow
from lakeferry.urls import origin_of, redact_text, redact_url

SHOWN = 500
"""Rows a list shows at most (the counts cover every letter the filter selects)."""

FILTER_FIELDS = ("reason", "stage", "host", "older", "newer", "q")


class FilterError(ValueError):
    """A filter field the console cannot read (shown beside the form)."""


@dataclass(frozen=True)
class Query:
    """A filter as the page's form gives it (every field a string; empty: not set)."""

    reason: str = ""
    stage: str = ""
    host: str = ""
    older: str = ""
    newer: str = ""
    q: str = ""

    @classmethod
    def of(cls, params: Mapping[str, str]) -> Query:
        return cls(**{name: str(params.get(name, "")).strip() for name in FILTER_FIELDS})

    def items(self) -> list[tuple[str, str]]:
        """The fields that are set, for links and hidden form fields."""
        return [(name, getattr(self, name)) for name in FILTER_FIELDS if getattr(self, name)]

    @property
    def empty(self) -> bool:
        return not self.items()

    def letter_filter(self, *, as_of: dt.datetime | None = None) -> dlq.LetterFilter:
        def age(name: str, value: str) -> float | None:
            try:
                return dlq.parse_age(value)
            except ValueError as exc:
                raise FilterError(f"{name}: {exc}") from None

        return dlq.LetterFilter(
            reasons=frozenset({self.reason}) if self.reason else frozenset(),
            stage=self.stage or None,
            older_than=age("older than", self.older),
            newer_than=age("newer than", self.newer),
            host=self.host or None,
            text=self.q or None,
            dead_by=as_of,
        )


def host_of(letter: dlq.Letter) -> str:
    return origin_of(letter.url) if letter.url else ""


def row(letter: dlq.Letter, now: dt.datetime) -> dict[str, Any]:
    d = letter.letter
    task = d.task
    return {
        "key": letter.key,
        "event_id": letter.event_id,
        "reason": d.reason,
        "stage": d.stage,
        "dead_at": d.dead_at.isoformat(timespec="seconds"),
        "age": age((now - d.dead_at).total_seconds()),
        "tries": f"{task.attempt if task is not None else 0}/{len(d.attempts)}",
        "host": host_of(letter),
        "url": redact_url(letter.url) if letter.url else "",
        "error": redact_text(d.error)[:300],
    }


def detail(letter: dlq.Letter) -> dict[str, Any]:
    """Everything the letter holds, redacted: for the letter's page."""
    d = letter.letter
    task = d.task
    headers = {
        name: redact_text(value.decode(errors="replace"))
        for name, value in sorted(letter.record.headers.items())
    }
    history = [
        {"attempt": a.attempt, "at": a.at.isoformat(timespec="seconds"), "stage": a.stage,
         "reason": a.reason, "error": redact_text(a.error)}
        for a in d.attempts
    ]  # fmt: skip
    out: dict[str, Any] = {
        **row(letter, utcnow()),
        "error": redact_text(d.error),
        "origin_topic": d.origin_topic,
        "source": d.source or "",
        "partition": letter.record.partition,
        "offset": letter.record.offset,
        "headers": headers,
        "history": history,
        "raw": redact_text(d.raw.decode(errors="replace"))[:2000] if d.raw else "",
    }
    if task is not None:
        event = task.event
        out.update(
            replays=task.replays, lane=task.lane, path=event.path or "", size=event.size,
            sha256=event.sha256 or "", destination=task.destination or "",
            received_at=task.received_at.isoformat(timespec="seconds"),
        )  # fmt: skip
    return out


def by_reason(letters: Sequence[dlq.Letter]) -> dict[str, int]:
    return dict(sorted(Counter(x.letter.reason for x in letters).items()))
