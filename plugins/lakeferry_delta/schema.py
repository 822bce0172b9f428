"""The Arrow schemas of the inventory and events tables, and rows to and from Arrow.

Column names and order are the fields of :class:`InventoryRow` and :class:`EventRow`; a test
holds them together. Timestamps are ``timestamp[us, tz=UTC]`` (Delta ``timestamp``), metadata
and raw events are JSON text. Every column is non-null: Delta enforces it on write.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, NamedTuple, TypeVar

import pyarrow as pa

from lakeferry.api import EventRow, InventoryRow

_TS = pa.timestamp("us", tz="UTC")


def _schema(*fields: tuple[str, Any]) -> Any:
    return pa.schema([pa.field(name, type_, nullable=False) for name, type_ in fields])


INVENTORY_SCHEMA = _schema(
    ("event_id", pa.string()),
    ("url", pa.string()),
    ("destination", pa.string()),
    ("size", pa.int64()),
    ("sha256", pa.string()),
    ("event_created_at", _TS),
    ("downloaded_at", _TS),
    ("uploaded_at", _TS),
    ("committed_at", _TS),
    ("attempts", pa.int32()),
    ("skipped_upload", pa.bool_()),
    ("metadata_json", pa.string()),
)

EVENTS_SCHEMA = _schema(
    ("event_id", pa.string()),
    ("url", pa.string()),
    ("received_at", _TS),
    ("event_created_at", _TS),
    ("origin", pa.string()),
    ("raw_json", pa.string()),
)


class TableLayout(NamedTuple):
    """A table's columns, and the optional date column that partitions it."""

    schema: Any
    row_type: type[NamedTuple]
    date_column: str
    """Name of the partition column (UTC date of ``date_source``) when partitioned by date."""
    date_source: str

    def with_date(self) -> Any:
        """The schema of a date-partitioned table: the base columns plus the date column."""
        return self.schema.append(pa.field(self.date_column, pa.date32(), nullable=False))


INVENTORY_LAYOUT = TableLayout(INVENTORY_SCHEMA, InventoryRow, "committed_date", "committed_at")
EVENTS_LAYOUT = TableLayout(EVENTS_SCHEMA, EventRow, "received_date", "received_at")

Row = TypeVar("Row", InventoryRow, EventRow)


def to_arrow(layout: TableLayout, rows: Sequence[NamedTuple], *, with_date: bool) -> Any:
    """A pyarrow Table of ``rows`` (column by column; naive datetimes are taken as UTC)."""
    arrays = [
        pa.array([row[i] for row in rows], type=field.type) for i, field in enumerate(layout.schema)
    ]
    schema = layout.schema
    if with_date:
        source = layout.schema.get_field_index(layout.date_source)
        dates = [_utc(row[source]).date() for row in rows]
        arrays.append(pa.array(dates, type=pa.date32()))
        schema = layout.with_date()
    return pa.Table.from_arrays(arrays, schema=schema)


def read_columns(
    table: Any, columns: Sequence[str], *, where: tuple[str, str] | None = None
) -> pa.Table:
    """``columns`` of the current snapshot of ``table`` (a DeltaTable), as a pyarrow Table.

    Read through deltalake's own query engine (DataFusion, Rust) rather than
    ``DeltaTable.to_pyarrow_table``: that one scans with Arrow C++'s dataset scanner, whose thread
    pool is still alive when the interpreter exits and aborts about one process in five with
    "terminate called without an active exception" (apache/arrow#34314) — a CLI command or a
    daemon that did its work and then died with SIGABRT.
    """
    from deltalake import QueryBuilder

    select = ", ".join(_quoted(name) for name in columns)
    query = f"SELECT {select} FROM t"
    if where is not None:  # column = 'value' (file statistics skip the files without it)
        column, value = where
        query += f" WHERE {_quoted(column)} = '" + value.replace("'", "''") + "'"
    reader = QueryBuilder().register("t", table).execute(query)
    return pa.table(reader)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def from_arrow(row_type: type[Row], table: Any) -> list[Row]:
    """Rows of ``row_type`` from a pyarrow Table holding (at least) its columns."""
    columns = table.select(list(row_type._fields)).to_pydict()
    values = [columns[name] for name in row_type._fields]
    return [row_type(*(_normalise(v) for v in row)) for row in zip(*values, strict=True)]


def _utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def _normalise(value: Any) -> Any:
    # pyarrow hands back ZoneInfo("UTC"); the rest of lakeferry uses datetime.UTC.
    return _utc(value) if isinstance(value, dt.datetime) else value
