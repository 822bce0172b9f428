"""Table housekeeping: compaction, log retention, checkpoints and vacuum (``Inventory.maintain``).

The daemon calls ``maintain()`` about once a minute. Each step asks a small pure predicate
whether it is due and otherwise does nothing, so most calls cost one log refresh per table.
Steps run one at a time in the table's worker thread, under the same ``CapacityLimiter(1)`` as
the appends: an append of this process waits while a compaction rewrites files (a fraction of
a second for an hour of small commits here), and appends of other processes go on beside it.

Why a compaction is claimed in the Delta log first
--------------------------------------------------
Several daemons may write one table (a results stage per cell). Concurrent *appends* and a
compaction are fine: the appends add files, the compaction removes only files it read, and the
application transactions (the results stage's offsets) are untouched. Two concurrent
*compactions* are not: deltalake 1.6.6 lets the second OPTIMIZE commit although the first has
already removed the same files, so their rows land in the table twice
(``test_deltalake_lets_two_compactions_of_the_same_files_commit`` pins this). So before it
compacts, a daemon *claims* the compaction: a commit with no data and one application
transaction, ``lakeferry:compaction`` = the claim time in milliseconds. deltalake refuses a
commit whose application id a concurrent commit also wrote, so of two daemons claiming at once
exactly one goes on. When its compaction is over (committed, or nothing to do), the daemon
commits ``lakeferry:compaction-done`` = the same time. A claim without its done marker means
someone may be compacting right now: nobody claims again until it is done, or until it is 5
minutes old (its daemon died; a compaction must be over by then, 100 times what the largest
here takes).

A full compaction's claim also writes ``lakeferry:full-compaction``, the schedule: the last
full compaction survives restarts and is shared by every writer. Vacuum is claimed the same
way (``lakeferry:vacuum``), not for safety but so that the table is vacuumed once per
interval, not once per daemon.

Other compactors do not see the claim: when Fabric's table maintenance or a Spark OPTIMIZE runs
on these tables, set ``compact_every = 0`` here.

The steps
---------
- Compaction comes in two sizes, because a commit costs CPU in proportion to the table's live
  files (about 0.1 ms per file here: deltalake 1.6.6 materialises the file list on every
  append) and a results stage commits a few times a second:

  - *quick*: once more than ``compact_max_files`` files below :data:`QUICK_TARGET_SIZE`
    (8 MiB) share a partition, they are merged into files of about that size; files already
    that large are left alone, so a quick compaction rewrites at most ~8 MiB however large
    the table is. The writer checks this after every :data:`CHECK_EVERY_COMMITS` of its own
    commits (:meth:`TableMaintainer.after_commits`), not only in the minute-by-minute
    ``maintain``: at ten commits a second a minute is 600 new files.
  - *full*: every ``compact_every`` after the last full claim, every file below the table's
    target (``delta.targetFileSize``, else 100 MiB) is merged. A table that lakeferry never
    fully compacted is compacted at the first call when more than ``compact_min_files``
    small files wait, otherwise ``compact_every`` after the process started.

  Nothing happens while fewer than two such files share a partition. When a compaction fails
  after its claim, the next call tries again regardless of the claim.
- Log retention: the tables lakeferry creates keep their log ``log_retention`` (15 minutes by
  default) instead of deltalake's 30 days, and this step sets ``delta.logRetentionDuration`` on
  a table that says otherwise (once per process). deltalake lists the whole ``_delta_log``
  folder on every commit (about 0.01 ms per log file here, 0.03 with longer names, the same
  listing on Azure in pages of 5,000), and a results stage writes one log file per commit:
  at two commits a second, a day of log is 170,000 files and seconds per commit. deltalake
  deletes the expired log files itself when it writes a checkpoint. The price: time travel
  and ``DESCRIBE HISTORY`` reach back ``log_retention``, and a streaming reader of the table
  must not fall further behind than that. 0 leaves the table's setting alone.
- Checkpoint: deltalake already writes one after every ``delta.checkpointInterval`` commits
  (100 by default; 10 in the tables lakeferry creates, see
  :data:`lakeferry_delta.table.CHECKPOINT_INTERVAL`) as part of the commit, whoever commits.
  This step is the net under it: when
  ``_last_checkpoint`` is ``checkpoint_every_commits`` or more versions behind (a writer died
  between its commit and its checkpoint, or a lower figure is wanted), it writes one.
- Vacuum (full: a listing of the table's folder), due ``vacuum_every`` after the last claim, at
  once on a table never vacuumed. Deletes files the log no longer names — removed by a
  compaction, or never named at all: the Parquet file of a commit that was refused (a writer
  frozen mid-commit, overtaken by another, wrote its file and lost the commit) — once they are
  older than ``vacuum_retention``; with ``vacuum_enforce_retention`` (the default) never less
  than the table's ``delta.deletedFileRetentionDuration`` (default 7 days, deltalake's safety
  minimum): a shorter setting falls back to the table's with a warning. The retention is also
  what keeps a file another writer is committing right now (written, not yet in the log) safe.

Error handling: a step that fails is logged and left for the next call; the other steps and
the other table still run. ``maintain`` itself does not raise for storage trouble.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import pyarrow as pa
from deltalake import CommitProperties, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.fs import DeltaStorageHandler

from lakeferry.api import ConfigError, PipelineError
from lakeferry_delta.schema import to_arrow
from lakeferry_delta.settings import DeltaSettings
from lakeferry_delta.table import DeltaTableHandle

COMPACTION_APP_ID = "lakeferry:compaction"
COMPACTION_DONE_APP_ID = "lakeferry:compaction-done"
FULL_COMPACTION_APP_ID = "lakeferry:full-compaction"
VACUUM_APP_ID = "lakeferry:vacuum"
DEFAULT_TARGET_FILE_SIZE = 100 * 2**20
"""deltalake's OPTIMIZE target when the table sets no ``delta.targetFileSize``."""
QUICK_TARGET_SIZE = 8 * 2**20
"""A quick compaction merges files below this size and leaves larger ones alone."""
MIN_COMPACT_GAP = 300.0
"""A claim without its done marker blocks the next for this long: a compaction must be over
within this time of its claim."""
CHECK_EVERY_COMMITS = 10
"""A writer looks whether a quick compaction is due after this many of its own commits."""

