"""Stage supervision: restart with backoff, give up after too many crashes (virtual time)."""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing

from lakeferry.config import parse_config
from lakeferry.errors import StageCrashed
from lakeferry.lifecycle import Lifecycle
from lakeferry.pipeline import Pipeline
from lakeferry.registry import load_registry
from lakeferry.supervisor import Supervisor


class _Stub:
    """Only what ``_supervise`` touches of a pipeline: its lifecycle."""

    def __init__(self) -> None:
        self.lifecycle = Lifecycle(shutdown_grace=1)


def supervisor(max_crashes: int = 3) -> Supervisor:
    registry = load_registry()
    data = {
        "daemon": {"restart_backoff": "1s", "restart_backoff_max": "4s", "max_crashes": max_crashes,
                   "crash_window": "60s"},
        "cache": {"kind": "localfs", "path": "x"},
        "sink": {"kind": "localfs", "root": "y"},
        "inventory": {"kind": "delta", "inventory_uri": "i", "events_uri": "e"},
    }  # fmt: skip
    sup = Supervisor(parse_config(data, registry, env={}), registry)
    sup.pipeline = _Stub()  # type: ignore[assignment]
    return sup


async def test_crashing_stage_restarts_with_backoff(autojump_clock: trio.testing.MockClock) -> None:
    sup = supervisor(max_crashes=5)
    starts: list[float] = []

    async def stage(
        p: Pipeline, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        starts.append(trio.current_time())
        task_status.started()
        if len(starts) < 4:
            raise RuntimeError("boom")
        await p.lifecycle.draining.wait()

    async with trio.open_nursery() as nursery:
        await nursery.start(sup._supervise, "download", stage)
        # Virtual time (autojump): 100 s pass at once, room for the three restarts and their
        # backoff, and for a fourth crash that must not come.
        await trio.sleep(100)
        assert sup.pipeline is not None
        sup.pipeline.lifecycle.drain()
    # backoff doubles: 1 s, 2 s, 4 s between the four starts
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(starts)]
    assert gaps == [1.0, 2.0, 4.0]
    assert sup.metrics.restarts.labels("download")._value.get() == 3


async def test_too_many_crashes_end_the_process(autojump_clock: trio.testing.MockClock) -> None:
    sup = supervisor(max_crashes=3)

    async def stage(
        p: Pipeline, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        raise RuntimeError("always")

    with pytest.raises(ExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            await nursery.start(sup._supervise, "upload", stage)
    assert info.group_contains(StageCrashed, match="crashed 3 times", depth=1)


async def test_crash_during_drain_is_not_restarted(autojump_clock: trio.testing.MockClock) -> None:
    sup = supervisor()
    runs = 0

    async def stage(
        p: Pipeline, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        nonlocal runs
        runs += 1
        task_status.started()
        await p.lifecycle.draining.wait()
        raise RuntimeError("failed while draining")

    async with trio.open_nursery() as nursery:
        await nursery.start(sup._supervise, "results", stage)
        assert sup.pipeline is not None
        sup.pipeline.lifecycle.drain()
    assert runs == 1
