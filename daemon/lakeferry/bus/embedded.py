"""The embedded bus: topics, partitions, records and group offsets in one SQLite file (WAL).

It keeps the contract of :mod:`lakeferry.bus.base` for one daemon process, while short-lived
tools (``lakeferry submit``, the DLQ commands) open the same file from other processes.

Layout: ``topics(name, partitions)``; ``log_ends(topic, partition, next_offset)``, the next
offset each partition will write (kept apart from the records so that pruning a partition
empty never reuses an offset); ``records(topic, partition, offset, key, value, headers,
ts_ms)`` keyed by (topic, partition, offset), without rowid; ``group_offsets(group, topic,
partition, next_offset)``. Headers are a msgpack map of str to bytes.

Producing: a record's partition is ``zlib.crc32(key) % partitions`` (stable across processes)
or round-robin without a key. Offsets are assigned inside the ``BEGIN IMMEDIATE`` transaction
that writes the records, so several processes can produce safely. Concurrent ``send`` calls of
one process are group-committed: the first waiting sender becomes the leader and writes every
record queued so far in one transaction, the others wait for it, and the next batch gets a new
leader. ``send`` returns only after that transaction committed.

Consuming: one member per group per :class:`EmbeddedBus`, assigned every partition of its
topics, starting at the group's committed offset (or 0). :meth:`EmbeddedConsumer.next` serves
records from a bounded buffer refilled by one query per empty, unpaused partition (about
``FETCH_LIMIT`` records in all, starting partition rotating). With nothing to read it sleeps
until a producer of the same :class:`EmbeddedBus` commits, or ``poll_interval`` seconds pass:
``poll_interval`` is how late records written by *another* connection (another process, or
another :class:`EmbeddedBus` on the same file) may be noticed.

Resource handling:
    One ``sqlite3`` connection per :class:`EmbeddedBus`, used only from worker threads
    (:func:`trio.to_thread.run_sync`), one call at a time through a ``CapacityLimiter(1)``;
    SQLite work never runs on the trio thread. Other processes are waited for up to
    ``BUSY_TIMEOUT_S`` (SQLite's busy timeout). A call already running in its thread is not
    abandoned on cancellation: it finishes (bounded by the busy timeout) and the cancellation is
    delivered afterwards. A group-commit leader writes under a shielded cancel scope, so a batch
    that other senders wait on is never dropped halfway; a sender cancelled before its batch was
    taken withdraws its records, one cancelled later may still see them written (at-least-once:
    a cancelled ``send`` has an unknown outcome, a returned one is durable). Memory is bounded:
    consumers buffer at most about ``FETCH_LIMIT`` records (at least ``MIN_FETCH`` per
    partition). :meth:`EmbeddedBus.aclose` closes its consumers, lets queued calls finish, and
    closes the connection.

    Durability: WAL with ``synchronous=NORMAL`` (the default) keeps every committed transaction
    across a crash or ``kill -9`` of the process; a power loss may lose the last transactions.
    Pass ``synchronous="FULL"`` to survive that too, at the cost of an fsync per transaction.

Error handling:
    Every SQLite error (including a busy timeout against another process) and every undecodable
    stored header is raised as :class:`lakeferry.errors.BusError` chained ``from`` the original.
    All waiters of a failed group-commit batch get their own ``BusError``; nothing of that batch
    was written (one transaction). Invalid arguments raise ``TypeError``/``ValueError`` before
    anything is queued. Every async call (and ``seek``, ``consumer``) after ``aclose`` raises
    :class:`trio.ClosedResourceError`; so does a :meth:`EmbeddedConsumer.next` that is waiting
    when its consumer (or bus) is closed. ``pause``/``resume`` after close do nothing.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Final, TypeVar

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
from lakeferry.bus.buffers import PartitionBuffers
from lakeferry.errors import BusError
from lakeferry.sqlitetx import write_transaction

__all__ = ["EmbeddedBus", "EmbeddedConsumer", "EmbeddedProducer"]

#: How long a statement waits for another process's write lock before failing.
BUSY_TIMEOUT_S: Final = 5.0
#: About how many records one consumer refill reads (and so buffers) in all.
FETCH_LIMIT: Final = 256
#: The fewest records a refill asks for per partition.
MIN_FETCH: Final = 16
#: Records per query while scanning.
SCAN_BATCH: Final = 500
#: ``PRAGMA user_version`` of the schema this module writes.
SCHEMA_VERSION: Final = 1

_SYNCHRONOUS = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS topics (
        name TEXT PRIMARY KEY,
        partitions INTEGER NOT NULL CHECK (partitions > 0)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS log_ends (
        topic TEXT NOT NULL,
        "partition" INTEGER NOT NULL,
        next_offset INTEGER NOT NULL,
        PRIMARY KEY (topic, "partition")
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS records (
        topic TEXT NOT NULL,
        "partition" INTEGER NOT NULL,
        "offset" INTEGER NOT NULL,
        key BLOB,
        value BLOB NOT NULL,
        headers BLOB,
        ts_ms INTEGER NOT NULL,
        PRIMARY KEY (topic, "partition", "offset")
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS group_offsets (
        "group" TEXT NOT NULL,
        topic TEXT NOT NULL,
        "partition" INTEGER NOT NULL,
        next_offset INTEGER NOT NULL,
        PRIMARY KEY ("group", topic, "partition")
    ) WITHOUT ROWID""",
)

