"""Bandwidth caps: bytes per second shared by every download that takes from one :class:`Pacer`.

A pacer is a generic cell rate algorithm: it keeps the time at which the bytes granted so far
will have been "sent" at its rate (``_due``), and a taker waits until that time is within
:data:`BURST_SECONDS` of now. Takers are served in the order they ask, so concurrent downloads
share the rate evenly, chunk by chunk; an idle pacer lets a second's worth through at once.
The download stage paces every chunk a downloader writes (``download.max_rate`` over all
downloads, ``download.host_rates`` per origin): the downloader's transfer then stalls on its
own backpressure (libcurl pauses the transfer, httpx stops reading), so the origin sends no
faster than the cap.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

BURST_SECONDS = 1.0
"""How far ahead of its rate an idle pacer lets bytes through."""


class Pacer:
    def __init__(self, rate: float, *, clock: Callable[[], float] = trio.current_time) -> None:
        self.rate = float(rate)
        """Bytes per second; 0 or less: no cap."""
        self._clock = clock
        self._due = 0.0

    async def take(self, n: int) -> None:
        """Wait until ``n`` more bytes fit in the rate."""
        if self.rate <= 0 or n <= 0:
            return
        now = self._clock()
        self._due = max(self._due, now) + n / self.rate
        wait = self._due - now - BURST_SECONDS
        if wait > 0:
            await trio.sleep(wait)
