"""The systemd units in ``systemd/``: valid, sandboxed, installable, and a fit for the daemon.

- Every unit passes ``systemd-analyze verify`` as ``tools/install-systemd.sh --root`` stages it
  (the same check as ``make systemd-check``), and ``systemd-analyze security`` rates each
  service's exposure at 2.0 or lower.
- The daemon, traced with strace while it does real work (downloads, retries, a dead letter,
  Delta commits, SIGHUP, SIGTERM) on the embedded bus and on Kafka, with /proc mounted as the
  units' ``ProtectProc=``/``ProcSubset=`` mount it, makes no system call outside the units'
  ``SystemCallFilter=``, opens no socket family outside ``RestrictAddressFamilies=`` and never
  asks for writable-and-executable memory (``MemoryDenyWriteExecute=``). No systemd needs to
  run here, but root does (a mount and PID namespace for the /proc).

Needs ``systemd-analyze`` (Debian package ``systemd``) and ``strace`` (package ``strace``):
``make test`` installs them (tools/system_deps.sh); without them these tests fail, never skip.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.daemon import DaemonEnv, harness
from helpers.markers import starts_processes
from helpers.origin import Origin
from helpers.wait import wait_until
from lakeferry.stages.catalog import STAGES

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "systemd"
INSTALLER = ROOT / "tools" / "install-systemd.sh"
MAX_EXPOSURE = 2.0
# One instance per template, with a metrics port from its stage's range.
INSTANCES = {
    "lakeferry-ingest@.service": "lakeferry-ingest@9501.service",
    "lakeferry-download@.service": "lakeferry-download@9521.service",
    "lakeferry-upload@.service": "lakeferry-upload@9541.service",
    "lakeferry-results@.service": "lakeferry-results@9561.service",
}


def tool(command: str, package: str) -> str:
    path = shutil.which(command)
    if path is None:
        pytest.fail(
            f"{command} not found: install the Debian package `{package}` "
            f"(apt-get install --no-install-recommends {package}; `make test` runs "
            "tools/system_deps.sh, which does)"
        )
    return path


def unit_names() -> list[str]:
    names = sorted(p.name for p in UNITS.glob("*.service")) + sorted(
        p.name for p in UNITS.glob("*.target")
    )
    assert "lakeferry.service" in names
    return names


def run_installer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(INSTALLER), *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
@starts_processes
def staged(tmp_path: Path) -> Path:
    """The units as the installer writes them into a root, with a stub at the prefix."""
    result = run_installer("--root", str(tmp_path / "root"), "--prefix", str(tmp_path / "prefix"))
    assert result.returncode == 0, result.stdout + result.stderr
    stub = tmp_path / "prefix" / ".venv" / "bin" / "lakeferry"
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\nexit 1\n")
    stub.chmod(0o755)
    return tmp_path / "root" / "etc" / "systemd" / "system"


@pytest.mark.parametrize("name", unit_names())
def test_unit_passes_systemd_analyze_verify(staged: Path, name: str) -> None:
    analyze = tool("systemd-analyze", "systemd")
    target = INSTANCES.get(name, name)
    result = subprocess.run(
        [analyze, "verify", str(staged / target)],
        capture_output=True, text=True, cwd=staged, timeout=60, check=False,
    )  # fmt: skip
    # verify exits 0 on unknown keys and other warnings: any output is a failure.
    assert (result.returncode, result.stdout + result.stderr) == (0, ""), target


@pytest.mark.parametrize("name", [n for n in unit_names() if n.endswith(".service")])
def test_service_exposure_is_at_most_2(staged: Path, name: str) -> None:
    analyze = tool("systemd-analyze", "systemd")
    target = INSTANCES.get(name, name)
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(staged / target)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert found, result.stdout + result.stderr
    exposure = float(found.group(1))
    print(f"{target}: exposure {exposure}")
    open_items = [line for line in result.stdout.splitlines() if line.startswith("✗")]
    assert exposure <= MAX_EXPOSURE, "\n".join(open_items)


# -- the unit files themselves --------------------------------------------------------------


def directives(text: str, section: str) -> list[str]:
    """``Key=value`` lines of one section, comments and blank lines dropped."""
    out, current = [], ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
        elif line and not line.startswith(("#", ";")) and current == section:
            out.append(line)
    return out


def test_stage_templates_are_one_file_and_match_the_main_unit() -> None:
    templates = [UNITS / f"lakeferry-{stage}@.service" for stage in STAGES]
    # One template per stage of the catalog, and none for a stage that is not there.
    assert sorted(UNITS.glob("lakeferry-*@.service")) == sorted(templates)
    texts = {path.read_text() for path in templates}
    assert len(texts) == 1, "the four stage templates must stay byte-identical (stage = %j)"
    template = texts.pop()
    service = directives(template, "Service")
    execstart = "/opt/lakeferry/.venv/bin/lakeferry run -c /etc/lakeferry/lakeferry.toml"
    assert f"ExecStart={execstart} --stages %j" in service
    only_template = {
        "Environment=LAKEFERRY_METRICS=127.0.0.1:%i",
        "Environment=LAKEFERRY_LIVE=127.0.0.1:1%i",
        "Environment=LAKEFERRY_CONSOLE=127.0.0.1:2%i",
        "Environment=LAKEFERRY_INSTANCE=%j-%i",
    }
    assert only_template <= set(service)
    main = directives((UNITS / "lakeferry.service").read_text(), "Service")
    assert [d for d in service if d not in only_template and not d.startswith("ExecStart=")] == [
        d for d in main if not d.startswith("ExecStart=")
    ]
    assert "PartOf=lakeferry.target" in directives(template, "Unit")
    assert directives(template, "Install") == ["WantedBy=lakeferry.target"]


def seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(ms|min|s|m|h)?", value):
        total += float(number) * units[unit or "s"]
    return total


def test_stop_timeout_leaves_room_for_the_drain() -> None:
    from lakeferry.config import DaemonConfig

    service = directives((UNITS / "lakeferry.service").read_text(), "Service")
    settings = dict(line.split("=", 1) for line in service)
    grace = float(DaemonConfig().shutdown_grace)
    # The supervisor gives commits and flushes 15 s beyond the grace (Supervisor._signals).
    assert seconds(settings["TimeoutStopSec"]) > grace + 15
    assert settings["Type"] == "notify"
    assert settings["NotifyAccess"] == "main"
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert "Environment=LAKEFERRY_STATE=%S/lakeferry" in service
    assert "StateDirectory=lakeferry" in service


# -- the installer ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("bus", ["embedded", "kafka"])
def test_installer_stages_units_user_and_a_valid_config(tmp_path: Path, bus: str) -> None:
    root = tmp_path / "root"
    result = run_installer("--root", str(root), "--prefix", "/srv/lf", "--bus", bus)
    assert result.returncode == 0, result.stdout + result.stderr
    units = root / "etc" / "systemd" / "system"
    assert sorted(p.name for p in units.iterdir()) == unit_names()
    main = (units / "lakeferry.service").read_text()
    assert "ExecStart=/srv/lf/.venv/bin/lakeferry run" in main
    assert "/opt/lakeferry" not in main
    assert "lakeferry:x:" in (root / "etc" / "passwd").read_text()
    config = root / "etc" / "lakeferry" / "lakeferry.toml"
    assert config.stat().st_mode & 0o777 == 0o640
    assert "${LAKEFERRY_STATE:-/var/lib/lakeferry}" in config.read_text()
    assert ":-var/lakeferry" not in config.read_text()
    # The staged config is valid as the units run it (state under the StateDirectory).
    state = tmp_path / "state"
    check = subprocess.run(
        [sys.executable, "-m", "lakeferry", "check-config", str(config)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "LAKEFERRY_STATE": str(state), "LAKEFERRY_METRICS": "127.0.0.1:9521"},
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert f"bus {bus}" in check.stdout


@pytest.mark.slow
def test_installer_keeps_an_existing_config(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert run_installer("--root", str(root)).returncode == 0
    config = root / "etc" / "lakeferry" / "lakeferry.toml"
    config.write_text("# edited by the site\n")
    again = run_installer("--root", str(root), "--bus", "kafka")
    assert again.returncode == 0, again.stderr
    assert config.read_text() == "# edited by the site\n"
    assert "exists: kept" in again.stdout


@pytest.mark.slow
def test_installer_refuses_to_touch_the_real_root_unprivileged_or_bad_arguments(
    tmp_path: Path,
) -> None:
    assert run_installer("--bus", "zookeeper", "--root", str(tmp_path)).returncode == 2
    assert run_installer("--prefix", "relative", "--root", str(tmp_path)).returncode == 2
    assert run_installer("--frobnicate").returncode == 2


def unit_environment(unit: Path, instance: str = "") -> dict[str, str]:
    """The Environment= of a unit as systemd would pass it (the specifiers used here)."""
    env: dict[str, str] = {}
    for line in directives(unit.read_text(), "Service"):
        if line.startswith("Environment="):
            for item in line.split("=", 1)[1].split():
                key, _, value = item.partition("=")
                env[key] = value.replace("%S", "/var/lib").replace("%i", instance)
    return env


@pytest.mark.slow
def test_each_unit_gets_its_own_ports_and_the_state_directory(tmp_path: Path) -> None:
    """The installed configs read what the units set: two stage workers on one machine get
    distinct metrics and live-feed ports, and everything lives in /var/lib/lakeferry."""
    from lakeferry.config import load_config
    from lakeferry.registry import load_registry

    registry = load_registry()
    listens = set()
    for bus, unit, instance in [
        ("embedded", "lakeferry.service", ""),
        ("kafka", "lakeferry.service", ""),
        ("kafka", "lakeferry-download@.service", "9521"),
        ("kafka", "lakeferry-download@.service", "9522"),
        ("kafka", "lakeferry-upload@.service", "9541"),
    ]:
        root = tmp_path / bus
        if not root.exists():
            assert run_installer("--root", str(root), "--bus", bus).returncode == 0
        env = unit_environment(UNITS / unit, instance)
        config = load_config(root / "etc" / "lakeferry" / "lakeferry.toml", registry, env=env)
        assert config.core.daemon.state_dir == "/var/lib/lakeferry"
        if instance:
            assert config.core.metrics.listen == f"127.0.0.1:{instance}"
            assert config.core.live.listen == f"127.0.0.1:1{instance}", (
                "etc/lakeferry.kafka.toml must read the live feed's address from the unit: "
                '[live] listen = "${LAKEFERRY_LIVE:-127.0.0.1:9465}"'
            )
            assert config.core.console.listen == f"127.0.0.1:2{instance}", (
                "etc/lakeferry.kafka.toml must read the console's address from the unit: "
                '[console] listen = "${LAKEFERRY_CONSOLE:-127.0.0.1:9466}"'
            )
            listens |= {
                config.core.metrics.listen,
                config.core.live.listen,
                config.core.console.listen,
            }
    assert len(listens) == 9


# -- the daemon inside the sandbox's limits ---------------------------------------------------


def unit_setting(key: str) -> list[str]:
    return [
        line.split("=", 1)[1]
        for line in directives((UNITS / "lakeferry.service").read_text(), "Service")
        if line.startswith(f"{key}=")
    ]


@functools.cache
def syscall_group(name: str) -> frozenset[str]:
    """The system calls of a systemd filter group, nested groups expanded."""
    analyze = tool("systemd-analyze", "systemd")
    out = subprocess.run(
        [analyze, "syscall-filter", name], capture_output=True, text=True, check=True
    ).stdout
    calls: set[str] = set()
    for line in out.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        calls |= syscall_group(item) if item.startswith("@") else {item}
    return frozenset(calls)


def allowed_syscalls() -> frozenset[str]:
    """What the units' SystemCallFilter= lines allow (an allow list, then deny lists)."""
    allowed: set[str] = set()
    for value in unit_setting("SystemCallFilter"):
        deny = value.startswith("~")
        names: set[str] = set()
        for item in value.lstrip("~").split():
            names |= syscall_group(item) if item.startswith("@") else {item}
        allowed = allowed - names if deny else allowed | names
    assert allowed, "the units define no SystemCallFilter allow list"
    return frozenset(allowed)


