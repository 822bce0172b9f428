"""Per-origin limits in the running daemon, against origins that really misbehave.

Each test runs the daemon (embedded bus) against two real HTTP origins (``tools/origin.py``
on two ports: two origins to lakeferry): one that stalls every request (``/hang``) or allows N
requests at once and answers 429 beyond (``/throttle``), and a healthy one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from helpers.daemon import DaemonEnv, origin_events
from helpers.origin import Origin, serve
from helpers.wait import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def origins() -> Iterator[tuple[Origin, Origin]]:
    with serve() as troubled, serve() as healthy:
        yield troubled, healthy


def configure(env: DaemonEnv, **download: Any) -> None:
    env.data["download"] = {**env.data.get("download", {}), **download}
    # No download gives up on its own within a test: a stalled one holds its slot until the end.
    env.data["downloaders"]["http"].update(read_timeout="1h", total_timeout="1h")
    env.write()


def test_a_stalled_origin_does_not_starve_a_healthy_one(
    daemon_env: DaemonEnv, origins: tuple[Origin, Origin]
) -> None:
    """Before per-origin limits, 8 stalled requests took all 8 download slots and nothing else
    moved until they timed out; now the stalled origin holds at most its limit and the healthy
    origin's files land while its requests are still hanging."""
    stalled, healthy = origins
    env = daemon_env
    configure(env, concurrency=8, host_initial=2)
    daemon = env.start()
    hung = env.submit_events(
        [{"id": f"hang-{i}", "url": f"{stalled.url}/hang/f{i}.bin"} for i in range(20)]
    )
    wait_for(
        lambda: stalled.concurrency()["hang"]["now"],
        lambda now: now == 2,
        timeout=60,
        what="the stalled origin to hold its two requests",
    )
    env.submit_events(origin_events(healthy, "good", 40))
    # (The audit counts every event submitted: the 20 stalled ones stay in flight.)
    counts = wait_for(
        lambda: env.audit(hung)[1],
        lambda counts: counts["landed"] == 40,
        timeout=120,
        what="the healthy origin's 40 files to land",
        interval=1,
    )
    assert (counts["in_flight"], counts["dead_lettered"], counts["lost"]) == (20, 0, 0)
    # ... while the stalled origin's requests still hang, never more than its limit.
    assert stalled.concurrency()["hang"] == {"now": 2, "peak": 2, "throttled": 0}
    assert env.metric("lakeferry_origin_active", origin=stalled.url.removeprefix("http://")) == 2
    assert daemon.alive()


def test_a_throttling_origin_is_slowed_as_a_whole(
    daemon_env: DaemonEnv, origins: tuple[Origin, Origin]
) -> None:
    """An origin that serves 4 requests at once and answers 429 beyond: lakeferry settles at
    about 4 with few 429s (before: 16 at a time, a 429 storm, files dead-lettered after
    exhausting their attempts), and every file lands."""
    throttling, _ = origins
    env = daemon_env
    configure(env, concurrency=16, host_initial=16)
    env.start()
    n = 120
    events = [
        {"id": f"t-{i}", "url": throttling.file_url(f"t{i}.bin", 4096, route="throttle", limit=4)}
        for i in range(n)
    ]
    batch = env.submit_events(events)
    counts = env.wait_settled(batch, landed=n, dead_lettered=0, timeout=180, what="throttled files")
    assert counts["lost"] == 0
    seen = throttling.concurrency()["throttle"]
    assert seen["peak"] == 4  # the origin's own rule: never more served at once
    # 12 429s at most for the first burst (16 at once), a few after as the limit probes upward
    # (34 here without the backoff, every 429 sending only its own URL round the ladder).
    assert seen["throttled"] <= 20, seen
    name = throttling.url.removeprefix("http://")
    assert env.metric("lakeferry_origin_downloads_total", origin=name, outcome="ok") == n
    assert (
        env.metric("lakeferry_origin_downloads_total", origin=name, outcome="setback")
        == (seen["throttled"])
    )


