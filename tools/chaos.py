"""``make chaos``: the pipeline on Kafka as separate processes, under faults, must lose nothing.

A driver starts Apache Kafka, the DFS emulator (the OneLake sink) and a fault-injecting origin;
runs ingest, 2 download, 2 upload and 2 results workers as separate ``lakeferry run --stages``
processes with a cache quota small enough to force backpressure; submits a few thousand events
(some of them bodies without ``size`` larger than the whole cache quota); and while they flow
it SIGKILLs a random worker every few seconds (restarting it), restarts the broker once, turns
the sink into a 503 storm for a while, freezes a results worker in the middle of a Delta commit
(a failpoint) for longer than the session timeout, and tries to start a second process under a
running worker's instance. At the end ``lakeferry audit --json`` must report 0 lost, 0 duplicate
inventory or events-table rows, 0 checksum mismatches, 0 temporary files and 0 unrecorded files
in the sink; nothing may be left in the cache; the second process must have been refused (exit
2); and every event must have landed or be in the DLQ with the reason its URL asked the origin
to produce. The figures are printed.

``--quick`` is the reduced run that ``make test`` includes (tests/test_chaos.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dfs_emulator
import harness
import origin as origin_mod
from kafka import kafka as kafka_tool

WORKERS = {
    "ingest-1": "ingest",
    "download-1": "download",
    "download-2": "download",
    "upload-1": "upload",
    "upload-2": "upload",
    "results-1": "results",
    "results-2": "results",
}
FROZEN = "results-1"
"""The worker that freezes itself in the middle of a Delta commit (a failpoint)."""
FREEZE_FOR = 10.0
"""Seconds a frozen worker stays frozen: past the session timeout (6 s in these configs)."""
WORKSPACE = "Chaos"
BASE = "Lake.Lakehouse/Files/landing"
ACCOUNT_KEY_ENV = "LAKEFERRY_ONELAKE_ACCOUNT_KEY"


@dataclass
class Plan:
    events: int
    storm_seconds: float
    kill_every: tuple[float, float]
    broker_down_seconds: float
    timeout: float


FULL = Plan(
    events=3000, storm_seconds=20, kill_every=(2.0, 5.0), broker_down_seconds=8, timeout=900
)
QUICK = Plan(events=300, storm_seconds=6, kill_every=(2.0, 4.0), broker_down_seconds=4, timeout=300)


@dataclass
class Figures:
    kills: Counter[str] = field(default_factory=Counter)
    broker_restarts: int = 0
    broker_down_seconds: float = 0.0
    storm_seconds: float = 0.0
    freezes: int = 0
    second_daemon: str = "not tried"
    elapsed: float = 0.0


def build_events(
    origin: Any, n: int, rng: random.Random
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Events and the outcome each one must end in (``landed`` or a DLQ reason)."""
    events: list[dict[str, Any]] = []
    expect: dict[str, str] = {}
    for i in range(n):
        kind = rng.choices(
            ["good", "flaky", "slow", "missing", "truncated", "badsum", "oversize"],
            weights=[70, 12, 6, 5, 4, 3, 1],
        )[0]
        name = f"{kind}-{i}.bin"
        size = rng.randint(2_000, 120_000)
        event_id = f"chaos-{i:05d}"
        event: dict[str, Any] = {"id": event_id}
        if kind == "good":
            event["url"] = origin.file_url(name, size)
            event["sha256"] = origin_mod.sha256_of(name, size)
            expect[event_id] = "landed"
        elif kind == "flaky":
            event["url"] = origin.file_url(name, size, route="flaky", fail=rng.randint(1, 3))
            expect[event_id] = "landed"
        elif kind == "slow":
            event["url"] = origin.file_url(name, size, route="slow", delay=0.5)
            expect[event_id] = "landed"
        elif kind == "missing":
            event["url"] = f"{origin.url}/missing/{name}"
            expect[event_id] = "not_found"
        elif kind == "truncated":  # always cut short: transient until the ladder is exhausted
            event["url"] = origin.file_url(name, size, route="truncated")
            expect[event_id] = "retries_exhausted"
        elif kind == "badsum":
            event["url"] = origin.file_url(name, size)
            event["sha256"] = "f" * 64
            expect[event_id] = "checksum_mismatch"
        else:  # no size, a body larger than the whole cache quota (1 MB), announced or not
            route = rng.choice(["chunked", "files"])
            event["url"] = origin.file_url(name, rng.randint(2, 4) << 20, route=route)
            expect[event_id] = "too_large"
        events.append(event)
    return events, expect


def audit(
    config: Path, events_file: Path, *, verify_sink: bool = True
) -> tuple[int, dict[str, int]]:
    extra = [] if verify_sink else ["--no-verify-sink"]  # the sink may be in a 503 storm
    result = harness.cli(config, "audit", "--json", "--events", str(events_file), *extra)
    if result.returncode not in (0, 1) or not result.stdout.strip():
        raise RuntimeError(f"audit failed ({result.returncode}): {result.stderr[-2000:]}")
    return result.returncode, json.loads(result.stdout.strip().splitlines()[-1])