_SELECT_RANGE = """
    SELECT "offset", key, value, headers, ts_ms FROM records
    WHERE topic = ? AND "partition" = ? AND "offset" >= ? AND "offset" < ?
    ORDER BY "offset" LIMIT ?
"""

_SELECT_GROUP_OFFSETS = """
    SELECT "partition", next_offset FROM group_offsets WHERE "group" = ? AND topic = ?
"""
_SELECT_LOWEST_COMMIT = """
    SELECT min(next_offset) FROM group_offsets WHERE topic = ? AND "partition" = ?
"""

_HEADERS_ENCODER = msgspec.msgpack.Encoder()
_HEADERS_DECODER = msgspec.msgpack.Decoder(dict[str, bytes])

_T = TypeVar("_T")
# (topic, key, value, encoded headers or None)
_Row = tuple[str, bytes | None, bytes, bytes | None]
_NO_END: Final = 2**63 - 1


def _connect(path: str, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    try:
        (mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
        if str(mode).lower() != "wal":
            raise BusError(f"embedded bus {path}: cannot use WAL mode (journal_mode={mode})")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        with write_transaction(conn):
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise BusError(
                    f"embedded bus {path}: schema version {version} is newer than this "
                    f"lakeferry ({SCHEMA_VERSION})"
                )
            for statement in _SCHEMA:
                conn.execute(statement)
            if version < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        conn.close()
        raise
    return conn


def _encode_headers(headers: Mapping[str, bytes] | None) -> bytes | None:
    if not headers:
        return None
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, bytes):
            raise TypeError(f"header {name!r}: headers map str to bytes")
    return _HEADERS_ENCODER.encode(dict(headers))


def _decode_headers(blob: bytes | None) -> dict[str, bytes]:
    return {} if blob is None else _HEADERS_DECODER.decode(blob)


def _make_row(
    topic: str, value: bytes, key: bytes | None, headers: Mapping[str, bytes] | None
) -> _Row:
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"topic must be a non-empty str, not {topic!r}")
    if not isinstance(value, bytes):
        raise TypeError(f"value must be bytes, not {type(value).__name__}")
    if key is not None and not isinstance(key, bytes):
        raise TypeError(f"key must be bytes or None, not {type(key).__name__}")
    return (topic, key, value, _encode_headers(headers))


def _read_range(
    conn: sqlite3.Connection, tp: TopicPartition, start: int, end: int, limit: int
) -> list[Record]:
    rows = conn.execute(_SELECT_RANGE, (tp.topic, tp.partition, start, end, limit)).fetchall()
    return [
        Record(tp.topic, tp.partition, offset, key, value, _decode_headers(headers), ts_ms)
        for offset, key, value, headers, ts_ms in rows
    ]


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

    async def scan(self, topic: str) -> AsyncIterator[Record]:
        """Every retained record of ``topic`` up to its end at call time, partition by partition."""
        ends = await self.end_offsets(topic)
        for partition in sorted(ends):
            tp = TopicPartition(topic, partition)
            start, end = 0, ends[partition]
            while start < end:
                batch = await self._run(
                    partial(_read_range, tp=tp, start=start, end=end, limit=SCAN_BATCH)
                )
                if not batch:
                    break
                for record in batch:
                    yield record
                start = batch[-1].offset + 1

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


