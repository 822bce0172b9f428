"""A process builds only the components its stages use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lakeferry.buses import open_bus
from lakeferry.config import parse_config
from lakeferry.metrics import Metrics
from lakeferry.pipeline import NotBuilt, Pipeline
from lakeferry.registry import load_registry
from lakeferry.stages.catalog import specs
from lakeferry.stagespec import Uses


def config(tmp_path: Path) -> Any:
    data = {
        "daemon": {"state_dir": str(tmp_path / "state")},
        "bus": {"kind": "embedded", "embedded": {"path": str(tmp_path / "bus.sqlite")}},
        "cache": {"kind": "localfs", "path": str(tmp_path / "cache")},
        "sink": {"kind": "localfs", "root": str(tmp_path / "sink")},
        "inventory": {"kind": "delta", "inventory_uri": str(tmp_path / "i"),
                      "events_uri": str(tmp_path / "e")},
        "sources": [{"kind": "spool", "path": str(tmp_path / "spool")}],
    }  # fmt: skip
    return parse_config(data, load_registry(), env={})


@pytest.mark.parametrize(
    ("stages", "built", "absent"),
    [
        (("download",), {"cache"}, {"sink", "inventory"}),
        (("upload",), {"cache", "sink"}, {"inventory"}),
        (("results",), {"inventory"}, {"cache", "sink"}),
        (("ingest",), {"inventory"}, {"cache", "sink"}),
        (("ingest", "download", "upload", "results"), {"cache", "sink", "inventory"}, set()),
    ],
)
async def test_components_follow_the_stages(
    tmp_path: Path, stages: tuple[str, ...], built: set[Uses], absent: set[Uses]
) -> None:
    cfg = config(tmp_path)
    bus = await open_bus(cfg, create=True)
    try:
        pipeline = Pipeline.build(cfg, load_registry(), bus, Metrics(), specs(stages))
        components = pipeline.components
        for component in built:
            assert components.has(component), component
            assert getattr(components, component) is not None
        for component in absent:
            assert not components.has(component), component
            with pytest.raises(NotBuilt, match=f"the {component} is not built"):
                getattr(components, component)
        assert bool(components.fetchers) == ("download" in stages)
        assert bool(components.sources) == ("ingest" in stages)
        pipeline.apply_live(cfg)  # a reload touches only what exists
        await pipeline.aclose()
    finally:
        await bus.aclose()


async def test_a_reload_resizes_the_backfill_lanes_slots_and_queue(tmp_path: Path) -> None:
    """The lane's share and queue are live: the backfill consumer's limiter (its share of the
    download slots) and its intake follow a reload."""
    import msgspec

    cfg = config(tmp_path)
    bus = await open_bus(cfg, create=True)
    try:
        pipeline = Pipeline.build(cfg, load_registry(), bus, Metrics(), specs(("download",)))
        assert pipeline.limiters["backfill"].total_tokens == 25  # half of 50
        assert pipeline.intakes["backfill"].total_tokens == 50  # twice its slots
        download = msgspec.structs.replace(
            cfg.core.download, concurrency=40, backfill_share=0.1, backfill_queue=300
        )
        reloaded = msgspec.structs.replace(
            cfg, core=msgspec.structs.replace(cfg.core, download=download)
        )
        pipeline.apply_live(reloaded)
        assert pipeline.limiters["download"].total_tokens == 40
        assert pipeline.limiters["backfill"].total_tokens == 4
        assert pipeline.intakes["backfill"].total_tokens == 300
        await pipeline.aclose()
    finally:
        await bus.aclose()
