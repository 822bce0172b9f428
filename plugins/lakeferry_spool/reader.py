"""Reading one spool file in batches of lines, without ever holding the whole file.

Blocking file I/O: every method runs in a worker thread, one batch per thread hop.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, NamedTuple

from lakeferry_spool.progress import FileIdentity

_SKIP_CHUNK = 1 << 16


class Line(NamedTuple):
    number: int
    """1-based physical line number in the file (blank lines count)."""
    data: bytes
    """Without the line ending; at most ``max_line_bytes`` long."""
    cut: bool
    """True when the line was longer than the limit (``ingest.max_event_bytes``) and was cut."""


class Batch(NamedTuple):
    lines: list[Line]
    """Non-blank lines, in file order."""
    lines_read: int
    """Physical lines consumed from the start of the file, after this batch."""
    offset: int
    """Bytes consumed from the start of the file, after this batch."""
    eof: bool


class LineReader:
    """One open spool file, read from a resume point onwards."""

    def __init__(self, path: Path, *, max_line_bytes: int) -> None:
        self.path = path
        self._max = max_line_bytes
        self._file: BinaryIO | None = None
        self._lines_read = 0

    def open(self) -> FileIdentity:
        self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        return FileIdentity.of(os.fstat(self._file.fileno()))

    def seek(self, offset: int, lines_read: int) -> None:
        assert self._file is not None
        self._file.seek(offset)
        self._lines_read = lines_read

    def read_batch(self, max_lines: int) -> Batch:
        """Up to ``max_lines`` non-blank lines; ``eof`` once the file is exhausted."""
        assert self._file is not None
        f = self._file
        lines: list[Line] = []
        while len(lines) < max_lines:
            raw = f.readline(self._max + 1)
            if not raw:
                return Batch(lines, self._lines_read, f.tell(), eof=True)
            self._lines_read += 1
            cut = False
            if raw.endswith(b"\n"):
                data = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
            elif len(raw) > self._max:
                data, cut = raw[: self._max], True
                while (rest := f.readline(_SKIP_CHUNK)) and not rest.endswith(b"\n"):
                    pass
            else:
                data = raw  # the last line, without a line ending
            if data.strip():
                lines.append(Line(self._lines_read, data, cut))
        # Peek so a file whose last line fills the batch is finished in this call.
        at = f.tell()
        eof = f.read(1) == b""
        f.seek(at)
        return Batch(lines, self._lines_read, at, eof=eof)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
