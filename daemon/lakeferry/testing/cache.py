"""``CacheConformance``: what every :class:`lakeferry.api.CacheBackend` must do.

Subclass it and provide one fixture, ``make_cache`` → ``Callable[[int], CacheBackend]``: a
fresh, empty cache with the given byte quota (its other settings as the test likes).

The checks: a file written in chunks, committed with its sha256 and size, is found by
``lookup`` and read back byte for byte by ``open``; a wrong checksum or size is
``PermanentError`` (``checksum_mismatch`` / ``size_mismatch``) and leaves nothing; ``abort``,
also after a cancelled write, leaves nothing and frees the quota; ``remove`` deletes (twice is
fine) and ``open`` of a removed file raises FileNotFoundError; a reservation waits while the
quota is used up and is admitted once a file is removed; a file larger than the whole quota is
refused at once; a reservation grows (waiting while the quota is used up) but never past the
whole quota.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
import trio

from lakeferry.api import CacheBackend, PendingFile, PermanentError, Reason

KiB = 1024


def body(size: int, seed: str = "x") -> bytes:
    """Deterministic, incompressible-looking bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


async def read_all(cache: CacheBackend, key: str) -> bytes:
    parts = []
    async with cache.open(key) as chunks:
        async for chunk in chunks:
            parts.append(chunk)
    return b"".join(parts)


async def write_in_chunks(pending: PendingFile, data: bytes, chunk: int = 16 * KiB) -> None:
    for start in range(0, len(data), chunk):
        await pending.write(data[start : start + chunk])


class CacheConformance:
    """The cache contract; subclass with a ``make_cache(quota)`` fixture."""

    pytestmark = pytest.mark.trio
    quota: int = 1024 * KiB
    """The quota most tests build their cache with."""
    wait: float = 0.3
    """Seconds a blocked reservation must stay blocked to count as waiting."""

    async def _store(self, cache: CacheBackend, key: str, data: bytes) -> None:
        async with cache.reserve(len(data)):
            pending = await cache.create(key)
            await write_in_chunks(pending, data)
            entry = await pending.commit(
                expected_sha256=hashlib.sha256(data).hexdigest(), expected_size=len(data)
            )
        assert (entry.key, entry.size, entry.sha256) == (
            key,
            len(data),
            hashlib.sha256(data).hexdigest(),
        )

    async def test_write_commit_lookup_open(
        self, make_cache: Callable[[int], CacheBackend]
    ) -> None:
        cache = make_cache(self.quota)
        try:
            data = body(200 * KiB + 3)
            assert await cache.lookup("k/1") is None
            await self._store(cache, "k/1", data)
            found = await cache.lookup("k/1")
            assert found is not None
            assert (found.size, found.sha256) == (len(data), hashlib.sha256(data).hexdigest())
            assert await read_all(cache, "k/1") == data
            usage = cache.usage()
            assert (usage.files, usage.quota) == (1, self.quota)
            assert usage.bytes >= len(data)
        finally:
            await cache.aclose()

    @pytest.mark.parametrize("wrong", ["sha256", "size"])
    async def test_a_wrong_checksum_or_size_commits_nothing(
        self, make_cache: Callable[[int], CacheBackend], wrong: str
    ) -> None:
        cache = make_cache(self.quota)
        try:
            data = body(50 * KiB)
            async with cache.reserve(len(data)):
                pending = await cache.create("k")
                await write_in_chunks(pending, data)
                sha256, size = ("0" * 64, len(data)) if wrong == "sha256" else (None, len(data) + 1)
                with pytest.raises(PermanentError) as info:
                    await pending.commit(expected_sha256=sha256, expected_size=size)
            expected = Reason.CHECKSUM_MISMATCH if wrong == "sha256" else Reason.SIZE_MISMATCH
            assert info.value.reason == expected
            assert await cache.lookup("k") is None
            assert cache.usage().files == 0
        finally:
            await cache.aclose()

    async def test_abort_leaves_nothing(self, make_cache: Callable[[int], CacheBackend]) -> None:
        cache = make_cache(self.quota)
        try:
            data = body(100 * KiB)
            async with cache.reserve(len(data)):
                pending = await cache.create("k")
                await write_in_chunks(pending, data)
                await pending.abort()
            assert await cache.lookup("k") is None
            assert cache.usage().bytes == 0
            with trio.move_on_after(5) as scope:  # the whole quota is free again
                async with cache.reserve(self.quota):
                    pass
            assert not scope.cancelled_caught, "aborting did not release the quota"
        finally:
            await cache.aclose()

    async def test_cancelled_write_then_abort_leaves_nothing(
        self, make_cache: Callable[[int], CacheBackend]
    ) -> None:
        cache = make_cache(self.quota)
        try:
            async with cache.reserve(None):
                pending = await cache.create("k")
                with trio.CancelScope() as scope:
                    await pending.write(body(10 * KiB))
                    scope.cancel(reason="the download stage gave up")
                    await write_in_chunks(pending, body(300 * KiB))
                with trio.CancelScope(shield=True):
                    await pending.abort()
            assert await cache.lookup("k") is None
            assert cache.usage().bytes == 0
        finally:
            await cache.aclose()

    async def test_remove(self, make_cache: Callable[[int], CacheBackend]) -> None:
        cache = make_cache(self.quota)
        try:
            await self._store(cache, "k", body(10 * KiB))
            await cache.remove("k")
            await cache.remove("k")  # already gone: no error
            assert await cache.lookup("k") is None
            with pytest.raises(FileNotFoundError):
                await read_all(cache, "k")
            assert cache.usage()[:2] == (0, 0)
        finally:
            await cache.aclose()

    async def test_a_full_cache_makes_reservations_wait(
        self, make_cache: Callable[[int], CacheBackend]
    ) -> None:
        quota = 100 * KiB
        cache = make_cache(quota)
        try:
            await self._store(cache, "first", body(60 * KiB))
            admitted = trio.Event()

            async def second() -> None:
                async with cache.reserve(60 * KiB):
                    admitted.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(second)
                with trio.move_on_after(self.wait):
                    await admitted.wait()
                assert not admitted.is_set(), "admitted although the quota is used up"
                await cache.remove("first")
                with trio.fail_after(10):
                    await admitted.wait()
        finally:
            await cache.aclose()

    async def test_a_file_larger_than_the_quota_is_refused(
        self, make_cache: Callable[[int], CacheBackend]
    ) -> None:
        cache = make_cache(self.quota)
        try:
            with pytest.raises(PermanentError), trio.fail_after(5):
                async with cache.reserve(self.quota + 1):
                    pass
        finally:
            await cache.aclose()

    async def test_a_reservation_grows_but_never_past_the_quota(
        self, make_cache: Callable[[int], CacheBackend]
    ) -> None:
        quota = 100 * KiB
        cache = make_cache(quota)
        try:
            await self._store(cache, "first", body(60 * KiB))
            grown = trio.Event()

            async def download() -> None:
                async with cache.reserve(10 * KiB) as reservation:
                    assert reservation.size >= 10 * KiB
                    await reservation.grow(70 * KiB)
                    assert reservation.size == 70 * KiB
                    grown.set()
                    with pytest.raises(PermanentError) as info:
                        await reservation.grow(quota + 1)
                    assert info.value.reason == Reason.TOO_LARGE

            async with trio.open_nursery() as nursery:
                nursery.start_soon(download)
                with trio.move_on_after(self.wait):
                    await grown.wait()
                assert not grown.is_set(), "grew past the quota: 60 KiB used + 70 KiB"
                await cache.remove("first")
                with trio.fail_after(10):
                    await grown.wait()
        finally:
            await cache.aclose()