# SQLite gives its journal the database's owner with fchown(), but only when running as
# root (the test does; the units never do, and SystemCallErrorNumber=EPERM would be harmless).
ROOT_ONLY = {"fchown"}


class Trace:
    """What a traced process tree did: system calls, socket families, W+X memory requests."""

    CALL = re.compile(r"^\d+\s+(?:<\.\.\. )?(\w+)(?:\(| resumed>)")

    def __init__(self, path: Path) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.families: set[str] = set()
        self.write_execute: list[str] = []
        with path.open(errors="replace") as fh:
            for line in fh:
                found = self.CALL.match(line)
                if found is None or "resumed>" in line:
                    continue
                name = found.group(1)
                self.calls[name] += 1
                if name == "socket":
                    family = re.search(r"socket\((AF_\w+)", line)
                    if family:
                        self.families.add(family.group(1))
                # What MemoryDenyWriteExecute= refuses (systemd 252: seccomp on the flags).
                if name in ("mprotect", "pkey_mprotect") and "PROT_EXEC" in line:
                    self.write_execute.append(line.strip())
                if name == "mmap" and "PROT_EXEC" in line and "PROT_WRITE" in line:
                    self.write_execute.append(line.strip())
                if name == "shmat" and "SHM_EXEC" in line:
                    self.write_execute.append(line.strip())


