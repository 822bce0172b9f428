"""The ``[[sources]]`` settings of the ``kusto`` kind."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from lakeferry.api import Duration

Positive = Annotated[int, msgspec.Meta(ge=1)]
Credential = Literal["default", "service_principal", "none"]


class KustoSourceSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Rows of ``query`` (a table name, or KQL that yields rows: ``Downloads | where Status ==
    "failed" | extend at = ingestion_time()``) in ``database`` on ``cluster_url``, read in
    pages of ``page_rows`` ordered by ``cursor_column`` then ``id_column``.

    Each row is one event, as the ``delta`` source makes them: ``raw_column`` (a column holding
    the event's JSON) or mapped ``columns`` (``url``, ``path``, ``sha256``, ``size``,
    ``created_at``) and ``metadata_columns``.

    ``start`` and ``stop`` are KQL literals of the cursor column's type (``datetime(2026-01-01)``,
    a number): rows with a cursor at or after ``start`` and at or before ``stop``. ``follow =
    true`` polls every ``poll_interval`` for rows past the last one read (the old pipeline polled
    every 60 s); ``false`` stops once the last page is read (a backfill).

    Credentials: ``default`` (azure-identity's DefaultAzureCredential: managed or workload
    identity, the environment), ``service_principal`` (the three ``*_env`` variables), or
    ``none`` (an ``http://`` cluster: the emulator). Throttling, timeouts and server errors are
    retried with a backoff from ``backoff_initial`` to ``backoff_max``.
    """

    cluster_url: str
    database: str
    query: str
    cursor_column: str
    id_column: str = "id"
    raw_column: str = ""
    columns: dict[str, str] = {}
    metadata_columns: list[str] = []
    page_rows: Positive = 1000
    follow: bool = True
    poll_interval: Duration = Duration(60)
    start: str = ""
    stop: str = ""
    credential: Credential = "default"
    tenant_id_env: str = "AZURE_TENANT_ID"
    client_id_env: str = "AZURE_CLIENT_ID"
    client_secret_env: str = "AZURE_CLIENT_SECRET"
    request_timeout: Duration = Duration(60)
    backoff_initial: Duration = Duration(1)
    backoff_max: Duration = Duration(60)
