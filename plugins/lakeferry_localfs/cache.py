"""The ``localfs`` cache backend: a directory of complete, checksummed files under a byte quota.

Layout, for a key whose sha256 hex is ``name`` (keys are arbitrary strings; their hash is a
safe, fixed-length file name)::

    <path>/<name[:2]>/<name>                  the data, present only when complete
    <path>/<name[:2]>/<name>.<token>.part     a download in progress, or a kept partial
    <path>/<name[:2]>/<name>.<token>.resume   JSON sidecar of a kept partial: key, validator,
                                              size, kept_at

A complete file's sha256 is in its own extended attribute, the stamp of
:mod:`lakeferry_localfs.stamp` (``user.lakeferry.sha256``: sha256, size, mtime), which the
localfs sink keeps on the files it lands too. A file is written as ``.part`` while its sha256
is computed on the fly, then stamped and renamed into place (replacing older data under the
key in one step): data therefore never exists without its checksum, and a crash at any point
leaves the complete old state, the complete new one, or a ``.part`` file that the start-up
scan deletes. :meth:`LocalFsCache.lookup` trusts an entry only while its stamp matches the
data's size and mtime. One inode per file and nothing else created or deleted: on ext4, the
cost of creating a file grows with the inodes recently deleted near it.

Where the file system keeps no user extended attributes (tmpfs before Linux 6.6, some network
file systems), the checksum goes in a JSON sidecar instead, ``<name>.meta`` (key, size,
sha256): publishing unlinks any older data, writes the sidecar, then renames the part into
place, and the scan deletes sidecars without data and data without a sidecar. A cache written
with sidecars (by an earlier release) is stamped by the start-up scan, its sidecars deleted.

Resuming: ``abort(keep_partial=True)`` of a file with a validator keeps its part file, fsynced
and cut to the bytes known written, and writes its ``.resume`` sidecar next to it. A later
``create(key, resume=True)`` takes the newest kept partial over by renaming its part file to a
new token (atomic: of two processes sharing the cache, one wins), re-hashes its bytes (hash
states cannot be saved) and continues writing after them. Kept partials count as used bytes
until taken over or deleted; the start-up scan keeps those younger than ``partial_max_age``
and deletes the rest, and every ``.part`` without a sidecar (a download a crash interrupted).

Durability: with ``fsync = false`` (the default) a published file is not forced to disk. The
cache is a buffer between stages, not the system of record: a process crash loses nothing (the
page cache survives it), and after a power loss an entry whose data did not reach the disk
fails the size check, or the sink's checksum check, and the task is downloaded again. The sink
fsyncs what it lands. ``fsync = true`` trades throughput for not relying on that.

Resource handling: blocking file operations run in the cache's own worker threads, at most
``IO_THREADS`` (:class:`lakeferry.api.IoThreads`: a queue in, results back to
trio in batches, a fraction of the CPU of a ``trio.to_thread`` call each); writes are batched to
at least ``WRITE_BATCH`` bytes so a stream of small chunks does not pay a thread hop each, and a
full batch is written (one ``writev`` of the pieces as they came, not joined into a copy) and
hashed in a worker thread while the download fills the next one (one batch in flight per file; a
write error surfaces at the next write or at commit). The part file is opened by the first batch
written, and the last batch is written, hashed and published in the same call, so a file smaller
than a batch costs one hop in all (thread hops, not bytes, are what small files spend their time
on). Metadata work on a local disk takes microseconds, less than a hop, so a lookup (a ``stat``
and the read of the stamp) and the removal of a small entry run in the trio thread; the cache
directory belongs on a local disk. Publishing is shielded from cancellation (it is short), and a
worker-thread call that opens a file always completes, so a cancellation never strands an open
file or half-done bookkeeping.

Error handling: a checksum or size mismatch removes the part file and raises PermanentError;
an aborted or cancelled download removes its part file (or keeps it, when asked and resumable),
shielded from the cancellation that caused it. A full disk is TransientError(``cache_full``),
other I/O errors ``cache_io``; a short write is completed or fails, so the bytes on disk are
always exactly the bytes hashed.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import itertools
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import IO, TypeVar

import msgspec
import outcome
import trio

from lakeferry.api import (
    ByteSize,
    CacheEntry,
    CacheUsage,
    ConfigError,
    Duration,
    IoThreads,
    LocalPath,
    PermanentError,
    PipelineError,
    PluginContext,
    Reason,
    TransientError,
)
from lakeferry_localfs.folder import ready_folder
from lakeferry_localfs.partials import (
    Kept,
    in_use,
    lock,
    read_kept,
    take_over,
    unlink_partial,
    write_kept,
)
from lakeferry_localfs.quota import QuotaGate, Reservation
from lakeferry_localfs.stamp import XATTR, parse_stamp, stamp

MiB = 2**20
GiB = 2**30
READ_CHUNK = 1 * MiB
WRITE_BATCH = 1 * MiB
"""Bytes a download buffers before they are written. One batch may be writing while the next
fills, so a download holds at most two: 2 MiB."""
INLINE_UNLINK = 1 * MiB
"""Entries up to this size are removed in the trio thread."""
IO_THREADS = 16
"""Worker threads one cache may keep busy at once (file writes, reads, renames, unlinks)."""

_NAME = re.compile(r"^[0-9a-f]{64}$")
_SHARD = re.compile(r"^[0-9a-f]{2}$")

T = TypeVar("T")


class LocalFsCacheSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[cache]`` with ``kind = "localfs"``."""

    path: LocalPath
    """The cache directory (created if missing). The cache owns it: keep other files out."""
    quota: ByteSize = ByteSize(20 * GiB)
    """Bytes the cache may hold, complete files and reservations together (live on SIGHUP)."""
    unknown_size_estimate: ByteSize = ByteSize(64 * MiB)
    """What a download of unknown size reserves when it starts (at most the quota); the
    reservation grows as its bytes arrive, and the body is cut off ``too_large`` when it
    outgrows the whole quota."""
    fsync: bool = False
    """Force each file to disk before publishing it (see the module docstring)."""
    partial_max_age: Duration = Duration(86400)
    """Partial files kept for resuming a failed download are deleted after this long."""


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


