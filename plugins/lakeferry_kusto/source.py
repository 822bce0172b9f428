"""The ``kusto`` source: a KQL query read in pages by a cursor column, resumable.

Paging. Rows are read in order of ``(cursor_column, id_column)``; each page asks for the rows
after the last one published::

    <query> | where C > <c> or (C == <c> and I > <i>) [| where C <= <stop>]
            | order by C asc, I asc | take <page_rows>

(the first page: ``| where C >= <start>`` when ``start`` is set, else everything). Ties on the
cursor column (many rows ingested at one instant) are broken by the id, so no row is skipped
or read twice between pages. Kusto keeps datetimes in 100 ns ticks and Python in microseconds:
a row whose cursor has sub-microsecond digits can be read again at a page boundary, which the
pipeline absorbs (the same id is one event).

Resuming. The last published row's ``(cursor, id)`` is saved in the state folder
(``sources/kusto-<hash>.json``) after its page is on the bus (``intake.publish`` returned), so a
killed source resumes after it; a page in flight at the kill is published again.

Errors. Throttling (429), network errors, timeouts and 5xx answers are transient: the source
waits (``backoff_initial`` doubling to ``backoff_max``) and asks again, logging each. A query
the cluster refuses (a syntax error, an unknown column) raises with the cluster's message: the
daemon restarts the source with backoff, and the log names the setting to fix.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from typing import Any

import msgspec
import trio

from lakeferry.api import (
    ConfigError,
    Intake,
    PluginContext,
    RawEvent,
    RowMapping,
    StateFile,
    failpoint,
)
from lakeferry_kusto.settings import KustoSourceSettings

IDENTIFIER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


class Cursor(msgspec.Struct, kw_only=True):
    after: str | None = None
    """The cursor column's value of the last row published, as a KQL literal (None: none)."""
    after_id: str | None = None
    """Its id, as a KQL literal."""


class QueryRefused(Exception):
    """The cluster refused the query: a mistake in the settings, not a passing trouble."""


