"""The writer a downloader gets: a cache file held to its reservation and to the event's size.

Every downloader writes through :class:`BoundedWriter`, so the quota holds whatever the plugin
does: before bytes go past the reservation, the reservation grows (waiting for room); a body
that outgrows the whole quota is cut off ``too_large``, and one that outgrows the size the
event announced is cut off ``size_mismatch``, before those bytes reach the disk. An origin's
announced size (:meth:`BoundedWriter.expect_size`) is reserved in one step, and refused at once
when it cannot fit in the whole quota. Bytes wait for the bandwidth caps, when given, before
they are written.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from lakeferry.components import PendingFile, Reservation
from lakeferry.errors import PermanentError, Reason


class Progress:
    """What one download attempt got from its origin: whether it answered (announced a size or
    sent body bytes). A failure after an answer is the URL's trouble, not the origin's
    (:func:`lakeferry.stages.origins.outcome_of`)."""

    __slots__ = ("answered",)

    def __init__(self) -> None:
        self.answered = False


Pace = Callable[[int], Awaitable[None]]
"""Waits until that many more bytes fit in the bandwidth caps (:mod:`lakeferry.stages.pacing`)."""

GROWTH_STEP = 1024 * 1024
"""A reservation grows by at least this much at a time (fewer trips through the quota)."""


class BoundedWriter:
    """A :class:`lakeferry.api.DownloadWriter` over one pending cache file."""

    def __init__(
        self,
        pending: PendingFile,
        reservation: Reservation,
        expected_size: int | None,
        *,
        pace: Pace | None = None,
        progress: Progress | None = None,
    ) -> None:
        self._pending = pending
        self._reservation = reservation
        self._expected = expected_size
        self._pace = pace
        self._progress = progress

    @property
    def pending(self) -> PendingFile:
        return self._pending

    @property
    def bytes_written(self) -> int:
        return self._pending.bytes_written

    @property
    def offset(self) -> int:
        return self._pending.offset

    @property
    def validator(self) -> str | None:
        return self._pending.validator

    def set_validator(self, value: str | None) -> None:
        self._pending.set_validator(value)

    async def restart(self) -> None:
        await self._pending.restart()

    async def cover_kept_bytes(self) -> None:
        """Grow the reservation over bytes a resumed file already holds."""
        await self._reserve_up_to(self._pending.bytes_written, exact=True)

    async def expect_size(self, size: int) -> None:
        if self._progress is not None:
            self._progress.answered = True
        if self._expected is not None and size != self._expected:
            raise PermanentError(
                Reason.SIZE_MISMATCH,
                f"the origin announces {size} bytes, the event says {self._expected}",
            )
        await self._reserve_up_to(size, exact=True)

    async def write(self, chunk: bytes) -> None:
        if self._progress is not None and chunk:
            self._progress.answered = True
        total = self._pending.bytes_written + len(chunk)
        if self._expected is not None and total > self._expected:
            raise PermanentError(
                Reason.SIZE_MISMATCH,
                f"the body is longer than the {self._expected} bytes the event says "
                f"({total} bytes so far)",
            )
        if total > self._reservation.size:
            await self._reserve_up_to(total, exact=False)
        if self._pace is not None:
            await self._pace(len(chunk))
        await self._pending.write(chunk)

    async def _reserve_up_to(self, total: int, *, exact: bool) -> None:
        if total <= self._reservation.size:
            return
        if not exact:  # grow in steps, but never ask for more than the body needs to fit
            stepped = max(total, self._reservation.size + GROWTH_STEP)
            try:
                await self._reservation.grow(stepped)
                return
            except PermanentError as error:
                if error.reason != Reason.TOO_LARGE:
                    raise
        await self._reservation.grow(total)  # PermanentError(too_large) past the whole quota
