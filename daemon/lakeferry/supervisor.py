"""The supervisor: one root nursery that starts, watches, reloads and drains the stages.

Start-up: open the bus, build the pipeline, start each selected stage with
``await nursery.start(...)`` (a stage reports ready only once it really consumes), then tell
systemd ``READY=1``.

Signals (``trio.open_signal_receiver``, never ``signal.signal`` plus a flag):

- SIGTERM / SIGINT: ``STOPPING=1``; stages stop fetching and get ``shutdown_grace`` to finish
  in-flight work, commit, and return; the process exits 0. A second signal cancels at once
  (still committing what is contiguous).
- SIGHUP: ``RELOADING=1``; re-read the config file; an invalid file is refused (logged with the
  key and the problem, counted in ``lakeferry_reloads_total{result="refused"}``) and the running
  config stays; a valid one applies its live settings and logs the keys that need a restart.

A stage that raises is restarted with exponential backoff; ``max_crashes`` crashes within
``crash_window`` end the process with a non-zero code so systemd restarts it.
"""

from __future__ import annotations

import collections
import signal
from typing import TYPE_CHECKING, TypeVar

import msgspec
import trio

from lakeferry import dlq, fleet, logs
from lakeferry.build import check_components, owner_name
from lakeferry.buses import open_bus
from lakeferry.config import LoadedConfig, diff, load_config
from lakeferry.console.health import Readiness
from lakeferry.errors import ConfigError, StageCrashed, StartRefused
from lakeferry.listen import address, open_listeners
from lakeferry.livefeed import LiveFeed, Snapshotter
from lakeferry.logs import get_logger
from lakeferry.metrics import Metrics
from lakeferry.pipeline import Pipeline
from lakeferry.registry import Registry
from lakeferry.stages.catalog import CATALOG, live_keys
from lakeferry.stagespec import StageFn, StageSpec
from lakeferry.systemd import Notifier
from lakeferry.topics import require_topics

if TYPE_CHECKING:
    from lakeferry.console.runner import Prepared

log = get_logger("supervisor")

BUS_MAINTENANCE_INTERVAL = 600.0
INVENTORY_MAINTENANCE_INTERVAL = 60.0
LAG_INTERVAL = 10.0
LEDGER_MAINTENANCE_INTERVAL = 600.0
CACHE_REPORT_INTERVAL = 2.0


class _StartedOnce:
    """Forwards only the first ``started()`` of a stage that may be restarted."""

    def __init__(self, inner: trio.TaskStatus[None]) -> None:
        self.inner = inner
        self.called = False

    def started(self, value: None = None) -> None:
        if not self.called:
            self.called = True
            self.inner.started(value)


