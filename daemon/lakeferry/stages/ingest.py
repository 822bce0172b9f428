"""The ingest stage: raw events from sources and the intake topic onto ``downloads.pending``.

Every raw event passes :class:`BusIntake`: a valid one becomes a :class:`DownloadTask` on
``downloads.pending`` (keyed by event id); one that does not decode goes to the DLQ with reason
``malformed`` and its raw bytes. Sources acknowledge their input only after ``publish`` returns.

The intake topic is where ``lakeferry submit`` writes: the ingest stage consumes it like a
source, so every event, whoever sent it, is validated in one place.

Resource handling: sources run in this stage's nursery and are cancelled on drain; a spool file
is moved aside only after its events are on the bus, so cancellation loses nothing.

Error handling: a source that raises crashes the stage; the supervisor restarts it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Sequence

import msgspec
import trio

from lakeferry.admission import Refusal, admission
from lakeferry.bus.base import OutgoingRecord, Record
from lakeferry.components import RawEvent
from lakeferry.logs import get_logger
from lakeferry.messages import DOWNLOAD, DownloadTask, utcnow
from lakeferry.pipeline import Pipeline, event_key, task_headers
from lakeferry.stages.events import run_events_recorder
from lakeferry.stages.runner import run_consuming_stage

log = get_logger("ingest")


def malformed_key(raw: bytes) -> bytes:
    """DLQ key of an event that did not validate: its ``id`` when it has a usable one (so the
    operator finds it by id), else ``malformed:<sha256 prefix>``, stable for the same bytes."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        data = None
    if isinstance(data, dict):
        ident = data.get("id")
        if isinstance(ident, str) and 0 < len(ident) <= 512:
            try:
                return ident.encode()
            except UnicodeEncodeError:  # a lone surrogate from a "\ud800" escape
                pass
    return b"malformed:" + hashlib.sha256(raw).hexdigest()[:32].encode()


class BusIntake:
    """The :class:`~lakeferry.components.Intake` every source publishes through: the rules of
    :mod:`lakeferry.admission`, the same ``lakeferry submit`` applies."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.p = pipeline

    async def publish(self, events: Sequence[RawEvent]) -> None:
        p = self.p
        topics = p.config.core.topics
        received = utcnow()
        started = time.monotonic()
        rules = admission(p.config, p.registry)  # read live: a reload may change the limit
        out: list[OutgoingRecord] = []
        refused: list[str] = []
        for raw in events:
            try:
                event = rules.decode(raw.data)
            except Refusal as refusal:
                refused.append(refusal.reason)
                letter = p.dead_letter_record(
                    stage="ingest", reason=refusal.reason, error=str(refusal),
                    origin_topic=topics.intake, raw=raw.data[: rules.max_event_bytes],
                    source=raw.origin, key=malformed_key(raw.data),
                )  # fmt: skip
                out.append(letter)
                continue
            if event.created_at is None:
                event = msgspec.structs.replace(event, created_at=received)
            elif event.created_at.tzinfo is None:
                event = msgspec.structs.replace(
                    event, created_at=event.created_at.replace(tzinfo=received.tzinfo)
                )
            task = DownloadTask(event=event, received_at=received, origin=raw.origin)
            # Before any byte is fetched: a URL no downloader serves, or a destination that
            # cannot be rendered or is unsafe, is refused here, not after the download.
            try:
                destination = rules.check(event, received)
            except Refusal as refusal:
                refused.append(refusal.reason)
                letter = p.dead_letter_record(
                    stage="ingest", reason=refusal.reason, error=str(refusal),
                    origin_topic=topics.intake, task=task, source=raw.origin,
                )  # fmt: skip
                out.append(letter)
                continue
            if destination is not None:
                task = msgspec.structs.replace(task, destination=destination)
            out.append(
                OutgoingRecord(
                    topics.pending,
                    DOWNLOAD.encode(task),
                    event_key(event.id),
                    task_headers(task, topics.pending),
                )
            )
        if out:
            await p.producer.send_many(out)
        elapsed = time.monotonic() - started
        for _ in range(len(out) - len(refused)):
            p.metrics.message_done("ingest", "published", elapsed)
        for reason in refused:
            p.metrics.message_done("ingest", reason, elapsed)
            p.metrics.dead_lettered("ingest", reason)
        if refused:
            log.warning(
                "events dead-lettered at ingest",
                extra={"count": len(refused), "reasons": sorted(set(refused))},
            )


async def run_ingest(
    pipeline: Pipeline, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run every configured source and the intake-topic consumer until drained."""
    p = pipeline
    intake = BusIntake(p)

    async def handle(record: Record) -> None:
        origin = f"{record.topic}/{record.partition}/{record.offset}"
        await intake.publish([RawEvent(record.value, origin)])

    async def run_sources(task_status: trio.TaskStatus[None]) -> None:
        # Sources run until the drain cancels them (or they return by themselves).
        async with trio.open_nursery() as nursery:
            for source in p.sources:
                await nursery.start(source.run, intake)
            task_status.started()
            await p.lifecycle.draining.wait()
            nursery.cancel_scope.cancel(reason="draining")

    async with trio.open_nursery() as nursery:
        await nursery.start(run_sources)
        await nursery.start(
            functools.partial(
                run_consuming_stage,
                p,
                name="ingest",
                topics=[p.config.core.topics.intake],
                handler=handle,
                limiter=p.limiters["ingest"],
                active=p.active["ingest"],
            )
        )
        if p.config.core.ingest.events_table:
            await nursery.start(run_events_recorder, p)
        task_status.started()
