"""Fixtures that run lakeferry as a real process (``tools/harness.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from helpers.markers import starts_processes
from helpers.tools import load_tool

if TYPE_CHECKING:
    import harness as harness  # tools/ is on mypy's path: the checker reads the module
else:
    harness = load_tool("harness")
ROOT_DIR = harness.ROOT


class DaemonEnv:
    """A state directory, a config file and a way to start daemons on it."""

    def __init__(self, root: Path, *, kafka: str | None = None, namespace: str = "") -> None:
        self.root = root
        self.state = root / "state"
        self.data: dict[str, Any] = harness.config_dict(
            self.state, kafka=kafka, namespace=namespace
        )
        self.config = root / "lakeferry.toml"
        self.log = root / "daemon.log"
        self.daemons: list[Any] = []
        self.write()

    def write(self, text: str | None = None) -> None:
        if text is None:
            harness.write_config(self.config, self.data)
        else:
            self.config.write_text(text)

    @property
    def metrics_port(self) -> int:
        """The metrics port of the daemon started last on this env's config (each start takes a
        free port, named in its ready line)."""
        mine = [d for d in self.daemons if d.config == self.config]
        assert mine, "no daemon started on this env's config"
        return int(mine[-1].metrics_port)

    def start(self, **kwargs: Any) -> Any:
        daemon = harness.DaemonProcess(self.config, self.log, **kwargs)
        self.daemons.append(daemon)
        return daemon.start()

    def run_until_killed(self, failpoint: str, timeout: float = 120) -> None:
        """Run a daemon until the failpoint ``failpoint`` (``name=kill@n``) kills it."""
        import signal

        daemon = harness.DaemonProcess(
            self.config, self.log, env={"LAKEFERRY_FAILPOINTS": failpoint}
        )
        self.daemons.append(daemon)
        daemon.start(wait_ready=0)
        code = daemon.wait(timeout)
        assert code == -signal.SIGKILL, f"exited {code}, not killed at {failpoint}"

    def assert_landed_once(self, events_file: Path, count: int, timeout: float) -> None:
        """Wait until ``count`` events of ``events_file`` landed; none lost, none twice."""
        counts = self.wait_settled(
            events_file, landed=count, dead_lettered=0, timeout=timeout,
            what="every event's file to land",
        )  # fmt: skip
        assert (counts["lost"], counts["duplicate_rows"], counts["duplicate_event_rows"]) == (
            0, 0, 0,
        )  # fmt: skip
        code, _ = self.audit(events_file)
        assert code == 0

    def start_worker(
        self, stages: str, name: str, env: dict[str, str] | None = None
    ) -> tuple[Any, int]:
        """One more ``lakeferry run --stages`` process (``--instance name``) with its own config
        file, metrics port and log; returns the daemon and its metrics port."""
        import copy

        data = copy.deepcopy(self.data)
        for key in ("metrics", "live", "console"):
            data[key]["listen"] = "127.0.0.1:0"
        config = harness.write_config(self.root / f"{name}.toml", data)
        daemon = harness.DaemonProcess(
            config, self.root / f"{name}.log", stages=stages, instance=name, env=env
        )
        self.daemons.append(daemon)
        daemon.start()
        return daemon, daemon.metrics_port

    def cli(self, *args: str, **kwargs: Any) -> Any:
        return harness.cli(self.config, *args, **kwargs)

    def letters(self, *args: str) -> list[dict[str, Any]]:
        """``lakeferry dlq list --json`` (JSON Lines), parsed."""
        import json

        result = self.cli("dlq", "list", "--json", *args)
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    def shown(self, key: str) -> dict[str, Any]:
        """``lakeferry dlq show KEY --json``: the one letter under ``key``."""
        import json

        result = self.cli("dlq", "show", key, "--json")
        assert result.returncode == 0, result.stderr
        [line] = result.stdout.splitlines()
        return json.loads(line)  # type: ignore[no-any-return]

    def metrics(self) -> dict[str, float]:
        return harness.scrape(self.metrics_port)

    def metric(self, name: str, **labels: str) -> float:
        return harness.metric_sum(self.metrics(), name, **labels)

    def submit_events(self, events: list[dict[str, Any]]) -> Path:
        import json

        path = self.root / f"events-{len(list(self.root.glob('events-*.jsonl')))}.jsonl"
        path.write_text("".join(json.dumps(e) + "\n" for e in events))
        result = self.cli("submit", "--file", str(path), "--quiet")
        assert result.returncode == 0, result.stderr
        return path

    def spool(self, events_file: Path) -> None:
        """Hand ``events_file`` to the daemon as a producer would, events the CLI refuses
        included: written into the spool source's folder under a hidden name, renamed in."""
        spool = Path(self.data["sources"][0]["path"])
        spool.mkdir(parents=True, exist_ok=True)
        partial = spool / f".{events_file.name}.partial"
        partial.write_bytes(events_file.read_bytes())
        partial.rename(spool / events_file.name)

    def audit(self, *events_files: Path) -> tuple[int, dict[str, int]]:
        import json

        args = ["audit", "--json"]
        for f in events_files:
            args += ["--events", str(f)]
        result = self.cli(*args)
        assert result.returncode in (0, 1), result.stderr
        return result.returncode, json.loads(result.stdout.strip().splitlines()[-1])

    def wait_settled(
        self,
        *events_files: Path,
        landed: int,
        dead_lettered: int | None = None,
        timeout: float,
        what: str,
    ) -> dict[str, int]:
        """Audit until nothing is in flight and ``landed`` files (at least, when dead letters
        are left open with ``dead_lettered=None``: landed + dead-lettered) are accounted for;
        returns the counts. On a timeout the failure shows the last counts and what each
        daemon complained about."""
        from helpers.wait import wait_for

        def done(counts: dict[str, int]) -> bool:
            if counts["in_flight"]:
                return False
            if dead_lettered is None:
                return counts["landed"] + counts["dead_lettered"] >= landed
            return counts["landed"] == landed and counts["dead_lettered"] == dead_lettered

        try:
            return wait_for(
                lambda: self.audit(*events_files)[1], done, timeout=timeout, what=what, interval=1
            )
        except AssertionError as failure:
            said = [
                f"{d.log_path.name}{'' if d.alive() else ' (exited)'}: " + "; ".join(d.complaints())
                for d in self.daemons
            ]
            raise AssertionError("\n".join([str(failure), *said, *self._lags()])) from None

    def _lags(self) -> list[str]:
        """Where work waits, per live daemon: its consumer lag by group and topic, not zero."""
        out = []
        for daemon in self.daemons:
            if not daemon.alive():
                continue
            try:
                metrics = harness.scrape(daemon.metrics_port)
            except (OSError, RuntimeError, TimeoutError, ValueError) as exc:
                out.append(f"{daemon.log_path.name}: no metrics ({exc})")
                continue
            lag: dict[str, float] = {}
            for key, value in metrics.items():
                if key.startswith("lakeferry_consumer_lag{") and value:
                    labels = dict(part.split("=", 1) for part in key[23:-1].split(","))
                    where = f"{labels['group'].strip(chr(34))} on {labels['topic'].strip(chr(34))}"
                    lag[where] = lag.get(where, 0) + value
            shown = ", ".join(f"{where}: {n:.0f}" for where, n in sorted(lag.items()))
            out.append(f"{daemon.log_path.name} lag: {shown or 'none'}")
        return out


