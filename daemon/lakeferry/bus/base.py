"""The bus contract: what every stage may ask of a message bus, and nothing more.

Two implementations keep this contract: ``embedded`` (one SQLite file, one process) and
``kafka``. Stage code only ever sees these protocols, so it never knows which bus it runs on.

Semantics every implementation guarantees:

- :meth:`Producer.send` returns only once the bus has durably accepted the record (the
  embedded bus: committed to SQLite; Kafka: acknowledged with ``acks=all``).
- A consumer in group *g* receives every record of its assigned partitions at or after the
  group's committed offset, in offset order per partition, at least once.
- :meth:`Consumer.commit` stores the *next* offset to read for each partition given.
- :meth:`Consumer.seek` moves the read position; records already fetched for that partition
  and not yet returned by :meth:`Consumer.next` are discarded.
- A paused partition returns no records until resumed; others are unaffected.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import NamedTuple, Protocol


class TopicPartition(NamedTuple):
    topic: str
    partition: int


class Record(NamedTuple):
    """One record read from the bus."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Mapping[str, bytes]
    timestamp_ms: int

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


class GroupMember(NamedTuple):
    """A live member of a consumer group (Kafka's describe-group answer)."""

    client_id: str
    host: str
    instance: str
    """``group.instance.id`` (static membership); "" for a dynamic member."""


class OutgoingRecord(NamedTuple):
    """One record to send."""

    topic: str
    value: bytes
    key: bytes | None = None
    headers: Mapping[str, bytes] = {}


AssignCallback = Callable[[Sequence[TopicPartition]], None]
RevokeCallback = Callable[[Sequence[TopicPartition]], Mapping[TopicPartition, int] | None]
"""Called before partitions are taken away. It may return offsets to commit for them first:
"commit what is contiguous on revoke, then forget the partition"."""


class Producer(Protocol):
    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Mapping[str, bytes] | None = None,
    ) -> None:
        """Send one record; return once the bus has durably accepted it."""

    async def send_many(self, records: Sequence[OutgoingRecord]) -> None:
        """Send several records; return once all are durably accepted."""


class Consumer(Protocol):
    """A member of a consumer group, subscribed to a fixed list of topics."""

    async def next(self) -> Record:
        """Wait for the next record of any assigned, unpaused partition."""

    def pause(self, tp: TopicPartition) -> None: ...

    def resume(self, tp: TopicPartition) -> None: ...

    def seek(self, tp: TopicPartition, offset: int) -> None: ...

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Store the next offset to read for each partition (durably, before returning)."""

    def assignment(self) -> frozenset[TopicPartition]: ...

    async def aclose(self) -> None: ...


class TopicSpec(NamedTuple):
    name: str
    partitions: int


HealthCallback = Callable[[bool, str], None]
"""``on_health(up, detail)``: called on the trio thread when the bus goes away or returns."""


class Bus(Protocol):
    """A connection to one bus. Created by :func:`lakeferry.buses.open_bus`.

    Every bus has every method; what a bus does not have (brokers to describe, housekeeping
    of its own, outages) it declares by doing nothing (``describe_topics`` returns ``{}``,
    ``maintain`` returns ``{}``, ``on_health`` is never called), so callers never probe.
    """

    kind: str
    on_health: HealthCallback | None
    """Set by the daemon; a bus that can become unreachable calls it on every change."""

    def producer(self) -> Producer: ...

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        *,
        on_assign: AssignCallback | None = None,
        on_revoke: RevokeCallback | None = None,
    ) -> Consumer:
        """Join ``group`` for ``topics``. Callbacks run synchronously on (re)assignment."""

    async def ensure_topics(self, specs: Sequence[TopicSpec]) -> None:
        """Create missing topics."""

    async def list_topics(self) -> dict[str, int]:
        """Existing topics and their partition counts."""

    async def scan(
        self, topic: str, *, start: Mapping[int, int] | None = None
    ) -> AsyncIterator[Record]:
        """Every retained record of ``topic`` up to its current end, partition by partition;
        with ``start``, of each partition named there from that offset on (a consumer group's
        committed offsets: what it has not done yet) and nothing of the partitions it omits.

        For operator tools (DLQ, audit, the console's trace): it does not join any group and
        commits nothing.
        """
        raise NotImplementedError
        yield  # pragma: no cover

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        """The group's committed next-offset per partition of ``topic`` (absent: none)."""

    async def end_offsets(self, topic: str) -> dict[int, int]:
        """The next offset that will be written, per partition of ``topic``."""

    async def describe_topics(self, names: Sequence[str]) -> dict[str, dict[str, str]]:
        """Broker-side settings of existing topics (``{}``: the bus has none)."""

    async def maintain(self, *, retention: float, compact: Sequence[str]) -> dict[str, int]:
        """The bus's own housekeeping, called every few minutes by the daemon: drop consumed
        records older than ``retention`` seconds, compact the ``compact`` topics (keep the
        last record of each key). Returns counts to log (``{}``: nothing to do, e.g. brokers
        do it themselves)."""

    async def aclose(self) -> None: ...
