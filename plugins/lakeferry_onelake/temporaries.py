"""Which temporary files this process may have left in the lake: a small local journal.

With ``api = "dfs"``, a put creates its temporary file beside the target (creating it there also
creates the target's parent directories, so the rename needs no extra request) and renames it
into place (``api = "blob"`` has no temporary files and writes nothing here). A process
killed in between leaves the temporary file behind, and finding it by listing the lake would
cost a listing of everything. So the path is written to a journal in the state folder *before*
the file is created, and the next start of the same process (the same
:attr:`lakeferry.api.PluginContext.owner`) deletes whatever the journal lists that still exists.

The journal is a text file of paths, one per line, appended (no fsync: a killed process loses
nothing the kernel already has; after a power loss a temporary file may be missed, and
``lakeferry audit`` still counts it). Finished puts are not written down; instead the file is
rewritten with the puts still under way whenever it has grown by ``REWRITE_EVERY`` lines, so it
stays the size of the puts in flight.
"""

from __future__ import annotations

import os
from pathlib import Path

REWRITE_EVERY = 10_000
"""Lines appended before the journal is rewritten with only the puts under way."""


class TemporaryJournal:
    """The temporary files of one process's puts that may still exist.

    Resource handling: the file is opened per call (appends are one ``write``); calls come from
    worker threads, so each method is a short blocking call.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._open: set[str] = set()
        self._appended = 0

    def leftovers(self) -> list[str]:
        """The paths a previous run wrote down (call once, at start, before any put)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return sorted({line for line in text.splitlines() if line})

    def clear(self) -> None:
        """Forget the previous run's paths (after they were deleted)."""
        self._rewrite()

    def begin(self, tmp: str) -> None:
        """Write ``tmp`` down before the file is created."""
        self._open.add(tmp)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(tmp + "\n")
        self._appended += 1
        if self._appended >= REWRITE_EVERY:
            self._rewrite()

    def end(self, tmp: str) -> None:
        """``tmp`` is gone (renamed into place, or deleted)."""
        self._open.discard(tmp)

    def _rewrite(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staged = self.path.with_name(self.path.name + ".new")
        staged.write_text("".join(f"{tmp}\n" for tmp in sorted(self._open)), encoding="utf-8")
        os.replace(staged, self.path)
        self._appended = 0