class Supervisor:
    def __init__(
        self,
        config: LoadedConfig,
        registry: Registry,
        stages: tuple[StageSpec, ...] = CATALOG,
        notifier: Notifier | None = None,
        instance: str = "main",
    ) -> None:
        self.config = config
        self.started = config
        """The configuration this process started with (what keys that need a restart run)."""
        self.registry = registry
        self.stages = stages
        self.instance = instance
        self.notifier = notifier or Notifier()
        self.metrics = Metrics()
        self.pipeline: Pipeline | None = None
        self.readiness = Readiness()
        """For the console's ``/readyz``."""

    async def run(self) -> int:
        cfg = self.config
        logs.configure(cfg.core.daemon.log_level, cfg.core.daemon.log_format)
        for plugin in self.registry.skipped:  # loading ran before logging was set up
            if plugin.status == "failed":
                log.error(
                    "plugin failed to load; running without it",
                    extra={
                        "plugin": plugin.name,
                        "entry_point": plugin.module,
                        "traceback": plugin.error,
                    },
                )
            elif plugin.status == "shadowed":
                log.warning(
                    "plugin not loaded: another plugin has its name",
                    extra={"plugin": plugin.name, "distribution": plugin.distribution,
                           "why": plugin.error},
                )  # fmt: skip
            else:
                log.info("plugin not loaded", extra={"plugin": plugin.name, "why": plugin.status})
        # Every component's settings are checked before anything is opened (as check-config
        # does), then the listen addresses: a bad file or a taken port refuses the start at once
        # (exit 2), before the bus is opened or anything is built.
        await check_components(cfg, self.registry)
        self.metrics.node(cfg.node, self.instance, fleet=cfg.fleet)
        self.metrics.serve(cfg.core.metrics.listen)
        console: Prepared | None = None
        try:
            live = await open_listeners("live.listen", cfg.core.live.listen)
            if cfg.core.console.listen:
                from lakeferry.console.runner import prepare  # starlette, jinja2: only if used

                console = prepare(cfg.core.console.listen)
            bus = await open_bus(cfg, member=owner_name(cfg.node, self.instance), create=True)
            try:
                bus.on_health = self._bus_health
                await require_topics(cfg, bus)
                if cfg.fleet:
                    await fleet.refuse_taken_node(cfg, fleet.kafka_of(bus))
                self.metrics.bus_health(True)
                pipeline = self.pipeline = Pipeline.build(
                    cfg, self.registry, bus, self.metrics, self.stages, self.instance
                )
                pipeline.export_stage_gauges()
                try:
                    await self._run_stages(pipeline, live, console)
                finally:
                    with trio.CancelScope(shield=True):
                        await pipeline.aclose()
            finally:
                with trio.CancelScope(shield=True):
                    await bus.aclose()
        finally:
            if console is not None:
                console.sock.close()
            self.metrics.close()
        log.info("stopped")
        return 0

    async def _run_stages(
        self, pipeline: Pipeline, live: list[trio.SocketListener], console: Prepared | None
    ) -> None:
        async with trio.open_nursery() as root:
            root.start_soon(self._signals, root.cancel_scope)
            if pipeline.components.has("cache"):
                root.start_soon(self._report_cache)
            root.start_soon(self._maintain_bus)
            root.start_soon(self._report_lag)
            if self.config.fleet:
                beater = fleet.Beater(
                    self.config, fleet.kafka_of(pipeline.bus), self.instance,
                    [spec.name for spec in self.stages], self._node_report,
                )  # fmt: skip
                root.start_soon(beater.run)
            if live or console is not None:
                names = [spec.name for spec in CATALOG]
                feed = LiveFeed(Snapshotter(pipeline, self.metrics, pipeline.errors, names))
                await root.start(feed.run, live)
            if console is not None or any(spec.name == "results" for spec in self.stages):
                root.start_soon(dlq.watch_depth, pipeline.bus, pipeline.topics.dlq,
                                self.metrics.dlq_now)  # fmt: skip
            if console is not None:
                from lakeferry.console.runner import run as run_console

                await root.start(
                    run_console, console, pipeline, feed, self.readiness,
                    owner_name(self.config.node, self.instance),
                )  # fmt: skip
            if any(spec.name == "results" for spec in self.stages):
                # One kind of process keeps the tables tidy (the ingest stage writes the events
                # table too, but two maintainers would only race each other).
                root.start_soon(self._maintain_inventory)
            if pipeline.components.has("ledger"):
                root.start_soon(self._maintain_ledger)
            async with trio.open_nursery() as stages:
                for spec in self.stages:
                    await stages.start(self._supervise, spec.name, spec.run)
                log.info(
                    "ready",
                    extra={
                        "stages": [spec.name for spec in self.stages],
                        "bus": pipeline.bus.kind,
                        # the addresses bound (a port 0 in the config is a port now)
                        "metrics": self.metrics.address,
                        "live": ",".join(address(listener.socket) for listener in live),
                        "console": "" if console is None else address(console.sock),
                    },
                )
                self.notifier.ready()
                self.readiness.started = True
                root.start_soon(self.notifier.run_watchdog)
            # every stage returned: drained
            root.cancel_scope.cancel(reason="all stages drained")

    async def _supervise(
        self, name: str, fn: StageFn, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        assert self.pipeline is not None
        p = self.pipeline
        daemon = self.config.core.daemon
        status = _StartedOnce(task_status)
        crashes: collections.deque[float] = collections.deque()
        backoff: float = daemon.restart_backoff
        while True:
            try:
                await fn(p, task_status=status)
                return
            except Exception as exc:
                if p.lifecycle.draining.is_set():
                    log.exception("stage failed while draining", extra={"stage": name})
                    return
                now = trio.current_time()
                crashes.append(now)
                while crashes and crashes[0] < now - daemon.crash_window:
                    crashes.popleft()
                self.metrics.stage_restarted(name)
                log.exception(
                    "stage crashed", extra={"stage": name, "crashes_in_window": len(crashes)}
                )
                if len(crashes) >= daemon.max_crashes:
                    raise StageCrashed(
                        f"stage {name} crashed {len(crashes)} times within "
                        f"{daemon.crash_window:g}s; giving up"
                    ) from exc
            await _sleep_unless_draining(p, backoff)
            if p.lifecycle.draining.is_set():
                return
            backoff = min(backoff * 2, daemon.restart_backoff_max)

    async def _signals(self, root: trio.CancelScope) -> None:
        assert self.pipeline is not None
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await self.reload()
                    continue
                if self.pipeline.lifecycle.draining.is_set():
                    log.warning("second stop signal: cancelling in-flight work now")
                    root.cancel(reason="second stop signal")
                    return
                grace = self.pipeline.lifecycle.shutdown_grace
                log.info(
                    "stop signal: draining",
                    extra={"signal": signal.Signals(signum).name, "grace": grace},
                )
                self.notifier.stopping()
                self.readiness.draining = True
                self.pipeline.lifecycle.drain()
                # Stages have the grace to finish; commits and flushes get a little more.
                root.deadline = min(root.deadline, trio.current_time() + grace + 15)

    async def reload(self) -> bool:
        """Re-read the config file and apply what can change live. False when refused: the
        new file is checked as ``lakeferry check-config`` checks it (every component built in
        check-only mode), so a file a restart would refuse is refused now."""
        assert self.pipeline is not None
        self.notifier.reloading()
        try:
            new = load_config(self.config.path, self.registry)
            await check_components(new, self.registry)
            keys = live_keys()
            live, _ = diff(self.config, new, keys)
            # Pending a restart: what differs from what this process really runs, i.e. from
            # the file it started with (a change reverted is no longer pending).
            _, restart = diff(self.started, new, keys)
            self.pipeline.apply_live(new)
        except Exception as exc:
            # Whatever went wrong, a reload never takes the daemon down.
            self.metrics.reloaded("refused")
            log.error(
                "reload refused; keeping the running configuration",
                extra={"path": self.config.path, "error": str(exc)},
                exc_info=not isinstance(exc, ConfigError | ValueError),
            )
            self.notifier.ready("running (reload refused)")
            return False
        logs.set_level(new.core.daemon.log_level)
        self.config = msgspec.structs.replace(self.config, core=new.core)
        self.metrics.reloaded("applied", restart_pending=bool(restart))
        if restart:
            log.warning("reloaded; these settings need a restart", extra={"keys": restart})
        log.info("reloaded", extra={"applied": live, "needs_restart": restart})
        self.notifier.ready()
        return True

    def _bus_health(self, up: bool, detail: str) -> None:
        self.metrics.bus_health(up)
        if not up:
            self.notifier.status(f"bus unreachable: {detail}")
        else:
            self.notifier.status("running")

    async def _maintain_bus(self) -> None:
        """The bus's own housekeeping, if it has any (the embedded bus prunes consumed records
        past retention and compacts the DLQ)."""
        assert self.pipeline is not None
        bus = self.pipeline.bus
        while True:
            await trio.sleep(BUS_MAINTENANCE_INTERVAL)
            try:
                cfg = self.config.core
                done = await bus.maintain(
                    retention=cfg.bus.embedded.retention, compact=[cfg.topics.dlq]
                )
            except Exception:
                log.exception("bus maintenance failed; will try again")
                continue
            if done:
                log.info("bus maintenance", extra=done)

    def _consumed_topics(self) -> dict[str, list[str]]:
        """Consumer group -> topics, for the consumers of the stages this process runs."""
        assert self.pipeline is not None
        core = self.config.core
        return {
            self.pipeline.group_for(consumer.group): consumer.topics(core)
            for spec in self.stages
            for consumer in spec.consumes
            if consumer.enabled(core)
        }

    async def _report_lag(self) -> None:
        """Consumer lag per group, topic and partition: end offset minus committed offset."""
        assert self.pipeline is not None
        bus = self.pipeline.bus
        while True:
            for group, topics in self._consumed_topics().items():
                for topic in topics:
                    try:
                        ends = await bus.end_offsets(topic)
                        committed = await bus.committed(group, topic)
                    except Exception as exc:
                        log.debug("lag unavailable", extra={"topic": topic, "error": str(exc)})
                        continue
                    for partition, end in ends.items():
                        lag = max(0, end - committed.get(partition, 0))
                        self.metrics.lag(group, topic, partition, lag)
            await trio.sleep(LAG_INTERVAL)

    async def _maintain_inventory(self) -> None:
        assert self.pipeline is not None
        inventory = self.pipeline.components.inventory
        while True:
            await trio.sleep(INVENTORY_MAINTENANCE_INTERVAL)
            try:
                await inventory.maintain()
            except Exception:
                log.exception("inventory maintenance failed; will try again")

    async def _maintain_ledger(self) -> None:
        """Forget ids bound longer ago than ``ledger.window`` (read live: SIGHUP may change it)."""
        assert self.pipeline is not None
        while True:
            try:
                ledger = self.pipeline.components.ledger
                forgotten = await ledger.prune(self.config.core.ledger.window)
            except Exception:
                log.exception("id ledger maintenance failed; will try again")
            else:
                if forgotten:
                    log.info("id ledger pruned", extra={"forgotten": forgotten})
            await trio.sleep(LEDGER_MAINTENANCE_INTERVAL)

    def _node_report(self) -> tuple[dict[str, int], int | None, int | None]:
        """What this process's heartbeat says: in flight per stage, the cache's fill."""
        assert self.pipeline is not None
        p = self.pipeline
        in_flight = {spec.name: p.active[spec.main.group].n for spec in self.stages
                     if spec.main.group in p.active}  # fmt: skip
        if not p.components.has("cache"):
            return in_flight, None, None
        usage = p.components.cache.usage()
        return in_flight, usage.bytes, usage.quota

    async def _report_cache(self) -> None:
        """The cache gauges, from the cache's storage every few seconds (download and upload
        workers of a VM share the cache: what one process counted alone would drift)."""
        assert self.pipeline is not None
        cache = self.pipeline.components.cache
        while True:
            try:
                usage = await cache.refresh()
            except Exception as exc:
                log.warning("cannot read the cache's usage", extra={"error": str(exc)})
                usage = cache.usage()
            self.metrics.cache_usage(usage.bytes, usage.files, usage.quota)
            await trio.sleep(CACHE_REPORT_INTERVAL)


async def _sleep_unless_draining(p: Pipeline, seconds: float) -> None:
    with trio.move_on_after(seconds):
        await p.lifecycle.draining.wait()


def run_daemon(
    config: LoadedConfig,
    registry: Registry,
    stages: tuple[StageSpec, ...] = CATALOG,
    instance: str = "main",
) -> int:
    """Run the daemon until drained. Returns the process exit code; raises
    :class:`StartRefused` (exit 2) when it cannot start here as configured."""
    supervisor = Supervisor(config, registry, stages, instance=instance)
    try:
        return trio.run(supervisor.run)
    except BaseException as exc:
        refused = _find(exc, StartRefused)
        if refused is not None:
            raise refused from None
        crashed = _find(exc, StageCrashed)
        if crashed is None:
            raise
        log.critical(str(crashed))
        return 3


E = TypeVar("E", bound=BaseException)


def _find(exc: BaseException, kind: type[E]) -> E | None:
    """``exc`` itself or the first ``kind`` inside nested exception groups."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner, kind)
            if found is not None:
                return found
    return None
