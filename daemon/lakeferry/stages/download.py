"""The download stage: tasks from ``downloads.pending`` and the retry rungs into the cache.

For each task: find the downloader for the URL's scheme, wait for cache quota, stream the body
into the cache through a :class:`~lakeferry.stages.bounded.BoundedWriter` (the reservation
grows with the body; nothing outgrows the quota or the event's size), sha256 on the fly,
checked against the event's, then put a
:class:`CachedFile` on ``downloads.cached``. A file already complete in the cache with the right
checksum is not fetched again (a redelivered task is cheap).

Slots: the stage holds up to ``download.queue`` tasks; one downloads once its origin
(``host:port``) allows one more (:mod:`lakeferry.stages.origins`: an adaptive per-origin limit,
a pause on Retry-After, a circuit) *and* one of the ``download.concurrency`` slots is free. A
task waiting for its origin holds no slot, so a stalled origin cannot starve the others. A
task whose origin's circuit is open, or that would only wait behind its origin's share of the
queue, is *parked*: put back on the first retry rung with its attempts unspent.

Failures: a transient one sends the task to the next retry rung with its due time; a permanent
one, or one past the last rung, sends it to the DLQ. A checksum mismatch is retried once,
because a file replaced at the origin mid-download looks the same; a repeat is permanent.
A full cache volume (``cache_full``) is not the task's fault: the task waits in place, holding
its download slot, with backoff, until there is room (the stage's limiter fills and it stops
consuming) or the stage drains (then it climbs the ladder as usual).

Resource handling: one in-process lock per event id, so two copies of one event never write
the same cache entry at once. A failed or cancelled download aborts its partial file; when the
failure may pass (transient, timeout, cancellation) and the downloader can resume
(``supports_resume``), the cache is asked to keep the bytes for the next attempt, which
continues after them. A permanent failure or a cache fault discards them.

Error handling: exceptions from plugins that are not PipelineErrors are classified through the
``lakeferry_classify_error`` hook, else treated as transient (``internal``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import time
from collections.abc import Callable

import msgspec
import trio

from lakeferry.bus.base import Record
from lakeferry.components import CacheEntry, Downloader
from lakeferry.config import DownloadConfig
from lakeferry.errors import PermanentError, PipelineError, Reason, TransientError
from lakeferry.groupcommit import BatchFailed
from lakeferry.ledger import duplicate_key, fingerprint
from lakeferry.logs import get_logger
from lakeferry.messages import CACHED, DOWNLOAD, Attempt, CachedFile, DownloadTask, Event, utcnow
from lakeferry.pipeline import Pipeline
from lakeferry.records import event_key, task_headers, task_record
from lakeferry.retry import DUE_HEADER, due_ms, to_ms
from lakeferry.stages.bounded import BoundedWriter, Pace, Progress
from lakeferry.stages.driver import Waits, seconds_until_ms
from lakeferry.stages.lanes import BACKFILL, Backlog, Downstream, Lanes
from lakeferry.stages.origins import (
    NotTried,
    Origins,
    Outcome,
    Parked,
    Slot,
    origin_policy,
    outcome_of,
)
from lakeferry.stages.policy import KeyLocks, classify
from lakeferry.stages.runner import run_consuming_stage
from lakeferry.stagespec import Consumes, StageSpec
from lakeferry.urls import check_url, origin_of, redact_url

log = get_logger("download")

CACHE_FULL = "cache_full"
"""The reason a cache backend gives when its volume is full (ENOSPC, EDQUOT)."""
CACHE_FAULTS = frozenset({CACHE_FULL, "cache_io"})
"""Failures after which a partial file is not worth keeping (or not trustworthy)."""
CACHE_FULL_BACKOFF_INITIAL = 0.5
CACHE_FULL_BACKOFF_MAX = 15.0
"""Seconds between tries while the cache volume is full (doubling from the initial value)."""


def keep_partial_after(exc: BaseException) -> bool:
    """Whether the bytes of an attempt that failed with ``exc`` are worth resuming later."""
    if isinstance(exc, PermanentError):
        return False
    return not (isinstance(exc, PipelineError) and exc.reason in CACHE_FAULTS)


def cache_key(event_id: str) -> str:
    return event_id


def duplicate_id(event: Event, first_url: str, first_path: str | None, when: str) -> PermanentError:
    """The letter's error for a second file under one id: both URLs (redacted), both paths."""

    def named(url: str, path: str | None) -> str:
        return redact_url(url) + (f" (path {path!r})" if path else "")

    return PermanentError(
        Reason.DUPLICATE_ID,
        f"event id {event.id!r} already names {named(first_url, first_path)} ({when}); this "
        f"event names {named(event.url, event.path)}. An id names one file: send this one "
        "under its own id.",
    )


