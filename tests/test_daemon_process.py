"""The daemon as a real process: kill -9, SIGTERM drain, SIGHUP reload. Nothing lost or doubled.

Each test runs ``lakeferry run`` as a subprocess on the embedded bus against the real test
origin, sends it real signals and judges it with ``lakeferry audit`` and its /metrics.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from helpers.daemon import DaemonEnv, origin_events
from helpers.origin import Origin
from helpers.wait import wait_for, wait_until

events = origin_events


def landed(env: DaemonEnv) -> float:
    return env.metric("lakeferry_stage_messages_total", stage="results")


def test_sigkill_mid_run_loses_and_duplicates_nothing(
    daemon_env: DaemonEnv, origin: Origin
) -> None:
    env = daemon_env
    daemon = env.start()
    first = env.submit_events(events(origin, "k9a", 300, flaky_every=10))
    wait_until(lambda: landed(env) >= 40, timeout=60, what="some files to land")
    daemon.kill()  # SIGKILL mid-run: work in every stage is in flight
    second = env.submit_events(events(origin, "k9b", 100))  # queued while the daemon is down
    daemon = env.start()
    wait_until(lambda: landed(env) >= 20, timeout=60, what="progress after the first restart")
    daemon.kill()
    daemon = env.start()

    def settled() -> bool:
        _code, counts = env.audit(first, second)
        return counts["in_flight"] == 0 and counts["landed"] == 400

    wait_until(settled, timeout=120, what="all 400 events to land", interval=1)
    code, counts = env.audit(first, second)
    assert counts == {
        "events": 400, "landed": 400, "dead_lettered": 0, "purged": 0, "in_flight": 0, "lost": 0,
        "duplicate_rows": 0, "duplicate_event_rows": 0, "checksum_mismatches": 0,
        "missing_in_sink": 0, "temp_files": 0,
        "unrecorded_in_sink": 0,
    }  # fmt: skip
    assert code == 0
    assert daemon.terminate() == 0


def test_sigterm_drains_in_flight_work_and_exits_zero(
    daemon_env: DaemonEnv, origin: Origin
) -> None:
    env = daemon_env
    daemon = env.start()
    batch = env.submit_events(events(origin, "term", 20, slow=1.5))
    wait_until(
        lambda: env.metric("lakeferry_stage_in_flight", stage="download") >= 5,
        timeout=30,
        what="downloads in flight",
    )
    in_flight = env.metric("lakeferry_stage_in_flight", stage="download")
    started = time.monotonic()
    assert daemon.terminate(timeout=30) == 0
    assert time.monotonic() - started < 10  # well within the 10 s grace
    messages = [entry.get("msg") for entry in daemon.logs()]
    assert "stop signal: draining" in messages
    assert messages[-1] == "stopped"
    errors = [e for e in daemon.logs() if e.get("level") in ("error", "critical")]
    assert errors == []
    # The downloads that were in flight finished instead of being abandoned: each was fetched once.
    fetched = sum(origin.count(f"/slow/term-{i}.bin") for i in range(20))
    assert fetched >= in_flight
    env.start()
    wait_for(
        lambda: env.audit(batch)[1],
        lambda counts: counts["landed"] == 20,
        timeout=60,
        what="the rest to land after restart",
        interval=1,
    )
    code, counts = env.audit(batch)
    assert (code, counts["lost"], counts["duplicate_rows"]) == (0, 0, 0)
    # Nothing that finished before the drain was fetched again after the restart.
    assert sum(origin.count(f"/slow/term-{i}.bin") for i in range(20)) == 20


def test_sighup_reloads_live_and_refuses_a_broken_config(
    daemon_env: DaemonEnv, origin: Origin
) -> None:
    env = daemon_env
    daemon = env.start()
    assert env.metric("lakeferry_stage_capacity", stage="download") == 50
    env.data["download"]["concurrency"] = 7
    env.data["upload"]["concurrency"] = 3
    env.data["retry"]["delays"] = ["1s", "2s", "3s", "4s"]
    env.data["daemon"]["log_level"] = "debug"
    env.data["cache"]["quota"] = "1GiB"
    env.data["downloaders"]["http"]["max_size"] = "4KiB"  # plugin settings apply live too
    env.data["bus"]["partitions"] = 8  # needs a restart: reported, not applied
    env.write()
    daemon.signal(signal.SIGHUP)
    reloaded = daemon.wait_for_log("reloaded")
    assert reloaded["applied"] == [
        "cache.quota", "daemon.log_level", "download.concurrency",
        "downloaders.http.max_size", "retry.delays", "upload.concurrency",
    ]  # fmt: skip
    assert reloaded["needs_restart"] == ["bus.partitions"]
    assert env.metric("lakeferry_stage_capacity", stage="download") == 7
    assert env.metric("lakeferry_stage_capacity", stage="upload") == 3
    assert env.metric("lakeferry_config_restart_pending") == 1
    wait_until(
        lambda: env.metric("lakeferry_cache_quota_bytes") == 2**30, timeout=5, what="the new quota"
    )
    # The new http settings govern the next download: 5000 bytes is now too large.
    big = env.submit_events([{"id": "hup-big", "url": origin.file_url("hup-big.bin", 5000)}])
    wait_for(
        lambda: env.audit(big)[1],
        lambda counts: counts["dead_lettered"] == 1,
        timeout=30,
        what="the too-large file",
    )
    assert "too_large" in env.cli("dlq", "list").stdout
    # ...and debug lines now appear in the log.
    assert any(e.get("level") == "debug" for e in daemon.logs())

    good = env.config.read_text()
    env.write(good.replace("concurrency = 7", "concurrency = -2"))
    daemon.signal(signal.SIGHUP)
    refused = daemon.wait_for_log("reload refused; keeping the running configuration")
    assert "download.concurrency" in refused["error"]
    assert daemon.alive()
    assert env.metric("lakeferry_stage_capacity", stage="download") == 7
    assert env.metric("lakeferry_reloads_total", result="refused") == 1
    assert env.metric("lakeferry_reloads_total", result="applied") == 1
    # A file a restart would refuse is refused by a reload too, with the same key
    # (check-config: tests/test_check_config.py), also for a setting that needs a restart.
    env.write(good.replace('path_template = "{event.id}/{filename}"', 'path_template = "{x}"'))
    daemon.signal(signal.SIGHUP)
    refused = daemon.wait_for_log("reload refused; keeping the running configuration", count=2)
    assert refused["error"].startswith("sink.path_template:")
    assert env.metric("lakeferry_reloads_total", result="refused") == 2

    # Pending a restart means "differs from what runs": reverting bus.partitions clears it.
    env.write(good.replace("partitions = 8", "partitions = 4"))
    daemon.signal(signal.SIGHUP)
    reverted = daemon.wait_for_log("reloaded", count=2)
    assert (reverted["applied"], reverted["needs_restart"]) == ([], [])
    assert env.metric("lakeferry_config_restart_pending") == 0

    # Still working after the refused reload, at the new concurrency (and the 4 KiB limit).
    env.write(good)
    small = [{"id": f"hup-{i}", "url": origin.file_url(f"h{i}.bin", 1000 + i)} for i in range(30)]
    batch = env.submit_events(small)
    wait_for(
        lambda: env.audit(batch)[1],
        lambda counts: counts["landed"] == 30,
        timeout=60,
        what="files to land after reloads",
        interval=1,
    )
    assert daemon.terminate() == 0


def test_embedded_bus_refuses_a_stage_subset(daemon_env: DaemonEnv) -> None:
    result = daemon_env.cli("run", "--stages", "download")
    assert result.returncode == 2
    assert "embedded bus runs every stage in one process" in result.stderr


def test_submit_urls_and_dlq_tools(daemon_env: DaemonEnv, origin: Origin, tmp_path: Path) -> None:
    env = daemon_env
    daemon = env.start()
    ok_url = origin.file_url("cli-ok.bin", 5000)
    out = env.cli("submit", ok_url, f"{origin.url}/missing/cli-gone.bin", "--quiet")
    assert out.returncode == 0, out.stderr
    ids = out.stdout.split()
    assert len(ids) == 2
    wait_until(
        lambda: "not_found" in env.cli("dlq", "list").stdout,
        timeout=30,
        what="the 404 to be dead-lettered",
    )
    letters = env.letters()
    assert [(x["event_id"], x["reason"], x["stage"]) for x in letters] == [
        (ids[1], "not_found", "download")
    ]
    assert "cli-gone" in letters[0]["url"]
    assert env.cli("dlq", "list", "--reason", "timeout").stdout.strip().endswith("0 letter(s)")
    # Replay returns it to downloads.pending; it fails again and comes back with a fresh history.
    replay = env.cli("dlq", "replay", "--reason", "not_found", "--yes")
    assert replay.returncode == 0, replay.stderr
    assert "replayed 1" in replay.stdout
    wait_until(
        lambda: env.metric("lakeferry_dlq_total", reason="not_found") >= 2,
        timeout=30,
        what="the replay to fail again",
    )
    shown = env.shown(ids[1])
    assert shown["letter"]["task"]["replays"] == 1
    assert shown["letter"]["task"]["attempt"] == 1
    purge = env.cli("dlq", "purge", "--url", "cli-gone", "--yes")
    assert "purged 1" in purge.stdout
    assert env.cli("dlq", "list").stdout.strip().endswith("0 letter(s)")
    assert daemon.terminate() == 0


def test_systemd_notify_protocol(daemon_env: DaemonEnv, tmp_path: Path) -> None:
    """READY=1 after start, RELOADING=1 then READY=1 around SIGHUP, WATCHDOG=1, STOPPING=1."""
    import socket

    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(10)
        daemon = daemon_env.start(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"})

        def receive_until(word: str) -> list[str]:
            seen: list[str] = []
            while True:
                message = sock.recv(4096).decode()
                seen.append(message)
                if word in message.splitlines():
                    return seen

        first = receive_until("READY=1")
        assert any("READY=1" in m for m in first)
        assert "WATCHDOG=1" in "\n".join(receive_until("WATCHDOG=1"))
        daemon.signal(signal.SIGHUP)
        around_reload = receive_until("READY=1")
        reloading = [m for m in around_reload if "RELOADING=1" in m]
        assert reloading, around_reload
        assert "MONOTONIC_USEC=" in reloading[0]
        daemon.signal(signal.SIGTERM)
        assert any("STOPPING=1" in m for m in receive_until("STOPPING=1"))
        assert daemon.wait(30) == 0


def test_spool_folder_events_land_and_bad_lines_are_dead_lettered(
    daemon_env: DaemonEnv, origin: Origin
) -> None:
    import json

    env = daemon_env
    env.start()
    spool = env.state / "spool"
    lines = [json.dumps(e) for e in events(origin, "spool", 12)]
    lines.insert(5, '{"id": "spool-bad", "url": 7}')
    lines.insert(9, "not json at all")
    staging = env.root / "drop.tmp"
    staging.write_text("\n".join(lines) + "\n")
    staging.rename(spool / "batch-001.jsonl")  # writers write elsewhere, then rename in
    moved = spool / "done" / "batch-001.jsonl"
    wait_until(moved.exists, timeout=30, what="the file to be moved aside")
    wait_for(
        lambda: env.audit()[1],
        lambda counts: counts["landed"] == 12,
        timeout=60,
        what="spooled events to land",
        interval=0.5,
    )
    code, counts = env.audit()
    assert code == 0
    assert (counts["dead_lettered"], counts["lost"], counts["duplicate_rows"]) == (2, 0, 0)
    letters = env.letters()
    assert sorted(x["reason"] for x in letters) == ["malformed", "malformed"]
    assert any(x["key"] == "spool-bad" for x in letters)
    assert all(x["source"].startswith("spool:") for x in letters)


def test_a_full_cache_makes_downloads_wait_not_fail(daemon_env: DaemonEnv, origin: Origin) -> None:
    env = daemon_env
    # Room for about three files at a time; 24 files of ~100 KB must all pass through it.
    env.data["cache"]["quota"] = "320KB"
    env.data["cache"]["unknown_size_estimate"] = "100KB"
    env.write()
    env.start()
    batch = [
        {"id": f"quota-{i}", "url": origin.file_url(f"q-{i}.bin", 100_000, route="slow", delay=0.2)}
        for i in range(24)
    ]
    submitted = env.submit_events(batch)
    peak = 0.0

    def all_landed() -> bool:
        nonlocal peak
        peak = max(peak, env.metric("lakeferry_cache_bytes"))
        return env.audit(submitted)[1]["landed"] == 24

    wait_until(
        all_landed, timeout=90, what="all files to pass through the small cache", interval=0.3
    )
    code, counts = env.audit(submitted)
    assert (code, counts["dead_lettered"], counts["lost"]) == (0, 0, 0)
    assert env.metric("lakeferry_dlq_total") == 0
    assert peak <= 320_000


def test_sas_tokens_never_leak(daemon_env: DaemonEnv, origin: Origin) -> None:
    """Query strings (SAS tokens, signatures) stay out of logs, metrics, DLQ listings, tables."""
    env = daemon_env
    daemon = env.start()
    secret = "sig=TOPSECRETSIGNATURE0123456789"
    good = origin.file_url("sas-good.bin", 3000) + f"&sv=2024-01-01&{secret}"
    gone = f"{origin.url}/missing/sas-gone.bin?sv=2024-01-01&{secret}"
    batch = env.submit_events([{"id": "sas-good", "url": good}, {"id": "sas-gone", "url": gone}])
    wait_for(
        lambda: env.audit(batch)[1],
        lambda counts: counts["in_flight"] == 0,
        timeout=30,
        what="both events to finish",
    )
    outputs = {
        "daemon log": env.log.read_text(),
        "metrics": str(env.metrics()),
        "dlq list": env.cli("dlq", "list").stdout,
        "dlq list --json": env.cli("dlq", "list", "--json").stdout,
        "dlq show": env.cli("dlq", "show").stdout,
        "audit": env.cli("audit").stdout,
    }
    assert "sas-gone" in outputs["dlq show"]
    import deltalake

    from lakeferry_delta.schema import EVENTS_LAYOUT, INVENTORY_LAYOUT, read_columns

    for table, layout in (("inventory", INVENTORY_LAYOUT), ("events", EVENTS_LAYOUT)):
        delta = deltalake.DeltaTable(str(env.state / table))
        rows = read_columns(delta, layout.schema.names).to_pylist()
        assert rows, table
        outputs[f"{table} table"] = str(rows)
    leaks = [name for name, text in outputs.items() if "TOPSECRET" in text]
    assert leaks == []
    assert daemon.terminate() == 0


def test_sighup_lowers_concurrency_without_dropping_in_flight_work(
    daemon_env: DaemonEnv, origin: Origin
) -> None:
    env = daemon_env
    # The origin may have every slot at once (it would reach them by slow start, in rounds of
    # these 1-second downloads: the 60 would be done before 40 ran together).
    env.data["download"]["host_initial"] = 50
    env.write()
    daemon = env.start()
    batch = env.submit_events(events(origin, "shrink", 60, slow=1.0))
    wait_until(
        lambda: env.metric("lakeferry_stage_in_flight", stage="download") >= 40,
        timeout=30,
        what="40 downloads in flight",
    )
    env.data["download"]["concurrency"] = 5
    env.write()
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_log("reloaded")
    assert env.metric("lakeferry_stage_capacity", stage="download") == 5
    # The downloads already running finish (they are not cancelled); new ones start 5 at a time.
    peak_after = 0.0

    def done() -> bool:
        nonlocal peak_after
        in_flight = env.metric("lakeferry_stage_in_flight", stage="download")
        if env.metric("lakeferry_stage_messages_total", stage="download") >= 50:
            peak_after = max(peak_after, in_flight)
        return env.audit(batch)[1]["landed"] == 60

    wait_until(done, timeout=90, what="all 60 to land", interval=0.3)
    assert peak_after <= 5
    assert sum(origin.count(f"/slow/shrink-{i}.bin") for i in range(60)) == 60  # none refetched
    code, counts = env.audit(batch)
    assert (code, counts["lost"], counts["duplicate_rows"]) == (0, 0, 0)
    assert daemon.terminate() == 0
