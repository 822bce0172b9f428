"""How far into a spool file the source got: a small sidecar per file being read.

After each batch the intake accepted, ``<done_dir>/.progress/<file>.lines`` records how many
lines (and bytes) of the file are published, so a restart resumes after them instead of
publishing the whole file again. The sidecar names the file's identity (inode, size, mtime):
a different file dropped later under the same name starts from its first line.

The sidecar only ever claims lines that were published, so losing it (or finding it torn after
a power cut) costs duplicates, never events: it is written without fsync, by write-then-rename.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import msgspec

SUFFIX = ".lines"


class FileIdentity(msgspec.Struct, frozen=True):
    """Tells a file apart from another one later dropped under the same name."""

    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, stat: os.stat_result) -> FileIdentity:
        return cls(stat.st_ino, stat.st_size, stat.st_mtime_ns)


class Progress(msgspec.Struct, frozen=True):
    """``lines`` physical lines (``offset`` bytes) of the file ``file`` are published."""

    file: FileIdentity
    lines: int
    offset: int


_decoder = msgspec.json.Decoder(Progress)
_encoder = msgspec.json.Encoder()


class ProgressStore:
    """The sidecars in one directory. Blocking file I/O: call from a worker thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}{SUFFIX}"

    def load(self, name: str, identity: FileIdentity) -> Progress | None:
        """The progress recorded for this very file, if any (unreadable sidecars count as none)."""
        try:
            progress = _decoder.decode(self._path(name).read_bytes())
        except (OSError, msgspec.DecodeError):
            return None
        return progress if progress.file == identity else None

    def save(self, name: str, progress: Progress) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self._path(name)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(_encoder.encode(progress))
        os.replace(tmp, target)

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(name).unlink()

    def prune(self, keep: set[str]) -> list[str]:
        """Remove sidecars of files that are no longer waiting; returns the names removed."""
        removed: list[str] = []
        try:
            entries = list(self.directory.iterdir())
        except FileNotFoundError:
            return removed
        for entry in entries:
            if entry.name.endswith(SUFFIX) and not entry.name.startswith("."):
                name = entry.name.removesuffix(SUFFIX)
                if name not in keep:
                    with contextlib.suppress(FileNotFoundError):
                        entry.unlink()
                    removed.append(name)
        return removed