def proc_mount_options() -> str:
    """/proc as the units show it to the daemon (ProtectProc=, ProcSubset=)."""
    options = [f"hidepid={value}" for value in unit_setting("ProtectProc") if value != "default"]
    options += ["subset=pid" for value in unit_setting("ProcSubset") if value == "pid"]
    return ",".join(options) or "defaults"


class TracedDaemon:
    """``lakeferry run`` under ``strace -f``, started and stopped like systemd would, with a
    /proc of its own mounted as the units mount it (a private mount and PID namespace: the
    test runs as root, as CI does)."""

    def __init__(self, env: DaemonEnv, trace: Path) -> None:
        strace = tool("strace", "strace")
        unshare = tool("unshare", "util-linux")
        self.env, self.trace = env, trace
        self.metrics_port = 0
        """The port its ready line names (the config says port 0)."""
        self.log = env.root / "traced.log"
        mount = f'mount -t proc -o {proc_mount_options()} proc /proc && exec "$@"'
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [unshare, "--mount", "--pid", "--fork", "--kill-child", "sh", "-c", mount, "sh",
                 strace, "-f", "-qq", "-s", "16", "-o", str(trace),
                 sys.executable, "-m", "lakeferry", "run", "-c", str(env.config)],
                stdout=log, stderr=log, cwd=ROOT,
            )  # fmt: skip
        wait_until(self.ready, timeout=120, what="the traced daemon to report ready")
        self.pid = self.find_daemon(self.proc.pid)

    @staticmethod
    def find_daemon(pid: int) -> int:
        """The ``lakeferry run`` process below ``pid`` (unshare, then strace)."""
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
                if cmdline[1:4] == [b"-m", b"lakeferry", b"run"]:
                    return int(child)
                with contextlib.suppress(LookupError):
                    return TracedDaemon.find_daemon(int(child))
        raise LookupError(f"no lakeferry process below {pid}")

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        for line in self.log.read_text().splitlines():
            entry = json.loads(line) if line.startswith("{") else {}
            if entry.get("msg") == "ready":
                self.metrics_port = int(entry["metrics"].rpartition(":")[2])
                return True
        return False

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        # Killing the namespace's first process (strace) takes the daemon with it.
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def traced() -> Iterator[list[TracedDaemon]]:
    daemons: list[TracedDaemon] = []
    yield daemons
    for daemon in daemons:
        daemon.stop()
        daemon.trace.unlink(missing_ok=True)  # tens of MB


