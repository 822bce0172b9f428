"""Wiring a bus-driven stage: its consumer, its :class:`StageDriver`, its helper tasks.

Every stage that consumes a topic runs through :func:`run_consuming_stage`, so joining the
group, revoking, draining and closing the consumer are written once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import trio

from lakeferry.bus.base import TopicPartition
from lakeferry.logs import get_logger
from lakeferry.pipeline import Pipeline
from lakeferry.stages.driver import Dispatch, Gate, Handler, StageDriver
from lakeferry.stagespec import Consumes

log = get_logger("stage")

Background = Callable[[], Awaitable[None]]


async def run_consuming_stage(
    p: Pipeline,
    consumes: Consumes,
    *,
    handler: Handler,
    gate: Gate | None = None,
    dispatch: Dispatch | None = None,
    on_assign: Callable[[Sequence[TopicPartition]], None] | None = None,
    on_revoke: Callable[[Sequence[TopicPartition]], object] | None = None,
    background: Sequence[Background] = (),
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Consume what ``consumes`` names, in group ``<bus.group>.<consumes.group>``, with its
    limiter, until drained.

    ``background`` tasks (a batch flusher, say) run beside the driver and are cancelled once
    the driver has drained, so they serve the handlers to the very end.
    """
    name = consumes.group
    topics = consumes.topics(p.settings)
    driver: StageDriver

    def assign(tps: Sequence[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"stage": name, "partitions": _names(tps)})
        if on_assign is not None:
            on_assign(tps)

    def revoke(tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        log.info("partitions revoked", extra={"stage": name, "partitions": _names(tps)})
        if on_revoke is not None:
            on_revoke(tps)
        return driver.on_revoke(tps)

    consumer = p.bus.consumer(p.group_for(name), list(topics), on_assign=assign, on_revoke=revoke)
    # With an intake limiter the handler takes the stage's slots (and counts itself active).
    intake = p.intakes.get(name)
    driver = StageDriver(
        name=name,
        consumer=consumer,
        limiter=p.limiters[name] if intake is None else intake,
        handler=handler,
        lifecycle=p.lifecycle,
        commit_interval=lambda: p.settings.commit.interval,
        gate=gate,
        active=p.active[name] if intake is None else None,
        dispatch=dispatch,
        on_pause=lambda tp, until: p.metrics.retry_paused(tp.topic, tp.partition, until),
    )
    try:
        async with trio.open_nursery() as nursery:
            for task in background:
                nursery.start_soon(task)
            await driver.run(task_status=task_status)
            nursery.cancel_scope.cancel(reason=f"{name} drained")
    finally:
        with trio.CancelScope(shield=True):
            await consumer.aclose()


def _names(tps: Sequence[TopicPartition]) -> list[str]:
    """``topic/partition`` of each, for a rebalance's log line."""
    return sorted(f"{tp.topic}/{tp.partition}" for tp in tps)
