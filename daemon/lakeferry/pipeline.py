"""The running pipeline's shared parts: components built from config, limiters, the ladder.

A :class:`Pipeline` is built once per daemon process from a validated config and an open bus.
Stages receive it and take what they need; the supervisor applies live config changes to it.
It also owns the one way of dead-lettering a message, so every DLQ record has the same shape.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import trio

from lakeferry.bus.base import Bus, OutgoingRecord, Producer, Record
from lakeferry.components import (
    CacheBackend,
    Downloader,
    Inventory,
    PluginContext,
    Sink,
    Source,
)
from lakeferry.config import LoadedConfig, PluginChoice
from lakeferry.errors import ConfigError, Reason
from lakeferry.ledger import LEDGER_FILE, IdLedger
from lakeferry.livefeed import RecentErrors
from lakeferry.logs import get_logger
from lakeferry.messages import DLQ, DeadLetter, DownloadTask, TopicCodec, utcnow
from lakeferry.metrics import Metrics
from lakeferry.registry import ComponentKind, Registry
from lakeferry.retry import (
    ATTEMPT_HEADER,
    FIRST_ERROR_HEADER,
    FIRST_SEEN_HEADER,
    LAST_ERROR_HEADER,
    ORIGIN_HEADER,
    RetryLadder,
)
from lakeferry.stages import STAGES
from lakeferry.stages.driver import ActiveCount, Lifecycle

log = get_logger("pipeline")

USED_BY: dict[str, frozenset[str]] = {
    "cache": frozenset({"download", "upload"}),
    "sink": frozenset({"upload"}),
    "inventory": frozenset({"ingest", "results"}),  # ingest records the events table
    "source": frozenset({"ingest"}),
    "downloader": frozenset({"download"}),
    "ledger": frozenset({"download", "upload"}),
}
"""Which stages use each kind of component. A process builds only what its stages use, so a
download worker never loads the sink's or the inventory's libraries (nor needs their
credentials), and holds only the memory its own work takes."""


class NotBuilt:
    """Stands in for a component no stage of this process uses; any use is a bug, said so."""

    def __init__(self, component: str, stages: Sequence[str]) -> None:
        self._component = component
        self._stages = tuple(stages)

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(
            f"the {self._component} is not built in a process running {', '.join(self._stages)}"
            f" (only {', '.join(sorted(USED_BY[self._component]))} use it)"
        )

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


M = TypeVar("M")


def event_key(event_id: str) -> bytes:
    """Every topic is keyed by event id, so one event always lives on one partition."""
    return event_id.encode()


def task_headers(task: DownloadTask, origin_topic: str) -> dict[str, bytes]:
    """Informational headers (the body is the source of truth) for operators' tools."""
    headers = {
        ATTEMPT_HEADER: str(task.attempt).encode(),
        ORIGIN_HEADER: origin_topic.encode(),
        FIRST_SEEN_HEADER: task.received_at.isoformat().encode(),
    }
    if task.history:
        headers[FIRST_ERROR_HEADER] = task.history[0].error[:200].encode()
        headers[LAST_ERROR_HEADER] = task.history[-1].error[:200].encode()
    return headers


