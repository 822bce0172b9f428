"""Consumer lag with Kafka's own ``kafka-consumer-groups``, as docs/operations.md shows it.

Found: operators check lag with ``kafka-consumer-groups``, but the fetched distribution lacked the
``kafka-tools`` jar. ``make kafka-dist`` now fetches it and ``tools/kafka/kafka.py
consumer-groups`` runs it; this runs the command of the runbook against a stopped pipeline with
five events waiting.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from helpers.daemon import ROOT_DIR, DaemonEnv
from helpers.wait import wait_until


def _unreachable(prefix: str, n: int) -> list[dict[str, str]]:
    # file:// without file roots: each event is dead-lettered at once (no origin needed)
    return [{"id": f"{prefix}-{i}", "url": f"file:///nowhere/{prefix}/{i}.bin"} for i in range(n)]


def test_lag_of_a_stopped_stage_shows_in_kafka_consumer_groups(
    kafka_env: DaemonEnv, kafka_broker: Any
) -> None:
    env = kafka_env
    daemon = env.start()
    env.submit_events(_unreachable("seen", 12))  # every partition gets some
    wait_until(lambda: len(env.letters()) == 12, timeout=120, what="twelve letters")
    assert daemon.terminate() == 0  # the ingest group has committed all twelve
    env.submit_events(_unreachable("waiting", 5))

    group = f"{env.data['bus']['group']}.ingest"
    described = subprocess.run(
        [sys.executable, "tools/kafka/kafka.py", "consumer-groups",
         "--bootstrap-server", kafka_broker.bootstrap, "--describe", "--group", group],
        capture_output=True, text=True, timeout=300, cwd=ROOT_DIR,
    )  # fmt: skip
    assert described.returncode == 0, described.stderr
    lines = [line.split() for line in described.stdout.splitlines() if line.strip()]
    header = next(row for row in lines if row[:2] == ["GROUP", "TOPIC"])
    rows = [dict(zip(header, row, strict=False)) for row in lines if row[0] == group]
    intake = env.data["topics"]["intake"]
    assert {row["TOPIC"] for row in rows} == {intake}, described.stdout
    assert len(rows) == 4, described.stdout  # one row per partition
    assert sum(int(row["LAG"]) for row in rows) == 5, described.stdout
    assert sum(int(row["CURRENT-OFFSET"]) for row in rows) == 12, described.stdout
