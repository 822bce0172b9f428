"""The CLI tools on a Kafka bus that does not answer or lacks topics: one line, bounded wait.

Found: ``submit -c etc/lakeferry.kafka.toml`` with the broker down hung for tens of seconds; with
the topics missing it ended with ``Unknown topic or partition``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from helpers.daemon import harness

# Every test here runs the lakeferry CLI as a process.
pytestmark = pytest.mark.slow

TOOLS = [
    ["submit", "http://127.0.0.1:9/a.bin"],
    ["dlq", "list"],
    ["dlq", "replay", "--all", "--dry-run"],
    ["audit", "--no-verify-sink"],
    ["topics", "list"],
]


def config_for(tmp_path: Path, bootstrap: str, namespace: str = "") -> Path:
    data = harness.config_dict(tmp_path / "state", kafka=bootstrap, namespace=namespace)
    data["bus"]["kafka"]["operation_timeout"] = "3s"
    return harness.write_config(tmp_path / "lakeferry.toml", data)


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    [line] = [x for x in stderr.splitlines() if x.strip()]
    return line


@pytest.mark.parametrize("tool", TOOLS, ids=lambda t: " ".join(t[:2]))
def test_a_broker_that_does_not_answer_is_named_after_a_bounded_wait(
    tmp_path: Path, tool: list[str]
) -> None:
    port = harness.free_port()  # nothing listens there
    config = config_for(tmp_path, f"127.0.0.1:{port}")
    started = time.monotonic()
    result = harness.cli(config, *tool, timeout=120)
    waited = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert one_line(result.stderr).startswith(
        f"lakeferry: bus error: kafka unreachable at 127.0.0.1:{port} ("
    )
    print(f"{' '.join(tool)}: refused after {waited:.1f}s")


def test_missing_topics_name_the_command_that_creates_them(
    tmp_path: Path, kafka_broker: Any
) -> None:
    config = config_for(tmp_path, kafka_broker.bootstrap, namespace="nowhere-yet.")
    result = harness.cli(config, "submit", "http://127.0.0.1:9/a.bin", timeout=120)
    assert result.returncode == 2, result.stderr
    assert one_line(result.stderr) == (
        f"lakeferry: bus error: topic nowhere-yet.events.raw missing on kafka at "
        f"{kafka_broker.bootstrap}; create the topics with `lakeferry topics ensure -c {config}`"
    )
