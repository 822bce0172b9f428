"""``make bench``: lakeferry beside the tools a user would pick instead, on one origin, one run.

Scenarios (``--quick`` scales them down to finish in about three minutes once set up):

- ``small``: many 64 KiB files; ``medium``: 16 MiB files; ``large``: 1 GiB files (sink on the
  same disk); ``latency``: a steady offered load at half the measured small-file maximum.
- ``azure``: the production path on the emulators (``make demo AZURE=1``'s): the Event Hubs
  emulator as the source, the ``onelake`` sink on the DFS emulator, the Delta inventory on
  Azurite, one daemon on the embedded bus; a burst of small files, then a steady load at half
  the burst's rate. Each emulator runs as its own process, its CPU reported apart from
  lakeferry's.
- ``mixed``: the small files beside as many events for a second origin (``tools/origin.py``)
  that hangs every request, or answers 503 to every one: the healthy origin's files/s against
  its ``small`` figure (per-origin limits, issue 16).
- ``throttle``: files from an origin that serves 8 requests at once and answers 429 beyond:
  lakeferry's concurrency towards it (sampled at the origin) and the 429s it draws.
- ``backfill``: the latency load alone, then 50,000 events (1,000 in a quick run) queued on
  the backfill lane (``submit --lane backfill``) and the latency load again: the live files'
  p95 in each phase, and how many backfill files landed meanwhile (lanes, issue 16).
- ``soak``: the latency load for ``--soak-minutes`` (30 in a full run; not in a quick run's
  defaults, 2 when asked for with ``--quick``) with Delta maintenance on and due often
  (compaction, checkpoints, vacuum), sampling each process's anonymous and file-backed memory
  every few seconds: the curve, start/end/peak and how flat it is go in the report. The sink's
  files are deleted as they land (a 30-minute soak would otherwise fill the disk).

Each runs on the embedded bus and on Kafka. Figures: files/s, MB/s, end-to-end latency
p50/p95/p99 (event created -> inventory row committed), CPU seconds per file, peak RSS.

Peers on the same URL lists and the same nginx origin: ``aria2c -j 50`` (small and medium, a
download-only peer), ``curl`` one large file at a time (one stream's physical limit), and a
faithful baseline of the seed's old design (poll every 60 s, 10 parallel downloads, coupled
upload) for latency. Results go to ``docs/benchmarks.md`` and ``docs/benchmarks.png`` (a quick
run's to ``var/bench/benchmarks-quick.md`` and its ``.png``).
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
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import harness  # noqa: E402
import origin as origin_tool  # noqa: E402
from kafka import kafka as kafka_tool  # noqa: E402

from lakeferry.units import Duration  # noqa: E402

KiB, MiB, GiB = 1024, 1024**2, 1024**3


@dataclass
class Scale:
    small: int
    medium: int
    large: int
    large_size: int
    latency_seconds: float
    old_poll: float
    retry_events: int
    retry_ladder: tuple[str, ...]
    azure: int = 0
    """Small files in the Azure scenario's burst (its steady load runs ``latency_seconds``)."""
    soak_seconds: float = 1800.0
    throttle: int = 2000
    """Files from the throttling origin."""
    backfill: int = 50_000
    """Backfill events queued before the live load's second phase (the ``backfill`` scenario)."""


