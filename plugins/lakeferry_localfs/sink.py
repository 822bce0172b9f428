"""The ``localfs`` sink: lands cached files in a directory tree, atomically and idempotently.

A put writes a temporary file in the staging folder, checks it, and renames it over the
target with ``os.replace``, so a reader sees the old file or the new one, never a partial one.
The staging folder is ``<root>/.lakeferry-tmp/<owner>/`` (:data:`lakeferry.api.STAGING`, one
folder per process): temporary files are never beside landed ones, where lake readers would see
them, and a process killed in the middle of a put finds what it left in its own folder at its
next start (:meth:`LocalFsSink.sweep`; the root is one file system, so the rename stays atomic).
The temporary file is a hard link to the cached file when ``link`` is on and both are on one
file system (moving a large file costs no I/O: the disk is the limit for large files); otherwise
the bytes are copied from the cache's stream.

Idempotency: a target that already holds a file of the same size and sha256 is left alone and
the put reports ``skipped``. The sha256 of a landed file is kept in the extended attribute
``user.lakeferry.sha256`` together with its size and mtime, so a later check reads one attribute
instead of the whole file; where xattrs are unsupported, or the file changed since, it is hashed.

A target that holds *different* bytes is overwritten: the file being landed is the newer event's
(two events that render the same destination mean the later one wins; give events distinct paths
to keep both).

Durability: with ``fsync`` on (the default) a put returns only once its file and its name are on
disk, because the inventory records the file as landed right after; a skipped put too, once the
file it found is (a put whose round had not ended, or a process that crashed before its round,
may have left it there). The syncs are shared: puts hand their files to a durability round
(:mod:`lakeferry_localfs.durability`: the temporary files' bytes synced, renamed into place, the
names synced, two ``syncfs`` calls for every file of the round), and a small linked file is
linked, checked and stamped in that round's worker-thread call too. A linked file is checked by
the stamp the cache gave its inode (a copy, or a file without a current stamp, is hashed), so
landing a large file reads none of its bytes again. The bytes are on disk
before the rename, so a name never points at bytes a crash could lose.

Error handling: unsafe destinations (``..``, absolute paths, control characters, a path that
resolves outside the root through a symlink) and a directory in the way are PermanentError
(``invalid_path``); a full disk and other I/O errors are TransientError (``sink_full``,
``sink_io``) so the upload stage backs off while an operator fixes them. A cached file that is
gone is PermanentError (``cache_missing``); one whose bytes no longer match its checksum is
PermanentError (``checksum_mismatch``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import os
import secrets
import stat
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import BinaryIO, NamedTuple, TypeVar, cast

import msgspec
import trio

from lakeferry.api import (
    STAGING,
    STALE_TEMPORARY,
    CacheEntry,
    ConfigError,
    Event,
    LocalPath,
    PermanentError,
    PipelineError,
    PluginContext,
    PutOutcome,
    Reason,
    SinkFile,
    SinkItem,
    TransientError,
    render_destination,
    safe_relative_path,
)
from lakeferry_localfs.durability import DurabilityRounds, Landing, find_syncfs, fsync_path
from lakeferry_localfs.folder import ready_folder
from lakeferry_localfs.stamp import XATTR, parse_stamp, stamp

HASH_CHUNK = 1024 * 1024
HASH_STEP = 64 * 1024 * 1024
"""Bytes hashed per worker-thread call, so a cancellation is noticed between steps."""
IO_THREADS = 8
"""Worker threads one sink may keep busy at once."""
KNOWN_FOLDERS = 4096
"""Checked folders remembered (forgotten all at once when full)."""
ROUND_STAGE_MAX = 1024 * 1024
"""With fsync on, a linked file up to this size is linked, checked and stamped by the
durability round's own worker-thread call; a larger one in a call of its own (hashing it, when
it has no stamp, would hold up every put of the round)."""

_LINK_UNSUPPORTED = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}
_NOT_A_PATH = {errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG, errno.EEXIST, errno.ELOOP}
_FULL = {errno.ENOSPC, errno.EDQUOT}
_LEGACY_TEMPORARY = ".lakeferry-tmp-"

T = TypeVar("T")


class LocalFsSinkSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[sink]`` with ``kind = "localfs"``."""

    root: LocalPath
    """The directory files land under (created if missing)."""
    path_template: str = "{event.id}/{filename}"
    """Destination for events without a ``path``; fields as in :func:`render_destination`."""
    link: bool = True
    """Hard-link from the cache when it is on the same file system instead of copying."""
    fsync: bool = True
    """Report a file landed (or skipped) only once it and its name are on disk; the puts of a
    moment share the syncs (:mod:`lakeferry_localfs.durability`)."""
    verify: bool = True
    """Refuse landed bytes unless they match the cached file's sha256: a copy is hashed; a
    hard-linked file is the very inode the cache hashed while writing it, so its stamp (see
    :mod:`lakeferry_localfs.stamp`: valid only while its size and mtime are unchanged) is
    checked instead, and the file is hashed only when it has no current stamp. (A stamp is
    checked with ``verify`` off too: it costs one ``getxattr``.)"""


