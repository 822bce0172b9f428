"""An Azure Event Hubs emulator for tests: the AMQP 1.0 protocol the azure-eventhub SDK speaks.

Good enough for the real ``azure-eventhub`` 5.15.1 client, sync and aio, including the
``EventHubConsumerClient`` with a ``BlobCheckpointStore`` (load balancing, epoch receivers). It
runs in a background thread with its own asyncio loop, so a test needs neither trio nor Docker::

    emulator = start(port=0, hub="hub1", partitions=4)   # or: python tools/eventhubs_emulator.py
    client = EventHubConsumerClient.from_connection_string(emulator.connection_string, "$Default")
    emulator.send("0", [b"one", b"two"])                   # append events without a client
    emulator.stop()

``connection_string`` carries ``UseDevelopmentEmulator=true``: the SDK then speaks plain TCP to
the endpoint's port instead of TLS to 5671.

Frames are encoded and decoded with the SDK's own AMQP codec (``azure.eventhub._pyamqp``, a
private API, hence the exact pin of azure-eventhub in pyproject.toml). pyamqp reads performative
fields by position, so a server must send every field, trailing nulls included; a server built on
another codec (qpid-proton omits trailing nulls) breaks the released SDK.

Covered
-------
- Transport: plain TCP, the AMQP and SASL protocol headers, SASL ``ANONYMOUS`` (also offers and
  accepts ``PLAIN`` and ``EXTERNAL`` without checking them); empty (heartbeat) frames; an empty
  frame every half of the client's ``idle_timeout`` when it asks for one.
- Connection, sessions and links: open, begin, attach, flow, transfer, disposition, detach, end,
  close; multi-frame transfers both ways (split at the peer's ``max_frame_size``); link credit
  both ways (credit granted to producers, consumers' credit and ``drain`` honoured); the peer's
  session incoming window; frames for sessions already ended are ignored (pyamqp sends detach
  after end).
- Claims-based security: put-token on ``$cbs`` is answered 202. **Any token is accepted**: no
  signature, audience, expiry or rights are checked.
- ``$management`` READ requests: ``com.microsoft:eventhub`` (name, created_at, partition_count,
  partition_ids) and ``com.microsoft:partition`` (begin/last enqueued sequence numbers, last
  offset, last enqueued time, is_partition_empty); 404 for another hub or partition.
- Sending: to the hub or to ``/Partitions/<id>``; single messages and batches (message format
  0x80013700, one event per data section); ``x-opt-partition-key`` routes by a stable hash of the
  key (not the service's hash: the partition a key lands on differs from Azure), otherwise
  round-robin; each delivery is settled with ``accepted``. Events are stored as the producer
  encoded them, with the service annotations added on delivery.
- Receiving: ``/<hub>/ConsumerGroups/<group>/Partitions/<id>``, any consumer group name (groups
  need not be created first); the selector filter on ``x-opt-offset`` (``-1``, ``@latest``, a
  stored offset), ``x-opt-sequence-number`` and ``x-opt-enqueued-time``, ``>`` and ``>=``;
  delivered events carry ``x-opt-sequence-number``, ``x-opt-offset`` (a string: the byte position
  of the event in its partition, as the service does), ``x-opt-enqueued-time`` and
  ``x-opt-partition-key``; deliveries are sent pre-settled. Epoch (exclusive) receivers:
  ``com.microsoft:epoch`` in the link properties; a receiver with an equal or higher epoch
  detaches the others of its partition and group with ``amqp:link:stolen`` (what the SDK's load
  balancing relies on at handover); a lower epoch, or a non-epoch receiver beside an epoch one,
  is refused the same way. ``com.microsoft:enable-receiver-runtime-metric`` adds the
  ``last_enqueued_*`` delivery annotations.
- Storage: one in-memory log per partition, no retention limit. With ``data_dir`` every event is
  also appended to ``<data_dir>/<hub>/<partition>.log`` (flushed, not fsynced) and read back
  when an emulator starts on the same folder, so a restarted emulator keeps its events.

Not covered
-----------
- TLS (``amqps``), AMQP over WebSockets, proxies; real authentication or authorization; SAS
  token expiry and renewal checks.
- The service's idle-connection timeout (connections stay open until the client closes them),
  throttling and quotas (the five-readers-per-partition limit, message size beyond
  ``max_message_size`` is refused but nothing else is), ``server-busy``.
- Geo-replication / geo-DR (``com.microsoft:georeplication`` is never offered, so the SDK uses
  plain offsets), Kafka endpoint, Capture, schema registry, partition count changes, retention
  and truncation (sequence numbers always begin at 0), the idempotent producer
  (``com.microsoft:idempotent-producer``), transactions, message locks, ``$management`` operations
  other than READ of the hub and its partitions.
- Message fidelity: annotations the producer set itself are decoded and re-encoded, so a string
  annotation value comes back as binary; header, properties, application properties and body
  sections are passed through byte for byte.

Frame handling lives in :class:`_Connection` (one per TCP connection, on the emulator's loop);
the partition logs in :class:`PartitionLog`.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import logging
import re
import struct
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from azure.eventhub._pyamqp import _decode, performatives
from azure.eventhub._pyamqp._encode import encode_frame, encode_payload, encode_value
from azure.eventhub._pyamqp.endpoints import Source, Target
from azure.eventhub._pyamqp.error import AMQPError
from azure.eventhub._pyamqp.message import Message, Properties
from azure.eventhub._pyamqp.outcomes import Accepted, Rejected
from azure.eventhub._pyamqp.types import TYPE, VALUE, AMQPTypes

log = logging.getLogger("eventhubs_emulator")

AMQP_HEADER = b"AMQP\x00\x01\x00\x00"
SASL_HEADER = b"AMQP\x03\x01\x00\x00"
AMQP_FRAME, SASL_FRAME = b"\x00", b"\x01"
MAX_FRAME_SIZE = 256 * 1024
"""What the emulator accepts per frame (the SDK splits larger transfers)."""
MAX_MESSAGE_SIZE = 1024 * 1024
"""Largest message or batch a producer may send (Standard tier): the SDK's batch size limit."""
SESSION_WINDOW = 5000
PRODUCER_CREDIT = 1000
SEND_CHUNK = 64
"""Deliveries written before the pump yields to the loop (fairness between links)."""

