"""The daemon as a process with ``[sink] kind = "onelake"``, against the DFS emulator.

A 503 storm (``Retry-After: 1``) hits the sink mid-run, started from this process through the
emulator's HTTP control endpoint: the upload stage backs off, its circuit breaker opens, and
once the storm passes every file lands exactly once with the right bytes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from helpers.daemon import DaemonEnv
from helpers.dfs import RemoteControl
from helpers.origin import Origin, sha256_of
from helpers.wait import wait_for, wait_until

ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
WORKSPACE = "My Workspace"
BASE = "Sales.Lakehouse/Files/landing"


def events(origin: Origin, prefix: str, n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        name = f"{prefix}-{i}.bin"
        size = 1024 + (i * 7919) % 90000
        out.append({"id": f"{prefix}-{i}", "url": origin.file_url(name, size), "size": size})
    return out


def landed(env: DaemonEnv) -> float:
    return env.metric("lakeferry_stage_messages_total", stage="results")


def test_a_503_storm_mid_run_lands_everything_exactly_once(
    daemon_env: DaemonEnv, origin: Origin, dfs_emulator: Any, tmp_path: Path
) -> None:
    env = daemon_env
    key_file = tmp_path / "onelake-account-key"
    key_file.write_text(ACCOUNT_KEY + "\n")
    env.data["sink"] = {
        "kind": "onelake",
        "account_url": dfs_emulator.account_url(),
        "filesystem": WORKSPACE,
        "base_path": BASE,
        "path_template": "{event.id}/{filename}",
        "credential": "account_key",
        "credential_file": str(key_file),  # absolute: the audit CLI reads it too
        "create_filesystem": True,
        "timeout": "10s",
    }
    env.data["upload"].update({"breaker_cooldown": "1s", "backoff_max": "2s"})
    env.write()
    control = RemoteControl(dfs_emulator.url)
    daemon = env.start()

    first = events(origin, "calm", 60)
    second = events(origin, "storm", 90)
    first_file = env.submit_events(first)
    wait_until(lambda: landed(env) >= 20, timeout=60, what="some files to land before the storm")
    control.storm(status=503, seconds=5, retry_after=1)
    storm_ends = time.monotonic() + 5
    second_file = env.submit_events(second)  # these meet the storm in the upload stage
    wait_until(
        lambda: env.metric("lakeferry_upload_breaker_open") == 1,
        timeout=storm_ends - time.monotonic(),
        what="the circuit breaker to open during the storm",
    )
    # The audits below read the sink too, so they wait for the storm to end.
    wait_for(
        dfs_emulator.faults.state,
        lambda faults: faults["storm"] is None,
        timeout=storm_ends - time.monotonic() + 10,
        what="the storm to end",
    )
    faults = control.stats()["faults"]
    assert faults.get("status_503", 0) >= 5

    def settled() -> bool:
        _code, counts = env.audit(first_file, second_file)
        return counts["in_flight"] == 0 and counts["landed"] == 150

    wait_until(settled, timeout=120, what="all 150 events to land after the storm", interval=1)
    code, counts = env.audit(first_file, second_file)
    assert counts == {
        "events": 150, "landed": 150, "dead_lettered": 0, "purged": 0, "in_flight": 0, "lost": 0,
        "duplicate_rows": 0, "duplicate_event_rows": 0, "checksum_mismatches": 0,
        "missing_in_sink": 0, "temp_files": 0,
        "unrecorded_in_sink": 0,
    }  # fmt: skip
    assert code == 0
    assert env.metric("lakeferry_upload_breaker_open") == 0

    files = dfs_emulator.files(WORKSPACE)
    expected = {
        f"{BASE}/{e['id']}/{e['id']}.bin": (e["size"], sha256_of(f"{e['id']}.bin", e["size"]))
        for e in first + second
    }
    leftovers = [p for p in files if ".lakeferry-tmp-" in p]
    assert leftovers == []
    assert {p: (f["size"], f["sha256"]) for p, f in files.items()} == expected

    # What the person on call reads: the failure with its text, once per kind and 10 s (not
    # once per upload slot and backoff), the breaker opening with the last error, and closing.
    logs = daemon.logs()
    failed = [e for e in logs if e.get("msg") == "upload failed, retrying in place"]
    warned = [e for e in failed if e["level"] == "warning"]
    assert warned
    assert "503" in warned[0]["error"]
    assert len(warned) < len(failed) or len(failed) == 1
    opened = [e for e in logs if e.get("msg", "").startswith("sink circuit breaker open")]
    closed = [e for e in logs if e.get("msg", "").startswith("sink circuit breaker closed")]
    assert opened
    assert closed
    assert opened[0]["level"] == "warning"
    assert "503" in opened[0]["last_error"]
    assert all(f["metadata"]["lakeferry_sha256"] == f["sha256"] for f in files.values())
    assert daemon.terminate() == 0
