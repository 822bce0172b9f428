"""``make bench`` works wherever the clone is, and a peer that fails is a finding, not a crash.

Found: from a clone in a folder nginx's worker user cannot enter (``mktemp -d``, a home folder),
nginx answered 403, aria2c exited 22 and ``bench.py`` stopped with ``RuntimeError: aria2c exited
22``. The origin's worker now runs as the user running the benchmark, the origin is probed
before any tool runs, and a failed tool becomes a row of the report that says why.
"""

from __future__ import annotations

import importlib.util
import sys
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

# Every test here runs nginx (the benchmark's origin) or the benchmark's tools.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lakeferry_bench", ROOT / "bench" / "bench.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["lakeferry_bench"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def origin(bench: ModuleType, tmp_path: Path) -> Iterator[tuple[Any, bytes]]:
    """nginx serving ``a.bin`` from a folder only its owner may enter (mode 0700)."""
    private = tmp_path / "home"
    (private / "www").mkdir(parents=True)
    private.chmod(0o700)
    body = b"lakeferry" * 1000
    (private / "www" / "a.bin").write_bytes(body)
    nginx = bench.Nginx(private / "www", private / "nginx", probe="a.bin")
    yield nginx, body
    nginx.stop()


def test_the_origin_serves_a_clone_in_a_private_folder(origin: tuple[Any, bytes]) -> None:
    nginx, body = origin
    with urllib.request.urlopen(nginx.url("a.bin"), timeout=30) as response:
        assert response.status == 200
        assert response.read() == body


def test_an_origin_that_cannot_serve_says_why_before_any_tool_runs(
    bench: ModuleType, tmp_path: Path
) -> None:
    (tmp_path / "www").mkdir()
    with pytest.raises(RuntimeError, match=r"the origin cannot serve missing\.bin: .*404"):
        bench.Nginx(tmp_path / "www", tmp_path / "nginx", probe="missing.bin")


def test_a_failing_peer_is_a_row_of_the_report(
    bench: ModuleType, origin: tuple[Any, bytes], tmp_path: Path
) -> None:
    nginx, _ = origin
    refused = [(nginx.url("unavailable/0.bin"), 9000)]  # nginx answers 503 there
    aria = bench.attempt(
        "small", "aria2c -j 50", partial(bench.run_aria2c, "small", refused, tmp_path / "aria2c")
    )
    assert aria.error.startswith("aria2c exited "), aria.error
    curl = bench.attempt(
        "large", "curl (one at a time)", partial(bench.run_curl, "large", refused, tmp_path / "c")
    )
    assert curl.error == "curl exited 22", curl.error  # curl -f: an HTTP error status

    ours = bench.Result("small", "lakeferry (kafka)", 1000, 2.0, 64_000_000, cpu_seconds=3.0)
    report = "\n".join(bench.report_lines([aria, ours, curl], bench.QUICK, True))
    assert f"| aria2c -j 50 | failed: {aria.error} |" in report
    assert "| curl (one at a time) | failed: curl exited 22 |" in report
    assert "| lakeferry (kafka) | 1,000 | 500.0 |" in report  # the other rows are intact
    assert "## Failed runs" in report
    assert "÷ aria2c" not in report  # no ratio against a run that failed


def test_the_soak_report_shows_each_process_curve_and_the_memory_target(
    bench: ModuleType,
) -> None:
    """Growth is taken after warm-up (the first fifth): a process that fills up at start and
    then stays flat meets the target; one that keeps growing does not."""
    memory: list[dict[str, Any]] = [
        {"t": t, "anon": {"results": 40 + t / 10 if t < 60 else 60.0, "ingest": 50 + t / 10},
         "file": {"results": 120.0, "ingest": 110.0}}
        for t in range(0, 300, 5)
    ]  # fmt: skip
    soak = bench.Result("soak", "lakeferry (kafka)", 1000, 300.0, 0, [0.1, 0.2], memory=memory)
    report = "\n".join(bench.report_lines([soak], bench.QUICK, True))
    assert "## soak: memory over time" in report
    assert "| results | 60 | 60 | 60 | +0.0% | 120 |" in report
    assert "| ingest | 56 | 80 | 80 | +42.0% | 110 |" in report
    assert "peak 80 MiB, growth +42.0% at most | not met |" in report
    flat = bench.Result("soak", "lakeferry (kafka)", 1000, 300.0, 0, memory=[
        {"t": s["t"], "anon": {"results": s["anon"]["results"]}, "file": {"results": 1.0}}
        for s in memory
    ])  # fmt: skip
    assert "growth +0.0% at most | met |" in "\n".join(
        bench.report_lines([flat], bench.QUICK, True)
    )