BATCH_FORMAT = 0x80013700
SELECTOR_FILTER = b"apache.org:selector-filter:string"
EPOCH = b"com.microsoft:epoch"
RUNTIME_METRIC = b"com.microsoft:enable-receiver-runtime-metric"
LINK_STOLEN = b"amqp:link:stolen"
NOT_FOUND = b"amqp:not-found"
SEQUENCE_NUMBER = b"x-opt-sequence-number"
OFFSET = b"x-opt-offset"
ENQUEUED_TIME = b"x-opt-enqueued-time"
PARTITION_KEY = b"x-opt-partition-key"
SERVICE_ANNOTATIONS = {SEQUENCE_NUMBER, OFFSET, ENQUEUED_TIME, PARTITION_KEY}

# performative descriptors
OPEN, BEGIN, ATTACH, FLOW, TRANSFER, DISPOSITION, DETACH, END, CLOSE = range(0x10, 0x19)
SASL_INIT = 0x41
# message sections
HEADER, DELIVERY_ANNOTATIONS, MESSAGE_ANNOTATIONS = 0x70, 0x71, 0x72

_SELECTOR = re.compile(
    r"^\s*amqp\.annotation\.(x-opt-offset|x-opt-sequence-number|x-opt-enqueued-time)"
    r"\s*(>=|>)\s*'([^']*)'\s*$"
)


def now_ms() -> int:
    return int(time.time() * 1000)


def _typed(kind: str | None, value: Any) -> dict[str, Any]:
    return {TYPE: kind, VALUE: value}


def _symbol(name: bytes) -> dict[str, Any]:
    return _typed(AMQPTypes.symbol, name)


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return "" if value is None else str(value)


# -- storage -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredEvent:
    """One event of a partition: the message as its producer encoded it, plus service fields."""

    sequence_number: int
    offset: int
    """Byte position of the event in its partition (what ``x-opt-offset`` carries, as a string)."""
    enqueued_ms: int
    partition_key: bytes | None
    payload: bytes

    @property
    def body(self) -> bytes:
        """The data sections joined (what ``EventData.body_as_str`` decodes)."""
        return b"".join(bytes(v) for d, _, v in split_sections(self.payload) if d == 0x75)


_RECORD = struct.Struct(">QqqiI")  # sequence, offset, enqueued ms, key length (-1: none), size


class PartitionLog:
    """The events of one partition, in memory and optionally in an append-only file."""

    def __init__(self, partition_id: str, path: Path | None) -> None:
        self.partition_id = partition_id
        self.events: list[StoredEvent] = []
        self.offsets: list[int] = []
        self.next_offset = 0
        self.consumers: set[_Link] = set()
        """Receivers of this partition (any group): woken on append."""
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                self._load(path.read_bytes())
            self._file = path.open("ab")

    def _load(self, data: bytes) -> None:
        position = 0
        while position + _RECORD.size <= len(data):
            seq, offset, enqueued, key_len, size = _RECORD.unpack_from(data, position)
            start = position + _RECORD.size
            key_end = start + max(key_len, 0)
            end = key_end + size
            if end > len(data):
                break  # a torn last record: the emulator stopped mid-write
            key = data[start:key_end] if key_len >= 0 else None
            self._remember(StoredEvent(seq, offset, enqueued, key, data[key_end:end]))
            position = end

    def _remember(self, event: StoredEvent) -> None:
        self.events.append(event)
        self.offsets.append(event.offset)
        self.next_offset = event.offset + len(event.payload)

    def append(self, payload: bytes, partition_key: bytes | None) -> StoredEvent:
        last = self.events[-1].enqueued_ms if self.events else 0
        event = StoredEvent(
            sequence_number=len(self.events),
            offset=self.next_offset,
            enqueued_ms=max(now_ms(), last),
            partition_key=partition_key,
            payload=payload,
        )
        self._remember(event)
        if self._file is not None:
            key = partition_key or b""
            key_len = len(key) if partition_key is not None else -1
            header = _RECORD.pack(
                event.sequence_number, event.offset, event.enqueued_ms, key_len, len(payload)
            )
            self._file.write(header + key + payload)
            self._file.flush()
        for link in list(self.consumers):
            link.wakeup.set()
        return event

    def start_index(self, selector: str | None) -> int:
        """Index of the first event a receiver with this selector filter gets."""
        if not selector:
            return 0
        m = _SELECTOR.match(selector)
        if m is None:
            raise ValueError(f"unsupported selector filter {selector!r}")
        what, operator, value = m.groups()
        inclusive = operator == ">="
        if what == "x-opt-offset":
            if value == "@latest":
                return len(self.events)
            keys, target = self.offsets, int(value)
        elif what == "x-opt-sequence-number":
            keys, target = list(range(len(self.events))), int(value)
        else:
            keys, target = [e.enqueued_ms for e in self.events], int(value)
        if inclusive:
            return bisect.bisect_left(keys, target)
        return bisect.bisect_right(keys, target)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class EventHub:
    """One event hub: its partitions and when it was created."""

    def __init__(self, name: str, partitions: int, data_dir: Path | None) -> None:
        self.name = name
        self.partition_ids = [str(i) for i in range(partitions)]
        folder = data_dir / name if data_dir is not None else None
        self.created_ms = now_ms()
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            stamp = folder / "created_at"
            if stamp.exists():
                self.created_ms = int(stamp.read_text())
            else:
                stamp.write_text(str(self.created_ms))
        self.partitions = {
            p: PartitionLog(p, folder / f"{p}.log" if folder else None) for p in self.partition_ids
        }
        self._round_robin = itertools.cycle(self.partition_ids)
        self.epochs: dict[tuple[str, str], set[_Link]] = {}
        """Attached receivers per (consumer group, partition): exclusivity by epoch."""

    def route(self, partition_key: bytes | None) -> str:
        if partition_key is None:
            return next(self._round_robin)
        return self.partition_ids[zlib.crc32(partition_key) % len(self.partition_ids)]