def run(plan: Plan, state: Path, seed: int) -> int:
    rng = random.Random(seed)
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    figures = Figures()
    kafka_tool.ensure_dist(quiet=True)
    broker = kafka_tool.start(harness.free_port(), workdir=state / "kafka")
    os.environ[ACCOUNT_KEY_ENV] = "Y2hhb3M="  # the emulator checks a key is present, not its value
    try:
        with dfs_emulator.serve(state / "dfs") as dfs, origin_mod.serve() as origin:
            return drive(plan, state, rng, figures, broker, dfs, origin)
    finally:
        broker.stop()


def drive(
    plan: Plan,
    state: Path,
    rng: random.Random,
    figures: Figures,
    broker: Any,
    dfs: Any,
    origin: Any,
) -> int:
    data = harness.config_dict(
        state / "lake", kafka=broker.bootstrap,
        namespace="chaos.", ladder=("100ms", "200ms", "400ms", "800ms"),
    )  # fmt: skip
    data["cache"]["quota"] = "1MB"  # ~10 files: downloads must wait for uploads
    data["upload"].update({"breaker_cooldown": "1s", "backoff_max": "2s"})
    data["sink"] = {
        "kind": "onelake", "account_url": dfs.account_url(), "filesystem": WORKSPACE,
        "base_path": BASE, "path_template": "{event.id}/{filename}",
        "credential": "account_key", "create_filesystem": True, "timeout": "10s",
    }  # fmt: skip
    data["bus"]["kafka"]["producer"] = {"message.timeout.ms": 120_000}
    data["live"]["listen"] = ""
    data["console"]["listen"] = ""  # several workers share this config
    data["sources"] = []
    config = harness.write_config(state / "lakeferry.toml", data)  # metrics on port 0 each
    harness.cli(config, "topics", "ensure", check=True)

    freeze_at = rng.randint(2, 6)

    def start(name: str) -> harness.DaemonProcess:
        # The frozen worker stops itself at its n-th inventory commit, after the checks and
        # right before the commit (each restart arms it again).
        env = {"LAKEFERRY_FAILPOINTS": f"delta.inventory.commit=stop@{freeze_at}"}
        daemon = harness.DaemonProcess(
            config, state / f"{name}.log", stages=WORKERS[name], instance=name,
            env=env if name == FROZEN else None,
        )  # fmt: skip
        return daemon.start(wait_ready=90)

    workers: dict[str, harness.DaemonProcess] = {}
    try:
        for name in WORKERS:
            workers[name] = start(name)
        return chaos_loop(
            plan, state, rng, figures, broker, dfs, origin, workers, start, config, data
        )
    finally:
        for worker in workers.values():
            worker.stop()  # whatever happened, no worker outlives the driver


def chaos_loop(
    plan: Plan, state: Path, rng: random.Random, figures: Figures, broker: Any, dfs: Any,
    origin: Any, workers: dict[str, harness.DaemonProcess], start: Any, tool_config: Path,
    data: dict[str, Any],
) -> int:  # fmt: skip
    events, expect = build_events(origin, plan.events, rng)
    events_file = state / "events.jsonl"
    events_file.write_text("".join(json.dumps(e) + "\n" for e in events))
    started = time.monotonic()
    harness.cli(
        tool_config, "submit", "--file", str(events_file), "--quiet", check=True, timeout=300
    )
    print(f"chaos: {plan.events} events submitted; workers {', '.join(WORKERS)}")

    control = dfs_emulator.RemoteControl(dfs.url)
    figures.second_daemon = second_daemon(tool_config)
    print(f"chaos: a second process under instance download-1: {figures.second_daemon}")
    frozen_since: float | None = None
    next_kill = started + rng.uniform(*plan.kill_every)
    broker_at, storm_at = started + 8, started + 16
    broker_done = storm_done = False
    deadline = started + plan.timeout
    last_report = 0.0
    while time.monotonic() < deadline:
        now = time.monotonic()
        if not broker_done and now >= broker_at:
            print(f"chaos: broker down for {plan.broker_down_seconds:.0f}s")
            down = time.monotonic()
            broker.stop()
            time.sleep(plan.broker_down_seconds)
            broker.start()
            figures.broker_restarts += 1
            figures.broker_down_seconds += time.monotonic() - down
            broker_done = True
        if not storm_done and now >= storm_at:
            print(f"chaos: sink 503 storm for {plan.storm_seconds:.0f}s")
            control.storm(status=503, seconds=plan.storm_seconds, retry_after=1)
            figures.storm_seconds += plan.storm_seconds
            storm_done = True
        frozen = workers[FROZEN]
        if frozen.alive() and process_state(frozen.pid) == "T":
            if frozen_since is None:
                frozen_since = now
                print(f"chaos: {FROZEN} froze in the middle of a commit")
            elif now - frozen_since >= FREEZE_FOR:
                frozen.signal(signal.SIGCONT)
                figures.freezes += 1
                frozen_since = None
                print(f"chaos: {FROZEN} resumed after {FREEZE_FOR:.0f}s")
        busy = now < storm_at + plan.storm_seconds + 10  # the scripted faults, then let it settle
        if busy and now >= next_kill:
            victim = rng.choice([name for name in WORKERS if name != FROZEN or not frozen_since])
            workers[victim].kill()
            figures.kills[victim] += 1
            time.sleep(rng.uniform(0.2, 1.0))
            workers[victim] = start(victim)
            next_kill = time.monotonic() + rng.uniform(*plan.kill_every)
        if now - last_report >= 5:
            _code, counts = audit(tool_config, events_file, verify_sink=False)
            last_report = now
            print(
                f"chaos: {now - started:5.0f}s landed {counts['landed']} dead "
                f"{counts['dead_lettered']} in flight {counts['in_flight']} lost {counts['lost']}"
            )
            settled = counts["landed"] + counts["dead_lettered"] >= plan.events
            quiet = frozen_since is None and not busy
            if settled and counts["in_flight"] == 0 and broker_done and storm_done and quiet:
                break
        time.sleep(0.2)
    figures.elapsed = time.monotonic() - started
    for worker in workers.values():  # a worker still frozen could not drain
        if worker.alive() and process_state(worker.pid) == "T":
            worker.signal(signal.SIGCONT)
    exits = {name: w.terminate(timeout=90) if w.alive() else -1 for name, w in workers.items()}
    return report(plan, state, figures, tool_config, events_file, expect, exits, dfs, data)


