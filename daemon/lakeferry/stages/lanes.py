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
   stage on the cached topic and of the results stage on the results topic) must drain within
   ``download.backfill_delay`` at the rate files are being recorded (the results stage's
   committed offsets, measured alongside; at least :data:`MIN_WINDOW` files, so an idle
   pipeline lets a backfill start). The download stage is the cheap end; without this a
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
from typing import NamedTuple

import trio

from lakeferry.config import LANES
from lakeferry.lifecycle import ActiveCount
from lakeferry.stages.pacing import Pacer

LIVE, BACKFILL = LANES
__all__ = ["BACKFILL", "LANES", "LIVE", "Backlog", "Downstream", "Lanes"]

BACKLOG_EVERY = 0.25
"""Seconds between measurements of the downstream backlog while backfill tasks wait for it."""
MIN_WINDOW = 10
"""Files the backlog may hold whatever the rate (an idle pipeline records nothing)."""


class Downstream(NamedTuple):
    """One measurement: files downloaded and not yet recorded, and files recorded so far."""

    backlog: int
    recorded: int


class Backlog:
    """The downstream backlog and the rate it drains at, measured at most every
    :data:`BACKLOG_EVERY` seconds, plus the backfill downloads started since (they will add
    to it)."""

    def __init__(
        self,
        measure: Callable[[], Awaitable[Downstream | None]],
        *,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._measure = measure
        self._clock = clock
        self._lock = trio.Lock()
        self._at = -float("inf")
        self._recorded: tuple[float, int] | None = None
        self.measured: int | None = None
        """The last backlog measured (None: the bus did not answer; the lane waits)."""
        self.rate = 0.0
        """Files recorded per second downstream (a moving mean of the measurements)."""
        self.started_since = 0

    def window(self, delay: float) -> int:
        """Files that drain within ``delay`` seconds at the rate measured."""
        return max(MIN_WINDOW, int(delay * self.rate))

    async def below(self, delay: float) -> None:
        """Wait until the backlog (as far as known) would drain within ``delay`` seconds."""
        while True:
            async with self._lock:
                if self._clock() - self._at >= BACKLOG_EVERY:
                    self._update(await self._measure())
                known = self.measured
                if known is not None and known + self.started_since < self.window(delay):
                    self.started_since += 1
                    return
            await trio.sleep_until(self._at + BACKLOG_EVERY)

    def _update(self, seen: Downstream | None) -> None:
        now = self._clock()
        self._at = now
        self.started_since = 0
        self.measured = seen.backlog if seen is not None else None
        if seen is None:
            return
        if self._recorded is not None:
            then, recorded = self._recorded
            if now > then and seen.recorded >= recorded:
                rate = (seen.recorded - recorded) / (now - then)
                self.rate = rate if self.rate == 0 else 0.7 * self.rate + 0.3 * rate
        self._recorded = (now, seen.recorded)


class Lanes:
    """The download slots between the lanes (one per download stage)."""

    def __init__(
        self,
        slots: trio.CapacityLimiter,
        backlog: Backlog,
        *,
        downloads: ActiveCount | None = None,
        backfills: ActiveCount | None = None,
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
        self.downloads = downloads if downloads is not None else ActiveCount()
        """Downloads running, of either lane (the stage's in-flight count)."""
        self.backfills = backfills if backfills is not None else ActiveCount()
        """Of them, the backfill lane's (its consumer's in-flight count)."""
        self._lot = trio.lowlevel.ParkingLot()
        """Backfill tasks waiting for a slot the live lane leaves free."""

    async def turn(self, *, rate: float, delay: float) -> None:
        """A backfill task's turn to go for its origin: under the rate, and while the backlog
        downstream drains within ``delay`` seconds."""
        self.pacer.rate = rate
        await self.pacer.take(1)
        await self.backlog.below(delay)

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
        counts = [self.downloads, *([self.backfills] if lane == BACKFILL else [])]
        for count in counts:
            count.n += 1
        try:
            yield
        finally:
            for count in counts:
                count.n -= 1
            self.slots.release()
            self._wake()

    def active(self, lane: str) -> int:
        """Downloads of ``lane`` running."""
        if lane == BACKFILL:
            return self.backfills.n
        return self.downloads.n - self.backfills.n

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