@pytest.fixture
@starts_processes
def daemon_env(tmp_path: Path) -> Iterator[DaemonEnv]:
    env = DaemonEnv(tmp_path)
    yield env
    for daemon in env.daemons:
        daemon.stop()


@pytest.fixture
@starts_processes
def kafka_env(tmp_path: Path, kafka_broker: Any) -> Iterator[DaemonEnv]:
    """A daemon environment on the shared test broker, with topics of its own."""
    import uuid

    env = DaemonEnv(tmp_path, kafka=kafka_broker.bootstrap, namespace=f"t{uuid.uuid4().hex[:8]}.")
    result = env.cli("topics", "ensure")
    assert result.returncode == 0, result.stderr
    yield env
    for daemon in env.daemons:
        daemon.stop()


def origin_events(
    origin: Any, prefix: str, n: int, *, flaky_every: int = 0, slow: float = 0
) -> list[dict[str, Any]]:
    """``n`` events for files of the test origin (sizes vary; every ``flaky_every``-th fails
    once with 503; ``slow`` delays each body)."""
    out = []
    for i in range(n):
        name = f"{prefix}-{i}.bin"
        size = 2048 + (i * 7919) % 60000
        if flaky_every and i % flaky_every == 0:
            url = origin.file_url(name, size, route="flaky", fail=1)
        elif slow:
            url = origin.file_url(name, size, route="slow", delay=slow)
        else:
            url = origin.file_url(name, size)
        out.append({"id": f"{prefix}-{i}", "url": url})
    return out
