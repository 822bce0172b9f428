"""The running pipeline's shared parts, built once per daemon process from its stages' specs.

A :class:`Pipeline` holds what the stages of one process share: the bus and its producer, the
components their specs use (:class:`Components`: only those, so a download worker never loads
the sink's or the inventory's libraries nor needs their credentials), one limiter per consumer
the specs declare, the retry ladder, the dead-letter writer, the metrics. The supervisor applies
live config changes to it (:meth:`Pipeline.apply_live`).

Nothing here imports a stage: stages import the pipeline, the pipeline knows them only by their
:class:`~lakeferry.stagespec.StageSpec`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import trio

from lakeferry.build import Builder, Fetcher, owner_name
from lakeferry.bus.base import Bus, Producer
from lakeferry.components import CacheBackend, Inventory, Sink, Source
from lakeferry.config import Config, LoadedConfig, TopicsConfig
from lakeferry.deadletters import DeadLetters
from lakeferry.ledger import LEDGER_FILE, IdLedger
from lakeferry.lifecycle import ActiveCount, Lifecycle
from lakeferry.logs import get_logger
from lakeferry.metrics import Metrics
from lakeferry.recent import RecentErrors
from lakeferry.registry import Registry
from lakeferry.retry import RetryLadder
from lakeferry.stagespec import StageSpec, Uses

log = get_logger("pipeline")


class NotBuilt(RuntimeError):
    """A component no stage of this process uses was asked for: a bug, said so."""


class Components:
    """The components a process's stages use, typed; asking for another raises
    :class:`NotBuilt` naming the stages that would have it."""

    def __init__(self, builder: Builder, specs: Sequence[StageSpec], state_dir: Path) -> None:
        self.uses: frozenset[Uses] = frozenset().union(*(s.uses for s in specs))
        self._stages = [s.name for s in specs]
        self._built: dict[str, Any] = {}
        if "cache" in self.uses:
            self._built["cache"] = builder.cache()
        if "sink" in self.uses:
            self._built["sink"] = builder.sink()
        if "inventory" in self.uses:
            self._built["inventory"] = builder.inventory()
        if "ledger" in self.uses:
            self._built["ledger"] = IdLedger(state_dir / LEDGER_FILE)
        self.sources: list[Source] = builder.sources() if "source" in self.uses else []
        self.fetchers: dict[str, Fetcher] = (
            builder.downloaders() if "downloader" in self.uses else {}
        )
        """URL scheme -> the downloader serving it (replaced on reload)."""
        self._retired: list[Fetcher] = []

    def has(self, component: Uses) -> bool:
        return component in self.uses

    def _get(self, component: str) -> Any:
        try:
            return self._built[component]
        except KeyError:
            raise NotBuilt(
                f"the {component} is not built in a process running {', '.join(self._stages)}"
            ) from None

    @property
    def cache(self) -> CacheBackend:
        built: CacheBackend = self._get("cache")
        return built

    @property
    def sink(self) -> Sink:
        built: Sink = self._get("sink")
        return built

    @property
    def inventory(self) -> Inventory:
        built: Inventory = self._get("inventory")
        return built

    @property
    def ledger(self) -> IdLedger:
        built: IdLedger = self._get("ledger")
        return built

    def replace_fetchers(self, fetchers: dict[str, Fetcher]) -> None:
        """New downloaders (a reload changed their settings): downloads in flight finish with
        the ones they started with, which are closed at shutdown."""
        self._retired.extend(self.fetchers.values())
        self.fetchers = fetchers

    async def aclose(self) -> None:
        downloaders = [f.downloader for f in [*self.fetchers.values(), *self._retired]]
        closers = [*{id(d): d for d in downloaders}.values(), *self._built.values()]
        for closer in closers:
            with trio.move_on_after(5) as scope:
                scope.shield = True
                try:
                    await closer.aclose()
                except Exception:
                    log.exception("closing a component failed")


class Pipeline:
    """What the stages of one process share. Build with :meth:`build`."""

    def __init__(
        self,
        *,
        config: LoadedConfig,
        registry: Registry,
        bus: Bus,
        metrics: Metrics,
        specs: Sequence[StageSpec],
        components: Components,
        owner: str = "main",
    ) -> None:
        core = config.core
        self.config = config
        self.registry = registry
        self.bus = bus
        self.producer: Producer = bus.producer()
        self.metrics = metrics
        self.specs = tuple(specs)
        self.components = components
        self.owner = owner
        """This process's stable name (:attr:`PluginContext.owner`)."""
        self.lifecycle = Lifecycle(shutdown_grace=core.daemon.shutdown_grace)
        self.ladder = RetryLadder(core.retry.topics, core.retry.delays)
        self.errors = RecentErrors()
        self.dead_letters = DeadLetters(
            self.producer, lambda: self.config.core.topics.dlq, metrics, self.errors
        )
        self.limiters: dict[str, trio.CapacityLimiter] = {}
        """Per consumer group: its work slots (the stage's concurrency)."""
        self.intakes: dict[str, trio.CapacityLimiter] = {}
        """Per consumer group with a :attr:`Consumes.intake`: the records it may hold."""
        self.active: dict[str, ActiveCount] = {}
        for spec in self.specs:
            for consumer in spec.consumes:
                self.limiters[consumer.group] = trio.CapacityLimiter(consumer.capacity(core))
                if consumer.intake is not None:
                    self.intakes[consumer.group] = trio.CapacityLimiter(consumer.intake(core))
                self.active[consumer.group] = ActiveCount()

    @classmethod
    def build(
        cls,
        config: LoadedConfig,
        registry: Registry,
        bus: Bus,
        metrics: Metrics,
        specs: Sequence[StageSpec],
        instance: str = "main",
    ) -> Pipeline:
        state_dir = Path(config.core.daemon.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        owner = owner_name(config.node, instance)
        components = Components(Builder(config, registry, owner), specs, state_dir)
        return cls(config=config, registry=registry, bus=bus, metrics=metrics, specs=specs,
                   components=components, owner=owner)  # fmt: skip

    # -- what stages read ------------------------------------------------------------------

    @property
    def settings(self) -> Config:
        """The running configuration's core settings (a reload replaces them)."""
        return self.config.core

    @property
    def topics(self) -> TopicsConfig:
        return self.config.core.topics

    @property
    def state_dir(self) -> Path:
        return Path(self.config.core.daemon.state_dir)

    def group_for(self, consumer: str) -> str:
        return self.config.group_for(consumer)

    def finished(
        self, stage: str, outcome: str, seconds: float, event_id: str, attempt: int
    ) -> None:
        """One message done: counted, timed, and logged (at debug level: one line a file)."""
        self.metrics.message_done(stage, outcome, seconds)
        log.debug(
            "message done",
            extra={"stage": stage, "event_id": event_id, "attempt": attempt,
                   "outcome": outcome, "seconds": round(seconds, 4)},
        )  # fmt: skip

    # -- what the supervisor does ----------------------------------------------------------

    def export_stage_gauges(self) -> None:
        """In-flight and capacity gauges for the stages this process runs (only those, so
        sums over a fleet of per-stage workers stay true)."""
        for spec in self.specs:
            self.metrics.track_limiter(
                spec.name,
                functools.partial(_active_of, self.active[spec.main.group]),
                functools.partial(_capacity_of, self.limiters[spec.main.group]),
            )

    def apply_live(self, new: LoadedConfig) -> None:
        """Apply the settings that may change while running (the specs' ``live_keys`` and
        :data:`lakeferry.config.LIVE_KEYS`); stages read the others from :attr:`config`."""
        core = new.core
        for spec in self.specs:
            for consumer in spec.consumes:
                self.limiters[consumer.group].total_tokens = consumer.capacity(core)
                if consumer.intake is not None:
                    self.intakes[consumer.group].total_tokens = consumer.intake(core)
        self.ladder.set_delays(core.retry.delays)
        self.lifecycle.shutdown_grace = core.daemon.shutdown_grace
        quota = getattr(new.cache.settings, "quota", None)
        if quota is not None and "cache" in self.components.uses:
            self.components.cache.set_quota(int(quota))
        if new.downloaders != self.config.downloaders and "downloader" in self.components.uses:
            builder = Builder(new, self.registry, self.owner)
            self.components.replace_fetchers(builder.downloaders())
        # Cache, sink, inventory and sources keep the choices they started with (restart).
        self.config = msgspec.structs.replace(self.config, core=core, downloaders=new.downloaders)

    async def aclose(self) -> None:
        await self.components.aclose()


def _active_of(count: ActiveCount) -> float:
    return float(count.n)


def _capacity_of(limiter: trio.CapacityLimiter) -> float:
    return float(limiter.total_tokens)