FULL = Scale(
    small=20_000, medium=500, large=4, large_size=GiB, latency_seconds=60, old_poll=60,
    retry_events=500, retry_ladder=("1s", "2s", "4s", "8s"), azure=3_000,
    soak_seconds=1800,
)  # fmt: skip
QUICK = Scale(
    small=1_000, medium=12, large=1, large_size=256 * MiB, latency_seconds=5, old_poll=2.5,
    retry_events=100, retry_ladder=("250ms", "500ms", "1s", "2s"), azure=400,
    soak_seconds=120, throttle=300, backfill=1_000,
)  # fmt: skip
"""Every scenario at a size that runs in about three minutes once set up (the backfill's queue
still outlasts its second phase: at most ~100 files/s land in those 5 s)."""


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
    """The largest peak RSS of the tool's processes."""
    rss_by_process: dict[str, float] = field(default_factory=dict)
    peak_anon_mib: float = 0.0
    """The largest anonymous memory seen in one of the tool's processes (sampled)."""
    cpu_elsewhere: dict[str, float] = field(default_factory=dict)
    """CPU seconds the run cost the origin and the broker."""
    cpu_by_process: dict[str, float] = field(default_factory=dict)
    rung_lateness: dict[str, dict[str, float]] = field(default_factory=dict)
    idle_cpu: float = 0.0
    """Of ``cpu_seconds``, what the tool would have spent idle over as long (Azure scenario)."""
    sink_requests: int = 0
    """Requests the sink's server answered (the Azure scenario: the DFS emulator's count)."""
    memory: list[dict[str, Any]] = field(default_factory=list)
    """Soak samples: ``{"t": seconds, "anon": {process: MiB}, "file": {process: MiB}}``."""
    commits: int = 0
    """Inventory commits of the run (versions in its Delta log)."""
    extra: dict[str, float] = field(default_factory=dict)
    """Scenario figures of their own (the origins scenarios: 429s, concurrency, the rate alone)."""
    error: str = ""
    """Why the run failed (then its figures mean nothing); the report shows it in the tool's row."""

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
    """nginx on loopback serving ``www``. Its worker runs as the user running the benchmark: the
    default (``nobody`` when started as root) cannot enter a clone in a private folder (a home
    folder, ``mktemp -d``) and answered 403 to every request."""

    def __init__(self, www: Path, workdir: Path, probe: str = "") -> None:
        self.port = harness.free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "logs").mkdir(exist_ok=True)
        conf = workdir / "nginx.conf"
        conf.write_text(
            f"""{nginx_user()}worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on; tcp_nopush on; keepalive_requests 100000;
  client_body_temp_path {workdir}/body; proxy_temp_path {workdir}/proxy;
  fastcgi_temp_path {workdir}/fastcgi; uwsgi_temp_path {workdir}/uwsgi;
  scgi_temp_path {workdir}/scgi;
  server {{
    listen 127.0.0.1:{self.port}; root {www};
    location /unavailable/ {{ return 503; }}
  }}
}}
"""
        )
        self.error_log = workdir / "logs" / "error.log"
        self.proc = subprocess.Popen(
            [shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(workdir), "-c", str(conf),
             "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=1)
            except urllib.error.HTTPError:
                break  # 403/404 for the root: it answers
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"nginx exited {self.proc.returncode}: {self._log()}"
                    ) from None
                time.sleep(0.05)
                continue
            break
        else:
            self.stop()
            raise RuntimeError(f"nginx did not answer within 10 s: {self._log()}")
        if probe:
            self.check(probe)

    def check(self, name: str) -> None:
        """Fetch ``name``: an origin that cannot serve the files stops the benchmark here, with
        nginx's reason, rather than every tool failing on its own way later."""
        try:
            urllib.request.urlopen(self.url(name), timeout=10).read(1)
        except OSError as exc:
            self.stop()
            raise RuntimeError(f"the origin cannot serve {name}: {exc}; {self._log()}") from exc

    def _log(self) -> str:
        try:
            lines = self.error_log.read_text().strip().splitlines()
        except OSError:
            return "no nginx error log"
        return f"nginx says: {lines[-1]}" if lines else "nginx logged nothing"

    def worker_pid(self) -> int:
        """The pid of nginx's one worker process (it serves every request)."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return int(children[0]) if children else self.proc.pid

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            self.proc.wait(10)


def nginx_user() -> str:
    """nginx's ``user`` directive: the benchmark's own user and group when started as root (the
    only case where nginx switches users), nothing otherwise."""
    if os.geteuid() != 0:
        return ""
    import grp
    import pwd

    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    return f"user {user} {group};\n"


# -- measuring processes -----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / ticks


def anon_mib(pid: int) -> float:
    """Anonymous memory (heap, buffers) of ``pid`` now: RSS without mapped files such as
    shared libraries, whose pages other processes share and the kernel can drop."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return 0.0


def memory_mib(pid: int) -> tuple[float, float]:
    """Anonymous and file-backed resident memory of ``pid`` now (MiB)."""
    anon = files = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            anon = int(line.split()[1]) / 1024
        elif line.startswith("RssFile:"):
            files = int(line.split()[1]) / 1024
    return anon, files


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- lakeferry ----------------------------------------------------------------------------------


def cpu_split(pid: int) -> str:
    """User and system CPU seconds of ``pid``, and CPU seconds per thread name."""
    ticks = os.sysconf("SC_CLK_TCK")
    per_name: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        key = "trio worker" if " from " in name or name.startswith("Trio") else name
        per_name[key] = per_name.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    user, system = int(fields[11]) / ticks, int(fields[12]) / ticks
    threads = ", ".join(f"{k} {v:.1f}" for k, v in sorted(per_name.items(), key=lambda kv: -kv[1]))
    return f"CPU s: user {user:.1f}, system {system:.1f}; by thread: {threads}"


class Profiler:
    """``py-spy record`` attached to a process (``--profile``): collapsed stacks, then the frames
    where the samples land, so a run says where its time goes."""

    def __init__(self, pid: int, out: Path) -> None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.out = out
        out.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [spy, "record", "-p", str(pid), "-r", "100", "-f", "raw", "-o", str(out),
             "--nonblocking", *os.environ.get("BENCH_PYSPY", "").split()],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def stop(self, top: int = 25) -> str:
        self.proc.send_signal(signal.SIGINT)
        _, errors = self.proc.communicate(timeout=30)
        if not self.out.exists():
            return f"py-spy wrote no profile: {errors.strip()[-500:]}"
        own: dict[str, int] = {}
        total = 0
        for line in self.out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack:
                continue
            leaf = stack.rsplit(";", 1)[-1]
            own[leaf] = own.get(leaf, 0) + int(count)
            total += int(count)
        ranked = sorted(own.items(), key=lambda kv: -kv[1])[:top]
        lines = [f"{n / total:6.1%}  {frame}" for frame, n in ranked] if total else []
        summary = "\n".join([f"{total} samples of threads on a CPU, by own frame:", *lines])
        self.out.with_suffix(".top.txt").write_text(summary + "\n")
        return summary


KAFKA_WORKERS = {
    "ingest": "ingest",
    "download": "download",
    "upload": "upload",
    "results": "results",
}
"""On Kafka each stage runs as its own process, as in production (the seed's shape, scaled to two
cores): Python work spreads over both cores, and each process holds only its own stage."""


SETTLE_SECONDS = 1.0
"""A pause after the write-back between runs (none in a quick run: ``sync`` itself waits)."""


def settle() -> None:
    """Write back what earlier runs left dirty, so its writeback does not slow the next run."""
    os.sync()
    time.sleep(SETTLE_SECONDS)


def rows_committed(scrape: str) -> float:
    """``lakeferry_delta_rows_total{table="inventory"}`` in a scrape."""
    for line in scrape.splitlines():
        if line.startswith('lakeferry_delta_rows_total{table="inventory"}'):
            return float(line.split()[-1])
    return 0.0


ELSEWHERE: dict[str, int] = {}
"""Other processes whose CPU a run costs too: ``{"kafka broker": pid, "nginx": pid}``."""


def start_lakeferry(
    state: Path, data: dict[str, Any], kafka: str | None
) -> tuple[Path, dict[str, harness.DaemonProcess], dict[str, str]]:
    """Start lakeferry on ``data``: one process, or one per stage on Kafka. Returns a config
    for the CLI, the processes and their metrics URLs."""
    workers = KAFKA_WORKERS if kafka else {"all": None}
    configs: dict[str, Path] = {}
    scrape_urls: dict[str, str] = {}
    for name in workers:
        data["metrics"]["listen"] = f"127.0.0.1:{harness.free_port()}"
        scrape_urls[name] = f"http://{data['metrics']['listen']}/metrics"
        data["live"]["listen"] = f"127.0.0.1:{harness.free_port()}"
        data["console"]["listen"] = f"127.0.0.1:{harness.free_port()}"
        configs[name] = harness.write_config(state / f"lakeferry-{name}.toml", data)
    config = next(iter(configs.values()))
    if kafka:
        harness.cli(config, "topics", "ensure", check=True)
    # All at once, as systemd starts them; then each one's ready line.
    daemons = {
        name: harness.DaemonProcess(
            configs[name], state / f"{name}.log", stages=stages, instance=name
        ).start(wait_ready=0)
        for name, stages in workers.items()
    }
    for daemon in daemons.values():
        daemon.wait_ready()
    return config, daemons, scrape_urls


def stop_all(daemons: Iterable[harness.DaemonProcess], timeout: float = 120) -> None:
    """SIGTERM every process at once, then wait for each to drain and exit."""
    daemons = list(daemons)
    for daemon in daemons:
        daemon.signal(signal.SIGTERM)
    for daemon in daemons:
        daemon.wait(timeout)


def stop_and_time(
    daemons: dict[str, harness.DaemonProcess], state: Path
) -> tuple[float, list[float]]:
    """Stop the run's processes; then, from its inventory: seconds from the first event's
    creation (not from starting a command, whose interpreter start-up is no part of the
    pipeline) to the last commit, and each row's latency (created -> committed)."""
    stop_all(daemons.values())
    rows = read_inventory(state)
    first = min(r["event_created_at"] for r in rows).timestamp()
    last = max(r["committed_at"] for r in rows).timestamp()
    latencies = [(r["committed_at"] - r["event_created_at"]).total_seconds() for r in rows]
    return last - first, latencies


def wait_for_rows(url: str, total: int, timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while rows_committed(urllib.request.urlopen(url).read().decode()) < total:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {total} inventory rows after {timeout:g} s")
        time.sleep(0.2)


def bench_config(
    state: Path,
    kafka: str | None,
    shutdown_grace: str = "60s",
    ladder: tuple[str, ...] = ("200ms", "400ms", "800ms", "1600ms"),
) -> dict[str, Any]:
    """The config of a throughput run: events submitted, no source; big files allowed."""
    data = harness.config_dict(
        state, metrics_port=harness.free_port(), kafka=kafka, ladder=ladder,
        namespace=f"bench{int(time.time() * 1000)}.", shutdown_grace=shutdown_grace,
    )  # fmt: skip
    data["downloaders"]["http"]["max_size"] = "4GiB"
    data["downloaders"]["http"]["engine"] = HTTP_ENGINE
    data["cache"]["quota"] = "8GiB"
    data["results"]["batch_wait"] = "200ms"
    data["ingest"]["concurrency"] = 64
    data["sources"] = []
    return data


def run_lakeferry(
    scenario: str,
    bus: str,
    urls: list[tuple[str, int]],
    state: Path,
    kafka: str | None,
    profile: bool = False,
) -> Result:
    shutil.rmtree(state, ignore_errors=True)
    settle()
    data = bench_config(state, kafka)
    config, daemons, scrape_urls = start_lakeferry(state, data, kafka)
    profilers = {
        name: Profiler(d.pid, state.parent / f"profile-{scenario}-{bus}-{name}.txt")
        for name, d in (daemons.items() if profile else ())
    }
    cpu0 = {name: cpu_seconds(d.pid) for name, d in daemons.items()}
    others = {k: v for k, v in ELSEWHERE.items() if kafka or k != "kafka broker"}
    others0 = {name: cpu_seconds(pid) for name, pid in others.items()}
    events = state / "events.jsonl"
    events.write_text(
        "".join(
            json.dumps({"id": f"{scenario}-{i}", "url": u}) + "\n" for i, (u, _) in enumerate(urls)
        )
    )
    harness.cli(config, "submit", "--file", str(events), "--quiet", check=True, timeout=600)
    total = len(urls)
    anon = dict.fromkeys(daemons, 0.0)
    results_url = scrape_urls["results" if "results" in scrape_urls else "all"]
    while True:
        # The row count from the results process's metrics: reading the table here would
        # take CPU from the processes being measured.
        committed = rows_committed(urllib.request.urlopen(results_url).read().decode())
        if committed >= total:
            break
        for name, daemon in daemons.items():
            if not daemon.alive():
                raise RuntimeError(f"{name} died:\n{daemon.tail()}")
            anon[name] = max(anon[name], anon_mib(daemon.pid))
        if profile:
            print(f"{committed:6.0f} landed; in flight: " + ", ".join(
                in_flight(urllib.request.urlopen(url).read().decode())
                for url in scrape_urls.values()
            ))  # fmt: skip
        time.sleep(0.5 if profile else 0.2)
    cpu_by = {name: cpu_seconds(d.pid) - cpu0[name] for name, d in daemons.items()}
    cpu = sum(cpu_by.values())
    elsewhere = {name: cpu_seconds(pid) - others0[name] for name, pid in others.items()}
    rss = {name: peak_rss_mib(d.pid) for name, d in daemons.items()}
    for name, profiler in profilers.items():
        print(f"== {name}: {cpu_split(daemons[name].pid)}")
        print(stage_durations(urllib.request.urlopen(scrape_urls[name]).read().decode()))
        print(profiler.stop())
    seconds, latencies = stop_and_time(daemons, state)
    return Result(
        scenario, f"lakeferry ({bus})", total, seconds, sum(s for _, s in urls),
        latencies, cpu, max(rss.values()), rss, peak_anon_mib=max(anon.values()),
        cpu_elsewhere=elsewhere, cpu_by_process=cpu_by, commits=inventory_commits(state),
    )  # fmt: skip


# -- origins: a troubled origin beside a healthy one, a throttling origin ---------------------

THROTTLE_LIMIT = 8
"""The throttling origin serves this many requests at once and answers 429 beyond."""
THROTTLE_DELAY = 0.05
"""Seconds the throttling origin spends on each request it serves."""


def submit_lines(config: Path, path: Path, events: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    harness.cli(config, "submit", "--file", str(path), "--quiet", check=True, timeout=600)


def run_mixed(
    bus: str,
    urls: list[tuple[str, int]],
    trouble: str,
    state: Path,
    kafka: str | None,
    profile: bool = False,
) -> Result:
    """The small files from nginx, with as many events for a second origin that hangs every
    request (``trouble="hang"``) or answers 503 to every one (``"503"``) submitted first and
    interleaved: files/s of the healthy origin's files, from the first event's creation to the
    last row (the troubled origin's never land)."""
    shutil.rmtree(state, ignore_errors=True)
    settle()
    # Production's ladder: a failed or parked task comes back in 5 minutes, after the run (with
    # the tests' 200 ms the troubled origin's tasks would circle through the bus all along).
    data = bench_config(state, kafka, shutdown_grace="2s", ladder=("5m", "10m", "20m", "40m"))
    with origin_tool.serve() as troubled:
        route = "hang" if trouble == "hang" else "status/503"
        bad = [
            {"id": f"bad-{i}", "url": f"{troubled.url}/{route}/b{i}.bin"} for i in range(len(urls))
        ]
        good = [{"id": f"good-{i}", "url": u} for i, (u, _) in enumerate(urls)]
        config, daemons, scrape_urls = start_lakeferry(state, data, kafka)
        cpu0 = {name: cpu_seconds(d.pid) for name, d in daemons.items()}
        others = {k: v for k, v in ELSEWHERE.items() if kafka or k != "kafka broker"}
        others0 = {name: cpu_seconds(pid) for name, pid in others.items()}
        profilers = {
            name: Profiler(d.pid, state.parent / f"profile-mixed-{trouble}-{bus}-{name}.txt")
            for name, d in (daemons.items() if profile else ())
        }
        mixed = [e for pair in zip(bad, good, strict=True) for e in pair]
        submit_lines(config, state / "events.jsonl", mixed)
        results_url = scrape_urls["results" if "results" in scrape_urls else "all"]
        wait_for_rows(results_url, len(good))
        for name, profiler in profilers.items():
            print(f"profile of mixed ({trouble}) {bus} {name}:")
            print(profiler.stop())
        cpu_by = {name: cpu_seconds(d.pid) - cpu0[name] for name, d in daemons.items()}
        cpu = sum(cpu_by.values())
        elsewhere = {name: cpu_seconds(pid) - others0[name] for name, pid in others.items()}
        download_url = scrape_urls["download" if "download" in scrape_urls else "all"]
        metrics = harness.scrape(int(download_url.split(":")[2].split("/")[0]))
        seconds, latencies = stop_and_time(daemons, state)
    origin = troubled.url.removeprefix("http://")
    return Result(
        f"mixed ({trouble})", f"lakeferry ({bus})", len(good), seconds, sum(n for _, n in urls),
        latencies, cpu, cpu_by_process=cpu_by, cpu_elsewhere=elsewhere,
        extra={
            "troubled_active": harness.metric_sum(
                metrics, "lakeferry_origin_active", origin=origin
            ),
            "parked": harness.metric_sum(metrics, "lakeferry_download_parked_total"),
            "not_tried": harness.metric_sum(
                metrics, "lakeferry_origin_downloads_total", outcome="not_tried"
            ),
        },
    )  # fmt: skip


def run_throttle(bus: str, files: int, state: Path, kafka: str | None) -> Result:
    """An origin that serves :data:`THROTTLE_LIMIT` requests at once (each for
    :data:`THROTTLE_DELAY` s) and answers 429 with ``Retry-After: 1`` beyond: how close
    lakeferry's concurrency towards it stays to the limit (sampled every 20 ms at the origin),
    and how many 429s it draws."""
    shutil.rmtree(state, ignore_errors=True)
    settle()
    data = bench_config(state, kafka)
    size = 16 * KiB
    with origin_tool.serve() as origin:
        events = [
            {"id": f"t-{i}", "url": origin.file_url(
                f"t{i}.bin", size, route="throttle", limit=THROTTLE_LIMIT, delay=THROTTLE_DELAY
            )}
            for i in range(files)
        ]  # fmt: skip
        config, daemons, scrape_urls = start_lakeferry(state, data, kafka)
        samples: list[int] = []
        done = threading.Event()

        ours: list[float] = []
        download_url = scrape_urls["download" if "download" in scrape_urls else "all"]
        name = origin.url.removeprefix("http://")

        def sample() -> None:
            k = 0
            while not done.wait(0.02):
                now = origin.concurrency()["throttle"]["now"]
                if now or samples:
                    samples.append(now)
                k += 1
                if samples and k % 5 == 0:  # lakeferry's own count, every 0.1 s
                    metrics = harness.scrape(int(download_url.split(":")[2].split("/")[0]))
                    ours.append(harness.metric_sum(metrics, "lakeferry_origin_active", origin=name))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        submit_lines(config, state / "events.jsonl", events)
        wait_for_rows(scrape_urls["results" if "results" in scrape_urls else "all"], files)
        done.set()
        sampler.join()
        seen = origin.concurrency()["throttle"]
        seconds, latencies = stop_and_time(daemons, state)
    # The tail (the last files finishing, nothing left to send) is not the steady state.
    steady = samples[: max(1, int(len(samples) * 0.9))]
    ours_steady = ours[: max(1, int(len(ours) * 0.9))]
    return Result(
        "throttling origin", f"lakeferry ({bus})", files, seconds, files * size, latencies,
        extra={
            "limit": THROTTLE_LIMIT,
            "mean_concurrency": statistics.fmean(steady) if steady else 0.0,
            "mean_requests": statistics.fmean(ours_steady) if ours_steady else 0.0,
            "throttled": seen["throttled"],
            "ideal_files_per_s": THROTTLE_LIMIT / THROTTLE_DELAY,
        },
    )  # fmt: skip


def inventory_commits(state: Path) -> int:
    """Commits in the inventory's Delta log (its creation and maintenance included)."""
    log = state / "inventory" / "_delta_log"
    return sum(1 for p in log.glob("*.json")) if log.exists() else 0


def read_inventory(
    state: Path, columns: Sequence[str] = ("committed_at", "event_created_at")
) -> list[dict[str, Any]]:
    import deltalake

    from lakeferry_delta.schema import read_columns

    path = state / "inventory"
    if not (path / "_delta_log").exists():
        return []
    table = deltalake.DeltaTable(str(path))
    return read_columns(table, list(columns)).to_pylist()  # type: ignore[no-any-return]


# -- peers --------------------------------------------------------------------------------------


ARIA2C_EXIT = {
    1: "an unknown error",
    2: "a time-out",
    3: "a resource was not found",
    6: "a network problem",
    9: "not enough disk space",
    22: "an HTTP error status from the origin, e.g. 403",
    24: "HTTP authorization failed",
}


def attempt(scenario: str, tool: str, run: Callable[[], Result]) -> Result:
    """One measurement. A tool that fails (a peer that cannot fetch, a lakeferry run that dies)
    becomes a result that says why, shown in its row of the report; the benchmark goes on."""
    try:
        return run()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        if isinstance(exc, subprocess.CalledProcessError):
            reason = f"{Path(str(exc.cmd[0])).name} exited {exc.returncode}"
        else:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"bench: {tool} failed in {scenario}: {reason}", file=sys.stderr)
        return Result(scenario, tool, 0, 0.0, 0, error=reason)


def drop_bytes(folder: Path) -> None:
    """Delete what a run downloaded or landed, once its figures are taken (logs and tables
    stay for a look afterwards)."""
    shutil.rmtree(folder, ignore_errors=True)


def run_aria2c(scenario: str, urls: list[tuple[str, int]], out: Path) -> Result:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    listing = out / "urls.txt"
    listing.write_text("".join(f"{u}\n  out={i}.bin\n" for i, (u, _) in enumerate(urls)))
    settle()
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
        meaning = ARIA2C_EXIT.get(proc.returncode, "see EXIT STATUS in man aria2c")
        raise RuntimeError(f"aria2c exited {proc.returncode} ({meaning})")
    return Result(
        scenario, "aria2c -j 50", len(urls), seconds, sum(s for _, s in urls), [], cpu, rss
    )


def run_curl(
    scenario: str, urls: list[tuple[str, int]], out: Path, *, fsync: bool = False
) -> Result:
    """``curl`` one file at a time; with ``fsync``, each file is also forced to disk before the
    next starts (what lakeferry does before it records a file as landed)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    settle()
    started = time.monotonic()
    for i, (url, _) in enumerate(urls):
        path = out / f"{i}.bin"
        subprocess.run(["curl", "-sSf", "-o", str(path), url], check=True)
        if fsync:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    seconds = time.monotonic() - started
    tool = "curl, then fsync" if fsync else "curl (one at a time)"
    return Result(scenario, tool, len(urls), seconds, sum(s for _, s in urls))


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


def spool_load_config(state: Path, kafka: str | None, name: str) -> tuple[dict[str, Any], Path]:
    """A fresh state folder and the config of a steady-load run: events from a spool folder
    (polled every 50 ms), the bench's engine, inventory batches of at most 100 ms."""
    shutil.rmtree(state, ignore_errors=True)
    settle()
    data = harness.config_dict(
        state, metrics_port=harness.free_port(), kafka=kafka,
        namespace=f"{name}{int(time.time() * 1000)}.",
    )  # fmt: skip
    spool = state / "spool-in"
    spool.mkdir(parents=True)
    data["sources"] = [{"kind": "spool", "path": str(spool), "poll_interval": "50ms"}]
    data["downloaders"]["http"]["engine"] = HTTP_ENGINE
    data["results"]["batch_wait"] = "100ms"
    return data, spool


def run_latency(
    bus: str,
    urls: list[tuple[str, int]],
    rate: float,
    seconds: float,
    state: Path,
    kafka: str | None,
) -> Result:
    """A steady offered load: ``rate`` events/s for ``seconds``, dropped into a spool folder in
    0.25 s slices, each event stamped ``created_at`` when written (the spool's polling counts)."""
    data, spool = spool_load_config(state, kafka, "lat")
    _config, daemons, scrape_urls = start_lakeferry(state, data, kafka)
    n = min(len(urls), int(rate * seconds))
    feed_spool(spool, urls, rate, n, "lat")
    wait_for_rows(scrape_urls["results" if "results" in scrape_urls else "all"], n)
    seconds, latencies = stop_and_time(daemons, state)
    return Result("latency", f"lakeferry ({bus})", n, seconds, 0, latencies)


def feed_spool(
    spool: Path,
    urls: list[tuple[str, int]],
    rate: float,
    n: int,
    prefix: str,
    tick: Callable[[], None] = lambda: None,
) -> None:
    """Offer ``n`` events at ``rate``/s into ``spool`` in 0.25 s slices, each stamped
    ``created_at`` when written; event ``i`` fetches ``urls[i % len(urls)]`` (ids are unique,
    URLs repeat). ``tick`` runs after each slice (the soak's sampling and sink cleaning)."""
    started = time.monotonic()
    per = max(1, int(rate * 0.25))
    i = 0
    while i < n:
        count = min(per, n - i)
        now = dt.datetime.now(dt.UTC).isoformat()
        tmp = spool / f"{i}.jsonl.tmp"
        tmp.write_text(
            "".join(
                json.dumps(
                    {"id": f"{prefix}-{i + k}", "url": urls[(i + k) % len(urls)][0],
                     "created_at": now}
                ) + "\n"
                for k in range(count)
            )
        )  # fmt: skip
        tmp.rename(spool / f"{i}.jsonl")
        i += count
        tick()
        time.sleep(max(0.0, started + (i / rate) - time.monotonic()))


def run_backfill(
    bus: str,
    urls: list[tuple[str, int]],
    rate: float,
    seconds: float,
    backfill: int,
    state: Path,
    kafka: str | None,
    alone: list[float] | None = None,
) -> Result:
    """The latency load alone for ``seconds``; then ``backfill`` events submitted to the
    backfill lane and, once all are queued on its topic, the latency load again: the live
    files' p95 end to end in each phase, and the backfill files landed meanwhile. One daemon
    (or set of workers) for both phases; event ``i`` of either kind fetches ``urls[i %
    len(urls)]``. ``alone``: the latencies of that same load alone from the ``latency``
    scenario of this run, when it ran (then the first phase is not run again)."""
    data, spool = spool_load_config(state, kafka, "bf")
    config, daemons, scrape_urls = start_lakeferry(state, data, kafka)
    n = min(len(urls), int(rate * seconds))
    if alone is None:
        feed_spool(spool, urls, rate, n, "alone")
    ingest_url = scrape_urls["ingest" if "ingest" in scrape_urls else "all"]
    events = state / "backfill.jsonl"
    events.write_text("".join(
        json.dumps({"id": f"bf-{i}", "url": urls[i % len(urls)][0]}) + "\n"
        for i in range(backfill)
    ))  # fmt: skip
    harness.cli(
        config, "submit", "--file", str(events), "--lane", "backfill", "--quiet",
        check=True, timeout=1200,
    )  # fmt: skip

    def ingested() -> float:
        return harness.metric_sum(
            harness.scrape(int(ingest_url.split(":")[2].split("/")[0])),
            "lakeferry_stage_messages_total", stage="ingest",
        )  # fmt: skip

    deadline = time.monotonic() + 1200
    while ingested() < (0 if alone else n) + backfill:  # every backfill task on the lane's topic
        if time.monotonic() > deadline:
            raise RuntimeError("the backfill events were not all ingested in 20 minutes")
        time.sleep(0.2)
    phase = time.time()
    feed_spool(spool, urls, rate, n, "with")
    sink = state / "sink"
    deadline = time.monotonic() + 600
    waiting = set(range(n))
    while waiting:  # a file appears in its folder once it has landed
        waiting = {i for i in waiting if not any((sink / f"with-{i}").glob("[!.]*"))}
        if time.monotonic() > deadline:
            raise RuntimeError("the live files of the second phase did not land in 10 minutes")
        time.sleep(0.2)
    ended = time.time()
    while True:  # and their rows follow (the measurement is over: reading costs nothing now)
        rows = read_inventory(state, ("event_id", "committed_at", "event_created_at"))
        if sum(1 for r in rows if r["event_id"].startswith("with-")) >= n:
            break
        if time.monotonic() > deadline:
            raise RuntimeError("the live files of the second phase have no rows in 10 minutes")
        time.sleep(1)
    stop_all(daemons.values())

    def latencies(prefix: str) -> list[float]:
        return [
            (r["committed_at"] - r["event_created_at"]).total_seconds()
            for r in rows if r["event_id"].startswith(prefix)
        ]  # fmt: skip

    alone = alone if alone is not None else latencies("alone-")
    live = latencies("with-")
    meanwhile = sum(
        1 for r in rows
        if r["event_id"].startswith("bf-") and phase <= r["committed_at"].timestamp() <= ended
    )  # fmt: skip
    if len(live) < n:
        raise RuntimeError(f"{n - len(live)} live files of the second phase have no row")
    return Result(
        "backfill", f"lakeferry ({bus})", len(live), ended - phase, 0, live,
        extra={
            "alone_p95": percentile(alone, 95), "alone_p50": percentile(alone, 50),
            "alone_files": float(len(alone)),
            "rate": rate, "queued": float(backfill), "backfill_landed": float(meanwhile),
        },
    )  # fmt: skip


def percentile(values: list[float], q: int) -> float:
    """The ``q``-th percentile of ``values`` (0 for none), as :meth:`Result.pct` takes it."""
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


SOAK_SAMPLE_EVERY = 5.0
"""Seconds between memory samples of a soak."""


def run_soak(
    bus: str,
    urls: list[tuple[str, int]],
    rate: float,
    seconds: float,
    state: Path,
    kafka: str | None,
) -> Result:
    """The latency load for ``seconds`` with Delta maintenance on and due often: each
    process's anonymous and file-backed memory every ``SOAK_SAMPLE_EVERY`` s. Landed files are
    deleted from the sink as the run goes (the inventory keeps every row)."""
    data, spool = spool_load_config(state, kafka, "soak")
    data["inventory"].update(  # maintenance on, the full compaction due within the run
        compact_every="5m", compact_min_files=10,
        checkpoint_every_commits=50, vacuum_every="10m", vacuum_retention="1m",
        vacuum_enforce_retention=False,
    )  # fmt: skip
    _config, daemons, scrape_urls = start_lakeferry(state, data, kafka)
    sink = state / "sink"
    samples: list[dict[str, Any]] = []
    started = time.monotonic()
    next_sample = started
    cleaned = started

    def tick() -> None:
        nonlocal next_sample, cleaned
        now = time.monotonic()
        if now >= next_sample:
            for name, daemon in daemons.items():
                if not daemon.alive():
                    raise RuntimeError(f"{name} died:\n{daemon.tail()}")
            mem = {name: memory_mib(d.pid) for name, d in daemons.items()}
            samples.append({
                "t": round(now - started, 1),
                "anon": {k: round(a, 1) for k, (a, _) in mem.items()},
                "file": {k: round(f, 1) for k, (_, f) in mem.items()},
            })  # fmt: skip
            next_sample += SOAK_SAMPLE_EVERY
        if now - cleaned >= 10:
            clean_sink(sink, older_than=10)
            cleaned = now

    n = int(rate * seconds)
    cpu0 = {name: cpu_seconds(d.pid) for name, d in daemons.items()}
    feed_spool(spool, urls, rate, n, "soak", tick)
    wait_for_rows(scrape_urls["results" if "results" in scrape_urls else "all"], n)
    tick()
    cpu_by = {name: cpu_seconds(d.pid) - cpu0[name] for name, d in daemons.items()}
    rss = {name: peak_rss_mib(d.pid) for name, d in daemons.items()}
    seconds_taken, latencies = stop_and_time(daemons, state)
    return Result(
        "soak", f"lakeferry ({bus})", n, seconds_taken, 0, latencies, sum(cpu_by.values()),
        max(rss.values()), rss,
        peak_anon_mib=max((max(s["anon"].values()) for s in samples), default=0.0),
        cpu_by_process=cpu_by, memory=samples, commits=inventory_commits(state),
    )  # fmt: skip


def clean_sink(sink: Path, older_than: float) -> None:
    """Delete what landed in ``sink`` more than ``older_than`` seconds ago (one folder per
    event in the bench's layout)."""
    limit = time.time() - older_than
    try:
        entries = list(os.scandir(sink))
    except FileNotFoundError:
        return
    for entry in entries:
        try:
            if entry.stat(follow_symlinks=False).st_mtime < limit:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
        except FileNotFoundError:
            continue


def run_retry(bus: str, scale: Scale, state: Path, kafka: str | None, nginx: Nginx) -> Result:
    """Retry lateness: ``scale.retry_events`` downloads that always get 503 climb the whole ladder and are
    dead-lettered; each rung's lateness (taken at - due at) comes from the download workers'
    ``lakeferry_retry_lateness_seconds`` histogram."""
    events = scale.retry_events
    shutil.rmtree(state, ignore_errors=True)
    data = harness.config_dict(
        state, metrics_port=harness.free_port(), kafka=kafka, ladder=scale.retry_ladder,
        namespace=f"retry{int(time.time() * 1000)}.",
    )  # fmt: skip
    data["sources"] = []
    data["downloaders"]["http"]["engine"] = HTTP_ENGINE
    # Every request fails on one origin: its circuit would park the tasks on the first rung
    # (unspent) instead of letting them climb the ladder this scenario times.
    data["download"]["host_circuit_failures"] = 0
    config = harness.write_config(state / "lakeferry.toml", data)
    if kafka:
        harness.cli(config, "topics", "ensure", check=True)
    stages = "download" if kafka else None  # on Kafka, a download worker of its own
    daemon = harness.DaemonProcess(config, state / "daemon.log", stages=stages).start()
    helpers = []
    if kafka:  # ingest turns submitted events into tasks
        other = dict(data, metrics={"listen": f"127.0.0.1:{harness.free_port()}"},
                     live={"listen": ""})  # fmt: skip
        other_config = harness.write_config(state / "ingest.toml", other)
        helpers.append(
            harness.DaemonProcess(other_config, state / "ingest.log", stages="ingest").start()
        )
    listing = state / "events.jsonl"
    listing.write_text(
        "".join(
            json.dumps({"id": f"retry-{i}", "url": nginx.url(f"unavailable/{i}.bin")}) + "\n"
            for i in range(events)
        )
    )
    started = time.monotonic()
    harness.cli(config, "submit", "--file", str(listing), "--quiet", check=True)
    port = int(data["metrics"]["listen"].rsplit(":", 1)[1])
    while True:  # the download process's count of letters (a `dlq list` costs a second)
        letters = harness.metric_sum(harness.scrape(port), "lakeferry_dlq_total")
        if letters >= events:
            break
        if time.monotonic() - started > 300:
            raise RuntimeError(f"retry scenario: {letters:.0f} of {events} dead-lettered")
        time.sleep(0.2)
    metrics = urllib.request.urlopen(f"http://{data['metrics']['listen']}/metrics").read()
    stop_all((daemon, *helpers), 60)
    result = Result("retry", f"lakeferry ({bus})", events, time.monotonic() - started, 0)
    result.rung_lateness = lateness_by_rung(metrics.decode())
    return result


def in_flight(scrape: str) -> str:
    """Messages in flight per stage, and consumer lag per topic, in a scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    parts = []
    lag: dict[str, float] = {}
    for family in text_string_to_metric_families(scrape):
        for sample in family.samples:
            if sample.name == "lakeferry_stage_in_flight":
                parts.append(f"{sample.labels['stage']} {sample.value:.0f}")
            elif sample.name == "lakeferry_stage_messages_total":
                parts.append(f"({sample.labels['stage']} done {sample.value:.0f})")
            elif sample.name == "lakeferry_consumer_lag":
                topic = sample.labels["topic"].rsplit(".", 2)[-2:]
                key = ".".join(topic)
                lag[key] = lag.get(key, 0.0) + sample.value
    parts += [f"lag {k} {v:.0f}" for k, v in lag.items() if v]
    return " ".join(parts)


def stage_durations(scrape: str) -> str:
    """Mean time per message of each stage in a scrape (handling, from fetch to done)."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(scrape):
        if family.name != "lakeferry_stage_duration_seconds":
            continue
        for sample in family.samples:
            stage = sample.labels.get("stage", "?")
            if sample.name.endswith("_sum"):
                sums[stage] = sums.get(stage, 0.0) + sample.value
            elif sample.name.endswith("_count"):
                counts[stage] = counts.get(stage, 0.0) + sample.value
    return "stage mean: " + ", ".join(
        f"{stage} {sums[stage] / counts[stage] * 1000:.1f} ms × {counts[stage]:.0f}"
        for stage in sums
        if counts.get(stage)
    )


def lateness_by_rung(scrape: str) -> dict[str, dict[str, float]]:
    """p50/p95/max-bucket of each rung's lateness histogram (as Prometheus's histogram_quantile
    interpolates inside a bucket)."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: dict[str, list[tuple[float, float]]] = {}
    for family in text_string_to_metric_families(scrape):
        if family.name != "lakeferry_retry_lateness_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                rung = "retry." + sample.labels["rung"].rsplit("retry.", 1)[-1]  # no namespace
                buckets.setdefault(rung, []).append((float(sample.labels["le"]), sample.value))
    out: dict[str, dict[str, float]] = {}
    for rung, points in buckets.items():
        points.sort()
        total = points[-1][1]
        out[rung] = {"count": total}
        for q in (50, 95):
            rank = total * q / 100
            lower_bound, lower_count = 0.0, 0.0
            for bound, count in points:
                if count >= rank:
                    if bound == float("inf"):
                        out[rung][f"p{q}"] = lower_bound
                    else:
                        span = count - lower_count
                        frac = (rank - lower_count) / span if span else 1.0
                        out[rung][f"p{q}"] = lower_bound + (bound - lower_bound) * frac
                    break
                lower_bound, lower_count = bound, count
    return out


# -- the Azure path -----------------------------------------------------------------------------

AZURE_HUB = "files"
AZURE_FS = "Bench Workspace"
AZURE_BASE = "Bench.Lakehouse/Files/landing"
AZURE_CONTAINER = "lakehouse"
AZURE_SINK: dict[str, Any] = {}
"""Extra ``[sink]`` settings of the Azure runs (``--onelake-api``)."""


class AzureEmulators:
    """Azurite, the Event Hubs emulator and the DFS emulator, each a process of its own (so
    that each one's CPU can be told apart from lakeferry's and the benchmark's)."""

    def __init__(self, workdir: Path) -> None:
        from azurite import azurite as azurite_tool

        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.azurite = azurite_tool.start(harness.free_port(), workdir / "azurite")
        try:
            self.eventhubs, hub_cs = self._serve("eventhubs", [
                "eventhubs_emulator.py", "--port", str(harness.free_port()), "--hub", AZURE_HUB,
                "--partitions", "4",
            ])  # fmt: skip
            self.dfs, self.dfs_url = self._serve("dfs", [
                "dfs_emulator.py", "--port", "0", "--root", str(workdir / "dfs"),
            ])  # fmt: skip
        except BaseException:
            self.stop()
            raise
        from azure.storage.blob import BlobServiceClient

        with BlobServiceClient.from_connection_string(self.azurite.connection_string) as blob:
            blob.create_container(AZURE_CONTAINER)
        self.hub_connection_string = hub_cs
        self.env = {
            "LAKEFERRY_BENCH_EVENTHUB": hub_cs,
            "LAKEFERRY_BENCH_BLOB": self.azurite.connection_string,
            "LAKEFERRY_ONELAKE_ACCOUNT_KEY": azurite_tool.KEY,
            # deltalake's emulator mode: the Blob endpoint without the account path
            "AZURITE_BLOB_STORAGE_URL": f"http://127.0.0.1:{self.azurite.port}",
        }
        self.table = f"abfss://{AZURE_CONTAINER}@{azurite_tool.ACCOUNT}.dfs.core.windows.net/Tables"
        self._producer: Any = None
        """One Event Hubs producer for the run, as a real sender keeps one: a client per send
        would put its connection, auth and link set-up inside every event's latency."""

    def _serve(self, name: str, args: list[str]) -> tuple[subprocess.Popen[bytes], str]:
        """Start a tool from tools/; its first line on stdout is where it listens."""
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tools" / args[0]), *args[1:]],
            stdout=subprocess.PIPE, stderr=log, cwd=ROOT,
        )  # fmt: skip
        log.close()
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        if not line:
            raise RuntimeError(f"the {name} emulator exited {proc.wait(10)} before it listened")
        return proc, line

    def pids(self) -> dict[str, int]:
        assert self.azurite.process is not None
        return {
            "event hubs emulator": self.eventhubs.pid,
            "DFS emulator": self.dfs.pid,
            "azurite": self.azurite.process.pid,
        }

    def sink_requests(self) -> int:
        from dfs_emulator import RemoteControl

        return int(RemoteControl(self.dfs_url.rsplit("/", 1)[0]).stats()["requests"])

    def configure(self, data: dict[str, Any], run: str) -> None:
        """Point a daemon config at the emulators, as ``make demo AZURE=1`` does."""
        data["sources"] = [{
            "kind": "eventhub", "eventhub_name": AZURE_HUB,
            "connection_string_env": "LAKEFERRY_BENCH_EVENTHUB",
            "checkpoint_connection_string_env": "LAKEFERRY_BENCH_BLOB",
            "checkpoint_container": "checkpoints", "create_checkpoint_container": True,
            "load_balancing_interval": "1s",
        }]  # fmt: skip
        data["sink"] = {
            "kind": "onelake", "account_url": self.dfs_url, "filesystem": AZURE_FS,
            "base_path": f"{AZURE_BASE}/{run}", "credential": "account_key",
            "create_filesystem": True, **AZURE_SINK,
        }  # fmt: skip
        data["inventory"] = {
            "kind": "delta", "inventory_uri": f"{self.table}/{run}_inventory",
            "events_uri": f"{self.table}/{run}_events", "credential": "emulator",
        }  # fmt: skip

    def send(self, events: list[dict[str, Any]]) -> None:
        from azure.eventhub import EventData, EventHubProducerClient

        if self._producer is None:
            self._producer = EventHubProducerClient.from_connection_string(
                self.hub_connection_string
            )
        producer = self._producer
        batch = producer.create_batch()
        for event in events:
            data = EventData(json.dumps(event))
            try:
                batch.add(data)
            except ValueError:  # full: send it, start the next
                producer.send_batch(batch)
                batch = producer.create_batch()
                batch.add(data)
        if len(batch):
            producer.send_batch(batch)

    def read_inventory(self, run: str) -> list[dict[str, Any]]:
        import deltalake

        from lakeferry_delta.schema import read_columns

        os.environ["AZURITE_BLOB_STORAGE_URL"] = self.env["AZURITE_BLOB_STORAGE_URL"]
        table = deltalake.DeltaTable(
            f"{self.table}/{run}_inventory", storage_options={"azure_storage_use_emulator": "true"}
        )
        columns = ["event_id", "event_created_at", "downloaded_at", "uploaded_at", "committed_at"]
        rows: list[dict[str, Any]] = read_columns(table, columns).to_pylist()
        # When ingest received each event, from the events table (recorded off the latency
        # path: it may lag the inventory by a commit or two).
        events = deltalake.DeltaTable(
            f"{self.table}/{run}_events", storage_options={"azure_storage_use_emulator": "true"}
        )
        received = {
            r["event_id"]: r["received_at"]
            for r in read_columns(events, ["event_id", "received_at"]).to_pylist()
        }
        for row in rows:
            row["received_at"] = received.get(row["event_id"])
        return rows

    def stop(self) -> None:
        if self._producer is not None:
            self._producer.close()
            self._producer = None
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.azurite.stop()


def run_azure(
    urls: list[tuple[str, int]],
    n: int,
    steady_seconds: float,
    work: Path,
    profile: bool = False,
    idle_seconds: float = 5.0,
) -> list[Result]:
    """The Azure path: after a warm-up (8 files), a burst of ``n`` small files (files/s, CPU per
    file, each emulator's CPU apart), then a steady load at half the burst's rate for
    ``steady_seconds`` (latency). One daemon on the embedded bus; events carry ``created_at`` =
    when they were sent."""
    state = work / "lf"
    shutil.rmtree(state, ignore_errors=True)
    emulators = AzureEmulators(work / "emulators")
    daemon: harness.DaemonProcess | None = None
    try:
        run = f"bench{int(time.time() * 1000)}"
        data = harness.config_dict(state, metrics_port=harness.free_port(), shutdown_grace="60s")
        data["downloaders"]["http"]["engine"] = HTTP_ENGINE
        data["results"]["batch_wait"] = "200ms"
        emulators.configure(data, run)
        config = harness.write_config(state / "lakeferry.toml", data)
        settle()
        daemon = harness.DaemonProcess(config, state / "daemon.log", env=emulators.env).start()
        scrape = f"http://{data['metrics']['listen']}/metrics"
        others = {**emulators.pids(), **{k: v for k, v in ELSEWHERE.items() if k == "nginx"}}

        def phase(name: str, events: list[dict[str, Any]], send: Callable[[], None]) -> Result:
            assert daemon is not None
            target = rows_committed(urllib.request.urlopen(scrape).read().decode()) + len(events)
            out = work / f"profile-{name}.txt"
            profiler = Profiler(daemon.pid, out) if profile else None
            cpu0, requests0 = cpu_seconds(daemon.pid), emulators.sink_requests()
            others0 = {name: cpu_seconds(pid) for name, pid in others.items()}
            anon = 0.0
            send()
            deadline = time.monotonic() + 600
            while rows_committed(urllib.request.urlopen(scrape).read().decode()) < target:
                if not daemon.alive():
                    raise RuntimeError(f"the daemon died:\n{daemon.tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name}: fewer than {target} inventory rows after 600 s")
                anon = max(anon, anon_mib(daemon.pid))
                time.sleep(0.2)
            cpu = cpu_seconds(daemon.pid) - cpu0
            elsewhere = {name: cpu_seconds(pid) - others0[name] for name, pid in others.items()}
            if profiler is not None:
                print(f"== {name}: {cpu_split(daemon.pid)}")
                print(stage_durations(urllib.request.urlopen(scrape).read().decode()))
                print(profiler.stop())
            return Result(
                "", "lakeferry (event hub → onelake)", len(events), 0.0,
                sum(urls[i % len(urls)][1] for i in range(len(events))), [], cpu,
                peak_rss_mib(daemon.pid), peak_anon_mib=anon, cpu_elsewhere=elsewhere,
                sink_requests=emulators.sink_requests() - requests0,
            )  # fmt: skip

        def event(i: int, prefix: str) -> dict[str, Any]:
            return {
                "id": f"{prefix}-{i}", "url": urls[i % len(urls)][0],
                "created_at": dt.datetime.now(dt.UTC).isoformat(),
            }  # fmt: skip

        # Warm up as a daemon that has been running would be: the source owns its partitions
        # (claimed one per load-balancing round), the Delta tables exist, connections are open.
        warm = [event(i, "azure-warm") for i in range(8)]
        warm_target = len(warm)
        emulators.send(warm)
        deadline = time.monotonic() + 120
        while rows_committed(urllib.request.urlopen(scrape).read().decode()) < warm_target:
            if time.monotonic() > deadline or not daemon.alive():
                raise RuntimeError(f"the warm-up events did not land:\n{daemon.tail()}")
            time.sleep(0.2)
        # The partitions' owners settle (load_balancing_interval = 1 s); meanwhile, what the
        # daemon costs with nothing to do (the source's receive and load-balancing threads,
        # the bench's metric scrapes), to tell a slower run's share of it from per-file work.
        idle0, idle_t0 = cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(idle_seconds)
        idle_rate = (cpu_seconds(daemon.pid) - idle0) / (time.monotonic() - idle_t0)

        burst_events: list[dict[str, Any]] = []

        def send_burst() -> None:
            burst_events.extend(event(i, "azure") for i in range(n))
            emulators.send(burst_events)

        burst_t0 = time.monotonic()
        burst = phase("azure", [{}] * n, send_burst)
        burst.scenario = "azure"
        burst.idle_cpu = idle_rate * (time.monotonic() - burst_t0)
        rows = {r["event_id"]: r for r in emulators.read_inventory(run)}
        ours = [rows[e["id"]] for e in burst_events]
        burst.seconds = (
            max(r["committed_at"] for r in ours).timestamp()
            - min(r["event_created_at"] for r in ours).timestamp()
        )
        burst.latencies = [
            (r["committed_at"] - r["event_created_at"]).total_seconds() for r in ours
        ]
        burst.extra.update(latency_segments(ours))
        rate = max(1.0, burst.files_per_s / 2)
        steady_n = max(1, int(rate * steady_seconds))

        def send_steady() -> None:
            started = time.monotonic()
            per = max(1, int(rate * 0.25))
            i = 0
            while i < steady_n:
                chunk = [event(k, "azure-steady") for k in range(i, min(steady_n, i + per))]
                emulators.send(chunk)
                i += len(chunk)
                time.sleep(max(0.0, started + i / rate - time.monotonic()))

        steady = phase("azure-steady", [{}] * steady_n, send_steady)
        steady.scenario = "azure latency"
        rows = {r["event_id"]: r for r in emulators.read_inventory(run)}
        ours = [rows[f"azure-steady-{k}"] for k in range(steady_n)]
        steady.seconds = (
            max(r["committed_at"] for r in ours).timestamp()
            - min(r["event_created_at"] for r in ours).timestamp()
        )
        steady.latencies = [
            (r["committed_at"] - r["event_created_at"]).total_seconds() for r in ours
        ]
        steady.extra.update(latency_segments(ours))
        return [burst, steady]
    finally:
        if daemon is not None and daemon.alive():
            daemon.terminate(120)
        emulators.stop()


SEGMENTS = (
    ("to ingest", "event_created_at", "received_at"),
    ("to cached", "received_at", "downloaded_at"),
    ("to landed", "downloaded_at", "uploaded_at"),
    ("to recorded", "uploaded_at", "committed_at"),
)
"""Where an event's time end to end goes, from its rows' stamps: sent → received by ingest (the
source), → downloaded into the cache (the pending topic, the download), → uploaded, → its
inventory commit."""


def latency_segments(rows: list[dict[str, Any]]) -> dict[str, float]:
    """p50 and p95 seconds of each of :data:`SEGMENTS` over ``rows`` (``"<segment> p50"``)."""
    out: dict[str, float] = {}
    for name, start, end in SEGMENTS:
        spans = [(r[end] - r[start]).total_seconds() for r in rows if r.get(start) and r.get(end)]
        if spans:
            out[f"{name} p50"] = percentile(spans, 50)
            out[f"{name} p95"] = percentile(spans, 95)
    return out


# -- report -------------------------------------------------------------------------------------


def fmt(x: float | None, unit: str = "") -> str:
    return "-" if x is None else f"{x:.2f}{unit}"


def versions() -> str:
    from importlib.metadata import version

    def tool(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        except OSError:
            return "?"
        text = (out.stdout or out.stderr).strip().splitlines()
        return text[0] if text else "?"

    import re

    import confluent_kafka

    pom = (ROOT / "tools" / "kafka" / "pom.xml").read_text()
    found = re.search(r"<kafka.version>([^<]+)<", pom)
    kafka = found.group(1) if found else "?"
    libs = ", ".join(
        f"{name} {version(name)}"
        for name in (
            "lakeferry",
            "trio",
            "httpx",
            "pycurl",
            "msgspec",
            "deltalake",
            "confluent-kafka",
        )
    )
    return (
        f"{libs} (librdkafka {confluent_kafka.libversion()[0]}); Apache Kafka {kafka}; "
        f"{tool(['nginx', '-v'])}; "
        f"{tool(['aria2c', '--version'])}; {tool(['curl', '--version']).split(' (')[0]}"
    )


HTTP_ENGINE = "curl"
"""``[downloaders.http] engine`` of the lakeferry runs (``--http-engine``; the daemon's default)."""


def _met(met: bool) -> str:
    return "met" if met else "not met"


def target_rows(results: list[Result]) -> list[str]:
    """Issue 14's targets, each with its figure from this run (a quick run's are indicative)."""
    by = {(r.scenario, r.tool): r for r in results if not r.error}
    rows = []
    kafka_small = by.get(("small", "lakeferry (kafka)"))
    aria = by.get(("small", "aria2c -j 50"))
    if kafka_small and aria:
        met = kafka_small.files_per_s >= max(1000.0, aria.files_per_s)
        rows.append(
            f"| small files, Kafka: ≥ 1,000 files/s and ≥ aria2c | "
            f"{kafka_small.files_per_s:,.0f} files/s (aria2c {aria.files_per_s:,.0f}) | "
            f"{_met(met)} |"
        )
    if kafka_small and kafka_small.files:
        ours_ms = kafka_small.cpu_seconds / kafka_small.files * 1000
        broker_ms = kafka_small.cpu_elsewhere.get("kafka broker", 0.0) / kafka_small.files * 1000
        rows.append(
            f"| small files, Kafka: lakeferry ≤ 1.5 ms CPU per file, the broker ≤ 0.5 ms | "
            f"{ours_ms:.2f} ms, broker {broker_ms:.2f} ms | "
            f"{_met(ours_ms <= 1.5 and broker_ms <= 0.5)} |"
        )
    embedded_small = by.get(("small", "lakeferry (embedded)"))
    if embedded_small:
        rows.append(
            f"| small files, embedded: ≥ 700 files/s | "
            f"{embedded_small.files_per_s:,.0f} files/s | "
            f"{_met(embedded_small.files_per_s >= 700)} |"
        )
    curl = by.get(("large", "curl (one at a time)"))
    curl_fsync = by.get(("large", "curl, then fsync"))
    for bus in ("embedded", "kafka"):
        ours = by.get(("large", f"lakeferry ({bus})"))
        if curl and curl_fsync and ours:
            to_fsync = ours.mb_per_s / curl_fsync.mb_per_s
            to_curl = ours.mb_per_s / curl.mb_per_s
            rows.append(
                f"| large files ({bus}): ≥ 0.9 × (curl, then fsync) and ≥ 0.7 × curl MB/s | "
                f"{to_fsync:.2f} × and {to_curl:.2f} × ({ours.mb_per_s:,.0f} vs "
                f"{curl_fsync.mb_per_s:,.0f} and {curl.mb_per_s:,.0f} MB/s) | "
                f"{_met(to_fsync >= 0.9 and to_curl >= 0.7)} |"
            )
    ours_anon = [r for r in results if r.tool.startswith("lakeferry") and r.peak_anon_mib]
    if ours_anon:
        worst = max(ours_anon, key=lambda r: r.peak_anon_mib)
        rows.append(
            f"| peak anonymous memory ≤ 100 MiB per process | {worst.peak_anon_mib:.0f} MiB at "
            f"most ({worst.scenario}, {worst.tool}) | {_met(worst.peak_anon_mib <= 100)} |"
        )
    for bus in ("embedded", "kafka"):
        lat = by.get(("latency", f"lakeferry ({bus})"))
        p95 = lat.pct(95) if lat else None
        if p95 is not None:
            rows.append(
                f"| p95 end to end ≤ 0.5 s at half load ({bus}) | {p95:.2f} s | "
                f"{_met(p95 <= 0.5)} |"
            )
    azure = by.get(("azure", "lakeferry (event hub → onelake)"))
    local = by.get(("small", "lakeferry (embedded)"))
    if azure and local and azure.files and local.files:
        ours_ms = azure.cpu_seconds / azure.files * 1000
        local_ms = local.cpu_seconds / local.files * 1000
        rows.append(
            f"| Azure path: lakeferry CPU per small file ≤ 2 × the local path's | "
            f"{ours_ms:.2f} ms vs {local_ms:.2f} ms ({ours_ms / local_ms:.1f} ×) | "
            f"{'met' if ours_ms <= 2 * local_ms else 'not met'} |"
        )
    azure_lat = by.get(("azure latency", "lakeferry (event hub → onelake)"))
    azure_p95 = azure_lat.pct(95) if azure_lat else None
    if azure_p95 is not None:
        rows.append(
            f"| Azure path: p95 end to end ≤ 1 s at half its maximum rate | {azure_p95:.2f} s | "
            f"{'met' if azure_p95 <= 1 else 'not met'} |"
        )
    for bus in ("embedded", "kafka"):
        soak = by.get(("soak", f"lakeferry ({bus})"))
        if soak and soak.memory:
            figures = {name: soak_figures(soak, name) for name in soak.memory[-1]["anon"]}
            peak = max(f["peak_all"] for f in figures.values())
            growth = max(f["growth"] for f in figures.values())
            rows.append(
                f"| anonymous memory ≤ 100 MiB per process, flat within 10 % over the soak "
                f"({bus}) | peak {peak:.0f} MiB, growth {growth:+.1%} at most | "
                f"{'met' if peak <= 100 and growth <= 0.10 else 'not met'} |"
            )
    for r in results:
        base = alone_rate(results, r)
        if r.scenario.startswith("mixed") and not r.error and base:
            ratio = r.files_per_s / base
            rows.append(
                f"| {r.scenario}, {r.tool.removeprefix('lakeferry ')}: the healthy origin ≥ 0.8 × "
                f"its files/s alone | {ratio:.2f} × ({r.files_per_s:,.0f} vs "
                f"{base:,.0f}) | {_met(ratio >= 0.8)} |"
            )
        if r.scenario == "throttling origin" and not r.error:
            limit, mean = r.extra["limit"], r.extra.get("mean_requests", 0.0)
            few = r.extra["throttled"] <= 0.05 * r.files
            rows.append(
                f"| throttling origin, {r.tool.removeprefix('lakeferry ')}: concurrency within "
                f"20 % of its limit, 429s ≤ 5 % of files | {mean:.1f} of {limit:.0f} requests "
                f"at once (the origin counted {r.extra['mean_concurrency']:.1f}), "
                f"{r.extra['throttled']:.0f} 429s for {r.files:,} files | "
                f"{_met(abs(mean - limit) <= 0.2 * limit and few)} |"
            )
        if r.scenario == "backfill" and not r.error:
            with_p95, alone_p95 = r.pct(95) or 0.0, r.extra["alone_p95"]
            landed = r.extra["backfill_landed"]
            rows.append(
                f"| backfill, {r.tool.removeprefix('lakeferry ')}: live p95 ≤ 2 × its figure "
                f"without the backfill, and the backfill progresses | {with_p95:.2f} s vs "
                f"{alone_p95:.2f} s ({with_p95 / max(alone_p95, 1e-9):.2f} ×), {landed:,.0f} "
                f"backfill files landed | {_met(with_p95 <= 2 * alone_p95 and landed > 0)} |"
            )
    for bus in ("embedded", "kafka"):
        retry = by.get(("retry", f"lakeferry ({bus})"))
        if retry and retry.rung_lateness:
            worst_p95 = max(v.get("p95", 0.0) for v in retry.rung_lateness.values())
            rows.append(
                f"| retry lateness p95 ≤ 100 ms on each rung ({bus}) | worst rung "
                f"{worst_p95 * 1000:.0f} ms | {_met(worst_p95 <= 0.1)} |"
            )
    return rows


def _raise(exc: BaseException) -> Result:
    raise exc


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 48) -> str:
    """``values`` as a line of block characters (each the mean of its share), scaled from 0 to
    the peak, so a flat curve reads flat."""
    if not values:
        return ""
    step = max(1, -(-len(values) // width))
    means = [statistics.fmean(values[i : i + step]) for i in range(0, len(values), step)]
    top = max(means) or 1.0
    return "".join(SPARKS[min(len(SPARKS) - 1, int(v / top * len(SPARKS)))] for v in means)


def alone(results: list[Result], tool: str) -> Result | None:
    """The small-file run of ``tool`` (the healthy origin alone)."""
    return next(
        (r for r in results if r.scenario == "small" and r.tool == tool and not r.error), None
    )


def alone_rate(results: list[Result], r: Result) -> float | None:
    """Files/s of the healthy origin alone for a mixed run ``r``: the small-file run of its
    own bench run (noted in ``r.extra`` when measured), else of these results."""
    if "alone_files_per_s" in r.extra:
        return r.extra["alone_files_per_s"]
    base = alone(results, r.tool)
    return base.files_per_s if base else None


def origin_lines(results: list[Result]) -> list[str]:
    mixed = [r for r in results if r.scenario.startswith("mixed")]
    throttle = [r for r in results if r.scenario == "throttling origin"]
    if not mixed and not throttle:
        return []
    lines = ["## origins", ""]
    if mixed:
        lines += [
            "The small files from nginx, with as many events for a second origin submitted "
            "first and interleaved: one that hangs every request, or answers 503 to every one.",
            "",
            "| scenario | tool | healthy files | files/s | ÷ alone (small) | troubled origin: "
            "downloads running at the end | tasks parked | tasks failed without a request |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in mixed:
            if r.error:
                lines.append(f"| {r.scenario} | {r.tool} | failed: {r.error} |" + " - |" * 5)
                continue
            base = alone_rate(results, r)
            ratio = f"{r.files_per_s / base:.2f}" if base else "-"
            lines.append(
                f"| {r.scenario} | {r.tool} | {r.files:,} | {r.files_per_s:,.0f} | {ratio} | "
                f"{r.extra.get('troubled_active', 0):.0f} | {r.extra.get('parked', 0):,.0f} | "
                f"{r.extra.get('not_tried', 0):,.0f} |"
            )
        lines.append("")
    if throttle:
        lines += [
            f"An origin that serves {THROTTLE_LIMIT} requests at once ({THROTTLE_DELAY * 1000:.0f}"
            " ms each) and answers 429 with `Retry-After: 1` beyond: lakeferry's requests to it "
            "at once (its `lakeferry_origin_active`, sampled every 0.1 s) and the origin's own "
            "count of requests in its handler (every 20 ms), the last tenth of the run (the queue "
            "running dry) left out. The origin (Python's threading HTTP server in the bench's "
            "process) counts a request only while its handler runs: its own accept and "
            "scheduling time under load is not in its count, so it sees fewer than lakeferry "
            "has in flight.",
            "",
            "| tool | files | files/s (the origin's most) | lakeferry's requests at once (the "
            "origin's limit) | the origin's count | 429s |",
            "|---|---|---|---|---|---|",
        ]
        for r in throttle:
            if r.error:
                lines.append(f"| {r.tool} | failed: {r.error} | - | - | - | - |")
                continue
            lines.append(
                f"| {r.tool} | {r.files:,} | {r.files_per_s:,.0f} "
                f"({r.extra['ideal_files_per_s']:.0f}) | "
                f"{r.extra.get('mean_requests', 0.0):.1f} ({r.extra['limit']:.0f}) | "
                f"{r.extra['mean_concurrency']:.1f} | {r.extra['throttled']:.0f} |"
            )
        lines.append("")
    return lines


def backfill_lines(results: list[Result]) -> list[str]:
    runs = [r for r in results if r.scenario == "backfill"]
    if not runs:
        return []
    lines = [
        "## backfill",
        "",
        "The latency load (small files through the spool, at half of its bus's small-file "
        "maximum) alone (the latency scenario's run, when it ran), then again once the "
        "backfill's events are all queued on the backfill lane's topic (`lakeferry submit "
        "--lane backfill`): the live files' latency in each phase, and the backfill files "
        "landed during the second.",
        "",
        "| tool | backfill queued | live files/s offered | live p95 alone | live p95 beside the "
        "backfill | ratio | backfill landed meanwhile (files/s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        if r.error:
            lines.append(f"| {r.tool} | failed: {r.error} |" + " - |" * 5)
            continue
        with_p95, alone_p95 = r.pct(95) or 0.0, r.extra["alone_p95"]
        ratio = with_p95 / alone_p95 if alone_p95 else float("inf")
        landed = r.extra["backfill_landed"]
        lines.append(
            f"| {r.tool} | {r.extra['queued']:,.0f} | {r.extra['rate']:.0f} | "
            f"{alone_p95:.2f} s | {with_p95:.2f} s | {ratio:.2f} | {landed:,.0f} "
            f"({landed / r.seconds:,.0f}) |"
        )
    lines.append("")
    return lines


def soak_figures(r: Result, process: str, kind: str = "anon") -> dict[str, float]:
    """Start, end and peak of one process's memory over a soak, after warm-up (the first
    fifth of the run, at most 5 minutes: tables, caches and pools fill), and ``growth``: the
    peak after warm-up over the start."""
    points = [(s["t"], s[kind][process]) for s in r.memory if process in s[kind]]
    if not points:
        return {}
    warm = min(300.0, points[-1][0] / 5)
    after = [v for t, v in points if t >= warm] or [points[-1][1]]
    start = after[0]
    return {
        "start": start,
        "end": after[-1],
        "peak": max(after),
        "peak_all": max(v for _, v in points),
        "growth": max(after) / start - 1 if start else 0.0,
    }


def soak_lines(soaks: list[Result]) -> list[str]:
    """The soak's memory curves: a table of figures per process and a sparkline of each."""
    lines: list[str] = []
    for r in soaks:
        if not lines:
            lines += [
                "## soak: memory over time",
                "",
                "Anonymous memory (heap, buffers: the target) and file-backed memory (mapped "
                "libraries such as deltalake's, shared and reclaimable) of each process, sampled "
                f"every {SOAK_SAMPLE_EVERY:g} s under the latency load with Delta maintenance "
                "on. Start and growth are taken after warm-up (the first fifth of the run, at "
                "most 5 minutes); growth = peak after warm-up ÷ start − 1; flat means ≤ 10 %.",
                "",
            ]
        if r.error:
            lines += [f"- {r.tool}: failed: {r.error}", ""]
            continue
        minutes = r.memory[-1]["t"] / 60 if r.memory else 0.0
        lines += [
            f"### {r.tool}: {r.files:,} files in {minutes:.1f} min, "
            f"{r.commits:,} inventory commits, p95 end to end {fmt(r.pct(95))} s",
            "",
            "| process | anon start MiB | anon end | anon peak | growth | file-backed end MiB "
            "| anon curve |",
            "|---|---|---|---|---|---|---|",
        ]
        processes = sorted({k for s in r.memory for k in s["anon"]})
        for name in processes:
            a = soak_figures(r, name)
            f = soak_figures(r, name, "file")
            curve = sparkline([s["anon"][name] for s in r.memory if name in s["anon"]])
            lines.append(
                f"| {name} | {a['start']:.0f} | {a['end']:.0f} | {a['peak_all']:.0f} | "
                f"{a['growth']:+.1%} | {f['end']:.0f} | `{curve}` |"
            )
        lines.append("")
    return lines


def elsewhere(r: Result) -> str:
    """CPU per file of the origin and the broker during a run."""
    if not r.cpu_elsewhere or not r.files:
        return "-"
    return ", ".join(f"{name} {v / r.files * 1000:.2f} ms" for name, v in r.cpu_elsewhere.items())


def write_report(
    results: list[Result],
    scale: Scale,
    quick: bool,
    out: Path,
    saved: Path = ROOT / "var" / "bench" / "results.json",
) -> None:
    """``out`` (markdown), its chart next to it, and the raw results in ``saved``."""
    out.write_text("\n".join(report_lines(results, scale, quick)))
    saved.write_text(
        json.dumps(
            {"quick": quick, "scale": asdict(scale), "results": [asdict(r) for r in results]},
            indent=1,
        )
    )
    chart([r for r in results if not r.error], out.with_suffix(".png"))


def report_lines(results: list[Result], scale: Scale, quick: bool) -> list[str]:
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by `make bench` (bench/bench.py); the analysis at the end is "
        "bench/analysis.md. Edit those, not this file. -->",
        "",
        f"Generated by `make bench{' QUICK=1' if quick else ''}` on {dt.date.today().isoformat()}: "
        f"{os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}. "
        "Origin: nginx on loopback; sink: local folder on the same disk (hard links from the "
        "cache); inventory: Delta table on the same disk. On Kafka each stage runs as its own "
        "process (ingest, download, upload, results); on the embedded bus one process runs all. "
        f"The http downloader's engine: {HTTP_ENGINE}.",
        "",
        f"Versions: {versions()}.",
        "",
        f"Scale: {scale.small:,} × 64 KiB, {scale.medium} × 16 MiB, {scale.large} × "
        f"{scale.large_size // MiB} MiB; latency load for {scale.latency_seconds:g} s at half "
        f"of each bus's small-file maximum; the old design polls every {scale.old_poll:g} s; "
        f"{scale.retry_events} always-failing downloads climb the ladder "
        f"{' → '.join(scale.retry_ladder)}; the soak lasts {scale.soak_seconds / 60:g} min."
        + (" Quick-mode figures are indicative only." if quick else ""),
        "",
    ]
    for scenario in ("small", "medium", "large", "latency", "azure", "azure latency"):
        rows = [r for r in results if r.scenario == scenario]
        if not rows:
            continue
        lines += [
            f"## {scenario}",
            "",
            "| tool | files | files/s | MB/s | p50 s | p95 s | p99 s | CPU per file | "
            "CPU per file elsewhere | peak RSS MiB | peak anon MiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if r.error:
                lines.append(f"| {r.tool} | failed: {r.error} |" + " - |" * 9)
                continue
            cpu = r.cpu_seconds / r.files if r.files and r.cpu_seconds else None
            rss = f"{r.peak_rss_mib:.0f}" if r.peak_rss_mib else "-"
            cpu_text = fmt(cpu * 1000, " ms") if cpu else "-"
            if len(r.cpu_by_process) > 1:
                cpu_text += (
                    " ("
                    + ", ".join(
                        f"{k} {v / r.files * 1000:.2f}" for k, v in r.cpu_by_process.items()
                    )
                    + ")"
                )
            if len(r.rss_by_process) > 1:
                rss += " (" + ", ".join(f"{k} {v:.0f}" for k, v in r.rss_by_process.items()) + ")"
            lines.append(
                f"| {r.tool} | {r.files:,} | {r.files_per_s:,.1f} | {r.mb_per_s:,.1f} | "
                f"{fmt(r.pct(50))} | {fmt(r.pct(95))} | {fmt(r.pct(99))} | "
                f"{cpu_text} | {elsewhere(r)} | {rss} | "
                f"{f'{r.peak_anon_mib:.0f}' if r.peak_anon_mib else '-'} |"
            )
        lines.append("")
    lines += origin_lines(results)
    lines += backfill_lines(results)
    lines += soak_lines([r for r in results if r.scenario == "soak"])
    retries = [r for r in results if r.scenario == "retry"]
    if retries:
        lines += [
            "## retry lateness",
            "",
            "| bus | rung | retries | p50 | p95 |",
            "|---|---|---|---|---|",
        ]
        for r in retries:
            if r.error:
                lines.append(f"| {r.tool} | failed: {r.error} | - | - | - |")
            for rung, figures in sorted(
                r.rung_lateness.items(), key=lambda kv: Duration.parse(kv[0].split("retry.")[-1])
            ):  # fmt: skip
                ms = {q: figures.get(q) for q in ("p50", "p95")}
                lines.append(
                    f"| {r.tool} | {rung} | "
                    f"{figures['count']:.0f} | "
                    + " | ".join("-" if v is None else f"{v * 1000:.0f} ms" for v in ms.values())
                    + " |"
                )
        lines += ["", "Lateness is interpolated inside histogram buckets, as Prometheus does.", ""]
    for r in results:
        if r.scenario.startswith("azure") and r.sink_requests and r.files:
            lines.append(
                f"- {r.scenario}: {r.sink_requests / r.files:.1f} requests to the DFS emulator "
                f"per file ({AZURE_SINK.get('api', 'the default')} API)"
            )
        if r.scenario.startswith("azure") and f"{SEGMENTS[0][0]} p50" in r.extra:
            spans = ", ".join(
                f"{name} {r.extra[f'{name} p50']:.2f} / {r.extra[f'{name} p95']:.2f} s"
                for name, _, _ in SEGMENTS
            )
            lines.append(f"- {r.scenario}: where the time goes, p50 / p95: {spans}")
        if r.scenario == "azure" and r.idle_cpu and r.files:
            lines.append(
                f"- azure: of lakeferry's CPU, {r.idle_cpu / r.files * 1000:.2f} ms per file is "
                "what the daemon spends idle over as long (measured before the burst: the event "
                "hub client's threads, the bench's metric scrapes); net of it, "
                f"{(r.cpu_seconds - r.idle_cpu) / r.files * 1000:.2f} ms per file"
            )
    if any(r.scenario.startswith("azure") and (r.sink_requests or r.idle_cpu) for r in results):
        lines.append("")
    ratios = []
    by = {(r.scenario, r.tool): r for r in results if not r.error}
    for scenario in ("small", "medium"):
        peer = by.get((scenario, "aria2c -j 50"))
        for bus in ("embedded", "kafka"):
            ours = by.get((scenario, f"lakeferry ({bus})"))
            if peer and ours:
                ratios.append(
                    f"- {scenario}: lakeferry ({bus}) ÷ aria2c files/s = "
                    f"{ours.files_per_s / peer.files_per_s:.2f}"
                )
    curl = by.get(("large", "curl (one at a time)"))
    for bus in ("embedded", "kafka"):
        ours = by.get(("large", f"lakeferry ({bus})"))
        if curl and ours:
            ratios.append(
                f"- large: lakeferry ({bus}) ÷ curl MB/s = {ours.mb_per_s / curl.mb_per_s:.2f}"
            )
        durable = by.get(("large", "curl, then fsync"))
        if durable and ours:
            ratios.append(
                f"- large: lakeferry ({bus}) ÷ (curl, then fsync) MB/s = "
                f"{ours.mb_per_s / durable.mb_per_s:.2f}"
            )
    old = next((r for r in results if r.tool.startswith("old design") and not r.error), None)
    for bus in ("embedded", "kafka"):
        ours = by.get(("latency", f"lakeferry ({bus})"))
        ours_p95, old_p95 = (ours.pct(95) if ours else None), (old.pct(95) if old else None)
        if ours_p95 and old_p95:
            ratios.append(
                f"- latency p95: old design {old_p95:.1f} s vs lakeferry ({bus}) {ours_p95:.2f} s "
                f"({old_p95 / ours_p95:.0f}× sooner)"
            )
    lines += ["## Ratios", "", *ratios, ""]
    lines += [
        "## Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
        *target_rows(results),
        "",
        "![throughput and latency](benchmarks.png)",
        "",
    ]
    failed = [r for r in results if r.error]
    if failed:
        lines += ["## Failed runs", ""]
        lines += [f"- {r.scenario}, {r.tool}: {r.error}" for r in failed]
        lines += ["", "Ratios and targets leave failed runs out.", ""]
    analysis = ROOT / "bench" / "analysis.md"
    if analysis.exists():
        lines += [analysis.read_text().rstrip(), ""]
    return lines


def chart(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(17, 5))
    small = [r for r in results if r.scenario == "small"]
    left.barh([r.tool for r in small], [r.files_per_s for r in small])
    left.set_xlabel("files/s")
    left.set_title("small files (64 KiB)")
    big = [r for r in results if r.scenario in ("medium", "large")]
    middle.barh([f"{r.scenario}: {r.tool}" for r in big], [r.mb_per_s for r in big])
    middle.set_xlabel("MB/s")
    middle.set_title("medium (16 MiB) and large (1 GiB) files")
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
    global HTTP_ENGINE, SETTLE_SECONDS
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--buses", default="embedded,kafka")
    parser.add_argument(
        "--scenarios",
        help="comma-separated (default: small,medium,large,latency,mixed,throttle,backfill,azure,"
        "retry,soak; a quick run "
        "leaves soak out unless named)",
    )
    parser.add_argument(
        "--soak-minutes",
        type=float,
        help="length of the soak (default: 30, with --quick 2)",
    )
    parser.add_argument(
        "--soak-rate",
        type=float,
        help="events/s of the soak (default: half of each bus's small-file maximum in this run, "
        "or 50 when small is not run)",
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        help="events/s of the latency load (default: half of each bus's small-file maximum in "
        "this run, or 50 when small is not run; the old design gets the fastest bus's)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="attach py-spy to lakeferry; print where time goes"
    )
    parser.add_argument(
        "--out",
        help="the report (default: docs/benchmarks.md for a full run; a quick run's indicative "
        "figures go to var/bench/benchmarks-quick.md, so that they never replace the full ones)",
    )
    parser.add_argument(
        "--http-engine",
        choices=("httpx", "curl"),
        default=HTTP_ENGINE,
        help="[downloaders.http] engine for every lakeferry run (default: %(default)s)",
    )
    parser.add_argument(
        "--onelake-api",
        choices=("blob", "dfs"),
        help="[sink] api of the Azure scenario's onelake sink (default: the sink's default)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write the report again from var/bench/results.json (after editing analysis.md)",
    )
    args = parser.parse_args()
    if args.out is None:
        quick_out = ROOT / "var" / "bench" / "benchmarks-quick.md"
        args.out = str(quick_out if args.quick else ROOT / "docs" / "benchmarks.md")
    HTTP_ENGINE = args.http_engine
    if args.onelake_api:
        AZURE_SINK["api"] = args.onelake_api
    if args.report_only:
        saved = json.loads((ROOT / "var" / "bench" / "results.json").read_text())
        write_report(
            [Result(**r) for r in saved["results"]], Scale(**saved["scale"]), saved["quick"],
            Path(args.out),
        )  # fmt: skip
        return 0
    scale = QUICK if args.quick else FULL
    SETTLE_SECONDS = 0.0 if args.quick else SETTLE_SECONDS
    if args.soak_minutes is not None:
        scale = Scale(**{**asdict(scale), "soak_seconds": args.soak_minutes * 60})
    if args.scenarios is None:
        args.scenarios = "small,medium,large,latency,mixed,throttle,backfill,azure,retry" + (
            "" if args.quick else ",soak"
        )
    work = ROOT / "var" / "bench"
    plan = make_files(work / "www", scale)
    nginx = Nginx(work / "www", work / "nginx", probe=plan["small"][0][0])
    ELSEWHERE["nginx"] = nginx.worker_pid()
    buses = [b for b in args.buses.split(",") if b]
    scenarios = [s for s in args.scenarios.split(",") if s]
    broker = None
    results: list[Result] = []

    def measure(scenario: str, tool: str, run: Callable[[], Result]) -> None:
        started = time.monotonic()
        results.append(attempt(scenario, tool, run))
        skip = ("latencies", "memory")
        print(json.dumps({k: v for k, v in asdict(results[-1]).items() if k not in skip}))
        print(f"[{scenario}, {tool}: {time.monotonic() - started:.0f} s]", file=sys.stderr)

    def bootstrap(bus: str) -> str | None:
        return broker.bootstrap if bus == "kafka" and broker else None

    try:
        if "kafka" in buses:
            kafka_tool.ensure_dist(quiet=True)
            broker = kafka_tool.start(harness.free_port(), workdir=work / "kafka")
            assert broker.pid is not None
            ELSEWHERE["kafka broker"] = broker.pid
        for scenario in ("small", "medium", "large"):
            if scenario not in scenarios:
                continue
            urls = [(nginx.url(name), size) for name, size in plan[scenario]]
            # The bytes of medium and large runs go once measured: a full run would otherwise
            # keep ~50 GB until its end (and stall on a full disk: lakeferry waits in place).
            bulky = scenario != "small"
            if scenario in ("small", "medium"):
                measure(
                    scenario, "aria2c -j 50", partial(run_aria2c, scenario, urls, work / "aria2c")
                )
                if bulky:
                    drop_bytes(work / "aria2c")
            else:
                curl = partial(run_curl, scenario, urls, work / "curl")
                measure(scenario, "curl (one at a time)", curl)
                measure(scenario, "curl, then fsync", partial(curl, fsync=True))
                drop_bytes(work / "curl")
            for bus in buses:
                measure(scenario, f"lakeferry ({bus})", partial(
                    run_lakeferry, scenario, bus, urls, work / f"lf-{scenario}-{bus}",
                    bootstrap(bus), args.profile,
                ))  # fmt: skip
                if bulky:
                    drop_bytes(work / f"lf-{scenario}-{bus}" / "sink")
                    drop_bytes(work / f"lf-{scenario}-{bus}" / "cache")
        small_max = max(
            (
                r.files_per_s
                for r in results
                if r.scenario == "small" and r.tool.startswith("lakeferry") and not r.error
            ),
            default=100.0,
        )
        rate = max(1.0, small_max / 2)

        def half_load(bus: str, given: float | None) -> float:
            """``given``, else half of the small-file maximum of lakeferry on ``bus`` in this
            run (half load is each bus's own), else of the fastest."""
            if given:
                return given
            mine = [
                r.files_per_s
                for r in results
                if r.scenario == "small" and r.tool == f"lakeferry ({bus})" and not r.error
            ]
            return max(1.0, mine[0] / 2) if mine else rate

        urls = [(nginx.url(name), size) for name, size in plan["small"]]
        if "mixed" in scenarios:
            for trouble in ("hang", "503"):
                for bus in buses:
                    measure(f"mixed ({trouble})", f"lakeferry ({bus})", partial(
                        run_mixed, bus, urls, trouble, work / f"mixed-{trouble}-{bus}",
                        bootstrap(bus), args.profile,
                    ))  # fmt: skip
                    base = alone(results, results[-1].tool)
                    if base is not None:  # kept with it: reports may merge runs
                        results[-1].extra["alone_files_per_s"] = base.files_per_s
        if "throttle" in scenarios:
            for bus in buses:
                measure("throttling origin", f"lakeferry ({bus})", partial(
                    run_throttle, bus, scale.throttle, work / f"throttle-{bus}", bootstrap(bus)
                ))  # fmt: skip
        latency_rate = args.latency_rate or rate
        if "latency" in scenarios:
            for bus in buses:
                measure("latency", f"lakeferry ({bus})", partial(
                    run_latency, bus, urls, half_load(bus, args.latency_rate),
                    scale.latency_seconds, work / f"lat-{bus}", bootstrap(bus),
                ))  # fmt: skip
            measure("latency", "old design", partial(
                run_old_design, urls, latency_rate, scale.latency_seconds, scale.old_poll, work / "old"
            ))  # fmt: skip
        if "backfill" in scenarios:
            for bus in buses:
                by_itself = [  # the same load alone, measured by this run's latency scenario
                    r.latencies for r in results
                    if r.scenario == "latency" and r.tool == f"lakeferry ({bus})" and not r.error
                ]  # fmt: skip
                measure("backfill", f"lakeferry ({bus})", partial(
                    run_backfill, bus, urls, half_load(bus, args.latency_rate),
                    scale.latency_seconds, scale.backfill, work / f"backfill-{bus}", bootstrap(bus),
                    by_itself[0] if by_itself else None,
                ))  # fmt: skip
        if "azure" in scenarios:
            urls = [(nginx.url(name), size) for name, size in plan["small"]]
            started = time.monotonic()
            try:
                azure = run_azure(
                    urls, scale.azure, scale.latency_seconds, work / "azure", args.profile,
                    idle_seconds=2.0 if args.quick else 5.0,
                )  # fmt: skip
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                results.append(
                    attempt("azure", "lakeferry (event hub → onelake)", partial(_raise, exc))
                )
            else:
                for r in azure:
                    results.append(r)
                    print(json.dumps({k: v for k, v in asdict(r).items() if k != "latencies"}))
            print(f"[azure: {time.monotonic() - started:.0f} s]", file=sys.stderr)
        if "soak" in scenarios:
            for bus in buses:
                measure("soak", f"lakeferry ({bus})", partial(
                    run_soak, bus, urls, half_load(bus, args.soak_rate), scale.soak_seconds,
                    work / f"soak-{bus}", bootstrap(bus),
                ))  # fmt: skip
        if "retry" in scenarios:
            for bus in buses:
                measure("retry", f"lakeferry ({bus})", partial(
                    run_retry, bus, scale, work / f"retry-{bus}", bootstrap(bus), nginx
                ))  # fmt: skip
    finally:
        nginx.stop()
        if broker is not None:
            broker.stop()
    write_report(results, scale, args.quick, Path(args.out))
    print(Path(args.out).read_text())
    failed = [f"{r.tool} in {r.scenario}: {r.error}" for r in results if r.error]
    for line in failed:
        print(f"bench: failed: {line}", file=sys.stderr)
    # A peer that fails is a finding of the report; lakeferry failing is the benchmark failing.
    return 1 if any(r.error and r.tool.startswith("lakeferry") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