def _io_error(exc: OSError, what: str) -> PipelineError:
    text = f"{what}: {exc.strerror or exc}"
    if exc.errno in _NOT_A_PATH:
        return PermanentError(Reason.INVALID_PATH, text)
    if exc.errno in _FULL:
        return TransientError("sink_full", text)
    return TransientError("sink_io", text)


def _hash_some(fh: BinaryIO, h: hashlib._Hash, limit: int) -> int:
    """Feed up to ``limit`` bytes of ``fh`` to ``h``; the number of bytes read (0 at the end)."""
    done = 0
    while done < limit and (chunk := fh.read(HASH_CHUNK)):
        h.update(chunk)
        done += len(chunk)
    return done


def _stamp(st: os.stat_result, sha256: str) -> bytes:
    return stamp(sha256, st.st_size, st.st_mtime_ns)


def _read_stamp(path: Path, st: os.stat_result) -> str | None:
    """The sha256 recorded in the xattr, if it still describes this size and mtime."""
    try:
        raw = os.getxattr(path, XATTR, follow_symlinks=False)
    except (OSError, AttributeError):  # absent, unsupported, or no xattrs on this platform
        return None
    return parse_stamp(raw, st)


def _write_stamp(path: Path, sha256: str, hashed: os.stat_result | None = None) -> None:
    """Record ``sha256`` on ``path``; best effort (a missing xattr only costs a re-hash).

    With ``hashed`` (the file's stat when hashing began), nothing is recorded if the file
    changed since: the stamp must never pair a checksum with content it was not computed from.
    """
    try:
        st = path.stat(follow_symlinks=False)
        if hashed is not None and (st.st_size, st.st_mtime_ns) != (
            hashed.st_size,
            hashed.st_mtime_ns,
        ):
            return
        os.setxattr(path, XATTR, _stamp(st, sha256), follow_symlinks=False)
    except (OSError, AttributeError):
        pass


def _inspect(rel: str, target: Path, *, directory_is_error: bool) -> Held | None:
    """What the target is: None when absent or not a regular file (a symlink is never followed)."""
    try:
        st = target.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(st.st_mode) and directory_is_error:
        raise PermanentError(Reason.INVALID_PATH, f"destination {rel!r} is a directory")
    if not stat.S_ISREG(st.st_mode):
        return None
    return Held(st, _read_stamp(target, st))


class Held(NamedTuple):
    """A regular file at a destination, with the sha256 its xattr records (if still valid)."""

    st: os.stat_result
    recorded_sha256: str | None


def _open_binary(path: Path, mode: str) -> BinaryIO:
    return cast(BinaryIO, path.open(mode))


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _stamped_checksum(path: Path) -> tuple[int, str | None]:
    """Size and stamped sha256 of a hard-linked file (None: no current stamp, hash it)."""
    st = path.stat(follow_symlinks=False)
    return st.st_size, _read_stamp(path, st)


