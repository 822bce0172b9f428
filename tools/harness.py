"""Run lakeferry as a real process, the way systemd or a user would: for tests and ``make demo``.

:class:`DaemonProcess` starts ``python -m lakeferry run`` on a config file written by
:func:`write_config`, waits for its ``ready`` log line, sends it real signals and scrapes its
real metrics endpoint. Nothing here reaches into the daemon's memory.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import tomli_w
from prometheus_client.parser import text_string_to_metric_families

from lakeferry.config import TopicsConfig

ROOT = Path(__file__).resolve().parents[1]


LISTEN_PORTS = (20000, 32768)
"""Where test servers listen: below the kernel's ephemeral range (net.ipv4.ip_local_port_range,
32768-60999 by default), from which outgoing connections take their local ports. A port picked
there by binding to 0, closed, and bound again by a daemon a moment later can meanwhile be an
outgoing connection's (a clean-clone CI run: ``live.listen 127.0.0.1:35971 is already in
use``)."""


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port nothing listens on now, outside the ephemeral range when there is room. Daemons
    under test listen on port 0 instead (the ready line names the port): a port picked here is
    for servers that cannot do that (Kafka, Azurite, the origins that must be down first)."""
    import random

    low, high = LISTEN_PORTS[0], min(LISTEN_PORTS[1], _ephemeral_low())
    # Each pytest-xdist worker picks from its own slice: two workers never pick one port.
    worker, workers = (
        os.environ.get("PYTEST_XDIST_WORKER", ""),
        os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"),
    )
    if worker.startswith("gw") and worker[2:].isdigit() and workers.isdigit():
        width = max(high - low, 0) // max(int(workers), 1)
        low += int(worker[2:]) * width
        high = low + width
    pick = random.SystemRandom()
    for _ in range(100 if high > low else 0):
        port = pick.randrange(low, high)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # taken (or in TIME_WAIT): another
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """``n`` different free ports (:func:`free_port`)."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def config_dict(
    state: Path,
    *,
    metrics_port: int = 0,
    ladder: Sequence[str] = ("200ms", "400ms", "800ms", "1600ms"),
    file_roots: Iterable[str] = (),
    download_concurrency: int = 50,
    upload_concurrency: int = 40,
    shutdown_grace: str = "10s",
    kafka: str | None = None,
    namespace: str = "",
) -> dict[str, Any]:
    """A complete config for a daemon whose state lives under ``state`` (short timings).

    With ``kafka`` (a bootstrap address) the bus is Kafka; ``namespace`` then prefixes every
    topic and the consumer groups, so runs sharing one broker never see each other's work.
    """
    data = _config_dict(
        state, metrics_port, ladder, file_roots, download_concurrency, upload_concurrency,
        shutdown_grace,
    )  # fmt: skip
    if kafka is not None:
        data["bus"] = {
            "kind": "kafka",
            "partitions": 4,
            "group": f"{namespace}lakeferry",
            "kafka": {
                "bootstrap_servers": kafka,
                # small groups rebalance fast when a member dies or joins
                "consumer": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
            },
        }
        # Every topic the pipeline names, in this run's namespace (a shared broker).
        defaults = msgspec.to_builtins(TopicsConfig())
        data["topics"] = {name: f"{namespace}{topic}" for name, topic in defaults.items()}
        data["retry"]["topics"] = [f"{namespace}{t}" for t in data["retry"]["topics"]]
    return data


def _config_dict(
    state: Path,
    metrics_port: int,
    ladder: Sequence[str],
    file_roots: Iterable[str],
    download_concurrency: int,
    upload_concurrency: int,
    shutdown_grace: str,
) -> dict[str, Any]:
    return {
        "daemon": {
            "state_dir": str(state),
            "shutdown_grace": shutdown_grace,
            "log_level": "info",
            "log_format": "json",
            "restart_backoff": "100ms",
        },
        "bus": {
            "kind": "embedded",
            "partitions": 4,
            "embedded": {"path": str(state / "bus.sqlite"), "poll_interval": "20ms"},
        },
        "retry": {"delays": list(ladder), "topics": [f"retry.{d}" for d in ladder]},
        "download": {"concurrency": download_concurrency},
        "upload": {"concurrency": upload_concurrency, "backoff_initial": "100ms"},
        "results": {"batch_rows": 500, "batch_wait": "100ms"},
        "ingest": {"events_batch_wait": "200ms"},
        "commit": {"interval": "50ms"},
        # Port 0: the daemon takes a free port and names it in its ready line
        # (DaemonProcess.address); a port picked here could be taken before the daemon binds it.
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        "live": {"listen": "127.0.0.1:0"},
        "console": {"listen": "127.0.0.1:0"},
        "cache": {"kind": "localfs", "path": str(state / "cache"), "quota": "2GiB"},
        "sink": {
            "kind": "localfs",
            "root": str(state / "sink"),
            "path_template": "{event.id}/{filename}",
        },
        "inventory": {
            "kind": "delta",
            "inventory_uri": str(state / "inventory"),
            "events_uri": str(state / "events"),
        },
        "sources": [{"kind": "spool", "path": str(state / "spool"), "poll_interval": "100ms"}],
        "downloaders": {
            "file": {"roots": list(file_roots)},
            # the test origins listen on loopback, which the SSRF guard refuses by default
            "http": {"allow_networks": ["127.0.0.0/8"]},
        },
    }


def fleet_node(data: dict[str, Any], root: Path, node: str) -> dict[str, Any]:
    """A node of a fleet on ``data``'s Kafka: ``data`` with fleet mode on, the node's name,
    and a state folder (cache, ledger, spool) of its own under ``root/node``; the sink, the
    inventory and the topics stay shared."""
    import copy

    state = root / node
    out = copy.deepcopy(data)
    out["daemon"].update(state_dir=str(state), fleet=True, node=node)
    out["cache"]["path"] = str(state / "cache")
    out["sources"] = [{"kind": "spool", "path": str(state / "spool"), "poll_interval": "100ms"}]
    for key in ("metrics", "live", "console"):
        out[key]["listen"] = "127.0.0.1:0"
    return out


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(data))
    return path


def cli(
    config: Path, *args: str, timeout: float = 120, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``lakeferry <args> -c config`` as a user would."""
    result = subprocess.run(
        [sys.executable, "-m", "lakeferry", *args, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"lakeferry {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
        )
    return result


class DaemonProcess:
    """``lakeferry run`` as a child process, logging JSON lines to ``log_path``."""

    def __init__(
        self,
        config: Path,
        log_path: Path,
        *,
        stages: str | None = None,
        instance: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.env = env or {}
        self.log_path = log_path
        self.stages = stages
        self.instance = instance
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._ready: dict[str, Any] | None = None

    def start(self, *, wait_ready: float = 60) -> DaemonProcess:
        args = [sys.executable, "-m", "lakeferry", "run", "-c", str(self.config)]
        if self.stages:
            args += ["--stages", self.stages]
        if self.instance:
            args += ["--instance", self.instance]
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._ready = None
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            args, stdout=log, stderr=log, cwd=ROOT, env={**os.environ, **self.env}
        )
        log.close()
        if wait_ready:
            self.wait_ready(wait_ready)
        return self

    def wait_ready(self, timeout: float = 60) -> dict[str, Any]:
        """This run's ready line (waited for once; it names the addresses the run bound)."""
        if self._ready is None:
            self._ready = self.wait_for_log("ready", timeout=timeout)
        return self._ready

    def address(self, key: str, *, timeout: float = 60) -> str:
        """The address this run bound for ``key`` (``metrics``, ``live``, ``console``), as its
        ready line names it: a port 0 in the config is a real port there."""
        return str(self.wait_ready(timeout).get(key) or "")

    @property
    def metrics_port(self) -> int:
        return int(self.address("metrics").rpartition(":")[2])

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def logs(self, since_start: bool = True) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        with self.log_path.open("rb") as fh:
            if since_start:
                fh.seek(self._log_offset)
            lines = fh.read().splitlines()
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"msg": line.decode(errors="replace"), "level": "raw"})
        return out

    def wait_for_log(self, msg: str, *, timeout: float = 30, count: int = 1) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [entry for entry in self.logs() if entry.get("msg") == msg]
            if len(found) >= count:
                return found[count - 1]
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"daemon exited ({self.proc.returncode}) before {msg!r}:\n{self.tail()}"
                )
            time.sleep(0.05)
        raise TimeoutError(f"no {msg!r} log line within {timeout}s:\n{self.tail()}")

    def complaints(self, n: int = 12) -> list[str]:
        """The last ``n`` distinct warnings and errors this daemon logged since its start, each
        once with how often: what a failed wait shows about the daemon it waited for."""
        counts: dict[str, int] = {}
        for entry in self.logs():
            if entry.get("level") in ("warning", "error", "critical", "raw"):
                key = f"{entry.get('level')}: {entry.get('msg')}"
                if entry.get("error"):
                    key += f" ({str(entry['error'])[:160]})"
                counts[key] = counts.pop(key, 0) + 1  # re-inserted: ordered by last seen
        return [f"{times}x {key}" for key, times in list(counts.items())[-n:]]

    def tail(self, n: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(10)

    def terminate(self, timeout: float = 60) -> int:
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Best-effort cleanup for fixtures."""
        if self.alive():
            self.signal(signal.SIGKILL)
            self.wait(10)


def scrape(port: int) -> dict[str, float]:
    """The daemon's /metrics as ``{'name{label="v",...}': value}`` (labels sorted)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def metric_sum(metrics: dict[str, float], name: str, **labels: str) -> float:
    """Sum of ``name`` samples whose labels include ``labels``."""
    total = 0.0
    for key, value in metrics.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total
