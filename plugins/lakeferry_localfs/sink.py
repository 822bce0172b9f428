"""The ``localfs`` sink: lands cached files in a directory tree, atomically and idempotently.

A put writes ``.<name>.lakeferry-tmp-<random>`` beside the target, checks it, and renames it over
the target with ``os.replace``, so a reader sees the old file or the new one, never a partial
one. The temporary file is a hard link to the cached file when ``link`` is on and both are on one
file system (moving a large file costs no I/O: the disk is the limit for large files); otherwise
the bytes are copied from the cache's stream.

Idempotency: a target that already holds a file of the same size and sha256 is left alone and
the put reports ``skipped``. The sha256 of a landed file is kept in the extended attribute
``user.lakeferry.sha256`` together with its size and mtime, so a later check reads one attribute
instead of the whole file; where xattrs are unsupported, or the file changed since, it is hashed.

A target that holds *different* bytes is overwritten: the file being landed is the newer event's
(two events that render the same destination mean the later one wins; give events distinct paths
to keep both).

Durability: with ``fsync`` on (the default) the file and its directory are forced to disk before
the put returns, because the inventory records the file as landed right after.

Error handling: unsafe destinations (``..``, absolute paths, control characters, a path that
resolves outside the root through a symlink) and a directory in the way are PermanentError
(``invalid_path``); a full disk and other I/O errors are TransientError (``sink_full``,
``sink_io``) so the upload stage backs off while an operator fixes them. A cached file that is
gone is PermanentError (``cache_missing``); one whose bytes no longer match its checksum is
PermanentError (``checksum_mismatch``).
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

import msgspec
import trio

from lakeferry.api import (
    CacheEntry,
    ConfigError,
    Event,
    PermanentError,
    PipelineError,
    PluginContext,
    PutOutcome,
    Reason,
    SinkFile,
    TransientError,
    render_destination,
    safe_relative_path,
)

XATTR = "user.lakeferry.sha256"
HASH_CHUNK = 1024 * 1024
IO_THREADS = 8
"""Worker threads one sink may keep busy at once."""

_LINK_UNSUPPORTED = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}
_NOT_A_PATH = {errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG, errno.EEXIST, errno.ELOOP}
_FULL = {errno.ENOSPC, errno.EDQUOT}

T = TypeVar("T")


class LocalFsSinkSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[sink]`` with ``kind = "localfs"``."""

    root: str
    """The directory files land under (created if missing)."""
    path_template: str = "{event.id}/{filename}"
    """Destination for events without a ``path``; fields as in :func:`render_destination`."""
    link: bool = True
    """Hard-link from the cache when it is on the same file system instead of copying."""
    fsync: bool = True
    """Force each landed file and its directory to disk before reporting it landed."""
    verify: bool = True
    """Re-hash the landed bytes and refuse them unless they match the cached file's sha256."""


def _io_error(exc: OSError, what: str) -> PipelineError:
    text = f"{what}: {exc.strerror or exc}"
    if exc.errno in _NOT_A_PATH:
        return PermanentError(Reason.INVALID_PATH, text)
    if exc.errno in _FULL:
        return TransientError("sink_full", text)
    return TransientError("sink_io", text)


