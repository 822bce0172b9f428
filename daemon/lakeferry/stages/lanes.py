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
   stage on the cached topic and of the results stage on the results topic) must be inside a
   window (:class:`Backlog`) steered so that the queue the lane makes there stays within
   ``download.backfill_delay``, beyond the time those stages take on their own (at least
   :data:`MIN_WINDOW` files, so an idle pipeline lets a backfill start). The download stage
   is the cheap end; without this a backfill downloads faster than the upload and results
   stages can take, and every live file then queues behind its backlog there, where no lane
   can pass it;
4. at its origin, a live task waiting there goes first (:mod:`lakeferry.stages.origins`);
5. a download slot, only while no live task waits for one.

A live task takes a slot as before: it never waits for the backfill lane's rules, only for
downloads already running (of either lane) to end.
"""

from __future__ import annotations

import collections
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
SMOOTH = 8
"""Measurements one latency sample spans (two seconds: longer than the results stage's batch,
whose commits make the backlog a saw-tooth)."""
STALE = 4 * BACKLOG_EVERY
"""A gap between two measurements longer than this (no backfill task waited) starts the
latency's readings afresh: a rate over the gap says nothing about the stages now."""
BASE_KEEP = 30.0
"""Seconds a latency sample counts towards :attr:`Backlog.base` (the lowest of them)."""
GROW, SHRINK = 1.05, 0.7
"""The window grows by :data:`GROW` at a measurement that finds no queue while it held the lane
back, and shrinks by :data:`SHRINK` (at most once per :data:`SMOOTH` measurements) at one that
finds a queue."""
PROBE_EVERY = 10.0
"""Seconds between probes: the window cut to what the stages hold without a queue for
:data:`SMOOTH` measurements plus twice the delay, so the queue the lane allowed drains and the
base is seen again. Without them a lane that keeps its queue full would take base + queue for
the base within :data:`BASE_KEEP` seconds, and let the queue grow by another delay."""


class Downstream(NamedTuple):
    """One measurement: files downloaded and not yet recorded, and files recorded so far."""

    backlog: int
    recorded: int


class Backlog:
    """The downstream backlog and the window of files the backfill lane may keep there.

    The window grows while the latency downstream (Little's law over the last :data:`SMOOTH`
    measurements: mean backlog ÷ files recorded per second) stays within ``delay`` of the
    lowest latency seen lately (:attr:`base`: the stages' own time, as BBR keeps the lowest
    round trip), and shrinks when it rises above it (a queue). Probes (:data:`PROBE_EVERY`)
    keep the base true; a probe that does not bring the latency down means the stages are
    busy without the lane (live traffic), and the window shrinks. Measured at most every
    :data:`BACKLOG_EVERY` seconds; the backfill downloads started since count as backlog."""

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
        self._recent: collections.deque[tuple[float, int, float]] = collections.deque(
            maxlen=SMOOTH + 1
        )
        """(when, files recorded so far, mean backlog since the one before) per measurement."""
        self._latencies: collections.deque[tuple[float, float]] = collections.deque()
        self._quiet = 0
        """Samples before the window may shrink again."""
        self._probe: tuple[float, float] | None = None
        """When the next probe starts and ends."""
        self._probe_low = float("inf")
        """The lowest latency of the probe under way."""
        self._held = False
        """The window held a backfill task back since the last measurement."""
        self.limit = float(MIN_WINDOW)
        """The window, in files (at least :data:`MIN_WINDOW`)."""
        self.measured: int | None = None
        """The last backlog measured (None: the bus did not answer; the lane waits)."""
        self.rate = 0.0
        """Files recorded per second downstream, over the last :data:`SMOOTH` measurements."""
        self.latency = 0.0
        """Seconds a file takes downstream now (0 until known)."""
        self.base = 0.0
        """The lowest :attr:`latency` of the last :data:`BASE_KEEP` seconds."""
        self.started_since = 0

    def probing(self) -> bool:
        return self._probe is not None and self._probe[0] <= self._clock()

    def window(self) -> int:
        """Files the backlog may hold now."""
        if self.probing():  # what the stages hold without a queue, at most half the window
            return max(MIN_WINDOW, int(min(self.limit / 2, self.rate * self.base)))
        return max(MIN_WINDOW, int(self.limit))

    async def below(self, delay: float) -> None:
        """Wait until the backlog (as far as known) is inside the window."""
        while True:
            async with self._lock:
                if self._clock() - self._at >= BACKLOG_EVERY:
                    self._update(await self._measure(), delay)
                known = self.measured
                if known is not None and known + self.started_since < self.window():
                    self.started_since += 1
                    return
                self._held = True
            await trio.sleep_until(self._at + BACKLOG_EVERY)

    def _update(self, seen: Downstream | None, delay: float) -> None:
        now = self._clock()
        if now - self._at > STALE:  # the lane had nothing waiting: its readings are history
            self._recent.clear()
            self.measured = None
        # the backlog since the last measurement: from that one plus what started, to this one
        was = None if self.measured is None else self.measured + self.started_since
        self._at, self.started_since = now, 0
        self.measured = None if seen is None else seen.backlog
        held, self._held = self._held, False
        if seen is None:
            return
        mean = seen.backlog if was is None else (was + seen.backlog) / 2
        self._recent.append((now, seen.recorded, mean))
        (first, before, _), *later = self._recent
        if len(later) < SMOOTH or seen.recorded <= before:
            return
        self.rate = (seen.recorded - before) / (now - first)
        self.latency = sum(mean for *_, mean in later) / len(later) / self.rate
        self._latencies.append((now, self.latency))
        while self._latencies[0][0] < now - BASE_KEEP:
            self._latencies.popleft()
        self.base = min(latency for _, latency in self._latencies)
        self._steer(now, delay, held)

    def _steer(self, now: float, delay: float, held: bool) -> None:
        self._quiet = max(0, self._quiet - 1)
        if self.probing():
            self._probe_low = min(self._probe_low, self.latency)
        if self._probe is None or now >= self._probe[1]:
            start = now + PROBE_EVERY
            self._probe, ended = (start, start + SMOOTH * BACKLOG_EVERY + 2 * delay), self._probe
            if ended is not None and self._probe_low > self.base + delay / 2:
                # The queue did not drain with the lane held back: the stages are busy
                # without it. Keep the base (it is not the stages' own time) and back off.
                self._latencies.append((now, self.base))
                self.limit = max(MIN_WINDOW, self.limit * SHRINK)
            self._probe_low = float("inf")
        if self.latency > self.base + delay:
            if not self._quiet:
                self.limit = max(MIN_WINDOW, self.limit * SHRINK)
                self._quiet = SMOOTH
        elif held and not self.probing():
            self.limit *= GROW


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
        self.turn_waiting = 0
        """Backfill tasks waiting for their turn (:meth:`turn`: the rate cap, the window)."""
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
        self.turn_waiting += 1
        try:
            await self.pacer.take(1)
            await self.backlog.below(delay)
        finally:
            self.turn_waiting -= 1

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
