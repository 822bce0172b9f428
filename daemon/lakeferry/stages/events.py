"""The events recorder: an analytics copy of every accepted event in the Delta events table.

It reads ``downloads.pending`` and the backfill lane's ``downloads.backfill`` in its own
consumer group, off the latency path, and records each task on its first delivery (attempt 0,
never replayed) in batches, exactly once per intake record
(:mod:`lakeferry.stages.exactly_once`): each commit carries the batch's application
transactions, and a row whose ``origin`` (the intake record it came from: ``events.raw/2/15``,
``spool:/dir/f.jsonl:12``...) is in the table already is not written again. So neither a
redelivery of ``downloads.pending`` (a crash between the Delta commit and the offset commit)
nor a second publish of one intake record (a crash of the ingest stage between its publish and
its commit, an upload that sends a task back to download) adds a row; ``lakeferry audit``
counts rows beyond the first per origin as ``duplicate_event_rows``.
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
from lakeferry.stages.exactly_once import ExactlyOnce
from lakeferry.stages.runner import run_consuming_stage
from lakeferry.stagespec import Consumes
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
        # Tasks written before ``origin`` existed: the pending record's position.
        origin=task.origin or f"{record.topic}/{record.partition}/{record.offset}",
        raw_json=json.dumps(public, sort_keys=True),
    )


class EventsRecorder:
    def __init__(self, pipeline: Pipeline) -> None:
        self.p = pipeline
        self.once = ExactlyOnce(
            pipeline.group_for("events"),
            lambda app_ids: pipeline.components.inventory.read_events_state(app_ids),
        )

        def cfg() -> IngestConfig:  # read live on every batch (SIGHUP may change it)
            return pipeline.settings.ingest

        self.batcher: Batcher[tuple[Record, EventRow | None]] = Batcher(
            "events",
            self.flush,
            max_items=lambda: cfg().events_batch_rows,
            max_wait=lambda: cfg().events_batch_wait,
        )

    async def handle(self, record: Record) -> None:
        if self.once.written(record):
            return
        try:
            row = event_row(record, record.value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # the download stage dead-letters undecodable tasks
        await self.batcher.add((record, row))

    async def flush(self, items: Sequence[tuple[Record, EventRow | None]]) -> None:
        """Rows of first deliveries whose origin is not recorded yet, and the offsets of every
        record of the batch, in one commit."""
        once = self.once
        selection = await once.select([(r, row.origin if row else None) for r, row in items])
        rows = [row for i in selection.keep if (row := items[i][1]) is not None]
        if not rows and not selection.transactions:
            return
        try:
            await self.p.components.inventory.append_events(rows, selection.transactions)
        except Exception:
            once.failed()
            raise
        once.committed(selection)
        self.p.metrics.delta_committed("events", len(rows))


EVENTS = Consumes(
    "events",
    topics=lambda core: [core.topics.pending, core.topics.backfill],
    capacity=lambda core: core.ingest.events_batch_rows * 2,
    enabled=lambda core: core.ingest.events_table,
)
"""The recorder's consumer, declared by the ingest stage's spec (it runs in that stage)."""


async def run_events_recorder(
    pipeline: Pipeline, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    recorder = EventsRecorder(pipeline)
    await recorder.once.load()
    await run_consuming_stage(
        pipeline, EVENTS, handler=recorder.handle, on_assign=recorder.once.on_assign,
        on_revoke=recorder.once.on_revoke, background=[recorder.batcher.run],
        task_status=task_status,
    )  # fmt: skip
