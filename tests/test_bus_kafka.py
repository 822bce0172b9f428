"""Kafka-only behaviour of the bus: backpressure pauses across rebalances."""

from __future__ import annotations

import uuid
from typing import Any

import trio

from lakeferry.bus.base import OutgoingRecord, TopicSpec
from lakeferry.bus.kafka import BUFFER_HIGH, KafkaBus

FAST = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


async def test_a_partition_paused_for_backpressure_is_fetched_again_after_a_rebalance(
    kafka_broker: Any,
) -> None:
    """Found by the chaos run: a consumer whose buffers were full paused its partitions; a
    rebalance took them away and gave them back; librdkafka kept them paused, and they were
    never fetched again. Every record must still arrive."""
    bus = await KafkaBus.open(kafka_broker.bootstrap, consumer=FAST)
    other = await KafkaBus.open(kafka_broker.bootstrap, consumer=FAST)
    topic, group = f"bp-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    await bus.ensure_topics([TopicSpec(topic, 2)])
    total = BUFFER_HIGH * 3
    await bus.producer().send_many(
        [OutgoingRecord(topic, b"%d" % i, b"k%d" % i) for i in range(total)]
    )
    consumer = bus.consumer(group, [topic])
    seen: set[bytes] = set()
    with trio.fail_after(90):
        seen.add((await consumer.next()).value)
        while consumer._buffered < BUFFER_HIGH:  # fill the buffers without taking records
            await trio.sleep(0.05)
        # A second member joins (everything is revoked and reassigned), then leaves again.
        joiner = other.consumer(group, [topic])
        while len(consumer.assignment()) != 1:
            await trio.sleep(0.05)
        await joiner.aclose()
        while len(consumer.assignment()) != 2:
            await trio.sleep(0.05)
        while len(seen) < total:
            record = await consumer.next()
            seen.add(record.value)
            if int(record.value) % 200 == 0:
                await consumer.commit({record.tp: record.offset + 1})
    await consumer.aclose()
    await bus.aclose()
    await other.aclose()
    assert len(seen) == total
