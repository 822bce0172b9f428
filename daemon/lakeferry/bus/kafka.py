"""The Kafka bus: the bus contract on confluent-kafka (librdkafka), for production scale-out.

Any Kafka-protocol broker works: Apache Kafka, Redpanda, Azure Event Hubs' Kafka endpoint,
Confluent Cloud. Any librdkafka setting passes through from ``[bus.kafka.client]`` (all
clients), ``[bus.kafka.producer]`` and ``[bus.kafka.consumer]`` — SASL and SSL included.

Threads, and why: librdkafka calls block (poll, commit, close, admin requests), and trio's
thread must never block. So:

- the **producer** is shared by the whole process; ``produce()`` only enqueues (safe on the
  trio thread), and one OS thread polls for delivery reports, handing each back to trio with
  ``TrioToken.run_sync_soon``. ``send`` returns when the broker acknowledged (``acks=all``,
  idempotence on).
- each **consumer** is owned by one OS thread that loops on ``consume()`` with a short timeout
  (so it keeps its group membership however busy the stage is) and runs every other operation
  on the consumer — commit, pause, resume, seek, close — between polls, as commands sent from
  trio. Records go into per-partition buffers on the trio side. When the buffers hold more
  than ``BUFFER_HIGH`` records the thread pauses every partition (fetching stops, the group
  membership stays) until they drain below ``BUFFER_LOW``: backpressure, never unbounded memory.
- rebalance callbacks run on the consumer thread inside ``consume()``; they call into trio
  synchronously (``trio.from_thread.run_sync``) so the stage can hand back its contiguous
  offsets, which are committed *before* the partitions go. Records fetched for a partition
  by a poll that began before a seek are dropped by generation number (the seek fetches them
  again), and a revoke clears the partition's buffer; nothing is delivered twice. (Rebalance
  callbacks run inside ``consume()`` and trio runs its callbacks in order, so records a poll
  returns after a rebalance always belong to the new assignment.)
- admin work (topics, scans, committed offsets) runs in ``trio.to_thread`` with timeouts; an
  error the cluster raises while it moves (a leader election, metadata of a new topic not yet
  everywhere) is retried with backoff for up to ``operation_timeout``, in the bus, so no caller
  sees ``NOT_LEADER_FOR_PARTITION`` right after creating a topic.

Resource handling: :meth:`KafkaBus.aclose` flushes the producer (bounded by
``operation_timeout``) and stops the threads; closing a consumer leaves the group in its thread
while trio awaits it without blocking.

Error handling: a broker outage does not fail anything by itself: deliveries wait inside
librdkafka (``message.timeout.ms``, 5 minutes by default), commits fail and are retried by the
stage, and the bus reports the outage through ``on_health`` (logs and metrics) and its recovery.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import confluent_kafka
import trio
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import TopicPartition as KTopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic  # type: ignore[attr-defined]

from lakeferry.bus.base import (
    AssignCallback,
    Bus,
    Consumer,
    HealthCallback,
    OutgoingRecord,
    Producer,
    Record,
    RevokeCallback,
    TopicPartition,
    TopicSpec,
)
from lakeferry.bus.buffers import PartitionBuffers
from lakeferry.errors import BusError
from lakeferry.logs import get_logger

log = get_logger("bus.kafka")

BUFFER_HIGH = 1000
BUFFER_LOW = 200
POLL_TIMEOUT = 0.05
CONSUME_BATCH = 500
HEALTH_CHECK_INTERVAL = 2.0
ADMIN_RETRY_INITIAL = 0.1
ADMIN_RETRY_MAX = 2.0
"""Backoff between tries of an admin or metadata call that failed with a retriable error."""

RETRIABLE = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,  # a leader election is under way
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,  # metadata of a new topic not everywhere yet
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.NOT_COORDINATOR,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
    }
)
"""Codes retried even where librdkafka does not flag the error ``retriable()``."""

KTP = KTopicPartition


def retriable(exc: KafkaException) -> bool:
    """Whether a failed call is worth trying again: the cluster is moving (leader elections,
    metadata not ready, a coordinator loading), not refusing."""
    err = exc.args[0] if exc.args else None
    if not isinstance(err, KafkaError) or err.fatal():
        return False
    return bool(err.retriable()) or err.code() in RETRIABLE


def unreachable(exc: KafkaException) -> bool:
    """Whether a failed call means no broker answered (as opposed to one refusing)."""
    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and err.code() in (
        KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN,
        KafkaError._RESOLVE,
    )  # fmt: skip


def _tp(tp: KTopicPartition) -> TopicPartition:
    return TopicPartition(tp.topic, tp.partition)


def _record(msg: Any) -> Record:
    headers = msg.headers() or []
    return Record(
        msg.topic(),
        msg.partition(),
        msg.offset(),
        msg.key(),
        msg.value() or b"",
        {k: (v or b"") for k, v in headers},
        msg.timestamp()[1],
    )


class KafkaBus:
    """A connection to a Kafka cluster. Open with :meth:`open` (from trio)."""

    kind = "kafka"

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        client: Mapping[str, Any] | None = None,
        producer: Mapping[str, Any] | None = None,
        consumer: Mapping[str, Any] | None = None,
        default_partitions: int = 4,
        replication_factor: int = 1,
        topic_config: Callable[[str], dict[str, str]] | None = None,
        operation_timeout: float = 10.0,
        member: str | None = None,
    ) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self.member = member
        """This process's stable name (``<node>.<instance>``): the static group membership of
        its consumers (``group.instance.id``). None for tools, which join no group."""
        self.bootstrap_servers = bootstrap_servers
        self._client = {
            "bootstrap.servers": bootstrap_servers,
            # librdkafka logs every failed reconnect (many per second while a broker is down);
            # outages are reported once through error_cb and on_health instead. Raise it with
            # [bus.kafka.client] "log_level" = 6 to debug a connection.
            "log_level": 2,
            "logger": log,
            **dict(client or {}),
        }
        self._producer_conf = dict(producer or {})
        self._consumer_conf = dict(consumer or {})
        self.default_partitions = default_partitions
        self.replication_factor = replication_factor
        self.topic_config = topic_config or (lambda name: {})
        self.operation_timeout = operation_timeout
        self.on_health: HealthCallback | None = None
        self._up = True
        self._closed = False
        admin_conf: dict[str, Any] = {**self._client, "error_cb": self._error_cb}
        self._admin = AdminClient(admin_conf)
        self._producer: KafkaProducer | None = None
        self._consumers: set[KafkaConsumer] = set()
        self._health_thread = threading.Thread(
            target=self._watch_health, name="lakeferry-kafka-health", daemon=True
        )
        self._health_thread.start()

    @classmethod
    async def open(cls, bootstrap_servers: str, **kwargs: Any) -> KafkaBus:
        await trio.lowlevel.checkpoint()
        return cls(bootstrap_servers, **kwargs)

    # -- health ------------------------------------------------------------------------------

    def _error_cb(self, err: KafkaError) -> None:
        """librdkafka's error callback (any client thread)."""
        code = err.code()
        if code in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE):
            self._set_health(False, err.str())
        elif not err.retriable() or err.fatal():
            self._from_thread(lambda: log.error("kafka error", extra={"error": err.str()}))

    def _set_health(self, up: bool, detail: str) -> None:
        if up == self._up:
            return
        self._up = up

        def report() -> None:
            if up:
                log.warning("kafka reachable again", extra={"bootstrap": self.bootstrap_servers})
            else:
                log.error(
                    "kafka unreachable",
                    extra={"bootstrap": self.bootstrap_servers, "error": detail},
                )
            if self.on_health is not None:
                self.on_health(up, detail)

        self._from_thread(report)

    def _from_thread(self, fn: Callable[[], None]) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn)

    def _watch_health(self) -> None:
        """While the brokers are reported down, probe the cluster until it answers."""
        while not self._closed:
            time.sleep(HEALTH_CHECK_INTERVAL / 4)
            if self._up or self._closed:
                continue
            try:
                meta = self._admin.list_topics(timeout=HEALTH_CHECK_INTERVAL)
            except KafkaException:
                continue
            if meta.brokers:
                self._set_health(True, "metadata answered")

    @property
    def up(self) -> bool:
        return self._up

    # -- producing ---------------------------------------------------------------------------

    def producer(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = KafkaProducer(self)
        return self._producer

    # -- consuming ---------------------------------------------------------------------------

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        *,
        on_assign: AssignCallback | None = None,
        on_revoke: RevokeCallback | None = None,
    ) -> KafkaConsumer:
        member = KafkaConsumer(self, group, topics, on_assign=on_assign, on_revoke=on_revoke)
        self._consumers.add(member)
        return member

    def _consumer_config(self, group: str) -> dict[str, Any]:
        config: dict[str, Any] = {
            **self._client,
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            # A member joining or leaving moves only the partitions that must move; the others
            # keep flowing (an eager rebalance stops every member of the group).
            "partition.assignment.strategy": "cooperative-sticky",
            "error_cb": self._error_cb,
        }
        if self.member is not None:
            # Static membership: a member that restarts under the same name (a crash, a
            # deploy) takes its partitions back at once instead of the group waiting for the
            # old session to expire. One group per stage, so the name is unique in its group.
            config["group.instance.id"] = self.member
        return {**config, **self._consumer_conf}

    # -- admin -------------------------------------------------------------------------------

    async def _admin_call(self, fn: Callable[[], Any], what: str = "") -> Any:
        """Run blocking ``fn`` in a worker thread; retry retriable errors (:func:`retriable`)
        with backoff for up to ``operation_timeout``, then fail with :class:`BusError`."""
        deadline = trio.current_time() + self.operation_timeout
        delay = ADMIN_RETRY_INITIAL
        while True:
            try:
                return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)
            except KafkaException as exc:
                if not retriable(exc) or trio.current_time() + delay > deadline:
                    what = what or getattr(fn, "__name__", "admin call")
                    if unreachable(exc):
                        raise BusError(
                            f"kafka unreachable at {self.bootstrap_servers} ({what}: "
                            f"{exc.args[0].str()}); is the broker up, and is "
                            "bus.kafka.bootstrap_servers right?"
                        ) from exc
                    raise BusError(f"{what} on {self.bootstrap_servers}: {exc}") from exc
                log.debug("retriable kafka error", extra={"call": what, "error": str(exc)})
            await trio.sleep(delay)
            delay = min(delay * 2, ADMIN_RETRY_MAX)

    async def list_topics(self) -> dict[str, int]:
        """Existing topics and their partition counts."""

        def work() -> dict[str, int]:
            meta = self._admin.list_topics(timeout=self.operation_timeout)
            return {name: len(t.partitions) for name, t in meta.topics.items()}

        result: dict[str, int] = await self._admin_call(work, "cannot list topics")
        return result

    async def ensure_topics(self, specs: Sequence[TopicSpec]) -> None:
        await self.create_topics(specs)

    async def create_topics(self, specs: Sequence[TopicSpec]) -> list[str]:
        """Create the missing ones; return the names created."""
        existing = await self.list_topics()
        missing = [s for s in specs if s.name not in existing]
        if not missing:
            return []

        def work() -> list[str]:
            new = [
                NewTopic(
                    s.name,
                    num_partitions=s.partitions,
                    replication_factor=self.replication_factor,
                    config=self.topic_config(s.name),
                )
                for s in missing
            ]
            futures = self._admin.create_topics(new, operation_timeout=self.operation_timeout)
            created = []
            for name, future in futures.items():
                try:
                    future.result(timeout=self.operation_timeout)
                    created.append(name)
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise
            return created

        created: list[str] = await self._admin_call(work, "cannot create topics")
        return created

    async def maintain(self, *, retention: float, compact: Sequence[str]) -> dict[str, int]:
        """Nothing: the brokers apply retention and compaction (``lakeferry topics ensure``
        sets them on the topics)."""
        await trio.lowlevel.checkpoint()
        return {}

    async def describe_topics(self, names: Sequence[str]) -> dict[str, dict[str, str]]:
        """Topic configs (only the keys lakeferry manages) of existing topics."""

        def work() -> dict[str, dict[str, str]]:
            resources = [ConfigResource(ConfigResource.Type.TOPIC, n) for n in names]
            if not resources:
                return {}
            futures = self._admin.describe_configs(
                resources, request_timeout=self.operation_timeout
            )
            out: dict[str, dict[str, str]] = {}
            for resource, future in futures.items():
                entries = future.result(timeout=self.operation_timeout)
                out[resource.name] = {k: str(v.value) for k, v in entries.items()}
            return out

        result: dict[str, dict[str, str]] = await self._admin_call(work, "cannot describe topics")
        return result

    def _scan_client(self) -> confluent_kafka.Consumer:
        return confluent_kafka.Consumer(
            {
                **self._client,
                "group.id": f"lakeferry-scan-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                **self._consumer_conf,
            }
        )

    async def end_offsets(self, topic: str) -> dict[int, int]:
        def work() -> dict[int, int]:
            client = self._scan_client()
            try:
                meta = client.list_topics(topic, timeout=self.operation_timeout)
                parts = meta.topics[topic].partitions if topic in meta.topics else {}
                out = {}
                for p in parts:
                    _low, high = client.get_watermark_offsets(
                        KTopicPartition(topic, p), timeout=self.operation_timeout
                    )
                    out[p] = high
                return out
            finally:
                client.close()

        result: dict[int, int] = await self._admin_call(work, f"cannot read the end of {topic}")
        return result

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        def work() -> dict[int, int]:
            client = confluent_kafka.Consumer({**self._client, "group.id": group})
            try:
                meta = client.list_topics(topic, timeout=self.operation_timeout)
                parts = meta.topics[topic].partitions if topic in meta.topics else {}
                if not parts:
                    return {}
                tps = [KTopicPartition(topic, p) for p in parts]
                got = client.committed(tps, timeout=self.operation_timeout)
                return {tp.partition: tp.offset for tp in got if tp.offset >= 0}
            finally:
                client.close()

        result: dict[int, int] = await self._admin_call(
            work, f"cannot read {group}'s committed offsets of {topic}"
        )
        return result

    async def scan(self, topic: str) -> AsyncIterator[Record]:
        """Every retained record of ``topic`` up to its end at the time of the call."""
        ends = await self.end_offsets(topic)
        client = self._scan_client()
        try:
            starts: dict[int, int] = {}

            def assign() -> None:
                for p in ends:
                    low, _high = client.get_watermark_offsets(
                        KTopicPartition(topic, p), timeout=self.operation_timeout
                    )
                    starts[p] = low
                client.assign(
                    [KTopicPartition(topic, p, starts[p]) for p in ends if ends[p] > starts[p]]
                )

            await self._admin_call(assign, f"cannot start a scan of {topic}")
            remaining = {p for p in ends if ends[p] > starts.get(p, 0)}
            deadline = time.monotonic() + max(30.0, self.operation_timeout)
            while remaining:
                msgs = await self._admin_call(lambda: client.consume(CONSUME_BATCH, 0.5))
                if not msgs and time.monotonic() > deadline:
                    raise BusError(f"scan of {topic} stalled before reaching the end")
                for msg in msgs:
                    if msg.error() is not None:
                        if msg.error().code() == KafkaError._PARTITION_EOF:
                            remaining.discard(msg.partition())
                        continue
                    p = msg.partition()
                    if p not in remaining:
                        continue
                    if msg.offset() >= ends[p]:
                        remaining.discard(p)
                        continue
                    yield _record(msg)
                    if msg.offset() + 1 >= ends[p]:
                        remaining.discard(p)
                    deadline = time.monotonic() + max(30.0, self.operation_timeout)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(client.close)

    async def aclose(self) -> None:
        for member in list(self._consumers):
            await member.aclose()
        if self._producer is not None:
            await self._producer.aclose()
        self._closed = True