def test_a_dead_origin_opens_its_circuit_and_its_tasks_wait_unspent(
    daemon_env: DaemonEnv,
) -> None:
    """An origin that refuses every connection: after two rounds of setbacks its circuit opens
    and its tasks go round the first rung without spending attempts (before: each climbed the
    ladder and was dead-lettered ``retries_exhausted`` after its five attempts). When the
    origin comes back, a probe closes the circuit and every file lands."""
    from helpers.daemon import harness

    env = daemon_env
    configure(env, host_circuit_failures=2, host_circuit_cooldown="1s")
    port = harness.free_port()  # nothing listens there yet
    url = f"http://127.0.0.1:{port}"
    daemon = env.start()
    names = [f"d{i}.bin" for i in range(12)]
    batch = env.submit_events([{"id": n, "url": f"{url}/files/{n}?size=3000"} for n in names])
    opened = daemon.wait_for_log("origin circuit open: its downloads wait on the first retry rung")
    assert opened["origin"] == f"127.0.0.1:{port}"
    wait_for(
        lambda: env.metric("lakeferry_download_parked_total", reason="host_circuit_open"),
        lambda parked: parked >= 12,
        timeout=60,
        what="the tasks to go round the first rung a few times",
    )
    assert env.metric("lakeferry_dlq_total") == 0
    with serve(port=port):
        counts = env.wait_settled(
            batch, landed=12, dead_lettered=0, timeout=120, what="the files, once it is back"
        )
        daemon.wait_for_log("origin circuit closed: its probe succeeded")
    assert counts["lost"] == 0
    # Attempts were spent only by the downloads that really failed (two rounds and the probes).
    attempts = env.metric("lakeferry_retries_total")
    assert attempts < 24, attempts  # 7 here; each task alone would have spent 4 and died


def test_an_origin_failing_every_request_is_not_asked_once_per_task(
    daemon_env: DaemonEnv,
) -> None:
    """An origin answering 503 without Retry-After to every request: a bare 5xx slows nobody,
    but twenty in a row with nothing else between open its circuit with its tasks failing
    without a request. They climb the ladder and are dead-lettered as before (URLs that only
    ever fail must end), for a fraction of the requests: before, each of the 40 tasks asked
    five times (200 requests, each a whole failed download's CPU here)."""
    from lakeferry.stages.origins import FAILING_AFTER

    env = daemon_env
    configure(env)
    with serve() as failing:
        daemon = env.start()
        batch = env.submit_events(
            [{"id": f"f{i}", "url": f"{failing.url}/status/503/f{i}.bin"} for i in range(40)]
        )
        opened = daemon.wait_for_log(
            "origin circuit open: its downloads fail without a request (server errors only)"
        )
        assert opened["faults_in_row"] == FAILING_AFTER
        counts = env.wait_settled(
            batch, landed=0, dead_lettered=40, timeout=120, what="every task dead-lettered"
        )
        requests = sum(failing.counts().values())
    assert counts["lost"] == 0
    assert FAILING_AFTER <= requests < 40, requests
    letters = env.letters()
    assert {letter["reason"] for letter in letters} == {"retries_exhausted"}
    assert all("not tried: origin 127.0.0.1:" in letter["error"] for letter in letters)
    not_tried = env.metric("lakeferry_origin_downloads_total", outcome="not_tried")
    assert not_tried >= 40 * 5 - requests, not_tried


def test_bandwidth_caps_hold_downloads_to_their_rate(
    daemon_env: DaemonEnv, origins: tuple[Origin, Origin]
) -> None:
    """``download.host_rates`` holds an origin to its bytes per second (before: 2 MiB from
    loopback took well under a second); the cap is a floor on the time taken, which a busy
    machine can only lengthen."""
    capped, _ = origins
    env = daemon_env
    rate = 256 * 1024
    configure(env, host_rates={"127.0.0.1:" + capped.url.rsplit(":", 1)[1]: "256KiB"})
    env.start()
    n, size = 8, 256 * 1024
    events = [{"id": f"r-{i}", "url": capped.file_url(f"r{i}.bin", size)} for i in range(n)]
    started = time.monotonic()
    batch = env.submit_events(events)
    env.wait_settled(batch, landed=n, dead_lettered=0, timeout=120, what="the capped files")
    took = time.monotonic() - started
    # A second's worth goes at once, the rest at the rate.
    assert took >= (n * size - rate) / rate, took
