"""The shared consume loop on the real embedded bus: due times, contiguous commits, drain."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from helpers.wait import wait_for_async, wait_until_async
from lakeferry.bus.base import Consumer, Record, TopicPartition
from lakeferry.bus.embedded import EmbeddedBus
from lakeferry.lifecycle import Lifecycle
from lakeferry.stages.driver import StageDriver, Waits


def driver_for(
    consumer: Consumer,
    handler: Callable[[Record], Awaitable[None]],
    lifecycle: Lifecycle,
    limit: int,
    commit_interval: float = 10,
) -> StageDriver:
    """A driver of ``consumer`` with ``limit`` handlers at once."""
    return StageDriver(
        name="t", consumer=consumer, limiter=trio.CapacityLimiter(limit), handler=handler,
        lifecycle=lifecycle, commit_interval=lambda: commit_interval,
    )  # fmt: skip


async def test_only_the_contiguous_completed_offset_is_committed(tmp_path: Path) -> None:
    bus = await EmbeddedBus.open(tmp_path / "bus.sqlite", default_partitions=1, poll_interval=0.01)
    topic = "downloads.pending"
    for i in range(3):
        await bus.producer().send(topic, str(i).encode(), key=b"k")
    release = trio.Event()
    finished: list[int] = []

    async def handler(record: Record) -> None:
        if record.offset == 1:
            await release.wait()
        finished.append(record.offset)

    lifecycle = Lifecycle(shutdown_grace=5)
    consumer = bus.consumer("g", [topic])
    driver = driver_for(consumer, handler, lifecycle, 10, commit_interval=0.02)
    tp = TopicPartition(topic, 0)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.run)
            await wait_for_async(
                lambda: sorted(finished), lambda done: done == [0, 2], timeout=10, what="0 and 2"
            )
            await wait_for_async(
                lambda: bus.committed("g", topic),
                lambda offsets: offsets == {0: 1},
                timeout=10,
                what="offset 0 to be committed",
            )
            # Several commit intervals pass with offset 2 finished: the commit stays at 1, not 3,
            # since offset 1 is unfinished.
            await trio.sleep(0.1)
            assert (await bus.committed("g", topic)) == {0: 1}
            release.set()
            await wait_until_async(
                lambda: tp in driver.tracker.partitions() and driver.tracker.in_flight() == 0,
                timeout=10,
                what="offset 1 to finish",
            )
            lifecycle.drain()
    assert (await bus.committed("g", topic)) == {0: 3}
    await consumer.aclose()
    await bus.aclose()


async def test_drain_lets_in_flight_work_finish_then_commits(tmp_path: Path) -> None:
    bus = await EmbeddedBus.open(tmp_path / "bus.sqlite", default_partitions=1, poll_interval=0.01)
    topic = "downloads.cached"
    for i in range(4):
        await bus.producer().send(topic, str(i).encode(), key=b"k")
    started = trio.Event()
    done: list[int] = []

    async def handler(record: Record) -> None:
        started.set()
        await trio.sleep(0.3)  # the work, still under way when the drain begins
        done.append(record.offset)

    lifecycle = Lifecycle(shutdown_grace=5)
    consumer = bus.consumer("g", [topic])
    driver = driver_for(consumer, handler, lifecycle, 2)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.run)
            await started.wait()
            lifecycle.drain()
    # The two taken before the drain finished; the others were never taken; the commit says so.
    assert sorted(done) == [0, 1]
    assert (await bus.committed("g", topic)) == {0: 2}
    await consumer.aclose()
    await bus.aclose()


async def test_grace_expiry_cancels_and_commits_only_finished_work(tmp_path: Path) -> None:
    bus = await EmbeddedBus.open(tmp_path / "bus.sqlite", default_partitions=1, poll_interval=0.01)
    topic = "t"
    for i in range(2):
        await bus.producer().send(topic, str(i).encode(), key=b"k")

    started: list[int] = []
    finished: list[int] = []

    async def handler(record: Record) -> None:
        started.append(record.offset)
        await trio.sleep(0.05 if record.offset == 0 else 60)  # the work: 1 outlasts the grace
        finished.append(record.offset)

    lifecycle = Lifecycle(shutdown_grace=0.5)
    consumer = bus.consumer("g", [topic])
    driver = driver_for(consumer, handler, lifecycle, 5)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.run)
            await wait_until_async(
                lambda: finished == [0] and started == [0, 1],
                timeout=10,
                what="offset 0 done and offset 1 under way",
            )
            lifecycle.drain()
    assert (await bus.committed("g", topic)) == {0: 1}  # offset 1 will be redelivered
    assert finished == [0]
    await consumer.aclose()
    await bus.aclose()


async def test_a_drain_ends_the_waits_of_work_not_begun_and_leaves_it_uncommitted(
    tmp_path: Path,
) -> None:
    """Offset 0 is done and 1 at work when the drain begins, 2 and 3 still wait for their turn
    (a slot of one, which 1 holds): the work gets its grace, the waits end at once
    (NotStarted), and the commit covers 0 and 1 only, so 2 and 3 are redelivered at the next
    start. Before, 2 and 3 waited for their turn through the drain, for up to the grace."""
    bus = await EmbeddedBus.open(tmp_path / "bus.sqlite", default_partitions=1, poll_interval=0.01)
    topic = "downloads.pending"
    for i in range(4):
        await bus.producer().send(topic, str(i).encode(), key=b"k")
    lifecycle = Lifecycle(shutdown_grace=60)
    waits = Waits(lifecycle)
    turn = trio.CapacityLimiter(1)
    working, release = [], trio.Event()
    done: list[int] = []

    async def handler(record: Record) -> None:
        with waits.before_work() as begun:
            if record.offset >= 2:
                async with turn:  # offset 1 holds it until released
                    begun()
                    done.append(record.offset)
                    return
            begun()
            working.append(record.offset)
            if record.offset == 1:
                async with turn:
                    await release.wait()
            done.append(record.offset)

    consumer = bus.consumer("g", [topic])
    driver = driver_for(consumer, handler, lifecycle, 4)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waits.end_on_drain)
            await nursery.start(driver.run)
            await wait_until_async(
                lambda: working == [0, 1] and turn.statistics().tasks_waiting == 2,
                timeout=10,
                what="0 and 1 at work, 2 and 3 waiting",
            )
            lifecycle.drain()
            await wait_until_async(
                lambda: turn.statistics().tasks_waiting == 0, timeout=10, what="the waits to end"
            )
            release.set()  # the work under way finishes within its grace
    assert sorted(done) == [0, 1]
    assert (await bus.committed("g", topic)) == {0: 2}  # 2 and 3 are redelivered
    await consumer.aclose()
    await bus.aclose()
