"""The live feed: a WebSocket (trio-websocket) that pushes a snapshot of the daemon every second.

``lakeferry top`` renders it. A snapshot is one JSON object::

    {"at": "...Z", "pid": 123, "version": "0.1.0", "bus": {"kind": "kafka", "up": true},
     "stages": {"download": {"rate": 41.0, "done": 1234, "in_flight": 50, "capacity": 50,
                             "lag": 17}, ...},
     "retries": {"retry.5m": 3, ...}, "dlq": {"not_found": 2, ...},
     "rungs": [{"topic": "retry.5m", "delay": 300.0, "count": 3}, ...],  (by delay)
     "cache": {"bytes": ..., "files": ..., "quota": ...},
     "errors": [{"at": ..., "stage": ..., "event_id": ..., "reason": ..., "error": ...,
                 "url": "https://host/path?<redacted>"}, ...]}

Listens on ``live.listen`` (127.0.0.1:9465 by default; loopback only unless configured).
Everything in it is already redacted: URLs without query strings, error texts scrubbed.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CollectorRegistry
from trio_websocket import ConnectionClosed, WebSocketRequest, WebSocketServer

from lakeferry import __version__
from lakeferry.listen import address
from lakeferry.logs import get_logger
from lakeferry.recent import RecentErrors

if TYPE_CHECKING:
    from lakeferry.metrics import Metrics
    from lakeferry.pipeline import Pipeline

log = get_logger("livefeed")

INTERVAL = 1.0


def samples(registry: CollectorRegistry, name: str) -> Iterable[tuple[dict[str, str], float]]:
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name:
                yield sample.labels, sample.value


class Snapshotter:
    """Builds snapshots from the metrics registry and the pipeline's live state."""

    def __init__(
        self, pipeline: Pipeline, metrics: Metrics, errors: RecentErrors, stages: Sequence[str]
    ) -> None:
        self.pipeline = pipeline
        self.metrics = metrics
        self.errors = errors
        self.stages = tuple(stages)
        """Every stage's name, in event order (the view shows them all, run here or not)."""
        self._last_done: dict[str, float] = {}
        self._last_at = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        p, registry = self.pipeline, self.metrics.registry
        now = time.monotonic()
        elapsed = max(1e-6, now - self._last_at)
        self._last_at = now
        done: dict[str, float] = collections.defaultdict(float)
        for labels, value in samples(registry, "lakeferry_stage_messages_total"):
            done[labels["stage"]] += value
        lag: dict[str, float] = collections.defaultdict(float)
        by_topic: dict[str, float] = collections.defaultdict(float)
        group = p.config.core.bus.group
        for labels, value in samples(registry, "lakeferry_consumer_lag"):
            # <group>.<stage>, or <group>.upload.<node> in fleet mode
            stage = labels["group"].removeprefix(f"{group}.").split(".", 1)[0]
            lag[stage] += value
            by_topic[labels["topic"]] += value
        resumes: dict[str, float] = {}
        for labels, value in samples(registry, "lakeferry_retry_paused_until_timestamp_seconds"):
            resumes[labels["topic"]] = min(value, resumes.get(labels["topic"], value))
        stages = {}
        for stage in self.stages:
            rate = (done[stage] - self._last_done.get(stage, done[stage])) / elapsed
            self._last_done[stage] = done[stage]
            limiter = p.limiters.get(stage)
            stages[stage] = {
                "rate": round(rate, 2),
                "done": int(done[stage]),
                "in_flight": p.active[stage].n if stage in p.active else 0,
                "capacity": int(limiter.total_tokens) if limiter is not None else 0,
                "lag": int(lag[stage]),
            }
        lanes = self._lanes(lag, elapsed) if "backfill" in p.limiters else {}
        retries = {lb["rung"]: int(v) for lb, v in samples(registry, "lakeferry_retries_total")}
        # The ladder as it runs now (a reload may have changed the delays), in delay order.
        ladder = sorted(zip(p.ladder.delays, p.ladder.topics, strict=True))
        rungs = [
            {"topic": topic, "delay": delay, "count": retries.get(topic, 0),
             "waiting": int(by_topic.get(topic, 0)), "next_due": _due(resumes.get(topic))}
            for delay, topic in ladder
        ]  # fmt: skip
        dlq: collections.Counter[str] = collections.Counter()
        for labels, value in samples(registry, "lakeferry_dlq_total"):
            dlq[labels["reason"]] += int(value)
        cache = {}
        if p.components.has("cache"):
            usage = p.components.cache.usage()
            cache = {"bytes": usage.bytes, "files": usage.files, "quota": usage.quota}
        up = next((v for _, v in samples(registry, "lakeferry_bus_up")), 1.0)
        letters = {lb["reason"]: int(v) for lb, v in samples(registry, "lakeferry_dlq_letters")}
        oldest = next(
            (v for _, v in samples(registry, "lakeferry_dlq_oldest_letter_timestamp_seconds")), 0.0
        )
        breaker = [v for _, v in samples(registry, "lakeferry_upload_breaker_open")]
        return {
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "pid": os.getpid(),
            "version": __version__,
            "bus": {"kind": p.bus.kind, "up": bool(up)},
            "stages": stages,
            "lanes": lanes,  # empty in a process without the download stage
            "retries": retries,
            "rungs": rungs,
            "dlq": dict(dlq),
            # The DLQ as it is now (read every 10 s where the results stage or the console
            # runs; absent elsewhere): letters, by reason, the oldest's age.
            "dlq_now": {
                "letters": sum(letters.values()),
                "by_reason": letters,
                "oldest": age(time.time() - oldest) if oldest else "",
            }
            if letters
            else {},
            "breaker": ("open" if breaker[0] else "closed") if breaker else "",
            "cache": cache,  # empty in a process whose stages use no cache
            "errors": list(self.errors.items),
        }

    def _lanes(self, lag: dict[str, float], elapsed: float) -> dict[str, dict[str, Any]]:
        """The download stage's two lanes: what each did and holds, the backfill's queue."""
        p, registry = self.pipeline, self.metrics.registry
        done: dict[str, float] = collections.defaultdict(float)
        for labels, value in samples(registry, "lakeferry_lane_tasks_total"):
            done[labels["lane"]] += value
        waiting = {
            labels["lane"]: int(value)
            for labels, value in samples(registry, "lakeferry_lane_slot_waiting")
        }
        backlog = next((v for _, v in samples(registry, "lakeferry_backfill_backlog")), -1.0)
        backfill = p.active["backfill"].n
        out: dict[str, dict[str, Any]] = {}
        for lane, in_flight, capacity in (
            ("live", p.active["download"].n - backfill, p.limiters["download"].total_tokens),
            ("backfill", backfill, p.limiters["backfill"].total_tokens),
        ):
            key = f"lane:{lane}"
            rate = (done[lane] - self._last_done.get(key, done[lane])) / elapsed
            self._last_done[key] = done[lane]
            out[lane] = {
                "rate": round(rate, 2), "done": int(done[lane]), "in_flight": in_flight,
                "capacity": int(capacity), "waiting": waiting.get(lane, 0),
            }  # fmt: skip
        out["backfill"]["queued"] = int(lag["backfill"])
        out["backfill"]["backlog"] = int(backlog)
        return out