def _hash_file(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _stamp(st: os.stat_result, sha256: str) -> bytes:
    return f"{sha256}:{st.st_size}:{st.st_mtime_ns}".encode()


def _read_stamp(path: Path, st: os.stat_result) -> str | None:
    """The sha256 recorded in the xattr, if it still describes this size and mtime."""
    try:
        raw = os.getxattr(path, XATTR, follow_symlinks=False)
    except (OSError, AttributeError):  # absent, unsupported, or no xattrs on this platform
        return None
    sha256, _, rest = raw.decode("ascii", "replace").partition(":")
    if rest == f"{st.st_size}:{st.st_mtime_ns}" and len(sha256) == 64:
        return sha256
    return None


def _write_stamp(path: Path, sha256: str) -> None:
    """Record ``sha256`` on ``path``; best effort (a missing xattr only costs a re-hash)."""
    try:
        st = path.stat(follow_symlinks=False)
        os.setxattr(path, XATTR, _stamp(st, sha256), follow_symlinks=False)
    except (OSError, AttributeError):
        pass


def sha256_of_file(path: Path) -> tuple[int, str] | None:
    """Size and sha256 of the regular file at ``path`` (None when absent or not a file)."""
    try:
        st = path.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    recorded = _read_stamp(path, st)
    if recorded is not None:
        return st.st_size, recorded
    size, digest = _hash_file(path)
    _write_stamp(path, digest)
    return size, digest


def _create_new(path: Path) -> BinaryIO:
    return path.open("xb")


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalFsSink:
    """The ``localfs`` :class:`lakeferry.api.Sink`."""

    def __init__(self, settings: LocalFsSinkSettings, context: PluginContext) -> None:
        self._settings = settings
        self._log = context.logger
        self._limiter = trio.CapacityLimiter(IO_THREADS)
        root = Path(settings.root).expanduser()
        try:
            root.mkdir(parents=True, exist_ok=True)
            self._root = root.resolve(strict=True)
        except OSError as exc:
            raise ConfigError("sink.root", f"cannot use {settings.root!r}: {exc}") from exc
        sample = Event(id="sample-id", url="https://example.org/a/file.bin")
        try:
            render_destination(settings.path_template, sample, dt.datetime.now(dt.UTC))
        except PermanentError as exc:
            raise ConfigError("sink.path_template", str(exc)) from exc

    @property
    def root(self) -> Path:
        return self._root

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def _target(self, destination: str) -> tuple[str, Path]:
        rel = safe_relative_path(destination)
        return rel, self._root / rel

    def destination(self, event: Event, *, now: dt.datetime) -> str:
        return render_destination(self._settings.path_template, event, now)

    async def stat(self, destination: str) -> CacheEntry | None:
        rel, target = self._target(destination)
        try:
            found = await self._run(sha256_of_file, target)
        except OSError as exc:
            raise _io_error(exc, f"cannot read {rel!r}") from exc
        if found is None:
            return None
        return CacheEntry(rel, found[0], found[1])

    async def put(self, file: SinkFile, destination: str, event: Event) -> PutOutcome:
        rel, target = self._target(destination)
        try:
            await self._run(self._prepare_dir, rel, target)
            existing = await self._run(self._existing_sha256, rel, target, file.size)
        except OSError as exc:
            raise _io_error(exc, f"cannot prepare {rel!r}") from exc
        if existing == file.sha256:
            return PutOutcome(rel, skipped=True)

        tmp = target.with_name(f".{target.name}.lakeferry-tmp-{secrets.token_hex(6)}")
        try:
            try:
                landed = None
                source = file.cache.local_path(file.key) if self._settings.link else None
                if source is not None:
                    landed = await self._run(self._link, source, tmp)
                if landed is None:
                    landed = await self._copy(file, tmp)
                self._check(file, rel, landed)
                await self._run(self._publish, tmp, target, file.sha256)
            except OSError as exc:
                raise _io_error(exc, f"cannot land {rel!r}") from exc
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._run(_unlink, tmp)
            raise
        return PutOutcome(rel, skipped=False)

    # -- the steps of a put, each run in a worker thread unless async -----------------------

    def _prepare_dir(self, rel: str, target: Path) -> None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise PermanentError(
                Reason.INVALID_PATH, f"destination {rel!r}: a file is in the way of its directory"
            ) from exc
        if not target.parent.resolve(strict=True).is_relative_to(self._root):
            raise PermanentError(
                Reason.INVALID_PATH, f"destination {rel!r} resolves outside the sink root"
            )

    def _existing_sha256(self, rel: str, target: Path, size: int) -> str | None:
        """The sha256 of what the target holds when it has ``size`` bytes, else None."""
        try:
            st = target.stat(follow_symlinks=False)
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(st.st_mode):
            raise PermanentError(Reason.INVALID_PATH, f"destination {rel!r} is a directory")
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return None  # a symlink or other special file is replaced, never followed
        found = sha256_of_file(target)
        return found[1] if found is not None else None

    def _link(self, source: Path, tmp: Path) -> tuple[int, str | None] | None:
        """Hard-link the cached file; None when this file system cannot (then: copy)."""
        try:
            os.link(source, tmp)
        except FileNotFoundError as exc:
            if not source.exists():
                raise PermanentError(
                    Reason.CACHE_MISSING, "the cached file is gone before upload"
                ) from exc
            raise
        except OSError as exc:
            if exc.errno in _LINK_UNSUPPORTED:
                return None
            raise
        size = tmp.stat().st_size
        if not self._settings.verify:
            return size, None
        return _hash_file(tmp)

    async def _copy(self, file: SinkFile, tmp: Path) -> tuple[int, str]:
        """Stream the cached file into ``tmp``, hashing what is written."""
        h = hashlib.sha256()
        size = 0
        fh = await self._run(_create_new, tmp)

        def write(chunk: bytes) -> None:
            nonlocal size
            h.update(chunk)
            fh.write(chunk)
            size += len(chunk)

        try:
            async with file.cache.open(file.key) as chunks:
                async for chunk in chunks:
                    await self._run(write, chunk)
        except FileNotFoundError as exc:
            raise PermanentError(
                Reason.CACHE_MISSING, "the cached file is gone before upload"
            ) from exc
        finally:
            fh.close()
        return size, h.hexdigest()

    def _check(self, file: SinkFile, rel: str, landed: tuple[int, str | None]) -> None:
        size, digest = landed
        if size != file.size:
            raise PermanentError(
                Reason.SIZE_MISMATCH,
                f"cached file for {rel!r} has {size} bytes, expected {file.size}",
            )
        if digest is not None and digest != file.sha256:
            raise PermanentError(
                Reason.CHECKSUM_MISMATCH,
                f"cached file for {rel!r} has sha256 {digest}, expected {file.sha256}",
            )

    def _publish(self, tmp: Path, target: Path, sha256: str) -> None:
        _write_stamp(tmp, sha256)
        if self._settings.fsync:
            _fsync_path(tmp)
        os.replace(tmp, target)
        if self._settings.fsync:
            _fsync_path(target.parent, directory=True)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
