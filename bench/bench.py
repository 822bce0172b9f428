"""``make bench``: lakeferry beside the tools a user would pick instead, on one origin, one run.

Scenarios (``--quick`` scales them down to finish in about two minutes):

- ``small``: many 64 KiB files; ``medium``: 16 MiB files; ``large``: 1 GiB files (sink on the
  same disk); ``latency``: a steady offered load at half the measured small-file maximum.

Each runs on the embedded bus and on Kafka. Figures: files/s, MB/s, end-to-end latency
p50/p95/p99 (event created -> inventory row committed), CPU seconds per file, peak RSS.

Peers on the same URL lists and the same nginx origin: ``aria2c -j 50`` (small and medium, a
download-only peer), ``curl`` one large file at a time (one stream's physical limit), and a
faithful baseline of the seed's old design (poll every 60 s, 10 parallel downloads, coupled
upload) for latency. Results go to ``docs/benchmarks.md`` and ``docs/benchmarks.png``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import harness  # noqa: E402
from kafka import kafka as kafka_tool  # noqa: E402

KiB, MiB, GiB = 1024, 1024**2, 1024**3


@dataclass
class Scale:
    small: int
    medium: int
    large: int
    large_size: int
    latency_seconds: float
    old_poll: float


FULL = Scale(small=20_000, medium=500, large=4, large_size=GiB, latency_seconds=60, old_poll=60)
QUICK = Scale(small=1_500, medium=12, large=1, large_size=256 * MiB, latency_seconds=12, old_poll=6)


@dataclass
class Result:
    scenario: str
    tool: str
    files: int
    seconds: float
    bytes: int
    latencies: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0
    peak_rss_mib: float = 0.0

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds else 0.0

    def pct(self, q: int) -> float | None:
        if len(self.latencies) < 2:
            return self.latencies[0] if self.latencies else None
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1]


# -- the origin --------------------------------------------------------------------------------


def make_files(www: Path, scale: Scale) -> dict[str, list[tuple[str, int]]]:
    """Files on disk for nginx: ``{scenario: [(name, size)]}`` (content: os.urandom once per
    size, so generation is fast and files differ by a header)."""
    www.mkdir(parents=True, exist_ok=True)
    plan = {
        "small": [(f"small/{i:06d}.bin", 64 * KiB) for i in range(scale.small)],
        "medium": [(f"medium/{i:04d}.bin", 16 * MiB) for i in range(scale.medium)],
        "large": [(f"large/{i}.bin", scale.large_size) for i in range(scale.large)],
    }
    for files in plan.values():
        if not files:
            continue
        (www / files[0][0]).parent.mkdir(parents=True, exist_ok=True)
        base = os.urandom(min(files[0][1], 16 * MiB))
        for name, size in files:
            path = www / name
            if path.exists() and path.stat().st_size == size:
                continue
            with path.open("wb") as fh:
                fh.write(name.encode().ljust(64, b"\0"))
                left = size - 64
                while left > 0:
                    chunk = base[: min(left, len(base))]
                    fh.write(chunk)
                    left -= len(chunk)
    return plan


class Nginx:
    def __init__(self, www: Path, workdir: Path) -> None:
        self.port = harness.free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "logs").mkdir(exist_ok=True)
        conf = workdir / "nginx.conf"
        conf.write_text(
            f"""worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on; tcp_nopush on; keepalive_requests 100000;
  server {{ listen 127.0.0.1:{self.port}; root {www}; }}
}}
"""
        )
        self.proc = subprocess.Popen(
            ["nginx", "-p", str(workdir), "-c", str(conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=1)
            except urllib.error.HTTPError:
                return  # 403/404 for the root: it answers
            except OSError:
                time.sleep(0.05)
                continue
            return
        raise RuntimeError("nginx did not start")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGQUIT)
        self.proc.wait(10)


# -- measuring processes -----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / ticks


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- lakeferry ----------------------------------------------------------------------------------


def run_lakeferry(
    scenario: str, bus: str, urls: list[tuple[str, int]], state: Path, kafka: str | None
) -> Result:
    shutil.rmtree(state, ignore_errors=True)
    data = harness.config_dict(
        state, metrics_port=harness.free_port(), kafka=kafka,
        namespace=f"bench{int(time.time() * 1000)}.", shutdown_grace="60s",
    )  # fmt: skip
    data["downloaders"]["http"]["max_size"] = "4GiB"
    data["cache"]["quota"] = "8GiB"
    data["results"]["batch_wait"] = "200ms"
    data["ingest"]["concurrency"] = 64
    data["sources"] = []
    config = harness.write_config(state / "lakeferry.toml", data)
    if kafka:
        harness.cli(config, "topics", "ensure", check=True)
    daemon = harness.DaemonProcess(config, state / "daemon.log").start()
    cpu0 = cpu_seconds(daemon.pid)
    events = state / "events.jsonl"
    events.write_text(
        "".join(
            json.dumps({"id": f"{scenario}-{i}", "url": u}) + "\n" for i, (u, _) in enumerate(urls)
        )
    )
    started = time.time()
    harness.cli(config, "submit", "--file", str(events), "--quiet", check=True, timeout=600)
    total = len(urls)
    while True:
        rows = read_inventory(state)
        if len(rows) >= total:
            break
        if not daemon.alive():
            raise RuntimeError(f"daemon died:\n{daemon.tail()}")
        time.sleep(0.5)
    cpu = cpu_seconds(daemon.pid) - cpu0
    rss = peak_rss_mib(daemon.pid)
    daemon.terminate(120)
    last = max(r["committed_at"] for r in rows).timestamp()
    latencies = [(r["committed_at"] - r["event_created_at"]).total_seconds() for r in rows]
    return Result(
        scenario, f"lakeferry ({bus})", total, last - started, sum(s for _, s in urls),
        latencies, cpu, rss,
    )  # fmt: skip


def read_inventory(state: Path) -> list[dict[str, Any]]:
    import deltalake

    from lakeferry_delta.schema import read_columns

    path = state / "inventory"
    if not (path / "_delta_log").exists():
        return []
    table = deltalake.DeltaTable(str(path))
    return read_columns(table, ["committed_at", "event_created_at"]).to_pylist()  # type: ignore[no-any-return]


# -- peers --------------------------------------------------------------------------------------


def run_aria2c(scenario: str, urls: list[tuple[str, int]], out: Path) -> Result:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    listing = out / "urls.txt"
    listing.write_text("".join(f"{u}\n  out={i}.bin\n" for i, (u, _) in enumerate(urls)))
    started = time.monotonic()
    proc = subprocess.Popen(
        ["aria2c", "-q", "-j", "50", "-x", "1", "--file-allocation=none", "--allow-overwrite=true",
         "--auto-file-renaming=false", "--check-certificate=false", "-d", str(out), "-i", str(listing)],
    )  # fmt: skip
    rss, cpu = 0.0, 0.0
    while proc.poll() is None:
        try:
            rss = max(rss, peak_rss_mib(proc.pid))
            cpu = cpu_seconds(proc.pid)
        except FileNotFoundError:
            break
        time.sleep(0.2)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"aria2c exited {proc.returncode}")
    return Result(
        scenario, "aria2c -j 50", len(urls), seconds, sum(s for _, s in urls), [], cpu, rss
    )


def run_curl(scenario: str, urls: list[tuple[str, int]], out: Path) -> Result:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.monotonic()
    for i, (url, _) in enumerate(urls):
        subprocess.run(["curl", "-sSf", "-o", str(out / f"{i}.bin"), url], check=True)
    seconds = time.monotonic() - started
    return Result(scenario, "curl (one at a time)", len(urls), seconds, sum(s for _, s in urls))


def run_old_design(
    urls: list[tuple[str, int]], rate: float, seconds: float, poll: float, out: Path
) -> Result:
    """The seed's old architecture: events accumulate in a table; every ``poll`` seconds a batch
    query takes them and 10 parallel workers download and upload (copy) each, then record it."""
    import httpx

    shutil.rmtree(out, ignore_errors=True)
    (out / "cache").mkdir(parents=True)
    (out / "sink").mkdir()
    table: list[tuple[int, float]] = []
    lock = threading.Lock()
    stop = threading.Event()
    latencies: list[float] = []
    n = min(len(urls), int(rate * seconds))

    def producer() -> None:
        for i in range(n):
            with lock:
                table.append((i, time.time()))
            time.sleep(1 / rate)

    def process(item: tuple[int, float], client: httpx.Client) -> None:
        i, created = item
        url, _ = urls[i]
        cached = out / "cache" / f"{i}.bin"
        digest = hashlib.sha256()
        with client.stream("GET", url) as resp, cached.open("wb") as fh:
            for chunk in resp.iter_bytes(1024 * 1024):
                digest.update(chunk)
                fh.write(chunk)
        shutil.copyfile(cached, out / "sink" / f"{i}.bin")
        cached.unlink()
        latencies.append(time.time() - created)

    thread = threading.Thread(target=producer, daemon=True)
    started = time.monotonic()
    thread.start()
    done = 0
    with httpx.Client(limits=httpx.Limits(max_connections=10)) as client:
        while done < n and not stop.is_set():
            time.sleep(poll)
            with lock:
                batch, table[:] = list(table), []
            with concurrent.futures.ThreadPoolExecutor(10) as pool:
                list(pool.map(lambda item: process(item, client), batch))
            done += len(batch)
    return Result(
        "latency",
        f"old design (poll {poll:g}s, 10 parallel)",
        done,
        time.monotonic() - started,
        0,
        latencies,
    )


def run_latency(
    bus: str,
    urls: list[tuple[str, int]],
    rate: float,
    seconds: float,
    state: Path,
    kafka: str | None,
) -> Result:
    """A steady offered load: ``rate`` events/s for ``seconds``, submitted as they are created."""
    shutil.rmtree(state, ignore_errors=True)
    data = harness.config_dict(
        state,
        metrics_port=harness.free_port(),
        kafka=kafka,
        namespace=f"lat{int(time.time() * 1000)}.",
    )
    data["sources"] = []
    data["results"]["batch_wait"] = "100ms"
    config = harness.write_config(state / "lakeferry.toml", data)
    if kafka:
        harness.cli(config, "topics", "ensure", check=True)
    daemon = harness.DaemonProcess(config, state / "daemon.log").start()
    n = min(len(urls), int(rate * seconds))
    spool = state / "spool-in"
    spool.mkdir()
    started = time.monotonic()
    # Submit in 0.25 s slices at the offered rate (each slice's events created when submitted).
    slice_s = 0.25
    per = max(1, int(rate * slice_s))
    i = 0
    while i < n:
        chunk = urls[i : i + per]
        f = spool / f"{i}.jsonl"
        f.write_text(
            "".join(
                json.dumps({"id": f"lat-{i + k}", "url": u}) + "\n"
                for k, (u, _) in enumerate(chunk)
            )
        )
        harness.cli(config, "submit", "--file", str(f), "--quiet", check=True)
        i += len(chunk)
        time.sleep(max(0.0, started + (i / rate) - time.monotonic()))
    while len(read_inventory(state)) < n:
        time.sleep(0.5)
    rows = read_inventory(state)
    daemon.terminate(120)
    latencies = [(r["committed_at"] - r["event_created_at"]).total_seconds() for r in rows]
    return Result("latency", f"lakeferry ({bus})", n, time.monotonic() - started, 0, latencies)


# -- report -------------------------------------------------------------------------------------


def fmt(x: float | None, unit: str = "") -> str:
    return "-" if x is None else f"{x:.2f}{unit}"


def write_report(results: list[Result], scale: Scale, quick: bool, out: Path) -> None:
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `make bench{' QUICK=1' if quick else ''}` on {dt.date.today().isoformat()}: "
        f"{platform.node()}, {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}. "
        "Origin: nginx on loopback; sink: local folder on the same disk.",
        "",
        f"Scale: {scale.small} × 64 KiB, {scale.medium} × 16 MiB, {scale.large} × "
        f"{scale.large_size // MiB} MiB; latency load for {scale.latency_seconds:g} s at half the "
        f"small-file maximum; the old design polls every {scale.old_poll:g} s (60 s in the full "
        "run). Quick-mode figures are indicative only.",
        "",
    ]
    for scenario in ("small", "medium", "large", "latency"):
        rows = [r for r in results if r.scenario == scenario]
        if not rows:
            continue
        lines += [
            f"## {scenario}",
            "",
            "| tool | files | files/s | MB/s | p50 s | p95 s | p99 s | CPU s/file | peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            cpu = r.cpu_seconds / r.files if r.files and r.cpu_seconds else None
            lines.append(
                f"| {r.tool} | {r.files} | {r.files_per_s:.1f} | {r.mb_per_s:.1f} | {fmt(r.pct(50))} | "
                f"{fmt(r.pct(95))} | {fmt(r.pct(99))} | {fmt(cpu and cpu * 1000, ' ms') if cpu else '-'} | "
                f"{r.peak_rss_mib:.0f} |"
            )
        lines.append("")
    ratios = []
    by = {(r.scenario, r.tool): r for r in results}
    for scenario in ("small", "medium"):
        peer = by.get((scenario, "aria2c -j 50"))
        for bus in ("embedded", "kafka"):
            ours = by.get((scenario, f"lakeferry ({bus})"))
            if peer and ours:
                ratios.append(
                    f"- {scenario}: lakeferry ({bus}) ÷ aria2c files/s = {ours.files_per_s / peer.files_per_s:.2f}"
                )
    curl = by.get(("large", "curl (one at a time)"))
    for bus in ("embedded", "kafka"):
        ours = by.get(("large", f"lakeferry ({bus})"))
        if curl and ours:
            ratios.append(
                f"- large: lakeferry ({bus}) ÷ curl MB/s = {ours.mb_per_s / curl.mb_per_s:.2f}"
            )
    old = next((r for r in results if r.tool.startswith("old design")), None)
    for bus in ("embedded", "kafka"):
        ours = by.get(("latency", f"lakeferry ({bus})"))
        if old and ours and ours.pct(95) and old.pct(95):
            ratios.append(
                f"- latency p95: old design {old.pct(95):.1f} s vs lakeferry ({bus}) {ours.pct(95):.2f} s"
            )
    lines += ["## Ratios", "", *ratios, "", "![throughput and latency](benchmarks.png)", ""]
    out.write_text("\n".join(lines))
    (ROOT / "var" / "bench" / "results.json").write_text(
        json.dumps([asdict(r) for r in results], indent=1)
    )
    chart(results, out.with_suffix(".png"))


def chart(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    labels = [f"{r.scenario}\n{r.tool}" for r in results if r.scenario in ("small", "medium")]
    values = [r.files_per_s for r in results if r.scenario in ("small", "medium")]
    left.barh(labels, values)
    left.set_xlabel("files/s")
    left.set_title("throughput (small, medium)")
    lat = [r for r in results if r.scenario == "latency" and r.latencies]
    if lat:
        right.boxplot(
            [r.latencies for r in lat], tick_labels=[r.tool for r in lat], orientation="horizontal"
        )
        right.set_xscale("log")
        right.set_xlabel("event created -> recorded (s, log)")
        right.set_title("end-to-end latency under steady load")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--buses", default="embedded,kafka")
    parser.add_argument("--scenarios", default="small,medium,large,latency")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    scale = QUICK if args.quick else FULL
    work = ROOT / "var" / "bench"
    plan = make_files(work / "www", scale)
    nginx = Nginx(work / "www", work / "nginx")
    buses = [b for b in args.buses.split(",") if b]
    scenarios = [s for s in args.scenarios.split(",") if s]
    broker = None
    results: list[Result] = []
    try:
        if "kafka" in buses:
            kafka_tool.ensure_dist(quiet=True)
            broker = kafka_tool.start(harness.free_port(), workdir=work / "kafka")
        for scenario in ("small", "medium", "large"):
            if scenario not in scenarios:
                continue
            urls = [(nginx.url(name), size) for name, size in plan[scenario]]
            if scenario in ("small", "medium"):
                results.append(run_aria2c(scenario, urls, work / "aria2c"))
            else:
                results.append(run_curl(scenario, urls, work / "curl"))
            print(json.dumps({k: v for k, v in asdict(results[-1]).items() if k != "latencies"}))
            for bus in buses:
                results.append(
                    run_lakeferry(
                        scenario,
                        bus,
                        urls,
                        work / f"lf-{scenario}-{bus}",
                        broker.bootstrap if bus == "kafka" and broker else None,
                    )
                )
                print(
                    json.dumps({k: v for k, v in asdict(results[-1]).items() if k != "latencies"})
                )
        if "latency" in scenarios:
            small_max = max(
                (
                    r.files_per_s
                    for r in results
                    if r.scenario == "small" and r.tool.startswith("lakeferry")
                ),
                default=100.0,
            )
            rate = max(1.0, small_max / 2)
            urls = [(nginx.url(name), size) for name, size in plan["small"]]
            for bus in buses:
                results.append(
                    run_latency(
                        bus,
                        urls,
                        rate,
                        scale.latency_seconds,
                        work / f"lat-{bus}",
                        broker.bootstrap if bus == "kafka" and broker else None,
                    )
                )
            results.append(
                run_old_design(urls, rate, scale.latency_seconds, scale.old_poll, work / "old")
            )
    finally:
        nginx.stop()
        if broker is not None:
            broker.stop()
    write_report(results, scale, args.quick, Path(args.out))
    print(Path(args.out).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
