"""``make demo BUS=kafka NODES=3``: a fleet of nodes on one broker, one of them lost mid-run.

1. One Kafka broker; nodes ``node-1`` … ``node-N``, each a ``lakeferry run`` of every stage with
   its own cache folder and node name (``daemon.fleet = true``), sharing the sink, the inventory
   and the topics.
2. The events (good files, flaky ones, missing ones, wrong checksums: ~3,000 by default) go in
   three waves. During the first, the last node is killed with SIGKILL while it holds work;
   once ``lakeferry fleet status`` reports it LOST, ``lakeferry fleet evacuate`` sends its
   waiting tasks back to pending. The second wave runs on the survivors; before the third, a
   new node joins.
3. When everything has landed or is dead-lettered: a summary with the files each node
   uploaded, and ``lakeferry audit --json`` as the last line.

Exits 0 only if every good file landed with the right sha256, every bad one is in the DLQ with
the right reason, and the audit found nothing lost or duplicated.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import origin as origin_mod
from demo import build_events, check_outcomes, pct, snapshot


class Node:
    """One node: its config and its ``lakeferry run`` process."""

    def __init__(self, data: dict[str, Any], state: Path, name: str) -> None:
        self.name = name
        self.data = harness.fleet_node(data, state, name)
        self.metrics_port = 0
        self.config = harness.write_config(state / f"{name}.toml", self.data)
        self.daemon = harness.DaemonProcess(self.config, state / f"{name}.log")
        self.uploaded = 0.0
        """Files its upload stage finished, from its last scrape."""

    def start(self) -> None:
        harness.cli(self.config, "topics", "ensure", check=True)
        self.daemon.start()
        self.metrics_port = self.daemon.metrics_port
        print(f"  {self.name} running (pid {self.daemon.pid}), metrics on :{self.metrics_port}")

    def scrape(self) -> None:
        if not self.daemon.alive():
            return
        try:
            metrics = harness.scrape(self.metrics_port)
        except OSError:
            return
        self.uploaded = harness.metric_sum(metrics, "lakeferry_stage_messages_total",
                                           stage="upload")  # fmt: skip


def fleet_status(node: Node) -> dict[str, dict[str, Any]]:
    result = harness.cli(node.config, "fleet", "status", "--json")
    if result.returncode != 0:
        raise RuntimeError(f"fleet status failed: {result.stderr.strip()}")
    return {s["node"]: s for s in map(json.loads, result.stdout.splitlines())}


def submit(node: Node, lines: list[bytes], path: Path) -> None:
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = harness.cli(node.config, "submit", "--file", str(path), "--quiet", timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"submit failed: {result.stderr.strip()}")


def wait(what: str, check: Any, nodes: list[Node], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        for node in nodes:
            node.scrape()
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


def run_fleet(args: argparse.Namespace, state: Path) -> tuple[int, str]:
    data = harness.config_dict(
        state, kafka=args.kafka,
        namespace=f"demo{int(time.time())}.",
    )  # fmt: skip
    data["sources"] = []
    names = [f"node-{i}" for i in range(1, args.nodes + 1)]
    nodes = [Node(data, state, name) for name in names]
    joiner = Node(data, state, f"node-{args.nodes + 1}")
    lost = nodes[-1]
    print(f"demo state in {state}; a fleet of {args.nodes} nodes on {args.kafka}")
    with origin_mod.serve() as origin:
        lines, expect = build_events(origin, args)
        waves = [lines[: len(lines) * 2 // 5], lines[len(lines) * 2 // 5 : len(lines) * 7 // 10],
                 lines[len(lines) * 7 // 10 :]]  # fmt: skip
        events_file = state / "events.jsonl"
        events_file.write_bytes(b"\n".join(lines) + b"\n")
        started = time.time()
        try:
            for node in nodes:
                node.start()
            print(f"wave 1: {len(waves[0])} events")
            submit(nodes[0], waves[0], state / "wave-1.jsonl")
            wait(f"{lost.name} to upload its share", lambda: lost.uploaded >= 50, nodes, 180)
            backlog = fleet_status(nodes[0])[lost.name]["cached_backlog"]
            lost.daemon.kill()
            print(f"SIGKILL {lost.name} (it had uploaded {lost.uploaded:.0f}; "
                  f"{backlog} task(s) in its cached topic then)")  # fmt: skip
            print(f"wave 2: {len(waves[1])} events, on the survivors")
            submit(nodes[0], waves[1], state / "wave-2.jsonl")
            wait(
                f"fleet status to report {lost.name} LOST",
                lambda: not fleet_status(nodes[0])[lost.name]["live"],
                nodes[:-1],
                120,
            )
            evacuated = wait(f"{lost.name}'s evacuation", lambda: evacuate(nodes[0], lost.name),
                             nodes[:-1], 120)  # fmt: skip
            print(f"evacuated {lost.name}: {evacuated}")
            joiner.start()
            print(f"{joiner.name} joined; wave 3: {len(waves[2])} events")
            submit(nodes[0], waves[2], state / "wave-3.jsonl")
            survivors = [*nodes[:-1], joiner]

            def settled() -> Any:
                report, letters, rows = trio.run(snapshot, nodes[0].config)
                line = (
                    f"landed {report.landed:5d}  dead-lettered {report.dead_lettered:4d}  "
                    f"in flight {report.in_flight:4d}  of {len(expect)}"
                )
                print(f"\r  {line}", end="", flush=True)
                finished = report.landed + report.dead_lettered >= len(expect)
                return (letters, rows) if finished and not report.in_flight else None

            letters, rows = wait("everything to settle", settled, survivors, args.timeout)
            for node in survivors:  # an audit takes seconds: the last scrape came before it
                node.scrape()
            print()
        finally:
            codes = {n.name: n.daemon.terminate(timeout=60) for n in [*nodes, joiner]
                     if n.daemon.proc is not None and n.daemon.alive()}  # fmt: skip

    by_reason = Counter(letter.letter.reason for letter in letters)
    latencies = [(r.committed_at - r.event_created_at).total_seconds() for r in rows]
    span = max((r.committed_at.timestamp() for r in rows), default=started) - started
    print("\n== lakeferry fleet demo summary ==")
    print(f"events submitted      {len(lines)} in 3 waves")
    print(f"landed                {len(rows)}")
    print(f"dead-lettered         {sum(by_reason.values())}  "
          + ", ".join(f"{k}: {v}" for k, v in sorted(by_reason.items())))  # fmt: skip
    print("uploaded per node     " + ", ".join(
        f"{n.name} {n.uploaded:.0f}{'+ (killed; its last scrape)' if n is lost else ''}"
        f"{' (joined late)' if n is joiner else ''}" for n in [*nodes, joiner]))  # fmt: skip
    print(f"throughput            {len(rows) / span:.1f} files/s over {span:.1f}s")
    print(f"end-to-end latency    p50 {pct(latencies, 50):.2f}s  p95 {pct(latencies, 95):.2f}s")
    print(f"exit codes            {', '.join(f'{k} {v}' for k, v in codes.items())} (SIGTERM)")

    sink = state / "sink"
    problems = check_outcomes(expect, rows, letters, lambda d: (sink / d).read_bytes())
    problems += [f"{name} exited {code} on SIGTERM" for name, code in codes.items() if code != 0]
    if joiner.uploaded == 0:
        problems.append(f"{joiner.name} joined but uploaded nothing")
    for p in problems[:20]:
        print(f"PROBLEM: {p}")
    final = harness.cli(nodes[0].config, "audit", "--json", "--events", str(events_file))
    if final.returncode not in (0, 1):
        print(final.stderr)
    return (0 if not problems and final.returncode == 0 else 1), final.stdout.strip()


def evacuate(node: Node, lost: str) -> str | None:
    """Evacuate ``lost``; None while its upload group still has a member (its session has not
    expired yet: the broker refuses to move the offsets, and we try again)."""
    result = harness.cli(node.config, "fleet", "evacuate", lost, "--yes")
    if result.returncode == 0:
        return result.stdout.strip()
    if "live upload member" in result.stderr or "heartbeat" in result.stderr:
        return None
    raise RuntimeError(f"evacuate failed: {result.stderr.strip()}")