class _Waiter:
    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: str | None = None

    def resolve(self, error: str | None) -> None:
        self.error = error
        self.done.set()


class KafkaProducer:
    """The process's producer: ``acks=all``, idempotent, deliveries awaited in trio."""

    def __init__(self, bus: KafkaBus) -> None:
        self._bus = bus
        conf = {
            **bus._client,
            "acks": "all",
            "enable.idempotence": True,
            # Concurrent sends share a request: 10 ms took a third off the broker's and this
            # process's CPU per message against 2 ms (docs/benchmarks.md); four hops add <= 40 ms.
            "linger.ms": 10,
            "error_cb": bus._error_cb,
            **bus._producer_conf,
        }
        self._producer = confluent_kafka.Producer(conf)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._poll_loop, name="lakeferry-kafka-producer", daemon=True
        )
        self._thread.start()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def _delivered(self, waiter: _Waiter, err: KafkaError | None, _msg: Any) -> None:
        """Delivery report, on the poll thread."""
        error = None if err is None else err.str()
        if err is None:
            self._bus._set_health(True, "delivered")
        self._bus._from_thread(lambda: waiter.resolve(error))

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Mapping[str, bytes] | None = None,
    ) -> None:
        await self.send_many([OutgoingRecord(topic, value, key, headers or {})])

    async def send_many(self, records: Sequence[OutgoingRecord]) -> None:
        waiters: list[_Waiter] = []
        for record in records:
            waiter = _Waiter()
            while True:
                try:
                    self._producer.produce(
                        record.topic,
                        record.value,
                        record.key,
                        headers=list(record.headers.items()) or None,
                        on_delivery=functools.partial(self._delivered, waiter),
                    )
                    break
                except BufferError:
                    await trio.sleep(0.01)  # librdkafka's queue is full: let it drain
            waiters.append(waiter)
        await trio.lowlevel.checkpoint()
        for waiter in waiters:
            await waiter.done.wait()
        failed = [w.error for w in waiters if w.error is not None]
        if failed:
            raise BusError(f"{len(failed)} of {len(waiters)} record(s) not delivered: {failed[0]}")

    async def aclose(self) -> None:
        timeout = self._bus.operation_timeout
        left = await trio.to_thread.run_sync(self._producer.flush, timeout)
        if left:
            log.error("records not delivered at close", extra={"count": left})
        self._stop.set()
        await trio.to_thread.run_sync(self._thread.join, 2.0)


