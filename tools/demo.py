"""``make demo``: the whole job in one command, on the embedded bus, with real processes.

1. Start a local HTTP origin serving generated files: good ones, some 404, some that fail with
   503 a few times before succeeding, some whose announced sha256 is wrong.
2. Start ``lakeferry run`` on a generated config with a short retry ladder.
3. Submit ~1,000 events with ``lakeferry submit --file``, and drop a producer's file with a few
   malformed lines into the spool folder (submit refuses bad events itself; a source's bad lines
   end up in the DLQ).
4. Wait until every event has landed or is dead-lettered, print a summary, stop the daemon
   with SIGTERM, and print ``lakeferry audit --json`` as the last line.

Exits 0 only if every good file landed with the right sha256, every bad one is in the DLQ with
the right reason, the daemon drained cleanly, and the audit found nothing lost or duplicated.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import origin as origin_mod

from lakeferry.audit import audit
from lakeferry.build import Builder
from lakeferry.buses import open_bus
from lakeferry.config import load_config
from lakeferry.dlq import current_letters
from lakeferry.registry import load_registry


def build_events(
    origin: Any, args: argparse.Namespace
) -> tuple[list[bytes], dict[str, dict[str, Any]]]:
    """Event lines for the submit file, and what should happen to each event id."""
    rng = random.Random(args.seed)
    lines: list[bytes] = []
    expect: dict[str, dict[str, Any]] = {}

    def add(
        kind: str, i: int, url: str, size: int, name: str, sha: str | None, outcome: str
    ) -> None:
        event_id = f"demo-{kind}-{i:05d}"
        event: dict[str, Any] = {"id": event_id, "url": url, "metadata": {"kind": kind}}
        if sha:
            event["sha256"] = sha
        lines.append(json.dumps(event).encode())
        expect[event_id] = {
            "outcome": outcome,
            "sha256": origin_mod.sha256_of(name, size),
            "size": size,
        }

    for i in range(args.good):
        size = rng.randint(1024, 256 * 1024)
        name = f"good-{i}.bin"
        sha = origin_mod.sha256_of(name, size) if i % 2 == 0 else None
        add("good", i, origin.file_url(name, size), size, name, sha, "landed")
    for i in range(args.flaky):
        size = rng.randint(1024, 64 * 1024)
        name = f"flaky-{i}.bin"
        add(
            "flaky",
            i,
            origin.file_url(name, size, route="flaky", fail=2),
            size,
            name,
            None,
            "landed",
        )
    for i in range(args.missing):
        add(
            "missing",
            i,
            f"{origin.url}/missing/gone-{i}.bin",
            0,
            f"gone-{i}.bin",
            None,
            "not_found",
        )
    for i in range(args.badsum):
        size = 4096
        name = f"badsum-{i}.bin"
        add("badsum", i, origin.file_url(name, size), size, name, "0" * 64, "checksum_mismatch")
    rng.shuffle(lines)
    return lines, expect


def drop_in_spool(spool: Path, lines: list[bytes]) -> None:
    """A producer's file in the spool folder (written elsewhere, then renamed in)."""
    if not lines:
        return
    spool.mkdir(parents=True, exist_ok=True)
    staging = spool / ".producer.jsonl.partial"
    staging.write_bytes(b"\n".join(lines) + b"\n")
    staging.rename(spool / "producer.jsonl")


async def snapshot(config_path: Path) -> tuple[Any, list[Any], list[Any]]:
    registry = load_registry()
    config = load_config(config_path, registry)
    bus = await open_bus(config)
    builder = Builder(config, registry, owner="demo")
    inventory, sink = builder.inventory(), builder.sink()
    try:
        report = await audit(config, bus, inventory, sink, verify_sink=False)
        letters = await current_letters(bus, config.core.topics.dlq)
        rows = await inventory.read_inventory()
        return report, letters, rows
    finally:
        await inventory.aclose()
        await sink.aclose()
        await bus.aclose()