_NO_XATTRS = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP})


def xattrs_supported(root: Path) -> bool:
    """Whether files under ``root`` keep user extended attributes (else: ``.meta`` sidecars)."""
    probe = root / f".xattr-probe-{secrets.token_hex(6)}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.setxattr(fd, XATTR, b"probe")
    except OSError as exc:
        if exc.errno not in _NO_XATTRS:
            raise
        return False
    finally:
        os.close(fd)
        os.unlink(probe)
    return True


def _read_stamped(path: Path) -> tuple[os.stat_result, str] | None:
    """The data file's stat and the sha256 its stamp records; None when it is gone, has no
    stamp, or its stamp does not describe it. Tried twice: a publish that replaced the file
    between the two calls is not a miss."""
    for _ in range(2):
        try:
            raw = os.getxattr(path, XATTR)
            st = os.stat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                return None
            raise
        sha256 = parse_stamp(raw, st)
        if sha256 is not None:
            return st, sha256
    return None


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

    def __init__(
        self,
        cache: LocalFsCache,
        key: str,
        name: str,
        part: Path,
        fh: IO[bytes] | None,
        *,
        offset: int = 0,
        validator: str | None = None,
        hasher: hashlib._Hash | None = None,
    ) -> None:
        self._cache = cache
        self._key = key
        self._name = name
        self._part = part
        self._fh = fh
        """The part file; None until the first bytes are written (a small file is opened,
        written, hashed and published in one worker-thread call)."""
        self._hash = hasher if hasher is not None else hashlib.sha256()
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._offset = offset
        self._written = offset
        self._flushed = offset
        """Bytes completely written to the part file (and hashed)."""
        self._validator = validator
        self._finished = False
        self._writing: trio.Event | None = None
        """Set when the batch being written in a worker thread is done (None: none is)."""
        self._written_outcome: outcome.Outcome[None] | None = None

    @property
    def bytes_written(self) -> int:
        return self._written

    @property
    def offset(self) -> int:
        return self._offset

    @property
    def validator(self) -> str | None:
        return self._validator

    def set_validator(self, value: str | None) -> None:
        self._validator = value or None

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

    async def restart(self) -> None:
        if self._finished:
            raise RuntimeError("restart after commit or abort")
        await self._settle()
        self._buffer.clear()
        self._buffered = 0

        def truncate(fh: IO[bytes]) -> None:
            fh.seek(0)
            fh.truncate()

        if self._fh is not None:
            try:
                await self._cache.run_sync(truncate, self._fh)
            except OSError as exc:
                raise _io_error(exc, "cannot truncate a cache file") from exc
        self._hash = hashlib.sha256()
        self._offset = self._written = self._flushed = 0
        self._validator = None

    async def _flush(self) -> None:
        """Hand the buffered bytes to a worker thread and return while it writes them, so the
        download keeps reading: the network and the disk work at the same time. Waits first
        for the batch before (one write in flight per file, in order)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        await self._settle()
        if not self._buffer:
            return
        pieces, self._buffer = self._buffer, []
        self._buffered = 0
        done = self._writing = trio.Event()

        def deliver(result: outcome.Outcome[None]) -> None:  # in the trio thread
            self._written_outcome = result
            done.set()

        self._cache.threads.submit(functools.partial(self._write_sync, pieces), deliver)

    async def _settle(self) -> None:
        """Wait for the batch being written (if any) and raise its error. Shielded: the file
        is never left to a worker thread still writing it."""
        done = self._writing
        if done is None:
            return
        with trio.CancelScope(shield=True):
            await done.wait()
        self._writing = None
        result, self._written_outcome = self._written_outcome, None
        assert result is not None
        try:
            result.unwrap()
        except OSError as exc:
            raise _io_error(exc, "cannot write to the cache") from exc

    def _write_sync(self, pieces: list[bytes]) -> None:
        """Write the pieces as they came (one ``writev``, not joined into a copy first) and
        hash them, in a worker thread."""
        if self._fh is None:
            self._fh = self._cache.open_new(self._part)
        _write_all(self._fh.fileno(), pieces)
        # Hashing here keeps the trio thread free; hashlib releases the GIL on large buffers.
        for piece in pieces:
            self._hash.update(piece)
            self._flushed += len(piece)

    async def commit(self, *, expected_sha256: str | None, expected_size: int | None) -> CacheEntry:
        if self._finished:
            raise RuntimeError("commit after commit or abort")
        try:
            await self._settle()
        except PipelineError:
            await self.abort()
            raise
        tail, self._buffer = self._buffer, []
        self._buffered = 0
        size = self._written
        if expected_size is not None and size != expected_size:
            await self.abort()
            raise PermanentError(
                Reason.SIZE_MISMATCH, f"expected {expected_size} bytes, received {size}"
            )
        # One worker-thread call writes what is buffered, hashes it, and publishes the file
        # when its checksum is the expected one: a small file costs one thread hop in all.
        expected = expected_sha256.lower() if expected_sha256 is not None else None
        digest = await self._cache.publish(self, tail, expected)
        if expected is not None and digest != expected:
            await self.abort()
            raise PermanentError(
                Reason.CHECKSUM_MISMATCH,
                f"expected sha256 {expected}, received {digest} ({size} bytes)",
            )
        self._finished = True
        return CacheEntry(self._key, size, digest)

    async def abort(self, *, keep_partial: bool = False) -> None:
        if self._finished:
            return
        self._finished = True
        with trio.CancelScope(shield=True):
            with contextlib.suppress(PipelineError):
                await self._settle()  # what it wrote counts (or, failing, does not) below
            if keep_partial and self._validator is not None:
                # What was received is worth keeping too; on a full disk, what is on disk.
                with contextlib.suppress(PipelineError):
                    await self._flush()
                with contextlib.suppress(PipelineError):
                    await self._settle()
                if self._flushed > 0 and self._fh is not None:
                    kept = Kept(self._key, self._validator, self._flushed, time.time())
                    if await self._cache.keep(self._name, self._part, self._fh, kept):
                        return
            self._buffer.clear()
            if self._fh is not None:
                await self._cache.run_sync(self._discard_sync, self._fh)

    def _discard_sync(self, fh: IO[bytes]) -> None:
        fh.close()
        _unlink(self._part)


class LocalFsCache:
    """The ``localfs`` :class:`lakeferry.api.CacheBackend`."""

    def __init__(self, settings: LocalFsCacheSettings, context: PluginContext) -> None:
        self._root = Path(settings.path).expanduser()
        self._log = context.logger
        self._fsync = settings.fsync
        self._threads = IoThreads(IO_THREADS, "lakeferry-cache")
        self._gate = QuotaGate(
            settings.quota, settings.unknown_size_estimate, refresh=self._refresh_usage
        )
        self._partial_max_age = float(settings.partial_max_age)
        self._entries: dict[str, int] = {}
        """File name -> size of every complete entry, for quota accounting."""
        self._kept: dict[str, dict[Path, int]] = {}
        """File name -> {part file: size} of the partials kept for resuming (used bytes too)."""
        self._xattrs = True
        """Entries carry their sha256 as a stamp (False: in ``.meta`` sidecars)."""
        # Part files are named by a random prefix for this cache object and a counter: unique
        # among the processes sharing the cache (and "x" mode fails rather than share one),
        # without a call for random bytes per file.
        self._tokens = (f"{secrets.token_hex(4)}{n:x}" for n in itertools.count())
        ready_folder("cache.path", settings.path, check_only=context.check_only)
        if context.check_only:
            return
        try:
            self._xattrs = xattrs_supported(self._root)
            self._scan()
        except OSError as exc:
            raise ConfigError("cache.path", f"cannot use {str(self._root)!r}: {exc}") from exc
        self._gate.used = sum(self._entries.values()) + self.kept_bytes

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

    def _new_part(self, name: str) -> Path:
        return self._root / name[:2] / f"{name}.{next(self._tokens)}.part"

    @property
    def stamps(self) -> bool:
        """Whether entries carry their sha256 as a stamp (else in ``.meta`` sidecars)."""
        return self._xattrs

    @property
    def threads(self) -> IoThreads:
        """The worker threads of this cache's blocking file work."""
        return self._threads

    async def run_sync(self, fn: Callable[..., T], *args: object) -> T:
        """Run blocking ``fn(*args)`` in one of this cache's worker threads."""
        return await self._threads.run(fn, *args)

    # -- start-up ---------------------------------------------------------------------------

    def _scan(self) -> None:
        """Count complete entries and kept partials; delete crash leftovers and partials too
        old to resume. Runs once, in the constructor."""
        orphans = 0
        expired = 0
        migrated = 0
        oldest = time.time() - self._partial_max_age
        for shard in os.scandir(self._root):
            if not (shard.is_dir(follow_symlinks=False) and _SHARD.match(shard.name)):
                continue
            data: dict[str, int] = {}
            metas: set[str] = set()
            parts: dict[str, str] = {}  # "<name>.<token>" -> part path
            resumes: dict[str, str] = {}  # "<name>.<token>" -> sidecar path
            for item in os.scandir(shard.path):
                name, _, suffix = item.name.partition(".")
                if not _NAME.match(name) or not item.is_file(follow_symlinks=False):
                    continue
                if item.name.endswith(".part"):
                    parts[item.name.removesuffix(".part")] = item.path
                elif item.name.endswith(".resume"):
                    resumes[item.name.removesuffix(".resume")] = item.path
                elif item.name.endswith(".resume-tmp"):  # a crash while keeping a partial
                    os.unlink(item.path)
                    orphans += 1
                elif suffix == "meta":
                    metas.add(name)
                elif suffix == "":
                    data[name] = item.stat(follow_symlinks=False).st_size
            for stem, part in parts.items():
                sidecar = resumes.pop(stem, None)
                kept = read_kept(sidecar) if sidecar is not None else None
                size = os.stat(part).st_size
                if kept is not None and kept.size == size and kept.kept_at >= oldest:
                    self._kept.setdefault(stem.partition(".")[0], {})[Path(part)] = size
                    continue
                if sidecar is None and in_use(part):
                    continue  # another process sharing the cache is writing it right now
                os.unlink(part)  # a download a crash interrupted, or a partial too old
                if sidecar is not None:
                    os.unlink(sidecar)
                    expired += 1
                else:
                    orphans += 1
            for sidecar in resumes.values():  # its partial is gone
                os.unlink(sidecar)
                orphans += 1
            for name in data.keys() - metas:
                path = os.path.join(shard.path, name)
                if self._xattrs and _read_stamped(Path(path)) is not None:
                    self._entries[name] = data[name]
                else:  # never published by us without a checksum
                    os.unlink(path)
                    orphans += 1
            for name in metas - data.keys():  # published sidecar, crash before the rename
                os.unlink(os.path.join(shard.path, f"{name}.meta"))
                orphans += 1
            for name in data.keys() & metas:
                if not self._xattrs:
                    self._entries[name] = data[name]
                elif _stamp_from_sidecar(shard.path, name):
                    self._entries[name] = data[name]
                    migrated += 1
                else:
                    orphans += 1
        self._log.info(
            "cache scanned",
            extra={
                "path": str(self._root),
                "files": len(self._entries),
                "bytes": sum(self._entries.values()),
                "orphans_removed": orphans,
                "partials_kept": sum(len(k) for k in self._kept.values()),
                "partials_expired": expired,
                "checksums": "stamps" if self._xattrs else "sidecars",
                "sidecars_converted": migrated,
            },
        )

    # -- the CacheBackend protocol ----------------------------------------------------------

    async def lookup(self, key: str) -> CacheEntry | None:
        name = self._name(key)
        data, meta = self._data_path(name), self._meta_path(name)

        def check() -> CacheEntry | None:
            if self._xattrs:
                stamped = _read_stamped(data)
                return None if stamped is None else CacheEntry(key, stamped[0].st_size, stamped[1])
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

        # In this thread: a stat and the read of the stamp (or of a sidecar of ~150 bytes) on a
        # local disk cost microseconds, a worker-thread hop far more (see the module docstring).
        await trio.lowlevel.checkpoint()
        return check()

    def reserve(self, expected_size: int | None) -> AbstractAsyncContextManager[Reservation]:
        return self._gate.reserve(expected_size)

    async def create(self, key: str, *, resume: bool = False) -> LocalFsPendingFile:
        name = self._name(key)
        part = self._new_part(name)
        kept_parts = self._kept.pop(name, None)
        if not kept_parts:  # the usual case: nothing to take over or delete first
            return LocalFsPendingFile(self, key, name, part, None)  # opened by its first write
        # Usually one: the download stage claims a key's partial on every attempt. More than
        # one only when several processes share the cache; the largest saves the most.
        candidates = sorted(kept_parts.items(), key=lambda kv: -kv[1])
        self._gate.add_used(-sum(size for _, size in candidates))  # now under our reservation
        with trio.CancelScope(shield=True):  # never cancelled with a file already open
            taken = None
            for old, _size in candidates:
                if resume and taken is None:
                    try:
                        taken = await self.run_sync(
                            take_over, key, old, part, self._partial_max_age
                        )
                    except OSError as exc:
                        self._log.warning("cannot resume a partial file", extra={"error": str(exc)})
                else:
                    await self.run_sync(unlink_partial, old)
            if taken is not None:
                fh, kept, hasher = taken
                return LocalFsPendingFile(
                    self, key, name, part, fh,
                    offset=kept.size, validator=kept.validator, hasher=hasher,
                )  # fmt: skip
        return LocalFsPendingFile(self, key, name, part, None)  # opened by its first write

    @staticmethod
    def open_new(part: Path) -> IO[bytes]:
        """Create and lock a new part file (in a worker thread)."""
        try:
            fh = part.open("xb", buffering=0)
        except FileNotFoundError:  # the shard's first file
            part.parent.mkdir(exist_ok=True)
            fh = part.open("xb", buffering=0)
        lock(fh)  # other processes sharing the cache see it is in use
        return fh

    async def keep(self, name: str, part: Path, fh: IO[bytes], kept: Kept) -> bool:
        """Keep an aborted part file for resuming; False (nothing kept) when that fails."""
        try:
            await self.run_sync(write_kept, part, fh, kept)
        except OSError as exc:
            self._log.warning(
                "cannot keep a partial file; it is deleted", extra={"error": str(exc)}
            )
            await self.run_sync(unlink_partial, part)
            return False
        self._kept.setdefault(name, {})[part] = kept.size
        self._gate.add_used(kept.size)
        return True

    async def publish(
        self, pending: LocalFsPendingFile, tail: list[bytes], expected: str | None
    ) -> str:
        """Write ``tail`` (the last buffered bytes) into ``pending``'s part file and move it into
        place under its name when its sha256 is ``expected`` (or nothing is expected); account
        for it. Returns the sha256: a different one than expected means nothing was published.
        """
        name, part, size = pending._name, pending._part, pending.bytes_written
        data, meta = self._data_path(name), self._meta_path(name)
        fsync, stamps = self._fsync, self._xattrs

        def publish_sync() -> str:
            if tail or pending._fh is None:
                pending._write_sync(tail)  # opens the part file when nothing was written yet
            digest = pending._hash.hexdigest()
            if expected is not None and digest != expected:
                return digest
            fh = pending._fh
            assert fh is not None
            if stamps:
                # Stamped before the rename: the data appears with its checksum, in one step.
                fd = fh.fileno()
                os.setxattr(fd, XATTR, stamp(digest, size, os.fstat(fd).st_mtime_ns))
            if fsync:
                os.fsync(fh.fileno())
            fh.close()
            if not stamps:
                # Old data goes first, so no moment exists where new sidecar meets old data.
                _unlink(data)
                meta.write_bytes(_META_ENCODER.encode(_Meta(pending._key, size, digest)))
            os.replace(part, data)
            if fsync:
                _fsync_dir(data.parent)
            return digest

        # Shielded: once the rename may have happened, the accounting below must happen too.
        with trio.CancelScope(shield=True):
            try:
                digest = await self.run_sync(publish_sync)
            except OSError as exc:
                if not await self.run_sync(data.exists):  # the old data went first
                    self._gate.add_used(-self._entries.pop(name, 0))
                raise _io_error(exc, "cannot publish into the cache") from exc
        if expected is not None and digest != expected:
            return digest
        previous = self._entries.get(name, 0)
        self._entries[name] = size
        self._gate.add_used(size - previous)
        return digest

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
            if not self._xattrs:
                _unlink(meta)

        size = self._entries.get(name)
        if size is None:  # published by another process sharing the cache
            try:
                size = os.stat(data).st_size
            except OSError:
                size = 0  # gone already (or unreadable: the unlinks will say)
        if size <= INLINE_UNLINK:
            await trio.lowlevel.checkpoint()
            remove_sync()  # a small file: an unlink costs microseconds; a hop costs more
        else:
            await self.run_sync(remove_sync)  # freeing a large file's extents takes a while
        self._gate.add_used(-self._entries.pop(name, 0))

    async def _refresh_usage(self) -> int:
        """Bytes held on disk, by every process sharing the cache: complete entries and kept
        partials. Upload workers in other processes free room this process cannot see."""

        stamps = self._xattrs

        def walk() -> tuple[dict[str, int], int]:
            entries: dict[str, int] = {}
            kept = 0
            for shard in os.scandir(self._root):
                if not (shard.is_dir(follow_symlinks=False) and _SHARD.match(shard.name)):
                    continue
                names = {item.name: item for item in os.scandir(shard.path)}
                for file_name, item in names.items():
                    name, _, suffix = file_name.partition(".")
                    if not _NAME.match(name):
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        if suffix == "" and (stamps or f"{name}.meta" in names):
                            entries[name] = item.stat(follow_symlinks=False).st_size
                        elif file_name.endswith(".part") and (
                            file_name.removesuffix(".part") + ".resume" in names
                        ):
                            kept += item.stat(follow_symlinks=False).st_size
            return entries, kept

        entries, kept = await self.run_sync(walk)
        self._entries = entries
        return sum(entries.values()) + kept

    def usage(self) -> CacheUsage:
        return CacheUsage(bytes=self._gate.used, files=len(self._entries), quota=self._gate.quota)

    async def refresh(self) -> CacheUsage:
        self._gate.used = await self._refresh_usage()
        self._gate.admit()  # another process may have freed room
        return self.usage()

    @property
    def kept_bytes(self) -> int:
        """Bytes of the partial files kept for resuming (counted as used)."""
        return sum(sum(k.values()) for k in self._kept.values())

    def kept_partials(self, key: str) -> int:
        """How many partial files are kept for ``key``."""
        return len(self._kept.get(self._name(key), {}))

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