@dataclass
class Pipeline:
    config: LoadedConfig
    registry: Registry
    bus: Bus
    producer: Producer
    metrics: Metrics
    lifecycle: Lifecycle
    cache: CacheBackend
    sink: Sink
    inventory: Inventory
    downloaders: dict[str, Downloader]
    sources: list[Source]
    ladder: RetryLadder
    ledger: IdLedger
    limiters: dict[str, trio.CapacityLimiter] = field(default_factory=dict)
    active: dict[str, ActiveCount] = field(default_factory=dict)
    _retired: list[Downloader] = field(default_factory=list)
    errors: RecentErrors = field(default_factory=RecentErrors)
    owner: str = "main"
    """This process's stable name (:attr:`PluginContext.owner`)."""

    def has(self, component: str) -> bool:
        """Whether this process built ``component`` (``"cache"``, ``"sink"``, ``"inventory"``)."""
        return not isinstance(getattr(self, component), NotBuilt)

    @property
    def state_dir(self) -> Path:
        return Path(self.config.core.daemon.state_dir)

    @property
    def group(self) -> str:
        return self.config.core.bus.group

    def group_for(self, stage: str) -> str:
        return f"{self.group}.{stage}"

    @classmethod
    def build(
        cls,
        config: LoadedConfig,
        registry: Registry,
        bus: Bus,
        metrics: Metrics,
        stages: Sequence[str] = STAGES,
        instance: str = "main",
    ) -> Pipeline:
        core = config.core
        state_dir = Path(core.daemon.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        owner = owner_name(config.node, instance)

        def uses(component: str) -> bool:
            return bool(USED_BY[component] & set(stages))

        def make(component: ComponentKind, choice: PluginChoice, section: str) -> Any:
            if not uses(component):
                return NotBuilt(component, stages)
            context = plugin_context(config, choice.kind, owner)
            return build_component(registry, component, choice, section, context)

        pipeline = cls(
            config=config,
            registry=registry,
            bus=bus,
            producer=bus.producer(),
            metrics=metrics,
            lifecycle=Lifecycle(shutdown_grace=core.daemon.shutdown_grace),
            cache=make("cache", config.cache, "cache"),
            sink=make("sink", config.sink, "sink"),
            inventory=make("inventory", config.inventory, "inventory"),
            downloaders=(
                build_downloaders(config, registry, state_dir, owner) if uses("downloader") else {}
            ),
            sources=[make("source", s, f"sources[{i}]") for i, s in enumerate(config.sources)]
            if uses("source")
            else [],
            ledger=IdLedger(state_dir / LEDGER_FILE)
            if uses("ledger")
            else NotBuilt("ledger", stages),  # type: ignore[arg-type]
            ladder=RetryLadder(core.retry.topics, core.retry.delays),
            owner=owner,
        )
        pipeline.limiters = {
            "ingest": trio.CapacityLimiter(core.ingest.concurrency),
            "download": trio.CapacityLimiter(core.download.concurrency),
            "upload": trio.CapacityLimiter(core.upload.concurrency),
            "results": trio.CapacityLimiter(core.results.batch_rows * 2),
        }
        pipeline.active = {stage: ActiveCount() for stage in pipeline.limiters}
        return pipeline

    def export_stage_gauges(self, stages: Sequence[str]) -> None:
        """In-flight and capacity gauges for the stages this process runs (only those, so
        sums over a fleet of per-stage workers stay true)."""
        for stage in stages:
            self.metrics.track_limiter(
                stage,
                functools.partial(_active_of, self.active[stage]),
                functools.partial(_capacity_of, self.limiters[stage]),
            )

    def apply_live(self, new: LoadedConfig) -> None:
        """Apply the settings that may change while running (see config.LIVE_KEYS)."""
        core = new.core
        self.limiters["ingest"].total_tokens = core.ingest.concurrency
        self.limiters["download"].total_tokens = core.download.concurrency
        self.limiters["upload"].total_tokens = core.upload.concurrency
        self.limiters["results"].total_tokens = core.results.batch_rows * 2
        self.ladder.set_delays(core.retry.delays)
        self.lifecycle.shutdown_grace = core.daemon.shutdown_grace
        quota = getattr(new.cache.settings, "quota", None)
        if quota is not None and self.has("cache"):
            self.cache.set_quota(int(quota))
        if new.downloaders != self.config.downloaders and self.downloaders:
            # Downloads in flight finish with the downloaders they started with; those are
            # closed at shutdown. New downloads use the new settings.
            self._retired.extend(self.downloaders.values())
            self.downloaders = build_downloaders(new, self.registry, self.state_dir, self.owner)
        # Cache, sink, inventory and sources keep the choices they started with (restart).
        self.config = msgspec.structs.replace(self.config, core=core, downloaders=new.downloaders)

    def finished(
        self, stage: str, outcome: str, seconds: float, event_id: str, attempt: int
    ) -> None:
        """One message done: counted, timed, and logged (at debug level: one line a file)."""
        self.metrics.message_done(stage, outcome, seconds)
        log.debug(
            "message done",
            extra={
                "stage": stage,
                "event_id": event_id,
                "attempt": attempt,
                "outcome": outcome,
                "seconds": round(seconds, 4),
            },
        )

    def dead_letter_record(
        self,
        *,
        stage: str,
        reason: str,
        error: str,
        origin_topic: str,
        task: DownloadTask | None = None,
        raw: bytes | None = None,
        source: str | None = None,
        key: bytes | None = None,
    ) -> OutgoingRecord:
        """The DLQ record for one message (keyed by event id unless ``key`` says otherwise)."""
        letter = DeadLetter(
            reason=reason,
            error=error[:4000],
            stage=stage,
            dead_at=utcnow(),
            origin_topic=origin_topic,
            task=task,
            raw=raw,
            source=source,
        )
        if key is None and task is not None:
            key = event_key(task.event.id)
        headers = task_headers(task, origin_topic) if task is not None else {}
        return OutgoingRecord(self.config.core.topics.dlq, DLQ.encode(letter), key, headers)

    async def dead_letter(
        self,
        *,
        stage: str,
        reason: str,
        error: str,
        origin_topic: str,
        task: DownloadTask | None = None,
        raw: bytes | None = None,
        key: bytes | None = None,
    ) -> None:
        """Put one message on the DLQ; returns once it is on the bus."""
        record = self.dead_letter_record(
            stage=stage, reason=reason, error=error, origin_topic=origin_topic,
            task=task, raw=raw, key=key,
        )  # fmt: skip
        await self.producer.send_many([record])
        self.metrics.dead_lettered(stage, reason)
        self.errors.add(
            stage=stage, reason=reason, error=error,
            event_id=task.event.id if task else None, url=task.event.url if task else None,
        )  # fmt: skip
        log.warning(
            "dead-lettered",
            extra={
                "stage": stage,
                "reason": reason,
                "event_id": task.event.id if task else None,
                "error": error[:500],
            },
        )

    async def decode_or_dead_letter(
        self, codec: TopicCodec[M], record: Record, stage: str
    ) -> M | None:
        """Decode a record of our own topics; one that does not decode goes to the DLQ."""
        try:
            return codec.decode(record.value)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self.dead_letter(
                stage=stage, reason=Reason.MALFORMED, error=f"undecodable message: {exc}",
                origin_topic=record.topic, raw=record.value, key=record.key,
            )  # fmt: skip
            return None

    async def aclose(self) -> None:
        closers: list[Downloader | Sink | CacheBackend | Inventory | IdLedger] = [
            *{id(d): d for d in [*self.downloaders.values(), *self._retired]}.values(),
            self.sink,
            self.cache,
            self.inventory,
            self.ledger,
        ]
        for closer in closers:
            with trio.move_on_after(5) as scope:
                scope.shield = True
                try:
                    await closer.aclose()
                except Exception:
                    log.exception("closing a component failed")


def plugin_context(
    config: LoadedConfig, kind: str, owner: str = "main", *, check_only: bool = False
) -> PluginContext:
    """What a component of ``kind`` is told about the daemon that builds it."""
    return PluginContext(
        state_dir=Path(config.core.daemon.state_dir), logger=get_logger(f"plugin.{kind}"),
        owner=owner, check_only=check_only,
        max_event_bytes=int(config.core.ingest.max_event_bytes),
    )  # fmt: skip


def build_component(
    registry: Registry,
    component: ComponentKind,
    choice: PluginChoice,
    section: str,
    context: PluginContext,
) -> Any:
    """The one way a component is built from its config section: the plugin's factory with
    its settings; a ConfigError it raises names the key under ``section`` (``cache.path``)."""
    reg = registry.get(component, choice.kind)
    try:
        return reg.factory(choice.settings, context)
    except ConfigError as exc:
        if exc.key == section or exc.key.startswith((f"{section}.", f"{section}[")):
            raise
        key = f"{section}.{exc.key}" if exc.key else section
        raise ConfigError(key, exc.problem) from None


def owner_name(node: str, instance: str) -> str:
    """A process's stable name for components (:attr:`PluginContext.owner`), file-name safe."""
    return re.sub(r"[^A-Za-z0-9._@+-]", "_", f"{node}.{instance}")


def build_downloaders(
    config: LoadedConfig, registry: Registry, state_dir: Path, owner: str = "main"
) -> dict[str, Downloader]:
    """One downloader per configured kind, indexed by every URL scheme it serves."""
    downloaders: dict[str, Downloader] = {}
    for kind, choice in config.downloaders.items():
        context = plugin_context(config, kind, owner)
        instance = build_component(registry, "downloader", choice, f"downloaders.{kind}", context)
        for scheme in registry.get("downloader", kind).schemes:
            downloaders[scheme] = instance
    return downloaders


async def check_components(config: LoadedConfig, registry: Registry) -> None:
    """Build every component the config selects the way a start does, in check-only mode
    (:attr:`PluginContext.check_only`: validate, create nothing, connect to nothing), and close
    them: ``lakeferry check-config`` and a reload refuse what a start would refuse."""
    sections: list[tuple[ComponentKind, PluginChoice, str]] = [
        ("cache", config.cache, "cache"),
        ("sink", config.sink, "sink"),
        ("inventory", config.inventory, "inventory"),
        *[("source", s, f"sources[{i}]") for i, s in enumerate(config.sources)],
        *[("downloader", d, f"downloaders.{k}") for k, d in config.downloaders.items()],
    ]
    for component, choice, section in sections:
        context = plugin_context(config, choice.kind, check_only=True)
        built = build_component(registry, component, choice, section, context)
        close = getattr(built, "aclose", None)  # sources have nothing to close
        if close is not None:
            with trio.CancelScope(shield=True):
                await close()


def _active_of(count: ActiveCount) -> float:
    return float(count.n)


def _capacity_of(limiter: trio.CapacityLimiter) -> float:
    return float(limiter.total_tokens)
