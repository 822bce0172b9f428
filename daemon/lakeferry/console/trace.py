"""Where is event X? The console's trace: given an id, where the event is or how it ended.

It looks, in order, at:

- the inventory: a landed row (destination, size, sha256, times) — the end of the road;
- the DLQ: a current letter (reason, error, when);
- every topic a stage consumes (intake excepted: its records are raw events, keyed by nothing
  reliable), from the consuming group's committed offset to the end: a record of the id there
  is *waiting* (topic, partition, offset; on a rung, its due time). Records below the committed
  offsets are done with, so the scan is as long as the backlog, not the topic;
- the events table: when the event arrived (its intake record), if the recorder runs.

A trace reads; it changes nothing. On the Kafka bus each topic's scan opens a consumer without a
group (it commits nothing).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from lakeferry import dlq
from lakeferry.livefeed import age
from lakeferry.logs import get_logger
from lakeferry.messages import CACHED, DOWNLOAD, RESULT, DownloadTask, utcnow
from lakeferry.retry import DUE_HEADER
from lakeferry.urls import redact_text, redact_url

if TYPE_CHECKING:
    from lakeferry.bus.base import Record
    from lakeferry.components import EventRow, InventoryRow
    from lakeferry.pipeline import Pipeline

log = get_logger("console")


@dataclass
class Place:
    """One thing the trace found."""

    kind: str
    """``landed``, ``dead_letter``, ``waiting`` or ``received``."""
    title: str
    fields: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Trace:
    event_id: str
    verdict: str
    """One line: where the event is, or how it ended."""
    places: list[Place]
    notes: list[str] = field(default_factory=list)
    """What the trace could not look at, and why."""


Lookup = Callable[[str], Awaitable[tuple[list["InventoryRow"], list["EventRow"]]]]


class Tracer:
    def __init__(self, pipeline: Pipeline, lookup: Lookup | None) -> None:
        self.p = pipeline
        self.lookup = lookup
        """The inventory's rows for an id (None: no inventory in this process)."""

    async def trace(self, event_id: str) -> Trace:
        places: list[Place] = []
        notes: list[str] = []
        landed: list[InventoryRow] = []
        received: list[EventRow] = []
        if self.lookup is None:
            notes.append("the inventory is not open in this process: landed rows not looked at")
        else:
            try:
                landed, received = await self.lookup(event_id)
            except Exception as exc:
                log.warning("trace: inventory lookup failed", extra={"error": str(exc)})
                notes.append(f"the inventory could not be read: {redact_text(str(exc))[:200]}")
        for land in landed:
            places.append(Place("landed", f"landed at {land.destination}", [
                ("destination", land.destination), ("size", f"{land.size:,} bytes"),
                ("sha256", land.sha256), ("url", redact_url(land.url)),
                ("created", _when(land.event_created_at)),
                ("downloaded", _when(land.downloaded_at)), ("uploaded", _when(land.uploaded_at)),
                ("recorded", _when(land.committed_at)), ("attempts", str(land.attempts)),
            ]))  # fmt: skip
        letter = await self._letter(event_id)
        if letter is not None:
            d = letter.letter
            places.append(Place("dead_letter", f"dead letter: {d.reason}", [
                ("reason", d.reason), ("stage", d.stage), ("dead at", _when(d.dead_at)),
                ("error", redact_text(d.error)[:500]),
                ("DLQ record", f"{letter.record.topic}/{letter.record.partition}/"
                               f"{letter.record.offset}"),
            ]))  # fmt: skip
        places += await self._waiting(event_id, notes)
        for event in received:
            places.append(Place("received", f"received from {event.origin}", [
                ("received", _when(event.received_at)), ("url", redact_url(event.url)),
                ("intake record", event.origin),
            ]))  # fmt: skip
        return Trace(event_id, _verdict(places), places, notes)

    async def _letter(self, event_id: str) -> dlq.Letter | None:
        letters = await dlq.current_letters(self.p.bus, self.p.topics.dlq)
        return next((x for x in letters if x.key == event_id), None)

    async def _waiting(self, event_id: str, notes: list[str]) -> list[Place]:
        """Records of the id on the stages' topics, not yet committed by their consumers."""
        p = self.p
        topics = p.topics
        key = event_id.encode()
        found: list[Place] = []
        consumers = [
            (topics.pending, "download"),
            (topics.backfill, "backfill"),
            *((rung, "download") for rung in p.ladder.topics),
            (topics.cached, "upload"),
            (topics.results, "results"),
        ]
        now = utcnow()
        for topic, stage_group in consumers:
            group = p.group_for(stage_group)
            try:
                committed = await p.bus.committed(group, topic)
                ends = await p.bus.end_offsets(topic)
                start = {part: committed.get(part, 0) for part in ends}
                async for record in p.bus.scan(topic, start=start):
                    if record.key != key:
                        continue
                    found.append(_waiting_place(record, now))
            except Exception as exc:
                notes.append(f"{topic}: could not be read ({redact_text(str(exc))[:200]})")
        return found


def _waiting_place(record: Record, now: dt.datetime) -> Place:
    topic, value = record.topic, record.value
    fields = [("record", f"{topic}/{record.partition}/{record.offset}")]
    due = record.headers.get(DUE_HEADER)
    if due:
        at = dt.datetime.fromtimestamp(int(due) / 1000, dt.UTC)
        wait = (at - now).total_seconds()
        fields.append(("due", f"{_when(at)} ({'in ' + age(wait) if wait > 0 else 'now'})"))
    for decoder in (DOWNLOAD, CACHED, RESULT):
        try:
            message = decoder.decode(value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        task = message if isinstance(message, DownloadTask) else message.task
        fields.append(("attempts so far", str(task.attempt)))
        break
    return Place("waiting", f"waiting on {topic}", fields)


def _verdict(places: list[Place]) -> str:
    kinds = [place.kind for place in places]
    if "landed" in kinds:
        return places[kinds.index("landed")].title
    if "dead_letter" in kinds:
        return places[kinds.index("dead_letter")].title + " (replay it from the DLQ page)"
    if "waiting" in kinds:
        return places[kinds.index("waiting")].title
    if "received" in kinds:
        return "received, not landed and not waiting on a topic: in a stage's hands right now"
    return "not found: not landed, not in the DLQ, not waiting on any topic"


def _when(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat(timespec="seconds")
