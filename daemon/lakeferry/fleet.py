"""Fleet mode: several VMs (nodes) on one Kafka cluster.

Intake, pending, the retry rungs, results and the DLQ are shared by the fleet; a node's cached
topic (``<topics.cached>.<node>``) and its upload group (``<bus.group>.upload.<node>``) are its
own, because a cached message points at bytes in that node's cache (:mod:`lakeferry.config`).

Heartbeats. Every daemon process of a fleet puts a :class:`Heartbeat` on the compacted
``topics.nodes`` topic every :data:`HEARTBEAT_INTERVAL` (key ``<node>/<instance>``, so the
topic keeps the last one of each process) and a last one, ``stopping``, when it stops cleanly.
They say which node is alive, what it runs and how full its cache is (``lakeferry fleet
status``), and they keep two VMs from taking one node name: a process refuses to start while
a heartbeat of its node from another *home* (machine and state folder: the cache a node name
stands for) is younger than :data:`LIVE_WITHIN`.

Evacuation (``lakeferry fleet evacuate NODE``). A node that does not come back leaves tasks in
its cached topic that no other node can upload (the bytes were in its cache). Evacuating moves
each of them back to ``downloads.pending`` as a :class:`DownloadTask` (attempts and history
kept), to be fetched again by the nodes that are left, then moves the node's upload group past
them. The broker refuses to move the offsets of a group with live members, so a node that is
still running (or whose session has not expired yet) cannot be evacuated. A crash between the
two steps moves the same tasks again at the next run: the downloads repeat, and the idempotent
upload and the exactly-once inventory keep one file and one row.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, cast

import msgspec
import trio

from lakeferry.bus.base import Bus, GroupMember, OutgoingRecord, Producer, Record
from lakeferry.config import LoadedConfig
from lakeferry.errors import BusError, StartRefused
from lakeferry.logs import get_logger
from lakeferry.messages import CACHED, DLQ, CachedFile, DeadLetter, utcnow
from lakeferry.records import task_record

log = get_logger("fleet")

HEARTBEAT_INTERVAL = 10.0
"""Seconds between a process's heartbeats."""
LIVE_WITHIN = 3 * HEARTBEAT_INTERVAL
"""A node whose last heartbeat is younger than this is taken as alive."""
MOVE_BATCH = 500
"""Tasks sent to pending per producer round while evacuating."""


class FleetBus(Protocol):
    """What a fleet needs of its bus: the Kafka bus's group calls besides the common ones."""

    kind: str

    def producer(self) -> Producer: ...

    def scan(self, topic: str) -> AsyncIterator[Record]: ...

    async def list_topics(self) -> dict[str, int]: ...

    async def end_offsets(self, topic: str) -> dict[int, int]: ...

    async def committed(self, group: str, topic: str) -> dict[int, int]: ...

    async def group_members(self, group: str) -> list[GroupMember]: ...

    async def set_committed(self, group: str, topic: str, offsets: Mapping[int, int]) -> None: ...


def kafka_of(bus: Bus) -> FleetBus:
    """The bus as the Kafka bus a fleet runs on (the config refuses fleet mode elsewhere)."""
    if bus.kind != "kafka":
        raise BusError(f"fleet mode needs the kafka bus, not {bus.kind}")
    return cast(FleetBus, bus)


class Heartbeat(msgspec.Struct, kw_only=True, frozen=True):
    """One daemon process of a fleet, as it last reported itself."""

    node: str
    instance: str
    home: str
    """``<host>:<state folder>``: the machine and cache this node name stands for."""
    pid: int
    stages: tuple[str, ...]
    at: dt.datetime
    in_flight: dict[str, int] = {}
    cache_bytes: int | None = None
    cache_quota: int | None = None
    stopping: bool = False


HEARTBEAT = msgspec.json.Encoder()
_HEARTBEAT_DECODER = msgspec.json.Decoder(Heartbeat)


def home_of(config: LoadedConfig) -> str:
    """What a node name stands for: this machine and this state folder (its cache)."""
    return f"{socket.gethostname()}:{Path(config.core.daemon.state_dir).resolve()}"


def heartbeat_key(node: str, instance: str) -> bytes:
    return f"{node}/{instance}".encode()


