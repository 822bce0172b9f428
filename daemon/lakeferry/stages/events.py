"""The events recorder: an analytics copy of every accepted event in the Delta events table.

It reads ``downloads.pending`` in its own consumer group, off the latency path, and records
each task on its first delivery (attempt 0, never replayed) in batches. The table is
at-least-once: a crash between a Delta commit and the bus offset commit writes a batch again,
so analytics deduplicate on ``event_id``. (The inventory, not this table, is exactly-once.)
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import msgspec
import trio

from lakeferry.bus.base import Record
from lakeferry.components import EventRow
from lakeferry.config import IngestConfig
from lakeferry.logs import get_logger
from lakeferry.messages import DOWNLOAD, to_builtins
from lakeferry.pipeline import Pipeline
from lakeferry.stages.batcher import Batcher
from lakeferry.stages.runner import run_consuming_stage
from lakeferry.urls import redact_url

log = get_logger("events")


def event_row(record: Record, raw_task: bytes) -> EventRow | None:
    task = DOWNLOAD.decode(raw_task)
    if task.attempt != 0 or task.replays != 0:
        return None
    event = task.event
    public = to_builtins(msgspec.structs.replace(event, url=redact_url(event.url)))
    return EventRow(
        event_id=event.id,
        url=redact_url(event.url),
        received_at=task.received_at,
        event_created_at=event.created_at or task.received_at,
        origin=f"{record.topic}/{record.partition}/{record.offset}",
        raw_json=json.dumps(public, sort_keys=True),
    )


async def run_events_recorder(
    pipeline: Pipeline, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    p = pipeline

    def cfg() -> IngestConfig:  # read live on every batch (SIGHUP may change it)
        return p.config.core.ingest

    async def write(rows: Sequence[EventRow]) -> None:
        await p.inventory.append_events(rows)
        p.metrics.delta_rows.labels("events").inc(len(rows))

    batcher: Batcher[EventRow] = Batcher(
        "events",
        write,
        max_items=lambda: cfg().events_batch_rows,
        max_wait=lambda: cfg().events_batch_wait,
    )

    async def handle(record: Record) -> None:
        try:
            row = event_row(record, record.value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # the download stage dead-letters undecodable tasks
        if row is not None:
            await batcher.add(row)

    await run_consuming_stage(
        p,
        name="events",
        topics=[p.config.core.topics.pending],
        handler=handle,
        limiter=trio.CapacityLimiter(cfg().events_batch_rows * 2),
        background=[batcher.run],
        task_status=task_status,
    )
