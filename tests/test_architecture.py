"""Where things go (docs/design.md, "Where things go"), held by tests.

Each row of that table is followed here once: a stage declared like the real ones runs in the
supervisor with nothing else to edit; the pipeline never imports a stage; stages touch
prometheus only through :class:`~lakeferry.metrics.Metrics`; nothing outside ``bus/`` asks
which bus it has; a daemon on the embedded bus never loads librdkafka; every setting is in the
README's reference. (New sources, sinks, caches and downloaders: the conformance kit in
:mod:`lakeferry.testing`; a new bus: ``tests/test_bus_contract.py``.)
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import trio

from helpers.daemon import DaemonEnv
from helpers.wait import wait_until_async
from lakeferry.bus.base import Record
from lakeferry.buses import open_bus
from lakeferry.config import Config, _flatten, parse_config
from lakeferry.pipeline import Pipeline
from lakeferry.registry import load_registry
from lakeferry.stages.catalog import CATALOG
from lakeferry.stages.runner import run_consuming_stage
from lakeferry.stagespec import Consumes, StageSpec
from lakeferry.supervisor import Supervisor

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "daemon" / "lakeferry"


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports (``from a.b import c`` counts as ``a.b`` and ``a.b.c``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


# --- a stage: one module with its SPEC ----------------------------------------------------------


class Echo:
    """A test-only stage, declared the way the real ones are: it counts the records of the
    results topic in its own consumer group."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.spec = StageSpec(
            name="echo",
            summary="count results (a test stage)",
            run=self.run,
            consumes=(
                Consumes(
                    "echo",
                    topics=lambda core: [core.topics.results],
                    capacity=lambda core: 3,
                ),
            ),
            uses=frozenset(),
            live_keys=frozenset({"echo.setting"}),
        )

    async def handle(self, record: Record) -> None:
        self.seen.append(record.value)

    async def run(
        self, pipeline: Pipeline, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await run_consuming_stage(
            pipeline, self.spec.main, handler=self.handle, task_status=task_status
        )


def config(tmp_path: Path) -> Any:
    data = {
        "daemon": {"state_dir": str(tmp_path / "state")},
        "bus": {"kind": "embedded", "embedded": {"path": str(tmp_path / "bus.sqlite")}},
        "metrics": {"listen": ""},
        "live": {"listen": ""},
        "console": {"listen": ""},
        "cache": {"kind": "localfs", "path": str(tmp_path / "cache")},
        "sink": {"kind": "localfs", "root": str(tmp_path / "sink")},
        "inventory": {"kind": "delta", "inventory_uri": str(tmp_path / "i"),
                      "events_uri": str(tmp_path / "e")},
    }  # fmt: skip
    return parse_config(data, load_registry(), env={})


async def test_a_stage_declared_like_the_real_ones_runs_in_the_supervisor(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    echo = Echo()
    supervisor = Supervisor(cfg, load_registry(), stages=(echo.spec,))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run)
        # The pipeline is built once the bus is open.
        await wait_until_async(lambda: supervisor.pipeline is not None, timeout=30, what="start")
        pipeline = supervisor.pipeline
        assert pipeline is not None
        for i in range(5):
            await pipeline.producer.send(cfg.core.topics.results, f"r{i}".encode(), key=b"k")
        await wait_until_async(lambda: len(echo.seen) == 5, timeout=30, what="5 records handled")
        # Derived from the spec alone: its limiter, its consumer group, no component built.
        assert pipeline.limiters["echo"].total_tokens == 3
        assert supervisor._consumed_topics() == {"lakeferry.echo": [cfg.core.topics.results]}
        assert not any(pipeline.components.has(c) for c in ("cache", "sink", "inventory"))
        pipeline.lifecycle.drain()
    assert sorted(echo.seen) == [f"r{i}".encode() for i in range(5)]
    # The stage committed what it handled: a second run of its group starts after them.
    bus = await open_bus(cfg)
    try:
        assert sum((await bus.committed("lakeferry.echo", cfg.core.topics.results)).values()) == 5
    finally:
        await bus.aclose()


def test_the_pipeline_and_its_parts_import_no_stage() -> None:
    for name in ("pipeline", "build", "deadletters", "records", "lifecycle", "stagespec",
                 "buses", "topics", "metrics", "recent"):  # fmt: skip
        imported = imports_of(PACKAGE / f"{name}.py")
        assert not {m for m in imported if m.startswith("lakeferry.stages.")}, name
    assert "lakeferry.livefeed" not in imports_of(PACKAGE / "pipeline.py")


def test_stages_touch_prometheus_only_through_metrics() -> None:
    for path in [*sorted((PACKAGE / "stages").glob("*.py")), PACKAGE / "supervisor.py"]:
        text = path.read_text()
        assert ".labels(" not in text, path.name
        assert not {m for m in imports_of(path) if m.startswith("prometheus_client")}, path.name


def test_nothing_outside_the_buses_asks_which_bus_it_has() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] == "bus":
            continue
        imported = imports_of(path)
        assert "lakeferry.bus.kafka" not in imported or path.name == "buses.py", path
        assert "lakeferry.bus.embedded" not in imported or path.name == "buses.py", path
        assert "getattr(bus" not in path.read_text(), path


def test_every_stage_declares_its_consumers_and_live_keys() -> None:
    names = [spec.name for spec in CATALOG]
    assert names == ["ingest", "download", "upload", "results"]
    flat = _flatten(Config())
    for spec in CATALOG:
        assert spec.main.group == spec.name
        assert spec.summary
        assert spec.uses
        unknown = spec.live_keys - flat.keys()
        assert not unknown, f"{spec.name}: live keys that are no setting: {unknown}"


def test_every_setting_is_in_the_readme_reference() -> None:
    readme = (ROOT / "README.md").read_text()
    for key in _flatten(Config()):
        section, _, name = key.rpartition(".")
        assert name in readme, f"{key} is not described in README.md"
        assert section.split(".")[0] in readme, key


def test_a_daemon_on_the_embedded_bus_never_loads_librdkafka(daemon_env: DaemonEnv) -> None:
    daemon = daemon_env.start()  # returns once the daemon is ready: every stage consumes
    maps = Path(f"/proc/{daemon.proc.pid}/maps").read_text()
    assert "libpython" in maps or "python" in maps, "the map of the daemon's process"
    assert "librdkafka" not in maps
    assert "confluent_kafka" not in maps
