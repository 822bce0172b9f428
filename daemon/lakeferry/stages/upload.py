"""The upload stage: files from the cache into the sink, results onto ``downloads.results``.

For each :class:`CachedFile`: work out the destination, land the file in the sink (the sink
skips it when an identical file is already there), put an :class:`UploadResult` on the bus,
and only then remove the file from the cache.

Upload failures do not climb the retry ladder: the cache is the buffer. A transient failure is
retried in place with exponential backoff (at least the sink's Retry-After), and a circuit
breaker shared by all upload slots stops hammering a sink that is down; downloads continue
until the cache quota is full. A permanent failure goes to the DLQ.

Resource handling: when the cache no longer holds the file (a redelivery after the file was
uploaded and removed), the sink is asked: an identical file there means the upload happened and
the result is sent again (the results stage deduplicates); otherwise the task goes back to
``downloads.pending`` to be fetched again. Nothing is lost either way. The file found is durable:
a cache entry is removed only after its put returned, which a sink does once the file is durable
(and the localfs sink syncs a file's bytes before a name points at them, so an identical file
landed over it since is durable too, or the old one is still there after a crash).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

import msgspec
import trio

from lakeferry.bus.base import Record
from lakeferry.components import PutOutcome, Sink, SinkFile
from lakeferry.errors import PermanentError, PipelineError, TransientError
from lakeferry.groupcommit import BatchFailed
from lakeferry.logs import Throttled, get_logger
from lakeferry.messages import CACHED, RESULT, CachedFile, UploadResult, utcnow
from lakeferry.pipeline import Pipeline
from lakeferry.records import event_key, task_headers, task_record
from lakeferry.stages.policy import KeyLocks, classify
from lakeferry.stages.runner import run_consuming_stage
from lakeferry.stagespec import Consumes, StageSpec

log = get_logger("upload")


class CircuitBreaker:
    """Opens after ``failures`` consecutive transient failures; half-opens after ``cooldown``.

    While open, :meth:`wait_closed` blocks every caller; after the cooldown one caller probes
    the sink and its outcome closes the breaker or opens it again.
    """

    def __init__(
        self, failures: int, cooldown: float, on_change: Callable[[bool], None] | None = None
    ) -> None:
        self.threshold = failures
        self.cooldown = cooldown
        self.on_change = on_change
        """Called with True when the breaker opens, False when it closes (not on re-opens)."""
        self._consecutive = 0
        self._open_until: float | None = None
        self._probing = False
        self._changed = trio.Event()

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    async def wait_closed(self) -> None:
        while self._open_until is not None:
            now = trio.current_time()
            if now >= self._open_until and not self._probing:
                self._probing = True
                return
            with trio.move_on_at(self._open_until if now < self._open_until else math.inf):
                await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def success(self) -> None:
        self._consecutive = 0
        if self._open_until is not None or self._probing:
            self._open_until = None
            self._probing = False
            self._notify()
            if self.on_change is not None:
                self.on_change(False)

    def failure(self) -> None:
        self._consecutive += 1
        if self._probing or self._consecutive >= self.threshold:
            opened = self._open_until is None and not self._probing
            self._probing = False
            self._open_until = trio.current_time() + self.cooldown
            self._notify()
            if opened and self.on_change is not None:
                self.on_change(True)


class UploadStage:
    def __init__(self, pipeline: Pipeline) -> None:
        self.p = pipeline
        cfg = pipeline.settings.upload
        self.breaker = CircuitBreaker(cfg.breaker_failures, cfg.breaker_cooldown, self._breaker)
        self.locks = KeyLocks()
        self.failures = Throttled(log)
        self._last_error = ""

    async def handle(self, record: Record) -> None:
        p = self.p
        started = time.monotonic()
        cached = await p.dead_letters.decode(CACHED, record, "upload")
        if cached is None:
            return
        async with self.locks.hold(cached.cache_key):
            outcome = await self._upload(cached, record.topic)
        task = cached.task
        p.finished("upload", outcome, time.monotonic() - started, task.event.id, task.attempt)

    async def _upload(self, cached: CachedFile, topic: str) -> str:
        p = self.p
        event = cached.task.event
        try:
            # Rendered and checked at ingest; older tasks and sinks without a path template
            # are rendered here.
            destination = cached.task.destination or p.components.sink.destination(
                event, now=utcnow()
            )
        except PermanentError as error:
            await self._dead(cached, error, topic)
            return "failed"
        cfg = p.settings.upload
        self.breaker.threshold, self.breaker.cooldown = cfg.breaker_failures, cfg.breaker_cooldown
        delay: float = cfg.backoff_initial
        while True:
            await self.breaker.wait_closed()
            p.metrics.breaker(self.breaker.is_open)
            try:
                outcome = await self._put(cached, destination)
            except PermanentError as error:
                self.breaker.success()  # the sink answered; it is not down
                await self._dead(cached, error, topic)
                return "failed"
            except TransientError as error:
                self._last_error = f"{error.reason}: {error}"
                self.breaker.failure()
                p.metrics.breaker(self.breaker.is_open)
                wait = max(delay, error.retry_after or 0.0)
                self.failures.warning(
                    error.reason,
                    "upload failed, retrying in place",
                    {"event_id": event.id, "reason": error.reason, "error": str(error)[:500],
                     "wait": round(wait, 3)},
                )  # fmt: skip
                await trio.sleep(wait * random.uniform(0.8, 1.2))
                delay = min(delay * 2, cfg.backoff_max)
                continue
            self.breaker.success()
            p.metrics.breaker(False)
            break
        if outcome is None:
            await self._redownload(cached)
            return "redownload"
        result = UploadResult(
            task=cached.task,
            destination=outcome.destination,
            size=cached.size,
            sha256=cached.sha256,
            downloaded_at=cached.downloaded_at,
            uploaded_at=utcnow(),
            skipped=outcome.skipped,
        )
        results = p.topics.results
        await p.producer.send(
            results, RESULT.encode(result), key=event_key(event.id),
            headers=task_headers(cached.task, results),
        )  # fmt: skip
        try:  # the result is on the bus: the file counts as landed from here on
            await p.components.ledger.land(event)
        except BatchFailed as exc:  # only a fetch saved the next time, nothing lost
            log.warning(
                "cannot record a landed id", extra={"event_id": event.id, "error": str(exc)}
            )
        await p.components.cache.remove(cached.cache_key)
        if not outcome.skipped:
            p.metrics.bytes_moved("upload", cached.size)
        return "skipped" if outcome.skipped else "uploaded"

    def _breaker(self, opened: bool) -> None:
        if opened:
            log.warning(
                "sink circuit breaker open: uploads wait, then one probes the sink",
                extra={"failures": self.breaker.threshold, "cooldown": self.breaker.cooldown,
                       "last_error": self._last_error[:500]},
            )  # fmt: skip
        else:
            log.warning("sink circuit breaker closed: the sink answers again")

    async def _put(self, cached: CachedFile, destination: str) -> PutOutcome | None:
        """Land the file; None when neither the cache nor the sink has it any more."""
        cache, sink = self.p.components.cache, self.p.components.sink
        try:
            entry = await cache.lookup(cached.cache_key)
            if entry is None or entry.sha256 != cached.sha256:
                held = await sink.stat(destination)
                if held is not None and held.sha256 == cached.sha256 and held.size == cached.size:
                    return PutOutcome(destination, skipped=True)
                return None
            file = SinkFile(cache, cached.cache_key, cached.size, cached.sha256)
            return await sink.put(file, destination, cached.task.event)
        except Exception as exc:
            error = classify(self.p.registry, exc, "upload")
            if error is exc:
                raise
            raise error from exc

    async def _redownload(self, cached: CachedFile) -> None:
        p = self.p
        log.warning(
            "file gone from cache and not in sink; fetching it again",
            extra={"event_id": cached.task.event.id},
        )
        task = msgspec.structs.replace(cached.task, due_at=None)
        await p.producer.send_many([task_record(p.topics.pending, task)])

    async def _dead(self, cached: CachedFile, error: PipelineError, topic: str) -> None:
        await self.p.dead_letters.send(
            stage="upload", reason=error.reason, error=str(error), origin_topic=topic,
            task=cached.task,
        )  # fmt: skip
        await self.p.components.cache.remove(cached.cache_key)


async def run_upload(
    pipeline: Pipeline, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Sweep the sink's temporary files an earlier run left, then consume
    ``downloads.cached`` until drained."""
    stage = UploadStage(pipeline)
    await sweep_sink(pipeline.components.sink)
    await run_consuming_stage(pipeline, SPEC.main, handler=stage.handle, task_status=task_status)


SWEEP_TIMEOUT = 60.0


async def sweep_sink(sink: Sink) -> None:
    """Before the first put: remove what a put of this process's last run left behind (it was
    killed mid-put). A sink that cannot be swept now is not a reason to stop: it is logged and
    swept at the next start (``lakeferry audit`` reports temporary files meanwhile)."""
    with trio.move_on_after(SWEEP_TIMEOUT) as scope:
        try:
            await sink.sweep()
        except Exception as exc:
            log.warning("cannot sweep the sink's temporary files", extra={"error": str(exc)})
    if scope.cancelled_caught:
        log.warning("sweeping the sink's temporary files took too long; skipped this time")


SPEC = StageSpec(
    name="upload",
    summary="land each cached file in the sink, then put its result on the bus",
    run=run_upload,
    consumes=(
        Consumes(
            "upload",
            topics=lambda core: [core.topics.cached],
            capacity=lambda core: core.upload.concurrency,
        ),
    ),
    uses=frozenset({"cache", "sink", "ledger"}),
    live_keys=frozenset({"upload.concurrency", "upload.backoff_initial", "upload.backoff_max",
                         "upload.breaker_failures", "upload.breaker_cooldown"}),
)  # fmt: skip
