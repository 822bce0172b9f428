"""Apache Kafka for development and tests: a single-node KRaft broker from Maven Central.

Nothing is downloaded from anywhere but Maven Central: ``pom.xml`` next to this file lists Kafka
and its runtime dependencies, and :func:`ensure_dist` copies them into ``dist/lib`` with Maven.
The broker then runs as ``java -cp <dist/lib jars> kafka.Kafka server.properties``, combined
broker and controller (``process.roles=broker,controller``), listening on 127.0.0.1 only, with
every replication factor at 1 and topic auto-creation off (the bus creates its topics).

As a script (standard library only)::

    python tools/kafka/kafka.py dist                           # fetch Kafka (needs java + mvn)
    python tools/kafka/kafka.py up [--port 9092] [--dir var/kafka]
    python tools/kafka/kafka.py status [--dir var/kafka]       # exit 3 when not running
    python tools/kafka/kafka.py down [--dir var/kafka]
    python tools/kafka/kafka.py consumer-groups --bootstrap-server 127.0.0.1:9092 --describe \\
        --all-groups                    # Kafka's own tools: consumer-groups, topics, get-offsets,
                                        # console-consumer (bin/kafka-NAME.sh of a distribution)

``up`` returns once the broker serves clients and prints the bootstrap address; it is a no-op
when a broker already runs on that directory. The broker keeps running after ``up`` exits (it is
in its own session); ``down`` stops it by its pid file. ``KAFKA_OPTS`` adds JVM options.

As a module (the test fixture ``tests/helpers/kafka.py``, ``tools/demo.py``)::

    broker = start(port, workdir=path)      # -> Broker; broker.bootstrap == "127.0.0.1:PORT"
    broker.stop(); broker.start()           # an outage: same port, same data (topics, offsets)
    broker.kill(); broker.start()           # a crash (SIGKILL); the restart takes ~3 s longer
    broker.pause(); broker.resume()         # a hung broker (SIGSTOP/SIGCONT): clients time out
    stop(path)                              # by pid file, from anywhere

"Serves clients" means: the port accepts connections and, when confluent-kafka is importable, a
metadata request lists the broker and the group coordinator answers (the first group request
creates ``__consumer_offsets``; without this a test's first consumer waits ~3 s in backoff).

The work directory holds ``server.properties``, ``log4j2.properties``, ``data/`` (the log and
the KRaft metadata), ``broker.log`` (WARN and above), ``broker.out`` (the JVM's own output),
``kafka.pid`` and ``broker.json`` (ports, for ``status`` and restarts).

Start-up cost matters on small machines (2 cores). Measured here: a new directory (format +
start + ready) ~1.2 s, a restart ~0.8 s, a restart after SIGKILL ~3.7 s (the old broker's
session must expire first). What buys it: an AppCDS archive of the broker's classes, built once
per Java build next to the jars (~2 s → ~1 s), the serial collector and C1 only, a small heap,
a cluster id made in Python instead of by a JVM, and formatting only a new directory.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
DIST = HERE / "dist"
LIB = DIST / "lib"
STAMP = DIST / ".fetched"

HOST = "127.0.0.1"
JAVA_MIN = 17
INSTALL_HINT = (
    "Java 17+ and Maven are required to run Apache Kafka for the tests and `make kafka-up`: "
    "apt-get install openjdk-17-jre-headless maven (or any JDK/JRE 17+ and Maven 3 on PATH)"
)

START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
# Why these JVM flags: on 2 cores the broker's start is CPU-bound in class loading and JIT.
# SerialGC avoids G1's start-up threads and regions; C1 only (TieredStopAtLevel=1) trades peak
# throughput, which a test broker does not need, for less compile work while starting.
JVM_FLAGS = (
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
    "-Djava.awt.headless=true",
)


class KafkaToolError(Exception):
    """Kafka cannot be fetched or run here (missing Java or Maven, failed download)."""


class BrokerFailed(KafkaToolError):
    """The broker exited or did not serve metadata in time; the message ends with its log."""


# --- the distribution ---------------------------------------------------------------------------


def _java_version_text() -> str | None:
    """What ``java -version`` prints, None when there is no ``java`` on PATH."""
    if shutil.which("java") is None:
        return None
    try:
        out = subprocess.run(
            ["java", "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stderr + out.stdout


def java_version() -> int | None:
    """The major version of ``java`` on PATH, None when there is none."""
    text = _java_version_text()
    m = re.search(r'version "(\d+)(?:\.(\d+))?', text or "")
    if m is None:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def check_java() -> None:
    version = java_version()
    if version is None:
        raise KafkaToolError(f"no `java` on PATH. {INSTALL_HINT}")
    if version < JAVA_MIN:
        raise KafkaToolError(f"`java` on PATH is Java {version}. {INSTALL_HINT}")


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def dist_is_current() -> bool:
    """``dist/lib`` was fetched for this very pom (by content: checkouts change mtimes)."""
    try:
        fetched_for = STAMP.read_text().strip()
    except OSError:
        return False
    return fetched_for == _pom_digest() and any(LIB.glob("kafka_*.jar"))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock file: two test runs must not fetch into dist/lib at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_dist(*, quiet: bool = False) -> Path:
    """Make sure ``dist/lib`` holds the Kafka of ``pom.xml``; returns the lib directory.

    Checks Java first (a missing Java is the common failure on a fresh machine), then runs Maven
    when ``dist/lib`` is missing or was fetched for another pom (the stamp holds its sha256).
    Raises :class:`KafkaToolError` naming what to install.
    """
    check_java()
    with _locked(DIST / ".lock"):
        if not dist_is_current():
            _fetch_dist(quiet=quiet)
        archive = class_archive()
        if not archive.exists() and not archive.with_suffix(".failed").exists():
            _build_class_archive(quiet=quiet)
    return LIB


def _fetch_dist(*, quiet: bool) -> None:
    if shutil.which("mvn") is None:
        raise KafkaToolError(f"no `mvn` on PATH to fetch Kafka from Maven Central. {INSTALL_HINT}")
    # Start from an empty lib: jars of an older pom would shadow the new ones on the class path
    # (and the class archive belongs to the old jars).
    shutil.rmtree(LIB, ignore_errors=True)
    STAMP.unlink(missing_ok=True)
    for old in [*DIST.glob("*.jsa"), *DIST.glob("*.failed"), *DIST.glob("*.tmp")]:
        old.unlink()
    if not quiet:
        print(f"fetching Apache Kafka from Maven Central into {LIB} ...", file=sys.stderr)
    cmd = ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()[-4000:]
        raise KafkaToolError(f"`{' '.join(cmd)}` failed ({result.returncode}):\n{output}")
    if not any(LIB.glob("kafka_*.jar")):
        raise KafkaToolError(f"Maven finished but {LIB} holds no kafka_*.jar")
    STAMP.write_text(_pom_digest() + "\n")


def class_archive() -> Path:
    """The AppCDS archive of the broker's classes for this Java (halves the JVM's start)."""
    global _ARCHIVE
    if _ARCHIVE is None:
        m = re.search(r"\(build ([^)]+)\)", _java_version_text() or "")
        release = re.sub(r"[^A-Za-z0-9.+-]", "_", m.group(1) if m else "unknown")
        _ARCHIVE = DIST / f"kafka-{release}.jsa"
    return _ARCHIVE


_ARCHIVE: Path | None = None


def _build_class_archive(*, quiet: bool) -> None:
    """Run a throw-away broker once with ``-XX:ArchiveClassesAtExit``.

    Class loading dominates the broker's start on a small machine; a dynamic AppCDS archive of
    the classes a start needs takes it from ~2 s to ~1 s. The archive is written when that JVM
    exits cleanly; it is only valid for this Java build and these jars (hence its name, and it
    lives in dist/, which a new pom empties). Failing to build it only costs speed, and is not
    tried again until the next fetch (``<archive>.failed`` says why).
    """
    import tempfile

    target = class_archive()
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    if not quiet:
        print(f"building the JVM class archive {target.name} (once) ...", file=sys.stderr)
    problem = ""
    with tempfile.TemporaryDirectory(prefix="kafka-cds-") as tmp:
        broker = Broker(Path(tmp), free_port(), free_port(), heap="256m")
        broker.extra_jvm_flags = (f"-XX:ArchiveClassesAtExit={partial}",)
        try:
            broker.start(timeout=START_TIMEOUT)
        except KafkaToolError as exc:
            problem = str(exc)
        finally:
            broker.stop(timeout=60)  # the archive is written as the JVM exits
    if not problem and partial.exists() and partial.stat().st_size > 0:
        partial.rename(target)
        return
    partial.unlink(missing_ok=True)
    problem = problem or "the JVM wrote no archive"
    target.with_suffix(".failed").write_text(problem + "\n")
    print(f"kafka.py: no class archive (slower starts): {problem}", file=sys.stderr)


# --- configuration files ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def new_cluster_id() -> str:
    """What ``StorageTool random-uuid`` prints (Kafka's Uuid, base64url), without a JVM."""
    while True:
        text = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        if not text.startswith("-"):  # Kafka refuses ids that look like command-line options
            return text


def server_properties(workdir: Path, port: int, controller_port: int) -> str:
    data = workdir / "data"
    return f"""\
# Written by tools/kafka/kafka.py: a single-node KRaft broker for development and tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{HOST}:{controller_port}
listeners=PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}
advertised.listeners=PLAINTEXT://{HOST}:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# A broker killed with SIGKILL can only register again once its old session expired (9 s by
# default): keep that short so a crash-and-restart test does not wait for it.
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=3000
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
background.threads=2
"""


def log4j2_properties(workdir: Path) -> str:
    return f"""\
# Written by tools/kafka/kafka.py: WARN and above to broker.log, nothing on the console.
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {workdir / "broker.log"}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = FILE
"""


def _classpath() -> str:
    # Jars listed in a fixed order rather than `lib/*`: the class archive is only used when the
    # class path is the one it was built with.
    return os.pathsep.join(str(jar) for jar in sorted(LIB.glob("*.jar")))


def _java_command(
    heap: str, workdir: Path, main: str, *args: str, extra: tuple[str, ...] = ()
) -> list[str]:
    archive = class_archive()
    sharing = (f"-XX:SharedArchiveFile={archive}",) if archive.exists() and not extra else ()
    return [
        "java",
        f"-Xms{min_heap(heap)}",
        f"-Xmx{heap}",
        *JVM_FLAGS,
        *sharing,
        *extra,
        *os.environ.get("KAFKA_OPTS", "").split(),
        f"-Dlog4j2.configurationFile={workdir / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={workdir}",
        "-cp",
        _classpath(),
        main,
        *args,
    ]


# Kafka's command-line tools by the name of the distribution's script (bin/kafka-NAME.sh): the
# same classes, from the kafka-tools jar the pom fetches.
TOOLS = {
    "consumer-groups": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    "topics": "org.apache.kafka.tools.TopicCommand",
    "get-offsets": "org.apache.kafka.tools.GetOffsetShell",
    "console-consumer": "org.apache.kafka.tools.consumer.ConsoleConsumer",
}


def tool_command(name: str, *args: str) -> list[str]:
    """The command line of ``bin/kafka-NAME.sh ARGS`` on the fetched jars (fetching them first);
    the tool logs WARN and above to stderr, as the distribution's scripts do."""
    ensure_dist(quiet=True)
    config = DIST / "tools-log4j2.properties"
    if not config.exists():
        partial = config.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(TOOLS_LOG4J2)
        partial.rename(config)
    return [
        "java",
        "-Xmx256m",
        *JVM_FLAGS,
        *os.environ.get("KAFKA_OPTS", "").split(),
        f"-Dlog4j2.configurationFile={config}",
        "-cp",
        _classpath(),
        TOOLS[name],
        *args,
    ]


TOOLS_LOG4J2 = """\
# Written by tools/kafka/kafka.py for Kafka's command-line tools: WARN and above to stderr.
status = warn
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
"""


def min_heap(heap: str) -> str:
    """Half the maximum heap, at most 256m: enough to start without resizing early."""
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", heap)
    if m is None:
        raise KafkaToolError(f"heap size {heap!r}: use e.g. 512m or 1g")
    factor = {"": 1 / 2**20, "k": 1 / 1024, "m": 1, "g": 1024}[m.group(2).lower()]
    return f"{max(16, min(256, int(int(m.group(1)) * factor) // 2))}m"


def _format_storage(workdir: Path) -> None:
    """Format the KRaft log directory once (``meta.properties`` marks a formatted one)."""
    if (workdir / "data" / "meta.properties").exists():
        return
    cluster_id = new_cluster_id()
    cmd = _java_command(
        "256m",
        workdir,
        "kafka.tools.StorageTool",
        "format",
        "-t",
        cluster_id,
        "-c",
        str(workdir / "server.properties"),
        "--ignore-formatted",
    )
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()[-4000:]
        raise BrokerFailed(f"formatting {workdir / 'data'} failed:\n{output}")


# --- the broker process ------------------------------------------------------------------------


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _logs_tail(workdir: Path) -> str:
    parts = []
    for name in ("broker.log", "broker.out"):
        tail = _tail(workdir / name)
        if tail:
            parts.append(f"--- {workdir / name} (tail) ---\n{tail}")
    return "\n".join(parts) or f"(no output in {workdir})"


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, or a child we can reap, counts as gone)."""
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass  # not our child
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _is_our_broker(pid: int, workdir: Path) -> bool:
    """The pid file names a live Kafka of this very directory (pids get reused)."""
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc: trust the pid file
    return b"kafka.Kafka" in cmdline and str(workdir / "server.properties").encode() in cmdline


def _read_pid(workdir: Path) -> int | None:
    try:
        return int((workdir / "kafka.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _serves_clients(bootstrap: str, timeout: float) -> bool:
    """A TCP connect, then (when confluent-kafka is importable) real requests.

    Metadata with a broker in it, then the group coordinator: on a new broker the first group
    request creates ``__consumer_offsets``, and a client that meets NOT_COORDINATOR backs off
    for seconds; asking here until it answers makes a test's first consumer group join at once.
    """
    host, _, port = bootstrap.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=min(timeout, 1.0)):
            pass
    except OSError:
        return False
    try:
        import logging

        from confluent_kafka.admin import AdminClient
    except ImportError:
        return True
    quiet = logging.getLogger("lakeferry.tools.kafka.readiness")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    # confluent-kafka takes a logging.Logger for "logger"; its annotations allow only scalars.
    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": quiet})  # type: ignore[dict-item]
    timeout = max(0.5, timeout)
    try:
        if not admin.list_topics(timeout=timeout).brokers:
            return False
        group = "lakeferry-kafka-tool-readiness"
        future = admin.describe_consumer_groups([group], request_timeout=timeout)[group]
        future.result(timeout=timeout)
    except Exception:
        return False
    return True


_WATCHDOG = """\
import os, signal, sys, time
owner, broker = int(sys.argv[1]), int(sys.argv[2])
def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
while alive(broker):
    if not alive(owner):
        try:
            os.killpg(broker, signal.SIGCONT)
            os.killpg(broker, signal.SIGTERM)
        except ProcessLookupError:
            sys.exit(0)
        for _ in range(200):
            if not alive(broker):
                sys.exit(0)
            time.sleep(0.1)
        try:
            os.killpg(broker, signal.SIGKILL)
        except ProcessLookupError:
            pass
        sys.exit(0)
    time.sleep(0.5)
