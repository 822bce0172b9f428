"""Admission control for the cache's byte quota: who may start a download, and when.

A download reserves its expected size (an estimate when unknown) before it starts and keeps the
reservation until it ends; committed files count as *used* until they are removed. A new
reservation is admitted while ``used + reserved + need <= quota``, or when nothing at all is used
or reserved, so a single file larger than the free space still proceeds once the cache is empty
instead of blocking forever.

Waiters are admitted strictly in arrival order. Letting small requests overtake would starve a
large file for as long as small ones keep arriving; first-come-first-served bounds every wait by
the work ahead of it. Nothing polls: whoever frees quota (a removal, a finished reservation, a
raised quota) admits the waiters at the head of the queue and wakes them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from lakeferry.api import PermanentError, Reason

REFRESH_INTERVAL = 1.0
"""While a reservation waits, how often the used bytes are re-read from disk."""


class _Waiter:
    __slots__ = ("admitted", "error", "event", "known", "need")

    def __init__(self, need: int, known: bool) -> None:
        self.need = need
        self.known = known
        self.event = trio.Event()
        self.admitted = False
        self.error: PermanentError | None = None


def _too_large(size: int, quota: int) -> PermanentError:
    return PermanentError(
        Reason.TOO_LARGE, f"file of {size} bytes exceeds the whole cache quota of {quota} bytes"
    )


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
        self._waiters: deque[_Waiter] = deque()

    @property
    def waiting(self) -> int:
        """How many reservations are waiting for room."""
        return len(self._waiters)

    def _fits(self, need: int) -> bool:
        if self.used == 0 and self.reserved == 0:
            return True
        return self.used + self.reserved + need <= self.quota

    @asynccontextmanager
    async def reserve(self, expected_size: int | None) -> AsyncIterator[None]:
        """Hold room for one file of ``expected_size`` bytes for the duration of the block."""
        known = expected_size is not None
        need = expected_size if expected_size is not None else self.unknown_size_estimate
        if expected_size is not None and expected_size > self.quota:
            raise _too_large(expected_size, self.quota)
        await self._acquire(need, known)
        try:
            yield
        finally:
            self.reserved -= need
            self.admit()

    async def _acquire(self, need: int, known: bool) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._waiters and self._fits(need):
            self.reserved += need
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        waiter = _Waiter(need, known)
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
        if waiter.error is not None:
            raise waiter.error

    def admit(self) -> None:
        """Admit waiters from the head of the queue while they fit. Call after freeing room."""
        while self._waiters:
            head = self._waiters[0]
            if head.known and head.need > self.quota:
                self._waiters.popleft()
                head.error = _too_large(head.need, self.quota)
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
