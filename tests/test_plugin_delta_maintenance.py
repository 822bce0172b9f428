"""``DeltaInventory.maintain``: compaction, checkpoints and vacuum on local Delta tables."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pytest
import trio
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.table import TableOptimizer

import lakeferry_delta.maintenance
import lakeferry_delta.table
from helpers.delta import Clock, event_row, inventory_row, live_files, operations
from lakeferry.api import ConfigError, PluginContext
from lakeferry.units import dec_hook
from lakeferry_delta import DeltaInventory, DeltaSettings
from lakeferry_delta.maintenance import (
    COMPACTION_APP_ID,
    COMPACTION_DONE_APP_ID,
    FULL_COMPACTION_APP_ID,
    LOG_RETENTION_KEY,
    VACUUM_APP_ID,
    MaintenancePolicy,
    checkpoint_due,
    compaction_due,
    vacuum_due,
)

# Seconds per test: every one writes, compacts and vacuums real Delta tables.
pytestmark = pytest.mark.slow

TIMEOUT = 30
HOUR = 3600.0
LOGGER = "test.delta.maintenance"


def make(tmp_path: Path, clock: Clock, **overrides: Any) -> DeltaInventory:
    settings = DeltaSettings(
        inventory_uri=str(tmp_path / "inventory"), events_uri=str(tmp_path / "events"), **overrides
    )
    context = PluginContext(state_dir=tmp_path / "state", logger=logging.getLogger(LOGGER))
    return DeltaInventory(settings, context, clock=clock)


async def fill(inventory: DeltaInventory, commits: int, *, start: int = 0) -> None:
    """``commits`` appends to each table, two rows each; versions p0 = i, p1 = 10 * i."""
    for i in range(start, start + commits):
        rows = [inventory_row(2 * i), inventory_row(2 * i + 1)]
        await inventory.append(rows, {"g:t:0": i, "g:t:1": 10 * i})
        await inventory.append_events([event_row(2 * i), event_row(2 * i + 1)])


def tables(tmp_path: Path) -> list[DeltaTable]:
    return [DeltaTable(str(tmp_path / "inventory")), DeltaTable(str(tmp_path / "events"))]


def parquet_files(path: Path) -> int:
    return len(list(path.rglob("*.parquet"))) - len(list(path.rglob("_delta_log/*.parquet")))


POLICY = MaintenancePolicy(HOUR, 50, 100, 100, 24 * HOUR, 168 * HOUR, True, 900.0)


def test_when_steps_are_due() -> None:
    t = 1_000_000.0

    def due(
        *,
        now: float,
        policy: MaintenancePolicy = POLICY,
        started: float = t,
        claimed: float | None = None,
        done: float | None = None,
        last_full: float | None = None,
        loose: int = 0,
        small: int = 0,
    ) -> str | None:
        return compaction_due(
            policy, now=now, started=started, claimed=claimed, done=done,
            last_full=last_full, loose_files=loose, small_files=small,
        )  # fmt: skip

    # Never fully compacted: at once only with many small files, else after an interval.
    assert due(now=t, loose=50) is None
    assert due(now=t, loose=51) == "full"
    assert due(now=t + HOUR, loose=2) == "full"
    # Otherwise one interval after the last full claim, whoever made it, with work to do.
    finished: dict[str, Any] = {"claimed": t, "done": t, "last_full": t}
    assert due(now=t + HOUR - 1, started=t - 9 * HOUR, loose=500, **finished) is None
    assert due(now=t + HOUR, started=t + HOUR, loose=2, **finished) == "full"
    assert due(now=t + 9 * HOUR, loose=1, small=1, **finished) is None
    off = POLICY._replace(compact_every=0)
    assert due(policy=off, now=t, loose=99, small=999) is None
    # More small files than compact_max_files: a quick compaction, as soon as the last is done.
    assert due(now=t + 1, loose=101, small=101, **finished) == "quick"
    assert due(now=t + 1, loose=101, small=100, **finished) is None
    never = POLICY._replace(compact_max_files=0)
    assert due(policy=never, now=t + 1, loose=5000, small=5000, **finished) is None
    # A claim without its done marker: someone may be compacting; after 5 minutes, a dead one.
    running: dict[str, Any] = {"claimed": t, "done": t - 60, "last_full": t - 60}
    assert due(now=t + 299, loose=500, small=500, **running) is None
    assert due(now=t + 300, loose=500, small=500, **running) == "quick"
    assert due(now=t + HOUR, loose=500, small=500, **running) == "full"

    assert checkpoint_due(POLICY, version=99, last_checkpoint=-1)
    assert not checkpoint_due(POLICY, version=198, last_checkpoint=99)
    assert checkpoint_due(POLICY, version=199, last_checkpoint=99)
    assert not checkpoint_due(
        POLICY._replace(checkpoint_every_commits=0), version=9, last_checkpoint=-1
    )

    assert vacuum_due(POLICY, now=t, last=None)
    assert not vacuum_due(POLICY, now=t + 24 * HOUR - 1, last=t)
    assert vacuum_due(POLICY, now=t + 24 * HOUR, last=t)
    assert not vacuum_due(POLICY._replace(vacuum_every=0), now=t, last=None)


def test_maintenance_settings(tmp_path: Path) -> None:
    settings = msgspec.convert(
        {
            "inventory_uri": "i",
            "events_uri": "e",
            "compact_every": "2h",
            "vacuum_every": "12h",
            "vacuum_retention": "30d",
            "checkpoint_every_commits": 20,
        },
        DeltaSettings,
        dec_hook=dec_hook,
    )
    assert (settings.compact_every, settings.vacuum_every) == (7200.0, 43200.0)
    assert settings.vacuum_retention == 30 * 86400.0
    defaults = DeltaSettings(inventory_uri="i", events_uri="e")
    assert MaintenancePolicy.from_settings(defaults, "inventory") == POLICY
    with pytest.raises(ConfigError, match=r"inventory\.compact_every"):
        make(tmp_path, Clock(), compact_every=299.0)
    make(tmp_path, Clock(), compact_every=0.0)  # off is fine
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(
            {"inventory_uri": "i", "events_uri": "e", "compact_min_files": -1}, DeltaSettings
        )


async def test_compaction_keeps_rows_and_transaction_versions(tmp_path: Path) -> None:
    clock = Clock()
    inventory = make(tmp_path, clock, vacuum_every=0.0)
    with trio.fail_after(TIMEOUT):
        await fill(inventory, 60)
        before = [live_files(t) for t in tables(tmp_path)]
        await inventory.maintain()  # first call, never compacted, 60 > 50 small files: now

        assert before == [60, 60]
        assert [live_files(t) for t in tables(tmp_path)] == [1, 1]
        for table in tables(tmp_path):
            # The claim, OPTIMIZE, the done marker.
            assert operations(table)[-3:] == ["WRITE", "OPTIMIZE", "WRITE"]
            for app_id in (COMPACTION_APP_ID, FULL_COMPACTION_APP_ID, COMPACTION_DONE_APP_ID):
                assert table.transaction_version(app_id) == int(clock.now * 1000)
        expected_rows = sorted(inventory_row(i) for i in range(120))
        assert sorted(await inventory.read_inventory()) == expected_rows
        assert sorted(await inventory.read_events()) == sorted(event_row(i) for i in range(120))
        assert await inventory.transaction_versions(["g:t:0", "g:t:1"]) == {
            "g:t:0": 59,
            "g:t:1": 590,
        }
        await inventory.aclose()

        restarted = make(tmp_path, clock)
        assert await restarted.transaction_versions(["g:t:0", "g:t:1"]) == {
            "g:t:0": 59,
            "g:t:1": 590,
        }
        assert sorted(await restarted.read_inventory()) == expected_rows
        await restarted.append([inventory_row(500)], {"g:t:0": 60})
        assert await restarted.landed_ids() == {f"ev-{i}" for i in [*range(120), 500]}
    assert DeltaTable(str(tmp_path / "inventory")).transaction_version("g:t:0") == 60


async def test_compaction_follows_the_schedule_in_the_table(tmp_path: Path) -> None:
    clock = Clock()
    a = make(tmp_path, clock, vacuum_every=0.0)
    inventory_table = tmp_path / "inventory"

    def compactions() -> int:
        return operations(DeltaTable(str(inventory_table))).count("OPTIMIZE")

    with trio.fail_after(TIMEOUT):
        await fill(a, 5)
        await a.maintain()  # few small files and no record: the clock starts now
        assert compactions() == 0
        clock.advance(HOUR - 1)
        await a.maintain()
        assert compactions() == 0
        clock.advance(1)
        await a.maintain()
        assert compactions() == 1

        await fill(a, 5, start=5)
        clock.advance(HOUR - 1)
        await a.maintain()
        assert compactions() == 1
        # Another daemon starting now reads the last compaction from the table, not its start.
        b = make(tmp_path, clock, vacuum_every=0.0)
        await b.maintain()
        assert compactions() == 1
        clock.advance(1)
        await b.maintain()
        await a.maintain()
        assert compactions() == 2  # one of the two, not both
        assert live_files(DeltaTable(str(inventory_table))) == 1
        assert len(await a.read_inventory()) == 20


async def test_too_many_small_files_are_compacted_by_their_writer(tmp_path: Path) -> None:
    # No maintain() call and no time passing: the appends themselves look every 10 commits,
    # and a finished compaction does not hold back the next (the done marker).
    clock = Clock()
    inventory = make(tmp_path, clock, vacuum_every=0.0, compact_max_files=20)
    inventory_table = tmp_path / "inventory"
    with trio.fail_after(TIMEOUT):
        await fill(inventory, 29)
        assert live_files(DeltaTable(str(inventory_table))) == 29  # 20 at the last look
        await fill(inventory, 1, start=29)  # the 30th commit: 30 > 20 small files
        table = DeltaTable(str(inventory_table))
        assert live_files(table) == 1
        assert operations(table)[-3:] == ["WRITE", "OPTIMIZE", "WRITE"]
        assert table.transaction_version(FULL_COMPACTION_APP_ID) is None  # a quick one
        await fill(inventory, 20, start=30)  # 21 small files at the 50th commit
        assert live_files(DeltaTable(str(inventory_table))) == 1
        assert sorted(await inventory.read_inventory()) == sorted(
            inventory_row(i) for i in range(100)
        )
    assert operations(DeltaTable(str(inventory_table))).count("OPTIMIZE") == 2
    assert operations(DeltaTable(str(tmp_path / "events"))).count("OPTIMIZE") == 2


async def test_a_quick_compaction_leaves_large_files_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    inventory = make(tmp_path, clock, vacuum_every=0.0, compact_max_files=5)
    inventory_table = tmp_path / "inventory"
    with trio.fail_after(TIMEOUT):
        await inventory.append([inventory_row(i) for i in range(2000)], {"p": 0})
        [large] = DeltaTable(str(inventory_table)).file_uris()
        small_rows = [inventory_row(i) for i in range(2000, 2002)]
        await inventory.append(small_rows, {"p": 1})
        sizes = pa.table(DeltaTable(str(inventory_table)).get_add_actions(flatten=True))
        large_size, small_size = sorted(sizes.column("size_bytes").to_pylist(), reverse=True)
        monkeypatch.setattr(lakeferry_delta.maintenance, "QUICK_TARGET_SIZE", large_size)
        for i in range(2002, 2010):
            await inventory.append([inventory_row(i)], {"p": i})  # 10 commits: 9 small files
        table = DeltaTable(str(inventory_table))
        assert operations(table).count("OPTIMIZE") == 1
        assert large in table.file_uris()  # not rewritten
        assert live_files(table) == 2
        # The hourly full compaction merges everything below the table's target.
        clock.advance(HOUR)
        await inventory.maintain()
        assert live_files(DeltaTable(str(inventory_table))) == 1
        assert len(await inventory.read_inventory()) == 2010
    assert small_size < large_size


async def test_a_claim_without_its_done_marker_holds_compaction_back(tmp_path: Path) -> None:
    # Another daemon claimed and died (or is still compacting): nobody compacts for 5 minutes.
    clock = Clock()
    inventory = make(tmp_path, clock, vacuum_every=0.0, compact_max_files=5)
    uri = str(tmp_path / "inventory")
    with trio.fail_after(TIMEOUT):
        await inventory.append([inventory_row(0)], {"p": 0})
        lakeferry_delta.maintenance.TableMaintainer._claim(
            inventory._inventory_maintainer, DeltaTable(uri), [COMPACTION_APP_ID], clock.now
        )
        clock.advance(299)
        await fill(inventory, 10, start=1)
        assert operations(DeltaTable(uri)).count("OPTIMIZE") == 0
        assert live_files(DeltaTable(uri)) == 11
        clock.advance(1)
        await fill(inventory, 9, start=11)  # the 20th commit looks again
    assert operations(DeltaTable(uri)).count("OPTIMIZE") == 1
    assert live_files(DeltaTable(uri)) == 1


async def test_the_log_is_kept_for_log_retention(tmp_path: Path) -> None:
    # deltalake lists the whole _delta_log folder on every commit: a log kept 30 days (its
    # default) makes a commit slower by the day. lakeferry's tables keep it log_retention.
    clock = Clock()
    inventory = make(tmp_path, clock, compact_every=0.0, vacuum_every=0.0)
    log = tmp_path / "inventory" / "_delta_log"
    with trio.fail_after(TIMEOUT):
        await fill(inventory, 25)
        table = DeltaTable(str(tmp_path / "inventory"))
        assert table.metadata().configuration[LOG_RETENTION_KEY] == "interval 900 seconds"
        # When deltalake writes a checkpoint, it deletes the log before the newest checkpoint
        # older than the retention (the clock here is the files' mtime: make them old).
        for entry in log.iterdir():
            os.utime(entry, (entry.stat().st_atime - 3600, entry.stat().st_mtime - 3600))
        await fill(inventory, 10, start=25)
        versions = sorted(int(entry.stem) for entry in log.glob("*.json"))
        assert versions == list(range(19, 36))  # with 30 days, 0 to 35 stay
        assert len(await inventory.read_inventory()) == 70
        assert await inventory.transaction_versions(["g:t:0"]) == {"g:t:0": 34}


async def test_maintenance_sets_the_log_retention_of_an_existing_table(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    older = make(tmp_path, clock, log_retention=0.0)  # 0: the table's own (30 days)
    with trio.fail_after(TIMEOUT):
        await fill(older, 2)
        await older.maintain()
        table = DeltaTable(str(tmp_path / "inventory"))
        assert LOG_RETENTION_KEY not in table.metadata().configuration
        current = make(tmp_path, clock, log_retention=3600.0)
        with caplog.at_level(logging.INFO, logger=LOGGER):
            await current.maintain()
            await current.maintain()
        for path in ("inventory", "events"):
            configuration = DeltaTable(str(tmp_path / path)).metadata().configuration
            assert configuration[LOG_RETENTION_KEY] == "interval 3600 seconds"
        assert caplog.text.count("log retention interval 3600 seconds") == 2  # once per table
        assert len(await current.read_inventory()) == 4


async def test_two_daemons_never_compact_the_same_files_twice(tmp_path: Path) -> None:
    clock = Clock()
    daemons = [make(tmp_path, clock, vacuum_every=0.0) for _ in range(3)]
    with trio.fail_after(TIMEOUT):
        for round_ in range(3):
            await fill(daemons[0], 51, start=51 * round_)
            clock.advance(HOUR)
            async with trio.open_nursery() as nursery:
                for daemon in daemons:
                    nursery.start_soon(daemon.maintain)
            for table in tables(tmp_path):
                assert operations(table).count("OPTIMIZE") == round_ + 1
                assert table.count() == 102 * (round_ + 1)
        assert await daemons[0].landed_ids() == {f"ev-{i}" for i in range(306)}


async def test_a_claim_lost_to_another_daemon_means_no_compaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Deterministic version of the race: another daemon claims between our look at the table
    # (counting its small files) and our claim.
    clock = Clock()
    inventory = make(tmp_path, clock, vacuum_every=0.0)
    count = lakeferry_delta.maintenance._small_files
    uri = str(tmp_path / "inventory")

    def count_while_another_claims(table: Any, *limits: int) -> list[int]:
        other = DeltaTable(uri)  # same snapshot as ours: it claims the compaction first
        lakeferry_delta.maintenance.TableMaintainer._claim(
            inventory._inventory_maintainer, other, [COMPACTION_APP_ID], clock.now
        )
        return count(table, *limits)

    with trio.fail_after(TIMEOUT):
        await fill(inventory, 55)
        monkeypatch.setattr(lakeferry_delta.maintenance, "_small_files", count_while_another_claims)
        with caplog.at_level(logging.INFO, logger=LOGGER):
            await inventory.maintain()
    assert operations(DeltaTable(uri)).count("OPTIMIZE") == 0
    assert "another writer is compacting" in caplog.text
    assert "OPTIMIZE" in operations(DeltaTable(str(tmp_path / "events")))  # not claimed there


def test_deltalake_lets_two_compactions_of_the_same_files_commit(tmp_path: Path) -> None:
    # Why compactions are claimed (lakeferry_delta.maintenance): deltalake 1.6.6's conflict
    # checker lets a second OPTIMIZE remove files a concurrent one already removed, and the
    # rows are then in the table twice. If this starts failing, deltalake has fixed it.
    uri = str(tmp_path / "t")
    for i in range(5):
        write_deltalake(uri, pa.table({"a": [i]}), mode="append")
    first, second = DeltaTable(uri), DeltaTable(uri)
    first.optimize.compact()
    second.optimize.compact()
    assert DeltaTable(uri).count() == 10


async def test_compaction_beside_concurrent_appends(tmp_path: Path) -> None:
    # The results stage of another daemon appends (own DeltaTable object and thread) while
    # this one compacts again and again: no row is lost or doubled, every version survives.
    clock = Clock()
    maintainer = make(tmp_path, clock, vacuum_every=0.0)
    writer = make(tmp_path, clock)
    batches = 40
    with trio.fail_after(TIMEOUT):
        await fill(writer, 1)  # ev-0 and ev-1
        done = trio.Event()

        async def append_all() -> None:
            for i in range(1, batches):
                await writer.append([inventory_row(i + 1)], {"p": i})
                await writer.append_events([event_row(i + 1)])
            done.set()

        async def compact_until_done() -> None:
            while not done.is_set():
                clock.advance(HOUR)
                await maintainer.maintain()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(append_all)
            nursery.start_soon(compact_until_done)
        clock.advance(HOUR)
        await maintainer.maintain()
        ids = [row.event_id for row in await maintainer.read_inventory()]
        assert sorted(ids) == sorted(f"ev-{i}" for i in range(batches + 1))
        assert await maintainer.transaction_versions(["p", "g:t:0"]) == {
            "p": batches - 1,
            "g:t:0": 0,
        }
        assert len(await maintainer.read_events()) == batches + 1
    inventory_table = DeltaTable(str(tmp_path / "inventory"))
    assert operations(inventory_table).count("OPTIMIZE") >= 2
    assert live_files(inventory_table) == 1


async def test_a_failed_compaction_is_retried_at_the_next_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    inventory = make(tmp_path, clock, vacuum_every=0.0)
    real = TableOptimizer.compact

    def conflict(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise DeltaError("Failed to commit transaction: simulated conflict")

    with trio.fail_after(TIMEOUT):
        await fill(inventory, 55)
        monkeypatch.setattr(TableOptimizer, "compact", conflict)
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            await inventory.maintain()  # does not raise: logged, left for the next call
        assert "maintenance of" in caplog.text
        assert "compact" in caplog.text
        assert "simulated conflict" in caplog.text
        assert [live_files(t) for t in tables(tmp_path)] == [55, 55]
        # An append goes on as usual.
        await inventory.append([inventory_row(1000)], {"g:t:0": 55})

        monkeypatch.setattr(TableOptimizer, "compact", real)
        await inventory.maintain()  # same minute, the claim is ours and fresh: retried anyway
    assert [live_files(t) for t in tables(tmp_path)] == [1, 1]
    assert len(await inventory.read_inventory()) == 111


async def test_checkpoint_when_deltalake_has_not_written_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A table created with deltalake's default interval (100; by another tool or an older
    # lakeferry): lakeferry creates its own with 10.
    monkeypatch.setattr(lakeferry_delta.table, "CHECKPOINT_INTERVAL", 100)
    clock = Clock()
    inventory = make(tmp_path, clock, compact_every=0.0, vacuum_every=0.0)
    log = tmp_path / "inventory" / "_delta_log"
    with trio.fail_after(TIMEOUT):
        await fill(inventory, 12)
        await inventory.maintain()  # 12 commits: deltalake's own interval (100) not reached
        assert not (log / "_last_checkpoint").exists()

        tight = make(
            tmp_path, clock, compact_every=0.0, vacuum_every=0.0, checkpoint_every_commits=10
        )
        await tight.maintain()
        version = DeltaTable(str(tmp_path / "inventory")).version()
        assert json.loads((log / "_last_checkpoint").read_text())["version"] == version
        assert (log / f"{version:020d}.checkpoint.parquet").exists()
        await tight.maintain()  # nothing new: no second checkpoint
        assert len(list(log.glob("*.checkpoint.parquet"))) == 1
        await fill(tight, 10, start=12)
        await tight.maintain()
        assert len(list(log.glob("*.checkpoint.parquet"))) == 2
        assert (tmp_path / "events" / "_delta_log" / "_last_checkpoint").exists()
        # The checkpoint carries the application transactions: a fresh reader finds them.
        fresh = make(tmp_path, clock)
        assert await fresh.transaction_versions(["g:t:0"]) == {"g:t:0": 21}


async def test_vacuum_deletes_removed_files_after_the_retention(tmp_path: Path) -> None:
    clock = Clock()
    # Defaults: a retention of 7 days keeps what compaction removed a moment ago.
    inventory = make(tmp_path, clock)
    with trio.fail_after(TIMEOUT):
        await fill(inventory, 55)
        await inventory.maintain()
        assert parquet_files(tmp_path / "inventory") == 56  # 55 removed + 1 compacted, all kept
        for table in tables(tmp_path):
            assert table.transaction_version(VACUUM_APP_ID) == int(clock.now * 1000)
        clock.advance(24 * HOUR)
        await inventory.maintain()  # due again, and still nothing is old enough
        assert parquet_files(tmp_path / "inventory") == 56
        await inventory.aclose()

        # The test's stand-in for "a week later": no retention, enforcement off on purpose.
        clock.advance(24 * HOUR)
        eager = make(tmp_path, clock, vacuum_retention=0.0, vacuum_enforce_retention=False)
        await eager.maintain()
        assert parquet_files(tmp_path / "inventory") == 1
        assert parquet_files(tmp_path / "events") == 1
        assert sorted(await eager.read_inventory()) == sorted(inventory_row(i) for i in range(110))
        assert await eager.transaction_versions(["g:t:1"]) == {"g:t:1": 540}
        assert "VACUUM END" in operations(DeltaTable(str(tmp_path / "inventory")))


async def test_vacuum_never_goes_below_the_table_minimum_unless_told(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    inventory = make(tmp_path, clock, vacuum_retention=0.0)  # enforcement stays on
    with trio.fail_after(TIMEOUT):
        await fill(inventory, 55)
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            await inventory.maintain()
            clock.advance(24 * HOUR)
            await inventory.maintain()
    assert parquet_files(tmp_path / "inventory") == 56  # nothing deleted
    warnings = [r for r in caplog.records if "below the table's minimum" in r.getMessage()]
    assert len(warnings) == 2  # once per table, not once per call
    assert "failed" not in caplog.text


async def test_maintain_creates_no_table(tmp_path: Path) -> None:
    inventory = make(tmp_path, Clock())
    with trio.fail_after(TIMEOUT):
        await inventory.maintain()
    assert not DeltaTable.is_deltatable(str(tmp_path / "inventory"))
    assert not DeltaTable.is_deltatable(str(tmp_path / "events"))


async def test_date_partitioned_tables_are_compacted_per_partition(tmp_path: Path) -> None:
    clock = Clock()
    inventory = make(tmp_path, clock, partition_by_date=True, vacuum_every=0.0)
    with trio.fail_after(TIMEOUT):
        for i in range(60):
            await inventory.append([inventory_row(i, day=i % 2)], {"p": i})
        await inventory.maintain()
        assert live_files(DeltaTable(str(tmp_path / "inventory"))) == 2  # one per day
        assert len(await inventory.read_inventory()) == 60
        assert await inventory.transaction_versions(["p"]) == {"p": 59}


def untracked(path: Path) -> list[str]:
    """Parquet files in a table's folder that its log does not name."""
    named = set(DeltaTable(str(path)).file_uris())
    found = {str(p) for p in path.glob("*.parquet")}
    return sorted(p for p in found if p not in named and f"file://{p}" not in named)


