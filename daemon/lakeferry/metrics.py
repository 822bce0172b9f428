"""Prometheus metrics, behind plain-language methods the stages call.

One :class:`Metrics` per daemon, on its own registry, served on ``metrics.listen``
(127.0.0.1:9464 by default). Every metric is documented in the README's metrics table; names
follow ``lakeferry_<area>_<what>_<unit>``.
"""

from __future__ import annotations

import contextlib
import functools
import socket
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import prometheus_client as prom
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from lakeferry import __version__
from lakeferry.listen import address, refusal
from lakeferry.listen import split as split_listen

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 120, 300, 900, 3600, 7200)
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


TOP_ORIGINS = 20
"""Origins with their own series; the rest are summed under ``origin="other"``."""
OTHER = "other"


class OriginStats(NamedTuple):
    """One origin as the download stage sees it (:mod:`lakeferry.stages.origins`)."""

    name: str
    started: int
    succeeded: int
    setbacks: int
    failed: int
    parked: int
    not_tried: int
    """Tasks failed without a request: the origin answered server errors only."""
    limit: int
    active: int
    waiting: int
    circuit_open: bool


OriginSnapshot = Callable[[], tuple[list[OriginStats], OriginStats]]
"""Every origin known now, and the totals of those forgotten since."""

NO_ORIGIN = OriginStats(OTHER, 0, 0, 0, 0, 0, 0, 0, 0, 0, circuit_open=False)


def _no_origins() -> tuple[list[OriginStats], OriginStats]:
    return [], NO_ORIGIN


