"""The ``[[sources]]`` settings of the ``delta`` kind: a Delta table whose rows are events."""

from __future__ import annotations

from typing import Annotated

import msgspec

from lakeferry.api import Duration, LocalPathOrUri
from lakeferry_delta.settings import TableAccess

Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class DeltaSourceSettings(TableAccess, kw_only=True, forbid_unknown_fields=True):
    """Rows of the Delta table at ``table_uri`` (a local path or ``abfss://``, reached with the
    same credential fields as the ``delta`` inventory) become events, version by version.

    Each row is one event, either as it is in ``raw_column`` (a string or binary column holding
    the event's JSON: an events table of the old pipeline has one) or built from columns:
    ``id_column`` gives the id, ``columns`` maps the other event fields (``url``, ``path``,
    ``sha256``, ``size``, ``created_at``) to column names, ``metadata_columns`` become the
    event's metadata (as strings). The intake validates the result like any other event.

    ``follow = true`` (the default) keeps reading new table versions every ``poll_interval``;
    ``false`` reads up to the version current when the source starts, then stops (a backfill).
    ``starting_version`` takes the rows present at that version as done and starts after it
    (unset: the whole table). Rows are read ``batch_rows`` at a time; the source's cursor (the
    versions done, and how far into the current one) is kept in the state folder and moved only
    once a batch is on the bus.
    """

    table_uri: LocalPathOrUri
    id_column: str = "id"
    raw_column: str = ""
    columns: dict[str, str] = {}
    metadata_columns: list[str] = []
    follow: bool = True
    poll_interval: Duration = Duration(10)
    batch_rows: Positive = 500
    starting_version: NonNegative | None = None
