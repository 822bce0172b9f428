"""The component protocols that plugins implement: sources, downloaders, caches, sinks, inventories.

Components are plain async objects. Hooks only *register factories*; the daemon calls a factory
with the plugin's validated settings and a :class:`PluginContext`, then runs the component's
coroutines in its own nurseries. A component never starts background tasks of its own.

Every method that can fail for one message raises :class:`lakeferry.errors.TransientError` or
:class:`lakeferry.errors.PermanentError` (or lets another exception escape, which the daemon
classifies through the ``lakeferry_classify_error`` hook, then as transient).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import trio

from lakeferry.messages import DownloadTask, Event


@dataclass(frozen=True)
class PluginContext:
    """What the daemon tells a component when building it."""

    state_dir: Path
    """A directory the daemon owns; components may keep state under ``state_dir / <kind>``."""

    logger: logging.Logger
    """The logger to use (structured JSON when the daemon runs)."""

    owner: str = "main"
    """This process's stable name among every process that uses the same cache, sink or table
    (``<node>.<instance>``: the machine's name and the worker's ``--instance``); the same after
    a restart, never used by two live processes at once. A sink keeps its temporary files under
    it, so that it can sweep what an earlier run of the same process left behind."""

    max_event_bytes: int = 1 << 20
    """The largest raw event the intake accepts (``ingest.max_event_bytes``): a source that
    reads lines or messages need not hold more than this of one (larger ones are
    dead-lettered ``malformed``)."""

    check_only: bool = False
    """The factory is called to validate the configuration (``lakeferry check-config``, a
    reload): raise ``ConfigError`` for anything wrong, as at a real start, but create nothing
    (no folders, no files) and connect to nothing. The component is closed right after."""

    extra: dict[str, Any] = field(default_factory=dict)
    """Reserved for later use by the core."""


# --- sources ------------------------------------------------------------------------------------


class RawEvent(NamedTuple):
    """One raw event as a source received it, before validation."""

    data: bytes
    origin: str
    """Where it came from, for the DLQ (``spool:/path/file.jsonl:12``, ``kafka:topic/0/15``)."""


class Intake(Protocol):
    """What a source hands its raw events to."""

    async def publish(self, events: Sequence[RawEvent]) -> None:
        """Validate and publish; returns once every event is durably on the bus.

        Valid events go to ``downloads.pending``, undecodable ones to the DLQ with reason
        ``malformed``. Only after this returns may a source acknowledge its input.
        """


class Source(Protocol):
    name: str

    async def run(self, intake: Intake, *, task_status: trio.TaskStatus[None]) -> None:
        """Receive events forever; call ``task_status.started()`` once really receiving."""


# --- downloaders --------------------------------------------------------------------------------


class CacheWriter(Protocol):
    """Receives one file's bytes; hashes them on the fly.

    Resuming: a writer handed to a downloader that declares ``supports_resume`` may start with
    bytes kept from an earlier, failed attempt (``offset > 0``). Those bytes are in the file and
    in the hash already, and ``validator`` is what the origin called that content then (a
    strong ETag or a Last-Modified date). The downloader either fetches the rest, from
    ``offset``, on the condition that the content is still the same (HTTP ``Range`` with
    ``If-Range: <validator>``), or calls :meth:`restart` before writing. A downloader records
    the validator of fresh content with :meth:`set_validator`; without one, a failed attempt's
    bytes are not kept.
    """

    @property
    def bytes_written(self) -> int:
        """Bytes in the file so far, ``offset`` included."""

    @property
    def offset(self) -> int:
        """Bytes kept from an earlier attempt when this writer was created; 0 after restart."""

    @property
    def validator(self) -> str | None:
        """The validator of the content written so far (None: unknown)."""

    def set_validator(self, value: str | None) -> None:
        """Record the validator of the content being written (from the response headers)."""

    async def restart(self) -> None:
        """Drop every byte written so far, kept ones included, and hash from zero."""

    async def write(self, chunk: bytes) -> None: ...


class DownloadWriter(CacheWriter, Protocol):
    """The writer a downloader is handed: a :class:`CacheWriter` held to the cache's quota.

    Every write is counted against the download's reservation, which grows as bytes arrive
    (waiting for room like any other download); a body that outgrows the whole quota, or the
    event's ``size``, is cut off with ``PermanentError`` (``too_large`` / ``size_mismatch``)
    before its bytes reach the disk.
    """

    async def expect_size(self, size: int) -> None:
        """The origin announced the file's total size (``Content-Length``, or a range's
        total): reserve for it now. Raises ``PermanentError(too_large)`` when it exceeds the
        whole quota and ``PermanentError(size_mismatch)`` when the event said otherwise;
        otherwise waits until the quota has room. Optional: without it the reservation grows
        as the bytes arrive."""


class Downloader(Protocol):
    """Fetches URLs of its schemes into a :class:`DownloadWriter`, streaming, never whole in
    memory.

    A downloader class that sets ``supports_resume = True`` may be given a writer with bytes
    kept from an earlier attempt (see :class:`CacheWriter`); any other always gets an empty one.
    """

    supports_resume: bool
    """Whether :meth:`fetch` can continue after bytes kept from an earlier attempt. (A plugin
    written before this was part of the protocol may lack it: the daemon takes that as False.)"""

    async def fetch(self, task: DownloadTask, out: DownloadWriter) -> None:
        """Write the whole body of ``task.event.url`` to ``out``.

        Raise TransientError/PermanentError for failures. Must honour trio cancellation.
        """

    async def aclose(self) -> None: ...


# --- cache --------------------------------------------------------------------------------------


class CacheEntry(NamedTuple):
    key: str
    size: int
    sha256: str


class CacheUsage(NamedTuple):
    bytes: int
    files: int
    quota: int


class PendingFile(CacheWriter, Protocol):
    """A file being written into the cache: write, then ``commit`` or ``abort``.

    Writes to a full volume raise TransientError(``cache_full``); the download stage then
    backs off in place until there is room again.
    """

    async def commit(self, *, expected_sha256: str | None, expected_size: int | None) -> CacheEntry:
        """Check, then publish the file under its key. Raises PermanentError on mismatch."""

    async def abort(self, *, keep_partial: bool = False) -> None:
        """Give the file up. With ``keep_partial``, keep the bytes written so far for a later
        ``create(key, resume=True)`` when they can be resumed (a validator was recorded and
        at least one byte is on disk); otherwise, and by default, delete them."""


class Reservation(Protocol):
    """Room one running download holds in the cache's quota (see :meth:`CacheBackend.reserve`)."""

    @property
    def size(self) -> int:
        """Bytes held now."""

    async def grow(self, size: int) -> None:
        """Hold ``size`` bytes in all (nothing to do when it holds that many already).

        Waits for room like a new reservation, ahead of those (a running download frees its
        room soonest by finishing). Raises ``PermanentError(too_large)`` when ``size`` exceeds
        the whole quota, and ``TransientError(cache_full)`` when waiting could never end:
        every byte of the quota is held by downloads that are themselves waiting to grow.
        """


