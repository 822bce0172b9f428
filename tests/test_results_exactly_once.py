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
    )  # type: ignore[call-arg]
    return reg.factory(settings, PluginContext(state_dir=tmp_path, logger=get_logger("test")))


def pipeline(inv: Any) -> Any:
    return SimpleNamespace(
        inventory=inv,
        metrics=Metrics(),
        config=SimpleNamespace(core=SimpleNamespace(results=ResultsConfig())),
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
    skipped = restarted.p.metrics.inventory_skipped.labels("offset")._value.get()
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
    member_b.on_assign([record(0, "handed")[0].tp])  # the rebalance gives B the partition
    await member_b.flush([record(1, "handed"), record(2, "fresh")])
    rows = await inv.read_inventory()
    assert sorted(r.event_id for r in rows) == ["fresh", "handed"]