def work(env: DaemonEnv, origin: Origin, prefix: str) -> int:
    """Submit files that land, one that is retried once and one that is dead-lettered."""
    events = [
        {"id": f"{prefix}-{i}", "url": origin.file_url(f"{prefix}-{i}.bin", 3000 + i * 977)}
        for i in range(30)
    ]
    flaky = origin.file_url(f"{prefix}-f.bin", 5000, route="flaky", fail=1)
    events.append({"id": f"{prefix}-flaky", "url": flaky})
    events.append({"id": f"{prefix}-gone", "url": f"{origin.url}/missing/{prefix}-gone.bin"})
    env.submit_events(events)
    return 31


def judge(env: DaemonEnv, origin: Origin, daemon: TracedDaemon, prefix: str) -> Trace:
    landed = work(env, origin, prefix)

    def metric(name: str, **labels: str) -> float:
        try:
            return harness.metric_sum(harness.scrape(daemon.metrics_port), name, **labels)
        except OSError:  # no /metrics: say why the daemon died
            with contextlib.suppress(subprocess.TimeoutExpired):
                daemon.wait(10)
            daemon.ready()
            raise

    wait_until(
        lambda: (
            metric("lakeferry_stage_messages_total", stage="results") >= landed
            and metric("lakeferry_dlq_total") >= 1
        ),
        timeout=120,
        what="the traced daemon to land the files",
        interval=0.5,
    )
    assert metric("lakeferry_retries_total") >= 1
    daemon.signal(signal.SIGHUP)
    wait_until(
        lambda: metric("lakeferry_reloads_total", result="applied") >= 1, timeout=30, what="reload"
    )
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(60) == 0, daemon.log.read_text()[-3000:]
    trace = Trace(daemon.trace)
    daemon.trace.unlink()
    return trace


