"""One Delta table: opened (or created) once, then used from one worker thread at a time.

deltalake is a blocking library and a ``DeltaTable`` object is not meant to be shared between
threads, so every call on a table runs in ``trio.to_thread.run_sync`` under the table's own
``CapacityLimiter(1)``. The object is created on first use and kept: reopening a table replays
its log, while ``update_incremental`` only reads the commits that are new (and a commit through
the object advances it by itself). Reusing it is what keeps a small commit near 15 ms.

It is dropped and reopened every ``REOPEN_EVERY`` calls, though: an open ``DeltaTable`` keeps
native memory for every commit it has seen (anonymous memory grew 94 → 183 MiB over 1,000
small commits through one object, and stayed at 79 to 98 MiB when it was reopened every 100), so a
daemon that runs for months would grow without bound. One reopen costs a log replay from the
last checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import trio
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError, DeltaError, SchemaMismatchError

from lakeferry.api import ConfigError, PermanentError, TransientError
from lakeferry_delta.credentials import display_uri, scrub
from lakeferry_delta.schema import TableLayout

T = TypeVar("T")
R = TypeVar("R")

REOPEN_EVERY = 100
"""Calls on one ``DeltaTable`` object before it is reopened (see the module docstring)."""

CHECKPOINT_INTERVAL = 10
"""``delta.checkpointInterval`` of the tables this module creates (deltalake's default: 100).
deltalake reads every commit file since the last checkpoint at once, each read a call in its
tokio blocking pool, whose threads live 10 s: with 100 a results process ran ~92 such threads
(their stacks and thread arenas in its anonymous memory), with 10 ~45, for one small
checkpoint every 10 commits. An existing table keeps its own setting."""

REASON_CONFLICT = "inventory_conflict"
REASON_UNAVAILABLE = "inventory_unavailable"
REASON_SCHEMA = "inventory_schema"


class ConflictingTransactions(TransientError):
    """Another writer committed a transaction for one of our application ids.

    Nothing was written. The caller must re-read :meth:`transaction_versions`, drop what is
    already stored, and try again (kafka-delta-ingest's ``ConflictingOffsets``).
    """

    def __init__(self, message: str) -> None:
        super().__init__(REASON_CONFLICT, message)


class DeltaTableHandle:
    """A lazily opened ``DeltaTable`` plus the limiter that serialises calls on it.

    Resource handling: the table object lives as long as the handle; deltalake holds no file
    handles between calls, so :meth:`close` only drops the reference. A table the handle
    creates gets ``configuration`` as its properties, with :data:`CHECKPOINT_INTERVAL`.

    Error handling: deltalake errors come out as lakeferry errors. A commit that lost to a
    concurrent transaction on the same application id is :class:`ConflictingTransactions`; a
    schema that does not match is permanent; everything else (storage unreachable, throttled,
    other commit failures) is transient. Messages are scrubbed of ``secrets`` and URL query
    strings (object_store already hides SAS tokens; this is the second belt).
    """

    def __init__(
        self,
        uri: str,
        layout: TableLayout,
        *,
        storage_options: dict[str, str],
        partition_by_date: bool,
        logger: logging.Logger,
        setting: str,
        secrets: tuple[str, ...] = (),
        configuration: dict[str, str] | None = None,
    ) -> None:
        self.uri = uri
        self.display_uri = display_uri(uri)
        """``uri`` as logs show it."""
        self.layout = layout
        self.storage_options = dict(storage_options) or None
        self._secrets = secrets
        self._partition_by_date = partition_by_date
        self._logger = logger
        self._setting = setting
        self._configuration = {
            "delta.checkpointInterval": str(CHECKPOINT_INTERVAL),
            **(configuration or {}),
        }
        self._limiter = trio.CapacityLimiter(1)
        self._table: DeltaTable | None = None
        self._uses = 0
        self.date_partitioned = partition_by_date
        """Whether the table has the date column (known for sure once the table is open)."""

    async def run(self, operation: Callable[[Any], T]) -> T:
        """Run ``operation(table)`` in a worker thread, alone on this table.

        Not abandoned on cancellation: a commit under way completes (or fails) before the
        cancellation is delivered, so the caller never loses track of a commit in flight.
        """
        return await self._run(self._call, operation)

    async def run_if_exists(self, operation: Callable[[Any], T]) -> T | None:
        """Like :meth:`run`, but None instead of creating a table that does not exist yet."""
        return await self._run(self._call_if_exists, operation)

    async def _run(
        self, call: Callable[[Callable[[Any], T]], R], operation: Callable[[Any], T]
    ) -> R:
        try:
            return await trio.to_thread.run_sync(call, operation, limiter=self._limiter)
        except (ConflictingTransactions, ConfigError, PermanentError, TransientError):
            raise
        except CommitFailedError as exc:
            if "concurrent transaction" in str(exc).lower():
                raise ConflictingTransactions(
                    f"{self.display_uri}: a concurrent commit stored a transaction for the "
                    f"same application id ({self._scrub(exc)})"
                ) from exc
            raise TransientError(REASON_UNAVAILABLE, self._describe(exc)) from exc
        except SchemaMismatchError as exc:
            raise PermanentError(REASON_SCHEMA, self._describe(exc)) from exc
        except (DeltaError, OSError) as exc:
            raise TransientError(REASON_UNAVAILABLE, self._describe(exc)) from exc

    def close(self) -> None:
        self._table = None

    def _scrub(self, exc: BaseException) -> str:
        return scrub(str(exc), self._secrets)

    def _describe(self, exc: BaseException) -> str:
        return f"{self.display_uri}: {self._scrub(exc)}"

    # -- in the worker thread ---------------------------------------------------------------

    def _call(self, operation: Callable[[Any], T]) -> T:
        if self._table is None:
            self._table = self._open()
        return self._use(operation, self._table)

    def _call_if_exists(self, operation: Callable[[Any], T]) -> T | None:
        if self._table is None:
            if not DeltaTable.is_deltatable(self.uri, storage_options=self.storage_options):
                return None
            self._table = self._open()
        return self._use(operation, self._table)

    def _use(self, operation: Callable[[Any], T], table: Any) -> T:
        self._uses += 1
        if self._uses >= REOPEN_EVERY:  # the next call opens it afresh
            self._uses = 0
            self._table = None
        return operation(table)

    def _open(self) -> Any:
        options = self.storage_options
        if not DeltaTable.is_deltatable(self.uri, storage_options=options):
            schema = self.layout.with_date() if self._partition_by_date else self.layout.schema
            partition_by = [self.layout.date_column] if self._partition_by_date else None
            try:
                table = DeltaTable.create(
                    self.uri,
                    schema,
                    mode="error",
                    partition_by=partition_by,
                    storage_options=options,
                    configuration=self._configuration,
                )
            except DeltaError:
                # Another process created it between our check and our create: use theirs.
                if not DeltaTable.is_deltatable(self.uri, storage_options=options):
                    raise
            else:
                self._logger.info("created Delta table %s", self.display_uri)
                return self._checked(table)
        return self._checked(DeltaTable(self.uri, storage_options=options))

    def _checked(self, table: Any) -> Any:
        names = {field.name for field in table.schema().fields}
        missing = [name for name in self.layout.schema.names if name not in names]
        if missing:
            raise ConfigError(
                self._setting,
                f"{self.display_uri} is not a lakeferry table (missing columns: "
                f"{', '.join(missing)})",
            )
        self.date_partitioned = self.layout.date_column in names
        if self.date_partitioned != self._partition_by_date:
            self._logger.warning(
                "%s was created with partition_by_date=%s; the table's layout wins",
                self.display_uri,
                self.date_partitioned,
            )
        return table
