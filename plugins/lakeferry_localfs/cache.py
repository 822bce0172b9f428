"""The ``localfs`` cache backend: a directory of complete, checksummed files under a byte quota.

Layout, for a key whose sha256 hex is ``name`` (keys are arbitrary strings; their hash is a
safe, fixed-length file name)::

    <path>/<name[:2]>/<name>                  the data, present only when complete
    <path>/<name[:2]>/<name>.meta             JSON sidecar: key, size, sha256
    <path>/<name[:2]>/<name>.<token>.part     a download in progress

A file is written as ``.part`` while its sha256 is computed on the fly, then published: any
older data under the key is unlinked, the ``.meta`` sidecar is written, and the part is renamed
into place. Data therefore never exists without a matching sidecar, and a crash at any point
leaves either the complete old state, nothing, or leftovers that the start-up scan deletes
(``.part`` files, sidecars without data). :meth:`LocalFsCache.lookup` still checks the sidecar
against the data's size before trusting an entry.

Durability: with ``fsync = false`` (the default) a published file is not forced to disk. The
cache is a buffer between stages, not the system of record: a process crash loses nothing (the
page cache survives it), and after a power loss an entry whose data did not reach the disk
fails the size check, or the sink's checksum check, and the task is downloaded again. The sink
fsyncs what it lands. ``fsync = true`` trades throughput for not relying on that.

Resource handling: blocking file operations run in worker threads behind one limiter per cache;
writes are batched to at least ``WRITE_BATCH`` bytes so a stream of small chunks does not pay a
thread hop each. Opening a file and publishing one are shielded from cancellation (both are
short), so a cancellation never strands an open file or half-done bookkeeping.

Error handling: a checksum or size mismatch removes the part file and raises PermanentError;
an aborted or cancelled download removes its part file, shielded from the cancellation that
caused it. A full disk is TransientError(``cache_full``), other I/O errors ``cache_io``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import IO, TypeVar

import msgspec
import trio

from lakeferry.api import (
    ByteSize,
    CacheEntry,
    CacheUsage,
    ConfigError,
    PermanentError,
    PluginContext,
    Reason,
    TransientError,
)
from lakeferry_localfs.quota import QuotaGate

MiB = 2**20
GiB = 2**30
READ_CHUNK = 1 * MiB
WRITE_BATCH = 256 * 1024
IO_THREADS = 16
"""Worker threads one cache may keep busy at once (file writes, reads, renames, unlinks)."""

_NAME = re.compile(r"^[0-9a-f]{64}$")
_SHARD = re.compile(r"^[0-9a-f]{2}$")

T = TypeVar("T")


class LocalFsCacheSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[cache]`` with ``kind = "localfs"``."""

    path: str
    """The cache directory (created if missing). The cache owns it: keep other files out."""
    quota: ByteSize = ByteSize(20 * GiB)
    """Bytes the cache may hold, complete files and reservations together (live on SIGHUP)."""
    unknown_size_estimate: ByteSize = ByteSize(64 * MiB)
    """What a download of unknown size reserves against the quota while it runs."""
    fsync: bool = False
    """Force each file to disk before publishing it (see the module docstring)."""


class _Meta(msgspec.Struct, frozen=True):
    key: str
    size: int
    sha256: str


_META_ENCODER = msgspec.json.Encoder()
_META_DECODER = msgspec.json.Decoder(_Meta)


def _io_error(exc: OSError, what: str) -> TransientError:
    reason = "cache_full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "cache_io"
    return TransientError(reason, f"{what}: {exc.strerror or exc}")


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


class _ChunkReader:
    """Async iterator over a file's chunks, each read in a worker thread."""

    def __init__(self, fh: IO[bytes], cache: LocalFsCache) -> None:
        self._fh = fh
        self._cache = cache

    def __aiter__(self) -> _ChunkReader:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._cache.run_sync(self._fh.read, READ_CHUNK)
        if not chunk:
            raise StopAsyncIteration
        return chunk