class _OriginsCollector:
    """Per-origin series with bounded cardinality: up to :data:`TOP_ORIGINS` origins get their
    own label, chosen by downloads started when a place is free (an origin keeps its place
    until the stage forgets it); the others are summed as ``other``. ``other``'s counters step
    down when one of its origins gets a place of its own."""

    def __init__(self, snapshot: OriginSnapshot) -> None:
        self._snapshot = snapshot
        self._labelled: set[str] = set()

    def follow(self, snapshot: OriginSnapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        current, forgotten = self._snapshot()
        self._labelled &= {s.name for s in current}
        free = TOP_ORIGINS - len(self._labelled)
        if free > 0:
            candidates = sorted(
                (s for s in current if s.name not in self._labelled), key=lambda s: -s.started
            )
            self._labelled.update(s.name for s in candidates[:free])
        rows = [s for s in current if s.name in self._labelled]
        rest = [forgotten, *(s for s in current if s.name not in self._labelled)]
        rows.append(
            OriginStats(
                OTHER,
                started=sum(s.started for s in rest),
                succeeded=sum(s.succeeded for s in rest),
                setbacks=sum(s.setbacks for s in rest),
                failed=sum(s.failed for s in rest),
                parked=sum(s.parked for s in rest),
                not_tried=sum(s.not_tried for s in rest),
                limit=sum(s.limit for s in rest),
                active=sum(s.active for s in rest),
                waiting=sum(s.waiting for s in rest),
                circuit_open=False,
            )
        )
        downloads = CounterMetricFamily(
            "lakeferry_origin_downloads",
            "Downloads per origin (host:port) by how they ended: ok, setback (429, 5xx with "
            "Retry-After, timeout, "
            "connection), failed (the origin answered; the task failed), not_tried (failed "
            "without a request: the origin answered server errors only)",
            labels=["origin", "outcome"],
        )
        parked = CounterMetricFamily(
            "lakeferry_origin_parked",
            "Tasks put back on the first retry rung unspent because of their origin",
            labels=["origin"],
        )
        gauges = {
            "limit": GaugeMetricFamily(
                "lakeferry_origin_limit", "An origin's adaptive download limit", labels=["origin"]
            ),
            "active": GaugeMetricFamily(
                "lakeferry_origin_active", "Downloads running per origin", labels=["origin"]
            ),
            "waiting": GaugeMetricFamily(
                "lakeferry_origin_waiting",
                "Tasks waiting for their origin (holding no download slot)",
                labels=["origin"],
            ),
            "circuit_open": GaugeMetricFamily(
                "lakeferry_origin_circuit_open",
                "Origins whose circuit is open or half-open (1 per origin; other: how many)",
                labels=["origin"],
            ),
        }
        opened_elsewhere = sum(1 for s in rest[1:] if s.circuit_open)
        for row in rows:
            downloads.add_metric([row.name, "ok"], row.succeeded)
            downloads.add_metric([row.name, "setback"], row.setbacks)
            downloads.add_metric([row.name, "failed"], row.failed)
            downloads.add_metric([row.name, "not_tried"], row.not_tried)
            parked.add_metric([row.name], row.parked)
            gauges["limit"].add_metric([row.name], row.limit)
            gauges["active"].add_metric([row.name], row.active)
            gauges["waiting"].add_metric([row.name], row.waiting)
            is_open = opened_elsewhere if row.name == OTHER else int(row.circuit_open)
            gauges["circuit_open"].add_metric([row.name], is_open)
        yield downloads
        yield parked
        yield from gauges.values()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._dlq_reasons: set[str] = set()
        r = self.registry
        self.build_info = prom.Info("lakeferry_build", "lakeferry version", registry=r)
        self.build_info.info({"version": __version__})
        self.node_info = prom.Info(
            "lakeferry_node", "This process's node, instance and layout", registry=r
        )
        self.node(socket.gethostname(), "main", fleet=False)  # the supervisor says better
        self.messages = prom.Counter(
            "lakeferry_stage_messages_total",
            "Messages a stage finished, by outcome",
            ["stage", "outcome"],
            registry=r,
        )
        self.durations = prom.Histogram(
            "lakeferry_stage_duration_seconds",
            "Time a stage spent on one message",
            ["stage"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.in_flight = prom.Gauge(
            "lakeferry_stage_in_flight", "Messages being processed", ["stage"], registry=r
        )
        self.capacity = prom.Gauge(
            "lakeferry_stage_capacity", "Concurrency limit (limiter tokens)", ["stage"], registry=r
        )
        self.bytes = prom.Counter(
            "lakeferry_stage_bytes_total", "Bytes downloaded or uploaded", ["stage"], registry=r
        )
        self.retries = prom.Counter(
            "lakeferry_retries_total", "Tasks sent to a retry rung", ["rung"], registry=r
        )
        self.retry_lateness = prom.Histogram(
            "lakeferry_retry_lateness_seconds",
            "How late a retried task was taken after its due time",
            ["rung"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.dlq = prom.Counter(
            "lakeferry_dlq_total", "Messages dead-lettered", ["stage", "reason"], registry=r
        )
        self.dlq_letters = prom.Gauge(
            "lakeferry_dlq_letters",
            "Letters in the DLQ now (not replayed or purged), by reason; read every "
            "10 s by the process that runs the results stage or the console",
            ["reason"],
            registry=r,
        )
        self.dlq_oldest = prom.Gauge(
            "lakeferry_dlq_oldest_letter_timestamp_seconds",
            "When the oldest letter in the DLQ was dead-lettered (Unix time; 0: none); its "
            "age is time() minus this",
            registry=r,
        )
        self.retry_paused_until = prom.Gauge(
            "lakeferry_retry_paused_until_timestamp_seconds",
            "When a retry rung's partition, paused until its head record is due, resumes "
            "(Unix time; absent: not paused)",
            ["topic", "partition"],
            registry=r,
        )
        self.cache_bytes = prom.Gauge("lakeferry_cache_bytes", "Bytes in the cache", registry=r)
        self.cache_files = prom.Gauge("lakeferry_cache_files", "Files in the cache", registry=r)
        self.cache_quota = prom.Gauge("lakeferry_cache_quota_bytes", "Cache byte quota", registry=r)
        self.end_to_end = prom.Histogram(
            "lakeferry_end_to_end_seconds",
            "Event created to inventory row committed",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.delta_commit = prom.Histogram(
            "lakeferry_delta_commit_seconds",
            "Duration of one Delta commit",
            ["table"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.delta_rows = prom.Counter(
            "lakeferry_delta_rows_total", "Rows committed to Delta", ["table"], registry=r
        )
        self.inventory_skipped = prom.Counter(
            "lakeferry_inventory_skipped_total",
            "Results not written because already recorded",
            ["why"],
            registry=r,
        )
        self.restarts = prom.Counter(
            "lakeferry_stage_restarts_total", "Stage restarts after a crash", ["stage"], registry=r
        )
        self.reloads = prom.Counter(
            "lakeferry_reloads_total",
            "Configuration reloads (SIGHUP), by result",
            ["result"],
            registry=r,
        )
        self.restart_pending = prom.Gauge(
            "lakeferry_config_restart_pending",
            "1 when a reloaded setting only takes effect after a restart",
            registry=r,
        )
        self.breaker_open = prom.Gauge(
            "lakeferry_upload_breaker_open", "1 while the sink circuit breaker is open", registry=r
        )
        self.consumer_lag = prom.Gauge(
            "lakeferry_consumer_lag",
            "Records on the bus not yet committed by a consumer group",
            ["group", "topic", "partition"],
            registry=r,
        )
        self.bus_up = prom.Gauge(
            "lakeferry_bus_up", "1 while the bus (Kafka brokers) is reachable", registry=r
        )
        self.bus_outages = prom.Counter(
            "lakeferry_bus_outages_total", "Times the bus became unreachable", registry=r
        )
        self.bus_errors = prom.Counter(
            "lakeferry_bus_errors_total", "Errors talking to the bus", ["op"], registry=r
        )
        self.parks = prom.Counter(
            "lakeferry_download_parked_total",
            "Download tasks put back on the first retry rung without spending an attempt, "
            "by reason (host_circuit_open, host_busy)",
            ["reason"],
            registry=r,
        )
        self.lane_tasks = prom.Counter(
            "lakeferry_lane_tasks_total",
            "Download tasks handled, by lane (live, backfill) and outcome",
            ["lane", "outcome"],
            registry=r,
        )
        self.lane_active = prom.Gauge(
            "lakeferry_lane_downloads_active", "Downloads running, by lane", ["lane"], registry=r
        )
        self.lane_waiting = prom.Gauge(
            "lakeferry_lane_slot_waiting",
            "Tasks of a lane waiting for a download slot (backfill: while live tasks take them)",
            ["lane"],
            registry=r,
        )
        self.backfill_backlog = prom.Gauge(
            "lakeferry_backfill_backlog",
            "Files downloaded and not yet recorded, as the backfill lane last measured them "
            "(-1: unknown, the lane waits)",
            registry=r,
        )
        self.backfill_turn_waiting = prom.Gauge(
            "lakeferry_backfill_turn_waiting",
            "Backfill tasks the download stage holds, waiting for their turn (the lane's rate "
            "cap, its window)",
            registry=r,
        )
        self.backfill_window = prom.Gauge(
            "lakeferry_backfill_window",
            "Files the backfill lane lets the stages after download hold now",
            registry=r,
        )
        self.backfill_latency = prom.Gauge(
            "lakeferry_backfill_latency_seconds",
            "Seconds a file takes in the stages after download, as the backfill lane measures "
            "it: now, and the lowest of the last 30 s (their own time, without a queue)",
            ["of"],
            registry=r,
        )
        # Until a download stage runs here: the series exist (as "other", at zero).
        self._origins = _OriginsCollector(_no_origins)
        r.register(self._origins)
        self._server: Any = None

    # -- plain-language methods ------------------------------------------------------------

    def node(self, node: str, instance: str, *, fleet: bool) -> None:
        """Label this process: dashboards join per-node panels on it."""
        layout = "fleet" if fleet else "cell"
        self.node_info.info({"node": node, "instance_name": instance, "layout": layout})

    def message_done(self, stage: str, outcome: str, seconds: float) -> None:
        self.messages.labels(stage, outcome).inc()
        self.durations.labels(stage).observe(seconds)

    def track_limiter(
        self, stage: str, in_flight: Callable[[], float], capacity: Callable[[], float]
    ) -> None:
        self.in_flight.labels(stage).set_function(in_flight)
        self.capacity.labels(stage).set_function(capacity)

    def track_origins(self, snapshot: OriginSnapshot) -> None:
        """Serve the download stage's per-origin series (a restarted stage replaces its
        predecessor's)."""
        self._origins.follow(snapshot)

    def track_lanes(
        self,
        active: Callable[[str], float],
        waiting: Callable[[str], float],
        backlog: Callable[[], float],
        window: Callable[[], float],
        latency: Callable[[str], float],
        turn_waiting: Callable[[], float],
    ) -> None:
        """Serve the download stage's per-lane gauges (``latency("now" | "lowest")``). They are
        read on the endpoint's thread: plain reads, no trio calls."""
        for lane in ("live", "backfill"):
            self.lane_active.labels(lane).set_function(functools.partial(active, lane))
            self.lane_waiting.labels(lane).set_function(functools.partial(waiting, lane))
        self.backfill_backlog.set_function(backlog)
        self.backfill_window.set_function(window)
        self.backfill_turn_waiting.set_function(turn_waiting)
        for of in ("now", "lowest"):
            self.backfill_latency.labels(of).set_function(functools.partial(latency, of))

    def lane_done(self, lane: str, outcome: str) -> None:
        self.lane_tasks.labels(lane, outcome).inc()

    def parked(self, reason: str) -> None:
        self.parks.labels(reason).inc()

    def bytes_moved(self, stage: str, n: int) -> None:
        self.bytes.labels(stage).inc(n)

    def retried(self, rung_topic: str) -> None:
        self.retries.labels(rung_topic).inc()

    def dead_lettered(self, stage: str, reason: str) -> None:
        self.dlq.labels(stage, reason).inc()

    def dlq_now(self, letters: Mapping[str, int], oldest: float) -> None:
        """The DLQ as it is now: letters by reason (a reason with none left reads 0), the
        oldest's dead-letter time (Unix; 0: none)."""
        for reason in self._dlq_reasons - set(letters):
            self.dlq_letters.labels(reason).set(0)
        for reason, n in letters.items():
            self.dlq_letters.labels(reason).set(n)
        self._dlq_reasons |= set(letters)
        self.dlq_oldest.set(oldest)

    def retry_paused(self, topic: str, partition: int, until: float | None) -> None:
        """A rung's partition paused until ``until`` (Unix time), or resumed (None)."""
        if until is None:
            with contextlib.suppress(KeyError):
                self.retry_paused_until.remove(topic, str(partition))
            return
        self.retry_paused_until.labels(topic, str(partition)).set(until)

    def retry_late(self, rung_topic: str, seconds: float) -> None:
        self.retry_lateness.labels(rung_topic).observe(seconds)

    def bus_error(self, op: str) -> None:
        self.bus_errors.labels(op).inc()

    def bus_health(self, up: bool) -> None:
        """The bus became reachable (``up``) or not: the gauge, and an outage counted."""
        if not up:
            self.bus_outages.inc()
        self.bus_up.set(1 if up else 0)

    def inventory_skip(self, why: str, n: int = 1) -> None:
        self.inventory_skipped.labels(why).inc(n)

    def delta_committed(self, table: str, rows: int, seconds: float | None = None) -> None:
        if seconds is not None:
            self.delta_commit.labels(table).observe(seconds)
        self.delta_rows.labels(table).inc(rows)

    def breaker(self, is_open: bool) -> None:
        self.breaker_open.set(1 if is_open else 0)

    def stage_restarted(self, stage: str) -> None:
        self.restarts.labels(stage).inc()

    def reloaded(self, result: str, *, restart_pending: bool | None = None) -> None:
        self.reloads.labels(result).inc()
        if restart_pending is not None:
            self.restart_pending.set(1 if restart_pending else 0)

    def lag(self, group: str, topic: str, partition: int, records: int) -> None:
        self.consumer_lag.labels(group, topic, str(partition)).set(records)

    def cache_usage(self, used_bytes: int, files: int, quota: int) -> None:
        self.cache_bytes.set(used_bytes)
        self.cache_files.set(files)
        self.cache_quota.set(quota)

    def serve(self, listen: str) -> None:
        """Start the HTTP endpoint (a daemon thread of prometheus-client)."""
        if not listen:
            return
        host, port = split_listen(listen)
        try:
            server, _thread = prom.start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise refusal("metrics.listen", listen, exc) from None
        self._server = server

    @property
    def address(self) -> str:
        """The ``host:port`` the endpoint is bound to (``""``: not serving)."""
        return "" if self._server is None else address(self._server.socket)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
