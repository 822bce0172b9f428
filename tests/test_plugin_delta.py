"""The ``delta`` inventory on real Delta tables in tmp_path."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pytest
import trio
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

import lakeferry_delta
from helpers.delta import event_row, inventory_row
from lakeferry.api import (
    ConfigError,
    EventRow,
    Inventory,
    InventoryRow,
    PluginContext,
    TransientError,
)
from lakeferry_delta import ConflictingTransactions, DeltaInventory, DeltaSettings
from lakeferry_delta.schema import EVENTS_SCHEMA, INVENTORY_SCHEMA, TableLayout
from lakeferry_delta.table import DeltaTableHandle

TIMEOUT = 20


def make_inventory(tmp_path: Path, **overrides: Any) -> DeltaInventory:
    settings = DeltaSettings(
        inventory_uri=str(tmp_path / "inventory"),
        events_uri=str(tmp_path / "events"),
        **overrides,
    )
    context = PluginContext(state_dir=tmp_path / "state", logger=logging.getLogger("test.delta"))
    return DeltaInventory(settings, context)


def registered() -> list[tuple[str, Any, type[msgspec.Struct]]]:
    calls: list[tuple[str, Any, type[msgspec.Struct]]] = []
    lakeferry_delta.lakeferry_register_inventories(
        register=lambda kind, factory, settings: calls.append((kind, factory, settings))
    )
    return calls


def test_registers_the_delta_kind(tmp_path: Path) -> None:
    [(kind, factory, settings_type)] = registered()
    assert kind == "delta"
    assert settings_type is DeltaSettings
    settings = msgspec.convert(
        {"inventory_uri": str(tmp_path / "i"), "events_uri": str(tmp_path / "e")}, settings_type
    )
    assert settings.storage_options == {}
    assert settings.partition_by_date is False
    context = PluginContext(state_dir=tmp_path, logger=logging.getLogger("test"))
    assert isinstance(factory(settings, context), DeltaInventory)
    typed: Inventory = DeltaInventory(settings, context)  # mypy checks the protocol
    assert typed is not None
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"inventory_uri": "i", "events_uri": "e", "partition": True}, DeltaSettings)


def test_schemas_match_the_row_types() -> None:
    assert tuple(INVENTORY_SCHEMA.names) == InventoryRow._fields
    assert tuple(EVENTS_SCHEMA.names) == EventRow._fields


async def test_append_records_transactions_in_the_same_commit(tmp_path: Path) -> None:
    inventory = make_inventory(tmp_path)
    with trio.fail_after(TIMEOUT):
        assert await inventory.transaction_versions(["g:t:0", "g:t:1"]) == {}
        await inventory.append([inventory_row(i) for i in range(3)], {"g:t:0": 41, "g:t:1": 7})
        assert await inventory.transaction_versions(["g:t:0", "g:t:1", "g:t:2"]) == {
            "g:t:0": 41,
            "g:t:1": 7,
        }
        assert sorted(await inventory.read_inventory()) == [inventory_row(i) for i in range(3)]

    fresh = DeltaTable(str(tmp_path / "inventory"))
    assert fresh.version() == 1  # version 0 is the create; rows and txns are one commit
    assert fresh.transaction_version("g:t:0") == 41
    assert fresh.transaction_version("g:t:1") == 7
    assert fresh.history(1)[0]["operationMetrics"]["num_added_rows"] == 3


async def test_landed_ids_reads_the_event_ids(tmp_path: Path) -> None:
    inventory = make_inventory(tmp_path)
    with trio.fail_after(TIMEOUT):
        assert await inventory.landed_ids() == set()
        await inventory.append([inventory_row(i) for i in range(5)], {"p": 1})
        await inventory.append([inventory_row(i) for i in range(5, 7)], {"p": 2})
        assert await inventory.landed_ids() == {f"ev-{i}" for i in range(7)}


async def test_lookup_reads_one_ids_rows_from_both_tables(tmp_path: Path) -> None:
    """The console's trace: one id's rows, read with a filter; an id with SQL in it is a
    value, not a query."""
    inventory = make_inventory(tmp_path)
    quoted = inventory_row(2)._replace(event_id="it's'; DROP TABLE t; --")
    with trio.fail_after(TIMEOUT):
        assert await inventory.lookup("ev-1") == ([], [])  # no tables yet
        await inventory.append([inventory_row(i) for i in range(2)] + [quoted], {"p": 1})
        await inventory.append_events([event_row(i) for i in range(3)])
        assert await inventory.lookup("ev-1") == ([inventory_row(1)], [event_row(1)])
        assert await inventory.lookup(quoted.event_id) == ([quoted], [])
        assert await inventory.lookup("ev-9") == ([], [])
        assert await inventory.lookup("ev-") == ([], [])  # equality, not a prefix


async def test_tables_have_explicit_schemas(tmp_path: Path) -> None:
    inventory = make_inventory(tmp_path)
    with trio.fail_after(TIMEOUT):
        await inventory.landed_ids()
        await inventory.read_events()
    ts = pa.timestamp("us", tz="UTC")
    inv = pa.schema(DeltaTable(str(tmp_path / "inventory")).schema().to_arrow())
    assert inv.names == list(InventoryRow._fields)
    for name in ("event_created_at", "downloaded_at", "uploaded_at", "committed_at"):
        assert inv.field(name).type == ts
    assert inv.field("size").type == pa.int64()
    assert inv.field("skipped_upload").type == pa.bool_()
    assert inv.field("metadata_json").type == pa.string()
    assert not any(field.nullable for field in inv)
    events = pa.schema(DeltaTable(str(tmp_path / "events")).schema().to_arrow())
    assert events.names == list(EventRow._fields)
    assert events.field("received_at").type == ts
    assert events.field("raw_json").type == pa.string()


async def test_events_round_trip_one_commit_per_call(tmp_path: Path) -> None:
    inventory = make_inventory(tmp_path)
    with trio.fail_after(TIMEOUT):
        await inventory.append_events([])  # nothing to write: no table, no commit
        assert not DeltaTable.is_deltatable(str(tmp_path / "events"))
        await inventory.append_events([event_row(i) for i in range(4)])
        await inventory.append_events([event_row(4)])
        assert sorted(await inventory.read_events()) == [event_row(i) for i in range(5)]
    assert DeltaTable(str(tmp_path / "events")).version() == 2


async def test_reopen_after_restart(tmp_path: Path) -> None:
    first = make_inventory(tmp_path)
    with trio.fail_after(TIMEOUT):
        await first.append([inventory_row(0)], {"p": 10})
        await first.append_events([event_row(0)])
        await first.aclose()

        second = make_inventory(tmp_path)
        assert await second.transaction_versions(["p"]) == {"p": 10}
        assert await second.landed_ids() == {"ev-0"}
        assert await second.read_events() == [event_row(0)]
        await second.append([inventory_row(1)], {"p": 11})
        assert sorted(await second.read_inventory()) == [inventory_row(0), inventory_row(1)]
        await second.aclose()


async def test_transactions_alone_are_committed(tmp_path: Path) -> None:
    inventory = make_inventory(tmp_path)
    with trio.fail_after(TIMEOUT):
        await inventory.append([], {"p": 3})
        assert await inventory.transaction_versions(["p"]) == {"p": 3}
        assert await inventory.read_inventory() == []
        version = DeltaTable(str(tmp_path / "inventory")).version()
        await inventory.append([], {})  # nothing at all: no commit
    assert DeltaTable(str(tmp_path / "inventory")).version() == version


async def test_append_refuses_a_version_not_past_the_stored_one(tmp_path: Path) -> None:
    inventory = make_inventory(tmp_path)
    with trio.fail_after(TIMEOUT):
        await inventory.append([inventory_row(0)], {"p": 5})
        with pytest.raises(ConflictingTransactions) as caught:
            await inventory.append([inventory_row(1)], {"p": 5})
        assert isinstance(caught.value, TransientError)
        assert caught.value.reason == "inventory_conflict"
        assert await inventory.landed_ids() == {"ev-0"}


async def test_a_writer_that_missed_another_commit_is_refused(tmp_path: Path) -> None:
    # Member A owned the partition and is finishing its last commit while member B, the new
    # owner, has already read the versions. B must not write offsets A just wrote.
    a = make_inventory(tmp_path)
    b = make_inventory(tmp_path)
    with trio.fail_after(TIMEOUT):
        await a.append([inventory_row(i) for i in range(3)], {"p": 2})
        assert await b.transaction_versions(["p"]) == {"p": 2}
        await a.append([inventory_row(i) for i in range(3, 5)], {"p": 4})
        with pytest.raises(ConflictingTransactions, match="last saw 2"):
            await b.append([inventory_row(i) for i in range(3, 6)], {"p": 5})
        # The recovery the results stage performs: re-read, drop what is stored, append.
        assert await b.transaction_versions(["p"]) == {"p": 4}
        await b.append([inventory_row(5)], {"p": 5})
        ids = [row.event_id for row in await a.read_inventory()]
    assert sorted(ids) == sorted(f"ev-{i}" for i in range(6))  # no duplicates


async def test_deltalake_rejects_a_concurrent_transaction_on_the_same_app_id(
    tmp_path: Path,
) -> None:
    # The window between append's refresh and its commit is covered by deltalake's conflict
    # checker; pin that behaviour (and our mapping of it) against deltalake upgrades.
    uri = str(tmp_path / "inventory")
    handle = DeltaTableHandle(
        uri,
        TableLayout(INVENTORY_SCHEMA, InventoryRow, "committed_date", "committed_at"),
        storage_options={},
        partition_by_date=False,
        logger=logging.getLogger("test"),
        setting="inventory.inventory_uri",
    )
    empty = INVENTORY_SCHEMA.empty_table()

    def race(table: Any) -> None:
        other = DeltaTable(uri)  # another process, same snapshot
        txn = CommitProperties(app_transactions=[Transaction("p", 1)])
        write_deltalake(other, empty, mode="append", commit_properties=txn)
        txn = CommitProperties(app_transactions=[Transaction("p", 2)])
        write_deltalake(table, empty, mode="append", commit_properties=txn)

    def unrelated(table: Any) -> None:
        other = DeltaTable(uri)
        txn = CommitProperties(app_transactions=[Transaction("q", 1)])
        write_deltalake(other, empty, mode="append", commit_properties=txn)
        txn = CommitProperties(app_transactions=[Transaction("r", 1)])
        write_deltalake(table, empty, mode="append", commit_properties=txn)

    with trio.fail_after(TIMEOUT):
        with pytest.raises(ConflictingTransactions, match="concurrent"):
            await handle.run(race)
        await handle.run(lambda table: table.update_incremental())
        await handle.run(unrelated)  # different app ids: deltalake retries, both commit
    fresh = DeltaTable(uri)
    assert (fresh.transaction_version("p"), fresh.transaction_version("q")) == (1, 1)
    assert fresh.transaction_version("r") == 1


async def test_concurrent_writers_do_not_lose_rows(tmp_path: Path) -> None:
    # Two results processes (own DeltaTable objects, own threads) appending at the same time.
    writers = [make_inventory(tmp_path), make_inventory(tmp_path)]
    batches = 8

    async def write(n: int, inventory: DeltaInventory) -> None:
        for b in range(batches):
            base = (n * batches + b) * 10
            rows = [inventory_row(base + i) for i in range(10)]
            await inventory.append(rows, {f"p{n}": b})
            await inventory.append_events([event_row(base + i) for i in range(10)])

    with trio.fail_after(TIMEOUT):
        # Create the tables first: two processes racing on the very first commit is covered
        # by DeltaTableHandle._open but is not what this test is about.
        await writers[0].landed_ids()
        await writers[0].read_events()
        async with trio.open_nursery() as nursery:
            for n, inventory in enumerate(writers):
                nursery.start_soon(write, n, inventory)
        assert await writers[1].transaction_versions(["p0", "p1"]) == {
            "p0": batches - 1,
            "p1": batches - 1,
        }
        assert await writers[0].landed_ids() == {f"ev-{i}" for i in range(2 * batches * 10)}
        assert len(await writers[1].read_events()) == 2 * batches * 10


async def test_partition_by_date(tmp_path: Path) -> None:
    inventory = make_inventory(tmp_path, partition_by_date=True)
    rows = [inventory_row(0), inventory_row(1, day=1)]
    with trio.fail_after(TIMEOUT):
        await inventory.append(rows, {"p": 1})
        await inventory.append_events([event_row(0)])
        assert sorted(await inventory.read_inventory()) == rows
        assert await inventory.read_events() == [event_row(0)]
    table = DeltaTable(str(tmp_path / "inventory"))
    assert table.metadata().partition_columns == ["committed_date"]
    assert DeltaTable(str(tmp_path / "events")).metadata().partition_columns == ["received_date"]

    # A process configured without partitioning follows the existing table's layout.
    plain = make_inventory(tmp_path)
    with trio.fail_after(TIMEOUT):
        await plain.append([inventory_row(2)], {"p": 2})
        assert len(await plain.read_inventory()) == 3


async def test_a_foreign_table_is_a_config_error(tmp_path: Path) -> None:
    uri = tmp_path / "inventory"
    write_deltalake(str(uri), pa.table({"something": ["else"]}))
    inventory = make_inventory(tmp_path)
    with trio.fail_after(TIMEOUT), pytest.raises(ConfigError, match="missing columns"):
        await inventory.landed_ids()


_READER_SCRIPT = """
import logging, os, sys, threading
from pathlib import Path
import trio
sys.path.insert(0, sys.argv[2])
from helpers.delta import event_row, inventory_row
from lakeferry.api import PluginContext
from lakeferry_delta import DeltaInventory, DeltaSettings

