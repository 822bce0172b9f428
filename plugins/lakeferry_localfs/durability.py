"""Durability rounds: the files of many puts made durable together, before any of them returns.

A put that forces its own file to disk pays two syncs (the file's bytes before the rename, then
the directory holding the new name), each a system call that waits for the disk: at a thousand
small files a second those calls, not the bytes, are what the upload worker spends. So a put
that has a file to land hands it to a round instead (:class:`lakeferry.api.GroupCommit`: whoever
finds no round running runs one for every put queued so far, in one worker-thread call):

1. *stage*: each landing's own step, when it has one (a small file's link, checksum check and
   stamp, so that it costs no worker-thread hop of its own);
2. *sync the bytes*: every temporary file of the round, data and inode (its checksum stamp
   included), so that a landed name never points at bytes a crash could still lose;
3. *publish*: rename each temporary file over its target;
4. *sync the names*: the renames, and the targets that puts found already in place;

and only then does each put learn its result. Nothing is reported landed before it is durable,
and N puts landing together cost two syncs instead of 2N.

How a sync is done: ``syncfs(2)`` on a descriptor of the sink root opened once, which writes
back everything dirty on that file system in one call and, since Linux 5.8, reports any
write-back error that happened since the descriptor was opened. Where ``syncfs`` is missing (not
Linux, or a kernel older than 5.8, whose ``syncfs`` drops write-back errors), each temporary file
is fsynced in step 2, and each directory named (and each file found in place) in step 4: the same
guarantee at more calls, still one worker-thread hop a round. Measured here (ext4, rounds of 32
linked 64 KiB files, two runs each): the syncs add 0.02-0.04 ms of CPU per file with ``syncfs``
and 0.2-0.25 ms with fsyncs (issued one put at a time or batched alike), and a round takes 10-35
ms against 40-290 ms. The price of ``syncfs``: it also writes back other programs' dirty data
on the same file system, so a sink root on a volume shared with heavy writers makes rounds
longer (not more frequent).

Cancellation: a put waits for its round even when cancelled (shielded; a round takes
milliseconds), so a temporary file is never renamed or removed behind the back of the put that
owns it, and that put cleans it up on any failure.

Error handling: a staging step's exception, or a rename's, belongs to that landing alone and is
raised to its put. A failed sync fails every landing of the round with an OSError (the upload
stage retries it in place: a target already renamed is then found identical and made durable by
the next round).
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import trio

from lakeferry.api import BatchFailed, GroupCommit, IoThreads

SYNCFS_SINCE = (5, 8)
"""The first Linux whose ``syncfs`` reports write-back errors instead of dropping them."""


class Landing(NamedTuple):
    """One put's part in a round."""

    target: Path
    tmp: Path | None = None
    """A checked temporary file to rename over ``target`` once its bytes are durable; None when
    ``target`` is in place already (a skipped put) and only has to be made durable."""
    stage: Callable[[], bool] | None = None
    """Run first, in the round's thread, to write ``tmp``; False when it did not (nothing to
    land this way: the put takes another)."""


def fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def find_syncfs() -> Callable[[int], None] | None:
    """libc's ``syncfs(2)``, where it exists and reports write-back errors; else None."""
    if sys.platform != "linux":
        return None
    version = re.match(r"(\d+)\.(\d+)", platform.release())
    if version is None or (int(version[1]), int(version[2])) < SYNCFS_SINCE:
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):
        return None
    call.argtypes = [ctypes.c_int]
    call.restype = ctypes.c_int

    def syncfs(fd: int) -> None:
        if call(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"syncfs: {os.strerror(error)}")

    return syncfs


class DurabilityRounds:
    """Lands files under ``root`` in shared rounds; see the module docstring."""

    def __init__(self, root: Path, *, syncfs: Callable[[int], None] | None) -> None:
        self._root = root
        self.syncfs = syncfs
        """The sync of the whole file system, or None: fsync file by file (tests wrap it)."""
        self._fd: int | None = None
        self._rounds: GroupCommit[Landing, bool | Exception] = GroupCommit(
            self._round, IoThreads(1, "lakeferry-sink-rounds")
        )

    @property
    def rounds(self) -> int:
        """Rounds run so far."""
        return self._rounds.batches

    async def land(self, landing: Landing) -> bool:
        """Stage, publish and make ``landing`` durable in the next round; False when its stage
        declined. Raises what its stage or rename raised, or OSError when the round's sync
        failed."""
        with trio.CancelScope(shield=True):  # see "Cancellation" in the module docstring
            try:
                result = await self._rounds.submit(landing)
            except BatchFailed as exc:
                cause = exc.__cause__
                if isinstance(cause, OSError):  # one exception per put, chained to the round's
                    raise OSError(cause.errno, cause.strerror or str(cause)) from exc
                raise
        if isinstance(result, Exception):
            raise result
        return result

    def _round(self, landings: Sequence[Landing]) -> list[bool | Exception]:
        """One round, in a worker thread; one result per landing, in order."""
        results: list[bool | Exception] = [True] * len(landings)
        staged: list[tuple[int, Path]] = []
        for i, landing in enumerate(landings):
            if landing.stage is not None:
                try:
                    if not landing.stage():
                        results[i] = False
                        continue
                except Exception as exc:  # this landing's own failure, not the round's
                    results[i] = exc
                    continue
            if landing.tmp is not None:
                staged.append((i, landing.tmp))
        if staged:
            self._sync_files([tmp for _, tmp in staged])
        published: list[Path] = []
        for i, tmp in staged:
            try:
                os.replace(tmp, landings[i].target)
            except OSError as exc:
                results[i] = exc
                continue
            published.append(landings[i].target)
        found = [landing.target for landing in landings if landing.tmp is None]
        if published or found:
            self._sync_names(published, found)
        return results

    def _sync_files(self, tmps: list[Path]) -> None:
        if self.syncfs is not None:
            self.syncfs(self._root_fd())
            return
        for tmp in tmps:
            fsync_path(tmp)

    def _sync_names(self, published: list[Path], found: list[Path]) -> None:
        if self.syncfs is not None:
            self.syncfs(self._root_fd())
            return
        for target in found:  # landed by a put whose round had not finished, or that crashed
            fsync_path(target)
        for folder in dict.fromkeys(target.parent for target in published + found):
            fsync_path(folder, directory=True)

    def _root_fd(self) -> int:
        # Opened once and kept: syncfs reports the write-back errors since this open.
        if self._fd is None:
            self._fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY)
        return self._fd

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
