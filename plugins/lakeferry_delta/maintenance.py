"""Table housekeeping on a schedule: compaction, checkpoints and vacuum (``Inventory.maintain``).

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
exactly one goes on; one that finds a younger claim than the schedule allows does not compact
(claims are at least 5 minutes apart: a compaction must be over by then, which is 100 times
what 1,000 small files take here).
The claim doubles as the schedule: the last compaction time survives restarts and is shared by
every writer. Vacuum is claimed the same way (``lakeferry:vacuum``), not for safety but so that
the table is vacuumed once per interval, not once per daemon.

Other compactors do not see the claim: when Fabric's table maintenance or a Spark OPTIMIZE runs
on these tables, set ``compact_every = 0`` here.

The steps
---------
- Compaction (``optimize.compact``), due ``compact_every`` after the last claim, or earlier
  (but not within 5 minutes of it) once more than ``compact_max_files`` small files wait: a
  commit costs time in proportion to the table's live files (about 0.1 ms per file here, so
  ~100 ms at 1,000 files), and an hour at one commit a second makes 3,600. A table that
  lakeferry never compacted is compacted at the first call when more than
  ``compact_min_files`` small files wait, otherwise ``compact_every`` after the process
  started. Nothing happens while fewer than two small files share a partition. When the
  compaction fails after its claim, the next call tries again regardless of the claim.
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
from typing import Any, NamedTuple

import pyarrow as pa
from deltalake import CommitProperties, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.fs import DeltaStorageHandler

from lakeferry.api import ConfigError, PipelineError
from lakeferry_delta.schema import to_arrow
from lakeferry_delta.settings import DeltaSettings
from lakeferry_delta.table import DeltaTableHandle

COMPACTION_APP_ID = "lakeferry:compaction"
VACUUM_APP_ID = "lakeferry:vacuum"
DEFAULT_TARGET_FILE_SIZE = 100 * 2**20
"""deltalake's OPTIMIZE target when the table sets no ``delta.targetFileSize``."""
MIN_COMPACT_GAP = 300.0
"""No claim follows another sooner: a compaction must be over within this time of its claim."""


class MaintenancePolicy(NamedTuple):
    compact_every: float
    compact_min_files: int
    compact_max_files: int
    checkpoint_every_commits: int
    vacuum_every: float
    vacuum_retention: float
    vacuum_enforce_retention: bool

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
        )


# -- when: pure predicates -----------------------------------------------------------------------


def compaction_due(
    policy: MaintenancePolicy, *, now: float, started: float, last: float | None, small_files: int
) -> bool:
    """Whether to compact, given the last claim (seconds; None: never) and the small files."""
    if policy.compact_every <= 0 or small_files < 2:
        return False
    if last is None:
        return small_files > policy.compact_min_files or now - started >= policy.compact_every
    if now - last >= policy.compact_every:
        return True
    crowded = 0 < policy.compact_max_files < small_files
    return crowded and now - last >= MIN_COMPACT_GAP


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
        self._retry_compaction = False
        self._retry_vacuum = False
        self._known_checkpoint = -1
        self._log_store: Any = None
        self._warned_retention = False

    async def maintain(self) -> None:
        if self._started is None:
            self._started = self._clock()
        for step in (self._compact, self._checkpoint, self._vacuum):
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

    def _compact(self, table: Any) -> None:
        policy = self._policy
        if policy.compact_every <= 0:
            return
        table.update_incremental()
        now = self._clock()
        last = _claimed_at(table, COMPACTION_APP_ID)
        if not self._retry_compaction and last is not None and now - last < MIN_COMPACT_GAP:
            return  # the cheap answer, before looking at the files
        small = _small_files(table)
        started = now if self._started is None else self._started
        if self._retry_compaction:
            due = small >= 2
        else:
            due = compaction_due(policy, now=now, started=started, last=last, small_files=small)
        if not due:
            self._retry_compaction = False
            return
        if not self._claim(table, COMPACTION_APP_ID, now):
            self._logger.info("%s: another writer is compacting", self._handle.display_uri)
            self._retry_compaction = False
            return
        self._retry_compaction = True
        began = time.monotonic()
        metrics = table.optimize.compact()
        self._retry_compaction = False
        removed = json.loads(metrics.get("filesRemoved") or "{}")
        self._logger.info(
            "compacted %s: %d files (%d bytes) into %d in %.2fs",
            self._handle.display_uri,
            metrics.get("numFilesRemoved", 0),
            removed.get("totalSize", 0),
            metrics.get("numFilesAdded", 0),
            time.monotonic() - began,
            extra={
                "table": self._handle.display_uri,
                "files_removed": metrics.get("numFilesRemoved", 0),
                "files_added": metrics.get("numFilesAdded", 0),
            },
        )

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
        if not self._claim(table, VACUUM_APP_ID, now):
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

    def _claim(self, table: Any, app_id: str, now: float) -> bool:
        """Commit ``app_id = now`` (ms) alone; False when a concurrent writer claimed it first."""
        handle = self._handle
        empty = to_arrow(handle.layout, [], with_date=handle.date_partitioned)
        stamp = int(now * 1000)
        properties = CommitProperties(app_transactions=[Transaction(app_id, stamp, stamp)])
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


def _small_files(table: Any) -> int:
    """Files below the target size that share their partition with another such file."""
    configured = table.metadata().configuration.get("delta.targetFileSize")
    target = int(configured) if configured else DEFAULT_TARGET_FILE_SIZE
    actions = pa.table(table.get_add_actions(flatten=True))
    sizes = actions.column("size_bytes").to_pylist()
    partitions = [
        actions.column(name).to_pylist()
        for name in actions.column_names
        if name.startswith("partition.")
    ]
    keys = zip(*partitions, strict=True) if partitions else ((),) * len(sizes)
    small = Counter(key for key, size in zip(keys, sizes, strict=True) if size < target)
    return sum(count for count in small.values() if count >= 2)
