"""The ``kusto`` source (lakeferry_kusto) against the Kusto emulator (``tools/kusto_emulator.py``),
through the real azure-kusto-data client: paging by cursor with ties, bounds, throttling, a
refused query, and a daemon backfill of 10,000 rows killed twice. The source kit runs on it in
``tests/test_conformance_sources.py``."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from lakeferry_kusto import KustoSource, KustoSourceSettings

from helpers.daemon import DaemonEnv
from helpers.origin import Origin
from helpers.tools import load_tool
from lakeferry.api import ConfigError, Duration, PluginContext
from lakeferry.testing import RecordingIntake

emulator_tool: Any = load_tool("kusto_emulator")

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
COLUMNS = [("at", "datetime"), ("event_id", "string"), ("file_url", "string"), ("bytes", "long")]


@pytest.fixture
def emulator() -> Iterator[Any]:
    emulator = emulator_tool.start(database="history")
    emulator.create_table("Downloads", COLUMNS)
    try:
        yield emulator
    finally:
        emulator.stop()


def settings(emulator: Any, **overrides: Any) -> KustoSourceSettings:
    values: dict[str, Any] = {
        "cluster_url": emulator.url, "database": "history", "query": "Downloads",
        "cursor_column": "at", "id_column": "event_id", "credential": "none",
        "columns": {"url": "file_url", "size": "bytes"}, "follow": False, "page_rows": 4,
        "poll_interval": Duration(0.05), "backoff_initial": Duration(0.01),
    }  # fmt: skip
    return KustoSourceSettings(**(values | overrides))


def row(i: int, at: dt.datetime, url: str = "https://files.example/{i}.bin") -> dict[str, Any]:
    return {"at": at, "event_id": f"k{i:05d}", "file_url": url.format(i=i), "bytes": i}


async def read_all(source: KustoSource) -> RecordingIntake:
    intake = RecordingIntake()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(source.run, intake)
    return intake


def ids(intake: RecordingIntake) -> list[str]:
    return [json.loads(e.data)["id"] for e in intake.events]


async def test_pages_by_cursor_then_id_so_ties_across_pages_are_read_once(
    emulator: Any, lakeferry_context: PluginContext
) -> None:
    # Ten rows at one instant (an ingestion batch), across three pages of four.
    emulator.append("Downloads", [row(i, T0) for i in range(10)])
    emulator.append("Downloads", [row(i, T0 + dt.timedelta(seconds=1)) for i in range(10, 13)])
    intake = await read_all(KustoSource(settings(emulator), lakeferry_context))
    assert ids(intake) == [f"k{i:05d}" for i in range(13)]
    assert json.loads(intake.events[5].data) == {
        "id": "k00005", "url": "https://files.example/5.bin", "size": 5,
    }  # fmt: skip
    assert len({e.origin for e in intake.events}) == 13
    # What it asked: the first page everything, then after the last row of each page.
    assert "| where at > datetime(2026-03-01T00:00:00.000000Z) or (at ==" in emulator.queries[1]
    assert 'event_id > "k00003")' in emulator.queries[1]

    # A restart reads nothing again; rows added since come next.
    emulator.append("Downloads", [row(13, T0 + dt.timedelta(seconds=2))])
    again = await read_all(KustoSource(settings(emulator), lakeferry_context))
    assert ids(again) == ["k00013"]


async def test_start_and_stop_bound_a_backfill(
    emulator: Any, lakeferry_context: PluginContext
) -> None:
    emulator.append("Downloads", [row(i, T0 + dt.timedelta(hours=i)) for i in range(10)])
    bounded = settings(
        emulator, start="datetime(2026-03-01T03:00:00Z)", stop="datetime(2026-03-01T06:00:00Z)"
    )
    intake = await read_all(KustoSource(bounded, lakeferry_context))
    assert ids(intake) == ["k00003", "k00004", "k00005", "k00006"]


async def test_a_throttled_page_is_asked_again(
    emulator: Any, lakeferry_context: PluginContext, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.append("Downloads", [row(i, T0 + dt.timedelta(seconds=i)) for i in range(6)])
    emulator.throttle(3)
    intake = await read_all(KustoSource(settings(emulator), lakeferry_context))
    assert ids(intake) == [f"k{i:05d}" for i in range(6)]
    retried = [
        r for r in caplog.records if r.getMessage() == "kusto source: query failed; asking again"
    ]
    assert len(retried) == 3
    assert emulator.requests == 3 + 2  # three refused, then two pages


async def test_a_query_the_cluster_refuses_is_a_config_error(
    emulator: Any, lakeferry_context: PluginContext
) -> None:
    source = KustoSource(settings(emulator, query="NoSuchTable"), lakeferry_context)
    with pytest.raises(ConfigError, match=r"sources\.query.*NoSuchTable"):
        await source.run(RecordingIntake(), task_status=trio.TASK_STATUS_IGNORED)


def test_settings_are_checked(emulator: Any, lakeferry_context: PluginContext) -> None:
    with pytest.raises(ConfigError, match="cursor_column"):
        KustoSource(settings(emulator, cursor_column="at; drop"), lakeferry_context)
    with pytest.raises(ConfigError, match="credential"):
        KustoSource(
            settings(emulator, cluster_url="https://x.kusto.windows.net"), lakeferry_context
        )
    with pytest.raises(ConfigError, match="columns"):
        KustoSource(settings(emulator, columns={}), lakeferry_context)


@pytest.mark.slow
def test_a_backfill_of_10000_rows_killed_twice_lands_each_row_once(
    daemon_env: DaemonEnv, origin: Origin, emulator: Any
) -> None:
    """10,000 rows paged into the bus; the daemon SIGKILLed twice by the source's failpoint (a
    page on the bus, the cursor not moved): every row's file lands exactly once. (The live
    lane: a backfill lane waits for the stages downstream by design, which would only make
    this test slower; tests/test_plugin_delta_source.py reads into the backfill lane.)"""
    env = daemon_env
    count = 10_000
    emulator.append("Downloads", [
        {"at": T0 + dt.timedelta(milliseconds=i // 7), "event_id": f"k-{i}",  # ties of 7
         "file_url": origin.file_url(f"k-{i}.bin", 100), "bytes": 100}
        for i in range(count)
    ])  # fmt: skip
    env.data["sources"] = [{
        "kind": "kusto", "cluster_url": emulator.url, "database": "history",
        "query": "Downloads", "cursor_column": "at", "id_column": "event_id",
        "credential": "none", "columns": {"url": "file_url", "size": "bytes"},
        "follow": False, "page_rows": 500,
    }]  # fmt: skip
    env.write()
    submitted = env.root / "submitted.jsonl"
    submitted.write_text("".join(json.dumps({"id": f"k-{i}"}) + "\n" for i in range(count)))
    for kill_at in (3, 8):  # pages 1-3 on the bus, killed; then 8 more, killed
        env.run_until_killed(f"kusto.source.published=kill@{kill_at}")
    env.start()
    env.assert_landed_once(submitted, count, timeout=600)
    [cursor] = (env.state / "sources").glob("kusto-*.json")
    assert json.loads(cursor.read_text())["after_id"] == f'"k-{count - 1}"'
    # Pages: 20 of 500; the killed ones were asked again (3rd and 11th).
    pages = [q for q in emulator.queries if "take 500" in q]
    assert len(pages) >= 20
