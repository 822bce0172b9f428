"""The ``delta`` source: rows of a Delta table become events, version by version.

How new rows are found. The cursor says which table version is *done* (every row present at
it was published). Next, the source takes the version current now as its *target* and reads the
rows of the target whose id is not in the done version (an anti-join on ``id_column``, run by
deltalake's own query engine), ordered by id, ``batch_rows`` at a time. So an append, or many,
is read once however many versions it spans; a row rewritten by compaction (same id) is not
read again; a row whose id was seen before is not an event again (an id is one event).

Resuming. The cursor (``{"done": V, "target": C, "row": n}``) is saved after each batch is on
the bus (``intake.publish`` returned): after a crash the source reads the same diff (V → C, by
time travel) and skips the ``n`` rows already published. A batch in flight at the crash is
published again (at-least-once; the pipeline deduplicates by id). The cursor lives in the state
folder (``sources/delta-<hash of the table URI>.json``), written aside and renamed in.

Error handling: a table that cannot be read (missing, unreachable, a column that is not there)
raises: the daemon restarts the source with backoff, and the log says why. A version the cursor
needs that was vacuumed away cannot be read again: the error says so (set
``starting_version`` to skip past it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator
from typing import Any

import msgspec
import trio

from lakeferry.api import Intake, PluginContext, RawEvent, RowMapping, StateFile, failpoint
from lakeferry_delta.credentials import display_uri, storage_options_for
from lakeferry_delta.source_settings import DeltaSourceSettings


class Cursor(msgspec.Struct, kw_only=True):
    done: int | None = None
    """The table version whose rows are all published (None: none yet)."""
    target: int | None = None
    """The version being read now (None: between diffs)."""
    row: int = 0
    """Rows of the current diff (in id order) already published."""


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class DeltaSource:
    """See the module's text."""

    def __init__(self, settings: DeltaSourceSettings, context: PluginContext) -> None:
        self.rows = RowMapping(
            settings.id_column, settings.raw_column, settings.columns, settings.metadata_columns
        )
        self.rows.check()
        self.settings = settings
        self.uri = str(settings.table_uri)
        self.name = f"delta:{display_uri(self.uri)}"
        self._logger = context.logger
        self._storage = storage_options_for(
            settings, self.uri, setting="sources.table_uri", logger=context.logger
        ).options
        digest = hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        self._cursor_file = StateFile(
            context.state_dir / "sources" / f"delta-{digest}.json", Cursor
        )

    # -- reading the table (worker threads) --------------------------------------------------

    def _table(self, version: int | None = None) -> Any:
        from deltalake import DeltaTable

        if version is None:
            return DeltaTable(self.uri, storage_options=self._storage or None)
        return DeltaTable(self.uri, version=version, storage_options=self._storage or None)

    def _latest(self) -> int:
        return int(self._table().version())

    def _diff(self, done: int | None, target: int, skip: int) -> Generator[list[dict[str, Any]]]:
        """The rows of ``target`` whose id ``done`` did not have, in id order, from row
        ``skip`` on, in lists of ``batch_rows`` (a generator: run each step in a thread)."""
        import pyarrow as pa
        from deltalake import QueryBuilder

        s = self.settings
        select = ", ".join(f"cur.{_quoted(c)}" for c in self.rows.needed)
        ident = _quoted(s.id_column)
        builder = QueryBuilder().register("cur", self._table(target))
        query = f"SELECT {select} FROM cur"
        if done is not None:
            builder = builder.register("prev", self._table(done))
            query += (
                f" WHERE cur.{ident} IS NULL OR cur.{ident} NOT IN "
                f"(SELECT {ident} FROM prev WHERE {ident} IS NOT NULL)"
            )
        query += f" ORDER BY cur.{ident}"
        reader = builder.execute(query)
        pending: list[dict[str, Any]] = []
        seen = 0
        for batch in reader:
            rows = pa.record_batch(batch).to_pylist()
            if seen + len(rows) <= skip:
                seen += len(rows)
                continue
            start = max(0, skip - seen)
            seen += len(rows)
            pending.extend(rows[start:])
            while len(pending) >= s.batch_rows:
                yield pending[: s.batch_rows]
                pending = pending[s.batch_rows :]
        if pending:
            yield pending

    # -- the loop ----------------------------------------------------------------------------

    async def run(self, intake: Intake, *, task_status: trio.TaskStatus[None]) -> None:
        s = self.settings
        cursor = await trio.to_thread.run_sync(self._cursor_file.load, Cursor())
        if cursor.done is None and cursor.target is None and s.starting_version is not None:
            cursor = Cursor(done=s.starting_version)
        stop_at: int | None = None
        """Without ``follow``: the version current at the start, the last one read."""
        task_status.started()
        while True:
            if cursor.target is None:
                latest = await trio.to_thread.run_sync(self._latest)
                if not s.follow and stop_at is None:
                    stop_at = latest
                goal = latest if stop_at is None else stop_at
                if cursor.done is not None and cursor.done >= goal:
                    if not s.follow:
                        self._logger.info(
                            "delta source: read up to the version it started at",
                            extra={"table": self.name, "version": cursor.done},
                        )
                        return
                    await trio.sleep(float(s.poll_interval))
                    continue
                cursor = Cursor(done=cursor.done, target=goal, row=0)
                await trio.to_thread.run_sync(self._cursor_file.save, cursor)
            cursor = await self._read(intake, cursor)

    async def _read(self, intake: Intake, cursor: Cursor) -> Cursor:
        """Publish the diff ``cursor`` names, from its row on; the cursor once it is done."""
        assert cursor.target is not None
        target = cursor.target
        steps = self._diff(cursor.done, target, cursor.row)
        row = cursor.row
        try:
            while True:
                rows = await trio.to_thread.run_sync(next, steps, None)
                if rows is None:
                    break
                events = [
                    RawEvent(
                        self.rows.event(r), f"delta:{display_uri(self.uri)}@v{target}#{row + i}"
                    )
                    for i, r in enumerate(rows)
                ]
                await intake.publish(events)
                failpoint("delta.source.published")  # on the bus, the cursor not moved yet
                row += len(rows)
                cursor = Cursor(done=cursor.done, target=target, row=row)
                await trio.to_thread.run_sync(self._cursor_file.save, cursor)
        finally:
            steps.close()
        cursor = Cursor(done=target)
        await trio.to_thread.run_sync(self._cursor_file.save, cursor)
        self._logger.info(
            "delta source: version read",
            extra={"table": self.name, "version": target, "rows": row},
        )
        return cursor
