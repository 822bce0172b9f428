"""Rows, a settable clock and table inspection for the ``delta`` inventory tests."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from deltalake import DeltaTable

from lakeferry.api import EventRow, InventoryRow

T0 = dt.datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)


def inventory_row(i: int, *, day: int = 0) -> InventoryRow:
    at = T0 + dt.timedelta(days=day, seconds=i)
    return InventoryRow(
        event_id=f"ev-{i}",
        url=f"https://example.org/files/{i}.bin",
        destination=f"landing/{i}.bin",
        size=1000 + i,
        sha256=f"{i:064x}",
        event_created_at=at,
        downloaded_at=at + dt.timedelta(seconds=1),
        uploaded_at=at + dt.timedelta(seconds=2),
        committed_at=at + dt.timedelta(seconds=3),
        attempts=1,
        skipped_upload=i % 2 == 0,
        metadata_json='{"k": "v"}',
    )


def event_row(i: int) -> EventRow:
    return EventRow(
        event_id=f"ev-{i}",
        url=f"https://example.org/files/{i}.bin",
        received_at=T0 + dt.timedelta(seconds=i),
        event_created_at=T0,
        origin=f"spool:/in/a.jsonl:{i}",
        raw_json=f'{{"id": "ev-{i}"}}',
    )


@dataclass
class Clock:
    """Wall-clock seconds that only move when a test says so."""

    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def operations(table: DeltaTable) -> list[str]:
    """The operations of the table's commits, oldest first."""
    return [entry["operation"] for entry in reversed(table.history())]


def live_files(table: DeltaTable) -> int:
    return len(table.file_uris())


def txn(table: DeltaTable, app_id: str) -> Any:
    return table.transaction_version(app_id)
