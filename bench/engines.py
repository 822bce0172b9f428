"""The ``http`` downloader's engines side by side: httpx and curl on the same small files.

    .venv/bin/python bench/engines.py [--files 1500] [--size 64KiB] [--concurrency 50] [--runs 3]

One nginx origin on loopback (as ``make bench`` sets it up) serves ``--files`` files of
``--size``; each engine downloads all of them, ``--concurrency`` at once, the way the download
stage does (reserve in the cache, write through the quota-bounded writer, hash, commit) into
a real ``localfs`` cache, in this process. Engines alternate run by run (each after a ``sync``,
as in ``make bench``); the table shows the median run of each: files/s, CPU per file of this
process (every thread: trio's, libcurl's worker, the cache's writer threads) and of the nginx
worker. The same again into an in-memory hashing writer instead of the cache: the engine's own
cost.

It needs nginx (``make system-deps``); the numbers are for docs/benchmarks.md ("The http
downloader's engines").
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import trio

from lakeferry.api import DownloadTask, Event, PluginContext
from lakeferry.stages.bounded import BoundedWriter
from lakeferry.testing import ChunkRecorder
from lakeferry.units import ByteSize, dec_hook
from lakeferry_http import HttpDownloader, HttpDownloaderSettings
from lakeferry_http.curl_engine import CurlEngine
from lakeferry_localfs import LocalFsCache, LocalFsCacheSettings

if TYPE_CHECKING:
    from bench import bench  # the checker reads bench/bench.py as bench.bench
else:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench  # the nginx origin of make bench

ENGINES = ("httpx", "curl")
NOW = dt.datetime.now(dt.UTC)


@dataclass
class Run:
    engine: str
    into: str
    files: int
    seconds: float
    cpu: float
    """CPU seconds of this process."""
    trio_cpu: float
    """... of which the trio thread's."""
    curl_cpu: float
    """... of which libcurl's worker thread's (curl engine)."""
    origin_cpu: float
    """CPU seconds of the nginx worker."""

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds

    @property
    def ms_per_file(self) -> float:
        return 1000 * self.cpu / self.files

    def split(self) -> str:
        """The CPU per file by thread: trio's, libcurl's, the others (the cache's writers)."""
        per_file = [1000 * t / self.files for t in (self.trio_cpu, self.curl_cpu)]
        parts = [f"trio {per_file[0]:.2f}"]
        if self.curl_cpu:
            parts.append(f"curl {per_file[1]:.2f}")
        others = self.ms_per_file - sum(per_file)
        if self.into == "cache":
            parts.append(f"cache {others:.2f}")
        return ", ".join(parts)

    @property
    def origin_ms_per_file(self) -> float:
        return 1000 * self.origin_cpu / self.files


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    times = os.times()
    return times.user + times.system


async def fetch_all(
    engine: str,
    urls: list[tuple[str, int, str]],
    concurrency: int,
    into: str,
    workdir: Path,
) -> tuple[float, float, float]:
    """Download every URL; the seconds it took, the CPU seconds of the trio thread and of
    libcurl's worker. Checks every file's sha256."""
    context = PluginContext(state_dir=workdir, logger=logging.getLogger("bench.engines"))
    settings = msgspec.convert(
        {"engine": engine, "allow_networks": ["127.0.0.1/32"]},
        HttpDownloaderSettings,
        dec_hook=dec_hook,
    )
    downloader = HttpDownloader(settings, context)
    cache = LocalFsCache(
        LocalFsCacheSettings(path=str(workdir / "cache"), quota=ByteSize(64 * 2**30)), context
    )
    limiter = trio.CapacityLimiter(concurrency)

    async def one(index: int, url: str, size: int, sha256: str) -> None:
        async with limiter:
            task = DownloadTask(event=Event(id=f"f{index}", url=url, size=size), received_at=NOW)
            if into == "memory":
                out = ChunkRecorder()
                await downloader.fetch(task, out)
                assert out.hexdigest() == sha256, url
                return
            async with cache.reserve(size) as reservation:
                pending = await cache.create(task.event.id)
                try:
                    await downloader.fetch(task, BoundedWriter(pending, reservation, size))
                    await pending.commit(expected_sha256=sha256, expected_size=size)
                except BaseException:
                    with trio.CancelScope(shield=True):
                        await pending.abort()
                    raise

    started, trio_cpu = time.perf_counter(), time.thread_time()
    try:
        async with trio.open_nursery() as nursery:
            for index, (url, size, sha256) in enumerate(urls):
                nursery.start_soon(one, index, url, size, sha256)
        seconds, trio_cpu = time.perf_counter() - started, time.thread_time() - trio_cpu
    finally:
        await downloader.aclose()
        await cache.aclose()
    curl_cpu = 0.0
    if isinstance(downloader.engine, CurlEngine):
        curl_cpu = downloader.engine.multi.cpu_seconds
    return seconds, trio_cpu, curl_cpu


