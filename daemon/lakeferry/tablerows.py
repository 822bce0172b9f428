"""For sources that read tables (``delta``, ``kusto``, a site team's own): rows to raw events,
and a small state file for their cursor.

:class:`RowMapping` turns one row (a dict by column name) into the bytes of one raw event:
either the row's ``raw_column`` as it is (a column holding each event's JSON), or an event
built from columns (``id_column``, ``columns`` for the other event fields, ``metadata_columns``
as the event's metadata). The intake validates the result like any other event, so a row
missing its URL becomes a ``malformed`` letter, not a crash.

:class:`StateFile` keeps a msgspec struct on disk, written aside, fsynced and renamed in: a
source moves its cursor there only once a batch is on the bus.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import msgspec

from lakeferry.errors import ConfigError

EVENT_FIELDS = frozenset({"url", "path", "sha256", "size", "created_at"})
"""Event fields a column may be mapped to (the id comes from ``id_column``)."""

S = TypeVar("S", bound=msgspec.Struct)


@dataclass(frozen=True)
class RowMapping:
    id_column: str = "id"
    raw_column: str = ""
    columns: Mapping[str, str] = field(default_factory=dict)
    metadata_columns: Sequence[str] = ()

    def check(self) -> None:
        """:class:`ConfigError` for a mapping that cannot make events."""
        unknown = sorted(set(self.columns) - EVENT_FIELDS)
        if unknown:
            raise ConfigError(
                "columns",
                f"not event fields: {', '.join(unknown)} (use: {', '.join(sorted(EVENT_FIELDS))})",
            )
        if not self.raw_column and "url" not in self.columns:
            raise ConfigError(
                "columns",
                'name the URL column (columns = { url = "..." }), or set raw_column to the '
                "column holding each event's JSON",
            )

    @property
    def needed(self) -> list[str]:
        """The columns to read: the id's first."""
        wanted = [self.id_column]
        if self.raw_column:
            wanted.append(self.raw_column)
            return wanted
        for column in (*self.columns.values(), *self.metadata_columns):
            if column not in wanted:
                wanted.append(column)
        return wanted

    def event(self, row: Mapping[str, Any]) -> bytes:
        """The raw event of ``row``."""
        if self.raw_column:
            value = row.get(self.raw_column)
            if isinstance(value, bytes | bytearray):
                return bytes(value)
            return str(value if value is not None else "").encode()
        event: dict[str, Any] = {"id": _text(row.get(self.id_column))}
        for name, column in self.columns.items():
            value = row.get(column)
            if value is None:
                continue
            if name == "size":
                event[name] = value if isinstance(value, int) else _text(value)
            else:
                event[name] = _text(value)
        metadata = {c: _text(row[c]) for c in self.metadata_columns if row.get(c) is not None}
        if metadata:
            event["metadata"] = metadata
        return json.dumps(event, ensure_ascii=False).encode()


class StateFile(Generic[S]):
    """One struct of type ``kind`` at ``path`` (the default when there is none yet)."""

    def __init__(self, path: Path, kind: type[S]) -> None:
        self.path = path
        self.kind = kind

    def load(self, default: S) -> S:
        try:
            return msgspec.json.decode(self.path.read_bytes(), type=self.kind)
        except FileNotFoundError:
            return default

    def save(self, value: S) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            f.write(msgspec.json.encode(value))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode(errors="replace")
    if isinstance(value, dt.datetime):
        at = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return at.isoformat()
    return str(value)
