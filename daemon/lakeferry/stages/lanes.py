"""Lanes: live events first, a backfill in the capacity they leave idle.

A task's lane (:attr:`~lakeferry.messages.DownloadTask.lane`) is set where it enters: by the
source that read it (``lane = "backfill"`` in its ``[[sources]]`` table) or by
``lakeferry submit --lane backfill``. Backfill tasks wait on their own topic
(``topics.backfill``), read by the download stage's second consumer, so a million of them
queued never stand in front of a live task; a backfill task that comes due on a retry rung, or
is replayed from the DLQ, is handed back to that topic by the live consumer.

What the backfill lane may take, checked in this order before each of its downloads:

1. **its share** of the download slots: ``download.backfill_share`` of
   ``download.concurrency`` (the ``backfill`` consumer's limiter, a ticket held from here to
   the end of the download);
2. **its rate**: ``download.backfill_rate`` downloads started per second (0: no cap);
3. **the backlog downstream**: files downloaded and not yet recorded (the lag of the upload
   stage on the cached topic and of the results stage on the results topic) must be below
   ``download.backfill_backlog``. The download stage is the cheap end; without this a
   backfill downloads faster than the upload and results stages can take, and every live file
   then queues behind its backlog there, where no lane can pass it;
4. at its origin, a live task waiting there goes first (:mod:`lakeferry.stages.origins`);
5. a download slot, only while no live task waits for one.

A live task takes a slot as before: it never waits for the backfill lane's rules, only for
downloads already running (of either lane) to end.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import trio

from lakeferry.config import LANES
from lakeferry.stages.pacing import Pacer

LIVE, BACKFILL = LANES
__all__ = ["BACKFILL", "LANES", "LIVE", "Backlog", "Lanes"]

BACKLOG_EVERY = 0.25
"""Seconds between measurements of the downstream backlog while backfill tasks wait for it."""


class Backlog:
    """The downstream backlog, measured at most every :data:`BACKLOG_EVERY` seconds, plus the
    backfill downloads started since (they will add to it)."""

    def __init__(
        self,
        measure: Callable[[], Awaitable[int | None]],
        *,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._measure = measure
        self._clock = clock
        self._lock = trio.Lock()
        self._at = -float("inf")
        self.measured: int | None = None
        """The last measurement (None: the bus did not answer; the lane waits)."""
        self.started_since = 0

    async def below(self, limit: int) -> None:
        """Wait until the backlog (as far as known) is below ``limit``."""
        while True:
            async with self._lock:
                if self._clock() - self._at >= BACKLOG_EVERY:
                    self.measured = await self._measure()
                    self._at = self._clock()
                    self.started_since = 0
                if self.measured is not None and self.measured + self.started_since < limit:
                    self.started_since += 1
                    return
            await trio.sleep_until(self._at + BACKLOG_EVERY)


class Lanes:
    """The download slots between the lanes (one per download stage)."""

    def __init__(
        self,
        slots: trio.CapacityLimiter,
        backlog: Backlog,
        *,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.slots = slots
        """``download.concurrency``: every download of either lane holds one."""
        self.backlog = backlog
        self.pacer = Pacer(0, clock=clock)
        """``download.backfill_rate``: one unit per backfill download."""
        self.live_waiting = 0
        """Live tasks waiting for a download slot."""
        self.backfill_waiting = 0
        self.active = {LIVE: 0, BACKFILL: 0}
        self._lot = trio.lowlevel.ParkingLot()
        """Backfill tasks waiting for a slot the live lane leaves free."""

    async def turn(self, *, rate: float, backlog: int) -> None:
        """A backfill task's turn to go for its origin: under the rate and the backlog."""
        self.pacer.rate = rate
        await self.pacer.take(1)
        await self.backlog.below(backlog)

    @contextlib.asynccontextmanager
    async def slot(self, lane: str) -> AsyncIterator[None]:
        """Hold a download slot: a live task as soon as one is free, a backfill task only when
        no live task is waiting for one."""
        if lane == BACKFILL:
            self.backfill_waiting += 1
            try:
                while self.live_waiting or self.slots.available_tokens < 1:
                    await self._lot.park()
                self.slots.acquire_nowait()
            finally:
                self.backfill_waiting -= 1
        else:
            self.live_waiting += 1
            try:
                await self.slots.acquire()
            finally:
                self.live_waiting -= 1
                self._wake()
        self.active[lane] += 1
        try:
            yield
        finally:
            self.active[lane] -= 1
            self.slots.release()
            self._wake()

    def waiting(self, lane: str) -> int:
        """Tasks of ``lane`` waiting for a download slot."""
        return self.backfill_waiting if lane == BACKFILL else self.live_waiting

    def backlog_seen(self) -> float:
        measured = self.backlog.measured
        return -1.0 if measured is None else float(measured)

    def _wake(self) -> None:
        if not self.live_waiting:
            free = int(self.slots.available_tokens)
            if free > 0:
                self._lot.unpark(count=free)