class Claim:
    """The first task of an event id among those this process is handling right now."""

    __slots__ = ("bound", "fingerprint", "holders")

    def __init__(self, print_: bytes) -> None:
        self.fingerprint = print_
        self.holders = 1
        self.bound = trio.Event()
        """Set once a task with this fingerprint asked the ledger (it binds the id first)."""


@dataclasses.dataclass
class Fetch:
    """One try at fetching a task into the cache, as its steps pass it on."""

    task: DownloadTask
    key: str
    downloader: Downloader
    resume: bool
    slot: Slot | None
    """The hold on the task's origin, until the origin has served the file (then None)."""
    progress: Progress = dataclasses.field(default_factory=Progress)


class DownloadStage:
    def __init__(self, pipeline: Pipeline) -> None:
        self.p = pipeline
        self.locks = KeyLocks()
        self.claims: dict[str, Claim] = {}
        """Event id -> the first of its tasks in flight here, claimed in fetch order."""
        self._settings = pipeline.settings.download
        self.origins = Origins(origin_policy(self._settings))
        self.waits = Waits(pipeline.lifecycle)
        pipeline.metrics.track_origins(self.origins)
        self.lanes = lanes = Lanes(
            pipeline.limiters["download"], Backlog(self._downstream),
            downloads=pipeline.active["download"], backfills=pipeline.active["backfill"],
        )  # fmt: skip
        backlog = lanes.backlog
        pipeline.metrics.track_lanes(
            lanes.active, lanes.waiting, lanes.backlog_seen, lambda: backlog.limit,
            lambda of: backlog.latency if of == "now" else backlog.base,
            lambda: lanes.turn_waiting,
        )  # fmt: skip

    async def _downstream(self) -> Downstream | None:
        """Files downloaded and not yet recorded (the upload stage's lag on the cached topic
        and the results stage's on the results topic), and files recorded so far (the results
        stage's committed offsets); None: the bus did not say."""
        p = self.p
        backlog = recorded = 0
        for topic, group in (
            (p.topics.cached, p.group_for("upload")),
            (p.topics.results, p.group_for("results")),
        ):
            try:
                ends = await p.bus.end_offsets(topic)
                committed = await p.bus.committed(group, topic)
            except Exception as exc:
                log.warning(
                    "backlog unknown: the backfill lane waits",
                    extra={"topic": topic, "error": str(exc)},
                )
                return None
            backlog += sum(max(0, end - committed.get(part, 0)) for part, end in ends.items())
            recorded = sum(committed.values())  # the last topic's: the results stage's
        return Downstream(backlog, recorded)

    def gate(self, record: Record) -> float:
        return seconds_until_ms(due_ms(record.headers))

    def dispatch(self, record: Record) -> None:
        """In fetch order: the first task of an id in flight claims it, so that of two events
        with one id the earlier one (by bus order) is the one a later one is checked against,
        however the handlers happen to be scheduled."""
        try:
            event = DOWNLOAD.decode(record.value).event
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # the handler dead-letters it
        claim = self.claims.get(event.id)
        if claim is None:
            self.claims[event.id] = Claim(fingerprint(event))
        else:
            claim.holders += 1

    def _release(self, event_id: str) -> None:
        claim = self.claims.get(event_id)
        if claim is not None:
            claim.holders -= 1
            if claim.holders <= 0:
                del self.claims[event_id]

    async def handle(self, record: Record) -> None:
        p = self.p
        started = time.monotonic()
        task = await p.dead_letters.decode(DOWNLOAD, record, "download")
        if task is None:
            return
        try:
            due = due_ms(record.headers)
            if due is not None:
                lateness = max(0.0, time.time() - due / 1000)
                p.metrics.retry_late(record.topic, lateness)
            if task.lane == BACKFILL and record.topic != p.topics.backfill:
                # Due on a rung, or replayed: back to its lane's topic, to wait there.
                await p.producer.send_many([task_record(p.topics.backfill, task)])
                outcome = "to_backfill"
            else:
                outcome = await self._attempt(task, record.topic)
        finally:
            self._release(task.event.id)
        p.finished("download", outcome, time.monotonic() - started, task.event.id, task.attempt)
        p.metrics.lane_done(task.lane, outcome)

    async def _attempt(self, task: DownloadTask, topic: str) -> str:
        try:
            claim = self.claims.get(task.event.id)
            if claim is None or claim.holders <= 1:
                # Parked anyway? Then before the ledger and the cache (a dead origin's tasks
                # cost a decode and a produce each). Not while another task of its id is in
                # flight here: the earlier by bus order must bind the id first.
                self.origins.check(origin_of(task.event.url))
            outcome = await self._check_id(task)
            if outcome is None:
                outcome = await self._download(task)
        except PipelineError as error:
            await self._failed(task, error, topic)
            outcome = "failed"
        except Parked as parked:
            await self._park(task, parked)
            outcome = "parked"
        return outcome

    async def _check_id(self, task: DownloadTask) -> str | None:
        """Before any byte is fetched: is the id bound to another file (PermanentError
        ``duplicate_id``), or did its file land already (``"landed_before"``: nothing to do)?
        None: go ahead."""
        event = task.event
        mine = fingerprint(event)
        claim = self.claims.get(event.id)
        if claim is not None and claim.fingerprint != mine:
            # An earlier task of this id (by bus order) names another file: it binds first,
            # whichever handler the scheduler happens to start first.
            await claim.bound.wait()
        try:
            bound = await self.p.components.ledger.bind(event)
        except BatchFailed as exc:
            raise TransientError(Reason.INTERNAL, f"id ledger: {exc}") from exc
        finally:
            if claim is not None and claim.fingerprint == mine:
                claim.bound.set()
        if bound.fingerprint != mine:
            since = dt.datetime.fromtimestamp(bound.bound_ms / 1000, dt.UTC)
            raise duplicate_id(event, bound.url, bound.path, f"since {since:%Y-%m-%dT%H:%M:%SZ}")
        if bound.landed:
            return "landed_before"
        return None

    async def _download(self, task: DownloadTask) -> str:
        p = self.p
        event = task.event
        key = cache_key(event.id)
        async with self.locks.hold(key):
            cache = p.components.cache
            entry = await cache.lookup(key)
            outcome = "cached"
            if entry is None or (event.sha256 is not None and entry.sha256 != event.sha256):
                outcome = "downloaded"
                scheme = check_url(event.url)
                fetchers = p.components.fetchers
                fetcher = fetchers.get(scheme)
                if fetcher is None:
                    raise PermanentError(
                        Reason.UNSUPPORTED_SCHEME,
                        f"no downloader for scheme {scheme!r} "
                        f"(have: {', '.join(sorted(fetchers)) or 'none'})",
                    )
                downloader, resume = fetcher
                entry = await self._fetch(task, key, downloader, resume=resume)
                p.metrics.bytes_moved("download", entry.size)
            cached = CachedFile(
                task=task,
                cache_key=key,
                size=entry.size,
                sha256=entry.sha256,
                downloaded_at=utcnow(),
            )
            topic = p.topics.cached
            await p.producer.send(
                topic, CACHED.encode(cached), key=event_key(event.id),
                headers=task_headers(task, topic),
            )  # fmt: skip
            return outcome

    async def _fetch(
        self, task: DownloadTask, key: str, downloader: Downloader, *, resume: bool
    ) -> CacheEntry:
        """Fetch into the cache once the task's origin and a download slot allow it
        (:mod:`lakeferry.stages.origins`; :class:`Parked` when its origin says not now)."""
        p = self.p
        if p.settings.download is not self._settings:  # a reload
            self._settings = p.settings.download
            self.origins.set_policy(origin_policy(self._settings))
        # Until its download begins, a drain leaves the task for the next start (NotStarted).
        with self.waits.before_work() as begun:
            if task.lane == BACKFILL:
                # A ticket (the lane's share), then the rate and the backlog downstream.
                async with p.limiters["backfill"]:
                    await self.lanes.turn(
                        rate=self._settings.backfill_rate, delay=self._settings.backfill_delay
                    )
                    return await self._fetch_at_origin(task, key, downloader, begun, resume)
            return await self._fetch_at_origin(task, key, downloader, begun, resume)

    async def _fetch_at_origin(
        self, task: DownloadTask, key: str, downloader: Downloader, begun: Callable[[], None],
        resume: bool,
    ) -> CacheEntry:  # fmt: skip
        origin = origin_of(task.event.url)
        backfill = task.lane == BACKFILL
        slot = await self.origins.acquire(origin, backfill=backfill) if origin else None
        attempt = Fetch(task, key, downloader, resume, slot)
        outcome = Outcome.CANCELLED
        retry_after: float | None = None
        try:
            async with self.lanes.slot(task.lane):  # counted in the stage's in-flight
                begun()
                entry = await self._fetch_until_room(attempt)
            outcome = Outcome.OK
            return entry
        except BaseException as exc:
            outcome = outcome_of(exc, answered=attempt.progress.answered)
            if isinstance(exc, PipelineError):
                retry_after = exc.retry_after
            raise
        finally:
            self._origin_done(attempt, outcome, retry_after)

    def _origin_done(
        self, attempt: Fetch, outcome: Outcome, retry_after: float | None = None
    ) -> None:
        """The origin's part of the attempt is over: its slot goes back (once)."""
        if attempt.slot is not None:
            self.origins.release(attempt.slot, outcome, retry_after=retry_after)
            attempt.slot = None

    async def _fetch_until_room(self, attempt: Fetch) -> CacheEntry:
        p = self.p
        event_id = attempt.task.event.id
        delay = CACHE_FULL_BACKOFF_INITIAL
        while True:
            try:
                return await self._fetch_in_slot(attempt)
            except TransientError as error:
                if error.reason != CACHE_FULL:
                    raise
                full = error
            # Climbing the ladder would dead-letter good tasks during a long disk-full spell;
            # waiting here holds the slot, so the stage stops taking work until there is room.
            log.warning(
                "cache volume full; waiting in place",
                extra={"event_id": event_id, "error": str(full), "retry_in": delay},
            )
            p.errors.add(
                stage="download", event_id=event_id, reason=full.reason,
                error=str(full), url=attempt.task.event.url,
            )  # fmt: skip
            with trio.move_on_after(delay):
                await p.lifecycle.draining.wait()
            if p.lifecycle.draining.is_set():
                raise full
            delay = min(delay * 2, CACHE_FULL_BACKOFF_MAX)

    async def _fetch_in_slot(self, attempt: Fetch) -> CacheEntry:
        p = self.p
        task, resume = attempt.task, attempt.resume
        event = task.event
        cache = p.components.cache
        timeout = p.settings.download.attempt_timeout
        try:
            with trio.fail_after(timeout):
                async with cache.reserve(event.size) as reservation:
                    pending = await cache.create(attempt.key, resume=resume)
                    try:
                        out = BoundedWriter(
                            pending, reservation, event.size,
                            pace=self._pace_for(event.url), progress=attempt.progress,
                        )  # fmt: skip
                        await out.cover_kept_bytes()
                        await attempt.downloader.fetch(task, out)
                        # The origin has served it: its slot goes back before the checks and
                        # the rename (a request's time at the origin is what its limit counts).
                        self._origin_done(attempt, Outcome.OK)
                        return await pending.commit(
                            expected_sha256=event.sha256, expected_size=event.size
                        )
                    except BaseException as exc:
                        with trio.CancelScope(shield=True):
                            await pending.abort(keep_partial=resume and keep_partial_after(exc))
                        raise
        except trio.TooSlowError:
            raise TransientError(
                Reason.TIMEOUT,
                f"download did not finish within {timeout}s",
            ) from None
        except Exception as exc:
            error = classify(p.registry, exc, "download")
            if error is exc:
                raise
            raise error from exc

    def _pace_for(self, url: str) -> Pace | None:
        """The bandwidth caps a download of ``url`` writes under (None: there are none)."""
        policy = self.origins.policy
        origin = origin_of(url)
        if policy.max_rate <= 0 and (not origin or policy.rate(origin) <= 0):
            return None
        return functools.partial(self.origins.pace, origin)

    async def _park(self, task: DownloadTask, parked: Parked) -> None:
        """Back on the first rung, its attempts unspent: its origin is down or has its share
        of the waiting room (:mod:`lakeferry.stages.origins`)."""
        p = self.p
        rung = p.ladder.rung_for(1)
        assert rung is not None  # the config requires a rung
        due_at = utcnow() + dt.timedelta(seconds=rung.delay)
        log.debug(
            "download parked",
            extra={"event_id": task.event.id, "origin": parked.origin, "reason": parked.reason},
        )
        retry = msgspec.structs.replace(task, due_at=due_at)
        due = {DUE_HEADER: str(to_ms(due_at)).encode()}
        await p.producer.send_many([task_record(rung.topic, retry, due)])
        p.metrics.parked(parked.reason)

    async def _failed(self, task: DownloadTask, error: PipelineError, topic: str) -> None:
        p = self.p
        now = utcnow()
        failures = task.attempt + 1
        transient = error.transient
        if error.reason == Reason.CHECKSUM_MISMATCH and not any(
            a.reason == Reason.CHECKSUM_MISMATCH for a in task.history
        ):
            transient = True  # once may be a file replaced mid-download; twice is not
        attempt = Attempt(
            attempt=failures, at=now, stage="download", reason=error.reason, error=str(error)
        )
        failed = msgspec.structs.replace(task, attempt=failures, history=(*task.history, attempt))
        # Not tried (its origin fails everything): the circuit's opening was logged, once.
        log.log(
            logging.DEBUG if isinstance(error, NotTried) else logging.INFO,
            "download failed",
            extra={
                "event_id": task.event.id, "url": redact_url(task.event.url),
                "reason": error.reason, "transient": transient, "attempt": failures,
            },
        )  # fmt: skip
        if transient:
            p.errors.add(
                stage="download", event_id=task.event.id, reason=error.reason,
                error=str(error), url=task.event.url,
            )  # fmt: skip
        if not transient:
            # A second file under a used id has its own key: it must not replace the letter
            # of the event that owns the id.
            key = duplicate_key(task.event) if error.reason == Reason.DUPLICATE_ID else None
            await p.dead_letters.send(
                stage="download", reason=error.reason, error=str(error),
                origin_topic=topic, task=failed, key=key,
            )  # fmt: skip
            return
        rung = p.ladder.rung_for(failures)
        if rung is None:
            await p.dead_letters.send(
                stage="download", reason=Reason.RETRIES_EXHAUSTED,
                error=f"gave up after {failures} attempts; last error: {error}",
                origin_topic=topic, task=failed,
            )  # fmt: skip
            return
        # The rung's delay alone decides (not Retry-After): equal delays keep due times in
        # offset order on a rung, which is what lets the consumer wait on the head only.
        due_at = now + dt.timedelta(seconds=rung.delay)
        retry = msgspec.structs.replace(failed, due_at=due_at)
        due = {DUE_HEADER: str(to_ms(due_at)).encode()}
        await p.producer.send_many([task_record(rung.topic, retry, due)])
        p.metrics.retried(rung.topic)


