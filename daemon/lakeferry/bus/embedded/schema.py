"""The embedded bus's SQLite file: its schema, connection settings and row codecs."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Final, TypeVar

import msgspec

from lakeferry.bus.base import (
    Record,
    TopicPartition,
)
from lakeferry.errors import BusError
from lakeferry.sqlitetx import write_transaction

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
