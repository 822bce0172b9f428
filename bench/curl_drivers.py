"""Two ways to drive libcurl's multi handle from trio, measured bare (no download logic).

    .venv/bin/python bench/curl_drivers.py [--files 1500] [--rounds 4]

- ``thread``: the curl engine's driver (:class:`lakeferry_http.curl_multi.MultiThread`): one
  worker thread owns the multi handle, trio hands transfers over and gets batches back;
- ``trio``: a prototype on trio's own I/O (libcurl's socket callback starts a task per socket
  that waits with ``wait_readable``/``wait_writable``, a timer task serves libcurl's timer).

Both fetch the same files from nginx, 50 at once, hold each body and hash it; the table is the
median of the rounds after the first. The engine uses the thread: the trio prototype needs
tasks as long-lived as the multi handle, which a component may not start (they would need a
nursery of the daemon's), and it is not faster (docs/design.md, docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import pycurl
import trio

from lakeferry.api import NetGuard
from lakeferry_http.curl_multi import EasyOptions, MultiThread, Transfer

if TYPE_CHECKING:
    from bench import bench  # the checker reads bench/bench.py as bench.bench
else:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench  # the nginx origin of make bench

Files = list[tuple[str, str]]
"""(URL, sha256) of each file."""


class TrioDrivenMulti:
    """The prototype: libcurl's multi-socket API on trio's I/O, tasks in ``nursery``."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.multi = pycurl.CurlMulti()
        self.multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self.multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        self.watchers: dict[int, list[trio.CancelScope]] = {}
        self.deadline = math.inf
        self.timer_changed = trio.Event()
        self.waiting: dict[pycurl.Curl, trio.Event] = {}
        self.spare: list[pycurl.Curl] = []
        nursery.start_soon(self._timer)

    def _on_socket(self, what: int, fd: int, multi: object, socketp: object) -> None:
        for scope in self.watchers.pop(fd, []):
            scope.cancel()
        if what == pycurl.POLL_REMOVE:
            trio.lowlevel.notify_closing(fd)  # libcurl closes it next
            return
        scopes = []
        for flag, wait, action in (
            (pycurl.POLL_IN, trio.lowlevel.wait_readable, pycurl.CSELECT_IN),
            (pycurl.POLL_OUT, trio.lowlevel.wait_writable, pycurl.CSELECT_OUT),
        ):
            if what & flag:
                scope = trio.CancelScope()
                scopes.append(scope)
                self.nursery.start_soon(self._watch, fd, scope, wait, action)
        self.watchers[fd] = scopes

    async def _watch(
        self,
        fd: int,
        scope: trio.CancelScope,
        wait: Callable[[int], Awaitable[None]],
        action: int,
    ) -> None:
        with scope:
            while True:
                try:
                    await wait(fd)
                except trio.ClosedResourceError:
                    return
                self.multi.socket_action(fd, action)
                self._reap()

    def _on_timer(self, timeout_ms: int) -> None:
        self.deadline = math.inf if timeout_ms < 0 else trio.current_time() + timeout_ms / 1000
        self.timer_changed.set()

    async def _timer(self) -> None:
        while True:
            self.timer_changed = trio.Event()
            with trio.move_on_at(self.deadline) as scope:
                await self.timer_changed.wait()
            if scope.cancelled_caught:
                self.deadline = math.inf
                self.multi.socket_action(pycurl.SOCKET_TIMEOUT, 0)
                self._reap()

    def _reap(self) -> None:
        while True:
            queued, done, failed = self.multi.info_read()
            for easy in [*done, *(easy for easy, _, _ in failed)]:
                self.multi.remove_handle(easy)
                self.spare.append(easy)
                self.waiting.pop(easy).set()
            if not queued:
                return

    async def get(self, url: str) -> bytes:
        easy = self.spare.pop() if self.spare else pycurl.Curl()
        chunks: list[bytes] = []
        easy.setopt(pycurl.URL, url)
        easy.setopt(pycurl.WRITEFUNCTION, chunks.append)
        easy.setopt(pycurl.NOSIGNAL, 1)
        easy.setopt(pycurl.BUFFERSIZE, 128 * 1024)
        done = self.waiting[easy] = trio.Event()
        self.multi.add_handle(easy)
        await done.wait()
        return b"".join(chunks)


async def trio_driven(files: Files, concurrency: int) -> None:
    limiter = trio.CapacityLimiter(concurrency)
    async with trio.open_nursery() as nursery:
        multi = TrioDrivenMulti(nursery)

        async def one(url: str, sha256: str) -> None:
            async with limiter:
                body = await multi.get(url)
            assert hashlib.sha256(body).hexdigest() == sha256, url

        async with trio.open_nursery() as fetches:
            for url, sha256 in files:
                fetches.start_soon(one, url, sha256)
        nursery.cancel_scope.cancel(reason="every file fetched")


async def thread_driven(files: Files, concurrency: int) -> None:
    limiter = trio.CapacityLimiter(concurrency)
    guard = NetGuard(allow_networks=["127.0.0.1/32"])
    multi = MultiThread(EasyOptions(10.0, True, 64), guard, logging.getLogger("bench"))
    loopback = [ipaddress.ip_address("127.0.0.1")]

    async def one(url: str, sha256: str) -> None:
        async with limiter:
            transfer = Transfer(url, [], "127.0.0.1", 0, loopback, [])
            multi.submit(transfer)
            while transfer.outcome is None:
                event = transfer.event = trio.Event()
                await event.wait()
        assert hashlib.sha256(b"".join(transfer.inbox)).hexdigest() == sha256, url

    async with trio.open_nursery() as fetches:
        for url, sha256 in files:
            fetches.start_soon(one, url, sha256)
    thread = multi.close()
    if thread is not None:
        await trio.to_thread.run_sync(thread.join)
    multi.release()


DRIVERS = {"thread": thread_driven, "trio": trio_driven}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--files", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="lakeferry-drivers-"))
    names = [f"d/{i:05d}.bin" for i in range(args.files)]
    base = os.urandom(64 * 1024)
    (work / "www" / "d").mkdir(parents=True)
    for name in names:
        (work / "www" / name).write_bytes(name.encode().ljust(64, b"\0") + base[64:])
    nginx = bench.Nginx(work / "www", work / "nginx", probe=names[0])
    try:
        files = [
            (nginx.url(n), hashlib.sha256((work / "www" / n).read_bytes()).hexdigest())
            for n in names
        ]
        seen: dict[str, list[tuple[float, float]]] = {}
        for round_ in range(args.rounds):
            for name, driver in DRIVERS.items():
                cpu, wall = os.times(), time.perf_counter()
                trio.run(partial(driver, files, args.concurrency))
                after, seconds = os.times(), time.perf_counter() - wall
                used = after.user + after.system - cpu.user - cpu.system
                rate, per_file = len(files) / seconds, 1000 * used / len(files)
                print(f"{name:6} {rate:6.0f} files/s {per_file:.3f} ms CPU/file", file=sys.stderr)
                if round_:  # the first round warms up
                    seen.setdefault(name, []).append((rate, per_file))
        print("| driver | files/s (median) | CPU per file |\n|---|---|---|")
        for name, runs in seen.items():
            rate, per_file = sorted(runs)[len(runs) // 2]
            print(f"| {name} | {rate:,.0f} | {per_file:.3f} ms |")
    finally:
        nginx.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