async def latest_heartbeats(bus: FleetBus, topic: str) -> list[Heartbeat]:
    """The last heartbeat of every process that ever sent one (bad records skipped)."""
    last: dict[bytes, Heartbeat] = {}
    async for record in bus.scan(topic):
        if record.key is None:
            continue
        try:
            last[record.key] = _HEARTBEAT_DECODER.decode(record.value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("skipping a bad heartbeat", extra={"offset": record.offset})
    return list(last.values())


def is_live(beat: Heartbeat, now: dt.datetime) -> bool:
    return not beat.stopping and (now - beat.at).total_seconds() < LIVE_WITHIN


async def refuse_taken_node(config: LoadedConfig, bus: FleetBus) -> None:
    """Refuse to start (:class:`StartRefused`) when a live process of another home uses our
    node name."""
    node, home, now = config.node, home_of(config), utcnow()
    for beat in await latest_heartbeats(bus, config.core.topics.nodes):
        if beat.node == node and beat.home != home and is_live(beat, now):
            age = (now - beat.at).total_seconds()
            raise StartRefused(
                f"node name {node!r} is in use by a live lakeferry at {beat.home} (pid "
                f"{beat.pid}, seen {age:.0f}s ago); give this VM its own [daemon] node, or "
                "stop the other one"
            )


class Beater:
    """Sends this process's heartbeats (the supervisor runs :meth:`run`)."""

    def __init__(
        self,
        config: LoadedConfig,
        bus: FleetBus,
        instance: str,
        stages: Sequence[str],
        report: Callable[[], tuple[dict[str, int], int | None, int | None]],
    ) -> None:
        self._config = config
        self._bus = bus
        self._instance = instance
        self._stages = tuple(stages)
        self._report = report
        """() -> (in flight per stage, cache bytes, cache quota)."""
        self._home = home_of(config)

    def beat(self, *, stopping: bool = False) -> OutgoingRecord:
        in_flight, cache_bytes, cache_quota = self._report()
        config = self._config
        beat = Heartbeat(
            node=config.node, instance=self._instance, home=self._home, pid=os.getpid(),
            stages=self._stages, at=utcnow(), in_flight=in_flight,
            cache_bytes=None if cache_bytes is None else int(cache_bytes),
            cache_quota=None if cache_quota is None else int(cache_quota), stopping=stopping,
        )  # fmt: skip
        return OutgoingRecord(
            config.core.topics.nodes,
            HEARTBEAT.encode(beat),
            heartbeat_key(config.node, self._instance),
        )

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self._bus.producer().send_many([self.beat()])
                except BusError as exc:  # the bus's health is reported elsewhere
                    log.debug("heartbeat not sent", extra={"error": str(exc)})
                except Exception as exc:
                    log.warning("heartbeat not sent", extra={"error": repr(exc)})
                await trio.sleep(HEARTBEAT_INTERVAL)
        finally:
            with trio.move_on_after(5) as scope:
                scope.shield = True
                try:
                    await self._bus.producer().send_many([self.beat(stopping=True)])
                except Exception as exc:
                    log.debug("last heartbeat not sent", extra={"error": str(exc)})


# -- status ---------------------------------------------------------------------------------


@dataclass
class NodeStatus:
    node: str
    last_seen: dt.datetime | None = None
    live: bool = False
    stopped: bool = False
    """Every process of the node said it was stopping in its last heartbeat."""
    homes: list[str] = field(default_factory=list)
    stages: list[str] = field(default_factory=list)
    processes: int = 0
    in_flight: dict[str, int] = field(default_factory=dict)
    cached_backlog: int | None = None
    upload_members: int = 0
    cache_bytes: int | None = None
    cache_quota: int | None = None

    def as_json(self) -> dict[str, object]:
        out = {k: v for k, v in self.__dict__.items() if k != "last_seen"}
        out["last_seen"] = self.last_seen.isoformat() if self.last_seen else None
        return out


def cached_nodes(config: LoadedConfig, topics: Sequence[str]) -> list[str]:
    """Nodes that have a cached topic (``<prefix>.<node>``)."""
    prefix = f"{config.cached_prefix}."
    return sorted(t[len(prefix) :] for t in topics if t.startswith(prefix))


async def backlog(bus: FleetBus, config: LoadedConfig, node: str) -> int:
    """Records of a node's cached topic its upload group has not committed past."""
    topic = config.cached_topic_of(node)
    ends = await bus.end_offsets(topic)
    committed = await bus.committed(config.group_of("upload", node), topic)
    return sum(max(0, end - committed.get(p, 0)) for p, end in ends.items())


async def fleet_status(config: LoadedConfig, bus: FleetBus) -> list[NodeStatus]:
    now = utcnow()
    beats: dict[str, list[Heartbeat]] = defaultdict(list)
    for beat in await latest_heartbeats(bus, config.core.topics.nodes):
        beats[beat.node].append(beat)
    topics = await bus.list_topics()
    nodes = sorted(set(beats) | set(cached_nodes(config, list(topics))))
    out = []
    for node in nodes:
        status = NodeStatus(node)
        mine = beats.get(node, [])
        if mine:
            status.last_seen = max(b.at for b in mine)
            live = [b for b in mine if is_live(b, now)]
            status.live = bool(live)
            status.stopped = all(b.stopping for b in mine)
            status.homes = sorted({b.home for b in mine})
            status.processes = len(live)
            status.stages = sorted({s for b in live for s in b.stages})
            for b in live:
                for stage, n in b.in_flight.items():
                    status.in_flight[stage] = status.in_flight.get(stage, 0) + n
            freshest = max(mine, key=lambda b: b.at)
            status.cache_bytes, status.cache_quota = freshest.cache_bytes, freshest.cache_quota
        if config.cached_topic_of(node) in topics:
            status.cached_backlog = await backlog(bus, config, node)
            status.upload_members = len(await bus.group_members(config.group_of("upload", node)))
        out.append(status)
    return out


# -- evacuation -----------------------------------------------------------------------------


class NodeAlive(StartRefused):
    """The node to evacuate still has live members or a fresh heartbeat."""


@dataclass
class Evacuation:
    node: str
    waiting: int = 0
    """Tasks found in the node's cached topic past its upload group's offsets."""
    moved: int = 0
    malformed: list[Record] = field(default_factory=list)
    """Records that are not a cached file: dead-lettered ``malformed`` with their bytes (the
    node's upload stage would have done the same)."""
    offsets: dict[int, int] = field(default_factory=dict)


async def evacuation_plan(
    config: LoadedConfig, bus: FleetBus, node: str, *, force: bool = False
) -> tuple[Evacuation, list[CachedFile]]:
    """What evacuating ``node`` would move; :class:`NodeAlive` when it is not safe."""
    if node == config.node and not force:
        raise NodeAlive(f"{node!r} is this VM's own node name; run this from another node")
    topic = config.cached_topic_of(node)
    topics = await bus.list_topics()
    if topic not in topics:
        known = ", ".join(cached_nodes(config, list(topics))) or "none"
        raise NodeAlive(f"no node {node!r} in this fleet (no topic {topic}; nodes: {known})")
    group = config.group_of("upload", node)
    members = await bus.group_members(group)
    if members:
        raise NodeAlive(
            f"node {node!r} still has {len(members)} live upload member(s) in {group} "
            f"({', '.join(sorted({m.instance or m.client_id for m in members}))}); stop it "
            "first, or wait for their session timeout to expire"
        )
    now = utcnow()
    fresh = [
        b
        for b in await latest_heartbeats(bus, config.core.topics.nodes)
        if b.node == node and is_live(b, now)
    ]
    if fresh and not force:
        raise NodeAlive(
            f"node {node!r} sent a heartbeat {min((now - b.at).total_seconds() for b in fresh):.0f}"
            f"s ago ({', '.join(sorted(b.instance for b in fresh))}); stop it first (or --force "
            "if it cannot upload any more)"
        )
    committed = await bus.committed(group, topic)
    plan = Evacuation(node)
    files: list[CachedFile] = []
    async for record in bus.scan(topic):
        if record.offset < committed.get(record.partition, 0):
            continue
        plan.offsets[record.partition] = record.offset + 1
        try:
            files.append(CACHED.decode(record.value))
        except (msgspec.DecodeError, msgspec.ValidationError):
            plan.malformed.append(record)
    plan.waiting = len(files)
    return plan, files


async def evacuate(config: LoadedConfig, bus: FleetBus, plan: Evacuation,
                   files: Sequence[CachedFile]) -> Evacuation:  # fmt: skip
    """Send each task back to pending, then move the node's upload group past them."""
    pending = config.core.topics.pending
    producer = bus.producer()
    for start in range(0, len(files), MOVE_BATCH):
        chunk = files[start : start + MOVE_BATCH]
        await producer.send_many(
            [task_record(pending, msgspec.structs.replace(f.task, due_at=None)) for f in chunk]
        )
        plan.moved += len(chunk)
    if plan.malformed:
        topic = config.cached_topic_of(plan.node)
        letters = [
            OutgoingRecord(
                config.core.topics.dlq,
                DLQ.encode(
                    DeadLetter(
                        reason="malformed",
                        error=f"not a cached file (found evacuating {plan.node})",
                        stage="upload",
                        dead_at=utcnow(),
                        origin_topic=topic,
                        raw=record.value,
                    )
                ),
                record.key or f"{topic}/{record.partition}/{record.offset}".encode(),
            )
            for record in plan.malformed
        ]
        await producer.send_many(letters)
    if plan.offsets:
        topic = config.cached_topic_of(plan.node)
        try:
            await bus.set_committed(config.group_of("upload", plan.node), topic, plan.offsets)
        except BusError as exc:
            raise BusError(
                f"moved {plan.moved} task(s) to {pending}, but could not move "
                f"{plan.node}'s upload offsets ({exc}); if the node comes back it uploads them "
                "too (harmless: the same file and row), or run evacuate again"
            ) from exc
    log.info(
        "evacuated node",
        extra={"node": plan.node, "moved": plan.moved, "malformed": len(plan.malformed)},
    )
    return plan
