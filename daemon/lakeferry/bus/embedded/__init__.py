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

from lakeferry.bus.embedded.consumer import EmbeddedConsumer
from lakeferry.bus.embedded.schema import (
    BUSY_TIMEOUT_S,
    FETCH_LIMIT,
    MIN_FETCH,
    SCAN_BATCH,
    SCHEMA_VERSION,
)
from lakeferry.bus.embedded.store import EmbeddedBus, EmbeddedProducer

__all__ = [
    "BUSY_TIMEOUT_S",
    "FETCH_LIMIT",
    "MIN_FETCH",
    "SCAN_BATCH",
    "SCHEMA_VERSION",
    "EmbeddedBus",
    "EmbeddedConsumer",
    "EmbeddedProducer",
]
