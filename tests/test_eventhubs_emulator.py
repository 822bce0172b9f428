"""The Event Hubs emulator (``tools/eventhubs_emulator.py``) against the real azure-eventhub SDK.

The SDK is the judge: its sync and aio clients read the hub's and partitions' properties, send
single events and batches (with partition keys), and receive from every kind of starting
position. The eventhub source's tests build on this.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest
from azure.eventhub import EventData, EventHubConsumerClient, EventHubProducerClient
from azure.eventhub.aio import EventHubConsumerClient as AioConsumerClient
from azure.eventhub.aio import EventHubProducerClient as AioProducerClient
from azure.eventhub.exceptions import EventHubError

from helpers.tools import load_tool
from helpers.wait import wait_for, wait_until

# Seconds per test: the real azure-eventhub SDK connects, links and waits on the emulator.
pytestmark = pytest.mark.slow

if TYPE_CHECKING:
    import eventhubs_emulator as emulator_tool  # tools/ is on mypy's path: the checker reads it
else:
    emulator_tool = load_tool("eventhubs_emulator")
TIMEOUT = 10.0


@pytest.fixture
def emulator() -> Iterator[Any]:
    running = emulator_tool.start(partitions=4)
    try:
        yield running
    finally:
        running.stop()


class Receiving:
    """A sync consumer receiving one partition in a thread, recording what arrives."""

    def __init__(self, connection_string: str, partition: str, **options: Any) -> None:
        self.events: list[EventData] = []
        self.errors: list[Exception] = []
        self.last_enqueued: dict[str, Any] | None = None
        self.client = EventHubConsumerClient.from_connection_string(
            connection_string, "$Default", retry_total=0
        )

        def on_batch(context: Any, events: list[EventData]) -> None:
            self.events.extend(events)
            if events and options.get("track_last_enqueued_event_properties"):
                self.last_enqueued = context.last_enqueued_event_properties

        def on_error(context: Any, error: Exception) -> None:
            self.errors.append(error)

        options.setdefault("max_wait_time", 0.1)
        self.thread = threading.Thread(
            target=self.client.receive_batch,
            kwargs={"on_event_batch": on_batch, "on_error": on_error, "partition_id": partition}
            | options,
            daemon=True,
        )

    def __enter__(self) -> Receiving:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        self.thread.join(TIMEOUT)

    def bodies(self) -> list[str]:
        return [e.body_as_str() for e in self.events]

    def wait_for_events(self, count: int, what: str) -> None:
        wait_until(lambda: len(self.events) >= count, timeout=TIMEOUT, what=what)


def data_of(event: EventData) -> bytes:
    """The bytes of a data body: the SDK yields its sections, though ``EventData.body`` is
    annotated as any AMQP value."""
    return b"".join(cast(Iterable[bytes], event.body))


def receive(emulator: Any, partition: str, count: int, **options: Any) -> list[EventData]:
    with Receiving(emulator.connection_string, partition, **options) as receiving:
        receiving.wait_for_events(count, f"{count} events")
        time.sleep(0.2)  # time passes and nothing more arrives
    return receiving.events


# -- sync client ---------------------------------------------------------------------------------


def test_hub_and_partition_properties(emulator: Any) -> None:
    with EventHubProducerClient.from_connection_string(emulator.connection_string) as client:
        hub = client.get_eventhub_properties()
        assert hub["eventhub_name"] == "hub1"
        assert hub["partition_ids"] == ["0", "1", "2", "3"]
        assert abs(hub["created_at"] - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)
        empty = client.get_partition_properties("2")
        assert empty["is_empty"] is True
        assert (empty["last_enqueued_sequence_number"], empty["last_enqueued_offset"]) == (-1, "-1")

        emulator.send("2", [b"one", b"two"])
        stored = emulator.events("2")
        props = client.get_partition_properties("2")
        assert props["id"] == "2"
        assert props["is_empty"] is False
        assert props["beginning_sequence_number"] == 0
        assert props["last_enqueued_sequence_number"] == 1
        assert props["last_enqueued_offset"] == str(stored[1].offset)
        assert props["last_enqueued_time_utc"] == dt.datetime.fromtimestamp(
            stored[1].enqueued_ms / 1000, dt.UTC
        )


def test_unknown_hub_is_refused(emulator: Any) -> None:
    other = emulator.connection_string.replace("EntityPath=hub1", "EntityPath=nohub")
    with (
        EventHubProducerClient.from_connection_string(other, retry_total=0) as client,
        pytest.raises(EventHubError, match="nohub"),
    ):
        client.get_partition_ids()


def test_sending_single_events_batches_and_keys(emulator: Any) -> None:
    with EventHubProducerClient.from_connection_string(emulator.connection_string) as client:
        batch = client.create_batch(partition_key="device-7")
        for i in range(5):
            batch.add(EventData(f"keyed-{i}"))
        client.send_batch(batch)
        again = client.create_batch(partition_key="device-7")
        again.add(EventData("keyed-5"))
        client.send_batch(again)
        to_two = client.create_batch(partition_id="2")
        to_two.add(EventData("explicit"))
        client.send_batch(to_two)
        client.send_event(EventData("single"), partition_id="3")
        assert client.create_batch().max_size_in_bytes == emulator_tool.MAX_MESSAGE_SIZE

    keyed = [p for p in emulator.partition_ids if any(e.partition_key for e in emulator.events(p))]
    assert len(keyed) == 1, "one key, one partition"
    assert [e.body for e in emulator.events(keyed[0])] == [b"keyed-%d" % i for i in range(6)]
    assert [e.sequence_number for e in emulator.events(keyed[0])] == list(range(6))
    assert {e.partition_key for e in emulator.events(keyed[0])} == {b"device-7"}
    assert [e.body for e in emulator.events("2")][-1] == b"explicit"
    assert [e.body for e in emulator.events("3")][-1] == b"single"


def test_receiving_from_every_starting_position(emulator: Any) -> None:
    emulator.send("1", [f"e{i}" for i in range(3)])
    # Distinct enqueued times for the time filter: the next events are sent once the emulator's
    # clock (milliseconds) has moved past the first ones'.
    first_enqueued = emulator.events("1")[-1].enqueued_ms
    wait_until(
        lambda: emulator_tool.now_ms() > first_enqueued,
        timeout=TIMEOUT,
        what="the emulator's clock to tick",
        interval=0.001,
    )
    emulator.send("1", [f"e{i}" for i in range(3, 6)])
    stored = emulator.events("1")

    # Every starting position at once: each receiver is its own client and connection.
    positions: dict[str, dict[str, Any]] = {
        "earliest": {"starting_position": "-1"},
        "offset": {"starting_position": str(stored[2].offset)},
        "offset inclusive": {
            "starting_position": str(stored[2].offset),
            "starting_position_inclusive": True,
        },
        "sequence": {"starting_position": 3},
        "sequence inclusive": {"starting_position": 3, "starting_position_inclusive": True},
        "time inclusive": {
            "starting_position": dt.datetime.fromtimestamp(stored[3].enqueued_ms / 1000, dt.UTC),
            "starting_position_inclusive": True,
        },
        "latest": {"starting_position": "@latest"},
    }
    expected = {
        "earliest": ["e0", "e1", "e2", "e3", "e4", "e5"],
        "offset": ["e3", "e4", "e5"],
        "offset inclusive": ["e2", "e3", "e4", "e5"],
        "sequence": ["e4", "e5"],
        "sequence inclusive": ["e3", "e4", "e5"],
        "time inclusive": ["e3", "e4", "e5"],
        "latest": [],
    }
    receivers = {
        name: Receiving(emulator.connection_string, "1", **options)
        for name, options in positions.items()
    }
    for receiving in receivers.values():
        receiving.thread.start()
    try:
        for name, receiving in receivers.items():
            receiving.wait_for_events(len(expected[name]), f"the {name} receiver's events")
        wait_until(
            lambda: len(emulator.receivers("1")) == len(receivers),
            timeout=TIMEOUT,
            what="every receiver attached",
        )
        # @latest gets only what is sent once it is attached; the others get it too.
        emulator.send("1", ["after"])
        for receiving in receivers.values():
            wait_for(
                receiving.bodies,
                lambda bodies: bodies[-1:] == ["after"],
                timeout=TIMEOUT,
                what="'after' at every receiver",
            )
        time.sleep(0.2)  # time passes and nothing more arrives
    finally:
        for receiving in receivers.values():
            receiving.client.close()
        for receiving in receivers.values():
            receiving.thread.join(TIMEOUT)
    assert {name: r.bodies() for name, r in receivers.items()} == {
        name: [*bodies, "after"] for name, bodies in expected.items()
    }

    everything = receivers["earliest"].events[:6]
    assert [e.sequence_number for e in everything] == list(range(6))
    assert [e.offset for e in everything] == [str(s.offset) for s in stored]
    assert [e.enqueued_time for e in everything] == [
        dt.datetime.fromtimestamp(s.enqueued_ms / 1000, dt.UTC) for s in stored
    ]
    assert len({e.offset for e in everything}) == 6


def test_properties_annotations_and_runtime_metrics_round_trip(emulator: Any) -> None:
    with EventHubProducerClient.from_connection_string(emulator.connection_string) as client:
        event = EventData(b"\x00binary\xff")
        event.properties = {"kind": "test", "n": 7}
        event.content_type = "application/octet-stream"
        batch = client.create_batch(partition_key="k")
        batch.add(event)
        client.send_batch(batch)
    [partition] = [p for p in emulator.partition_ids if emulator.events(p)]
    stored = emulator.events(partition)[0]
    with Receiving(
        emulator.connection_string,
        partition,
        starting_position="-1",
        track_last_enqueued_event_properties=True,
    ) as receiving:
        wait_until(
            lambda: receiving.last_enqueued is not None,
            timeout=TIMEOUT,
            what="the last enqueued event's properties",
        )
    [got] = receiving.events
    assert receiving.last_enqueued is not None
    assert receiving.last_enqueued["sequence_number"] == 0
    assert receiving.last_enqueued["offset"] == str(stored.offset)
    assert receiving.last_enqueued["enqueued_time"] == dt.datetime.fromtimestamp(
        stored.enqueued_ms / 1000, dt.UTC
    )
    assert data_of(got) == b"\x00binary\xff"
    assert got.properties == {b"kind": b"test", b"n": 7}
    assert got.content_type == "application/octet-stream"
    assert got.partition_key == b"k"
    assert got.system_properties[b"x-opt-sequence-number"] == 0


def test_a_large_event_travels_in_several_frames(emulator: Any) -> None:
    body = bytes(range(256)) * 3000  # 768 KB: more than one frame of the emulator (256 KiB)
    with EventHubProducerClient.from_connection_string(emulator.connection_string) as client:
        client.send_event(EventData(body), partition_id="0")
    assert emulator.events("0")[0].body == body
    [got] = receive(emulator, "0", 1, starting_position="-1")
    assert data_of(got) == body


def test_an_epoch_receiver_takes_the_partition_from_others(emulator: Any) -> None:
    emulator.send("0", ["x"])
    cs = emulator.connection_string
    with Receiving(cs, "0", starting_position="-1", owner_level=1) as first:
        wait_until(lambda: len(first.events) == 1, timeout=TIMEOUT, what="the first's event")
        assert emulator.receivers("0") == [("$Default", 1)]
        with Receiving(cs, "0", starting_position="-1", owner_level=1) as second:
            wait_until(lambda: len(second.events) == 1, timeout=TIMEOUT, what="the second's event")
            wait_until(lambda: first.errors, timeout=TIMEOUT, what="the first to be cut off")
            assert "stolen" in str(first.errors[0]) or "epoch" in str(first.errors[0])
            assert emulator.receivers("0") == [("$Default", 1)]
            with Receiving(cs, "0", starting_position="-1") as plain:
                wait_until(lambda: plain.errors, timeout=TIMEOUT, what="the plain receiver refused")
                assert plain.events == []
            emulator.send("0", ["y"])
            wait_for(
                second.bodies,
                lambda bodies: bodies == ["x", "y"],
                timeout=TIMEOUT,
                what="x and y at the second",
            )
        assert first.bodies() == ["x"]


def test_events_persist_across_a_restart(tmp_path: Path) -> None:
    first = emulator_tool.start(partitions=2, data_dir=tmp_path)
    try:
        first.send("1", [b"a", b"b"], partition_key="key")
        before = first.events("1")
    finally:
        first.stop()
    second = emulator_tool.start(partitions=2, data_dir=tmp_path)
    try:
        assert second.events("1") == before
        assert second.send("1", [b"c"]) == [2]
        assert second.events("1")[2].offset > before[1].offset
        got = receive(second, "1", 3, starting_position="-1")
        assert [data_of(e) for e in got] == [b"a", b"b", b"c"]
        assert [e.partition_key for e in got] == [b"key", b"key", None]
    finally:
        second.stop()


# -- aio client ----------------------------------------------------------------------------------


def test_the_aio_client(emulator: Any) -> None:
    async def scenario() -> None:
        cs = emulator.connection_string
        async with AioProducerClient.from_connection_string(cs) as producer:
            assert await producer.get_partition_ids() == ["0", "1", "2", "3"]
            batch = await producer.create_batch(partition_key="aio")
            for i in range(4):
                batch.add(EventData(f"a{i}"))
            await producer.send_batch(batch)
            [partition] = [p for p in emulator.partition_ids if emulator.events(p)]
            props = await producer.get_partition_properties(partition)
            assert props["last_enqueued_sequence_number"] == 3

        received: list[tuple[str, int | None, str]] = []

        async def on_batch(context: Any, events: list[EventData]) -> None:
            received.extend(
                (context.partition_id, e.sequence_number, e.body_as_str()) for e in events
            )

        async def collect(count: int, **options: Any) -> list[tuple[str, int | None, str]]:
            received.clear()
            # The aio processor sleeps a whole balancing interval before it notices close().
            consumer = AioConsumerClient.from_connection_string(
                cs, "$Default", load_balancing_interval=0.2
            )
            async with consumer:
                task = asyncio.create_task(
                    consumer.receive_batch(on_batch, max_wait_time=0.1, **options)
                )
                # The helper is sync (or trio): it polls from a thread, reading a list's length.
                await asyncio.to_thread(
                    wait_until,
                    lambda: len(received) >= count,
                    timeout=TIMEOUT,
                    what=f"{count} events",
                )
            await task
            return list(received)

        assert await collect(4, starting_position="-1") == [
            (partition, i, f"a{i}") for i in range(4)
        ]
        assert await collect(2, partition_id=partition, starting_position=1) == [
            (partition, 2, "a2"),
            (partition, 3, "a3"),
        ]

    asyncio.run(scenario())