async def test_vacuum_deletes_the_parquet_file_of_a_refused_commit(tmp_path: Path) -> None:
    """A results process frozen mid-commit past its session timeout is overtaken; when it
    resumes, deltalake writes its Parquet file and then refuses the commit (another commit
    stored the same application id). The log never names that file: a full vacuum deletes it
    once it is older than the retention (younger, it may be another writer's commit under
    way)."""
    from deltalake import CommitProperties, Transaction

    from lakeferry_delta.schema import INVENTORY_LAYOUT, to_arrow

    clock = Clock()
    inventory = make(tmp_path, clock, compact_every=0.0)
    with trio.fail_after(TIMEOUT):
        await inventory.append([inventory_row(0)], {"g:t:0": 0})
        frozen = DeltaTable(str(tmp_path / "inventory"))  # read the table, then "froze"
        await make(tmp_path, clock).append([inventory_row(1)], {"g:t:0": 1})  # the new owner
        data = to_arrow(INVENTORY_LAYOUT, [inventory_row(1)], with_date=False)

        with pytest.raises(CommitFailedError, match=r"(?i)concurrent transaction"):
            write_deltalake(
                frozen, data, mode="append",
                commit_properties=CommitProperties(app_transactions=[Transaction("g:t:0", 1)]),
            )  # fmt: skip
        [orphan] = untracked(tmp_path / "inventory")
        await inventory.maintain()  # young: kept
        assert untracked(tmp_path / "inventory") == [orphan]
        clock.advance(24 * HOUR)
        # The test's stand-in for "a week later": no retention, enforcement off on purpose.
        eager = make(tmp_path, clock, compact_every=0.0, vacuum_retention=0.0,
                     vacuum_enforce_retention=False)  # fmt: skip
        await eager.maintain()
        assert untracked(tmp_path / "inventory") == []
        assert sorted(r.event_id for r in await eager.read_inventory()) == ["ev-0", "ev-1"]
