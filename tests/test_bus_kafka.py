"""Kafka-only behaviour of the bus: backpressure pauses across rebalances."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import trio

from helpers.wait import wait_for_async, wait_until_async
from lakeferry.bus.base import OutgoingRecord, TopicSpec
from lakeferry.bus.kafka import BUFFER_HIGH, KafkaBus
from lakeferry.errors import BusError

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
        # The buffers fill up without records being taken.
        await wait_until_async(
            lambda: consumer._buffers.count >= BUFFER_HIGH, timeout=90, what="full buffers"
        )
        # A second member joins (everything is revoked and reassigned), then leaves again.
        joiner = other.consumer(group, [topic])
        await wait_for_async(
            consumer.assignment, lambda tps: len(tps) == 1, timeout=90, what="one partition left"
        )
        await joiner.aclose()
        await wait_for_async(
            consumer.assignment, lambda tps: len(tps) == 2, timeout=90, what="both partitions back"
        )
        while len(seen) < total:
            record = await consumer.next()
            seen.add(record.value)
            if int(record.value) % 200 == 0:
                await consumer.commit({record.tp: record.offset + 1})
    await consumer.aclose()
    await bus.aclose()
    await other.aclose()
    assert len(seen) == total


async def test_a_partition_the_stage_paused_does_not_stop_the_others(kafka_broker: Any) -> None:
    """Found by the quick mixed-origins run on Kafka: a thousand tasks parked on a retry rung
    filled the buffers of the rung's partition, which the stage had paused (its head not due
    for 5 minutes); full buffers paused the fetching of every partition, so the pending topic
    was not read until the rung came due. Only the paused partition may stop being fetched."""
    bus = await KafkaBus.open(kafka_broker.bootstrap, consumer=FAST)
    rung, pending = f"rung-{uuid.uuid4().hex[:8]}", f"pending-{uuid.uuid4().hex[:8]}"
    await bus.ensure_topics([TopicSpec(rung, 1), TopicSpec(pending, 1)])
    producer = bus.producer()
    await producer.send_many(
        [OutgoingRecord(rung, b"%d" % i, b"r") for i in range(BUFFER_HIGH + 200)]
    )
    consumer = bus.consumer(f"g-{uuid.uuid4().hex[:8]}", [rung, pending])
    with trio.fail_after(120):
        head = await consumer.next()
        assert head.topic == rung
        # Not due: put back and paused, as the stage driver does with a rung's head.
        consumer.seek(head.tp, head.offset)
        consumer.pause(head.tp)
        await wait_until_async(
            lambda: head.tp in consumer._t_broker_paused, timeout=90,
            what="the rung's fetching to stop",
        )  # fmt: skip
        await producer.send_many([OutgoingRecord(pending, b"p%d" % i, b"p") for i in range(5)])
        got = [(await consumer.next()).value for _ in range(5)]
    assert got == [b"p%d" % i for i in range(5)]
    consumer.resume(head.tp)
    with trio.fail_after(60):
        assert (await consumer.next()).value == b"0"
    await consumer.aclose()
    await bus.aclose()


def _fails(codes: list[int], result: object) -> Any:
    """A blocking call that fails with each of ``codes`` in turn, then returns ``result``."""
    from confluent_kafka import KafkaError, KafkaException

    calls: list[int] = []

    def call() -> object:
        calls.append(1)
        if len(calls) <= len(codes):
            raise KafkaException(KafkaError(codes[len(calls) - 1]))
        return result

    call.calls = calls  # type: ignore[attr-defined]
    return call


async def test_admin_calls_retry_what_the_cluster_raises_while_it_moves(
    kafka_broker: Any,
) -> None:
    """Found under CPU load: reading watermarks right after creating a topic failed with
    NOT_LEADER_FOR_PARTITION. Leader elections and metadata not yet everywhere are retried by
    the bus, with backoff; a refusal is not, and retries end at ``operation_timeout``."""
    from confluent_kafka import KafkaError

    from lakeferry.errors import BusError

    bus = await KafkaBus.open(kafka_broker.bootstrap, operation_timeout=2.0)
    moving = _fails(
        [KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
         KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.COORDINATOR_LOAD_IN_PROGRESS],
        "answer",
    )  # fmt: skip
    with trio.fail_after(30):
        assert await bus._admin_call(moving, "watermarks") == "answer"
        assert len(moving.calls) == 5
        refused = _fails([KafkaError.TOPIC_AUTHORIZATION_FAILED], "never")
        with pytest.raises(BusError, match=r"cannot read the end of t on .*AUTHORIZATION"):
            await bus._admin_call(refused, "cannot read the end of t")
        assert len(refused.calls) == 1
        forever = _fails([KafkaError.NOT_LEADER_FOR_PARTITION] * 1000, "never")
        with pytest.raises(BusError, match="NOT_LEADER_FOR_PARTITION"):
            await bus._admin_call(forever, "x")
        assert 3 <= len(forever.calls) < 1000  # backed off, and gave up at the deadline
    await bus.aclose()


async def test_watermarks_of_a_topic_just_created_are_read(kafka_broker: Any) -> None:
    """The case the contract suite hit under load, repeated on fresh topics."""
    bus = await KafkaBus.open(kafka_broker.bootstrap)
    with trio.fail_after(60):
        for _ in range(5):
            topic = f"fresh-{uuid.uuid4().hex[:8]}"
            await bus.ensure_topics([TopicSpec(topic, 4)])
            assert await bus.end_offsets(topic) == {0: 0, 1: 0, 2: 0, 3: 0}
            assert await bus.committed(f"g-{uuid.uuid4().hex[:8]}", topic) == {}
    await bus.aclose()


async def test_offset_reads_keep_their_clients_and_still_see_every_new_record(
    kafka_broker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon reads its lag every few seconds and ``lakeferry audit`` reads offsets of
    every topic: each read used to make (and close) a client of its own. The bus keeps one per
    group for these reads, and a kept client must not answer from a stale cache."""
    import confluent_kafka

    made: list[str] = []
    real = confluent_kafka.Consumer

    def counting(conf: dict[str, Any]) -> Any:
        made.append(str(conf.get("group.id")))
        return real(conf)

    bus = await KafkaBus.open(kafka_broker.bootstrap)
    topic, group = f"reads-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    await bus.ensure_topics([TopicSpec(topic, 2)])
    producer = bus.producer()
    monkeypatch.setattr(confluent_kafka, "Consumer", counting)
    with trio.fail_after(60):
        for round_ in range(1, 6):
            await producer.send_many([OutgoingRecord(topic, b"x", b"k%d" % n) for n in range(3)])
            assert sum((await bus.end_offsets(topic)).values()) == 3 * round_
            assert await bus.committed(group, topic) == {}
    # One for the group, and at most one for end offsets (ensure_topics may have made it, to
    # wait for the new topic's metadata): not two per round.
    assert made.count(group) == 1, made
    assert len(made) <= 2, made
    await bus.aclose()
    with pytest.raises(BusError, match="closed"):
        await bus.end_offsets(topic)


