"""The reduced chaos run (``tools/chaos.py --quick``): Kafka, six worker processes, a random
worker SIGKILLed every few seconds, a broker restart, a sink 503 storm and a tiny cache quota —
and nothing lost, duplicated or corrupted at the end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def test_reduced_chaos_run_loses_nothing(tmp_path: Path, kafka_broker: Any) -> None:
    # kafka_broker: fails the run, naming what to install, where Kafka cannot run (chaos starts
    # its own broker, which it restarts mid-run).
    args = ["--quick", "--seed", "7", "--state", str(tmp_path / "chaos")]
    result = subprocess.run(
        [sys.executable, "tools/chaos.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "chaos: PASSED" in result.stdout
    assert '"lost": 0' in result.stdout
    assert "kills (SIGKILL)" in result.stdout