class LocalFsPendingFile:
    """One file being written into the cache (a :class:`lakeferry.api.PendingFile`)."""

    def __init__(self, cache: LocalFsCache, key: str, name: str, part: Path, fh: IO[bytes]) -> None:
        self._cache = cache
        self._key = key
        self._name = name
        self._part = part
        self._fh = fh
        self._hash = hashlib.sha256()
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._written = 0
        self._finished = False

    @property
    def bytes_written(self) -> int:
        return self._written

    @property
    def part_path(self) -> Path:
        return self._part

    async def write(self, chunk: bytes) -> None:
        if self._finished:
            raise RuntimeError("write after commit or abort")
        if not chunk:
            return
        self._buffer.append(bytes(chunk))  # a bytearray could change under us before the flush
        self._buffered += len(chunk)
        self._written += len(chunk)
        if self._buffered >= WRITE_BATCH:
            await self._flush()

    async def _flush(self) -> None:
        if not self._buffer:
            return
        data = self._buffer[0] if len(self._buffer) == 1 else b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        try:
            await self._cache.run_sync(self._write_sync, data)
        except OSError as exc:
            raise _io_error(exc, "cannot write to the cache") from exc

    def _write_sync(self, data: bytes) -> None:
        # Hashing here keeps the trio thread free; hashlib releases the GIL on large buffers.
        self._hash.update(data)
        self._fh.write(data)

    async def commit(self, *, expected_sha256: str | None, expected_size: int | None) -> CacheEntry:
        if self._finished:
            raise RuntimeError("commit after commit or abort")
        await self._flush()
        size = self._written
        digest = self._hash.hexdigest()
        if expected_size is not None and size != expected_size:
            await self.abort()
            raise PermanentError(
                Reason.SIZE_MISMATCH, f"expected {expected_size} bytes, received {size}"
            )
        if expected_sha256 is not None and digest != expected_sha256.lower():
            await self.abort()
            raise PermanentError(
                Reason.CHECKSUM_MISMATCH,
                f"expected sha256 {expected_sha256.lower()}, received {digest} ({size} bytes)",
            )
        entry = CacheEntry(self._key, size, digest)
        await self._cache.publish(self._name, self._part, self._fh, entry)
        self._finished = True
        return entry

    async def abort(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._buffer.clear()
        with trio.CancelScope(shield=True):
            await self._cache.run_sync(self._discard_sync)

    def _discard_sync(self) -> None:
        self._fh.close()
        _unlink(self._part)


class LocalFsCache:
    """The ``localfs`` :class:`lakeferry.api.CacheBackend`."""

    def __init__(self, settings: LocalFsCacheSettings, context: PluginContext) -> None:
        self._root = Path(settings.path).expanduser()
        self._log = context.logger
        self._fsync = settings.fsync
        self._limiter = trio.CapacityLimiter(IO_THREADS)
        self._gate = QuotaGate(settings.quota, settings.unknown_size_estimate)
        self._entries: dict[str, int] = {}
        """File name -> size of every complete entry, for quota accounting."""
        try:
            self._root.mkdir(parents=True, exist_ok=True)
            self._scan()
        except OSError as exc:
            raise ConfigError("cache.path", f"cannot use {str(self._root)!r}: {exc}") from exc
        self._gate.used = sum(self._entries.values())

    # -- paths and threads ------------------------------------------------------------------

    @property
    def root(self) -> Path:
        return self._root

    def _name(self, key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    def _data_path(self, name: str) -> Path:
        return self._root / name[:2] / name

    def _meta_path(self, name: str) -> Path:
        return self._root / name[:2] / f"{name}.meta"

    async def run_sync(self, fn: Callable[..., T], *args: object) -> T:
        """Run blocking ``fn(*args)`` in a worker thread under this cache's limiter."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    # -- start-up ---------------------------------------------------------------------------

    def _scan(self) -> None:
        """Count complete entries; delete crash leftovers. Runs once, in the constructor."""
        orphans = 0
        for shard in os.scandir(self._root):
            if not (shard.is_dir(follow_symlinks=False) and _SHARD.match(shard.name)):
                continue
            data: dict[str, int] = {}
            metas: set[str] = set()
            for item in os.scandir(shard.path):
                name, _, suffix = item.name.partition(".")
                if not _NAME.match(name) or not item.is_file(follow_symlinks=False):
                    continue
                if item.name.endswith(".part"):
                    os.unlink(item.path)
                    orphans += 1
                elif suffix == "meta":
                    metas.add(name)
                elif suffix == "":
                    data[name] = item.stat(follow_symlinks=False).st_size
            for name in data.keys() - metas:  # never written by us without a sidecar
                os.unlink(os.path.join(shard.path, name))
                orphans += 1
            for name in metas - data.keys():  # published sidecar, crash before the rename
                os.unlink(os.path.join(shard.path, f"{name}.meta"))
                orphans += 1
            for name in data.keys() & metas:
                self._entries[name] = data[name]
        self._log.info(
            "cache scanned",
            extra={
                "path": str(self._root),
                "files": len(self._entries),
                "bytes": sum(self._entries.values()),
                "orphans_removed": orphans,
            },
        )

    # -- the CacheBackend protocol ----------------------------------------------------------

    async def lookup(self, key: str) -> CacheEntry | None:
        name = self._name(key)
        data, meta = self._data_path(name), self._meta_path(name)

        def check() -> CacheEntry | None:
            try:
                raw = meta.read_bytes()
                size = data.stat().st_size
            except FileNotFoundError:
                return None
            try:
                found = _META_DECODER.decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError):
                return None
            if found.key != key or found.size != size:
                return None
            return CacheEntry(key, found.size, found.sha256)

        return await self.run_sync(check)

    def reserve(self, expected_size: int | None) -> AbstractAsyncContextManager[None]:
        return self._gate.reserve(expected_size)

    async def create(self, key: str) -> LocalFsPendingFile:
        name = self._name(key)
        part = self._root / name[:2] / f"{name}.{secrets.token_hex(6)}.part"

        def open_part() -> IO[bytes]:
            part.parent.mkdir(exist_ok=True)
            return part.open("xb", buffering=0)

        with trio.CancelScope(shield=True):  # never cancelled with the file already open
            fh = await self.run_sync(open_part)
        return LocalFsPendingFile(self, key, name, part, fh)

    async def publish(self, name: str, part: Path, fh: IO[bytes], entry: CacheEntry) -> None:
        """Move a checked part file into place under ``name`` and account for it."""
        data, meta = self._data_path(name), self._meta_path(name)
        fsync = self._fsync

        def publish_sync() -> None:
            if fsync:
                os.fsync(fh.fileno())
            fh.close()
            # Old data goes first, so no moment exists where new sidecar meets old data.
            _unlink(data)
            meta.write_bytes(_META_ENCODER.encode(_Meta(entry.key, entry.size, entry.sha256)))
            os.replace(part, data)
            if fsync:
                _fsync_dir(data.parent)

        # Shielded: once the rename may have happened, the accounting below must happen too.
        with trio.CancelScope(shield=True):
            try:
                await self.run_sync(publish_sync)
            except OSError as exc:
                if not await self.run_sync(data.exists):  # the old data went first
                    self._gate.add_used(-self._entries.pop(name, 0))
                raise _io_error(exc, "cannot publish into the cache") from exc
        previous = self._entries.get(name, 0)
        self._entries[name] = entry.size
        self._gate.add_used(entry.size - previous)

    @asynccontextmanager
    async def open(self, key: str) -> AsyncIterator[AsyncIterator[bytes]]:
        path = self._data_path(self._name(key))
        with trio.CancelScope(shield=True):  # never cancelled with the file already open
            fh: IO[bytes] = await self.run_sync(path.open, "rb")
        try:
            yield _ChunkReader(fh, self)
        finally:
            fh.close()

    def local_path(self, key: str) -> Path:
        return self._data_path(self._name(key))

    async def remove(self, key: str) -> None:
        name = self._name(key)
        data, meta = self._data_path(name), self._meta_path(name)

        def remove_sync() -> None:
            _unlink(data)  # data first: without it the entry is gone for lookup()
            _unlink(meta)

        await self.run_sync(remove_sync)
        self._gate.add_used(-self._entries.pop(name, 0))

    def usage(self) -> CacheUsage:
        return CacheUsage(bytes=self._gate.used, files=len(self._entries), quota=self._gate.quota)

    @property
    def reserved(self) -> int:
        """Bytes reserved by downloads in progress."""
        return self._gate.reserved

    @property
    def waiting(self) -> int:
        """Downloads waiting for quota."""
        return self._gate.waiting

    def set_quota(self, quota: int) -> None:
        self._gate.set_quota(quota)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