def threads():
    names = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/comm") as fh:
            names[tid] = fh.read().strip()
    return names

async def main():
    root = Path(sys.argv[1])
    settings = DeltaSettings(inventory_uri=str(root / "i"), events_uri=str(root / "e"))
    inventory = DeltaInventory(settings, PluginContext(state_dir=root, logger=logging.getLogger()))
    for batch in range(4):  # several Parquet files: a scanner would fan out over threads
        rows = [inventory_row(batch * 10 + i) for i in range(10)]
        await inventory.append(rows, {"t": batch + 1})
        await inventory.append_events([event_row(batch * 10 + i) for i in range(10)])
    before = threads()
    assert len(await inventory.landed_ids()) == 40
    assert len(await inventory.read_inventory()) == 40
    assert len(await inventory.read_events()) == 40
    await inventory.aclose()
    # Threads Python does not know of, other than the Rust runtime's (tokio, jemalloc), are
    # Arrow C++'s: they inherit the name of the thread that started them, so names do not tell.
    python = {str(thread.native_id) for thread in threading.enumerate()}
    rust = ("tokio-rt-worker", "jemalloc_bg_thd")
    after = threads()
    print(sum(1 for t in after if t not in before and t not in python and after[t] not in rust))

trio.run(main)
"""


@pytest.mark.slow
def test_reading_starts_no_arrow_cpp_threads(tmp_path: Path) -> None:
    # Arrow C++'s dataset scanner leaves a thread pool that aborts the process at exit about one
    # time in five ("terminate called without an active exception", exit -6): the CLI's audit
    # died that way in CI. Reads go through DataFusion instead; its threads are Rust's.
    import subprocess
    import sys

    script = tmp_path / "reader.py"
    script.write_text(_READER_SCRIPT)
    helpers = Path(__file__).parent
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(helpers)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["0"]  # unnamed threads started by the reads


async def test_the_table_object_is_reopened_every_reopen_every_calls(tmp_path: Path) -> None:
    # An open DeltaTable keeps native memory per commit it has seen; a daemon that runs for
    # months reopens it now and then (lakeferry_delta.table.REOPEN_EVERY).
    from lakeferry_delta.table import REOPEN_EVERY

    handle = DeltaTableHandle(
        str(tmp_path / "t"),
        TableLayout(INVENTORY_SCHEMA, InventoryRow, "committed_date", "committed_at"),
        storage_options={},
        partition_by_date=False,
        logger=logging.getLogger("test"),
        setting="inventory.inventory_uri",
    )
    seen: list[Any] = []  # the table objects themselves (kept alive: no address reuse)
    with trio.fail_after(TIMEOUT):
        for _ in range(REOPEN_EVERY * 2):
            seen.append(await handle.run(lambda table: table))
    first, second = seen[0], seen[REOPEN_EVERY]
    assert all(table is first for table in seen[:REOPEN_EVERY])
    assert all(table is second for table in seen[REOPEN_EVERY:])
    assert second is not first


async def test_the_tables_it_creates_checkpoint_every_ten_commits(tmp_path: Path) -> None:
    """deltalake reads every commit since the last checkpoint at once, one blocking-pool thread
    each: with its default of 100 a results process ran ~92 threads (anonymous memory)."""
    inventory = make_inventory(tmp_path)
    with trio.fail_after(TIMEOUT):
        for i in range(12):
            await inventory.append([inventory_row(i)], {"g:t:0": i})
        await inventory.append_events([], {"g:e:0": 1})
    for name in ("inventory", "events"):
        table = DeltaTable(str(tmp_path / name))
        assert table.metadata().configuration["delta.checkpointInterval"] == "10"
    log = tmp_path / "inventory" / "_delta_log"
    assert len(list(log.glob("*.checkpoint.parquet"))) == 1  # one in 13 versions (was none)
    await inventory.aclose()