"""


class Broker:
    """One broker's work directory and, while it runs, its JVM.

    ``stop()`` and ``start()`` take the same port and data directory, so topics, records and
    committed offsets survive an outage. ``pause()``/``resume()`` freeze the JVM instead: its
    port still accepts connections but nothing answers, like a hung broker.
    """

    def __init__(
        self,
        workdir: Path,
        port: int,
        controller_port: int,
        *,
        heap: str = "512m",
        owner_pid: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port
        self.controller_port = controller_port
        self.heap = heap
        self.owner_pid = owner_pid
        self.extra_jvm_flags: tuple[str, ...] = ()
        self.pid: int | None = None
        self.start_seconds: float | None = None
        """How long the last ``start()`` took until the broker served metadata."""
        self._process: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running() else "stopped"
        return f"<Broker {self.bootstrap} {state} in {self.workdir}>"

    def running(self) -> bool:
        return self.pid is not None and pid_alive(self.pid)

    def start(self, timeout: float = START_TIMEOUT) -> Broker:
        """Start the JVM (unless it runs already) and wait until it serves metadata."""
        begun = time.monotonic()
        existing = _read_pid(self.workdir)
        if existing is not None and _is_our_broker(existing, self.workdir):
            self.pid = existing
        else:
            self._spawn()
        self._wait_ready(time.monotonic() + timeout)
        self.start_seconds = time.monotonic() - begun
        return self

    def _spawn(self) -> None:
        workdir = self.workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "server.properties").write_text(
            server_properties(workdir, self.port, self.controller_port)
        )
        (workdir / "log4j2.properties").write_text(log4j2_properties(workdir))
        state = {"port": self.port, "controller_port": self.controller_port, "heap": self.heap}
        (workdir / "broker.json").write_text(json.dumps(state) + "\n")
        _format_storage(workdir)
        cmd = _java_command(
            self.heap,
            workdir,
            "kafka.Kafka",
            str(workdir / "server.properties"),
            extra=self.extra_jvm_flags,
        )
        with open(workdir / "broker.out", "ab") as out:
            self._process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: Ctrl-C of `up` spares it
                cwd=workdir,
            )
        self.pid = self._process.pid
        (workdir / "kafka.pid").write_text(f"{self.pid}\n")
        if self.owner_pid is not None:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-c", _WATCHDOG, str(self.owner_pid), str(self.pid)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )

    def _wait_ready(self, deadline: float) -> None:
        assert self.pid is not None
        while True:
            if not pid_alive(self.pid):
                self._forget()
                raise BrokerFailed(
                    f"Kafka on {self.bootstrap} exited while starting\n{_logs_tail(self.workdir)}"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise BrokerFailed(
                    f"Kafka on {self.bootstrap} did not serve metadata in time (stopped it)\n"
                    f"{_logs_tail(self.workdir)}"
                )
            if _serves_clients(self.bootstrap, min(left, 5.0)):
                return
            time.sleep(0.1)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL after ``timeout``. No-op when stopped."""
        pid = self.pid if self.pid is not None else _read_pid(self.workdir)
        if pid is not None and (self._process is not None or _is_our_broker(pid, self.workdir)):
            _terminate(pid, timeout)
        self._forget()

    def kill(self) -> None:
        """SIGKILL at once: a crash; the next start recovers the logs."""
        self.stop(timeout=0)

    def restart(self, timeout: float = START_TIMEOUT) -> Broker:
        self.stop()
        return self.start(timeout)

    def pause(self) -> None:
        """Freeze the JVM (SIGSTOP): connections hang instead of being refused."""
        assert self.pid is not None, "not running"
        os.killpg(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.pid is not None, "not running"
        os.killpg(self.pid, signal.SIGCONT)

    def _forget(self) -> None:
        if self._process is not None:
            with contextlib.suppress(Exception):
                self._process.wait(timeout=5)
            self._process = None
        if self._watchdog is not None:
            try:
                self._watchdog.wait(timeout=2)  # it ends by itself once the broker is gone
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
                self._watchdog.wait()
            self._watchdog = None
        self.pid = None
        (self.workdir / "kafka.pid").unlink(missing_ok=True)


def _terminate(pid: int, timeout: float) -> None:
    def signal_group(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    signal_group(signal.SIGCONT)  # a paused broker cannot handle SIGTERM
    if timeout > 0:
        signal_group(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.05)
    signal_group(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _state(workdir: Path) -> dict[str, object]:
    try:
        data = json.loads((workdir / "broker.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def start(
    port: int,
    *,
    workdir: Path | str,
    controller_port: int | None = None,
    heap: str = "512m",
    timeout: float = START_TIMEOUT,
    owner_pid: int | None = None,
) -> Broker:
    """Start a broker on ``127.0.0.1:port`` with its data in ``workdir``; returns once ready.

    Fetches Kafka first if needed (:func:`ensure_dist`). When a broker of ``workdir`` already
    runs, returns it. ``controller_port`` defaults to the one this directory used before, else
    a free port. ``owner_pid``: stop the broker when that process dies (test runs use their
    own pid, so a killed test run leaves no JVM behind).
    """
    ensure_dist()
    workdir = Path(workdir).resolve()
    if controller_port is None:
        known = _state(workdir).get("controller_port")
        controller_port = known if isinstance(known, int) and known != port else free_port()
    broker = Broker(workdir, port, controller_port, heap=heap, owner_pid=owner_pid)
    return broker.start(timeout)


def stop(workdir_or_broker: Path | str | Broker, timeout: float = STOP_TIMEOUT) -> bool:
    """Stop the broker of a work directory (by its pid file) or a :class:`Broker`.

    Returns False when nothing was running.
    """
    if isinstance(workdir_or_broker, Broker):
        was = workdir_or_broker.running()
        workdir_or_broker.stop(timeout)
        return was
    workdir = Path(workdir_or_broker).resolve()
    pid = _read_pid(workdir)
    if pid is None or not _is_our_broker(pid, workdir):
        (workdir / "kafka.pid").unlink(missing_ok=True)
        return False
    _terminate(pid, timeout)
    (workdir / "kafka.pid").unlink(missing_ok=True)
    return True


def status(workdir: Path | str) -> Broker | None:
    """The running broker of ``workdir``, or None."""
    workdir = Path(workdir).resolve()
    pid = _read_pid(workdir)
    state = _state(workdir)
    if pid is None or not _is_our_broker(pid, workdir):
        return None
    port, controller_port = state.get("port"), state.get("controller_port")
    if not isinstance(port, int) or not isinstance(controller_port, int):
        return None
    broker = Broker(workdir, port, controller_port)
    broker.pid = pid
    return broker


# --- command line -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kafka.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("dist", help="fetch Kafka into tools/kafka/dist/lib (java + mvn)")
    up = commands.add_parser("up", help="start a broker (no-op when it runs already)")
    up.add_argument("--port", type=int, default=9092)
    up.add_argument("--controller-port", type=int, default=None)
    up.add_argument("--heap", default="512m")
    up.add_argument("--timeout", type=float, default=START_TIMEOUT)
    for name, text in (("down", "stop the broker"), ("status", "is it running?")):
        commands.add_parser(name, help=text)
    for sub in commands.choices.values():
        if sub.prog.endswith("dist"):
            continue
        sub.add_argument("--dir", type=Path, default=Path("var/kafka"), help="work directory")
    for name in TOOLS:  # listed here; main() hands their arguments to Kafka untouched
        commands.add_parser(name, help=f"Kafka's bin/kafka-{name}.sh (arguments pass through)")
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in TOOLS:
        try:
            return subprocess.run(tool_command(argv[0], *argv[1:]), check=False).returncode
        except KafkaToolError as exc:
            print(f"kafka.py: {exc}", file=sys.stderr)
            return 1
    args = parser.parse_args(argv)
    try:
        if args.command == "dist":
            print(ensure_dist())
        elif args.command == "up":
            running = status(args.dir)
            if running is not None:
                if running.port != args.port:
                    print(
                        f"a broker of {args.dir} already runs on {running.bootstrap}, "
                        f"not on port {args.port}; `down` first",
                        file=sys.stderr,
                    )
                    return 1
                print(running.bootstrap)
                return 0
            broker = start(
                args.port,
                workdir=args.dir,
                controller_port=args.controller_port,
                heap=args.heap,
                timeout=args.timeout,
            )
            print(broker.bootstrap)
            print(
                f"started in {broker.start_seconds:.1f}s (pid {broker.pid}, data in "
                f"{broker.workdir}); stop with: python {sys.argv[0]} down --dir {args.dir}",
                file=sys.stderr,
            )
        elif args.command == "down":
            print("stopped" if stop(args.dir) else "not running")
        elif args.command == "status":
            running = status(args.dir)
            if running is None:
                print("not running")
                return 3
            print(f"{running.bootstrap} (pid {running.pid}, data in {running.workdir})")
    except KafkaToolError as exc:
        print(f"kafka.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
