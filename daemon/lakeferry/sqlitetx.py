"""SQLite write transactions as the daemon's SQLite files (the embedded bus, the id ledger) use
them: autocommit connections, explicit ``BEGIN IMMEDIATE`` ... ``COMMIT``.

IMMEDIATE takes the write lock up front: a deferred transaction that later upgrades to a writer
gets SQLITE_BUSY at once (no busy wait) when another process wrote meanwhile, while an
immediate one waits for the lock within the connection's busy timeout.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction on ``conn`` (opened with ``isolation_level=None``); rolled back
    when the block raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