class CacheBackend(Protocol):
    """Local buffer between the download and upload stages, with a byte quota.

    Bytes in the cache never exceed the quota: complete files and the reservations of running
    downloads together. A download reserves before it starts and grows its reservation before
    it writes past it (the download stage does this for every downloader).
    """

    async def lookup(self, key: str) -> CacheEntry | None:
        """The complete, checksummed file under ``key``, if there is one."""

    def reserve(self, expected_size: int | None) -> AbstractAsyncContextManager[Reservation]:
        """Wait until the quota admits a file of this size (unknown: a default estimate, at
        most the quota), and hold the room until the block ends.

        A full cache makes the caller wait; it never fails it. Raises PermanentError
        (``too_large``) only when ``expected_size`` alone exceeds the quota.
        """

    async def create(self, key: str, *, resume: bool = False) -> PendingFile:
        """A new file for ``key``. With ``resume``, take over the partial file an earlier
        ``abort(keep_partial=True)`` kept for ``key``, if there is a usable one (the writer's
        ``offset`` and ``validator`` say so); without, delete any such partial."""

    def open(self, key: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Stream a complete file's bytes. Raises FileNotFoundError when it is gone."""

    def local_path(self, key: str) -> Path | None:
        """The file's path on this machine, when the backend keeps files on local disk."""

    async def remove(self, key: str) -> None:
        """Delete the file (no error when already gone) and release its quota."""

    def usage(self) -> CacheUsage:
        """What this process knows the cache holds (its own writes and removals since the
        last :meth:`refresh`)."""

    async def refresh(self) -> CacheUsage:
        """What the cache holds now, read from its storage: other processes that share it
        (download and upload workers of one VM) add and remove files too. Called every few
        seconds, for the ``lakeferry_cache_*`` gauges and the quota."""

    def set_quota(self, quota: int) -> None:
        """Change the byte quota live (SIGHUP)."""

    async def aclose(self) -> None: ...


# --- sinks --------------------------------------------------------------------------------------


class SinkFile(NamedTuple):
    """What the upload stage hands a sink: a complete file from the cache."""

    cache: CacheBackend
    key: str
    size: int
    sha256: str


class PutOutcome(NamedTuple):
    destination: str
    """Where the file now is, as a URI or path the operator recognises."""
    skipped: bool
    """True when an identical file (same size and sha256) was already there."""


class SinkItem(NamedTuple):
    """One file a sink holds (:meth:`Sink.walk`)."""

    destination: str
    """As a put returned it (:attr:`PutOutcome.destination`) and ``stat`` takes it."""
    temporary: bool
    """A temporary file of a put: in progress, or left behind by a process that died."""


class Sink(Protocol):
    def destination(self, event: Event, *, now: dt.datetime) -> str:
        """The safe relative destination of ``event``; PermanentError(invalid_path) if none."""

    async def put(self, file: SinkFile, destination: str, event: Event) -> PutOutcome:
        """Land the file atomically; skip when an identical file is already there.

        Temporary files live under the sink's staging folder (:data:`lakeferry.paths.STAGING`,
        one folder per :attr:`PluginContext.owner`), never beside landed files.
        """

    async def stat(self, destination: str) -> CacheEntry | None:
        """Size and sha256 of what the sink holds at ``destination`` (None when absent)."""

    async def sweep(self) -> int:
        """Delete the temporary files an earlier run of this process (the same ``owner``) left
        behind — it was killed in the middle of puts — and any other owner's older than
        :data:`lakeferry.paths.STALE_TEMPORARY`; return how many. The upload stage calls it
        once, before its first put."""

    def walk(self) -> AsyncIterator[SinkItem]:
        """Every file the sink holds, for ``lakeferry audit`` (landed files that no inventory
        row names, temporary files left behind)."""

    async def aclose(self) -> None: ...


# --- inventory ----------------------------------------------------------------------------------


class InventoryRow(NamedTuple):
    event_id: str
    url: str
    """Without query string or userinfo: SAS tokens and signatures are secrets."""
    destination: str
    size: int
    sha256: str
    event_created_at: dt.datetime
    downloaded_at: dt.datetime
    uploaded_at: dt.datetime
    committed_at: dt.datetime
    attempts: int
    skipped_upload: bool
    metadata_json: str


class EventRow(NamedTuple):
    event_id: str
    url: str
    received_at: dt.datetime
    event_created_at: dt.datetime
    origin: str
    raw_json: str


class TableState(NamedTuple):
    """What a table holds, read at one version of it."""

    versions: dict[str, int]
    """The last committed version stored for each application id asked for (absent: none)."""
    keys: set[str]
    """Every key in the table: the event ids of the inventory, the origins of the events."""


class Inventory(Protocol):
    """The Delta inventory (one row per landed file) and the events table (every raw event)."""

    async def read_state(self, app_ids: Sequence[str]) -> TableState:
        """The stored versions of ``app_ids`` and the landed event ids, *at one table version*.

        The results stage decides what to skip from both together: landed ids read earlier
        than the versions would miss rows another writer committed in between, and the
        version check at commit time (which only sees commits after the versions were read)
        would let a second row for one of those ids through.
        """

    async def read_events_state(self, app_ids: Sequence[str]) -> TableState:
        """The same for the events table: stored versions and the ``origin`` of every row."""

    async def append(self, rows: Sequence[InventoryRow], transactions: dict[str, int]) -> None:
        """Append rows and record ``app_id -> version`` transactions in the same commit."""

    async def append_events(self, rows: Sequence[EventRow], transactions: dict[str, int]) -> None:
        """Like :meth:`append`, for the events table (one row per intake record)."""

    async def read_inventory(self) -> list[InventoryRow]: ...

    async def read_events(self) -> list[EventRow]: ...

    async def lookup(self, event_id: str) -> tuple[list[InventoryRow], list[EventRow]]:
        """The inventory's and the events table's rows of one event id (the console's trace):
        read with a filter, not the whole table."""

    async def maintain(self) -> None:
        """Table housekeeping (compaction, checkpoints, vacuum), as the plugin's settings say.

        Called by the daemon about once a minute while the results stage runs; the plugin
        decides what is due. Must be safe beside concurrent appends.
        """

    async def aclose(self) -> None: ...


SourceFactory = Callable[[Any, PluginContext], Source]
DownloaderFactory = Callable[[Any, PluginContext], Downloader]
CacheFactory = Callable[[Any, PluginContext], CacheBackend]
SinkFactory = Callable[[Any, PluginContext], Sink]
InventoryFactory = Callable[[Any, PluginContext], Inventory]