Compaction = Literal["quick", "full"]


class MaintenancePolicy(NamedTuple):
    compact_every: float
    compact_min_files: int
    compact_max_files: int
    checkpoint_every_commits: int
    vacuum_every: float
    vacuum_retention: float
    vacuum_enforce_retention: bool
    log_retention: float = 0.0

    @classmethod
    def from_settings(cls, settings: DeltaSettings, section: str) -> MaintenancePolicy:
        if 0 < settings.compact_every < MIN_COMPACT_GAP:
            raise ConfigError(
                f"{section}.compact_every", "must be 0 (no compaction) or at least 5m"
            )
        return cls(
            float(settings.compact_every),
            settings.compact_min_files,
            settings.compact_max_files,
            settings.checkpoint_every_commits,
            float(settings.vacuum_every),
            float(settings.vacuum_retention),
            settings.vacuum_enforce_retention,
            float(settings.log_retention),
        )


# -- when: pure predicates -----------------------------------------------------------------------


def compaction_due(
    policy: MaintenancePolicy,
    *,
    now: float,
    started: float,
    claimed: float | None,
    done: float | None,
    last_full: float | None,
    loose_files: int,
    small_files: int,
) -> Compaction | None:
    """Which compaction to run, if any.

    ``claimed``: the last claim (seconds; None: never); ``done``: the claim whose compaction
    is over; ``last_full``: the last full claim. ``loose_files``: files below the table's
    target sharing a partition with another; ``small_files``: the same below
    :data:`QUICK_TARGET_SIZE`.
    """
    if policy.compact_every <= 0 or loose_files < 2:
        return None
    if claimed is not None and done != claimed and now - claimed < MIN_COMPACT_GAP:
        return None  # someone may be compacting right now
    if last_full is None:
        if loose_files > policy.compact_min_files or now - started >= policy.compact_every:
            return "full"
    elif now - last_full >= policy.compact_every:
        return "full"
    if 0 < policy.compact_max_files < small_files:
        return "quick"
    return None


def checkpoint_due(policy: MaintenancePolicy, *, version: int, last_checkpoint: int) -> bool:
    """Whether to write a checkpoint at ``version`` (``last_checkpoint`` -1: there is none)."""
    every = policy.checkpoint_every_commits
    return every > 0 and version - last_checkpoint >= every


def vacuum_due(policy: MaintenancePolicy, *, now: float, last: float | None) -> bool:
    if policy.vacuum_every <= 0:
        return False
    return last is None or now - last >= policy.vacuum_every


# -- how: one table ------------------------------------------------------------------------------