async def test_deliveries_reach_trio_a_poll_at_a_time(kafka_broker: Any) -> None:
    """Delivery reports cross into trio once per ``poll()`` that served them, not once per
    record: a thousand records acknowledged in a handful of produce requests resolve in a
    handful of hand-offs, and every send returns only once its records are acknowledged."""
    bus = await KafkaBus.open(kafka_broker.bootstrap)
    topic = f"dr-{uuid.uuid4().hex[:8]}"
    await bus.ensure_topics([TopicSpec(topic, 2)])
    producer = bus.producer()
    total = 1000
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(0, total, 100):  # ten concurrent sends of 100
                batch = [OutgoingRecord(topic, b"%d" % n, b"k%d" % n) for n in range(i, i + 100)]
                nursery.start_soon(producer.send_many, batch)
        assert sum((await bus.end_offsets(topic)).values()) == total
    assert 1 <= producer.handoffs <= total // 10, producer.handoffs  # one per record before
    await bus.aclose()


async def test_a_record_not_delivered_fails_its_send_and_only_its_send(kafka_broker: Any) -> None:
    """A record the broker never acknowledges (here: its topic does not exist and the broker
    creates none) fails the ``send_many`` it belongs to, after ``message.timeout.ms``; a send
    sharing the same poll with it succeeds."""
    from lakeferry.errors import BusError

    bus = await KafkaBus.open(
        kafka_broker.bootstrap, producer={"message.timeout.ms": 1500}, operation_timeout=5.0
    )
    good = f"dr-{uuid.uuid4().hex[:8]}"
    await bus.ensure_topics([TopicSpec(good, 1)])
    producer = bus.producer()
    outcome: dict[str, BaseException | None] = {}

    async def send(name: str, records: list[OutgoingRecord]) -> None:
        try:
            await producer.send_many(records)
            outcome[name] = None
        except BusError as exc:
            outcome[name] = exc

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                send, "mixed", [OutgoingRecord(good, b"1"), OutgoingRecord("no-such-topic", b"2")]
            )
            nursery.start_soon(send, "good", [OutgoingRecord(good, b"3")])
    assert outcome["good"] is None
    assert isinstance(outcome["mixed"], BusError)
    assert "1 of 2 record(s) not delivered" in str(outcome["mixed"])
    assert await bus.end_offsets(good) == {0: 2}
    await bus.aclose()


async def _next_while_polling(consumer: Any, other: Any) -> None:
    """Wait for the consumer's next record while ``other`` (a raw client) polls, so it joins."""
    while True:
        await trio.to_thread.run_sync(other.poll, 0.2)
        with trio.move_on_after(0.2):
            await consumer.next()


async def test_a_fenced_static_member_fails_its_consumer_instead_of_waiting_forever(
    kafka_broker: Any,
) -> None:
    """Found by the chaos run and the broker-outage test under load: after an outage the ingest
    stage's consumer was fenced ("Static consumer fenced by other consumer with same
    group.instance.id", a fatal error in librdkafka) and its stage waited forever, so events
    submitted after the outage were never ingested. A fatal error must fail the consumer (the
    supervisor restarts the stage with a fresh one). Here a second member under the same
    group.instance.id fences the first."""
    from confluent_kafka import Consumer

    bus = await KafkaBus.open(kafka_broker.bootstrap, consumer=FAST, member="node.fenced")
    topic, group = f"fence-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    await bus.ensure_topics([TopicSpec(topic, 1)])
    await bus.producer().send_many([OutgoingRecord(topic, b"first", b"k")])
    consumer = bus.consumer(group, [topic])
    with trio.fail_after(90):
        record = await consumer.next()
    assert record.value == b"first"
    same = {k: v for k, v in bus._consumer_config(group).items() if k != "error_cb"}
    assert same["group.instance.id"] == "node.fenced"
    usurper = Consumer(same)  # the same member name, the same group protocol
    usurper.subscribe([topic])
    try:
        with trio.fail_after(90), pytest.raises(BusError) as failed:
            await _next_while_polling(consumer, usurper)
        assert "fenced" in str(failed.value).lower()
    finally:
        await trio.to_thread.run_sync(usurper.close)
        await consumer.aclose()
        await bus.aclose()
