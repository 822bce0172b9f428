"""``SinkConformance``: what every :class:`lakeferry.api.Sink` must do.

Subclass it and provide one fixture, ``make_sink`` → ``Callable[[], Sink]``: a sink on an empty
destination (a temporary directory, a test container). Files come from a
:class:`~lakeferry.testing.MemoryCache`, read in 64 KiB chunks.

The checks: a put lands the file and ``stat`` reports its size and sha256; the same file again
is ``skipped``; different bytes replace it; a put cancelled half way leaves the destination as
it was (absent, or the old file): puts are atomic; cached bytes that do not match their
checksum are ``PermanentError(checksum_mismatch)`` and land nothing; a cached file that is gone
is ``PermanentError(cache_missing)``; unsafe destinations (``..``, absolute) are
``PermanentError(invalid_path)`` both from ``destination`` and from ``put``; ``walk`` lists
landed files by their destination and no temporary file once the puts are over (a cancelled
one included); ``sweep`` leaves landed files alone.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable

import pytest
import trio

from lakeferry.api import Event, PermanentError, Reason, Sink, SinkFile, SinkItem
from lakeferry.testing.cache import body
from lakeferry.testing.memory import T0, MemoryCache

KiB = 1024


def event(path: str | None = None, event_id: str = "ev-1") -> Event:
    return Event(
        id=event_id, url=f"https://origin.example/files/{event_id}.bin", path=path, created_at=T0
    )


class SinkConformance:
    """The sink contract; subclass with a ``make_sink`` fixture."""

    pytestmark = pytest.mark.trio
    size: int = 300 * KiB
    """Bytes of the files these tests land (several cache chunks)."""
    now: dt.datetime = T0

    async def _land(self, sink: Sink, file: SinkFile, path: str) -> tuple[str, bool]:
        ev = event(path)
        destination = sink.destination(ev, now=self.now)
        with trio.fail_after(60):
            outcome = await sink.put(file, destination, ev)
        return destination, outcome.skipped

    async def test_put_lands_and_stat_reports_it(self, make_sink: Callable[[], Sink]) -> None:
        sink = make_sink()
        try:
            file = MemoryCache().add("k", body(self.size, "a"))
            destination, skipped = await self._land(sink, file, "conformance/a.bin")
            assert not skipped
            held = await sink.stat(destination)
            assert held is not None
            assert (held.size, held.sha256) == (file.size, file.sha256)
            assert await sink.stat("conformance/absent.bin") is None
        finally:
            await sink.aclose()

    async def test_an_identical_file_is_skipped_a_different_one_replaced(
        self, make_sink: Callable[[], Sink]
    ) -> None:
        sink = make_sink()
        try:
            cache = MemoryCache()
            first = cache.add("k1", body(self.size, "a"))
            await self._land(sink, first, "conformance/b.bin")
            _, skipped = await self._land(sink, first, "conformance/b.bin")
            assert skipped, "an identical re-upload was not skipped"
            second = cache.add("k2", body(self.size, "b"))
            destination, skipped = await self._land(sink, second, "conformance/b.bin")
            assert not skipped
            held = await sink.stat(destination)
            assert held is not None
            assert held.sha256 == second.sha256
        finally:
            await sink.aclose()

    async def test_a_cancelled_put_leaves_the_destination_as_it_was(
        self, make_sink: Callable[[], Sink]
    ) -> None:
        sink = make_sink()
        try:
            cache = MemoryCache()
            old = cache.add("old", body(self.size, "old"))
            new = cache.add("new", body(self.size, "new"))
            for path, before in (("conformance/c.bin", None), ("conformance/d.bin", old)):
                if before is not None:
                    await self._land(sink, before, path)
                ev = event(path)
                destination = sink.destination(ev, now=self.now)
                with trio.CancelScope() as scope:
                    cache.on_read = lambda key, n: scope.cancel() if n >= 1 else None
                    await sink.put(new, destination, ev)
                cache.on_read = None
                assert scope.cancelled_caught, "the put finished or swallowed the cancellation"
                held = await sink.stat(destination)
                if before is None:
                    assert held is None, "a cancelled put left a file behind"
                else:
                    assert held is not None
                    assert held.sha256 == before.sha256, "a cancelled put changed the file"
        finally:
            await sink.aclose()

    async def test_bytes_not_matching_their_checksum_land_nothing(
        self, make_sink: Callable[[], Sink]
    ) -> None:
        sink = make_sink()
        try:
            cache = MemoryCache()
            good = cache.add("k", body(self.size, "e"))
            lying = SinkFile(cache, "k", good.size, hashlib.sha256(b"other").hexdigest())
            ev = event("conformance/e.bin")
            destination = sink.destination(ev, now=self.now)
            with pytest.raises(PermanentError) as info:
                await sink.put(lying, destination, ev)
            assert info.value.reason == Reason.CHECKSUM_MISMATCH
            assert await sink.stat(destination) is None
        finally:
            await sink.aclose()

    async def test_a_vanished_cache_file_is_cache_missing(
        self, make_sink: Callable[[], Sink]
    ) -> None:
        sink = make_sink()
        try:
            cache = MemoryCache()
            gone = SinkFile(cache, "gone", 10, hashlib.sha256(b"0123456789").hexdigest())
            ev = event("conformance/f.bin")
            with pytest.raises(PermanentError) as info:
                await sink.put(gone, sink.destination(ev, now=self.now), ev)
            assert info.value.reason == Reason.CACHE_MISSING
        finally:
            await sink.aclose()

    @pytest.mark.parametrize("unsafe", ["../escape.bin", "a/../../escape.bin", "/etc/escape"])
    async def test_unsafe_destinations_are_refused(
        self, make_sink: Callable[[], Sink], unsafe: str
    ) -> None:
        sink = make_sink()
        try:
            with pytest.raises(PermanentError) as info:
                sink.destination(event(unsafe), now=self.now)
            assert info.value.reason == Reason.INVALID_PATH
            file = MemoryCache().add("k", b"data")
            with pytest.raises(PermanentError) as info:
                await sink.put(file, unsafe, event())
            assert info.value.reason == Reason.INVALID_PATH
        finally:
            await sink.aclose()

    async def test_walk_lists_landed_files_and_no_temporaries(
        self, make_sink: Callable[[], Sink]
    ) -> None:
        sink = make_sink()
        try:
            cache = MemoryCache()
            first, _ = await self._land(sink, cache.add("a", body(10 * KiB, "a")), "w/a.bin")
            second, _ = await self._land(sink, cache.add("b", body(10 * KiB, "b")), "w/b/c.bin")
            scope = trio.CancelScope()
            cache.on_read = lambda key, chunks: scope.cancel() if chunks >= 2 else None
            with scope:  # a put cancelled half way cleans up after itself
                await self._land(sink, cache.add("c", body(self.size, "c")), "w/cancelled.bin")
            with trio.fail_after(60):
                items = sorted([item async for item in sink.walk()])
            assert items == sorted([SinkItem(first, False), SinkItem(second, False)])
            with trio.fail_after(60):
                assert await sink.sweep() == 0
                assert sorted([item async for item in sink.walk()]) == items
        finally:
            await sink.aclose()