def _stamp_from_sidecar(shard: str, name: str) -> bool:
    """Convert an entry an earlier release published with a ``.meta`` sidecar: stamp its data
    and delete the sidecar. False (both deleted) when the sidecar does not describe the data."""
    data, meta = os.path.join(shard, name), os.path.join(shard, f"{name}.meta")
    try:
        with open(meta, "rb") as fh:
            found = _META_DECODER.decode(fh.read())
        st = os.stat(data)
        usable = found.size == st.st_size and hashlib.sha256(found.key.encode()).hexdigest() == name
    except (msgspec.DecodeError, msgspec.ValidationError):
        usable = False
    if usable:
        os.setxattr(data, XATTR, stamp(found.sha256, st.st_size, st.st_mtime_ns))
    else:
        os.unlink(data)
    os.unlink(meta)
    return usable


IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
"""Pieces one ``writev`` call takes at most."""


def _write_all(fd: int, pieces: list[bytes]) -> None:
    """Write every piece, in order. A write may stop short (a full disk fails only on the next
    call): the rest is written, so what is on disk is exactly what is hashed."""
    views = [memoryview(piece) for piece in pieces if piece]
    first = 0
    while first < len(views):
        written = os.writev(fd, views[first : first + IOV_MAX])
        while written:
            size = len(views[first])
            if written < size:
                views[first] = views[first][written:]
                break
            written -= size
            first += 1


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
