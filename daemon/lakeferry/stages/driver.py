"""The consume loop every bus-driven stage shares: fetch → gate → process → commit.

Phases, in the kafka-delta-ingest manner:

1. **fetch**: take a limiter token first, then the next record. A stage never holds a record
   it has no capacity for, so a full stage stops fetching instead of buffering.
2. **gate**: a record that is not due yet (retry rungs) is put back: seek its partition to the
   record, pause it, and resume when due. Other partitions keep flowing.
3. **process**: the stage's handler runs in the worker nursery. It returns normally once
   everything the record produced is on the bus (or the record's fate is decided: retried,
   dead-lettered, skipped). An exception escaping a handler is a bug or a bus failure: the
   stage crashes and its uncommitted records are redelivered after the restart.
4. **commit**: every ``commit.interval`` the highest *contiguous* completed offset of each
   partition is committed (:class:`~lakeferry.bus.offsets.OffsetTracker`).

Resource handling: records are acknowledged only through commits; the tracker forgets revoked
partitions, so late completions of a revoked partition are never committed by this member.

Error handling: on drain (SIGTERM) the fetch phase stops, in-flight handlers get
``shutdown_grace`` to finish, then whatever is contiguous is committed — also when the stage
crashed, because work that finished really is done. A handler still waiting to begin its work
(for a slot, its origin, its lane's turn: :class:`NotStarted`) ends at once instead, its record
left uncommitted for the next start, so a queue of waiting work does not hold the drain.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence

import trio

from lakeferry.bus.base import Consumer, Record, TopicPartition
from lakeferry.bus.offsets import OffsetTracker, Ticket
from lakeferry.errors import BusError
from lakeferry.lifecycle import ActiveCount, Lifecycle
from lakeferry.logs import get_logger

log = get_logger("stage")

Handler = Callable[[Record], Awaitable[None]]
Gate = Callable[[Record], float]
"""Seconds until ``record`` may be processed (<= 0: now)."""
Dispatch = Callable[[Record], None]
"""Called for each record about to be handled, in fetch order (offset order within a
partition), before its handler starts: handlers themselves start in no guaranteed order."""

FINAL_COMMIT_TIMEOUT = 10.0


class NotStarted(Exception):
    """Raised by a handler whose record's work had not begun when the stage drained: the
    record is left uncommitted (redelivered at the next start) rather than done."""


class Waits:
    """The handlers of a stage still waiting to begin their work; a drain ends their waits.

    Without it a drain gave each waiting handler ``shutdown_grace`` too: a queue of backfill
    tasks waiting for their lane's turn held every ``systemctl stop`` for the whole grace.
    """

    def __init__(self, lifecycle: Lifecycle) -> None:
        self._lifecycle = lifecycle
        self._scopes: set[trio.CancelScope] = set()

    @contextlib.contextmanager
    def before_work(self) -> Iterator[Callable[[], None]]:
        """Around the waits before a record's work: call what it yields once the work begins.
        A drain before that cancels the waits, and :class:`NotStarted` leaves the block."""
        if self._lifecycle.draining.is_set():
            raise NotStarted
        scope = trio.CancelScope()

        def begun() -> None:
            if scope.cancel_called:  # drained while its wait was ending
                raise NotStarted
            self._scopes.discard(scope)

        self._scopes.add(scope)
        try:
            with scope:
                yield begun
        finally:
            self._scopes.discard(scope)
        if scope.cancelled_caught:
            raise NotStarted

    async def end_on_drain(self) -> None:
        """Run beside the stage: once it drains, every wait before work ends."""
        await self._lifecycle.draining.wait()
        for scope in self._scopes:
            scope.cancel(reason="draining: work not begun is left for the next start")
        self._scopes.clear()


class StageDriver:
    """Runs one consumer through the four phases. One instance per stage run."""

    def __init__(
        self,
        *,
        name: str,
        consumer: Consumer,
        limiter: trio.CapacityLimiter,
        handler: Handler,
        lifecycle: Lifecycle,
        commit_interval: Callable[[], float],
        gate: Gate | None = None,
        active: ActiveCount | None = None,
        dispatch: Dispatch | None = None,
        on_pause: Callable[[TopicPartition, float | None], None] | None = None,
    ) -> None:
        self.name = name
        self.consumer = consumer
        self.limiter = limiter
        self.handler = handler
        self.lifecycle = lifecycle
        self.commit_interval = commit_interval
        self.gate = gate
        self.dispatch = dispatch
        self.active = active if active is not None else ActiveCount()
        self.tracker = OffsetTracker()
        self._paused_until: dict[TopicPartition, float] = {}
        self.on_pause = on_pause
        """Told when a partition pauses (until when, Unix time) and resumes (None): metrics."""

    # -- callbacks for the bus ---------------------------------------------------------------

    def on_revoke(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """Hand back what is contiguous for ``tps`` (the bus commits it), then forget them."""
        revoked = set(tps)
        offsets = {tp: o for tp, o in self.tracker.committable().items() if tp in revoked}
        for tp in tps:
            self.tracker.forget(tp)
            if self._paused_until.pop(tp, None) is not None and self.on_pause is not None:
                self.on_pause(tp, None)
        return offsets

    # -- the loop ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as outer:
            outer.start_soon(self._commit_loop)
            try:
                async with trio.open_nursery() as workers:
                    fetch_scope = trio.CancelScope()
                    workers.start_soon(self._watch_drain, fetch_scope, workers.cancel_scope)
                    task_status.started()
                    with fetch_scope:
                        # Resume timers live inside the fetch scope: draining cancels them.
                        async with trio.open_nursery() as timers:
                            await self._fetch_loop(workers, timers)
                    log.info("stage draining", extra={"stage": self.name})
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(FINAL_COMMIT_TIMEOUT):
                    await self.commit_now()
            outer.cancel_scope.cancel(reason="stage finished")

    async def _watch_drain(self, fetch_scope: trio.CancelScope, workers: trio.CancelScope) -> None:
        await self.lifecycle.draining.wait()
        fetch_scope.cancel(reason="draining")
        workers.deadline = min(
            workers.deadline, trio.current_time() + self.lifecycle.shutdown_grace
        )

    async def _fetch_loop(self, workers: trio.Nursery, timers: trio.Nursery) -> None:
        while True:
            token = object()
            await self.limiter.acquire_on_behalf_of(token)
            try:
                record = await self.consumer.next()
            except BaseException:
                self.limiter.release_on_behalf_of(token)
                raise
            if self.gate is not None:
                wait = self.gate(record)
                if wait > 0:
                    self.limiter.release_on_behalf_of(token)
                    self._hold(record, wait, timers)
                    continue
            if self.dispatch is not None:
                self.dispatch(record)
            ticket = self.tracker.track(record.tp, record.offset)
            workers.start_soon(self._process, record, ticket, token)

    def _hold(self, record: Record, wait: float, timers: trio.Nursery) -> None:
        tp = record.tp
        self.consumer.seek(tp, record.offset)
        self.consumer.pause(tp)
        until = trio.current_time() + wait
        self._paused_until[tp] = until
        if self.on_pause is not None:
            self.on_pause(tp, time.time() + wait)
        timers.start_soon(self._resume_at, tp, until)

    async def _resume_at(self, tp: TopicPartition, until: float) -> None:
        await trio.sleep_until(until)
        if self._paused_until.get(tp) == until:
            del self._paused_until[tp]
            if self.on_pause is not None:
                self.on_pause(tp, None)
            self.consumer.resume(tp)

    async def _process(self, record: Record, ticket: Ticket, token: object) -> None:
        self.active.n += 1
        try:
            try:
                await self.handler(record)
            except NotStarted:
                return  # left for the next start: not done
            # The ticket's generation makes a late completion of a revoked partition a no-op.
            self.tracker.done(*ticket)
        finally:
            self.active.n -= 1
            self.limiter.release_on_behalf_of(token)

    async def _commit_loop(self) -> None:
        while True:
            await trio.sleep(max(0.001, self.commit_interval()))
            await self.commit_now()

    async def commit_now(self) -> None:
        offsets = self.tracker.committable()
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except BusError as exc:
            # The offsets stay committable and go with the next commit; a bus that is down is
            # reported by the bus itself.
            log.warning("commit failed; will retry", extra={"stage": self.name, "error": str(exc)})
            return
        self.tracker.mark_committed(offsets)


def seconds_until_ms(due_ms: int | None) -> float:
    """Seconds from now until a wall-clock due time in ms (``-inf`` when there is none)."""
    if due_ms is None:
        return -math.inf
    return due_ms / 1000.0 - time.time()