_Command = Callable[[confluent_kafka.Consumer], None]


class KafkaConsumer:
    """A group member; one OS thread owns the librdkafka consumer (see the module docstring)."""

    def __init__(
        self,
        bus: KafkaBus,
        group: str,
        topics: Sequence[str],
        *,
        on_assign: AssignCallback | None,
        on_revoke: RevokeCallback | None,
    ) -> None:
        self.group = group
        self._bus = bus
        self._topics = list(dict.fromkeys(topics))
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._token = bus._token
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._buffers = PartitionBuffers()
        self._paused: frozenset[TopicPartition] = frozenset()
        self._generation: dict[TopicPartition, int] = {}
        self._last_popped: dict[TopicPartition, Record] = {}
        self._gen_counter = itertools.count(1)
        self._wakeup = trio.Event()
        self._closed = False
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._t_broker_paused: set[TopicPartition] = set()  # only the thread touches these
        self._t_fresh: set[TopicPartition] = set()
        self._thread = threading.Thread(
            target=self._thread_main, name=f"lakeferry-kafka-{group}", daemon=True
        )
        self._thread.start()

    # -- the consumer thread -----------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            consumer = confluent_kafka.Consumer(self._bus._consumer_config(self.group))
            consumer.subscribe(
                self._topics,
                on_assign=self._t_assign,
                on_revoke=self._t_revoke,
                on_lost=self._t_lost,
            )
            self._t_loop(consumer)
        except BaseException as exc:  # surfaced to trio by next()
            self._failure = exc
            self._bus._from_thread(self._wake)
            return
        try:
            consumer.close()
        except KafkaException as exc:
            log.warning("closing a consumer failed", extra={"group": self.group, "error": str(exc)})

    def _t_loop(self, consumer: confluent_kafka.Consumer) -> None:
        held_back = False
        broker_paused = self._t_broker_paused
        while not self._stop.is_set():
            while True:
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    break
                command(consumer)
            # Pause fetching only while the buffers are full. A partition the stage paused (a
            # retry rung waiting for its head's due time) keeps its records in the trio-side
            # buffer instead: resuming it is then instant, not one broker fetch round later.
            if held_back and self._buffers.count <= BUFFER_LOW:
                held_back = False
            elif not held_back and self._buffers.count >= BUFFER_HIGH:
                held_back = True
            assigned = {_tp(tp) for tp in consumer.assignment()}
            wanted = set(assigned) if held_back else set()
            fresh = self._t_fresh & assigned
            self._t_fresh.clear()
            to_pause = (wanted - broker_paused) | (wanted & fresh)
            to_resume = ((broker_paused - wanted) | (fresh - wanted)) & assigned
            if to_pause:
                consumer.pause([KTopicPartition(t, p) for t, p in to_pause])
            if to_resume:
                consumer.resume([KTopicPartition(t, p) for t, p in to_resume])
            broker_paused.clear()
            broker_paused.update(wanted)
            generations = dict(self._generation)
            # poll() returns as soon as one record is there; consume(n, timeout) would wait for n
            # records or the whole timeout, adding its timeout to every hop's latency.
            first = consumer.poll(POLL_TIMEOUT)
            if first is None:
                continue
            msgs = [first, *consumer.consume(CONSUME_BATCH - 1, 0)]
            records = []
            for msg in msgs:
                error = msg.error()
                if error is not None:
                    log.debug("consume error", extra={"error": error.str()})
                    continue
                records.append(_record(msg))
            if records:
                self._bus._set_health(True, "consumed")
                self._bus._from_thread(functools.partial(self._deliver, records, generations))

    def _t_assign(
        self, consumer: confluent_kafka.Consumer, partitions: list[KTopicPartition]
    ) -> None:
        tps = [_tp(tp) for tp in partitions]
        # librdkafka may keep a partition's pause across a revoke and a new assignment (found
        # by the chaos run: a partition paused for backpressure, revoked and assigned again was
        # never fetched), so the loop pauses or resumes every freshly assigned one explicitly.
        self._t_fresh.update(tps)  # pause state unknown: the loop sets it explicitly
        self._call_trio(self._assigned, tps)

    def _t_revoke(
        self, consumer: confluent_kafka.Consumer, partitions: list[KTopicPartition]
    ) -> None:
        tps = [_tp(tp) for tp in partitions]
        offsets = self._call_trio(self._revoked, tps)
        if offsets:
            try:
                consumer.commit(
                    offsets=[KTopicPartition(t, p, o) for (t, p), o in offsets.items()],
                    asynchronous=False,
                )
            except KafkaException as exc:
                log.warning(
                    "commit on revoke failed", extra={"group": self.group, "error": str(exc)}
                )

    def _t_lost(
        self, consumer: confluent_kafka.Consumer, partitions: list[KTopicPartition]
    ) -> None:
        # Lost, not revoked: another member may already own them; commit nothing.
        self._call_trio(self._revoked, [_tp(tp) for tp in partitions], True)

    def _call_trio(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return trio.from_thread.run_sync(fn, *args, trio_token=self._token)
        except trio.RunFinishedError:
            return None

    # -- trio side ---------------------------------------------------------------------------

    def _wake(self) -> None:
        self._wakeup.set()

    def _assigned(self, tps: list[TopicPartition]) -> None:
        self._buffers.add(tps)
        if self._on_assign is not None:
            self._on_assign(tps)
        self._wake()

    def _revoked(
        self, tps: list[TopicPartition], lost: bool = False
    ) -> Mapping[TopicPartition, int] | None:
        for tp in tps:
            self._last_popped.pop(tp, None)
            self._buffers.remove(tp)
        offsets = self._on_revoke(tps) if self._on_revoke is not None else None
        return None if lost else offsets

    def _deliver(self, records: list[Record], generations: dict[TopicPartition, int]) -> None:
        for record in records:
            tp = record.tp
            if tp not in self._buffers or generations.get(tp, 0) != self._generation.get(tp, 0):
                continue  # revoked, or sought since this poll began (it is fetched again)
            self._buffers.extend(tp, [record])
        self._wake()

    def _pop(self) -> Record | None:
        record = self._buffers.pop(self._paused)
        if record is not None:
            self._last_popped[record.tp] = record
        return record

    async def next(self) -> Record:
        while True:
            await trio.lowlevel.checkpoint()
            if self._closed:
                raise trio.ClosedResourceError("the consumer is closed")
            if self._failure is not None:
                raise BusError(f"kafka consumer {self.group} failed: {self._failure!r}")
            record = self._pop()
            if record is not None:
                return record
            if self._wakeup.is_set():
                self._wakeup = trio.Event()
                continue
            await self._wakeup.wait()

    def pause(self, tp: TopicPartition) -> None:
        self._paused = self._paused | {tp}

    def resume(self, tp: TopicPartition) -> None:
        self._paused = self._paused - {tp}
        self._wake()

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the consumer is closed")
        if tp not in self._buffers:
            raise ValueError(f"{tp} is not assigned to this consumer")
        last = self._last_popped.get(tp)
        if last is not None and last.offset == offset:
            # Putting back the record just taken (a retry rung's head that is not due yet):
            # the buffer already holds what follows it, so no refetch from the broker.
            self._buffers.put_back(last)
            del self._last_popped[tp]
            return
        self._generation[tp] = next(self._gen_counter)
        self._buffers.clear(tp)
        target = KTopicPartition(tp.topic, tp.partition, offset)

        def command(consumer: confluent_kafka.Consumer) -> None:
            try:
                consumer.seek(target)
            except KafkaException as exc:
                # Only when the partition was revoked meanwhile: its new owner reads it.
                log.warning("seek failed", extra={"partition": str(tp), "error": str(exc)})

        self._commands.put(command)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the consumer is closed")
        if any(offset < 0 for offset in offsets.values()):
            raise ValueError("offsets must not be negative")
        if not offsets:
            await trio.lowlevel.checkpoint()
            return
        items = [KTopicPartition(t, p, o) for (t, p), o in offsets.items()]
        done = trio.Event()
        outcome: list[BaseException | None] = []

        def command(consumer: confluent_kafka.Consumer) -> None:
            try:
                consumer.commit(offsets=items, asynchronous=False)
                outcome.append(None)
            except KafkaException as exc:
                outcome.append(exc)
            self._bus._from_thread(done.set)

        self._commands.put(command)
        with trio.CancelScope(shield=True):
            with trio.move_on_after(self._bus.operation_timeout + 5) as scope:
                await done.wait()
        if scope.cancelled_caught:
            raise BusError(f"commit for {self.group} timed out")
        if outcome and outcome[0] is not None:
            raise BusError(f"commit for {self.group} failed: {outcome[0]}")

    def assignment(self) -> frozenset[TopicPartition]:
        return self._buffers.assigned()

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        self._bus._consumers.discard(self)
        self._wake()
        revoked = list(self._buffers.order)
        final = self._on_revoke(revoked) if (self._on_revoke and revoked) else None
        if final:
            with trio.CancelScope(shield=True), trio.move_on_after(self._bus.operation_timeout):
                done = trio.Event()
                items = [KTopicPartition(t, p, o) for (t, p), o in final.items()]

                def command(consumer: confluent_kafka.Consumer) -> None:
                    try:
                        consumer.commit(offsets=items, asynchronous=False)
                    except KafkaException as exc:
                        log.warning("final commit failed", extra={"error": str(exc)})
                    self._bus._from_thread(done.set)

                self._commands.put(command)
                await done.wait()
        self._on_revoke = None  # the close below revokes again: nothing left to hand back
        self._buffers.clear()
        self._stop.set()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._thread.join, self._bus.operation_timeout + 5)


if TYPE_CHECKING:

    def _implements(
        bus: KafkaBus, producer: KafkaProducer, consumer: KafkaConsumer
    ) -> tuple[Bus, Producer, Consumer]:
        return bus, producer, consumer
