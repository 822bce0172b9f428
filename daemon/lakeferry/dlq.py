"""The dead-letter topic as operators see it: list, show, replay, purge.

The DLQ topic is keyed by event id (``malformed:<sha256>`` for events without a usable id).
Handling a letter appends a :class:`~lakeferry.messages.DlqTombstone` with the same key, so the
current DLQ is "the last record of every key, unless it is a tombstone" — the semantics of a
compacted Kafka topic, and the same on the embedded bus. An event that fails again after a
replay gets a new letter after the tombstone and shows up again.

Replay sends the task back to ``downloads.pending`` with a fresh attempt count (``attempt=0``,
``replays+1``) and then tombstones the letter; a malformed event's raw bytes go back to the
intake topic to be validated again. A crash between the two steps replays a letter twice,
which the idempotent stages absorb.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import msgspec
import trio

from lakeferry.bus.base import Bus, OutgoingRecord, Record
from lakeferry.logs import get_logger
from lakeferry.messages import DLQ, DOWNLOAD, DeadLetter, DlqTombstone, utcnow
from lakeferry.records import task_headers
from lakeferry.units import Duration
from lakeferry.urls import origin_of, redact_url

log = get_logger("dlq")


@dataclass(frozen=True)
class Letter:
    record: Record
    letter: DeadLetter

    @property
    def key(self) -> str:
        return (self.record.key or b"").decode(errors="replace")

    @property
    def event_id(self) -> str | None:
        return self.letter.task.event.id if self.letter.task is not None else None

    @property
    def url(self) -> str | None:
        return self.letter.task.event.url if self.letter.task is not None else None


@dataclass(frozen=True)
class LetterFilter:
    reasons: frozenset[str] = frozenset()
    stage: str | None = None
    older_than: float | None = None
    newer_than: float | None = None
    url_contains: str | None = None
    keys: frozenset[str] = frozenset()
    host: str | None = None
    """The URL's host (``files.example.com``) or ``host:port``, case-insensitive."""
    text: str | None = None
    """In the key, the event id, the URL without its query string, or the error text
    (case-insensitive)."""
    dead_by: dt.datetime | None = None
    """Only letters dead at or before this time (an action confirmed later leaves letters
    that arrived since alone)."""

    def matches(self, letter: Letter, now: dt.datetime) -> bool:
        d = letter.letter
        age = (now - d.dead_at).total_seconds()
        return (
            (not self.reasons or d.reason in self.reasons)
            and (self.stage is None or d.stage == self.stage)
            and (self.older_than is None or age >= self.older_than)
            and (self.newer_than is None or age <= self.newer_than)
            and (self.url_contains is None or self.url_contains in (letter.url or ""))
            and (not self.keys or letter.key in self.keys)
            and (self.host is None or _host_matches(self.host, letter.url))
            and (self.text is None or _text_matches(self.text, letter))
            and (self.dead_by is None or d.dead_at <= self.dead_by)
        )


def _host_matches(wanted: str, url: str | None) -> bool:
    origin = origin_of(url or "")  # host:port, the default port filled in
    wanted = wanted.lower()
    return bool(origin) and wanted in (origin, origin.rpartition(":")[0])


def _text_matches(wanted: str, letter: Letter) -> bool:
    wanted = wanted.lower()
    fields = (letter.key, letter.event_id or "", redact_url(letter.url or ""), letter.letter.error)
    return any(wanted in field.lower() for field in fields)


def parse_age(value: str | None) -> float | None:
    """An age filter's value (``30m``, ``2h``, ``7d``) in seconds; None when not given.
    ValueError names the value and the expected form."""
    if not value:
        return None
    try:
        return float(Duration.parse(value))
    except ValueError as exc:
        raise ValueError(f"{value!r}: {exc} (e.g. 30m, 2h, 7d)") from None