class EmbeddedConsumer:
    """A group member of an :class:`EmbeddedBus`; create it with :meth:`EmbeddedBus.consumer`.

    Assigned every partition of its topics on the first :meth:`next`. Not meant for
    concurrent :meth:`next` callers (it stays correct, but fairness is per call).
    """

    def __init__(
        self,
        bus: EmbeddedBus,
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
        self._started = False
        self._closed = False
        self._start_lock = trio.Lock()
        self._assignment: frozenset[TopicPartition] = frozenset()
        # Next offset to fetch from the file, i.e. after what is buffered.
        self._fetch_pos: dict[TopicPartition, int] = {}
        self._buffers = PartitionBuffers()
        self._paused: set[TopicPartition] = set()
        self._early_seeks: dict[TopicPartition, int] = {}
        self._wakeup = trio.Event()
        self._next_fetch = 0

    def _wake(self) -> None:
        self._wakeup.set()

    async def _start(self) -> None:
        async with self._start_lock:
            if self._started or self._closed:
                return
            order, committed = await self._bus._run(
                partial(self._bus._join, group=self.group, topics=self._topics)
            )
            if self._closed:
                return
            self._buffers.add(order)
            self._assignment = frozenset(order)
            for tp in order:
                self._fetch_pos[tp] = self._early_seeks.get(tp, committed.get(tp, 0))
            self._early_seeks.clear()
            self._started = True
            if self._on_assign is not None:
                self._on_assign(list(order))

    async def next(self) -> Record:
        """The next record of an assigned, unpaused partition; waits until there is one.

        Raises :class:`trio.ClosedResourceError` once the consumer is closed, also when the
        close happens while waiting. Cancelling a waiting ``next`` loses no record.
        """
        if not self._started:
            await self._start()
        while True:
            # Checkpoint before taking a record from the buffer, never after: a cancellation
            # between the two would drop it.
            await trio.lowlevel.checkpoint()
            if self._closed:
                raise trio.ClosedResourceError("the consumer is closed")
            record = self._buffers.pop(self._paused)
            if record is not None:
                return record
            if self._wakeup.is_set():
                self._wakeup = trio.Event()
            wakeup = self._wakeup  # taken before the query: a write during it is not missed
            if await self._refill():
                continue
            with trio.move_on_after(self._bus.poll_interval):
                await wakeup.wait()

    async def _refill(self) -> bool:
        order = self._buffers.order
        count = len(order)
        start = self._next_fetch
        self._next_fetch = (start + 1) % count if count else 0
        wanted = [
            tp
            for tp in order[start:] + order[:start]
            if tp not in self._paused and self._buffers.is_empty(tp)
        ]
        if not wanted:
            return False
        limit = max(MIN_FETCH, FETCH_LIMIT // len(wanted))
        requests = [(tp, self._fetch_pos[tp]) for tp in wanted]

        def fetch(conn: sqlite3.Connection) -> list[tuple[TopicPartition, int, list[Record]]]:
            results = []
            total = 0
            for tp, position in requests:
                if total >= FETCH_LIMIT:
                    break
                records = _read_range(conn, tp, position, _NO_END, limit)
                results.append((tp, position, records))
                total += len(records)
            return results

        got = False
        for tp, position, records in await self._bus._run(fetch):
            # A seek (or a concurrent refill) while the query ran makes its answer stale.
            if not records or self._closed or self._fetch_pos.get(tp) != position:
                continue
            self._buffers.extend(tp, records)
            self._fetch_pos[tp] = records[-1].offset + 1
            got = got or tp not in self._paused
        return got

    def pause(self, tp: TopicPartition) -> None:
        """Stop returning records of ``tp`` (already buffered ones are kept)."""
        self._paused.add(tp)

    def resume(self, tp: TopicPartition) -> None:
        """Return records of ``tp`` again; wakes a waiting :meth:`next`."""
        self._paused.discard(tp)
        self._wake()

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` from ``offset`` next; its buffered records are discarded.

        Raises ``ValueError`` for a partition that is not assigned (once assigned).
        """
        if offset < 0:
            raise ValueError("offset must not be negative")
        if self._closed:
            raise trio.ClosedResourceError("the consumer is closed")
        if not self._started:
            self._early_seeks[tp] = offset
        elif tp not in self._assignment:
            raise ValueError(f"{tp} is not assigned to this consumer")
        else:
            self._buffers.clear(tp)
            self._fetch_pos[tp] = offset
        self._wake()

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Store the next offset to read per partition, durably, before returning."""
        if self._closed:
            raise trio.ClosedResourceError("the consumer is closed")
        items = [(TopicPartition(*tp), int(offset)) for tp, offset in offsets.items()]
        if any(offset < 0 for _, offset in items):
            raise ValueError("offsets must not be negative")
        if not items:
            await trio.lowlevel.checkpoint()
            return
        await self._bus._run(partial(self._bus._store_offsets, group=self.group, offsets=items))

    def assignment(self) -> frozenset[TopicPartition]:
        """Every partition of the topics once :meth:`next` started; empty before."""
        return self._assignment

    async def aclose(self) -> None:
        """Leave the group: ``on_revoke`` runs (its offsets are committed), a waiting
        :meth:`next` raises, buffers go."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        if self._bus._consumers.get(self.group) is self:
            del self._bus._consumers[self.group]
        self._wake()
        self._buffers.clear()
        final: Mapping[TopicPartition, int] | None = None
        try:
            if self._started and self._on_revoke is not None:
                final = self._on_revoke(list(self._buffers.order))
        finally:
            self._assignment = frozenset()
        if final:
            with trio.CancelScope(shield=True):
                items = [(TopicPartition(*tp), int(offset)) for tp, offset in final.items()]
                await self._bus._run(
                    partial(self._bus._store_offsets, group=self.group, offsets=items)
                )
        await trio.lowlevel.checkpoint()


if TYPE_CHECKING:

    def _implements(
        bus: EmbeddedBus, producer: EmbeddedProducer, consumer: EmbeddedConsumer
    ) -> tuple[Bus, Producer, Consumer]:
        return bus, producer, consumer
