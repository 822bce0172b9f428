"""Admission control for the cache's byte quota: who may start a download, and when it may grow.

A download reserves its expected size before it starts (an estimate, at most the quota, when the
size is unknown) and keeps the reservation until it ends; committed files count as *used* until
they are removed. Bytes in the cache never exceed the quota: a download that would write past
its reservation first *grows* it (:meth:`Reservation.grow`), waiting for room like any other
request, and a download whose body outgrows the whole quota is refused ``too_large``. (Before
growth existed, an event without ``size`` reserved the estimate and then wrote as much as the
origin sent: a 2 GiB body went into a cache with a 1 MB quota.)

Room is granted while ``used + reserved + need <= quota``, or when nothing at all is used or
reserved (so a request never waits on an empty cache).

Order: growth requests go first, then new reservations, each strictly in arrival order. A
running download frees its room soonest by finishing, and letting small new requests overtake a
large one would starve it for as long as small ones keep arriving; first-come-first-served
bounds every wait by the work ahead of it. Nothing polls: whoever frees quota (a removal, a
finished reservation, a raised quota) admits the waiters at the head of the queue.

Deadlock: downloads of unknown size that all wait to grow, holding every byte between them,
with nothing committed that an upload could free, would wait forever. The request that would
complete that circle fails instead (``TransientError(cache_full)``): its download gives its bytes
back and tries again later, and the others go on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from lakeferry.api import PermanentError, Reason, TransientError

REFRESH_INTERVAL = 1.0
"""While a request waits, how often the used bytes are re-read from disk."""
CACHE_FULL = "cache_full"


class _Waiter:
    __slots__ = ("admitted", "error", "event", "growing", "need", "total")

    def __init__(self, need: int, total: int, growing: bool) -> None:
        self.need = need
        """Bytes this request adds."""
        self.total = total
        """The file's size once granted (what must fit in the whole quota)."""
        self.growing = growing
        self.event = trio.Event()
        self.admitted = False
        self.error: PermanentError | None = None


def _too_large(size: int, quota: int) -> PermanentError:
    return PermanentError(
        Reason.TOO_LARGE, f"file of {size} bytes exceeds the whole cache quota of {quota} bytes"
    )


class Reservation:
    """Room held by one running download (a :class:`lakeferry.api.Reservation`)."""

    def __init__(self, gate: QuotaGate, size: int) -> None:
        self._gate = gate
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    async def grow(self, size: int) -> None:
        if size <= self._size:
            await trio.lowlevel.checkpoint()
            return
        gate = self._gate
        if size > gate.quota:
            raise _too_large(size, gate.quota)
        extra = size - self._size
        await gate.acquire(extra, size, growing=True)
        self._size = size


class QuotaGate:
    """Tracks used and reserved bytes against a quota; :meth:`reserve` waits for room."""

    def __init__(
        self,
        quota: int,
        unknown_size_estimate: int,
        *,
        refresh: Callable[[], Awaitable[int]] | None = None,
        refresh_interval: float = REFRESH_INTERVAL,
    ) -> None:
        self.quota = quota
        self.unknown_size_estimate = unknown_size_estimate
        self.refresh = refresh
        """Re-reads the used bytes (other processes sharing the cache free room too)."""
        self.refresh_interval = refresh_interval
        self.used = 0
        self.reserved = 0
        self.holders = 0
        """Reservations held (running downloads)."""
        self.growing = 0
        """Of those, how many wait to grow."""
        self._waiters: deque[_Waiter] = deque()

    @property
    def waiting(self) -> int:
        """How many requests (new reservations and growth) are waiting for room."""
        return len(self._waiters)

    def _fits(self, need: int) -> bool:
        if self.used == 0 and self.reserved == 0:
            return True
        return self.used + self.reserved + need <= self.quota

    @asynccontextmanager
    async def reserve(self, expected_size: int | None) -> AsyncIterator[Reservation]:
        """Hold room for one file of ``expected_size`` bytes for the duration of the block."""
        if expected_size is not None and expected_size > self.quota:
            raise _too_large(expected_size, self.quota)
        if expected_size is None:
            need = min(self.unknown_size_estimate, self.quota)
        else:
            need = expected_size
        await self.acquire(need, need, growing=False)
        reservation = Reservation(self, need)
        self.holders += 1
        try:
            yield reservation
        finally:
            self.holders -= 1
            self.reserved -= reservation.size
            self.admit()

    async def acquire(self, need: int, total: int, *, growing: bool) -> None:
        """Add ``need`` bytes to the reserved ones once they fit (see the module docstring)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        ahead = any(w.growing for w in self._waiters) if growing else bool(self._waiters)
        if not ahead and self._fits(need):
            self.reserved += need
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        if growing and self._deadlocked():
            raise TransientError(
                CACHE_FULL,
                f"cache quota of {self.quota} bytes is held by downloads that all wait for "
                "more room; giving this one's bytes back",
            )
        waiter = _Waiter(need, total, growing)
        if growing:  # behind the other growth requests, ahead of every new reservation
            position = sum(1 for w in self._waiters if w.growing)
            self._waiters.insert(position, waiter)
            self.growing += 1
        else:
            self._waiters.append(waiter)
        try:
            while not waiter.event.is_set():
                with trio.move_on_after(self.refresh_interval):
                    await waiter.event.wait()
                if not waiter.event.is_set() and self.refresh is not None:
                    self.used = await self.refresh()
                    self.admit()
        except BaseException:
            if waiter.admitted:
                self.reserved -= need
            else:
                self._waiters.remove(waiter)
            self.admit()  # a cancelled head may have been holding up the ones behind it
            raise
        finally:
            if growing:
                self.growing -= 1
        if waiter.error is not None:
            raise waiter.error

    def _deadlocked(self) -> bool:
        """Whether one more growth request would wait forever: nothing committed could be
        freed, and every other running download already waits to grow."""
        return self.used == 0 and self.growing + 1 >= self.holders

    def admit(self) -> None:
        """Admit waiters from the head of the queue while they fit. Call after freeing room."""
        while self._waiters:
            head = self._waiters[0]
            if head.total > self.quota:  # the quota shrank (SIGHUP) below what it needs
                self._waiters.popleft()
                head.error = _too_large(head.total, self.quota)
                head.event.set()
                continue
            if not self._fits(head.need):
                return
            self._waiters.popleft()
            self.reserved += head.need
            head.admitted = True
            head.event.set()

    def add_used(self, delta: int) -> None:
        """Account committed (positive) or removed (negative) bytes, and admit if room opened."""
        self.used = max(0, self.used + delta)
        if delta < 0:
            self.admit()

    def set_quota(self, quota: int) -> None:
        self.quota = quota
        self.admit()
