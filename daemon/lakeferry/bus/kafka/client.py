"""The Kafka bus: the connection, its health, the admin calls (topics, offsets, scans)."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import confluent_kafka
import trio
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException
from confluent_kafka import TopicPartition as KTopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic  # type: ignore[attr-defined]

from lakeferry.bus.base import (
    AssignCallback,
    Bus,
    Consumer,
    GroupMember,
    HealthCallback,
    Producer,
    Record,
    RevokeCallback,
    TopicSpec,
)
from lakeferry.bus.kafka.common import (
    ADMIN_RETRY_INITIAL,
    ADMIN_RETRY_MAX,
    CONSUME_BATCH,
    HEALTH_CHECK_INTERVAL,
    _record,
    log,
    retriable,
    unreachable,
)
from lakeferry.bus.kafka.consumer import KafkaConsumer
from lakeferry.bus.kafka.producer import KafkaProducer
from lakeferry.errors import BusError


class GroupNotEmpty(BusError):
    """The broker refused to move a group's offsets: the group has live members."""


_NOT_EMPTY = {KafkaError.NON_EMPTY_GROUP, KafkaError.UNKNOWN_MEMBER_ID}


def _code(exc: KafkaException) -> int:
    err = exc.args[0] if exc.args else None
    return err.code() if isinstance(err, KafkaError) else -1


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
        self._readers: dict[str, confluent_kafka.Consumer] = {}
        """Clients kept for offset reads, by group ("": end offsets), made on first use and
        closed by :meth:`aclose`. The daemon reads its lag every few seconds: a client per read
        cost a connection and librdkafka's threads each time (and a tool like ``lakeferry
        audit`` ~65 ms a read). They only query (metadata, watermarks, committed offsets: calls
        librdkafka allows from any thread) and never join their group."""
        self._readers_lock = threading.Lock()
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
            self._await_metadata({s.name: s.partitions for s in missing})
            return created

        created: list[str] = await self._admin_call(work, "cannot create topics")
        return created

    def _await_metadata(self, wanted: Mapping[str, int]) -> None:
        """Wait (in a worker thread) until the readers' metadata shows each new topic with all
        its partitions and a leader for each: the brokers answer "created" before every one of
        them knows, and an offset read of a topic just created then found no partitions (a
        clean-clone CI run: ``end_offsets`` of a fresh topic was ``{}``)."""
        client = self._reader()
        deadline = time.monotonic() + self.operation_timeout
        for name, partitions in wanted.items():
            while True:
                meta = client.list_topics(name, timeout=self.operation_timeout).topics.get(name)
                ready = (
                    meta is not None
                    and meta.error is None
                    and len(meta.partitions) == partitions
                    and all(p.leader >= 0 and p.error is None for p in meta.partitions.values())
                )
                if ready:
                    break
                if time.monotonic() > deadline:
                    raise BusError(f"topic {name} was created but its metadata is not ready")
                time.sleep(0.05)

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

    async def group_members(self, group: str) -> list[GroupMember]:
        """The live members of a consumer group (none: the group is empty or unknown)."""

        def work() -> list[GroupMember]:
            futures = self._admin.describe_consumer_groups(
                [group], request_timeout=self.operation_timeout
            )
            described = futures[group].result(timeout=self.operation_timeout)
            return [
                GroupMember(m.client_id, m.host, m.group_instance_id or "")
                for m in described.members
            ]

        result: list[GroupMember] = await self._admin_call(work, f"cannot describe group {group}")
        return result

    async def set_committed(self, group: str, topic: str, offsets: Mapping[int, int]) -> None:
        """Set ``group``'s committed offsets of ``topic`` (partition -> next offset).

        The broker refuses while the group has live members (:class:`GroupNotEmpty`): offsets
        are moved only for a group nobody consumes in.
        """

        def work() -> None:
            request = ConsumerGroupTopicPartitions(
                group, [KTopicPartition(topic, p, o) for p, o in sorted(offsets.items())]
            )
            futures = self._admin.alter_consumer_group_offsets(
                [request], request_timeout=self.operation_timeout
            )
            result = futures[group].result(timeout=self.operation_timeout)
            for tp in result.topic_partitions:
                if tp.error is not None:
                    raise KafkaException(tp.error)

        try:
            await self._admin_call(work, f"cannot set {group}'s offsets of {topic}")
        except BusError as exc:
            cause = exc.__cause__
            if isinstance(cause, KafkaException) and _code(cause) in _NOT_EMPTY:
                raise GroupNotEmpty(f"group {group} has live members") from exc
            raise

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

    def _reader(self, group: str = "") -> confluent_kafka.Consumer:
        """The kept client for offset reads of ``group`` ("": end offsets); any thread."""
        with self._readers_lock:
            if self._closed:
                raise BusError("the bus is closed")
            client = self._readers.get(group)
            if client is None:
                conf = (
                    {**self._client, "group.id": group, "enable.auto.commit": False}
                    if group
                    else {**self._client, "group.id": f"lakeferry-reader-{uuid.uuid4().hex[:12]}"}
                )
                client = self._readers[group] = confluent_kafka.Consumer(conf)
            return client

    async def end_offsets(self, topic: str) -> dict[int, int]:
        def work() -> dict[int, int]:
            client = self._reader()
            meta = client.list_topics(topic, timeout=self.operation_timeout)
            parts = meta.topics[topic].partitions if topic in meta.topics else {}
            out = {}
            for p in parts:
                _low, high = client.get_watermark_offsets(
                    KTopicPartition(topic, p), timeout=self.operation_timeout, cached=False
                )
                out[p] = high
            return out

        result: dict[int, int] = await self._admin_call(work, f"cannot read the end of {topic}")
        return result

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        def work() -> dict[int, int]:
            client = self._reader(group)
            meta = client.list_topics(topic, timeout=self.operation_timeout)
            parts = meta.topics[topic].partitions if topic in meta.topics else {}
            if not parts:
                return {}
            tps = [KTopicPartition(topic, p) for p in parts]
            got = client.committed(tps, timeout=self.operation_timeout)
            return {tp.partition: tp.offset for tp in got if tp.offset >= 0}

        result: dict[int, int] = await self._admin_call(
            work, f"cannot read {group}'s committed offsets of {topic}"
        )
        return result

    async def scan(
        self, topic: str, *, start: Mapping[int, int] | None = None
    ) -> AsyncIterator[Record]:
        """Every retained record of ``topic`` up to its end at the time of the call (from
        ``start``'s offsets, when given: :meth:`lakeferry.bus.base.Bus.scan`)."""
        ends = await self.end_offsets(topic)
        if start is not None:
            ends = {p: end for p, end in ends.items() if p in start}
        client = self._scan_client()
        try:
            starts: dict[int, int] = {}

            def assign() -> None:
                for p in ends:
                    low, _high = client.get_watermark_offsets(
                        KTopicPartition(topic, p), timeout=self.operation_timeout
                    )
                    starts[p] = low if start is None else max(low, start[p])
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
        with self._readers_lock:
            self._closed = True
            readers, self._readers = list(self._readers.values()), {}
        for client in readers:
            await trio.to_thread.run_sync(client.close)


if TYPE_CHECKING:

    def _implements(
        bus: KafkaBus, producer: KafkaProducer, consumer: KafkaConsumer
    ) -> tuple[Bus, Producer, Consumer]:
        return bus, producer, consumer