def literal(value: Any) -> str:
    """``value`` (as the client returns a cell) as a KQL literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        at = value.astimezone(dt.UTC) if value.tzinfo else value
        return f"datetime({at.strftime('%Y-%m-%dT%H:%M:%S.%f')}Z)"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a double-quoted string, \" and \\ escaped


def _identifier(name: str, setting: str) -> str:
    if not name or not set(name) <= IDENTIFIER_CHARS or name[0].isdigit():
        raise ConfigError(setting, f"{name!r} is not a column name (letters, digits, _)")
    return name


class KustoSource:
    """See the module's text."""

    def __init__(self, settings: KustoSourceSettings, context: PluginContext) -> None:
        self.rows = RowMapping(
            settings.id_column, settings.raw_column, settings.columns, settings.metadata_columns
        )
        self.rows.check()
        self.cursor_column = _identifier(settings.cursor_column, "cursor_column")
        self.id_column = _identifier(settings.id_column, "id_column")
        if settings.credential == "none" and not settings.cluster_url.startswith("http://"):
            raise ConfigError(
                "credential", '"none" is for an http:// cluster (the emulator); use "default"'
            )
        if settings.credential == "service_principal":
            for name in (
                settings.tenant_id_env,
                settings.client_id_env,
                settings.client_secret_env,
            ):
                if not context.check_only and not os.environ.get(name):
                    raise ConfigError(
                        "credential", f"service_principal needs ${name} in the environment"
                    )
        self.settings = settings
        self.name = f"kusto:{settings.cluster_url}/{settings.database}"
        self._logger = context.logger
        key = "\n".join((settings.cluster_url, settings.database, settings.query))
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        self._state = StateFile(context.state_dir / "sources" / f"kusto-{digest}.json", Cursor)
        self._client: Any = None

    # -- the cluster (worker threads) --------------------------------------------------------

    def _connect(self) -> Any:
        from azure.kusto.data import KustoClient, KustoConnectionStringBuilder

        s = self.settings
        if s.credential == "none":
            kcsb = KustoConnectionStringBuilder.with_no_authentication(s.cluster_url)
        elif s.credential == "service_principal":
            kcsb = KustoConnectionStringBuilder.with_aad_application_key_authentication(
                s.cluster_url, os.environ[s.client_id_env], os.environ[s.client_secret_env],
                os.environ[s.tenant_id_env],
            )  # fmt: skip
        else:
            from azure.identity import DefaultAzureCredential

            kcsb = KustoConnectionStringBuilder.with_azure_token_credential(
                s.cluster_url, DefaultAzureCredential()
            )
        return KustoClient(kcsb)

    def query_for(self, cursor: Cursor) -> str:
        s, c, i = self.settings, self.cursor_column, self.id_column
        parts = [s.query.strip()]
        if cursor.after is not None:
            after_id = cursor.after_id if cursor.after_id is not None else '""'
            parts.append(
                f"where {c} > {cursor.after} or ({c} == {cursor.after} and {i} > {after_id})"
            )
        elif s.start:
            parts.append(f"where {c} >= {s.start}")
        if s.stop:
            parts.append(f"where {c} <= {s.stop}")
        parts += [f"order by {c} asc, {i} asc", f"take {s.page_rows}"]
        return " | ".join(parts)

    def _page(self, cursor: Cursor) -> list[dict[str, Any]]:
        from azure.kusto.data import ClientRequestProperties
        from azure.kusto.data.exceptions import KustoApiError

        if self._client is None:
            self._client = self._connect()
        properties = ClientRequestProperties()  # type: ignore[no-untyped-call]
        properties.set_option(
            ClientRequestProperties.request_timeout_option_name,
            dt.timedelta(seconds=float(self.settings.request_timeout)),
        )
        try:
            result = self._client.execute(
                self.settings.database, self.query_for(cursor), properties
            )
        except KustoApiError as exc:
            status = getattr(exc.http_response, "status_code", None)
            if status is not None and 400 <= status < 500 and status != 429:
                raise QueryRefused(str(exc)) from exc
            raise
        return [dict(row.to_dict()) for row in result.primary_results[0]]

    # -- the loop ----------------------------------------------------------------------------

    async def run(self, intake: Intake, *, task_status: trio.TaskStatus[None]) -> None:
        s = self.settings
        cursor = await trio.to_thread.run_sync(self._state.load, Cursor())
        task_status.started()
        backoff = float(s.backoff_initial)
        try:
            while True:
                try:
                    rows = await trio.to_thread.run_sync(self._page, cursor)
                except QueryRefused as exc:
                    raise ConfigError(
                        "sources.query", f"the cluster refused the query ({exc}); check query, "
                        "cursor_column and id_column",
                    ) from None  # fmt: skip
                except Exception as exc:  # throttled, network, timeout, 5xx: ask again later
                    self._logger.warning(
                        "kusto source: query failed; asking again",
                        extra={"source": self.name, "error": str(exc)[:300], "retry_in": backoff},
                    )
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, float(s.backoff_max))
                    continue
                backoff = float(s.backoff_initial)
                if rows:
                    cursor = await self._publish(intake, rows)
                if len(rows) < s.page_rows:  # caught up
                    if not s.follow:
                        self._logger.info(
                            "kusto source: read to the end", extra={"source": self.name}
                        )
                        return
                    await trio.sleep(float(s.poll_interval))
        finally:
            client, self._client = self._client, None
            if client is not None:
                client.close()

    def _origin(self, row: dict[str, Any]) -> str:
        """Where a row came from: its cursor and id (unique: the order pages go by)."""
        return f"{self.name}@{literal(row.get(self.cursor_column))}/{row.get(self.id_column)}"

    async def _publish(self, intake: Intake, rows: list[dict[str, Any]]) -> Cursor:
        last = rows[-1]
        after = literal(last.get(self.cursor_column))
        events = [RawEvent(self.rows.event(r), self._origin(r)) for r in rows]
        await intake.publish(events)
        failpoint("kusto.source.published")  # on the bus, the cursor not moved yet
        cursor = Cursor(after=after, after_id=literal(last.get(self.id_column)))
        await trio.to_thread.run_sync(self._state.save, cursor)
        return cursor
