"""Reconciliation: does every event that entered the pipeline end up exactly once somewhere?

Every event id seen — on the intake and pending topics, in the events table, in the DLQ, or
listed in a file of submitted events — must be in exactly one of these states:

- ``landed``: in the inventory (exactly one row) and the sink holds the file with that size
  and sha256 (and the event's own sha256, when it gave one);
- ``dead_lettered``: a current (not replayed or purged) DLQ letter (``duplicate_id`` letters are
  not counted: they are second files under an id whose state is its first event's);
- ``in_flight``: a record for it sits at or after its consumer group's committed offset on one
  of the pipeline's topics, so the daemon will still process it;
- ``purged``: an operator purged its DLQ letter (``lakeferry dlq purge``);
- otherwise ``lost``.

``duplicate_rows`` counts inventory rows beyond the first per event id, ``duplicate_event_rows``
events-table rows beyond the first per intake record (``origin``); ``checksum_mismatches``
counts landed files whose sink copy or inventory row disagree with each other or with the
event; ``missing_in_sink`` counts inventory rows whose file is not in the sink.

The sink is listed too (``Sink.walk``): ``temp_files`` counts temporary files of puts (in
progress, or left by a killed process and not yet swept), ``unrecorded_in_sink`` files no
inventory row names (a file landed for an event the inventory does not know). While events are
in flight both can be legitimately non-zero (a put under way, a landed file whose row is not
committed yet), so they fail the audit only once nothing is in flight: after a drain.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import msgspec

from lakeferry.bus.base import Bus
from lakeferry.components import Inventory, InventoryRow, Sink
from lakeferry.config import LoadedConfig
from lakeferry.dlq import current_letters, purged_keys
from lakeferry.ledger import is_duplicate_key
from lakeferry.messages import CACHED, DOWNLOAD, RESULT, decode_event

SHOWN = 50
"""Ids and paths listed by name (the counts are complete)."""


@dataclass
class AuditReport:
    events: int = 0
    landed: int = 0
    dead_lettered: int = 0
    purged: int = 0
    in_flight: int = 0
    lost: int = 0
    duplicate_rows: int = 0
    duplicate_event_rows: int = 0
    checksum_mismatches: int = 0
    missing_in_sink: int = 0
    temp_files: int = 0
    unrecorded_in_sink: int = 0
    lost_ids: list[str] = field(default_factory=list)
    unrecorded: list[str] = field(default_factory=list)
    temporary: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        drained = self.in_flight == 0
        litter = self.temp_files or self.unrecorded_in_sink
        return not (
            self.lost
            or self.duplicate_rows
            or self.duplicate_event_rows
            or self.checksum_mismatches
            or self.missing_in_sink
            or (litter and drained)
        )

    def counts(self) -> dict[str, int]:
        data = asdict(self)
        for listing in ("lost_ids", "unrecorded", "temporary"):
            data.pop(listing)
        return data


def submitted_ids(path: Path) -> set[str]:
    """Event ids from a JSONL file of events (lines that do not decode are ignored here)."""
    ids: set[str] = set()
    with path.open("rb") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                ids.add(decode_event(line).id)
            except (msgspec.DecodeError, msgspec.ValidationError):
                try:
                    data = json.loads(line)
                except (ValueError, RecursionError):  # RecursionError: nested too deeply
                    continue
                if isinstance(data, dict) and isinstance(data.get("id"), str):
                    ids.add(data["id"])
    return ids


async def _ids_on_topic(
    bus: Bus,
    topic: str,
    group: str | None,
    decode_id: collections.abc.Callable[[bytes], str | None],
) -> tuple[set[str], set[str]]:
    """(every event id on ``topic``, ids with a record at/after ``group``'s committed offset)."""
    committed = await bus.committed(group, topic) if group else {}
    seen: set[str] = set()
    pending: set[str] = set()
    async for record in bus.scan(topic):
        event_id = decode_id(record.value)
        if event_id is None:
            continue
        seen.add(event_id)
        if group is not None and record.offset >= committed.get(record.partition, 0):
            pending.add(event_id)
    return seen, pending


def _decoder(
    codec: msgspec.json.Decoder[object] | None, kind: str
) -> collections.abc.Callable[[bytes], str | None]:
    def decode(value: bytes) -> str | None:
        try:
            if kind == "event":
                return decode_event(value).id
            if kind == "task":
                return DOWNLOAD.decode(value).event.id
            if kind == "cached":
                return CACHED.decode(value).task.event.id
            return RESULT.decode(value).task.event.id
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None

    return decode


async def audit(
    config: LoadedConfig,
    bus: Bus,
    inventory: Inventory,
    sink: Sink,
    *,
    submitted: Iterable[str] = (),
    verify_sink: bool = True,
) -> AuditReport:
    core = config.core
    topics = core.topics
    group = core.bus.group
    events: set[str] = set(submitted)
    in_flight: set[str] = set()
    expected_sha: dict[str, str] = {}

    if config.fleet:  # every node's cached topic, in its node's upload group
        prefix = f"{config.cached_prefix}."
        nodes = [t[len(prefix) :] for t in await bus.list_topics() if t.startswith(prefix)]
        cached = [(config.cached_topic_of(n), config.group_of("upload", n)) for n in nodes]
    else:
        cached = [(topics.cached, f"{group}.upload")]
    plan = [
        (topics.intake, f"{group}.ingest", "event"),
        (topics.pending, f"{group}.download", "task"),
        (topics.backfill, f"{group}.backfill", "task"),
        *[(t, f"{group}.download", "task") for t in core.retry.topics],
        *[(t, g, "cached") for t, g in cached],
        (topics.results, f"{group}.results", "result"),
    ]
    for topic, consumer_group, kind in plan:
        seen, pending = await _ids_on_topic(bus, topic, consumer_group, _decoder(None, kind))
        events |= seen
        in_flight |= pending
    for tasks_topic in (topics.pending, topics.backfill):
        async for record in bus.scan(tasks_topic):
            try:
                event = DOWNLOAD.decode(record.value).event
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if event.sha256:
                expected_sha[event.id] = event.sha256

    origins: collections.Counter[str] = collections.Counter()
    for row in await inventory.read_events():
        events.add(row.event_id)
        origins[row.origin] += 1
    # A duplicate_id letter is a second file under an id whose state is its first event's.
    letters = [x for x in await current_letters(bus, topics.dlq) if not is_duplicate_key(x.key)]
    dead = {letter.event_id or letter.key for letter in letters}
    purged = {k for k in await purged_keys(bus, topics.dlq) if not is_duplicate_key(k)}
    events |= dead | purged

    rows = await inventory.read_inventory()
    per_id = collections.Counter(row.event_id for row in rows)
    report = AuditReport()
    report.duplicate_rows = sum(n - 1 for n in per_id.values())
    report.duplicate_event_rows = sum(n - 1 for n in origins.values())
    landed = set(per_id)
    events |= landed
    first_rows: dict[str, InventoryRow] = {}
    for inv_row in rows:
        first_rows.setdefault(inv_row.event_id, inv_row)
    for event_id, first in first_rows.items():
        want = expected_sha.get(event_id)
        if want is not None and want != first.sha256:
            report.checksum_mismatches += 1
            continue
        if verify_sink:
            held = await sink.stat(first.destination)
            if held is None:
                report.missing_in_sink += 1
            elif held.sha256 != first.sha256 or held.size != first.size:
                report.checksum_mismatches += 1

    if verify_sink:
        recorded = {row.destination for row in rows}
        async for item in sink.walk():
            if item.temporary:
                report.temp_files += 1
                if len(report.temporary) < SHOWN:
                    report.temporary.append(item.destination)
            elif item.destination not in recorded:
                report.unrecorded_in_sink += 1
                if len(report.unrecorded) < SHOWN:
                    report.unrecorded.append(item.destination)

    report.events = len(events)
    report.landed = len(landed)
    report.dead_lettered = len(dead - landed)
    report.purged = len(purged - landed - dead)
    report.in_flight = len(in_flight - landed - dead - purged)
    lost = events - landed - dead - purged - in_flight
    report.lost = len(lost)
    report.lost_ids = sorted(lost)[:SHOWN]
    return report