def _stamped(tmp: Path, sha256: str) -> bool:
    _write_stamp(tmp, sha256)
    return True


class LocalFsSink:
    """The ``localfs`` :class:`lakeferry.api.Sink`."""

    def __init__(self, settings: LocalFsSinkSettings, context: PluginContext) -> None:
        self._settings = settings
        self._log = context.logger
        self._limiter = trio.CapacityLimiter(IO_THREADS)
        self._root = ready_folder("sink.root", settings.root, check_only=context.check_only)
        sample = Event(id="sample-id", url="https://example.org/a/file.bin")
        try:
            render_destination(settings.path_template, sample, dt.datetime.now(dt.UTC))
        except PermanentError as exc:
            raise ConfigError("sink.path_template", str(exc)) from exc
        self._staging = self._root / STAGING
        self._mine = self._staging / context.owner
        self._staging_ready = False
        self._folders: dict[Path, tuple[int, int]] = {}
        """Folders checked to be inside the root, with their device and inode numbers."""
        self._durable = (
            DurabilityRounds(self._root, syncfs=find_syncfs()) if settings.fsync else None
        )

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

    async def _open(self, path: Path, mode: str) -> BinaryIO:
        # Shielded: a cancellation must not arrive after the thread opened the file.
        with trio.CancelScope(shield=True):
            fh = await self._run(_open_binary, path, mode)
        return fh

    async def _sha256(self, path: Path) -> tuple[int, str]:
        """Size and sha256 of ``path``, hashed in steps; records it in the xattr if unchanged."""
        fh = await self._open(path, "rb")
        try:
            hashed = os.fstat(fh.fileno())
            h = hashlib.sha256()
            size = 0
            while step := await self._run(_hash_some, fh, h, HASH_STEP):
                size += step
        finally:
            fh.close()
        digest = h.hexdigest()
        await self._run(_write_stamp, path, digest, hashed)
        return size, digest

    async def stat(self, destination: str) -> CacheEntry | None:
        rel, target = self._target(destination)
        try:
            held = await self._run(partial(_inspect, directory_is_error=False), rel, target)
            if held is None:
                return None
            if held.recorded_sha256 is not None:
                return CacheEntry(rel, held.st.st_size, held.recorded_sha256)
            size, digest = await self._sha256(target)
        except FileNotFoundError:
            return None  # removed while we looked
        except OSError as exc:
            raise _io_error(exc, f"cannot read {rel!r}") from exc
        return CacheEntry(rel, size, digest)

    async def sweep(self) -> int:
        return await self._run(self._sweep)

    def _sweep(self) -> int:
        """Delete everything in this process's staging folder (an earlier run of it died in
        the middle of puts) and other owners' files older than STALE_TEMPORARY."""
        removed = 0
        oldest = time.time() - STALE_TEMPORARY
        try:
            owners = list(os.scandir(self._staging))
        except FileNotFoundError:
            return 0
        for owner in owners:
            if not owner.is_dir(follow_symlinks=False):
                continue
            mine = owner.path == str(self._mine)
            for item in os.scandir(owner.path):
                try:
                    if mine or item.stat(follow_symlinks=False).st_mtime < oldest:
                        os.unlink(item.path)
                        removed += 1
                except FileNotFoundError:
                    continue
            if not mine:
                with contextlib.suppress(OSError):  # not empty: still in use
                    os.rmdir(owner.path)
        if removed:
            self._log.warning(
                "removed temporary files left by an interrupted put",
                extra={"sink": str(self._root), "files": removed},
            )
        return removed

    async def walk(self) -> AsyncIterator[SinkItem]:
        for item in await self._run(self._walk):
            yield item

    def _walk(self) -> list[SinkItem]:
        items: list[SinkItem] = []
        for folder, dirs, files in os.walk(self._root):
            rel_folder = os.path.relpath(folder, self._root)
            staged = rel_folder == STAGING or rel_folder.startswith(STAGING + os.sep)
            dirs.sort()
            for name in sorted(files):
                rel = name if rel_folder == "." else f"{rel_folder}/{name}"
                # An older release left ".<name>.lakeferry-tmp-<hex>" beside the target.
                legacy = name.startswith(".") and _LEGACY_TEMPORARY in name
                items.append(SinkItem(rel.replace(os.sep, "/"), staged or legacy))
        return items

    async def put(self, file: SinkFile, destination: str, event: Event) -> PutOutcome:
        rel, target = self._target(destination)
        tmp = self._mine / f"{secrets.token_hex(8)}-{target.name[:80]}"
        source = file.cache.local_path(file.key) if self._settings.link else None
        if source is not None and file.size <= HASH_STEP:
            # The usual case: no file at the target, the cached file hard-linked, checked by
            # its stamp (hashed when it has none: it is small) and renamed into place in one
            # worker-thread call (with fsync on, in the durability round's call when the file
            # is small enough to share it).
            stage = partial(self._stage_linked, rel, target, tmp, file, source)
            try:
                if self._durable is None:
                    landed = await self._run(self._land_linked, stage, tmp, target)
                elif file.size <= ROUND_STAGE_MAX:
                    landed = await self._durable.land(Landing(target, tmp, stage))
                else:
                    landed = await self._run(stage) and await self._durable.land(
                        Landing(target, tmp)
                    )
            except BaseException as exc:
                with trio.CancelScope(shield=True):
                    await self._run(_unlink, tmp)
                if isinstance(exc, OSError):
                    raise self._io_failed(exc, f"cannot land {rel!r}") from exc
                raise
            if landed:
                return PutOutcome(rel, skipped=False)
        return await self._put_in_steps(file, rel, target, tmp)

    def _stage_linked(
        self, rel: str, target: Path, tmp: Path, file: SinkFile, source: Path
    ) -> bool:
        """Hard-link a small cached file to ``tmp``, check it and stamp its checksum; False
        (nothing done) when the target is taken or the file system cannot link: then the put
        goes :meth:`_put_in_steps`."""
        self._prepare_dir(rel, target)
        if _inspect(rel, target, directory_is_error=True) is not None:
            return False
        if not self._link(source, tmp):
            return False
        try:
            landed = _stamped_checksum(tmp)
            stamped = landed[1] is not None  # the cache's stamp, on this very inode
            if not stamped and self._settings.verify:
                with _open_binary(tmp, "rb") as fh:
                    h = hashlib.sha256()
                    landed = _hash_some(fh, h, HASH_STEP), h.hexdigest()
            self._check(file, rel, landed)
            if not stamped:
                _write_stamp(tmp, file.sha256)
        except BaseException:
            _unlink(tmp)
            raise
        return True

    @staticmethod
    def _land_linked(stage: Callable[[], bool] | None, tmp: Path, target: Path) -> bool:
        """Without fsync: stage the file (when it has a step), then rename it into place."""
        if stage is not None and not stage():
            return False
        os.replace(tmp, target)
        return True

    async def _put_in_steps(self, file: SinkFile, rel: str, target: Path, tmp: Path) -> PutOutcome:
        self._staging_ready = False  # not taken for granted on this slower way
        try:
            await self._run(self._prepare_dir, rel, target)
            held = await self._run(partial(_inspect, directory_is_error=True), rel, target)
            if held is not None and held.st.st_size == file.size:
                existing = held.recorded_sha256 or (await self._sha256(target))[1]
                if existing == file.sha256:
                    if self._durable is not None:
                        # Whoever put it there (a put whose round is still running, a process
                        # that crashed before its round) may not have made it durable yet.
                        await self._durable.land(Landing(target))
                    return PutOutcome(rel, skipped=True)
        except FileNotFoundError:
            pass  # removed while we looked: land the file
        except OSError as exc:
            raise self._io_failed(exc, f"cannot prepare {rel!r}") from exc

        try:
            try:
                landed: tuple[int, str | None] | None = None
                stamp_it: Callable[[], bool] | None = partial(_stamped, tmp, file.sha256)
                source = file.cache.local_path(file.key) if self._settings.link else None
                if source is not None and await self._run(self._link, source, tmp):
                    landed = await self._run(_stamped_checksum, tmp)
                    if landed[1] is not None:
                        stamp_it = None  # the cache's stamp, on this very inode
                    if landed[1] is None and self._settings.verify:
                        async with trio.open_nursery() as nursery:
                            if self._settings.fsync:  # the disk writes while the CPU hashes
                                nursery.start_soon(self._run, fsync_path, tmp)
                            landed = await self._sha256(tmp)
                if landed is None:
                    landed = await self._copy(file, tmp)
                self._check(file, rel, landed)
                if self._durable is not None:
                    await self._durable.land(Landing(target, tmp, stamp_it))
                else:
                    await self._run(self._land_linked, stamp_it, tmp, target)
            except OSError as exc:
                raise self._io_failed(exc, f"cannot land {rel!r}") from exc
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._run(_unlink, tmp)
            raise
        return PutOutcome(rel, skipped=False)

    # -- the steps of a put, each run in a worker thread unless async -----------------------

    def _prepare_dir(self, rel: str, target: Path) -> None:
        """Make the target's folder (and this process's staging folder), checking that it is
        inside the root. Each folder is created and checked once: a folder checked before costs
        one ``stat`` (the same directory still?), a new folder in one a ``mkdir``."""
        if not self._staging_ready:
            self._mine.mkdir(parents=True, exist_ok=True)
            self._staging_ready = True
        folder = target.parent
        if self._known(folder):
            return
        if folder != self._root and self._known(folder.parent):
            try:
                os.mkdir(folder)  # created here, in a checked folder: inside the root too
                return
            except FileExistsError:
                pass  # a folder (checked below) or a file in the way
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise PermanentError(
                Reason.INVALID_PATH, f"destination {rel!r}: a file is in the way of its directory"
            ) from exc
        if not folder.resolve(strict=True).is_relative_to(self._root):
            raise PermanentError(
                Reason.INVALID_PATH, f"destination {rel!r} resolves outside the sink root"
            )
        if len(self._folders) >= KNOWN_FOLDERS:
            self._folders.clear()
        while folder.is_relative_to(self._root):  # it and every folder above it, to the root
            st = os.stat(folder)
            self._folders[folder] = st.st_dev, st.st_ino
            if folder == self._root:
                break
            folder = folder.parent

    def _known(self, folder: Path) -> bool:
        """Whether ``folder`` is still the directory checked before: one deleted since, or
        replaced by a symlink to another one, is not."""
        checked = self._folders.get(folder)
        if checked is None:
            return False
        try:
            st = os.stat(folder)
        except OSError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != checked:
            self._folders.pop(folder, None)
            return False
        return True

    def _io_failed(self, exc: OSError, what: str) -> PipelineError:
        """The error to raise for a put's I/O failure; the folders are checked afresh after one
        (an operator may have removed one)."""
        self._staging_ready = False
        self._folders.clear()
        return _io_error(exc, what)

    def _link(self, source: Path, tmp: Path) -> bool:
        """Hard-link the cached file; False when this file system cannot (then: copy)."""
        try:
            os.link(source, tmp)
        except FileNotFoundError as exc:
            if not source.exists():
                raise PermanentError(
                    Reason.CACHE_MISSING, "the cached file is gone before upload"
                ) from exc
            if not self._staging_ready:
                raise
            self._staging_ready = False  # removed since it was made: make it again, once
            self._mine.mkdir(parents=True, exist_ok=True)
            os.link(source, tmp)
            self._staging_ready = True
        except OSError as exc:
            if exc.errno in _LINK_UNSUPPORTED:
                return False
            raise
        return True

    async def _copy(self, file: SinkFile, tmp: Path) -> tuple[int, str]:
        """Stream the cached file into ``tmp``, hashing what is written."""
        h = hashlib.sha256()
        size = 0
        fh = await self._open(tmp, "xb")

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

    async def aclose(self) -> None:
        if self._durable is not None:
            await self._durable.aclose()
        await trio.lowlevel.checkpoint()
