"""The results stage: upload results into the Delta inventory, exactly once, in batches.

Exactly-once by offset and by event id (:mod:`lakeferry.stages.exactly_once`): each commit
carries the batch's rows and one application transaction per bus partition; records at or
below a partition's stored version, and results of event ids already landed (a source that
delivered an event twice puts two results at two offsets), are skipped. Every topic is keyed by
event id, so one id is handled by one partition owner at a time.

Phases of a batch: collect (until ``batch_rows``, ``batch_wait`` or quiet: see
:mod:`lakeferry.stages.batcher`; under a high rate, fewer and larger commits) → filter (skip
by stored version, then by landed id) → write (one commit with rows + transactions) → release
(handlers return, the driver commits the bus offsets).

Error handling: a failed Delta write is retried in place with backoff while the handlers wait,
so backpressure reaches the consumer instead of piling up results.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import trio

from lakeferry.bus.base import Record
from lakeferry.components import InventoryRow
from lakeferry.config import ResultsConfig
from lakeferry.logs import get_logger
from lakeferry.messages import RESULT, UploadResult, utcnow
from lakeferry.pipeline import Pipeline
from lakeferry.stages.batcher import Batcher
from lakeferry.stages.exactly_once import ExactlyOnce
from lakeferry.stages.runner import run_consuming_stage
from lakeferry.stagespec import Consumes, StageSpec
from lakeferry.urls import redact_url

log = get_logger("results")


def inventory_row(result: UploadResult) -> InventoryRow:
    event = result.task.event
    now = utcnow()
    return InventoryRow(
        event_id=event.id,
        url=redact_url(event.url),
        destination=result.destination,
        size=result.size,
        sha256=result.sha256,
        event_created_at=event.created_at or result.task.received_at,
        downloaded_at=result.downloaded_at,
        uploaded_at=result.uploaded_at,
        committed_at=now,
        attempts=result.task.attempt + 1,
        skipped_upload=result.skipped,
        metadata_json=json.dumps(dict(event.metadata), sort_keys=True),
    )


class ResultsStage:
    def __init__(self, pipeline: Pipeline) -> None:
        self.p = pipeline
        self.once = ExactlyOnce(
            pipeline.group_for("results"),
            lambda app_ids: pipeline.components.inventory.read_state(app_ids),
        )

        def cfg() -> ResultsConfig:  # read live on every batch (SIGHUP may change it)
            return pipeline.settings.results

        self.batcher: Batcher[tuple[Record, UploadResult]] = Batcher(
            "inventory",
            self.flush,
            max_items=lambda: cfg().batch_rows,
            max_wait=lambda: cfg().batch_wait,
            on_error=lambda: pipeline.metrics.bus_error("inventory"),
        )

    async def load(self) -> None:
        await self.once.load()
        log.info("inventory loaded", extra={"landed": len(self.once.keys)})

    async def handle(self, record: Record) -> None:
        result = await self.p.dead_letters.decode(RESULT, record, "results")
        if result is None:
            return
        if self.once.written(record):
            self.p.metrics.inventory_skip("offset")
            return
        await self.batcher.add((record, result))

    async def flush(self, items: Sequence[tuple[Record, UploadResult]]) -> None:
        p = self.p
        selection = await self.once.select([(r, res.task.event.id) for r, res in items])
        p.metrics.inventory_skip("offset", selection.by_offset)
        p.metrics.inventory_skip("duplicate", selection.by_key)
        rows = [inventory_row(items[i][1]) for i in selection.keep]
        if not rows:
            return
        started = time.monotonic()
        try:
            await p.components.inventory.append(rows, selection.transactions)
        except Exception:
            self.once.failed()
            raise
        p.metrics.delta_committed("inventory", len(rows), time.monotonic() - started)
        self.once.committed(selection)
        committed = utcnow()
        seconds = time.monotonic() - started
        for row in rows:
            p.metrics.end_to_end.observe((committed - row.event_created_at).total_seconds())
            p.finished("results", "recorded", seconds, row.event_id, row.attempts - 1)


async def run_results(
    pipeline: Pipeline, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Consume ``downloads.results`` into the inventory until drained."""
    stage = ResultsStage(pipeline)
    await stage.load()
    await run_consuming_stage(
        pipeline, SPEC.main, handler=stage.handle, on_assign=stage.once.on_assign,
        on_revoke=stage.once.on_revoke, background=[stage.batcher.run], task_status=task_status,
    )  # fmt: skip


SPEC = StageSpec(
    name="results",
    summary="record each landed file in the inventory table, exactly once",
    run=run_results,
    consumes=(
        Consumes(
            "results",
            topics=lambda core: [core.topics.results],
            capacity=lambda core: core.results.batch_rows * 2,
        ),
    ),
    uses=frozenset({"inventory"}),
    live_keys=frozenset({"results.batch_rows", "results.batch_wait"}),
)
