"""Partial files kept for resuming: the ``.resume`` sidecar, keeping one, taking one over.

A download that fails in a way that may pass (transient, timeout, cancellation) with a
downloader that resumes leaves its part file behind with a ``.resume`` sidecar: the cache key,
the origin's validator of that content, the bytes known to be written completely and when it
was kept. The next attempt of the same key (in any process sharing the cache) takes it over
with an atomic rename, so exactly one claimant wins, re-hashes its bytes and continues after
them. Part files are locked (``flock``) while written, so a scan can tell a live writer's part
from a dead one's.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import time
from pathlib import Path
from typing import IO

import msgspec

READ_CHUNK = 1024 * 1024
"""Bytes read at once while hashing a kept partial."""


class Kept(msgspec.Struct, frozen=True):
    """The ``.resume`` sidecar of a kept partial file."""

    key: str
    validator: str
    size: int
    kept_at: float
    """Wall-clock seconds (``time.time()``) when it was kept."""


_KEPT_ENCODER = msgspec.json.Encoder()
_KEPT_DECODER = msgspec.json.Decoder(Kept)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def take_over(
    key: str, old: Path, part: Path, max_age: float
) -> tuple[IO[bytes], Kept, hashlib._Hash] | None:
    """Claim a kept partial as ``part``: its file, its sidecar and the hash of its bytes.

    None when another process claimed it first, or it is not usable (then it is deleted).
    """
    sidecar = old.with_suffix(".resume")
    try:
        os.rename(old, part)  # atomic: exactly one claimant wins
    except FileNotFoundError:
        return None  # the winner reads and deletes the sidecar
    kept = read_kept(str(sidecar))
    _unlink(sidecar)
    try:
        fh = part.open("r+b", buffering=0)
        lock(fh)
    except BaseException:
        _unlink(part)
        raise
    try:
        size = os.fstat(fh.fileno()).st_size
        usable = (
            kept is not None
            and kept.key == key
            and kept.size == size
            and kept.kept_at >= time.time() - max_age
        )
        if not usable or kept is None:
            fh.close()
            _unlink(part)
            return None
        hasher = hashlib.sha256()
        while chunk := fh.read(READ_CHUNK):
            hasher.update(chunk)
        if fh.tell() != kept.size:
            raise OSError(errno.EIO, "kept partial changed while reading it")
    except BaseException:
        fh.close()
        _unlink(part)
        raise
    return fh, kept, hasher


def write_kept(part: Path, fh: IO[bytes], kept: Kept) -> None:
    """Keep an aborted part file (in a worker thread): its complete bytes made durable, then
    its sidecar written atomically. ``fh`` is closed."""
    sidecar = part.with_suffix(".resume")
    try:
        fh.truncate(kept.size)  # only bytes known to be written completely
        os.fsync(fh.fileno())  # a resumed file must not hide a hole from a power loss
    finally:
        fh.close()
    tmp = sidecar.with_suffix(".resume-tmp")
    with tmp.open("wb") as out:
        out.write(_KEPT_ENCODER.encode(kept))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, sidecar)


def lock(fh: IO[bytes]) -> None:
    """Hold an exclusive advisory lock while writing (released when the process dies)."""
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def in_use(part: str) -> bool:
    """Whether another live process holds the lock of a part file."""
    try:
        fd = os.open(part, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def read_kept(sidecar: str) -> Kept | None:
    try:
        with open(sidecar, "rb") as fh:
            return _KEPT_DECODER.decode(fh.read())
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def unlink_partial(part: Path) -> None:
    _unlink(part)
    _unlink(part.with_suffix(".resume"))
    _unlink(part.with_suffix(".resume-tmp"))