def report(
    plan: Plan, state: Path, figures: Figures, config: Path, events_file: Path,
    expect: dict[str, str], exits: dict[str, int], dfs: Any, data: dict[str, Any],
) -> int:  # fmt: skip
    code, counts = audit(config, events_file)
    problems: list[str] = []
    for key in (
        "lost", "duplicate_rows", "duplicate_event_rows", "checksum_mismatches",
        "missing_in_sink", "in_flight", "temp_files", "unrecorded_in_sink",
    ):  # fmt: skip
        if counts[key]:
            problems.append(f"{key}: {counts[key]}")
    if not figures.second_daemon.startswith("refused"):
        problems.append(
            f"a second process under a running worker's instance: {figures.second_daemon}"
        )
    letters = [
        json.loads(line)
        for line in harness.cli(config, "dlq", "list", "--json").stdout.splitlines()
    ]
    reasons = {x["event_id"]: x["reason"] for x in letters if x["event_id"]}
    wrong = [
        f"{eid}: expected {want}, got {reasons.get(eid, 'landed?')}"
        for eid, want in expect.items()
        if want != "landed" and reasons.get(eid) != want
    ]
    problems += wrong[:10]
    landed_expected = sum(1 for v in expect.values() if v == "landed")
    if counts["landed"] != landed_expected:
        problems.append(f"landed {counts['landed']}, expected {landed_expected}")
    cache = Path(data["cache"]["path"])
    left = [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []
    if left:
        problems.append(f"{len(left)} file(s) left in the cache, e.g. {left[0].name}")
    bad_exits = {k: v for k, v in exits.items() if v != 0}
    if bad_exits:
        problems.append(f"workers did not drain cleanly: {bad_exits}")
    print("\n== chaos figures ==")
    print(f"events                {plan.events} ({Counter(expect.values()).most_common()})")
    print(f"kills (SIGKILL)       {sum(figures.kills.values())}  {dict(figures.kills)}")
    print(
        f"broker restarts       {figures.broker_restarts} ({figures.broker_down_seconds:.0f}s down)"
    )
    print(f"sink 503 storm        {figures.storm_seconds:.0f}s")
    print(f"frozen mid-commit     {figures.freezes} ({FROZEN}, {FREEZE_FOR:.0f}s each)")
    print(f"second process        {figures.second_daemon}")
    print(f"elapsed               {figures.elapsed:.0f}s")
    print(f"final audit           {json.dumps(counts)}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("chaos: PASSED" if not problems and code == 0 else "chaos: FAILED")
    return 0 if not problems and code == 0 else 1


def process_state(pid: int) -> str:
    """``R``, ``S``, ``T`` (stopped) ... from /proc (``?`` when the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "?"


def second_daemon(config: Path) -> str:
    """Start a process under a running worker's instance: it must exit 2 at once."""
    result = harness.cli(config, "run", "--stages", "download", "--instance", "download-1",
                         timeout=120)  # fmt: skip
    line = (result.stderr.strip().splitlines() or ["(nothing)"])[-1]
    if result.returncode == 2 and "owns instance 'download-1'" in line:
        return f"refused (exit 2: {line})"
    return f"NOT refused (exit {result.returncode}: {line})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="the reduced run (CI)")
    parser.add_argument("--events", type=int, help="override the number of events")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--state", default=str(harness.ROOT / "var" / "chaos"))
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    if args.events:
        plan = Plan(
            args.events, plan.storm_seconds, plan.kill_every, plan.broker_down_seconds, plan.timeout
        )
    print(f"chaos: seed {args.seed}")
    return run(plan, Path(args.state), args.seed)


if __name__ == "__main__":
    sys.exit(main())
