"""Azurite (Microsoft's Azure Storage emulator, from npm) for lakeferry's tests and demo.

Only the Blob service is started: the Event Hubs checkpoint store and Delta tables in emulator
mode need nothing else. ``ensure_installed()`` runs ``npm ci`` here when ``node_modules`` is
missing or older than ``package-lock.json``; ``start(port, workdir)`` runs ``azurite-blob`` with
``--disableTelemetry --skipApiVersionCheck`` on 127.0.0.1 and returns once it accepts
connections. Also a script: ``python tools/azurite/azurite.py up|down [--port 10000]``.

What Azurite does not cover: the ADLS Gen2 DFS endpoint (lakeferry's own emulator does) and
Event Hubs (likewise).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = HERE / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
# Azurite's well-known development account key (public, documented by Microsoft).
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
START_TIMEOUT = 60.0


class AzuriteError(Exception):
    """Azurite cannot be installed or started here."""


@dataclass
class Azurite:
    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def blob_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={self.blob_url};"
        )

    def stop(self) -> None:
        if self.process is None:
            stop(self.workdir)
            return
        # Our own child: wait on it (a zombie would look alive to stop()'s kill(pid, 0)).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        (self.workdir / "azurite.pid").unlink(missing_ok=True)


def ensure_installed(*, quiet: bool = False) -> Path:
    """``npm ci`` when needed, once at a time: test workers of one checkout start together, and
    two ``npm ci`` in one folder remove each other's files (ENOTEMPTY, seen on a fresh clone)."""
    import fcntl

    lock = HERE / "package-lock.json"
    stamp = HERE / "node_modules" / ".lakeferry-installed"

    def installed() -> bool:
        return BIN.exists() and stamp.exists() and stamp.stat().st_mtime >= lock.stat().st_mtime

    if installed():
        return BIN
    with (HERE / ".install.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # released when the file closes
        if installed():  # another process installed it while this one waited
            return BIN
        return _npm_ci(quiet=quiet)


def _npm_ci(*, quiet: bool) -> Path:
    stamp = HERE / "node_modules" / ".lakeferry-installed"
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise AzuriteError(
            "Node.js and npm are required to run Azurite: apt-get install nodejs npm"
        )
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=HERE,
        capture_output=quiet,
        text=True,
    )
    if result.returncode != 0:
        raise AzuriteError(f"npm ci failed in {HERE}:\n{result.stderr or ''}")
    stamp.touch()
    return BIN


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def start(port: int, workdir: Path) -> Azurite:
    ensure_installed(quiet=True)
    workdir.mkdir(parents=True, exist_ok=True)
    log = (workdir / "azurite.log").open("ab")
    process = subprocess.Popen(
        [
            str(BIN),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--location",
            str(workdir / "data"),
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--loose",
            "--silent",
        ],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    log.close()
    (workdir / "azurite.pid").write_text(str(process.pid))
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = (workdir / "azurite.log").read_text(errors="replace")[-2000:]
            raise AzuriteError(f"azurite exited with {process.returncode}:\n{tail}")
        if _accepts(port):
            return Azurite(port, workdir, process)
        time.sleep(0.1)
    process.kill()
    raise AzuriteError(f"azurite did not accept connections on {port} within {START_TIMEOUT}s")


def stop(workdir: Path, timeout: float = 10.0) -> None:
    pid_file = workdir / "azurite.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.killpg(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Azurite (Blob) for lakeferry")
    parser.add_argument("action", choices=["install", "up", "down"])
    parser.add_argument("--port", type=int, default=10000)
    parser.add_argument("--dir", default="var/azurite")
    args = parser.parse_args(argv)
    workdir = Path(args.dir).resolve()
    try:
        if args.action == "install":
            ensure_installed()
        elif args.action == "up":
            running = start(args.port, workdir)
            print(running.blob_url)
        else:
            stop(workdir)
    except AzuriteError as exc:
        print(f"azurite: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
