"""The embedded bus itself: topics, the group-committed log, offsets, maintenance."""

from __future__ import annotations

import itertools
import os
import sqlite3
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec
import trio

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
from lakeferry.bus.embedded.consumer import EmbeddedConsumer
from lakeferry.bus.embedded.schema import (
    _NO_END,
    _SELECT_GROUP_OFFSETS,
    _SELECT_LOWEST_COMMIT,
    _SYNCHRONOUS,
    _T,
    SCAN_BATCH,
    _connect,
    _make_row,
    _read_range,
    _Row,
)
from lakeferry.errors import BusError
from lakeferry.sqlitetx import write_transaction


class _Batch:
    """Records queued for one group-commit transaction, and its outcome."""

    __slots__ = ("error", "finished", "parts")

    def __init__(self) -> None:
        self.parts: list[list[_Row]] = []
        self.finished = trio.Event()
        self.error: BaseException | None = None


class EmbeddedBus:
    """A :class:`~lakeferry.bus.base.Bus` on one SQLite file. Create it with :meth:`open`."""

    kind = "embedded"

    def __init__(
        self,
        path: str,
        conn: sqlite3.Connection,
        *,
        default_partitions: int,
        poll_interval: float,
    ) -> None:
        self.path = path
        self.default_partitions = default_partitions
        self.poll_interval = poll_interval
        self.on_health: HealthCallback | None = None
        """Never called: a file on this machine does not become unreachable."""
        #: Group-commit transactions written so far by this bus (a diagnostic).
        self.write_batches = 0
        self._conn: sqlite3.Connection | None = conn
        self._limiter = trio.CapacityLimiter(1)
        self._closing = False
        self._consumers: dict[str, EmbeddedConsumer] = {}
        # Group commit (trio thread only).
        self._filling = _Batch()
        self._writing = False
        self._write_done = trio.Event()
        # Touched only inside worker threads, which the limiter serialises.
        self._partitions: dict[str, int] = {}
        self._round_robin: dict[str, itertools.count[int]] = {}

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        default_partitions: int = 4,
        poll_interval: float = 0.05,
        synchronous: str = "NORMAL",
    ) -> EmbeddedBus:
        """Open (creating if missing) the bus file at ``path``. Async: it runs in a thread.

        ``default_partitions``: partitions of a topic created implicitly (first produce or
        subscribe). ``poll_interval``: seconds between a waiting consumer's looks for records
        written by other connections. ``synchronous``: SQLite's ``synchronous`` pragma.
        """
        if default_partitions < 1:
            raise ValueError("default_partitions must be at least 1")
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        mode = synchronous.upper()
        if mode not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {sorted(_SYNCHRONOUS)}")
        fspath = os.fspath(path)
        try:
            conn = await trio.to_thread.run_sync(_connect, fspath, mode)
        except sqlite3.Error as exc:
            raise BusError(f"embedded bus {fspath}: cannot open: {exc}") from exc
        return cls(fspath, conn, default_partitions=default_partitions, poll_interval=poll_interval)

    async def __aenter__(self) -> EmbeddedBus:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- plumbing ---------------------------------------------------------------------------

    def _call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self._conn
        if conn is None:
            raise trio.ClosedResourceError("the embedded bus is closed")
        return fn(conn)

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn(conn)`` in a worker thread, alone on the connection."""
        if self._closing:
            raise trio.ClosedResourceError("the embedded bus is closed")
        try:
            return await trio.to_thread.run_sync(self._call, fn, limiter=self._limiter)
        except (sqlite3.Error, msgspec.DecodeError) as exc:
            raise BusError(f"embedded bus {self.path}: {exc}") from exc

    def _partition_count(self, conn: sqlite3.Connection, topic: str) -> int | None:
        count = self._partitions.get(topic)
        if count is None:
            row = conn.execute("SELECT partitions FROM topics WHERE name = ?", (topic,)).fetchone()
            if row is None:
                return None
            count = self._partitions[topic] = int(row[0])
        return count

    def _create_topics(self, conn: sqlite3.Connection, specs: Sequence[TopicSpec]) -> None:
        """Create the missing topics of ``specs`` in one write transaction (if any is missing)."""
        missing = [s for s in specs if self._partition_count(conn, s.name) is None]
        if not missing:
            return
        with write_transaction(conn):
            created = self._create_in_transaction(conn, missing)
        self._partitions.update(created)

    def _create_in_transaction(
        self, conn: sqlite3.Connection, specs: Sequence[TopicSpec]
    ) -> dict[str, int]:
        # Caller holds the write lock; re-check since another process may have won the race.
        created: dict[str, int] = {}
        for name, partitions in specs:
            if name in created:
                continue
            row = conn.execute("SELECT partitions FROM topics WHERE name = ?", (name,)).fetchone()
            if row is not None:
                created[name] = int(row[0])
                continue
            conn.execute("INSERT INTO topics (name, partitions) VALUES (?, ?)", (name, partitions))
            conn.executemany(
                'INSERT INTO log_ends (topic, "partition", next_offset) VALUES (?, ?, 0)',
                [(name, p) for p in range(partitions)],
            )
            created[name] = partitions
        return created

    # -- producing --------------------------------------------------------------------------

    def producer(self) -> EmbeddedProducer:
        return EmbeddedProducer(self)

    async def _append(self, rows: list[_Row]) -> None:
        """Queue ``rows`` for the next group commit; return once that transaction committed."""
        if self._closing:
            raise trio.ClosedResourceError("the embedded bus is closed")
        batch = self._filling
        batch.parts.append(rows)
        try:
            while not batch.finished.is_set():
                if self._writing:
                    await self._write_done.wait()
                else:
                    await self._lead()
        except BaseException:
            # Not taken by a leader yet: withdraw, so a cancelled send writes nothing.
            if batch is self._filling:
                for i, part in enumerate(batch.parts):
                    if part is rows:
                        del batch.parts[i]
                        break
            raise
        if batch.error is not None:
            if isinstance(batch.error, trio.ClosedResourceError):
                raise trio.ClosedResourceError("the embedded bus is closed") from batch.error
            raise BusError(f"embedded bus {self.path}: send failed: {batch.error}") from (
                batch.error
            )

    async def _lead(self) -> None:
        batch, self._filling = self._filling, _Batch()
        self._writing = True
        rows = [row for part in batch.parts for row in part]
        try:
            # Shielded: the other senders of this batch wait on it, and a write that started
            # must be reported exactly as it ended. Bounded by the busy timeout.
            with trio.CancelScope(shield=True):
                await self._run(partial(self._write_rows, rows=rows))
        except BaseException as exc:
            batch.error = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            self._writing = False
            batch.finished.set()
            self._write_done.set()
            self._write_done = trio.Event()
        if batch.error is None:
            topics = {row[0] for row in rows}
            for consumer in self._consumers.values():
                if not topics.isdisjoint(consumer._topics):
                    consumer._wake()

    def _write_rows(self, conn: sqlite3.Connection, rows: list[_Row]) -> None:
        if not rows:
            return
        now_ms = time.time_ns() // 1_000_000
        created: dict[str, int] = {}
        with write_transaction(conn):
            next_offsets: dict[tuple[str, int], int] = {}
            values: list[tuple[Any, ...]] = []
            for topic, key, value, headers in rows:
                # Topics created in this transaction first: the cache only learns them after
                # the commit, so a rollback cannot leave it naming a topic that does not exist.
                count = created.get(topic) or self._partition_count(conn, topic)
                if count is None:
                    spec = TopicSpec(topic, self.default_partitions)
                    created.update(self._create_in_transaction(conn, [spec]))
                    count = created[topic]
                if key is None:
                    counter = self._round_robin.setdefault(topic, itertools.count())
                    partition = next(counter) % count
                else:
                    partition = zlib.crc32(key) % count
                where = (topic, partition)
                offset = next_offsets.get(where)
                if offset is None:
                    offset = conn.execute(
                        'SELECT next_offset FROM log_ends WHERE topic = ? AND "partition" = ?',
                        where,
                    ).fetchone()[0]
                values.append((topic, partition, offset, key, value, headers, now_ms))
                next_offsets[where] = offset + 1
            conn.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?)", values)
            conn.executemany(
                'UPDATE log_ends SET next_offset = ? WHERE topic = ? AND "partition" = ?',
                [(offset, topic, p) for (topic, p), offset in next_offsets.items()],
            )
        self._partitions.update(created)
        self.write_batches += 1

    # -- consuming --------------------------------------------------------------------------

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        *,
        on_assign: AssignCallback | None = None,
        on_revoke: RevokeCallback | None = None,
    ) -> EmbeddedConsumer:
        """Join ``group`` for ``topics``: every partition of them, once per group per bus.

        The assignment happens on the first :meth:`EmbeddedConsumer.next` (``on_assign`` runs
        before it returns); ``on_revoke`` runs in :meth:`EmbeddedConsumer.aclose`.
        """
        if self._closing:
            raise trio.ClosedResourceError("the embedded bus is closed")
        if isinstance(topics, str) or not topics:
            raise ValueError("topics must be a non-empty sequence of topic names")
        if group in self._consumers:
            raise BusError(f"group {group!r} already has a member on this embedded bus")
        member = EmbeddedConsumer(self, group, topics, on_assign=on_assign, on_revoke=on_revoke)
        self._consumers[group] = member
        return member

    def _join(
        self, conn: sqlite3.Connection, group: str, topics: Sequence[str]
    ) -> tuple[list[TopicPartition], dict[TopicPartition, int]]:
        self._create_topics(conn, [TopicSpec(t, self.default_partitions) for t in topics])
        assignment: list[TopicPartition] = []
        for topic in topics:
            count = self._partition_count(conn, topic)
            assert count is not None
            assignment.extend(TopicPartition(topic, p) for p in range(count))
        committed: dict[TopicPartition, int] = {}
        for topic in topics:
            for partition, offset in conn.execute(
                _SELECT_GROUP_OFFSETS,
                (group, topic),
            ):
                committed[TopicPartition(topic, partition)] = offset
        return assignment, committed

    def _store_offsets(
        self, conn: sqlite3.Connection, group: str, offsets: list[tuple[TopicPartition, int]]
    ) -> None:
        with write_transaction(conn):
            conn.executemany(
                'INSERT INTO group_offsets ("group", topic, "partition", next_offset)'
                ' VALUES (?, ?, ?, ?) ON CONFLICT ("group", topic, "partition")'
                " DO UPDATE SET next_offset = excluded.next_offset",
                [(group, tp.topic, tp.partition, offset) for tp, offset in offsets],
            )

    # -- inspection -------------------------------------------------------------------------

    async def ensure_topics(self, specs: Sequence[TopicSpec]) -> None:
        """Create missing topics. An existing topic keeps its partition count."""
        for spec in specs:
            if not spec.name or spec.partitions < 1:
                raise ValueError(f"invalid topic spec {spec!r}")
        await self._run(partial(self._create_topics, specs=list(specs)))

    async def scan(
        self, topic: str, *, start: Mapping[int, int] | None = None
    ) -> AsyncIterator[Record]:
        """Every retained record of ``topic`` up to its end at call time, partition by partition
        (from ``start``'s offsets, when given: :meth:`lakeferry.bus.base.Bus.scan`)."""
        ends = await self.end_offsets(topic)
        for partition in sorted(ends):
            if start is not None and partition not in start:
                continue
            tp = TopicPartition(topic, partition)
            begin = 0 if start is None else start[partition]
            start_at, end = begin, ends[partition]
            while start_at < end:
                batch = await self._run(
                    partial(_read_range, tp=tp, start=start_at, end=end, limit=SCAN_BATCH)
                )
                if not batch:
                    break
                for record in batch:
                    yield record
                start_at = batch[-1].offset + 1

    async def list_topics(self) -> dict[str, int]:
        """Existing topics and their partition counts."""

        def query(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute("SELECT name, partitions FROM topics").fetchall()
            return {str(name): int(count) for name, count in rows}

        return await self._run(query)

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        def query(conn: sqlite3.Connection) -> dict[int, int]:
            rows = conn.execute(
                _SELECT_GROUP_OFFSETS,
                (group, topic),
            )
            return {int(p): int(o) for p, o in rows}

        return await self._run(query)

    async def end_offsets(self, topic: str) -> dict[int, int]:
        """The next offset per partition; ``{}`` for a topic that does not exist."""

        def query(conn: sqlite3.Connection) -> dict[int, int]:
            rows = conn.execute(
                'SELECT "partition", next_offset FROM log_ends WHERE topic = ?', (topic,)
            )
            return {int(p): int(o) for p, o in rows}

        return await self._run(query)

    # -- maintenance ------------------------------------------------------------------------

    async def describe_topics(self, names: Sequence[str]) -> dict[str, dict[str, str]]:
        """No broker-side settings: retention and compaction are :meth:`maintain`'s."""
        await trio.lowlevel.checkpoint()
        return {}

    async def maintain(self, *, retention: float, compact: Sequence[str]) -> dict[str, int]:
        """Prune consumed records past ``retention`` and compact the ``compact`` topics."""
        pruned = await self.prune(int(time.time() * 1000), int(retention * 1000))
        compacted = 0
        for topic in compact:
            compacted += await self.compact(topic)
        return {"pruned": pruned, "compacted": compacted} if pruned or compacted else {}

    async def prune(self, now_ms: int, retention_ms: int, *, keep_uncommitted: bool = True) -> int:
        """Delete records older than ``now_ms - retention_ms``; return how many went.

        With ``keep_uncommitted`` (the default) only records below the lowest committed offset
        of every group that committed on their partition go, and a partition on which no group
        ever committed keeps everything: work nobody consumed is never deleted. (A group that
        joined but never committed is not known to the bus and does not hold records back.)
        Offsets are never reused, even when a partition is pruned empty. One transaction per
        partition, so producers of other processes are not held up for long.
        """
        cutoff = now_ms - retention_ms

        def work(conn: sqlite3.Connection) -> int:
            partitions = conn.execute('SELECT topic, "partition" FROM log_ends').fetchall()
            deleted = 0
            for topic, partition in partitions:
                with write_transaction(conn):
                    if keep_uncommitted:
                        (bound,) = conn.execute(
                            _SELECT_LOWEST_COMMIT,
                            (topic, partition),
                        ).fetchone()
                        if bound is None:
                            continue
                    else:
                        bound = _NO_END
                    deleted += conn.execute(
                        'DELETE FROM records WHERE topic = ? AND "partition" = ? AND "offset" < ?'
                        " AND ts_ms < ?",
                        (topic, partition, bound, cutoff),
                    ).rowcount
            return deleted

        return await self._run(work)

    async def compact(self, topic: str) -> int:
        """Delete every keyed record of ``topic`` that a later record with its key supersedes.

        Records without a key stay. Returns how many were deleted.
        """

        def work(conn: sqlite3.Connection) -> int:
            partitions = [
                p
                for (p,) in conn.execute(
                    'SELECT "partition" FROM log_ends WHERE topic = ?', (topic,)
                ).fetchall()
            ]
            deleted = 0
            for partition in partitions:
                with write_transaction(conn):
                    deleted += conn.execute(
                        """DELETE FROM records
                        WHERE topic = ?1 AND "partition" = ?2 AND key IS NOT NULL
                          AND "offset" NOT IN (
                            SELECT max("offset") FROM records
                            WHERE topic = ?1 AND "partition" = ?2 AND key IS NOT NULL
                            GROUP BY key)""",
                        (topic, partition),
                    ).rowcount
            return deleted

        return await self._run(work)

    # -- closing ----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close every consumer of this bus, let queued calls finish, close the connection."""
        if self._closing:
            await trio.lowlevel.checkpoint()
            return
        self._closing = True
        for member in list(self._consumers.values()):
            await member.aclose()

        def close() -> None:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

        # Shielded: a connection must not leak because the closer was cancelled.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(close, limiter=self._limiter)


class EmbeddedProducer:
    """Sends records through its :class:`EmbeddedBus` (see the module's notes on group commit)."""

    def __init__(self, bus: EmbeddedBus) -> None:
        self._bus = bus

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Mapping[str, bytes] | None = None,
    ) -> None:
        await self._bus._append([_make_row(topic, value, key, headers)])

    async def send_many(self, records: Sequence[OutgoingRecord]) -> None:
        """Send ``records`` in one transaction: all of them are written, or none."""
        rows = [_make_row(r.topic, r.value, r.key, r.headers) for r in records]
        if not rows:
            await trio.lowlevel.checkpoint()
            return
        await self._bus._append(rows)


if TYPE_CHECKING:

    def _implements(
        bus: EmbeddedBus, producer: EmbeddedProducer, consumer: EmbeddedConsumer
    ) -> tuple[Bus, Producer, Consumer]:
        return bus, producer, consumer