# -- messages ------------------------------------------------------------------------------------


def split_sections(payload: bytes) -> list[tuple[int, bytes, Any]]:
    """Each section of an encoded message: (descriptor code, its raw bytes, its decoded value)."""
    sections = []
    view = memoryview(payload)
    while view:
        if view[0] != 0x00:
            raise ValueError("a message section must be a described type")
        if view[1] == 0x53:  # smallulong descriptor
            code, body = view[2], view[3:]
        elif view[1] == 0x80:  # ulong descriptor
            code, body = int.from_bytes(view[2:10], "big"), view[10:]
        else:
            raise ValueError("symbolic section descriptors are not supported")
        rest, value = _decode._DECODE_BY_CONSTRUCTOR[body[0]](body[1:])
        used = len(view) - len(rest)
        sections.append((code, bytes(view[:used]), value))
        view = rest
    return sections


def _annotations(sections: Sequence[tuple[int, bytes, Any]]) -> dict[bytes, Any]:
    for code, _, value in sections:
        if code == MESSAGE_ANNOTATIONS and isinstance(value, dict):
            return {
                bytes(k) if isinstance(k, bytes | bytearray) else k: v for k, v in value.items()
            }
    return {}


def _described_map(code: int, entries: list[tuple[dict[str, Any], dict[str, Any]]]) -> bytes:
    out = bytearray()
    encode_value(
        out, _typed(AMQPTypes.described, (_typed(AMQPTypes.ulong, code), _typed("MAP", entries)))
    )
    return bytes(out)


def delivery_payload(event: StoredEvent, runtime: PartitionLog | None = None) -> bytes:
    """The event as a consumer receives it: the producer's sections plus service annotations."""
    sections = split_sections(event.payload)
    kept = [
        (_symbol(k) if isinstance(k, bytes) else _typed(AMQPTypes.ulong, k), _typed(None, v))
        for k, v in _annotations(sections).items()
        if k not in SERVICE_ANNOTATIONS
    ]
    service = [
        (_symbol(SEQUENCE_NUMBER), _typed(AMQPTypes.long, event.sequence_number)),
        (_symbol(OFFSET), _typed(AMQPTypes.string, str(event.offset))),
        (_symbol(ENQUEUED_TIME), _typed(AMQPTypes.timestamp, event.enqueued_ms)),
    ]
    if event.partition_key is not None:
        key = event.partition_key.decode("utf-8", "replace")
        service.append((_symbol(PARTITION_KEY), _typed(AMQPTypes.string, key)))
    out = bytearray()
    for code, raw, _ in sections:
        if code == HEADER:
            out += raw
    if runtime is not None and runtime.events:
        last = runtime.events[-1]
        out += _described_map(
            DELIVERY_ANNOTATIONS,
            [
                (_symbol(b"last_enqueued_sequence_number"), _typed("LONG", last.sequence_number)),
                (_symbol(b"last_enqueued_offset"), _typed("STRING", str(last.offset))),
                (_symbol(b"last_enqueued_time_utc"), _typed("TIMESTAMP", last.enqueued_ms)),
                (_symbol(b"runtime_info_retrieval_time_utc"), _typed("TIMESTAMP", now_ms())),
            ],
        )
    out += _described_map(MESSAGE_ANNOTATIONS, kept + service)
    for code, raw, _ in sections:
        if code > MESSAGE_ANNOTATIONS:
            out += raw
    return bytes(out)


def encode_event(body: bytes, *, properties: dict[str | bytes, Any] | None = None) -> bytes:
    """A message with one data section, as a producer would encode it."""
    out = bytearray()
    encode_payload(out, Message(data=[body], application_properties=properties))
    return bytes(out)


def _reply(request: Any, status: int, description: str, value: Any = None) -> bytes:
    """A management or CBS response to ``request`` (a decoded pyamqp Message)."""
    request_id = request.properties.message_id if request.properties else None
    message = Message(
        properties=Properties(correlation_id=request_id),
        # pyamqp reads the description under "statusDescription" (the SDK's name for it is
        # dropped on the way), CBS under "status-description": send both.
        application_properties={
            "status-code": status,
            "status-description": description,
            "statusDescription": description,
        },
        value=value,
    )
    out = bytearray()
    encode_payload(out, message)
    return bytes(out)