def assert_fits_the_units(trace: Trace) -> None:
    assert trace.calls["execve"] >= 1, "strace saw nothing"
    assert trace.calls["mmap"] > 100, "strace saw nothing"
    outside = sorted(set(trace.calls) - allowed_syscalls() - ROOT_ONLY)
    assert outside == [], f"system calls outside the units' SystemCallFilter: {outside}"
    families = set(unit_setting("RestrictAddressFamilies")[0].split())
    assert trace.families <= families, f"socket families beyond {families}: {trace.families}"
    assert unit_setting("MemoryDenyWriteExecute") == ["yes"]
    assert trace.write_execute == [], "W+X memory requests:\n" + "\n".join(trace.write_execute[:10])


def test_embedded_daemon_fits_the_units_sandbox(
    daemon_env: DaemonEnv, origin: Origin, traced: list[TracedDaemon]
) -> None:
    daemon = TracedDaemon(daemon_env, daemon_env.root / "strace.out")
    traced.append(daemon)
    assert_fits_the_units(judge(daemon_env, origin, daemon, "sbx"))


def test_kafka_daemon_fits_the_units_sandbox(
    kafka_env: DaemonEnv, origin: Origin, traced: list[TracedDaemon]
) -> None:
    daemon = TracedDaemon(kafka_env, kafka_env.root / "strace.out")
    traced.append(daemon)
    trace = judge(kafka_env, origin, daemon, "sbxk")
    assert_fits_the_units(trace)
    assert "AF_INET" in trace.families