async def latest_by_key(
    bus: Bus, topic: str
) -> dict[bytes | None, tuple[Record, DeadLetter | DlqTombstone]]:
    """The last DLQ record of every key (a compacted view of the topic)."""
    latest: dict[bytes | None, tuple[Record, DeadLetter | DlqTombstone]] = {}
    async for record in bus.scan(topic):
        try:
            message = DLQ.decode(record.value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue  # not ours; never let one bad record hide the others
        latest[record.key] = (record, message)
    return latest


async def current_letters(bus: Bus, topic: str) -> list[Letter]:
    """The letters not yet replayed or purged, oldest first."""
    latest = await latest_by_key(bus, topic)
    letters = [Letter(rec, msg) for rec, msg in latest.values() if isinstance(msg, DeadLetter)]
    letters.sort(key=lambda item: item.letter.dead_at)
    return letters


def select(letters: Iterable[Letter], flt: LetterFilter) -> list[Letter]:
    now = utcnow()
    return [letter for letter in letters if flt.matches(letter, now)]


def _tombstone(topic: str, letter: Letter, action: str, by: str) -> OutgoingRecord:
    stone = DlqTombstone(action=action, at=utcnow(), by=by)
    return OutgoingRecord(topic, DLQ.encode(stone), letter.record.key)


async def replay(
    bus: Bus,
    letters: Sequence[Letter],
    *,
    dlq_topic: str,
    pending_topic: str,
    intake_topic: str,
    by: str = "",
    batch: int = 200,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Send letters back into the pipeline, then retire them. Returns how many."""
    producer = bus.producer()
    done = 0
    for start in range(0, len(letters), batch):
        chunk = letters[start : start + batch]
        out: list[OutgoingRecord] = []
        for item in chunk:
            task = item.letter.task
            if task is None:
                out.append(OutgoingRecord(intake_topic, item.letter.raw or b"", item.record.key))
                continue
            fresh = msgspec.structs.replace(task, attempt=0, due_at=None, replays=task.replays + 1)
            out.append(
                OutgoingRecord(
                    pending_topic,
                    DOWNLOAD.encode(fresh),
                    task.event.id.encode(),
                    task_headers(fresh, pending_topic),
                )
            )
        await producer.send_many(out)
        await producer.send_many([_tombstone(dlq_topic, item, "replay", by) for item in chunk])
        done += len(chunk)
        if progress is not None:
            progress(len(chunk))
    return done


async def purged_keys(bus: Bus, topic: str) -> set[str]:
    """Keys whose last DLQ record is a purge: the operator dropped them on purpose."""
    latest = await latest_by_key(bus, topic)
    return {
        (key or b"").decode(errors="replace")
        for key, (_, msg) in latest.items()
        if isinstance(msg, DlqTombstone) and msg.action == "purge"
    }


async def purge(bus: Bus, letters: Sequence[Letter], *, dlq_topic: str, by: str = "") -> int:
    if letters:
        await bus.producer().send_many(
            [_tombstone(dlq_topic, item, "purge", by) for item in letters]
        )
    return len(letters)


DEPTH_INTERVAL = 10.0
"""Seconds between two reads of the DLQ by :func:`watch_depth` (longer when a read is slow)."""


async def watch_depth(
    bus: Bus, topic: str, report: Callable[[dict[str, int], float], None]
) -> None:
    """Read the DLQ now and then and ``report`` its letters by reason and the oldest one's
    dead-letter time (Unix; 0: none) — ``lakeferry_dlq_letters``, the console's overview."""
    while True:
        started = trio.current_time()
        try:
            letters = await current_letters(bus, topic)
        except Exception:
            log.warning("reading the DLQ for its depth failed; will try again", exc_info=True)
        else:
            counts: dict[str, int] = {}
            for item in letters:
                counts[item.letter.reason] = counts.get(item.letter.reason, 0) + 1
            oldest = letters[0].letter.dead_at.timestamp() if letters else 0.0
            report(counts, oldest)
        took = trio.current_time() - started
        await trio.sleep(max(DEPTH_INTERVAL, 10 * took))
