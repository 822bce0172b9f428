"""How long a stage's records wait when a worker of its group joins, leaves, or restarts.

    .venv/bin/python bench/rebalance.py [--rate 400] [--partitions 8] [--session-timeout 45]

Runs a single-node Kafka broker (``tools/kafka/kafka.py``) and, on one topic, a producer at
``--rate`` records/s and consumer group members made the way the daemon makes them
(``lakeferry.bus.kafka.KafkaBus`` with a member name: static membership, cooperative-sticky
assignment, the daemon's session timeout unless ``--session-timeout``). Two members consume;
then a third joins, the third stops for good, and the second restarts (closed and opened again
under its name, as systemd restarts a unit). For each event it prints the longest any record
produced in the following window waited to be consumed (the pause the stage sees), how many
records waited more than a second, and when the joining or restarted member received its first
record. docs/operations.md quotes the figures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "daemon"), str(ROOT / "tools")]

from harness import free_port  # noqa: E402

from lakeferry.bus.base import OutgoingRecord, TopicSpec  # noqa: E402
from lakeferry.bus.kafka import KafkaBus  # noqa: E402
from lakeferry.errors import BusError  # noqa: E402


@dataclass
class Window:
    name: str
    started: float
    seconds: float
    first: dict[str, float] = field(default_factory=dict)
    """member -> seconds from the event to its first record (joiners and restarts)."""


@dataclass
class Run:
    waits: list[tuple[float, float]] = field(default_factory=list)
    """(produced at, waited) of every record consumed."""
    first_seen: dict[str, float] = field(default_factory=dict)
    both: trio.Event = field(default_factory=trio.Event)
    """Set once two members received a record."""


async def member(bus: KafkaBus, group: str, topic: str, name: str, run: Run,
                 stop: trio.Event) -> None:  # fmt: skip
    consumer = bus.consumer(group, [topic])
    done: dict[Any, int] = {}
    committed_at = time.monotonic()
    try:
        while not stop.is_set():
            with trio.move_on_after(0.5):
                record = await consumer.next()
                now = time.time()
                produced = float(record.value)
                run.waits.append((produced, now - produced))
                run.first_seen.setdefault(name, now)
                if len(run.first_seen) >= 2:
                    run.both.set()
                done[record.tp] = record.offset + 1
            if done and time.monotonic() - committed_at > 0.5:
                committed_at = time.monotonic()
                try:  # as the daemon's driver does: a commit refused mid-rebalance waits
                    await consumer.commit(dict(done))
                    done.clear()
                except BusError:
                    pass
    finally:
        await consumer.aclose()


async def produce(bus: KafkaBus, topic: str, rate: float, done: trio.Event) -> None:
    producer = bus.producer()
    i = 0
    tick = 0.025
    per_tick = max(1, round(rate * tick))
    while not done.is_set():
        now = time.time()
        await producer.send_many(
            [OutgoingRecord(topic, repr(now).encode(), b"k%d" % (i + j)) for j in range(per_tick)]
        )
        i += per_tick
        await trio.sleep(tick)


async def scenario(bootstrap: str, args: argparse.Namespace) -> list[tuple[Window, Run]]:
    consumer_conf = {"session.timeout.ms": int(args.session_timeout * 1000)}
    topic, group = f"rebalance-{os.getpid()}", f"rebalance-{os.getpid()}"
    admin = await KafkaBus.open(bootstrap)
    await admin.ensure_topics([TopicSpec(topic, args.partitions)])
    run = Run()
    windows: list[Window] = []
    buses: dict[str, KafkaBus] = {}
    stops: dict[str, trio.Event] = {}

    async def start(nursery: trio.Nursery, name: str) -> None:
        buses[name] = await KafkaBus.open(bootstrap, member=name, consumer=consumer_conf)
        stops[name] = trio.Event()
        nursery.start_soon(member, buses[name], group, topic, name, run, stops[name])

    async def stop(name: str) -> None:
        stops[name].set()
        await trio.sleep(0.6)  # its consumer closes (a static member leaves no group)
        await buses.pop(name).aclose()

    done = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(produce, admin, topic, args.rate, done)
        await start(nursery, "node.w1")
        await start(nursery, "node.w2")
        await run.both.wait()
        await trio.sleep(args.settle)
        windows.append(Window("steady (no change)", time.time(), args.window))
        await trio.sleep(args.window)
        windows.append(Window("a third worker joins", time.time(), args.window))
        await start(nursery, "node.w3")
        await trio.sleep(args.window)
        windows.append(Window("the third stops for good", time.time(), args.session_timeout + 10))
        await stop("node.w3")
        await trio.sleep(args.session_timeout + 10)
        windows.append(Window("the second restarts", time.time(), args.window))
        await stop("node.w2")
        run.first_seen.pop("node.w2", None)
        await start(nursery, "node.w2")
        await trio.sleep(args.window)
        done.set()
        for name in list(stops):
            stops[name].set()
    for bus in buses.values():
        await bus.aclose()
    await admin.aclose()
    for window in windows:
        for name, at in run.first_seen.items():
            if window.started <= at < window.started + window.seconds:
                window.first[name] = at - window.started
    return [(w, run) for w in windows]


def report(results: list[tuple[Window, Run]], args: argparse.Namespace) -> None:
    print(f"{args.partitions} partitions, {args.rate:.0f} records/s, session timeout "
          f"{args.session_timeout:.0f} s, static membership, cooperative-sticky")  # fmt: skip
    print(f"{'event':<28} {'longest wait':>13} {'waited > 1 s':>13}  first record")
    for window, run in results:
        # Records produced in the last seconds before the next event belong to that one.
        end = window.started + window.seconds - 2
        waits = [w for at, w in run.waits if window.started <= at < end]
        longest = max(waits, default=0.0)
        slow = sum(1 for w in waits if w > 1)
        first = ", ".join(f"{n} after {s:.1f} s" for n, s in sorted(window.first.items())) or "-"
        print(f"{window.name:<28} {longest:>11.2f} s {slow:>7} of {len(waits):<5}  {first}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rate", type=float, default=400)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--session-timeout", type=float, default=45.0,
                        help="seconds (librdkafka's default, which the daemon keeps)")  # fmt: skip
    parser.add_argument("--window", type=float, default=15.0, help="seconds watched per event")
    parser.add_argument("--settle", type=float, default=5.0)
    args = parser.parse_args()
    tool = [sys.executable, str(ROOT / "tools" / "kafka" / "kafka.py")]
    with tempfile.TemporaryDirectory(prefix="rebalance-") as folder:
        port = free_port()
        subprocess.run([*tool, "up", "--port", str(port), "--dir", folder], check=True)
        try:
            results = trio.run(scenario, f"127.0.0.1:{port}", args)
        finally:
            subprocess.run([*tool, "down", "--dir", folder], check=False)
    report(results, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
