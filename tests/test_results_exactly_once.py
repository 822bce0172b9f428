"""The results stage writes each landed file to the Delta inventory exactly once.

Redelivery is simulated the way it happens: the same bus records handled again after a restart
that lost the offset commit, and the same event arriving twice at different offsets.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from lakeferry.bus.base import Record
from lakeferry.components import PluginContext
from lakeferry.config import ResultsConfig
from lakeferry.logs import get_logger
from lakeferry.messages import RESULT, DownloadTask, Event, UploadResult
from lakeferry.metrics import Metrics
from lakeferry.registry import load_registry
from lakeferry.stages.results import ResultsStage

T = dt.datetime(2026, 11, 28, 8, 0, tzinfo=dt.UTC)


def inventory(tmp_path: Path) -> Any:
    reg = load_registry().get("inventory", "delta")
    settings = reg.settings_type(
        inventory_uri=str(tmp_path / "inv"), events_uri=str(tmp_path / "ev")
    )
    return reg.factory(settings, PluginContext(state_dir=tmp_path, logger=get_logger("test")))


def pipeline(inv: Any) -> Any:
    return SimpleNamespace(
        components=SimpleNamespace(inventory=inv),
        metrics=Metrics(),
        settings=SimpleNamespace(results=ResultsConfig()),
        group_for=lambda stage: f"lakeferry.{stage}",
        finished=lambda stage, outcome, seconds, event_id, attempt: None,
    )


def record(offset: int, event_id: str, partition: int = 0) -> tuple[Record, UploadResult]:
    result = UploadResult(
        task=DownloadTask(
            event=Event(id=event_id, url=f"https://h/{event_id}", created_at=T), received_at=T
        ),
        destination=f"{event_id}/f", size=10, sha256="b" * 64, downloaded_at=T, uploaded_at=T,
    )  # fmt: skip
    rec = Record(
        "downloads.results", partition, offset, event_id.encode(), RESULT.encode(result), {}, 0
    )
    return rec, result


async def test_redelivered_batch_after_restart_is_skipped(tmp_path: Path) -> None:
    inv = inventory(tmp_path)
    batch = [record(i, f"e{i}") for i in range(5)]
    stage = ResultsStage(pipeline(inv))
    await stage.load()
    await stage.flush(batch)
    # "Restart": a new stage over the same table; the bus offset commit was lost, so the same
    # five records and two new ones arrive again.
    restarted = ResultsStage(pipeline(inventory(tmp_path)))
    await restarted.load()
    await restarted.flush([*batch, record(5, "e5"), record(6, "e6")])
    rows = await inv.read_inventory()
    assert sorted(r.event_id for r in rows) == [f"e{i}" for i in range(7)]
    versions = await inv.transaction_versions(["lakeferry.results:downloads.results:0"])
    assert versions == {"lakeferry.results:downloads.results:0": 6}
    skipped = restarted.p.metrics.inventory_skipped.labels("offset")._value.get()  # the counter
    assert skipped == 5


async def test_same_event_twice_is_recorded_once(tmp_path: Path) -> None:
    inv = inventory(tmp_path)
    stage = ResultsStage(pipeline(inv))
    await stage.load()
    # One event delivered twice by its source lands on two offsets (and even two partitions).
    await stage.flush([record(0, "dup"), record(1, "dup"), record(0, "other", partition=1)])
    await stage.flush([record(2, "dup")])
    fresh = ResultsStage(pipeline(inventory(tmp_path)))
    await fresh.load()
    await fresh.flush([record(3, "dup")])
    rows = await inv.read_inventory()
    assert sorted(r.event_id for r in rows) == ["dup", "other"]


async def test_a_partition_handed_over_does_not_duplicate_rows(tmp_path: Path) -> None:
    """Member A lands an event; its partition moves to member B, which loaded the inventory
    before A's commit; the same event's second result must still be recorded once."""
    inv = inventory(tmp_path)
    member_b = ResultsStage(pipeline(inventory(tmp_path)))
    await member_b.load()  # B starts first: the table is empty
    member_a = ResultsStage(pipeline(inv))
    await member_a.load()
    await member_a.flush([record(0, "handed")])
    member_b.once.on_assign([record(0, "handed")[0].tp])  # the rebalance gives B the partition
    await member_b.flush([record(1, "handed"), record(2, "fresh")])
    rows = await inv.read_inventory()
    assert sorted(r.event_id for r in rows) == ["fresh", "handed"]


class Interleaved:
    """An inventory whose ``n``-th call (counting from 0) lets another writer commit first."""

    CALLS = frozenset({"read_state", "transaction_versions", "landed_ids", "append"})
    """Every inventory call the results stage makes, now and as it was."""

    def __init__(self, inner: Any, n: int, other: Any) -> None:
        self.inner, self.n, self.other, self.calls = inner, n, other, 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in self.CALLS:
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.calls == self.n:
                await self.other()
            self.calls += 1
            return await attr(*args, **kwargs)

        return call


async def flush_until_done(stage: ResultsStage, items: list[Any]) -> None:
    """What the batcher does: retry a failed flush (a conflict) until it goes through."""
    from lakeferry.errors import TransientError

    for _ in range(5):
        try:
            await stage.flush(items)
            return
        except TransientError:
            continue
    raise AssertionError("flush kept failing")


async def test_another_writer_committing_between_any_two_calls_lands_nothing_twice(
    tmp_path: Path,
) -> None:
    """Two daemons on one bus both produced a result for every event: x sits at offsets 0 and
    1 of one partition. Member A lands x (offset 0) at every possible moment of member B's
    flush of offsets 1 and 2; x must be in the inventory once. (B read the landed ids and the
    stored versions in two calls; A's commit between them let x in twice.)"""
    for n in range(4):
        root = tmp_path / f"n{n}"
        inv = inventory(root)
        member_a = ResultsStage(pipeline(inventory(root)))
        pipeline_b = pipeline(inv)
        member_b = ResultsStage(pipeline_b)
        await member_b.load()
        await member_a.load()
        member_b.once.on_assign([record(0, "x")[0].tp])

        async def a_commits(a: ResultsStage = member_a) -> None:
            await flush_until_done(a, [record(0, "x")])

        interleaved = Interleaved(inventory(root), n, a_commits)
        pipeline_b.components.inventory = interleaved
        await flush_until_done(member_b, [record(1, "x"), record(2, "y")])
        assert interleaved.calls > 0, "the stage writes through the interleaved inventory"
        if interleaved.calls <= n:  # B never got that far: A commits afterwards
            await a_commits()
        ids = sorted(r.event_id for r in await inv.read_inventory())
        assert ids == ["x", "y"], f"A committed before B's call {n}"


async def test_two_writers_racing_on_one_application_id_write_one_row_per_id(
    tmp_path: Path,
) -> None:
    """Two results stages, each in its own thread on its own table object, consume the same
    partition (as two daemons on one embedded bus did) where every event sits twice; batches
    of random sizes race. The table ends with one row per id."""
    import random

    import trio

    ids = [f"e{i}" for i in range(120)]
    stream = [record(offset, ids[offset // 2]) for offset in range(2 * len(ids))]
    rng = random.Random(7)

    async def member(stage: ResultsStage) -> None:
        await stage.load()
        position = 0
        while position < len(stream):
            size = rng.randint(1, 12)
            await flush_until_done(stage, stream[position : position + size])
            position += size
            if rng.random() < 0.2:
                stage.once.on_assign(
                    [stream[0][0].tp]
                )  # a rebalance: re-read before the next batch

    stages = [ResultsStage(pipeline(inventory(tmp_path))) for _ in range(2)]
    async with trio.open_nursery() as nursery:
        for stage in stages:
            nursery.start_soon(member, stage)
    rows = await inventory(tmp_path).read_inventory()
    assert sorted(r.event_id for r in rows) == sorted(ids)


# --- the events table: one row per intake record ---------------------------------------------


def pending(offset: int, event_id: str, origin: str | None, attempt: int = 0) -> Record:
    from lakeferry.messages import DOWNLOAD

    task = DownloadTask(
        event=Event(id=event_id, url=f"https://h/{event_id}", created_at=T),
        received_at=T, attempt=attempt, origin=origin,
    )  # fmt: skip
    return Record("downloads.pending", 0, offset, event_id.encode(), DOWNLOAD.encode(task), {}, 0)


def events_pipeline(inv: Any) -> Any:
    from lakeferry.config import IngestConfig

    p = pipeline(inv)
    p.settings.ingest = IngestConfig()
    return p


async def recorded(inv: Any) -> list[str]:
    return sorted(row.origin for row in await inv.read_events())


async def test_the_events_table_gets_one_row_per_intake_record(tmp_path: Path) -> None:
    """Found: every restart or redelivery added the same raw event again (two daemons on one
    bus wrote 1,200 rows for 300 ids). Redelivered pending records are skipped by offset,
    a second publish of one intake record by its origin; retries and replays are no rows."""
    from lakeferry.stages.events import EventsRecorder

    inv = inventory(tmp_path)
    first = EventsRecorder(events_pipeline(inv))
    await first.once.load()
    batch = [pending(i, f"e{i}", f"events.raw/0/{i}") for i in range(4)]
    await first.flush([(r, _row(r)) for r in batch])
    # Restart that lost the offset commit: the same records again, plus the ingest stage's
    # second publish of intake record 2 (it crashed before committing), a retry and a new one.
    again = [
        *batch,
        pending(4, "e2", "events.raw/0/2"),
        pending(5, "e1", "events.raw/0/1", attempt=1),
        pending(6, "e5", "events.raw/0/5"),
    ]
    restarted = EventsRecorder(events_pipeline(inventory(tmp_path)))
    await restarted.once.load()
    await restarted.flush([(r, _row(r)) for r in again])
    assert await recorded(inv) == [f"events.raw/0/{i}" for i in (0, 1, 2, 3, 5)]
    versions = await inv._events.versions(["lakeferry.events:downloads.pending:0"])
    assert versions == {"lakeferry.events:downloads.pending:0": 6}


async def test_two_recorders_racing_write_one_row_per_intake_record(tmp_path: Path) -> None:
    """Two daemons on one bus: both recorders consume every pending record, where each intake
    record was published twice (by both daemons' ingest stages)."""
    import random

    import trio

    from lakeferry.stages.events import EventsRecorder

    stream = [pending(o, f"e{o // 2}", f"events.raw/0/{o // 2}") for o in range(160)]
    rng = random.Random(11)

    async def member(recorder: EventsRecorder) -> None:
        await recorder.once.load()
        position = 0
        while position < len(stream):
            size = rng.randint(1, 15)
            chunk = stream[position : position + size]
            await flush_until_done(recorder, [(r, _row(r)) for r in chunk])  # type: ignore[arg-type]
            position += size

    recorders = [EventsRecorder(events_pipeline(inventory(tmp_path))) for _ in range(2)]
    async with trio.open_nursery() as nursery:
        for recorder in recorders:
            nursery.start_soon(member, recorder)
    assert await recorded(inventory(tmp_path)) == sorted(f"events.raw/0/{i}" for i in range(80))


def _row(record: Record) -> Any:
    from lakeferry.stages.events import event_row

    return event_row(record, record.value)
