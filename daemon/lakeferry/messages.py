"""Every message that crosses the bus, as msgspec Structs, and one codec per topic role.

Schema evolution rules (tested against saved encoded samples in ``tests/samples/``):

1. Every envelope (task, cached file, result, dead letter, tombstone) carries ``v``, the schema
   version it was written with (:data:`SCHEMA_VERSION`), always written out (no omitted
   defaults on envelopes), and a ``type`` tag naming its kind.
2. New fields always get a default, so payloads written by an older version keep decoding.
3. Fields are never removed or renamed and never change type; retire a field by ignoring it.
4. Unknown fields are ignored when decoding, so an older reader accepts a newer payload.

Wire format is JSON: operators read these messages with ``lakeferry dlq show`` and with Kafka's
own console tools, and the cost is small next to moving the files they describe.

Times are UTC ``datetime`` values; sizes are bytes; checksums are lowercase hex sha256.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Final, Generic, TypeVar

import msgspec
from msgspec import Meta, Struct

SCHEMA_VERSION: Final = 1

Sha256 = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$", description="lowercase hex sha256")]
NonNegative = Annotated[int, Meta(ge=0)]
EventId = Annotated[str, Meta(min_length=1, max_length=512)]
Url = Annotated[str, Meta(min_length=1, max_length=8192)]


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


class Event(Struct, kw_only=True, omit_defaults=True, frozen=True):
    """A request to move one file: what users and sources submit.

    ``id`` is the idempotency key: two events with one id are the same event, and the inventory
    holds at most one row for it. ``path`` is the destination relative to the sink root;
    without it the sink's path template decides.
    """

    id: EventId
    url: Url
    path: str | None = None
    sha256: Sha256 | None = None
    size: NonNegative | None = None
    metadata: dict[str, str] = {}
    created_at: dt.datetime | None = None


class Attempt(Struct, kw_only=True, omit_defaults=True, frozen=True):
    """One failed try, kept in the message so the DLQ shows the whole history."""

    attempt: NonNegative
    at: dt.datetime
    stage: str
    reason: str
    error: str


class DownloadTask(Struct, kw_only=True, frozen=True, tag="download"):
    """On ``downloads.pending`` and the retry rungs: fetch ``event.url`` into the cache.

    ``attempt`` counts failed tries so far (0 on first delivery); ``due_at`` is set on retry
    rungs and the download stage never processes the task before it.
    """

    event: Event
    received_at: dt.datetime
    attempt: NonNegative = 0
    due_at: dt.datetime | None = None
    history: tuple[Attempt, ...] = ()
    replays: NonNegative = 0
    """How often an operator replayed this task from the DLQ (each replay resets ``attempt``)."""
    destination: str | None = None
    """Where the file lands, rendered and checked at ingest (before any byte is fetched) from
    the event's ``path`` or the sink's ``path_template``. None in tasks written before it
    existed, or for a sink without a ``path_template``: then the upload stage renders it."""
    origin: str | None = None
    """Where the raw event came from (``events.raw/2/15``, ``spool:/dir/f.jsonl:12``,
    ``kafka:topic/0/15`` ...): one intake record, one row in the events table."""
    lane: str = "live"
    """``live``, or ``backfill``: what it may take of the download slots
    (:mod:`lakeferry.stages.lanes`). Kept through retries and DLQ replays."""
    v: int = SCHEMA_VERSION


class CachedFile(Struct, kw_only=True, frozen=True, tag="cached"):
    """On ``downloads.cached``: the file is complete in the cache under ``cache_key``."""

    task: DownloadTask
    cache_key: str
    size: NonNegative
    sha256: Sha256
    downloaded_at: dt.datetime
    v: int = SCHEMA_VERSION


class UploadResult(Struct, kw_only=True, frozen=True, tag="result"):
    """On ``downloads.results``: the file is in the sink at ``destination``.

    ``skipped`` is true when the sink already held an identical file (an idempotent re-upload).
    """

    task: DownloadTask
    destination: str
    size: NonNegative
    sha256: Sha256
    downloaded_at: dt.datetime
    uploaded_at: dt.datetime
    skipped: bool = False
    v: int = SCHEMA_VERSION


class DeadLetter(Struct, kw_only=True, frozen=True, tag="dead"):
    """On ``downloads.dlq``: a message that cannot succeed, with why and everything tried.

    ``task`` is absent when the raw event did not decode (reason ``malformed``); then ``raw``
    holds its bytes so nothing is lost. The DLQ is keyed by event id; a :class:`DlqTombstone`
    with the same key marks the letter as handled (replayed or purged).
    """

    reason: str
    error: str
    stage: str
    dead_at: dt.datetime
    origin_topic: str
    task: DownloadTask | None = None
    raw: bytes | None = None
    source: str | None = None
    v: int = SCHEMA_VERSION

    @property
    def attempts(self) -> tuple[Attempt, ...]:
        return self.task.history if self.task is not None else ()


class DlqTombstone(Struct, kw_only=True, frozen=True, tag="tombstone"):
    """On ``downloads.dlq``: the earlier letter with this key was replayed or purged."""

    action: str
    at: dt.datetime
    by: str = ""
    v: int = SCHEMA_VERSION


T = TypeVar("T")


class TopicCodec(Generic[T]):
    """Encoder and decoder for one message type, built once and reused."""

    __slots__ = ("decoder", "encoder", "type")

    def __init__(self, type_: Any) -> None:
        self.type = type_
        self.encoder = msgspec.json.Encoder()
        self.decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(type_)

    def encode(self, message: T) -> bytes:
        return self.encoder.encode(message)

    def decode(self, data: bytes) -> T:
        """Decode; raise ``msgspec.DecodeError``/``ValidationError`` when ``data`` is bad."""
        try:
            return self.decoder.decode(data)
        except RecursionError:
            # msgspec recurses into nested values, unknown fields too: ``{"x": [[[[…`` of a few
            # KB would otherwise escape as RecursionError and crash the stage reading it.
            raise msgspec.DecodeError("JSON is malformed: nested too deeply") from None
        except UnicodeDecodeError as exc:  # invalid UTF-8 inside a string: msgspec lets it out
            raise msgspec.DecodeError(f"JSON is malformed: {exc}") from None


EVENT: TopicCodec[Event] = TopicCodec(Event)
"""Raw events from sources and ``lakeferry submit`` (the intake topic)."""

DOWNLOAD: TopicCodec[DownloadTask] = TopicCodec(DownloadTask)
"""``downloads.pending`` and every retry rung."""

CACHED: TopicCodec[CachedFile] = TopicCodec(CachedFile)
"""``downloads.cached``."""

RESULT: TopicCodec[UploadResult] = TopicCodec(UploadResult)
"""``downloads.results``."""

DLQ: TopicCodec[DeadLetter | DlqTombstone] = TopicCodec(DeadLetter | DlqTombstone)
"""``downloads.dlq``: dead letters and the tombstones that retire them."""


def decode_event(raw: bytes) -> Event:
    """Decode a raw event; raise ``msgspec.DecodeError``/``ValidationError`` when it is bad."""
    return EVENT.decode(raw)


def to_builtins(message: Any) -> Any:
    """A JSON-friendly view of any message (for the CLI's ``--json`` output)."""
    return msgspec.to_builtins(message)