def measure(
    engine: str,
    urls: list[tuple[str, int, str]],
    concurrency: int,
    into: str,
    nginx_pid: int,
    scratch: Path,
) -> Run:
    """One run into a new folder under ``scratch``. The folders are deleted at the end of the
    benchmark, not after each run: on ext4 without a journal (this VM's disk) creating a file
    costs more the more inodes were freed near it in the last minute or more (the allocator
    steps over each), and the pipeline frees none of the cache's (the sink links them)."""
    bench.settle()  # the previous run's files written back first, not during this one
    tmp = Path(tempfile.mkdtemp(prefix="run-", dir=scratch))
    cpu, origin = self_cpu(), process_cpu(nginx_pid)
    seconds, trio_cpu, curl_cpu = trio.run(fetch_all, engine, urls, concurrency, into, tmp)
    cpu, origin = self_cpu() - cpu, process_cpu(nginx_pid) - origin
    return Run(engine, into, len(urls), seconds, cpu, trio_cpu, curl_cpu, origin)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--files", type=int, default=1500)
    parser.add_argument("--size", type=ByteSize.parse, default=ByteSize(64 * 1024))
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3, help="runs per engine (median shown)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the origin's files")
    parser.add_argument("--engine", choices=ENGINES, action="append", help="default: both")
    parser.add_argument(
        "--into", choices=("cache", "memory"), action="append", help="default: both, in turn"
    )
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="lakeferry-engines-www-"))
    www = work / "www"
    names = [f"engines/{i:06d}.bin" for i in range(args.files)]
    make_www(www, names, args.size)
    nginx = bench.Nginx(www, work / "nginx", probe=names[0])
    scratch = Path(tempfile.mkdtemp(prefix="lakeferry-engines-"))
    try:
        urls = [(nginx.url(name), args.size, sha256_file(www / name)) for name in names]
        pid = nginx.worker_pid()
        engines = args.engine or ENGINES
        for engine in engines:  # warm-up: imports, the page cache, nginx's open files
            measure(engine, urls[:200], args.concurrency, "cache", pid, scratch)
        results: list[Run] = []
        for into in args.into or ("cache", "memory"):
            for _ in range(args.runs):
                for engine in engines:
                    run = measure(engine, urls, args.concurrency, into, pid, scratch)
                    results.append(run)
                    print(
                        f"{into:6} {engine:5} {run.files_per_s:7.0f} files/s "
                        f"{run.ms_per_file:6.3f} ms CPU/file ({run.split()}; "
                        f"nginx {run.origin_ms_per_file:.3f})",
                        file=sys.stderr,
                    )
        print(report(results, args))
    finally:
        nginx.stop()
        shutil.rmtree(scratch, ignore_errors=True)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def make_www(www: Path, names: list[str], size: int) -> None:
    (www / names[0]).parent.mkdir(parents=True, exist_ok=True)
    base = os.urandom(size)
    for name in names:
        path = www / name
        if not (path.exists() and path.stat().st_size == size):
            path.write_bytes(name.encode().ljust(64, b"\0") + base[64:])


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def median_run(results: list[Run], engine: str, into: str) -> Run:
    runs = sorted((r for r in results if (r.engine, r.into) == (engine, into)),
                  key=lambda r: r.files_per_s)  # fmt: skip
    return runs[len(runs) // 2]


def rate(files_per_s: float) -> str:
    return f"{files_per_s:,.0f}" if files_per_s >= 100 else f"{files_per_s:.2f}"


def report(results: list[Run], args: argparse.Namespace) -> str:
    size = f"{args.size // 2**20} MiB" if args.size >= 2**20 else f"{args.size // 1024} KiB"
    lines = [
        f"{args.files} × {size}, {args.concurrency} at once, "
        f"median of {args.runs} runs per engine ({os.cpu_count()} cores):",
        "",
        "| engine | into | files/s (range) | MB/s | CPU per file | by thread | nginx |",
        "|---|---|---|---|---|---|---|",
    ]
    engines = args.engine or ENGINES
    for into in args.into or ("cache", "memory"):
        for engine in engines:
            run = median_run(results, engine, into)
            spread = [r.files_per_s for r in results if (r.engine, r.into) == (engine, into)]
            lines.append(
                f"| {engine} | {'localfs cache' if into == 'cache' else 'memory (hash only)'} "
                f"| {rate(run.files_per_s)} ({rate(min(spread))}–{rate(max(spread))}) "
                f"| {run.files_per_s * args.size / 1e6:,.0f} "
                f"| {run.ms_per_file:.2f} ms | {run.split()} | {run.origin_ms_per_file:.2f} ms |"
            )
    for into in args.into or ("cache", "memory"):
        if len(engines) < 2:
            break
        httpx, curl = median_run(results, "httpx", into), median_run(results, "curl", into)
        lines.append(
            f"\ncurl / httpx into {into}: {curl.files_per_s / httpx.files_per_s:.1f}× the "
            f"files/s at {curl.ms_per_file / httpx.ms_per_file:.2f}× the CPU per file"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