class LiveFeed:
    """Makes a snapshot every second; serves each to every connected WebSocket client (and
    to the console, :mod:`lakeferry.console`, which reads :attr:`latest`)."""

    def __init__(self, snapshotter: Snapshotter) -> None:
        self.snapshotter = snapshotter
        self.latest: dict[str, Any] = {}
        """The last snapshot made."""
        self._latest = "{}"
        self._tick = trio.Event()

    async def run(
        self,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Make snapshots; serve them on ``listeners`` (none: only :attr:`latest`), bound by
        the caller, so a taken port refuses the start before anything else happens
        (:func:`lakeferry.listen.open_listeners`)."""
        async with trio.open_nursery() as nursery:
            self._make()
            nursery.start_soon(self._produce)
            if listeners:
                server = WebSocketServer(self._serve, listeners)
                await nursery.start(server.run)
                bound = [address(listener.socket) for listener in listeners]
                log.info("live feed listening", extra={"listen": bound})
            task_status.started()

    async def tick(self) -> None:
        """Wait for the next snapshot."""
        await self._tick.wait()

    def _make(self) -> None:
        self.latest = self.snapshotter.snapshot()
        self._latest = json.dumps(self.latest)

    async def _produce(self) -> None:
        while True:
            await trio.sleep(INTERVAL)
            self._make()
            tick, self._tick = self._tick, trio.Event()
            tick.set()

    async def _serve(self, request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            await ws.send_message(self._latest)
            while True:
                await self._tick.wait()
                await ws.send_message(self._latest)
        except ConnectionClosed:
            return


def _due(at: float | None) -> str | None:
    """A paused rung's resume time as the page shows it (None: not paused)."""
    if at is None:
        return None
    when = dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="seconds")
    return f"{when} (in {age(at - time.time())})"


def age(seconds: float) -> str:
    """``42s``, ``17m``, ``5h``, ``3d``: an age at a glance."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"