class TableMaintainer:
    """Runs the due maintenance steps on one table.

    Resource handling: uses the table's :class:`DeltaTableHandle` (its object, its worker thread,
    its limiter); never creates a table that does not exist yet. Keeps in memory only when this
    process started and which steps must be retried; the schedule itself lives in the table.

    Error handling: see the module docstring.
    """

    def __init__(
        self,
        handle: DeltaTableHandle,
        policy: MaintenancePolicy,
        *,
        logger: logging.Logger,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._handle = handle
        self._policy = policy
        self._logger = logger
        self._clock = clock
        self._started: float | None = None
        self._commits = 0
        self._retry_compaction: Compaction | None = None
        self._log_retention_set = False
        self._retry_vacuum = False
        self._known_checkpoint = -1
        self._log_store: Any = None
        self._warned_retention = False

    async def maintain(self) -> None:
        if self._started is None:
            self._started = self._clock()
        for step in (self._compact, self._retain_log, self._checkpoint, self._vacuum):
            await self._step(step)

    async def after_commits(self, commits: int = 1) -> None:
        """Count this process's commits; every :data:`CHECK_EVERY_COMMITS`, a quick compaction
        if one is due."""
        self._commits += commits
        if self._commits < CHECK_EVERY_COMMITS or self._policy.compact_every <= 0:
            return
        self._commits = 0
        if self._started is None:
            self._started = self._clock()
        await self._step(self._compact_quick)

    async def _step(self, step: Callable[[Any], None]) -> None:
        try:
            await self._handle.run_if_exists(step)
        except (PipelineError, ConfigError) as exc:
            self._logger.warning(
                "maintenance of %s (%s) failed, will try again: %s",
                self._handle.display_uri,
                step.__name__.lstrip("_"),
                exc,
            )

    # -- in the worker thread ---------------------------------------------------------------

    def _compact_quick(self, table: Any) -> None:
        """Only a quick compaction: a full one rewrites up to the table's target size, which
        is for ``maintain`` (its own schedule), not for the middle of a writer's appends."""
        self._compact(table, full=False)

    def _compact(self, table: Any, *, full: bool = True) -> None:
        policy = self._policy
        if policy.compact_every <= 0:
            return
        table.update_incremental()
        now = self._clock()
        claimed = _claimed_at(table, COMPACTION_APP_ID)
        done = _claimed_at(table, COMPACTION_DONE_APP_ID)
        busy = claimed is not None and done != claimed and now - claimed < MIN_COMPACT_GAP
        if busy and not self._retry_compaction:
            return  # the cheap answer, before looking at the files
        target = _target_size(table)
        loose, small = _small_files(table, target, min(target, QUICK_TARGET_SIZE))
        started = now if self._started is None else self._started
        kind: Compaction | None
        if self._retry_compaction:
            kind = self._retry_compaction if loose >= 2 else None
        else:
            kind = compaction_due(
                policy,
                now=now,
                started=started,
                claimed=claimed,
                done=done,
                last_full=_claimed_at(table, FULL_COMPACTION_APP_ID),
                loose_files=loose,
                small_files=small,
            )
        if kind == "full" and not full:
            kind = "quick" if 0 < policy.compact_max_files < small else None
        if kind is None:
            self._retry_compaction = None
            return
        ids = [COMPACTION_APP_ID, FULL_COMPACTION_APP_ID] if kind == "full" else [COMPACTION_APP_ID]
        if not self._claim(table, ids, now):
            self._logger.info("%s: another writer is compacting", self._handle.display_uri)
            self._retry_compaction = None
            return
        self._retry_compaction = kind
        began = time.monotonic()
        size = target if kind == "full" else min(target, QUICK_TARGET_SIZE)
        metrics = table.optimize.compact(target_size=size)
        self._claim(table, [COMPACTION_DONE_APP_ID], now)
        self._retry_compaction = None
        removed = json.loads(metrics.get("filesRemoved") or "{}")
        self._logger.info(
            "compacted %s (%s): %d files (%d bytes) into %d in %.2fs",
            self._handle.display_uri,
            kind,
            metrics.get("numFilesRemoved", 0),
            removed.get("totalSize", 0),
            metrics.get("numFilesAdded", 0),
            time.monotonic() - began,
            extra={
                "table": self._handle.display_uri,
                "compaction": kind,
                "files_removed": metrics.get("numFilesRemoved", 0),
                "files_added": metrics.get("numFilesAdded", 0),
            },
        )

    def _retain_log(self, table: Any) -> None:
        """Set ``delta.logRetentionDuration`` to ``log_retention`` when the table says otherwise."""
        seconds = self._policy.log_retention
        if seconds <= 0 or self._log_retention_set:
            return
        wanted = log_retention_property(seconds)
        found = table.metadata().configuration.get(LOG_RETENTION_KEY)
        if found != wanted:
            table.alter.set_table_properties({LOG_RETENTION_KEY: wanted})
            self._logger.info(
                "%s: log retention %s (was %s)",
                self._handle.display_uri,
                wanted,
                found or "deltalake's default, 30 days",
                extra={"table": self._handle.display_uri},
            )
        self._log_retention_set = True

    def _checkpoint(self, table: Any) -> None:
        policy = self._policy
        if policy.checkpoint_every_commits <= 0:
            return
        table.update_incremental()
        version = table.version()
        # The last checkpoint is at least the one we know of: skip the read when that suffices.
        if not checkpoint_due(policy, version=version, last_checkpoint=self._known_checkpoint):
            return
        self._known_checkpoint = max(self._known_checkpoint, self._read_last_checkpoint(table))
        if not checkpoint_due(policy, version=version, last_checkpoint=self._known_checkpoint):
            return
        table.create_checkpoint()
        self._known_checkpoint = version
        self._logger.info(
            "checkpoint of %s at version %d", self._handle.display_uri, version,
            extra={"table": self._handle.display_uri, "version": version},
        )  # fmt: skip

    def _vacuum(self, table: Any) -> None:
        policy = self._policy
        if policy.vacuum_every <= 0:
            return
        table.update_incremental()
        now = self._clock()
        last = _claimed_at(table, VACUUM_APP_ID)
        if not (self._retry_vacuum or vacuum_due(policy, now=now, last=last)):
            return
        if not self._claim(table, [VACUUM_APP_ID], now):
            self._retry_vacuum = False
            return
        self._retry_vacuum = True
        removed = self._run_vacuum(table)
        self._retry_vacuum = False
        self._logger.info(
            "vacuumed %s: %d files deleted", self._handle.display_uri, len(removed),
            extra={"table": self._handle.display_uri, "files_deleted": len(removed)},
        )  # fmt: skip

    def _run_vacuum(self, table: Any) -> list[str]:
        policy = self._policy
        hours = math.ceil(policy.vacuum_retention / 3600)
        try:
            return list(
                table.vacuum(
                    retention_hours=hours,
                    dry_run=False,
                    enforce_retention_duration=policy.vacuum_enforce_retention,
                    full=True,
                    keep_versions=None,
                )
            )
        except DeltaError as exc:
            if not (policy.vacuum_enforce_retention and "retention" in str(exc).lower()):
                raise
        if not self._warned_retention:
            self._warned_retention = True
            self._logger.warning(
                "%s: vacuum_retention (%dh) is below the table's minimum retention; using the "
                "table's (set vacuum_enforce_retention = false to go below it)",
                self._handle.display_uri,
                hours,
            )
        return list(
            table.vacuum(
                retention_hours=None,
                dry_run=False,
                enforce_retention_duration=True,
                full=True,
                keep_versions=None,
            )
        )

    def _claim(self, table: Any, app_ids: list[str], now: float) -> bool:
        """Commit ``app_id = now`` (ms) for each id, no data; False when a concurrent writer
        wrote one of them first."""
        handle = self._handle
        empty = to_arrow(handle.layout, [], with_date=handle.date_partitioned)
        stamp = int(now * 1000)
        properties = CommitProperties(
            app_transactions=[Transaction(app_id, stamp, stamp) for app_id in app_ids]
        )
        try:
            write_deltalake(table, empty, mode="append", commit_properties=properties)
        except CommitFailedError as exc:
            if "concurrent transaction" in str(exc).lower():
                return False
            raise
        return True

    def _read_last_checkpoint(self, table: Any) -> int:
        if self._log_store is None:
            self._log_store = DeltaStorageHandler(table.table_uri, self._handle.storage_options)
        try:
            raw = self._log_store.open_input_file("_delta_log/_last_checkpoint").read()
        except FileNotFoundError:
            return -1
        return int(json.loads(raw)["version"])


def _claimed_at(table: Any, app_id: str) -> float | None:
    version = table.transaction_version(app_id)
    return None if version is None else version / 1000


def _target_size(table: Any) -> int:
    configured = table.metadata().configuration.get("delta.targetFileSize")
    return int(configured) if configured else DEFAULT_TARGET_FILE_SIZE


def _small_files(table: Any, *limits: int) -> list[int]:
    """For each size limit, the files below it that share their partition with another."""
    actions = pa.table(table.get_add_actions(flatten=True))
    sizes = actions.column("size_bytes").to_pylist()
    partitions = [
        actions.column(name).to_pylist()
        for name in actions.column_names
        if name.startswith("partition.")
    ]
    keys = list(zip(*partitions, strict=True)) if partitions else [()] * len(sizes)
    counts = []
    for limit in limits:
        small = Counter(key for key, size in zip(keys, sizes, strict=True) if size < limit)
        counts.append(sum(count for count in small.values() if count >= 2))
    return counts


LOG_RETENTION_KEY = "delta.logRetentionDuration"


def log_retention_property(seconds: float) -> str:
    """``delta.logRetentionDuration``'s value for ``seconds``."""
    return f"interval {max(1, math.ceil(seconds))} seconds"
