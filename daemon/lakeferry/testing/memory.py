"""In-memory stand-ins the conformance classes hand to a component under test.

:class:`MemoryCache` is a complete :class:`lakeferry.api.CacheBackend` kept in a dict (no
quota waits: it admits everything), good enough to feed a sink or receive a download, with
hooks that let a test cancel a transfer half way. :class:`ChunkRecorder` is a
:class:`lakeferry.api.CacheWriter` that hashes what it gets and remembers the largest chunk.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from lakeferry.api import (
    CacheEntry,
    CacheUsage,
    DownloadTask,
    DownloadWriter,
    Event,
    PendingFile,
    PermanentError,
    Reason,
    SinkFile,
)

T0 = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)


def make_task(url: str, event_id: str = "ev-1", **event_fields: Any) -> DownloadTask:
    """A download task for ``url`` (the event's other fields as keyword arguments)."""
    return DownloadTask(event=Event(id=event_id, url=url, **event_fields), received_at=T0)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ChunkRecorder:
    """A :class:`lakeferry.api.CacheWriter` that keeps only a hash, a count and the largest chunk.

    ``on_write(recorder)`` runs after every write (a test cancels from there).
    """

    def __init__(self, on_write: Callable[[ChunkRecorder], None] | None = None) -> None:
        self._hash = hashlib.sha256()
        self._written = 0
        self._validator: str | None = None
        self.chunks = 0
        self.max_chunk = 0
        self.announced: list[int] = []
        """Sizes the downloader announced through ``expect_size``."""
        self.on_write = on_write

    @property
    def bytes_written(self) -> int:
        return self._written

    @property
    def offset(self) -> int:
        return 0

    @property
    def validator(self) -> str | None:
        return self._validator

    def set_validator(self, value: str | None) -> None:
        self._validator = value

    async def restart(self) -> None:
        await trio.lowlevel.checkpoint()
        self._hash = hashlib.sha256()
        self._written = 0
        self._validator = None

    async def write(self, chunk: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self._hash.update(chunk)
        self._written += len(chunk)
        self.chunks += 1
        self.max_chunk = max(self.max_chunk, len(chunk))
        if self.on_write is not None:
            self.on_write(self)

    async def expect_size(self, size: int) -> None:
        await trio.lowlevel.checkpoint()
        self.announced.append(size)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class Unlimited:
    """A :class:`lakeferry.api.Reservation` with no quota behind it."""

    size = 2**62

    async def grow(self, size: int) -> None:
        await trio.lowlevel.checkpoint()


def download_writer(pending: PendingFile, expected_size: int | None = None) -> DownloadWriter:
    """``pending`` as a downloader gets it from the download stage (held to ``expected_size``;
    no quota). For tests that feed a downloader a real cache file."""
    from lakeferry.stages.bounded import BoundedWriter

    return BoundedWriter(pending, Unlimited(), expected_size)


class MemoryReservation:
    """A :class:`lakeferry.api.Reservation` that only refuses what exceeds the whole quota."""

    def __init__(self, cache: MemoryCache, size: int) -> None:
        self._cache = cache
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    async def grow(self, size: int) -> None:
        await trio.lowlevel.checkpoint()
        if size > self._cache.quota:
            raise PermanentError(Reason.TOO_LARGE, f"{size} bytes exceed the quota")
        self._size = max(self._size, size)


class MemoryPendingFile(ChunkRecorder):
    """A file being written into a :class:`MemoryCache`."""

    def __init__(self, cache: MemoryCache, key: str) -> None:
        super().__init__(on_write=cache.on_write)
        self._cache = cache
        self._key = key
        self._parts: list[bytes] = []
        self.finished = False

    async def write(self, chunk: bytes) -> None:
        if self.finished:
            raise RuntimeError("write after commit or abort")
        self._parts.append(bytes(chunk))
        await super().write(chunk)

    async def restart(self) -> None:
        self._parts.clear()
        await super().restart()

    async def commit(self, *, expected_sha256: str | None, expected_size: int | None) -> CacheEntry:
        await trio.lowlevel.checkpoint()
        data = b"".join(self._parts)
        self.finished = True
        if expected_size is not None and len(data) != expected_size:
            raise PermanentError(Reason.SIZE_MISMATCH, f"{len(data)} != {expected_size} bytes")
        digest = sha256_hex(data)
        if expected_sha256 is not None and digest != expected_sha256.lower():
            raise PermanentError(Reason.CHECKSUM_MISMATCH, f"sha256 {digest}")
        self._cache.files[self._key] = data
        return CacheEntry(self._key, len(data), digest)

    async def abort(self, *, keep_partial: bool = False) -> None:
        await trio.lowlevel.checkpoint()
        self.finished = True
        self._parts.clear()


class _Chunks:
    """A reader's chunks; a plain iterator, so a reader that stops early leaves nothing open."""

    def __init__(self, cache: MemoryCache, key: str, data: bytes) -> None:
        self._cache = cache
        self._key = key
        self._data = data
        self._n = 0

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        await trio.lowlevel.checkpoint()
        start = self._n * self._cache.read_chunk
        if start >= len(self._data):
            raise StopAsyncIteration
        if self._cache.on_read is not None:
            self._cache.on_read(self._key, self._n)
        self._n += 1
        return self._data[start : start + self._cache.read_chunk]


class MemoryCache:
    """A :class:`lakeferry.api.CacheBackend` in a dict, read back in ``read_chunk`` pieces.

    ``on_read(key, chunks_read)`` runs before each chunk a reader gets; ``on_write(writer)``
    after each chunk a pending file receives. Tests cancel transfers from these hooks.
    """

    def __init__(self, read_chunk: int = 64 * 1024, quota: int = 2**62) -> None:
        self.files: dict[str, bytes] = {}
        self.read_chunk = read_chunk
        self.quota = quota
        self.on_read: Callable[[str, int], None] | None = None
        self.on_write: Callable[[ChunkRecorder], None] | None = None

    def add(self, key: str, data: bytes) -> SinkFile:
        """Put ``data`` in under ``key``; the :class:`SinkFile` a sink would be handed."""
        self.files[key] = data
        return SinkFile(self, key, len(data), sha256_hex(data))

    async def lookup(self, key: str) -> CacheEntry | None:
        await trio.lowlevel.checkpoint()
        data = self.files.get(key)
        return None if data is None else CacheEntry(key, len(data), sha256_hex(data))

    @asynccontextmanager
    async def _admit(self, size: int) -> AsyncIterator[MemoryReservation]:
        await trio.lowlevel.checkpoint()
        yield MemoryReservation(self, size)

    def reserve(self, expected_size: int | None) -> AbstractAsyncContextManager[MemoryReservation]:
        return self._admit(min(expected_size or 0, self.quota))

    async def create(self, key: str, *, resume: bool = False) -> MemoryPendingFile:
        await trio.lowlevel.checkpoint()
        return MemoryPendingFile(self, key)

    @asynccontextmanager
    async def _reader(self, key: str) -> AsyncIterator[AsyncIterator[bytes]]:
        data = self.files.get(key)
        if data is None:
            raise FileNotFoundError(key)

        yield _Chunks(self, key, data)

    def open(self, key: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._reader(key)

    def local_path(self, key: str) -> Path | None:
        return None

    async def remove(self, key: str) -> None:
        await trio.lowlevel.checkpoint()
        self.files.pop(key, None)

    def usage(self) -> CacheUsage:
        return CacheUsage(sum(map(len, self.files.values())), len(self.files), self.quota)

    async def refresh(self) -> CacheUsage:
        await trio.lowlevel.checkpoint()
        return self.usage()

    def set_quota(self, quota: int) -> None:
        self.quota = quota

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