def send_with_progress(azure: Any, lines: list[bytes]) -> None:
    """Publish the events to the Event Hub emulator, with a progress bar like submit's."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress

    with Progress("[bold]sending to Event Hub", BarColumn(), MofNCompleteColumn()) as progress:
        task = progress.add_task("send", total=len(lines))
        azure.send(lines, progress=lambda n: progress.advance(task, n))


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return (
        statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]
        if len(values) > 1
        else values[0]
    )


def check_outcomes(
    expect: dict[str, dict[str, Any]],
    rows: list[Any],
    letters: list[Any],
    read_sink: Any,
) -> list[str]:
    """What went other than ``expect`` says: each good file landed once with its sha256 (in
    the inventory and in the sink, read with ``read_sink(destination)``), each bad one in the
    DLQ with its reason."""
    problems: list[str] = []
    landed = {r.event_id: r for r in rows}
    dead = {letter.event_id: letter.letter.reason for letter in letters if letter.event_id}
    for event_id, want in expect.items():
        if want["outcome"] != "landed":
            if dead.get(event_id) != want["outcome"]:
                got = dead.get(event_id)
                problems.append(f"{event_id}: expected DLQ reason {want['outcome']}, got {got}")
            continue
        row = landed.get(event_id)
        if row is None:
            problems.append(f"{event_id} did not land")
        elif row.sha256 != want["sha256"] or (
            hashlib.sha256(read_sink(row.destination)).hexdigest() != want["sha256"]
        ):
            problems.append(f"{event_id} landed with the wrong sha256")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description="lakeferry end-to-end demo")
    parser.add_argument("--state", default="var/demo", help="state directory (wiped first)")
    parser.add_argument("--good", type=int, default=880)
    parser.add_argument("--flaky", type=int, default=50)
    parser.add_argument("--missing", type=int, default=50)
    parser.add_argument("--badsum", type=int, default=15)
    parser.add_argument("--malformed", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--bus", choices=["embedded", "kafka"], default="embedded")
    parser.add_argument("--kafka", help="with --bus kafka: use this broker instead of starting one")
    parser.add_argument(
        "--nodes",
        type=int,
        default=0,
        help="with --bus kafka: a fleet of this many nodes, one killed and evacuated mid-run, "
        "one joining late (tools/demo_fleet.py); ~3,000 events",
    )
    parser.add_argument(
        "--migrate",
        action="store_true",
        help="a cut-over from the polling pipeline: 3,000 events in the Kusto emulator, 500 "
        "landed before, the rest backfilled by a kusto source (tools/demo_migrate.py)",
    )
    parser.add_argument(
        "--azure",
        action="store_true",
        help="the Azure path on local servers: Event Hubs source, OneLake sink, Delta on Azurite",
    )
    args = parser.parse_args()
    if args.nodes:
        if args.bus != "kafka" or args.azure or args.nodes < 2:
            parser.error("--nodes needs --bus kafka, at least 2 nodes, and no --azure")
        scale = 3  # ~3,000 events for a fleet
        args.good, args.flaky = args.good * scale, args.flaky * scale
        args.missing, args.badsum = args.missing * scale, args.badsum * scale
    if args.bus == "kafka" and not args.kafka:
        import kafka.kafka as kafka_tool  # tools/kafka/kafka.py

        workdir = harness.ROOT / "var" / "demo-kafka-broker"
        shutil.rmtree(workdir, ignore_errors=True)
        kafka_tool.ensure_dist()
        broker = kafka_tool.start(harness.free_port(), workdir=workdir)
        print(f"started Kafka on {broker.bootstrap}")
        try:
            args.kafka = broker.bootstrap
            code, last_line = run(args)
        finally:
            kafka_tool.stop(broker)
            print("stopped Kafka")
    else:
        code, last_line = run(args)
    print(last_line)  # the audit JSON, always the last line
    return code


def run(args: argparse.Namespace) -> tuple[int, str]:
    """The demo; returns the exit code and the audit JSON line."""
    state = (harness.ROOT / args.state).resolve()
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    if args.nodes:
        from demo_fleet import run_fleet

        return run_fleet(args, state)
    if args.migrate:
        from demo_migrate import run_migrate

        return run_migrate(args, state)
    if not args.azure:
        return run_in(args, state, None)
    from demo_azure import azure_services

    with azure_services(state / "azure") as azure:
        return run_in(args, state, azure)


def run_in(args: argparse.Namespace, state: Path, azure: Any) -> tuple[int, str]:
    namespace = f"demo{int(time.time())}." if args.kafka else ""
    data = harness.config_dict(state, kafka=args.kafka, namespace=namespace)
    if azure is not None:
        azure.configure(data)
    config = harness.write_config(state / "lakeferry.toml", data)
    print(f"demo state in {state}\nconfig {config} (bus: {args.bus})")
    if args.kafka:
        harness.cli(config, "topics", "ensure", check=True)

    with origin_mod.serve() as origin:
        lines, expect = build_events(origin, args)
        events_file = state / "events.jsonl"
        events_file.write_bytes(b"\n".join(lines) + b"\n")
        malformed = [
            b'{"id": "demo-malformed-%d", "url": 42}' % i if i % 2 else b"this is not json %d" % i
            for i in range(args.malformed)
        ]
        daemon = harness.DaemonProcess(config, state / "daemon.log")
        daemon.start()
        metrics_port = daemon.metrics_port
        print(f"daemon running (pid {daemon.pid}), metrics on 127.0.0.1:{metrics_port}")
        try:
            started = time.time()
            if azure is not None:  # the event hub is the source: bad lines go there too
                send_with_progress(azure, [*lines, *malformed])
            else:
                submitted = harness.cli(config, "submit", "--file", str(events_file), timeout=120)
                sys.stderr.write(submitted.stderr)
                if submitted.returncode != 0:
                    return 1, "submit failed"
                drop_in_spool(Path(data["sources"][0]["path"]), malformed)
            expected_total = len(expect) + args.malformed
            deadline = time.monotonic() + args.timeout
            report, letters, rows = trio.run(snapshot, config)
            while time.monotonic() < deadline:
                report, letters, rows = trio.run(snapshot, config)
                done = report.landed + report.dead_lettered
                line = (
                    f"landed {report.landed:5d}  dead-lettered {report.dead_lettered:4d}  "
                    f"in flight {report.in_flight:4d}  of {expected_total}"
                )
                print(f"\r  {line}", end="", flush=True)
                if done >= expected_total and report.in_flight == 0:
                    break
                time.sleep(1)
            print()
            metrics = harness.scrape(metrics_port)
        finally:
            code = daemon.terminate(timeout=60) if daemon.alive() else daemon.proc.returncode  # type: ignore[union-attr]

    # -- summary -------------------------------------------------------------------------
    by_reason = Counter(letter.letter.reason for letter in letters)
    latencies = [(r.committed_at - r.event_created_at).total_seconds() for r in rows]
    span = max((r.committed_at.timestamp() for r in rows), default=started) - started
    retries = harness.metric_sum(metrics, "lakeferry_retries_total")
    print("\n== lakeferry demo summary ==")
    print(f"events submitted      {len(lines)} (and {args.malformed} malformed lines)")
    print(f"landed                {len(rows)}")
    print(f"dead-lettered         {sum(by_reason.values())}  "
          + ", ".join(f"{k}: {v}" for k, v in sorted(by_reason.items())))  # fmt: skip
    print(f"retries (ladder)      {retries:.0f}")
    print(
        f"throughput            {len(rows) / span:.1f} files/s over {span:.1f}s" if span > 0 else ""
    )
    print(f"end-to-end latency    p50 {pct(latencies, 50):.2f}s  p95 {pct(latencies, 95):.2f}s")
    print(f"daemon exit code      {code} (SIGTERM drain)")

    sink_root = state / "sink"

    def read_sink(destination: str) -> bytes:
        if azure is not None:
            data: bytes = azure.read_sink(destination)
            return data
        return (sink_root / destination).read_bytes()

    problems = check_outcomes(expect, rows, letters, read_sink)
    if by_reason.get("malformed", 0) != args.malformed:
        problems.append(
            f"expected {args.malformed} malformed letters, got {by_reason.get('malformed', 0)}"
        )
    if code != 0:
        problems.append(f"daemon exited {code} on SIGTERM")
    for p in problems[:20]:
        print(f"PROBLEM: {p}")

    final = harness.cli(config, "audit", "--json", "--events", str(events_file))
    if final.returncode not in (0, 1):
        print(final.stderr)
    return (0 if not problems and final.returncode == 0 else 1), final.stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
