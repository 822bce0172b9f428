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
from collections.abc import Callable, Sequence

import msgspec
import trio

from lakeferry.admission import Admission, Refusal, admission
from lakeferry.bus.base import OutgoingRecord, Producer, Record
from lakeferry.components import RawEvent
from lakeferry.config import TopicsConfig
from lakeferry.deadletters import DeadLetters
from lakeferry.errors import Reason
from lakeferry.logs import get_logger
from lakeferry.messages import DownloadTask, utcnow
from lakeferry.metrics import Metrics
from lakeferry.pipeline import Pipeline
from lakeferry.records import task_record
from lakeferry.retry import LANE_HEADER
from lakeferry.stages.events import EVENTS, run_events_recorder
from lakeferry.stages.lanes import BACKFILL, LANES, LIVE
from lakeferry.stages.runner import run_consuming_stage
from lakeferry.stagespec import Consumes, StageSpec

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

    def __init__(
        self,
        *,
        producer: Producer,
        dead_letters: DeadLetters,
        metrics: Metrics,
        rules: Callable[[], Admission],
        topics: Callable[[], TopicsConfig],
        lane: str = LIVE,
    ) -> None:
        self.producer = producer
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.rules = rules
        """The admission rules, read for every batch: a reload may change the limit."""
        self.topics = topics
        self.lane = lane
        """Where its events go: ``live`` to the pending topic, ``backfill`` to the backfill
        lane's (:mod:`lakeferry.stages.lanes`)."""

    def in_lane(self, lane: str) -> BusIntake:
        """The same intake, for events of ``lane``."""
        return BusIntake(
            producer=self.producer, dead_letters=self.dead_letters, metrics=self.metrics,
            rules=self.rules, topics=self.topics, lane=lane,
        )  # fmt: skip

    @classmethod
    def of(cls, p: Pipeline) -> BusIntake:
        return cls(
            producer=p.producer, dead_letters=p.dead_letters, metrics=p.metrics,
            rules=lambda: admission(p.config, p.registry), topics=lambda: p.topics,
        )  # fmt: skip

    async def publish(self, events: Sequence[RawEvent]) -> None:
        topics = self.topics()
        pending = topics.backfill if self.lane == BACKFILL else topics.pending
        received = utcnow()
        started = time.monotonic()
        rules = self.rules()
        out: list[OutgoingRecord] = []
        refused: list[str] = []
        for raw in events:
            try:
                event = rules.decode(raw.data)
            except Refusal as refusal:
                refused.append(refusal.reason)
                letter = self.dead_letters.record(
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
            task = DownloadTask(
                event=event, received_at=received, origin=raw.origin, lane=self.lane
            )
            # Before any byte is fetched: a URL no downloader serves, or a destination that
            # cannot be rendered or is unsafe, is refused here, not after the download.
            try:
                destination = rules.check(event, received)
            except Refusal as refusal:
                refused.append(refusal.reason)
                letter = self.dead_letters.record(
                    stage="ingest", reason=refusal.reason, error=str(refusal),
                    origin_topic=topics.intake, task=task, source=raw.origin,
                )  # fmt: skip
                out.append(letter)
                continue
            if destination is not None:
                task = msgspec.structs.replace(task, destination=destination)
            out.append(task_record(pending, task))
        if out:
            await self.producer.send_many(out)
        elapsed = time.monotonic() - started
        for _ in range(len(out) - len(refused)):
            self.metrics.message_done("ingest", "published", elapsed)
        for reason in refused:
            self.metrics.message_done("ingest", reason, elapsed)
            self.metrics.dead_lettered("ingest", reason)
        if refused:
            log.warning(
                "events dead-lettered at ingest",
                extra={"count": len(refused), "reasons": sorted(set(refused))},
            )


class IntakeTopic:
    """The intake topic's records (``lakeferry submit``): each names its lane in a header
    (absent: live), and goes through that lane's :class:`BusIntake` (``intake`` is live's)."""

    def __init__(self, intake: BusIntake) -> None:
        self.lanes = {LIVE: intake, BACKFILL: intake.in_lane(BACKFILL)}

    async def handle(self, record: Record) -> None:
        origin = f"{record.topic}/{record.partition}/{record.offset}"
        lane = record.headers.get(LANE_HEADER, LIVE.encode()).decode(errors="replace")
        intake = self.lanes.get(lane)
        if intake is None:
            # Not from `lakeferry submit` (it checks): kept, in the DLQ, with the reason.
            await self.lanes[LIVE].dead_letters.send(
                stage="ingest", reason=Reason.MALFORMED,
                error=f"intake record header {LANE_HEADER}={lane!r} is not a lane "
                f"(use one of: {', '.join(LANES)})",
                origin_topic=record.topic, raw=record.value, key=malformed_key(record.value),
            )  # fmt: skip
            return
        await intake.publish([RawEvent(record.value, origin)])


async def run_ingest(
    pipeline: Pipeline, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run every configured source and the intake-topic consumer until drained."""
    p = pipeline
    intake = IntakeTopic(BusIntake.of(p))

    async def run_sources(task_status: trio.TaskStatus[None]) -> None:
        # Sources run until the drain cancels them (or they return by themselves).
        async with trio.open_nursery() as nursery:
            for source, choice in zip(p.components.sources, p.config.sources, strict=True):
                await nursery.start(source.run, intake.lanes[choice.lane])
            task_status.started()
            await p.lifecycle.draining.wait()
            nursery.cancel_scope.cancel(reason="draining")

    async with trio.open_nursery() as nursery:
        await nursery.start(run_sources)
        await nursery.start(
            functools.partial(run_consuming_stage, p, SPEC.main, handler=intake.handle)
        )
        if EVENTS.enabled(p.settings):
            await nursery.start(run_events_recorder, p)
        task_status.started()


SPEC = StageSpec(
    name="ingest",
    summary="validate raw events from the sources and the intake topic onto downloads.pending",
    run=run_ingest,
    consumes=(
        Consumes(
            "ingest",
            topics=lambda core: [core.topics.intake],
            capacity=lambda core: core.ingest.concurrency,
        ),
        EVENTS,
    ),
    uses=frozenset({"source", "inventory"}),  # the events recorder writes the events table
    live_keys=frozenset({"ingest.concurrency", "ingest.max_event_bytes"}),
)