# -- connections ---------------------------------------------------------------------------------


class ProtocolError(Exception):
    """The peer sent something the emulator cannot make sense of: the connection is dropped."""


@dataclass(eq=False)
class _Link:
    session: _Session
    name: str
    handle: int
    remote_handle: int
    server_sends: bool
    kind: str
    """``cbs``, ``management`` (either direction), ``producer`` or ``consumer``."""
    address: str
    hub: EventHub | None = None
    partition: str | None = None
    consumer_group: str | None = None
    epoch: int | None = None
    runtime_metric: bool = False
    credit: int = 0
    delivery_count: int = 0
    drain: bool = False
    position: int = 0
    active: bool = True
    outbox: deque[bytes] = field(default_factory=deque)
    """Replies waiting for credit (management and CBS reply links)."""
    incoming: bytearray | None = None
    first_transfer: list[Any] | None = None
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    pump: asyncio.Task[None] | None = None


@dataclass(eq=False)
class _Session:
    connection: _Connection
    channel: int
    remote_channel: int
    next_outgoing_id: int = 0
    next_incoming_id: int = 0
    incoming_window: int = SESSION_WINDOW
    remote_incoming_window: int = 0
    links: dict[int, _Link] = field(default_factory=dict)
    """By the peer's handle."""


class _Connection:
    """One client connection: protocol headers, SASL, then frames until close or EOF."""

    def __init__(
        self, emulator: Emulator, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.emulator = emulator
        self.reader = reader
        self.writer = writer
        self.sessions: dict[int, _Session] = {}
        """By the peer's channel."""
        self.peer_max_frame = 512
        self.closed = False
        self._keepalive: asyncio.Task[None] | None = None

    # -- the loop ----------------------------------------------------------------------------

    async def serve(self) -> None:
        try:
            header = await self.reader.readexactly(8)
            if header == SASL_HEADER:
                await self._sasl()
                header = await self.reader.readexactly(8)
            if header != AMQP_HEADER:
                raise ProtocolError(f"unsupported protocol header {header!r}")
            self.writer.write(AMQP_HEADER)
            while not self.closed:
                channel, fields, code = await self._read_frame()
                if code is not None:
                    self._dispatch(channel, code, fields)
                    await self.writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except ProtocolError as exc:
            log.warning("dropping a connection: %s", exc)
        except Exception:
            log.exception("emulator error; dropping the connection")
        finally:
            self._teardown()

    async def _read_frame(self) -> tuple[int, list[Any], int | None]:
        header = await self.reader.readexactly(8)
        size = struct.unpack(">I", header[:4])[0]
        doff, frame_type = header[4], header[5]
        channel = struct.unpack(">H", header[6:8])[0]
        if size < 8 or size > MAX_FRAME_SIZE:
            raise ProtocolError(f"frame size {size}")
        body = await self.reader.readexactly(size - 8)
        if size == 8:
            return channel, [], None  # empty frame: a heartbeat
        if frame_type not in (0, 1):
            raise ProtocolError(f"frame type {frame_type}")
        code, fields = _decode.decode_frame(memoryview(body)[doff * 4 - 8 :])
        return channel, fields, code

    async def _sasl(self) -> None:
        self.writer.write(SASL_HEADER)
        mechanisms = performatives.SASLMechanism(
            sasl_server_mechanisms=[b"ANONYMOUS", b"PLAIN", b"EXTERNAL"]
        )
        self._write(0, mechanisms, SASL_FRAME)
        _, _, code = await self._read_frame()
        if code != SASL_INIT:
            raise ProtocolError(f"expected sasl-init, got {code}")
        self._write(0, performatives.SASLOutcome(code=0, additional_data=None), SASL_FRAME)
        await self.writer.drain()

    def _write(self, channel: int, frame: Any, frame_type: bytes = AMQP_FRAME) -> None:
        header, body = encode_frame(frame, frame_type)
        if not self.closed or isinstance(frame, performatives.CloseFrame):
            self.writer.write(header + struct.pack(">H", channel) + (body or b""))

    def _dispatch(self, channel: int, code: int, fields: list[Any]) -> None:
        if code == OPEN:
            self._on_open(fields)
        elif code == BEGIN:
            self._on_begin(channel, fields)
        elif code == CLOSE:
            self._write(0, performatives.CloseFrame(error=None))
            self.closed = True
        else:
            session = self.sessions.get(channel)
            if session is None:
                return  # e.g. pyamqp's detach after end: the session is gone already
            handler = {
                ATTACH: self._on_attach,
                FLOW: self._on_flow,
                TRANSFER: self._on_transfer,
                DISPOSITION: self._on_disposition,
                DETACH: self._on_detach,
                END: self._on_end,
            }.get(code)
            if handler is None:
                raise ProtocolError(f"unexpected performative {code:#x}")
            handler(session, fields)

    def _teardown(self) -> None:
        self.closed = True
        if self._keepalive is not None:
            self._keepalive.cancel()
        for session in self.sessions.values():
            for link in list(session.links.values()):
                self._forget(link)
        self.sessions.clear()
        self.emulator.connections.discard(self)
        with contextlib.suppress(Exception):
            self.writer.close()

    # -- connection and sessions -------------------------------------------------------------

    def _on_open(self, fields: list[Any]) -> None:
        self.peer_max_frame = min(fields[2] or MAX_FRAME_SIZE, 4 * MAX_FRAME_SIZE)
        self._write(
            0,
            performatives.OpenFrame(
                container_id=f"eventhubs-emulator-{uuid.uuid4().hex[:8]}",
                hostname=None,
                max_frame_size=MAX_FRAME_SIZE,
                channel_max=1024,
                idle_timeout=None,
                outgoing_locales=None,
                incoming_locales=None,
                offered_capabilities=None,
                desired_capabilities=None,
                properties=None,
            ),
        )
        if fields[4]:  # the client wants a frame at least every idle_timeout ms
            self._keepalive = asyncio.get_running_loop().create_task(self._heartbeat(fields[4]))

    async def _heartbeat(self, idle_timeout_ms: int) -> None:
        while not self.closed:
            await asyncio.sleep(idle_timeout_ms / 2000)
            self.writer.write(b"\x00\x00\x00\x08\x02\x00\x00\x00")

    def _on_begin(self, channel: int, fields: list[Any]) -> None:
        ours = next(
            c for c in itertools.count() if all(s.channel != c for s in self.sessions.values())
        )
        session = _Session(self, ours, channel, next_incoming_id=fields[1])
        session.remote_incoming_window = fields[2]
        self.sessions[channel] = session
        self._write(
            ours,
            performatives.BeginFrame(
                remote_channel=channel,
                next_outgoing_id=0,
                incoming_window=SESSION_WINDOW,
                outgoing_window=SESSION_WINDOW,
                handle_max=4095,
                offered_capabilities=None,
                desired_capabilities=None,
                properties=None,
            ),
        )

    def _on_end(self, session: _Session, fields: list[Any]) -> None:
        for link in list(session.links.values()):
            self._forget(link)
        del self.sessions[session.remote_channel]
        self._write(session.channel, performatives.EndFrame(error=None))

    def _session_flow(
        self, session: _Session, link: _Link | None = None, echo: bool = False
    ) -> None:
        self._write(
            session.channel,
            performatives.FlowFrame(
                next_incoming_id=session.next_incoming_id,
                incoming_window=session.incoming_window,
                next_outgoing_id=session.next_outgoing_id,
                outgoing_window=SESSION_WINDOW,
                handle=link.handle if link else None,
                delivery_count=link.delivery_count if link else None,
                link_credit=link.credit if link else None,
                available=None,
                drain=link.drain if link else None,
                echo=echo,
                properties=None,
            ),
        )

    # -- links -------------------------------------------------------------------------------

    def _on_attach(self, session: _Session, fields: list[Any]) -> None:
        name, remote_handle, role = _text(fields[0]), fields[1], fields[2]
        source = list(fields[5]) if fields[5] else []
        target = list(fields[6]) if fields[6] else []
        properties = fields[13] or {}
        server_sends = bool(role)  # the client is the receiver
        address = _text(source[0] if server_sends and source else target[0] if target else "")
        handle = next(
            h for h in itertools.count() if all(k.handle != h for k in session.links.values())
        )
        link = _Link(session, name, handle, remote_handle, server_sends, "", address)
        error: tuple[bytes, str] | None = None
        try:
            self._classify(link, source, properties, fields[12] or [])
        except LookupError as exc:
            error = (NOT_FOUND, str(exc))
        except ValueError as exc:
            error = (b"amqp:invalid-field", str(exc))
        if error is None and link.kind == "consumer":
            error = self._claim_epoch(link)
        session.links[remote_handle] = link
        if server_sends:
            link.delivery_count = 0
        else:
            link.delivery_count = fields[9] or 0
        filters = source[7] if len(source) > 7 else None
        # pyamqp gives every field but the address a default at run time (its NamedTuples'
        # __new__.__defaults__), which its annotations do not say.
        reply_source = Source(  # type: ignore[call-arg]
            address=address if server_sends else _text(source[0]) if source else None,
            filters=self._echo_filters(filters),
        )
        reply_target = Target(address=_text(target[0]) if target else address)  # type: ignore[call-arg]
        self._write(
            session.channel,
            performatives.AttachFrame(
                name=name,
                handle=handle,
                role=not role,
                send_settle_mode=fields[3],
                rcv_settle_mode=fields[4],
                source=reply_source,
                target=reply_target,
                unsettled=None,
                incomplete_unsettled=False,
                initial_delivery_count=0 if server_sends else None,
                max_message_size=MAX_MESSAGE_SIZE,
                offered_capabilities=[RUNTIME_METRIC] if link.runtime_metric else None,
                desired_capabilities=None,
                properties=None,
            ),
        )
        if error is not None:
            self._detach(link, *error)
            return
        if not server_sends:
            link.credit = PRODUCER_CREDIT
            self._session_flow(session, link)
        elif link.kind == "consumer":
            link.pump = asyncio.get_running_loop().create_task(self._pump(link))

    @staticmethod
    def _echo_filters(filters: Any) -> dict[bytes, Any] | None:
        if not isinstance(filters, dict):
            return None
        echoed = {}
        for key, value in filters.items():
            if isinstance(value, bytes | str):
                echoed[bytes(key)] = (SELECTOR_FILTER, _typed(AMQPTypes.string, _text(value)))
        return echoed or None

    def _classify(
        self, link: _Link, source: list[Any], properties: dict[Any, Any], desired: Any
    ) -> None:
        """Decide what the link is for; LookupError for an entity that does not exist."""
        path = urlparse(link.address).path if "://" in link.address else link.address
        parts = [p for p in path.split("/") if p]
        if parts in (["$cbs"], ["$management"]):
            link.kind = parts[0][1:]
            return
        if not parts:
            raise LookupError(f"no entity at {link.address!r}")
        hub = self.emulator.hubs.get(parts[0].lower())
        if hub is None:
            raise LookupError(f"the messaging entity {parts[0]!r} could not be found")
        link.hub = hub
        lowered = [p.lower() for p in parts]
        if link.server_sends:
            if len(parts) != 5 or lowered[1] != "consumergroups" or lowered[3] != "partitions":
                raise LookupError(f"not a partition of a consumer group: {path!r}")
            link.kind, link.consumer_group, link.partition = "consumer", parts[2], parts[4]
            if link.partition not in hub.partitions:
                raise LookupError(f"partition {link.partition!r} does not exist")
            filters = source[7] if len(source) > 7 and isinstance(source[7], dict) else {}
            selector = filters.get(SELECTOR_FILTER)
            log_ = hub.partitions[link.partition]
            link.position = log_.start_index(_text(selector) if selector is not None else None)
            epoch = properties.get(EPOCH)
            link.epoch = int(epoch) if epoch is not None else None
            link.runtime_metric = RUNTIME_METRIC in (desired or [])
            return
        link.kind = "producer"
        if len(parts) == 3 and lowered[1] == "partitions":
            link.partition = parts[2]
            if link.partition not in hub.partitions:
                raise LookupError(f"partition {link.partition!r} does not exist")
        elif len(parts) != 1:
            raise LookupError(f"cannot send to {path!r}")

    def _claim_epoch(self, link: _Link) -> tuple[bytes, str] | None:
        """Exclusive receivers: the highest epoch wins, a new equal one replaces the old."""
        assert link.hub is not None
        assert link.partition is not None
        assert link.consumer_group is not None
        key = (link.consumer_group.lower(), link.partition)
        others = link.hub.epochs.setdefault(key, set())
        epochs = [o.epoch for o in others if o.epoch is not None]
        if link.epoch is None:
            if epochs:
                return LINK_STOLEN, (
                    f"a receiver with epoch {max(epochs)} holds partition {link.partition}"
                )
        elif epochs and max(epochs) > link.epoch:
            return LINK_STOLEN, f"a receiver with the higher epoch {max(epochs)} exists"
        else:
            for other in list(others):
                other.session.connection.steal(
                    other, f"a new receiver with epoch {link.epoch} took partition {link.partition}"
                )
        others.add(link)
        link.hub.partitions[link.partition].consumers.add(link)
        return None

    def _detach(self, link: _Link, condition: bytes | None = None, text: str = "") -> None:
        """The server ends a link (with an error: the client raises it)."""
        if not link.active:
            return
        error = AMQPError(condition=condition, description=text, info=None) if condition else None
        self._forget(link)
        self._write(
            link.session.channel,
            performatives.DetachFrame(handle=link.handle, closed=True, error=error),
        )

    def _forget(self, link: _Link) -> None:
        link.active = False
        link.wakeup.set()
        link.session.links.pop(link.remote_handle, None)
        if link.hub is not None and link.partition is not None:
            link.hub.partitions[link.partition].consumers.discard(link)
            if link.consumer_group is not None:
                key = (link.consumer_group.lower(), link.partition)
                link.hub.epochs.get(key, set()).discard(link)

    def _on_detach(self, session: _Session, fields: list[Any]) -> None:
        link = session.links.get(fields[0])
        if link is None:
            return  # the answer to our own detach
        self._forget(link)
        self._write(
            session.channel,
            performatives.DetachFrame(handle=link.handle, closed=fields[1], error=None),
        )

    def _on_flow(self, session: _Session, fields: list[Any]) -> None:
        next_incoming, window = fields[0], fields[1]
        if next_incoming is None:
            next_incoming = 0
        session.remote_incoming_window = next_incoming + window - session.next_outgoing_id
        link = session.links.get(fields[4]) if fields[4] is not None else None
        if link is not None and link.server_sends:
            delivery_count = fields[5] if fields[5] is not None else link.delivery_count
            link.credit = delivery_count + (fields[6] or 0) - link.delivery_count
            link.drain = bool(fields[8])
            if fields[9]:
                self._session_flow(session, link)
            self._flush_outbox(link)
        for other in session.links.values():
            other.wakeup.set()

    def _on_disposition(self, session: _Session, fields: list[Any]) -> None:
        pass  # deliveries to consumers are pre-settled; replies need no outcome

    # -- transfers in --------------------------------------------------------------------------

    def _on_transfer(self, session: _Session, fields: list[Any]) -> None:
        link = session.links.get(fields[0])
        if link is None or link.server_sends:
            raise ProtocolError("transfer on a link that is not attached for receiving")
        more, payload = bool(fields[5]), fields[-1]
        if fields[9]:  # aborted: the sender gave this delivery up
            link.incoming = link.first_transfer = None
            return
        if link.incoming is None:
            link.incoming, link.first_transfer = bytearray(), fields
        link.incoming += payload
        if more:
            return
        first, message = link.first_transfer, bytes(link.incoming)
        link.incoming = link.first_transfer = None
        assert first is not None
        session.next_incoming_id += 1
        session.incoming_window -= 1
        link.delivery_count += 1
        link.credit -= 1
        outcome = self._deliver(link, first[3] or 0, message)
        if not first[4]:  # not settled by the sender: tell it the outcome
            self._write(
                session.channel,
                performatives.DispositionFrame(
                    role=True, first=first[1], last=first[1], settled=True, state=outcome,
                    batchable=None,
                ),
            )  # fmt: skip
        if session.incoming_window < SESSION_WINDOW // 2:
            session.incoming_window = SESSION_WINDOW
            self._session_flow(session)
        if link.credit < PRODUCER_CREDIT // 2:
            link.credit = PRODUCER_CREDIT
            self._session_flow(session, link)

    def _deliver(self, link: _Link, message_format: int, payload: bytes) -> Any:
        if link.kind in ("cbs", "management"):
            request = _decode.decode_payload(memoryview(payload))
            reply = self._answer(link.kind, request)
            for other in link.session.links.values():
                if other.server_sends and other.kind == link.kind:
                    other.outbox.append(reply)
                    self._flush_outbox(other)
                    break
            return Accepted()
        if link.kind != "producer" or link.hub is None:
            return Rejected(error=AMQPError(condition=NOT_FOUND, description="no entity"))
        if len(payload) > MAX_MESSAGE_SIZE:
            return Rejected(
                error=AMQPError(
                    condition=b"amqp:link:message-size-exceeded",
                    description=f"{len(payload)} bytes exceed {MAX_MESSAGE_SIZE}",
                )
            )
        sections = split_sections(payload)
        key = _annotations(sections).get(PARTITION_KEY)
        if message_format == BATCH_FORMAT:
            events = [bytes(v) for code, _, v in sections if code == 0x75]
            if key is None and events:
                key = _annotations(split_sections(events[0])).get(PARTITION_KEY)
        else:
            events = [payload]
        key_bytes = None if key is None else key if isinstance(key, bytes) else str(key).encode()
        partition = link.partition or link.hub.route(key_bytes)
        for event in events:
            link.hub.partitions[partition].append(event, key_bytes)
        return Accepted()

    def _answer(self, kind: str, request: Any) -> bytes:
        props = {_text(k): v for k, v in (request.application_properties or {}).items()}
        if kind == "cbs":
            return _reply(request, 202, "Accepted")  # any token: no claims are checked
        operation, entity = _text(props.get("operation")), _text(props.get("type"))
        hub = self.emulator.hubs.get(_text(props.get("name")).lower())
        if operation != "READ":
            return _reply(request, 400, f"operation {operation!r} is not supported")
        if hub is None:
            return _reply(request, 404, f"the event hub {_text(props.get('name'))!r} is unknown")
        if entity == "com.microsoft:eventhub":
            return _reply(
                request,
                200,
                "OK",
                {
                    "name": hub.name,
                    "type": "com.microsoft:eventhub",
                    "created_at": _typed(AMQPTypes.timestamp, hub.created_ms),
                    "partition_count": len(hub.partition_ids),
                    "partition_ids": list(hub.partition_ids),
                },
            )
        if entity == "com.microsoft:partition":
            partition = _text(props.get("partition"))
            plog = hub.partitions.get(partition)
            if plog is None:
                return _reply(request, 404, f"partition {partition!r} does not exist")
            last = plog.events[-1] if plog.events else None
            return _reply(
                request,
                200,
                "OK",
                {
                    "name": hub.name,
                    "type": "com.microsoft:partition",
                    "partition": partition,
                    "begin_sequence_number": _typed(AMQPTypes.long, 0),
                    "last_enqueued_sequence_number": _typed(
                        AMQPTypes.long, last.sequence_number if last else -1
                    ),
                    "last_enqueued_offset": str(last.offset) if last else "-1",
                    "last_enqueued_time_utc": _typed(
                        AMQPTypes.timestamp, last.enqueued_ms if last else 0
                    ),
                    "is_partition_empty": last is None,
                },
            )
        return _reply(request, 400, f"type {entity!r} is not supported")

    # -- transfers out -------------------------------------------------------------------------

    def _send_transfer(self, link: _Link, payload: bytes) -> None:
        session = link.session
        delivery_id = session.next_outgoing_id
        fields: dict[str, Any] = {
            "handle": link.handle,
            "delivery_id": delivery_id,
            "delivery_tag": struct.pack(">I", delivery_id & 0xFFFFFFFF),
            "message_format": 0,
            "settled": True,
            "rcv_settle_mode": None,
            "state": None,
            "resume": None,
            "aborted": None,
            "batchable": None,
        }
        overhead = len(
            encode_frame(performatives.TransferFrame(more=True, payload=b"", **fields))[1] or b""
        )
        room = max(self.peer_max_frame - overhead - 16, 256)
        chunks = [payload[i : i + room] for i in range(0, len(payload), room)] or [b""]
        for index, chunk in enumerate(chunks):
            more = index < len(chunks) - 1
            self._write(
                session.channel, performatives.TransferFrame(more=more, payload=chunk, **fields)
            )
        session.next_outgoing_id += 1
        session.remote_incoming_window -= 1
        link.delivery_count += 1
        link.credit -= 1

    def _flush_outbox(self, link: _Link) -> None:
        while link.outbox and link.credit > 0 and link.active:
            self._send_transfer(link, link.outbox.popleft())

    async def _pump(self, link: _Link) -> None:
        """Deliver a consumer's partition as far as credit and the session window allow."""
        assert link.hub is not None
        assert link.partition is not None
        plog = link.hub.partitions[link.partition]
        try:
            while link.active and not self.closed:
                link.wakeup.clear()
                sent = 0
                while (
                    link.active
                    and link.credit > 0
                    and link.session.remote_incoming_window > 0
                    and link.position < len(plog.events)
                    and sent < SEND_CHUNK
                ):
                    event = plog.events[link.position]
                    link.position += 1
                    self._send_transfer(
                        link, delivery_payload(event, plog if link.runtime_metric else None)
                    )
                    sent += 1
                if link.drain and link.credit > 0 and link.position >= len(plog.events):
                    link.delivery_count += link.credit
                    link.credit = 0
                    self._session_flow(link.session, link)
                await self.writer.drain()
                if sent == SEND_CHUNK:
                    await asyncio.sleep(0)
                    continue
                await link.wakeup.wait()
        except (ConnectionError, asyncio.CancelledError):
            pass

    def steal(self, link: _Link, text: str) -> None:
        """Another receiver took this link's partition (called from any connection)."""
        self._detach(link, LINK_STOLEN, text)


# -- the emulator --------------------------------------------------------------------------------


class Emulator:
    """A running emulator: ``connection_string``, ``send``, ``stop``; see :func:`start`."""

    def __init__(
        self, hubs: dict[str, int], *, host: str = "127.0.0.1", data_dir: Path | None = None
    ) -> None:
        self.host = host
        self.port = 0
        self.data_dir = data_dir
        self.hubs = {name.lower(): EventHub(name, n, data_dir) for name, n in hubs.items()}
        self.hub_name = next(iter(hubs))
        self.connections: set[_Connection] = set()
        self._loop = asyncio.new_event_loop()
        self._ready: Future[int] = Future()
        self._stopping: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=self._run, name="eventhubs-emulator", daemon=True)

    @property
    def connection_string(self) -> str:
        return self.connection_string_for(self.hub_name)

    def connection_string_for(self, hub: str) -> str:
        return (
            f"Endpoint=sb://{self.host}:{self.port};SharedAccessKeyName=emulator;"
            f"SharedAccessKey=emulator-key;EntityPath={hub};UseDevelopmentEmulator=true"
        )

    @property
    def partition_ids(self) -> list[str]:
        return list(self.hubs[self.hub_name.lower()].partition_ids)

    # -- thread-safe helpers ---------------------------------------------------------------------

    def _call(self, function: Any, *args: Any) -> Any:
        done: Future[Any] = Future()

        def run() -> None:
            try:
                done.set_result(function(*args))
            except BaseException as exc:
                done.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return done.result(timeout=10)

    def send(
        self,
        partition: int | str,
        bodies: Iterable[bytes | str],
        *,
        partition_key: str | bytes | None = None,
        hub: str | None = None,
    ) -> list[int]:
        """Append events to a partition (as a producer would); their sequence numbers."""
        key = partition_key.encode() if isinstance(partition_key, str) else partition_key
        payloads = [encode_event(b.encode() if isinstance(b, str) else b) for b in bodies]
        plog = self.hubs[(hub or self.hub_name).lower()].partitions[str(partition)]

        def append() -> list[int]:
            return [plog.append(p, key).sequence_number for p in payloads]

        result: list[int] = self._call(append)
        return result

    def events(self, partition: int | str, *, hub: str | None = None) -> list[StoredEvent]:
        """A snapshot of a partition's events."""
        plog = self.hubs[(hub or self.hub_name).lower()].partitions[str(partition)]
        result: list[StoredEvent] = self._call(lambda: list(plog.events))
        return result

    def receivers(
        self, partition: int | str, *, hub: str | None = None
    ) -> list[tuple[str, int | None]]:
        """(consumer group, epoch) of every receiver attached to a partition now."""
        plog = self.hubs[(hub or self.hub_name).lower()].partitions[str(partition)]
        result: list[tuple[str, int | None]] = self._call(
            lambda: sorted((str(link.consumer_group), link.epoch) for link in plog.consumers)
        )
        return result

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, port: int = 0) -> Emulator:
        self._requested_port = port
        self._thread.start()
        self.port = self._ready.result(timeout=10)
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start() if it is still waiting
            if not self._ready.done():
                self._ready.set_exception(exc)
        finally:
            for hub in self.hubs.values():
                for plog in hub.partitions.values():
                    plog.close()
            self._loop.close()

    async def _serve(self) -> None:
        self._stopping = self._loop.create_future()

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connection = _Connection(self, reader, writer)
            self.connections.add(connection)
            await connection.serve()

        server = await asyncio.start_server(accept, self.host, self._requested_port)
        self._ready.set_result(server.sockets[0].getsockname()[1])
        async with server:
            await self._stopping
            server.close()
            for connection in list(self.connections):
                connection.closed = True
                connection.writer.transport.abort()
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def stop(self) -> None:
        """Drop every connection and stop serving (events persist when ``data_dir`` is set)."""
        if self._stopping is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(
                lambda: self._stopping.done() or self._stopping.set_result(None)  # type: ignore[union-attr]
            )
        self._thread.join(timeout=10)

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(
    port: int = 0,
    hub: str = "hub1",
    partitions: int = 4,
    *,
    host: str = "127.0.0.1",
    data_dir: Path | str | None = None,
    hubs: dict[str, int] | None = None,
) -> Emulator:
    """Start an emulator serving ``hub`` (and any other ``hubs``) on ``host:port`` (0: any)."""
    all_hubs = {hub: partitions, **(hubs or {})}
    folder = Path(data_dir) if data_dir is not None else None
    return Emulator(all_hubs, host=host, data_dir=folder).start(port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Event Hubs AMQP emulator for tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5672)
    parser.add_argument("--hub", default="hub1")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--data-dir", help="keep events in this folder across restarts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    emulator = start(args.port, args.hub, args.partitions, host=args.host, data_dir=args.data_dir)
    print(emulator.connection_string, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        emulator.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
