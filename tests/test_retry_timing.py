"""Retry rungs on both buses: never processed before the due time, and no partition waits for
another. The lateness (processing time minus due time) is measured and printed (``-s``)."""

from __future__ import annotations

import statistics
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from helpers.wait import wait_until_async
from lakeferry.bus.base import Bus, Record, TopicSpec
from lakeferry.bus.embedded import EmbeddedBus
from lakeferry.bus.kafka import KafkaBus
from lakeferry.lifecycle import Lifecycle
from lakeferry.retry import DUE_HEADER, due_ms
from lakeferry.stages.driver import StageDriver, seconds_until_ms

PARTITIONS = 3


def key_for(partition: int) -> bytes:
    """A key that both buses' partitioners (CRC32 of the key) put on ``partition``."""
    i = 0
    while zlib.crc32(f"k{i}".encode()) % PARTITIONS != partition:
        i += 1
    return f"k{i}".encode()


@pytest.fixture(params=["embedded", pytest.param("kafka", marks=pytest.mark.slow)])
async def bus(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[Bus]:
    opened: Bus
    if request.param == "embedded":
        opened = await EmbeddedBus.open(tmp_path / "bus.sqlite", poll_interval=0.01)
    else:
        broker = request.getfixturevalue("kafka_broker")
        opened = await KafkaBus.open(
            broker.bootstrap, consumer={"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
        )
    yield opened
    await opened.aclose()


async def test_rung_messages_wait_for_their_due_time_per_partition(bus: Bus) -> None:
    topic = f"retry.{uuid.uuid4().hex[:8]}"
    await bus.ensure_topics([TopicSpec(topic, PARTITIONS)])
    processed: list[tuple[int, float, float]] = []

    warmed: list[Record] = []

    async def handler(record: Record) -> None:
        due = due_ms(record.headers)
        if due is None:
            warmed.append(record)
            return
        processed.append((record.partition, due / 1000, time.time()))

    lifecycle = Lifecycle(shutdown_grace=5)
    consumer = bus.consumer(f"g-{uuid.uuid4().hex[:8]}", [topic])
    pauses: list[tuple[int, float | None, float]] = []  # (partition, resumes at, told at)
    driver = StageDriver(
        name="download", consumer=consumer, limiter=trio.CapacityLimiter(50), handler=handler,
        lifecycle=lifecycle, commit_interval=lambda: 0.05,
        gate=lambda record: seconds_until_ms(due_ms(record.headers)),
        on_pause=lambda tp, until: pauses.append((tp.partition, until, time.time())),
    )  # fmt: skip
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.run)
            # Warm up: one immediate record per partition, so every fetcher is running and the
            # figures below measure the ladder, not the group join.
            producer = bus.producer()
            for partition in range(PARTITIONS):
                await producer.send(topic, b"warm-up", key=key_for(partition))
            await wait_until_async(
                lambda: len(warmed) >= PARTITIONS, timeout=30, what="a warm-up record per partition"
            )
            now_ms = int(time.time() * 1000)
            # (partition, due in ms from now): partition 0's head waits; 1 and 2 are due early
            plan = [
                (0, 1500), (0, 1600), (0, 1700),
                (1, 0), (1, 100), (1, 200),
                (2, 300), (2, 400),
            ]  # fmt: skip
            for partition, delay in plan:
                due = str(now_ms + delay).encode()
                await producer.send(
                    topic, b"task", key=key_for(partition), headers={DUE_HEADER: due}
                )
            await wait_until_async(
                lambda: len(processed) >= len(plan), timeout=30, what="every retry processed"
            )
            lifecycle.drain()
    await consumer.aclose()

    lateness = [at - due for _, due, at in processed]
    print(
        f"\n{type(bus).__name__}: lateness over {len(lateness)} retries: "
        f"min {min(lateness) * 1000:.1f} ms, median {statistics.median(lateness) * 1000:.1f} ms, "
        f"max {max(lateness) * 1000:.1f} ms"
    )
    assert min(lateness) >= 0, "a retry was processed before its due time"
    assert sorted(p for p, _, _ in processed) == sorted(p for p, _ in plan)
    # Partitions 1 and 2 finished while partition 0's head was still waiting.
    first_of_0 = min(at for p, _, at in processed if p == 0)
    assert max(at for p, _, at in processed if p != 0) < first_of_0
    # Within a partition, offset order is kept.
    for partition in range(PARTITIONS):
        dues = [due for p, due, _ in processed if p == partition]
        assert dues == sorted(dues)
    # Each pause was reported with when it ends (the head's due time, as wall-clock time: the
    # paused-rung metric and the console's "next due"), then its end (None) once it resumed.
    heads = {p: min(due for q, due, _ in processed if q == p) for p in range(PARTITIONS)}
    paused = [(p, until) for p, until, _ in pauses if until is not None]
    assert 0 in {p for p, _ in paused}  # partition 0's head waited 1.5 s
    first = next(until for p, until in paused if p == 0)
    assert first == pytest.approx(heads[0], abs=0.5)
    for p in {p for p, _ in paused}:
        told = [until for q, until, _ in pauses if q == p]
        assert told[-1] is None, f"partition {p}'s pause was never reported as over: {told}"
