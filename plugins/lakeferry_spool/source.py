"""The ``spool`` source: JSONL files dropped into a folder become raw events.

Tunables live in :class:`lakeferry_spool.settings.SpoolSettings`; the contract with writers is
"write elsewhere, rename in": dotfiles and ``*.tmp`` names are never read.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from lakeferry.api import ConfigError, Intake, PluginContext, RawEvent
from lakeferry_spool.progress import FileIdentity, Progress, ProgressStore
from lakeferry_spool.reader import Line, LineReader
from lakeferry_spool.settings import SpoolSettings

PROGRESS_DIR = ".progress"

T = TypeVar("T")


class _FileProblem(Exception):
    """The spool file could not be opened or read (as opposed to a failure to publish)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


async def _file_io(function: Callable[..., T], *args: Any) -> T:
    try:
        return await trio.to_thread.run_sync(function, *args)
    except OSError as exc:
        raise _FileProblem(exc) from exc


class SpoolSource:
    """Publishes every line of every matching file in ``path``, then moves the file to done.

    Files are taken in name order, one at a time, and read in batches of ``batch_lines``
    non-blank lines; each batch goes to ``intake.publish`` with the origin
    ``spool:<path of the file>:<line number>``. A file is moved to ``done_dir`` only once every
    one of its lines was published (``publish`` returned: the events are on the bus). Lines that
    are not valid events are the intake's business (it dead-letters them), not the source's.

    Delivery is at-least-once: a crash, or a cancellation while a batch is being published,
    publishes that batch again later; downstream deduplicates by event id. The progress sidecar
    (:mod:`lakeferry_spool.progress`) limits the repeat to the batch that was in flight.

    Resource handling: at most one file is open at a time, and only one batch of lines is in
    memory, each at most ``ingest.max_event_bytes`` (:attr:`PluginContext.max_event_bytes`): a
    longer line is cut there, so the intake dead-letters it ``malformed``. All file-system calls
    run in worker threads.

    Error handling: a file that cannot be opened or read (permissions, I/O error) is logged and
    tried again at the next scan, resuming where it stopped; so is a file that cannot be moved
    to ``done_dir`` (it is not published again). A failing ``publish`` propagates: the bus is
    down, and the daemon restarts the source with backoff.
    """

    def __init__(self, settings: SpoolSettings, context: PluginContext) -> None:
        self.name = f"spool:{settings.path}"
        self.directory = Path(settings.path)
        self.done_dir = Path(settings.done_dir) if settings.done_dir else self.directory / "done"
        if os.path.abspath(self.done_dir) == os.path.abspath(self.directory):
            raise ConfigError("done_dir", "must not be the spool folder itself")
        self._settings = settings
        self._max_line_bytes = context.max_event_bytes
        self._logger = context.logger
        self._progress = ProgressStore(self.done_dir / PROGRESS_DIR)
        # Progress of files not yet moved, also kept here in case a sidecar cannot be written.
        self._published: dict[str, Progress] = {}
        self._reported: dict[str, str] = {}  # file name -> last problem logged for it

    async def run(
        self, intake: Intake, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Scan, publish and move files forever; ready once the first scan has begun."""
        await trio.to_thread.run_sync(self._prepare)
        names = await trio.to_thread.run_sync(self._scan)
        task_status.started()
        while True:
            finished = 0
            for name in names:
                if await self._spool_file(name, intake):
                    finished += 1
            if not finished:
                # After a finished file, scan again at once: more may be waiting.
                await trio.sleep(self._settings.poll_interval)
            names = await trio.to_thread.run_sync(self._scan)

    # -- one file ---------------------------------------------------------------------------

    async def _spool_file(self, name: str, intake: Intake) -> bool:
        """Publish what is left of one file and move it; False when it has to wait."""
        path = self.directory / name
        reader = LineReader(path, max_line_bytes=self._max_line_bytes)
        try:
            identity = await _file_io(reader.open)
            progress = await _file_io(self._resume_point, name, identity)
            if progress.lines:
                await _file_io(reader.seek, progress.offset, progress.lines)
                self._logger.info("%s: resuming after line %d", path, progress.lines)
            while True:
                batch = await _file_io(reader.read_batch, self._settings.batch_lines)
                if batch.lines:
                    self._warn_cut(path, batch.lines)
                    # Not ours to catch: a failing publish means the bus is down.
                    await intake.publish(
                        [RawEvent(line.data, f"spool:{path}:{line.number}") for line in batch.lines]
                    )
                    progress = Progress(identity, batch.lines_read, batch.offset)
                    await trio.to_thread.run_sync(self._record, name, progress)
                if batch.eof:
                    break
        except _FileProblem as problem:
            if not isinstance(problem.error, FileNotFoundError):  # else: gone since the scan
                self._report(name, f"{path}: cannot read, will retry: {problem.error}")
            return False
        finally:
            reader.close()
        try:
            target = await trio.to_thread.run_sync(self._move_to_done, name)
        except OSError as exc:
            self._report(name, f"{path}: published but cannot move to {self.done_dir}: {exc}")
            return False
        self._reported.pop(name, None)
        self._logger.info("%s: all lines published, moved to %s", path, target)
        return True

    def _warn_cut(self, path: Path, lines: list[Line]) -> None:
        for line in lines:
            if line.cut:
                limit = self._max_line_bytes
                self._logger.warning(
                    "%s:%d: line longer than %d bytes, cut", path, line.number, limit
                )

    def _report(self, name: str, problem: str) -> None:
        """Log a file's problem once, not at every scan while it lasts."""
        if self._reported.get(name) != problem:
            self._reported[name] = problem
            self._logger.warning("%s", problem)

    # -- in worker threads ------------------------------------------------------------------

    def _prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.done_dir.mkdir(parents=True, exist_ok=True)
        waiting = set(self._scan())
        for name in self._progress.prune(keep=waiting):
            self._logger.info("dropped progress of %s: no longer in %s", name, self.directory)

    def _scan(self) -> list[str]:
        """Names of the files waiting, in name order."""
        pattern = self._settings.pattern
        try:
            with os.scandir(self.directory) as entries:
                names = [
                    entry.name
                    for entry in entries
                    if not entry.name.startswith(".")
                    and not entry.name.endswith(".tmp")
                    and fnmatch.fnmatchcase(entry.name, pattern)
                    and entry.is_file()
                ]
        except OSError as exc:
            self._report("", f"cannot list {self.directory}: {exc}")
            return []
        self._reported.pop("", None)
        return sorted(names)

    def _resume_point(self, name: str, identity: FileIdentity) -> Progress:
        known = self._published.get(name)
        if known is not None and known.file == identity:
            return known
        stored = self._progress.load(name, identity)
        return stored if stored is not None else Progress(identity, 0, 0)

    def _record(self, name: str, progress: Progress) -> None:
        self._published[name] = progress
        try:
            self._progress.save(name, progress)
        except OSError as exc:
            # Not fatal: the in-memory copy still prevents repeats until a restart.
            self._report(name, f"cannot record progress of {name}: {exc}")

    def _move_to_done(self, name: str) -> Path:
        source = self.directory / name
        target = self.done_dir / name
        counter = 0
        while target.exists():  # never overwrite an earlier file of the same name
            counter += 1
            target = self.done_dir / f"{Path(name).stem}.{counter}{Path(name).suffix}"
        try:
            os.rename(source, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            shutil.move(source, target)  # another filesystem: copy, then delete
        # Forget the progress only once the file is moved: if the move fails, the file keeps
        # its full progress and is not published again. A crash right here leaves a sidecar
        # without its file, which the next start prunes.
        self._published.pop(name, None)
        self._progress.remove(name)
        return target
