"""The bus contract as tests, written against :mod:`lakeferry.bus.base` only.

To run it on an implementation, subclass :class:`BusContract` in a ``test_*`` module and
provide a ``bus_factory`` fixture: an async callable that opens a *new* connection to one
shared bus (a broker, or one SQLite file) on every call; the fixture closes them afterwards::

    class TestKafkaBus(BusContract):
        quiet_s = 1.0

        @pytest.fixture
        async def bus_factory(self, kafka_broker): ...

Every test uses fresh topic and group names, so a shared broker is fine. Nothing here may
depend on how an implementation partitions keys, only on the fact that it is stable.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from lakeferry.bus.base import Bus, Consumer, OutgoingRecord, Record, TopicPartition, TopicSpec

BusFactory = Callable[[], Awaitable[Bus]]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def new_topic(bus: Bus, partitions: int = 3) -> str:
    name = unique("topic")
    await bus.ensure_topics([TopicSpec(name, partitions)])
    return name


async def take(consumer: Consumer, count: int, within: float = 10.0) -> list[Record]:
    with trio.fail_after(within):
        return [await consumer.next() for _ in range(count)]


async def scan_all(bus: Bus, topic: str) -> list[Record]:
    return [record async for record in bus.scan(topic)]


def by_partition(records: list[Record]) -> dict[TopicPartition, list[Record]]:
    out: dict[TopicPartition, list[Record]] = defaultdict(list)
    for record in records:
        out[record.tp].append(record)
    return out


class BusContract:
    """What every bus must do. Subclasses provide the ``bus_factory`` fixture."""

    #: How long "nothing arrives" is watched for.
    quiet_s = 0.3
    #: Upper bound for anything that should happen promptly.
    timeout_s = 10.0

    async def assert_quiet(self, consumer: Consumer) -> None:
        with trio.move_on_after(self.quiet_s):
            record = await consumer.next()
            pytest.fail(f"expected no record, got {record}")

    async def test_produce_then_consume(self, bus_factory: BusFactory) -> None:
        bus = await bus_factory()
        topic = await new_topic(bus)
        producer = bus.producer()
        for i in range(10):
            await producer.send(topic, f"v{i}".encode())
        consumer = bus.consumer(unique("group"), [topic])
        records = await take(consumer, 10, self.timeout_s)
        assert sorted(r.value for r in records) == sorted(f"v{i}".encode() for i in range(10))
        assert all(r.topic == topic and r.timestamp_ms > 0 for r in records)
        await self.assert_quiet(consumer)
        await consumer.aclose()

    async def test_consumer_sees_records_sent_while_waiting(self, bus_factory: BusFactory) -> None:
        bus = await bus_factory()
        topic = await new_topic(bus)
        consumer = bus.consumer(unique("group"), [topic])
        got: list[Record] = []

        async def consume() -> None:
            got.extend(await take(consumer, 3, self.timeout_s))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            await trio.testing.wait_all_tasks_blocked()  # the consumer waits in next()
            for i in range(3):
                await bus.producer().send(topic, b"late-%d" % i)
        assert sorted(r.value for r in got) == [b"late-0", b"late-1", b"late-2"]
        await consumer.aclose()

    async def test_same_key_same_partition_in_order(self, bus_factory: BusFactory) -> None:
        bus = await bus_factory()
        topic = await new_topic(bus, partitions=4)
        producer = bus.producer()
        keys = [f"key-{k}".encode() for k in range(8)]
        for i in range(5):
            for key in keys:
                await producer.send(topic, b"%s/%d" % (key, i), key=key)
        records = await take(bus.consumer(unique("group"), [topic]), 40, self.timeout_s)
        partitions: dict[bytes, set[int]] = defaultdict(set)
        sequence: dict[bytes, list[bytes]] = defaultdict(list)
        for r in records:
            assert r.key is not None
            partitions[r.key].add(r.partition)
            sequence[r.key].append(r.value)
        assert all(len(p) == 1 for p in partitions.values())
        for key in keys:
            assert sequence[key] == [b"%s/%d" % (key, i) for i in range(5)]
        # Stable across connections too.
        other = await bus_factory()
        await other.producer().send(topic, b"again", key=keys[0])
        again = [r for r in await scan_all(other, topic) if r.value == b"again"]
        assert [r.partition for r in again] == list(partitions[keys[0]])

    async def test_offsets_increase_within_partition(self, bus_factory: BusFactory) -> None:
        bus = await bus_factory()
        topic = await new_topic(bus, partitions=2)
        producer = bus.producer()
        for i in range(30):
            await producer.send(topic, b"%d" % i, key=b"one")
        await producer.send_many([OutgoingRecord(topic, b"%d" % i, b"one") for i in range(30, 60)])
        records = await take(bus.consumer(unique("group"), [topic]), 60, self.timeout_s)
        assert [r.value for r in records] == [b"%d" % i for i in range(60)]
        offsets = [r.offset for r in records]
        assert offsets == sorted(offsets)
        assert len(set(offsets)) == 60

    async def test_headers_keys_and_values_round_trip(self, bus_factory: BusFactory) -> None:
        bus = await bus_factory()
        topic = await new_topic(bus, partitions=1)
        headers = {"attempt": b"2", "binary": bytes(range(256)), "empty": b"", "ü-name": b"\xff"}
        producer = bus.producer()
        await producer.send(topic, b"\x00payload\xff", key=b"\x00k", headers=headers)
        await producer.send(topic, b"")
        await producer.send_many([OutgoingRecord(topic, b"many", None, {"h": b"v"})])
        first, second, third = await take(bus.consumer(unique("group"), [topic]), 3)
        assert (first.key, first.value, dict(first.headers)) == (
            b"\x00k",
            b"\x00payload\xff",
            headers,
        )
        assert (second.key, second.value, dict(second.headers)) == (None, b"", {})
        assert (third.value, dict(third.headers)) == (b"many", {"h": b"v"})

    async def test_send_many_and_concurrent_sends(self, bus_factory: BusFactory) -> None:
        bus = await bus_factory()
        topic, other = await new_topic(bus), await new_topic(bus)
        producer = bus.producer()

        async def send(i: int) -> None:
            await producer.send(topic, b"c%d" % i, key=b"%d" % (i % 7))

        async with trio.open_nursery() as nursery:
            for i in range(100):
                nursery.start_soon(send, i)
            nursery.start_soon(
                producer.send_many,
                [OutgoingRecord(t, b"m%d" % i) for i in range(20) for t in (topic, other)],
            )
        values = [r.value for r in await scan_all(bus, topic)]
        expected = [b"c%d" % i for i in range(100)] + [b"m%d" % i for i in range(20)]
        assert sorted(values) == sorted(expected)
        assert sorted(r.value for r in await scan_all(bus, other)) == sorted(
            b"m%d" % i for i in range(20)
        )

    async def test_acknowledged_records_visible_to_other_connections(
        self, bus_factory: BusFactory
    ) -> None:
        writer, reader = await bus_factory(), await bus_factory()
        topic = await new_topic(writer)
        await writer.producer().send(topic, b"durable", key=b"k")
        assert [r.value for r in await scan_all(reader, topic)] == [b"durable"]
        records = await take(reader.consumer(unique("group"), [topic]), 1, self.timeout_s)
        assert records[0].value == b"durable"

    async def test_assign_and_revoke_callbacks(self, bus_factory: BusFactory) -> None:
        bus = await bus_factory()
        topic = await new_topic(bus, partitions=3)
        await bus.producer().send(topic, b"x")
        assigned: list[TopicPartition] = []
        revoked: list[TopicPartition] = []
        consumer = bus.consumer(
            unique("group"), [topic], on_assign=assigned.extend, on_revoke=revoked.extend
        )
        await take(consumer, 1)
        expected = {TopicPartition(topic, p) for p in range(3)}
        assert set(assigned) == expected
        assert consumer.assignment() == expected
        await consumer.aclose()
        assert set(revoked) == expected

    async def test_commit_then_new_member_resumes(self, bus_factory: BusFactory) -> None:
        bus = await bus_factory()
        topic = await new_topic(bus)
        group = unique("group")
        await bus.producer().send_many([OutgoingRecord(topic, b"%d" % i, b"k") for i in range(10)])
        consumer = bus.consumer(group, [topic])
        first = await take(consumer, 4)
        await consumer.commit({first[-1].tp: first[-1].offset + 1})
        await consumer.aclose()
        assert await bus.committed(group, topic) == {first[-1].partition: first[-1].offset + 1}

        # A new member, on a new connection, resumes right after the commit.
        again = (await bus_factory()).consumer(group, [topic])
        rest = await take(again, 6)
        assert [r.value for r in first + rest] == [b"%d" % i for i in range(10)]
        await self.assert_quiet(again)
        await again.aclose()

    async def test_uncommitted_records_are_redelivered(self, bus_factory: BusFactory) -> None:
        bus = await bus_factory()
        topic = await new_topic(bus)
        group = unique("group")
        await bus.producer().send_many([OutgoingRecord(topic, b"%d" % i) for i in range(12)])
        crashed = bus.consumer(group, [topic])
        seen = await take(crashed, 12)
        # Commit only the first record of each partition, then "crash": close without
        # committing the rest.
        firsts: dict[TopicPartition, Record] = {}
        for r in seen:
            firsts.setdefault(r.tp, r)
        await crashed.commit({tp: r.offset + 1 for tp, r in firsts.items()})
        await crashed.aclose()
        survivor = bus.consumer(group, [topic])
        redelivered = await take(survivor, 12 - len(firsts))
        unfinished = [r for r in seen if r not in firsts.values()]
        assert sorted(r.value for r in redelivered) == sorted(r.value for r in unfinished)
        await self.assert_quiet(survivor)
        await survivor.aclose()

    async def test_every_group_sees_everything(self, bus_factory: BusFactory) -> None:
        bus = await bus_factory()
        topic = await new_topic(bus)
        await bus.producer().send_many([OutgoingRecord(topic, b"%d" % i) for i in range(9)])
        a = bus.consumer(unique("group-a"), [topic])
        b = bus.consumer(unique("group-b"), [topic])
        got_a, got_b = await take(a, 9), await take(b, 9)
        await a.commit({r.tp: r.offset + 1 for r in got_a})
        assert sorted(r.value for r in got_a) == sorted(r.value for r in got_b)
        assert len({r.value for r in got_a}) == 9
        await a.aclose()
        await b.aclose()

    async def test_one_consumer_many_topics(self, bus_factory: BusFactory) -> None:
        bus = await bus_factory()
        t1, t2 = await new_topic(bus, 1), await new_topic(bus, 2)
        await bus.producer().send(t1, b"one")
        await bus.producer().send(t2, b"two")
        consumer = bus.consumer(unique("group"), [t1, t2])
        got = await take(consumer, 2)
        assert {(r.topic, r.value) for r in got} == {(t1, b"one"), (t2, b"two")}
        assert consumer.assignment() == {
            TopicPartition(t1, 0),
            TopicPartition(t2, 0),
            TopicPartition(t2, 1),
        }
        await consumer.aclose()

    async def test_pause_and_resume(self, bus_factory: BusFactory) -> None:
        bus = await bus_factory()
        topic = await new_topic(bus, partitions=3)
        await bus.producer().send_many(
            [OutgoingRecord(topic, b"%d" % i, b"key-%d" % i) for i in range(30)]
        )
        counts = by_partition(await scan_all(bus, topic))
        held = max(counts, key=lambda tp: len(counts[tp]))
        others = sum(len(v) for tp, v in counts.items() if tp != held)
        assert others, "30 distinct keys should spread over partitions"

        consumer: Consumer

        def on_assign(tps: object) -> None:
            consumer.pause(held)

        consumer = bus.consumer(unique("group"), [topic], on_assign=on_assign)
        first = await take(consumer, others)
        assert all(r.tp != held for r in first)
        await self.assert_quiet(consumer)
        consumer.resume(held)
        rest = await take(consumer, len(counts[held]))
        assert [r.offset for r in rest] == [r.offset for r in counts[held]]
        await consumer.aclose()

    async def test_resume_wakes_a_waiting_next(self, bus_factory: BusFactory) -> None:
        bus = await bus_factory()
        topic = await new_topic(bus, partitions=1)
        tp = TopicPartition(topic, 0)
        await bus.producer().send(topic, b"held")
        consumer: Consumer
        consumer = bus.consumer(unique("group"), [topic], on_assign=lambda _: consumer.pause(tp))
        got: list[Record] = []

        async def consume() -> None:
            got.extend(await take(consumer, 1))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            await trio.sleep(self.quiet_s)  # time passes: a paused partition yields nothing
            assert not got
            consumer.resume(tp)
        assert [r.value for r in got] == [b"held"]
        await consumer.aclose()

    async def test_seek_rereads_and_discards_fetched(self, bus_factory: BusFactory) -> None:
        bus = await bus_factory()
        topic = await new_topic(bus, partitions=1)
        tp = TopicPartition(topic, 0)
        await bus.producer().send_many([OutgoingRecord(topic, b"%d" % i) for i in range(10)])
        consumer = bus.consumer(unique("group"), [topic])
        first = await take(consumer, 5)
        consumer.seek(tp, first[1].offset)
        again = await take(consumer, 9)
        assert [r.value for r in again] == [b"%d" % i for i in range(1, 10)]
        consumer.seek(tp, again[-1].offset + 1)
        await self.assert_quiet(consumer)
        # Seek forward, past records never returned.
        consumer.seek(tp, first[0].offset + 8)
        assert [r.value for r in await take(consumer, 2)] == [b"8", b"9"]
        await consumer.aclose()

    async def test_list_topics_reports_partitions(self, bus_factory: BusFactory) -> None:
        bus = await bus_factory()
        topic = await new_topic(bus, partitions=2)
        await bus.ensure_topics([TopicSpec(topic, 2)])  # idempotent
        topics = await bus.list_topics()
        assert topics[topic] == 2

    async def test_scan_end_offsets_committed(self, bus_factory: BusFactory) -> None:
        bus = await bus_factory()
        topic = await new_topic(bus, partitions=3)
        group = unique("group")
        assert await bus.end_offsets(topic) == {0: 0, 1: 0, 2: 0}
        assert await bus.committed(group, topic) == {}
        sent = [
            OutgoingRecord(topic, b"%d" % i, b"key-%d" % i, {"i": b"%d" % i}) for i in range(25)
        ]
        await bus.producer().send_many(sent)
        scanned = await scan_all(bus, topic)
        assert sorted(r.value for r in scanned) == sorted(r.value for r in sent)
        assert all(dict(r.headers) == {"i": r.value} for r in scanned)
        ends = await bus.end_offsets(topic)
        for tp, records in by_partition(scanned).items():
            offsets = [r.offset for r in records]
            assert offsets == sorted(offsets)
            assert ends[tp.partition] == offsets[-1] + 1
        assert sum(ends.values()) == 25  # a fresh topic starts at offset 0

        consumer = bus.consumer(group, [topic])
        await take(consumer, 1)
        await consumer.commit({TopicPartition(topic, 1): 2, TopicPartition(topic, 2): 0})
        assert await bus.committed(group, topic) == {1: 2, 2: 0}
        await consumer.commit({TopicPartition(topic, 1): 3})
        assert await bus.committed(group, topic) == {1: 3, 2: 0}
        await consumer.aclose()
        # scan neither joins nor commits
        await scan_all(bus, topic)
        assert await bus.committed(group, topic) == {1: 3, 2: 0}

        # From offsets (what a group has not done yet), and only the partitions named.
        start = {1: 3, 2: 0}
        partial = [r async for r in bus.scan(topic, start=start)]
        assert {r.partition for r in partial} <= {1, 2}
        expected = [r for r in scanned if r.partition in start and r.offset >= start[r.partition]]
        assert sorted((r.partition, r.offset) for r in partial) == sorted(
            (r.partition, r.offset) for r in expected
        )
        assert [r async for r in bus.scan(topic, start={0: ends[0]})] == []

    async def test_aclose_ends_a_waiting_next(self, bus_factory: BusFactory) -> None:
        bus = await bus_factory()
        topic = await new_topic(bus, partitions=1)
        consumer = bus.consumer(unique("group"), [topic])
        async with trio.open_nursery() as nursery:

            async def wait_for_record() -> None:
                with trio.fail_after(self.timeout_s), pytest.raises(trio.ClosedResourceError):
                    await consumer.next()

            nursery.start_soon(wait_for_record)
            await trio.testing.wait_all_tasks_blocked()  # next() is waiting
            await consumer.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await consumer.next()

    async def test_cancelled_next_loses_nothing(self, bus_factory: BusFactory) -> None:
        bus = await bus_factory()
        topic = await new_topic(bus, partitions=2)
        await bus.producer().send_many([OutgoingRecord(topic, b"%d" % i) for i in range(50)])
        consumer = bus.consumer(unique("group"), [topic])
        got: list[Record] = []
        with trio.fail_after(self.timeout_s):
            while len(got) < 50:
                # Cancel next() at random points, including right after it was called.
                with trio.move_on_after(0):
                    got.append(await consumer.next())
                with trio.move_on_after(0.001):
                    got.append(await consumer.next())
        assert sorted(r.value for r in got) == sorted(b"%d" % i for i in range(50))
        await consumer.aclose()
