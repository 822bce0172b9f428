"""The ``delta`` source (lakeferry_delta.source) on local Delta tables: rows mapped to events,
a backfill that stops, resuming mid-version, and the daemon killed mid-backfill.

The source contract itself (every event once, intact; failures and cancellations lose nothing)
is the conformance kit's: ``tests/test_conformance_sources.py::TestDeltaSource``.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import trio
from deltalake import write_deltalake

from helpers.daemon import DaemonEnv
from helpers.origin import Origin
from lakeferry.api import ConfigError, Duration, PluginContext
from lakeferry.testing import RecordingIntake
from lakeferry_delta import DeltaSource, DeltaSourceSettings

SCHEMA = pa.schema([
    ("event_id", pa.string()), ("file_url", pa.string()), ("dest", pa.string()),
    ("bytes", pa.int64()), ("made", pa.timestamp("us", tz="UTC")), ("owner", pa.string()),
])  # fmt: skip
T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def rows(ids: range, url: str = "https://files.example/{i}.bin") -> pa.Table:
    return pa.table({
        "event_id": [f"e{i:05d}" for i in ids],
        "file_url": [url.format(i=i) for i in ids],
        "dest": [f"in/{i}.bin" for i in ids],
        "bytes": [i for i in ids],
        "made": [T0 for _ in ids],
        "owner": ["team-a" for _ in ids],
    }, SCHEMA)  # fmt: skip


def mapped(table: Path, **overrides: Any) -> DeltaSourceSettings:
    settings: dict[str, Any] = {
        "table_uri": str(table), "id_column": "event_id",
        "columns": {"url": "file_url", "path": "dest", "size": "bytes", "created_at": "made"},
        "metadata_columns": ["owner"], "follow": False, "batch_rows": 4,
    }  # fmt: skip
    return DeltaSourceSettings(**(settings | overrides))


class StuckAfter(RecordingIntake):
    """Records ``batches`` publishes, then the next one never returns (a publish in flight
    when the process dies)."""

    def __init__(self, batches: int) -> None:
        super().__init__()
        self.limit = batches
        self.stuck = trio.Event()

    async def publish(self, events: Any) -> None:
        if len(self.batches) >= self.limit:
            self.stuck.set()
            await trio.sleep_forever()
        await super().publish(events)


async def run_until_done(source: DeltaSource, intake: RecordingIntake) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(source.run, intake)


def test_settings_must_say_where_the_url_is(
    tmp_path: Path, lakeferry_context: PluginContext
) -> None:
    with pytest.raises(ConfigError, match="columns"):
        DeltaSource(DeltaSourceSettings(table_uri=str(tmp_path)), lakeferry_context)
    with pytest.raises(ConfigError, match="not event fields: colour"):
        DeltaSource(
            DeltaSourceSettings(table_uri=str(tmp_path), columns={"url": "u", "colour": "c"}),
            lakeferry_context,
        )


async def test_rows_become_events_and_a_backfill_stops_at_the_version_it_began_with(
    tmp_path: Path, lakeferry_context: PluginContext
) -> None:
    table = tmp_path / "table"
    write_deltalake(str(table), rows(range(0, 6)))
    write_deltalake(str(table), rows(range(6, 10)), mode="append")  # version 1
    intake = RecordingIntake()
    await run_until_done(DeltaSource(mapped(table), lakeferry_context), intake)
    events = [json.loads(e.data) for e in intake.events]
    assert [e["id"] for e in events] == [f"e{i:05d}" for i in range(10)]  # id order
    assert events[3] == {
        "id": "e00003", "url": "https://files.example/3.bin", "path": "in/3.bin", "size": 3,
        "created_at": T0.isoformat(), "metadata": {"owner": "team-a"},
    }  # fmt: skip
    assert len({e.origin for e in intake.events}) == 10
    assert intake.events[0].origin.startswith(f"delta:{table}@v1#")
    assert [len(b) for b in intake.batches] == [4, 4, 2]

    # Appended since: the next backfill reads only the new rows (ids not in version 1), and a
    # row rewritten under an id already read (an update, a compaction) is not an event again.
    write_deltalake(str(table), rows(range(10, 13)), mode="append")
    write_deltalake(str(table), rows(range(2, 3), url="https://elsewhere/{i}"), mode="append")
    again = RecordingIntake()
    await run_until_done(DeltaSource(mapped(table), lakeferry_context), again)
    assert [json.loads(e.data)["id"] for e in again.events] == ["e00010", "e00011", "e00012"]


async def test_starting_version_skips_what_was_there(
    tmp_path: Path, lakeferry_context: PluginContext
) -> None:
    table = tmp_path / "table"
    write_deltalake(str(table), rows(range(0, 5)))
    write_deltalake(str(table), rows(range(5, 7)), mode="append")
    intake = RecordingIntake()
    await run_until_done(DeltaSource(mapped(table, starting_version=0), lakeferry_context), intake)
    assert [json.loads(e.data)["id"] for e in intake.events] == ["e00005", "e00006"]


async def test_a_source_stopped_mid_version_resumes_at_its_row(
    tmp_path: Path, lakeferry_context: PluginContext
) -> None:
    """The cursor moves after each batch is on the bus: stopped after two batches of a
    version, the next run publishes the rest of that version and nothing twice — even with
    rows appended meanwhile (they come with the next version)."""
    table = tmp_path / "table"
    write_deltalake(str(table), rows(range(0, 10)))
    intake = StuckAfter(2)
    settings = mapped(table, follow=True, poll_interval=Duration(0.05))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(DeltaSource(settings, lakeferry_context).run, intake)
            await intake.stuck.wait()  # the third batch is in flight
            nursery.cancel_scope.cancel()
    first = [json.loads(e.data)["id"] for e in intake.events]
    assert first == [f"e{i:05d}" for i in range(8)]
    write_deltalake(str(table), rows(range(10, 12)), mode="append")
    rest = RecordingIntake()
    await run_until_done(DeltaSource(mapped(table), lakeferry_context), rest)
    assert [json.loads(e.data)["id"] for e in rest.events] == [
        "e00008", "e00009", "e00010", "e00011",
    ]  # fmt: skip


@pytest.mark.slow
def test_a_backfill_from_a_delta_table_survives_kills_and_lands_each_row_once(
    daemon_env: DaemonEnv, origin: Origin
) -> None:
    """A table of URLs read into the backfill lane, the daemon SIGKILLed twice by the source's
    failpoint (a batch on the bus, the cursor not moved: the worst moment) and a version
    appended between the kills: every row's file lands exactly once (audit clean)."""
    env = daemon_env
    table = env.root / "urls"
    count = 300

    def batch(ids: range) -> pa.Table:
        return pa.table({
            "event_id": [f"dl-{i}" for i in ids],
            "file_url": [origin.file_url(f"dl-{i}.bin", 2000 + i) for i in ids],
            "dest": [f"backfill/dl-{i}.bin" for i in ids],
            "bytes": [2000 + i for i in ids], "made": [T0 for _ in ids],
            "owner": ["old-pipeline" for _ in ids],
        }, SCHEMA)  # fmt: skip

    write_deltalake(str(table), batch(range(0, 100)), mode="append")
    write_deltalake(str(table), batch(range(100, 200)), mode="append")
    env.data["sources"] = [{
        "kind": "delta", "lane": "backfill", "table_uri": str(table), "id_column": "event_id",
        "columns": {"url": "file_url", "path": "dest", "size": "bytes", "created_at": "made"},
        "metadata_columns": ["owner"], "follow": False, "batch_rows": 10,
    }]  # fmt: skip
    env.write()
    submitted = env.root / "submitted.jsonl"  # what the audit checks against
    submitted.write_text("".join(json.dumps({"id": f"dl-{i}"}) + "\n" for i in range(count)))
    # Killed after its 5th batch (rows 0-49 on the bus, the cursor at 40); a version is added;
    # killed again 20 batches later: the rest of the first read (16), then 4 of the new rows'.
    env.run_until_killed("delta.source.published=kill@5")
    write_deltalake(str(table), batch(range(200, 300)), mode="append")
    env.run_until_killed("delta.source.published=kill@20")
    env.start()
    env.assert_landed_once(submitted, count, timeout=180)
    [cursor] = (env.state / "sources").glob("delta-*.json")
    assert json.loads(cursor.read_text()) == {"done": 2, "target": None, "row": 0}
