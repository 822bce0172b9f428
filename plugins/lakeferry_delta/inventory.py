"""The ``delta`` inventory: landed files and raw events in two Delta tables, written exactly once.

Exactly-once, the kafka-delta-ingest way
-----------------------------------------
The results stage consumes ``downloads.results``; for every partition it owns it knows an
application id (``group:topic:partition``) and the last offset it turned into rows. Each
:meth:`DeltaInventory.append` writes the rows *and* ``txn(app_id, version=last offset)`` actions
in one Delta commit, so the rows and the offsets they came from land together or not at all.
After a restart or a rebalance the stage asks :meth:`DeltaInventory.read_state` and skips every
offset at or below the stored version, and every event id already landed (one event delivered
twice by its source sits at two offsets). deltalake stores the versions but enforces nothing
itself; the guarantees below come from this module plus Delta's optimistic concurrency.

What holds with a concurrent writer (another results process):

- Rows never get lost: concurrent *appends* do not conflict in Delta, deltalake retries the
  commit on the next version.
- Offsets never get written twice. A Kafka partition is owned by one member at a time, but a
  revoked member may still be finishing a commit while the new owner reads the versions. Two
  checks close that gap:

  1. This object remembers, per application id, the version it last *learned*: from
     ``read_state`` or from its own successful commit. ``append`` refreshes the table
     and refuses (:class:`ConflictingTransactions`, nothing written) when the stored version is
     not the one it learned — someone else wrote that id since — or when the new version does
     not move past it.
  2. Between that refresh and the commit, deltalake's conflict checker rejects our commit when
     a winning commit carries a ``txn`` for one of the same application ids ("concurrent
     transaction"), which becomes the same :class:`ConflictingTransactions`.

  On ``ConflictingTransactions`` (a TransientError with reason ``inventory_conflict``) the stage
  re-reads the state, drops rows at or below the versions and rows of landed ids, and appends
  the rest. Any other failure of
  ``append`` may have committed or not (storage timeouts are ambiguous); the next ``append`` then
  finds a version it did not learn and raises ``ConflictingTransactions``, so the same recovery
  covers it. An application id never read through ``read_state`` is taken as learned at
  ``append`` time (only check 2 applies).
- Event ids never land twice through one application id. ``read_state`` reads the landed ids
  and the versions from *one* snapshot, so check 1 proves that nothing was committed for the
  application id since the landed ids were read: a second result of an event that another
  writer landed meanwhile is refused with its batch, re-read, and dropped. (Landed ids read
  before the versions, in an earlier call, were how two daemons on one bus got one event id
  twice into the inventory: the other daemon's commit fell between the two reads.)

The events table is written the same way (``append_events`` with transactions of the events
recorder's partitions, ``read_events_state`` with the ``origin`` of every row as its keys): one
row per intake record, however often a record is redelivered.

Empty input: ``append([], {})`` is a no-op; ``append([], {id: v})`` commits the transactions
alone (a commit with no data files), so offsets that produced no rows still move forward.
The same holds for ``append_events``. Each non-empty call is exactly one commit: callers batch.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from typing import Any

from deltalake import CommitProperties, Transaction, write_deltalake

from lakeferry.api import EventRow, InventoryRow, PluginContext, TableState, failpoint
from lakeferry_delta.credentials import storage_options_for
from lakeferry_delta.maintenance import (
    LOG_RETENTION_KEY,
    MaintenancePolicy,
    TableMaintainer,
    log_retention_property,
)
from lakeferry_delta.schema import (
    EVENTS_LAYOUT,
    INVENTORY_LAYOUT,
    TableLayout,
    from_arrow,
    read_columns,
    to_arrow,
)
from lakeferry_delta.settings import DeltaSettings
from lakeferry_delta.table import ConflictingTransactions, DeltaTableHandle

_UNKNOWN = object()


class _TransactionalTable:
    """One table written exactly once: rows and application transactions in one commit, with
    the checks of the module docstring. ``key`` is the column that identifies a row (read back
    by :meth:`read_state`)."""

    def __init__(self, name: str, handle: DeltaTableHandle, key: str) -> None:
        self.name = name
        self.handle = handle
        self.key = key
        # app_id -> the stored version this process last learned (None: none stored).
        # Only touched inside the table's worker calls, which run one at a time.
        self._learned: dict[str, int | None] = {}

    async def read_state(self, app_ids: Sequence[str]) -> TableState:
        def read(table: Any) -> TableState:
            table.update_incremental()
            versions = self._learn(table, app_ids)
            return TableState(versions, _column(table, self.key))

        return await self.handle.run(read)

    async def versions(self, app_ids: Sequence[str]) -> dict[str, int]:
        def read(table: Any) -> dict[str, int]:
            table.update_incremental()
            return self._learn(table, app_ids)

        return await self.handle.run(read)

    async def keys(self) -> set[str]:
        def read(table: Any) -> set[str]:
            table.update_incremental()
            return _column(table, self.key)

        return await self.handle.run(read)

    def _learn(self, table: Any, app_ids: Sequence[str]) -> dict[str, int]:
        """The stored versions of ``app_ids``, remembered as learned (in the worker thread)."""
        found: dict[str, int] = {}
        for app_id in app_ids:
            version = table.transaction_version(app_id)
            self._learned[app_id] = version
            if version is not None:
                found[app_id] = version
        return found

    async def append(self, rows: Sequence[Any], transactions: dict[str, int]) -> bool:
        """One commit of ``rows`` and ``transactions``; False when there was nothing to commit."""
        if not rows and not transactions:
            return False
        handle = self.handle

        def commit(table: Any) -> None:
            table.update_incremental()
            for app_id, version in transactions.items():
                stored = table.transaction_version(app_id)
                learned = self._learned.get(app_id, _UNKNOWN)
                if learned is not _UNKNOWN and learned != stored:
                    raise ConflictingTransactions(
                        f"{app_id}: stored version is {stored}, this process last saw {learned}"
                    )
                if stored is not None and version <= stored:
                    raise ConflictingTransactions(
                        f"{app_id}: version {version} is not past the stored version {stored}"
                    )
            data = to_arrow(handle.layout, rows, with_date=handle.date_partitioned)
            now_ms = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
            properties = CommitProperties(
                app_transactions=[
                    Transaction(app_id, version, now_ms) for app_id, version in transactions.items()
                ]
            )
            failpoint(f"delta.{self.name}.commit")  # crash tests freeze the process here
            write_deltalake(table, data, mode="append", commit_properties=properties)
            self._learned.update(transactions)

        await handle.run(commit)
        return True

    async def read_all(self, row_type: Any, *, where: tuple[str, str] | None = None) -> list[Any]:
        def read(table: Any) -> list[Any]:
            table.update_incremental()
            return from_arrow(row_type, read_columns(table, row_type._fields, where=where))

        return await self.handle.run(read)


class DeltaInventory:
    """The :class:`lakeferry.api.Inventory` on two Delta tables (local path or abfss://).

    Resource handling: one ``DeltaTable`` object per table, opened (created when missing) on
    first use and reused; calls run in worker threads, one at a time per table. Credentials
    are read once, here (:mod:`lakeferry_delta.credentials`); ``clock`` (wall seconds) drives
    the maintenance schedule. Every 10 commits of its own to a table, an append also runs a
    quick compaction of that table when one is due (:meth:`TableMaintainer.after_commits`), so
    the writer keeps its table's small files few without waiting for ``maintain``.

    Error handling: see :class:`lakeferry_delta.table.DeltaTableHandle` and the module docstring
    for what :class:`ConflictingTransactions` asks of the caller.
    """

    def __init__(
        self,
        settings: DeltaSettings,
        context: PluginContext,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._logger = context.logger
        policy = MaintenancePolicy.from_settings(settings, "inventory")
        self._configuration = (
            {LOG_RETENTION_KEY: log_retention_property(policy.log_retention)}
            if policy.log_retention > 0
            else {}
        )
        self._inventory = _TransactionalTable(
            "inventory",
            self._table(
                settings, settings.inventory_uri, INVENTORY_LAYOUT, "inventory.inventory_uri"
            ),
            "event_id",
        )
        self._events = _TransactionalTable(
            "events",
            self._table(settings, settings.events_uri, EVENTS_LAYOUT, "inventory.events_uri"),
            "origin",
        )
        self._inventory_maintainer, self._events_maintainer = (
            TableMaintainer(table.handle, policy, logger=context.logger, clock=clock)
            for table in (self._inventory, self._events)
        )

    def _table(
        self, settings: DeltaSettings, uri: str, layout: TableLayout, setting: str
    ) -> DeltaTableHandle:
        storage = storage_options_for(settings, uri, setting=setting, logger=self._logger)
        return DeltaTableHandle(
            uri,
            layout,
            storage_options=storage.options,
            partition_by_date=settings.partition_by_date,
            logger=self._logger,
            setting=setting,
            secrets=storage.secrets,
            configuration=self._configuration,
        )

    # -- the inventory table ----------------------------------------------------------------

    async def read_state(self, app_ids: Sequence[str]) -> TableState:
        """Versions and landed ids from one snapshot (see :class:`lakeferry.api.Inventory`)."""
        return await self._inventory.read_state(app_ids)

    async def transaction_versions(self, app_ids: Sequence[str]) -> dict[str, int]:
        """The stored versions alone (for tools and tests; the stage uses :meth:`read_state`)."""
        return await self._inventory.versions(app_ids)

    async def append(self, rows: Sequence[InventoryRow], transactions: dict[str, int]) -> None:
        if await self._inventory.append(rows, transactions):
            await self._inventory_maintainer.after_commits()

    async def landed_ids(self) -> set[str]:
        """Every event id in the inventory."""
        return await self._inventory.keys()

    async def read_inventory(self) -> list[InventoryRow]:
        """Every row, in no particular order (Delta keeps none across files)."""
        return await self._inventory.read_all(InventoryRow)

    # -- the events table -------------------------------------------------------------------

    async def read_events_state(self, app_ids: Sequence[str]) -> TableState:
        """Versions and recorded origins from one snapshot."""
        return await self._events.read_state(app_ids)

    async def append_events(
        self, rows: Sequence[EventRow], transactions: dict[str, int] | None = None
    ) -> None:
        if await self._events.append(rows, transactions or {}):
            await self._events_maintainer.after_commits()

    async def read_events(self) -> list[EventRow]:
        """Every row, in no particular order."""
        return await self._events.read_all(EventRow)

    async def lookup(self, event_id: str) -> tuple[list[InventoryRow], list[EventRow]]:
        """One event id's rows in both tables."""
        where = ("event_id", event_id)
        rows = await self._inventory.read_all(InventoryRow, where=where)
        return rows, await self._events.read_all(EventRow, where=where)

    async def maintain(self) -> None:
        """Compaction, checkpoints and vacuum when due (:mod:`lakeferry_delta.maintenance`)."""
        for maintainer in (self._inventory_maintainer, self._events_maintainer):
            await maintainer.maintain()

    async def aclose(self) -> None:
        self._inventory.handle.close()
        self._events.handle.close()


def _column(table: Any, name: str) -> set[str]:
    """One column's values at the table's loaded version (Parquet is columnar: the other
    columns stay on disk)."""
    return set(read_columns(table, [name]).column(name).to_pylist())
