"""The results stage: upload results into the Delta inventory, exactly once, in batches.

Exactly-once, the kafka-delta-ingest way: each Delta commit carries, in the same atomic commit
as its rows, one application transaction per bus partition (``app_id`` =
``<group>:<topic>:<partition>``, ``version`` = the highest offset in the batch). After a restart
or a reassignment the stored versions are read back and records at or below them are skipped:
they are already in the table even if the bus offset commit was lost. (A record of a partition
whose version is known is skipped as it arrives, which is what seeking past it would achieve.)

Two results for one event id (a source that delivered an event twice) are recorded once: the
stage keeps the set of landed event ids; every topic is keyed by event id, so one id is always
handled by one partition owner at a time. The landed ids and the stored versions are always
read together, from one snapshot of the table (``Inventory.read_state``): at start, when
partitions are assigned, when a partition is first seen and after a failed commit (another
member may have written in between). The version check at commit time then proves that no
other writer landed anything of these partitions since the landed ids were read.

Phases of a batch: collect (until ``batch_rows`` or ``batch_wait``) → filter (skip by stored
version, then by landed id) → write (one commit with rows + transactions) → release (handlers
return, the driver commits the bus offsets).

Error handling: a failed Delta write is retried in place with backoff while the handlers wait,
so backpressure reaches the consumer instead of piling up results.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import trio

from lakeferry.bus.base import Record, TopicPartition
from lakeferry.components import InventoryRow
from lakeferry.config import ResultsConfig
from lakeferry.logs import get_logger
from lakeferry.messages import RESULT, UploadResult, utcnow
from lakeferry.pipeline import Pipeline
from lakeferry.stages.batcher import Batcher
from lakeferry.stages.runner import run_consuming_stage
from lakeferry.urls import redact_url

log = get_logger("results")


def app_id(group: str, tp: TopicPartition) -> str:
    return f"{group}:{tp.topic}:{tp.partition}"


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
        self.group = pipeline.group_for("results")

        def cfg() -> ResultsConfig:  # read live on every batch (SIGHUP may change it)
            return pipeline.config.core.results

        self.batcher: Batcher[tuple[Record, UploadResult]] = Batcher(
            "inventory",
            self.flush,
            max_items=lambda: cfg().batch_rows,
            max_wait=lambda: cfg().batch_wait,
            on_error=lambda: pipeline.metrics.bus_errors.labels("inventory").inc(),
        )
        self.versions: dict[str, int] = {}
        self.landed: set[str] = set()
        self._stale = False
        """Re-read versions and landed ids before the next batch (they may have moved)."""

    def on_assign(self, tps: Sequence[TopicPartition]) -> None:
        # Another member may have landed events of these partitions since we read the state.
        self._stale = True

    def on_revoke(self, tps: Sequence[TopicPartition]) -> None:
        for tp in tps:
            self.versions.pop(app_id(self.group, tp), None)

    async def load(self) -> None:
        await self._read_state([])
        log.info("inventory loaded", extra={"landed": len(self.landed)})

    async def _read_state(self, more: Sequence[str]) -> None:
        """Versions of every known application id (and ``more``) and the landed ids, from one
        snapshot; never one without the other (see the module docstring)."""
        wanted = sorted(self.versions.keys() | set(more))
        state = await self.p.inventory.read_state(wanted)
        self.versions = {a: state.versions.get(a, -1) for a in wanted}
        self.landed = state.landed
        self._stale = False

    async def handle(self, record: Record) -> None:
        result = await self.p.decode_or_dead_letter(RESULT, record, "results")
        if result is None:
            return
        known = self.versions.get(app_id(self.group, record.tp))
        if known is not None and record.offset <= known:
            # Already in the table (a redelivery after a restart or a rebalance): skip it
            # without waiting for a batch. Partitions not seen yet are checked in flush().
            self.p.metrics.inventory_skipped.labels("offset").inc()
            return
        await self.batcher.add((record, result))

    async def flush(self, items: Sequence[tuple[Record, UploadResult]]) -> None:
        p = self.p
        unknown = {app_id(self.group, r.tp) for r, _ in items} - self.versions.keys()
        if unknown or self._stale:
            await self._read_state(sorted(unknown))
        rows: list[InventoryRow] = []
        txns: dict[str, int] = {}
        ids_in_batch: set[str] = set()
        for record, result in items:
            aid = app_id(self.group, record.tp)
            if record.offset <= self.versions[aid]:
                p.metrics.inventory_skipped.labels("offset").inc()
                continue
            txns[aid] = max(txns.get(aid, -1), record.offset)
            event_id = result.task.event.id
            if event_id in self.landed or event_id in ids_in_batch:
                p.metrics.inventory_skipped.labels("duplicate").inc()
                continue
            ids_in_batch.add(event_id)
            rows.append(inventory_row(result))
        if not rows:
            return
        started = time.monotonic()
        try:
            await p.inventory.append(rows, txns)
        except Exception:
            # Maybe it committed after all, or another member did: re-read the state before
            # the batcher retries, so the retry skips what is there.
            self._stale = True
            raise
        p.metrics.delta_commit.labels("inventory").observe(time.monotonic() - started)
        p.metrics.delta_rows.labels("inventory").inc(len(rows))
        self.versions.update(txns)
        self.landed.update(ids_in_batch)
        committed = utcnow()
        seconds = time.monotonic() - started
        for row in rows:
            p.metrics.end_to_end.observe((committed - row.event_created_at).total_seconds())
            p.finished("results", "recorded", seconds, row.event_id, row.attempts - 1)


async def run_results(
    pipeline: Pipeline, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Consume ``downloads.results`` into the inventory until drained."""
    p = pipeline
    stage = ResultsStage(p)
    await stage.load()
    await run_consuming_stage(
        p,
        name="results",
        topics=[p.config.core.topics.results],
        handler=stage.handle,
        limiter=p.limiters["results"],
        active=p.active["results"],
        on_assign=stage.on_assign,
        on_revoke=stage.on_revoke,
        background=[stage.batcher.run],
        task_status=task_status,
    )
