"""The pipeline on a real Kafka broker, as separate processes per stage, with things killed.

Judged the same way as on the embedded bus: ``lakeferry audit`` must report nothing lost,
duplicated or mismatched.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from helpers.daemon import DaemonEnv, harness, origin_events
from helpers.origin import Origin
from helpers.wait import wait_for, wait_until

events = origin_events


def test_stages_as_separate_processes_survive_a_killed_download_worker(
    kafka_env: DaemonEnv, origin: Origin
) -> None:
    env = kafka_env
    workers = {
        "ingest-1": "ingest",
        "download-1": "download",
        "download-2": "download",
        "upload-1": "upload",
        "upload-2": "upload",
        "results-1": "results",
    }
    ports = {}
    for name, stage in workers.items():
        _daemon, ports[name] = env.start_worker(stage, name)
    batch = env.submit_events(events(origin, "mp", 240, slow=0.3, flaky_every=12))

    def downloaded(name: str) -> float:
        metrics = harness.scrape(ports[name])
        return harness.metric_sum(metrics, "lakeferry_stage_messages_total", stage="download")

    # Both download workers share the partitions through the consumer group.
    wait_until(
        lambda: downloaded("download-1") > 5 and downloaded("download-2") > 5,
        timeout=60,
        what="both download workers to work",
    )
    victim = env.daemons[1]
    assert victim.stages == "download"
    victim.kill()  # SIGKILL mid-run: its in-flight downloads are redelivered to the other worker
    env.wait_settled(batch, landed=240, timeout=180, what="everything to land after the kill")
    code, counts = env.audit(batch)
    assert counts == {
        "events": 240, "landed": 240, "dead_lettered": 0, "purged": 0, "in_flight": 0,
        "lost": 0, "duplicate_rows": 0, "duplicate_event_rows": 0, "checksum_mismatches": 0,
        "missing_in_sink": 0,
        "temp_files": 0, "unrecorded_in_sink": 0,
    }  # fmt: skip
    assert code == 0
    # The surviving download worker's cache gauges tell the truth about the shared cache
    # (the upload workers emptied it), not what it counted itself.
    survivor = "download-2"  # download-1 was the victim
    wait_until(
        lambda: (
            harness.scrape(ports[survivor]).get("lakeferry_cache_files") == 0
            and harness.scrape(ports[survivor]).get("lakeferry_cache_bytes") == 0
        ),
        timeout=30,
        what="the download worker's cache gauges to read the emptied cache",
    )
    for daemon in env.daemons:
        if daemon.alive():
            assert daemon.terminate() == 0


def test_broker_outage_is_reported_and_survived(
    kafka_env: DaemonEnv, origin: Origin, kafka_broker: Any
) -> None:
    env = kafka_env
    daemon = env.start()
    first = env.submit_events(events(origin, "out-a", 60))
    wait_for(
        lambda: env.audit(first)[1],
        lambda counts: counts["landed"] >= 20,
        timeout=60,
        what="some files to land",
    )
    kafka_broker.stop()
    try:
        started = time.monotonic()
        wait_until(
            lambda: env.metric("lakeferry_bus_up") == 0,
            timeout=30,
            what="the outage to be reported",
        )
        # The outage under test: ~20 s without a broker, which the daemon must sit out.
        time.sleep(max(0.0, 20 - (time.monotonic() - started)))
        assert daemon.alive()
        assert env.metric("lakeferry_bus_outages_total") >= 1
        assert any(e.get("msg") == "kafka unreachable" for e in daemon.logs())
    finally:
        kafka_broker.start()
    wait_until(
        lambda: env.metric("lakeferry_bus_up") == 1, timeout=60, what="the recovery to be reported"
    )
    second = env.submit_events(events(origin, "out-b", 30))
    env.wait_settled(
        first, second, landed=90, timeout=120, what="everything to land after the outage"
    )
    code, counts = env.audit(first, second)
    assert (code, counts["landed"], counts["lost"], counts["duplicate_rows"]) == (0, 90, 0, 0)
    assert any(e.get("msg") == "kafka reachable again" for e in daemon.logs())
    assert daemon.terminate() == 0


def test_topics_ensure_reports_and_the_daemon_refuses_missing_topics(kafka_env: DaemonEnv) -> None:
    env = kafka_env
    again = env.cli("topics", "ensure")
    assert again.returncode == 0
    assert "created" not in again.stdout
    assert again.stdout.count("ok ") == 10
    env.data["topics"]["results"] = env.data["topics"]["results"] + ".nope"
    env.write()
    daemon = harness.DaemonProcess(env.config, env.root / "refused.log")
    daemon.start(wait_ready=0)
    assert daemon.wait(60) == 2
    assert "missing on the bus" in daemon.tail()
    assert ".nope" in daemon.tail()
    listing = env.cli("topics", "list")
    assert "missing" in listing.stdout


def test_a_restarted_worker_takes_its_partitions_back_at_once(
    kafka_env: DaemonEnv, origin: Origin
) -> None:
    """Found: after kill -9 and a restart, a worker did nothing for ~40 s: the group waited
    for the dead member's session to expire (librdkafka's 45 s default). A restarted worker
    rejoins under its static membership (its --instance) and works again at once, with the
    partitions it had; the other worker of its group is not disturbed (cooperative-sticky: no
    partition of it is revoked). The session timeout here is 60 s: a worker that waited for it
    could not pass."""
    import copy

    env = kafka_env
    env.data["bus"]["kafka"]["consumer"]["session.timeout.ms"] = 60_000
    env.write()
    for name in ("ingest-1", "upload-1", "results-1"):
        env.start_worker(name.split("-")[0], name)
    data = copy.deepcopy(env.data)
    data["metrics"]["listen"] = "127.0.0.1:0"
    data["live"]["listen"] = ""
    data["console"]["listen"] = ""
    config = harness.write_config(env.root / "download-1.toml", data)

    def download_worker() -> Any:
        daemon = harness.DaemonProcess(
            config, env.root / "download-1.log", stages="download", instance="download-1"
        )
        env.daemons.append(daemon)
        return daemon

    def moves(daemon: Any, what: str) -> list[dict[str, Any]]:
        """The download group's (not the backfill lane's: it has its own group)."""
        return [
            e for e in daemon.logs()
            if e.get("msg") == f"partitions {what}" and e.get("stage") == "download"
        ]  # fmt: skip

    def assigned(daemon: Any) -> list[str]:
        return sorted(p for e in moves(daemon, "assigned") for p in e["partitions"])

    worker = download_worker().start()
    first = env.submit_events(events(origin, "before", 20))
    env.wait_settled(first, landed=20, timeout=90, what="the first batch to land")
    other, _ = env.start_worker("download", "download-2")
    wait_until(
        lambda: assigned(other) and moves(worker, "revoked"),
        timeout=60,
        what="download-1 to hand partitions to download-2",
    )
    had = sorted(set(assigned(worker)) - {p for e in moves(worker, "revoked")
                 for p in e["partitions"]})  # fmt: skip
    others = len(other.logs())
    worker.kill()
    started = time.monotonic()
    worker = download_worker().start()
    wait_until(lambda: assigned(worker), timeout=50, what="the restarted worker's partitions")
    working_again = time.monotonic() - started
    print(f"restarted download worker had its partitions again after {working_again:.1f}s")
    second = env.submit_events(events(origin, "after", 20))
    env.wait_settled(first, second, landed=40, timeout=90, what="the second batch to land")
    # It came back with the partitions it had; the other worker saw no rebalance at all.
    assert assigned(worker) == had
    since = other.logs()[others:]
    assert [
        e for e in since
        if e.get("msg") in ("partitions revoked", "partitions assigned")
        and e.get("stage") == "download"
    ] == []  # fmt: skip
    code, counts = env.audit(first, second)
    assert (counts["landed"], counts["lost"], counts["duplicate_rows"]) == (40, 0, 0)
    assert code == 0


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]


def test_a_results_writer_frozen_mid_commit_is_overtaken_and_its_commit_refused(
    kafka_env: DaemonEnv, origin: Origin
) -> None:
    """A results process frozen (SIGSTOP) after its checks and right before its Delta commit,
    for longer than the session timeout: the other member takes its partitions and records
    them; on SIGCONT the frozen commit is refused (another commit stored the same application
    ids), and no row is written twice. Its Parquet file stays behind, untracked, for the
    vacuum (tests/test_plugin_delta_maintenance.py)."""
    import os
    import signal

    from deltalake import DeltaTable

    env = kafka_env
    for name in ("ingest-1", "download-1", "upload-1"):
        env.start_worker(name.split("-")[0], name)
    frozen, _ = env.start_worker(
        "results", "results-1", env={"LAKEFERRY_FAILPOINTS": "delta.inventory.commit=stop@2"}
    )
    env.start_worker("results", "results-2")
    batch = env.submit_events(events(origin, "frz", 200))
    wait_until(
        lambda: process_state(frozen.pid) == "T", timeout=90, what="results-1 to freeze mid-commit"
    )
    # Frozen past the session timeout (6 s here): results-2 records everything meanwhile.
    env.wait_settled(batch, landed=200, timeout=120, what="results-2 to land everything")
    os.kill(frozen.pid, signal.SIGCONT)
    refused = frozen.wait_for_log("batch write failed; retrying", timeout=60)
    assert "concurrent" in json.dumps(refused).lower()
    code, counts = env.audit(batch)
    assert (counts["landed"], counts["lost"], counts["duplicate_rows"]) == (200, 0, 0)
    assert code == 0
    inventory = Path(env.data["inventory"]["inventory_uri"])
    named = {
        Path(uri.removeprefix("file://")).name for uri in DeltaTable(str(inventory)).file_uris()
    }
    written = {p.name for p in inventory.glob("*.parquet")}
    assert written - named  # the refused commit's file: untracked, for the vacuum
    assert frozen.alive()
    assert frozen.terminate() == 0