async def run_download(
    pipeline: Pipeline, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Consume pending and every retry rung until drained."""
    stage = DownloadStage(pipeline)
    consume = functools.partial(
        run_consuming_stage, pipeline, handler=stage.handle, gate=stage.gate,
        dispatch=stage.dispatch,
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stage.waits.end_on_drain)
        await nursery.start(functools.partial(consume, SPEC.main))
        await nursery.start(functools.partial(consume, BACKFILL_CONSUMER))
        task_status.started()


BACKFILL_CONSUMER = Consumes(
    "backfill",
    topics=lambda core: [core.topics.backfill],
    capacity=lambda core: core.download.backfill_slots,
    intake=lambda core: core.download.backfill_room,
)
"""The backfill lane's consumer: its limiter is the lane's share of the download slots (a
ticket per download); its tasks then take a download slot only when no live task waits."""

SPEC = StageSpec(
    name="download",
    summary="fetch each task's URL into the cache (pending and the retry rungs)",
    run=run_download,
    consumes=(
        Consumes(
            "download",
            topics=lambda core: [core.topics.pending, *core.retry.topics],
            capacity=lambda core: core.download.concurrency,
            intake=lambda core: core.download.room,
        ),
        BACKFILL_CONSUMER,
    ),
    uses=frozenset({"cache", "downloader", "ledger"}),
    live_keys=frozenset(f"download.{key}" for key in DownloadConfig.__struct_fields__),
)
