"""The id ledger: what each event id first named, and whether its file landed.

An event id is the idempotency key, so an id names one file. The download stage binds an id to
its event's *fingerprint* (URL, ``path`` and ``sha256``) when it first sees it, and asks the
ledger before it fetches a byte:

- an id bound to another fingerprint is a different file under a used id: the task goes to
  the DLQ as ``duplicate_id`` with both URLs, and nothing lands for it (two events with one id
  and two URLs used to land two files beside one inventory row);
- an id whose file already landed (the upload stage marks it once its result is on the bus)
  is skipped without a download (a redelivered or re-sent event used to be fetched and
  uploaded again, then skipped by the inventory).

Where it lives, and why: in one SQLite file in the state folder (``ids.sqlite``, WAL), which
every stage process of a VM shares (download and upload workers share the VM's cache by design).
A lookup is a primary-key read, a bind an ``INSERT OR IGNORE``; the calls of many downloads go
through one transaction per batch (:class:`lakeferry.groupcommit.GroupCommit`), so the cost at
1,000 files/s is a few batched statements, not a thread hop and a commit per file. Ids are
remembered for ``ledger.window`` after they were bound (pruned every few minutes): an id
reused after that is not recognised (``lakeferry audit`` still reports its second file as
``unrecorded_in_sink``). The inventory's exactly-once rows do not depend on the ledger: it
saves work and refuses conflicting ids; losing the file only loses that.

Not shared between VMs: with one Kafka cluster and several VMs (fleet mode) each VM knows the
ids its own workers saw.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import trio

from lakeferry.groupcommit import GroupCommit
from lakeferry.iothreads import IoThreads
from lakeferry.messages import Event
from lakeferry.sqlitetx import write_transaction
from lakeferry.urls import redact_url

LEDGER_FILE = "ids.sqlite"
"""The ledger's file in the state folder."""
BUSY_TIMEOUT_S = 30.0
URL_SHOWN = 300
"""Characters of the (redacted) URL kept for the duplicate_id letter."""

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS ids (
        id TEXT PRIMARY KEY,
        fingerprint BLOB NOT NULL,
        url TEXT NOT NULL,
        path TEXT,
        bound_ms INTEGER NOT NULL,
        landed INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS ids_bound ON ids (bound_ms)",
)


DUPLICATE_KEY_PREFIX = "duplicate_id:"


def duplicate_key(event: Event) -> bytes:
    """The DLQ key of a ``duplicate_id`` letter: its own, so that it neither replaces the
    letter of the event that owns the id (the DLQ keeps the last record per key) nor stands
    for the id's state in ``lakeferry audit``; one letter per distinct second file."""
    return f"{DUPLICATE_KEY_PREFIX}{event.id}:{fingerprint(event).hex()[:16]}".encode()


def is_duplicate_key(key: str) -> bool:
    return key.startswith(DUPLICATE_KEY_PREFIX)


def fingerprint(event: Event) -> bytes:
    """What an event names: its URL (query included: a different query may be another file),
    its ``path`` and its ``sha256``. Not its destination: a template with ``{date}`` renders
    another one for the same file sent again on another day."""
    named = "\0".join((event.url, event.path or "", (event.sha256 or "").lower()))
    return hashlib.blake2b(named.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class Binding(NamedTuple):
    """What an id is bound to."""

    fingerprint: bytes
    url: str
    """Redacted (no query string, no user info)."""
    path: str | None
    bound_ms: int
    landed: bool


class _Request(NamedTuple):
    op: str  # "bind" | "land"
    event_id: str
    fingerprint: bytes
    url: str
    path: str | None


class IdLedger:
    """The ledger of one state folder (see the module docstring).

    Resource handling: one SQLite connection, used only in one worker thread of its own
    (:class:`lakeferry.iothreads.IoThreads`): the group commit's batches and :meth:`prune`, one
    at a time; :meth:`aclose` closes it.

    Error handling: SQLite errors come out of :meth:`bind` and :meth:`land` as
    :class:`lakeferry.groupcommit.BatchFailed`; the stages treat them as transient.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        with write_transaction(self._conn):
            for statement in _SCHEMA:
                self._conn.execute(statement)
        self._thread = IoThreads(1, "lakeferry-ledger")
        """The one thread that uses the connection: batches and pruning, one at a time."""
        self._commits: GroupCommit[_Request, Binding | None] = GroupCommit(self._run, self._thread)

    @property
    def batches(self) -> int:
        return self._commits.batches

    async def bind(self, event: Event) -> Binding:
        """Bind ``event.id`` to the event's fingerprint unless it is bound already; return
        the binding that holds (compare its fingerprint with the event's)."""
        found = await self._commits.submit(_request("bind", event))
        assert found is not None
        return found

    async def land(self, event: Event) -> None:
        """Record that ``event``'s file landed (binding the id first if it was not)."""
        await self._commits.submit(_request("land", event))

    def _run(self, requests: Sequence[_Request]) -> list[Binding | None]:
        now_ms = time.time_ns() // 1_000_000
        conn = self._conn
        out: list[Binding | None] = []
        with write_transaction(conn):
            for r in requests:
                conn.execute(
                    "INSERT OR IGNORE INTO ids (id, fingerprint, url, path, bound_ms, landed)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (r.event_id, r.fingerprint, r.url, r.path, now_ms, int(r.op == "land")),
                )
                if r.op == "land":
                    conn.execute(
                        "UPDATE ids SET landed = 1 WHERE id = ? AND fingerprint = ?",
                        (r.event_id, r.fingerprint),
                    )
                    out.append(None)
                    continue
                row = conn.execute(
                    "SELECT fingerprint, url, path, bound_ms, landed FROM ids WHERE id = ?",
                    (r.event_id,),
                ).fetchone()
                out.append(Binding(bytes(row[0]), row[1], row[2], row[3], bool(row[4])))
        return out

    async def prune(self, window: float) -> int:
        """Forget ids bound more than ``window`` seconds ago; how many were forgotten."""
        oldest = time.time_ns() // 1_000_000 - int(window * 1000)

        def work() -> int:
            with write_transaction(self._conn):
                return self._conn.execute("DELETE FROM ids WHERE bound_ms < ?", (oldest,)).rowcount

        return await self._thread.run(work)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._thread.run(self._conn.close)


def _request(op: str, event: Event) -> _Request:
    return _Request(op, event.id, fingerprint(event), redact_url(event.url)[:URL_SHOWN], event.path)
