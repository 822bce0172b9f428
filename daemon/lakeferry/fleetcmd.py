"""``lakeferry fleet status|evacuate``: the nodes of a fleet for the person on call.

``status`` prints one line per node: alive or when last seen, the stages its processes run,
what they have in flight, the tasks waiting in its cached topic, and its cache fill.

``evacuate NODE`` moves the tasks waiting in a lost node's cached topic back to pending, to be
fetched again by the others (:mod:`lakeferry.fleet`). It refuses while the node looks alive,
asks before acting on a terminal, needs ``--yes`` without one, and ``--dry-run`` only counts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

from lakeferry import fleet
from lakeferry.config import LoadedConfig
from lakeferry.messages import utcnow

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class Refused(Exception):
    """Bad usage of a fleet command: exit 2 with this one line."""


def _age(at: dt.datetime | None, now: dt.datetime) -> str:
    if at is None:
        return "never"
    seconds = max(0, int((now - at).total_seconds()))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def _fill(status: fleet.NodeStatus) -> str:
    if status.cache_bytes is None:
        return "-"
    mib = status.cache_bytes / 2**20
    if status.cache_quota:
        return f"{mib:.0f} MiB ({100 * status.cache_bytes / status.cache_quota:.0f}%)"
    return f"{mib:.0f} MiB"


def print_status(nodes: list[fleet.NodeStatus], as_json: bool) -> None:
    if as_json:
        for node in nodes:
            print(json.dumps(node.as_json()))
        return
    if not nodes:
        print("no nodes: no heartbeats and no cached topics yet")
        return
    now = utcnow()
    print(f"{'NODE':<20} {'STATE':<22} {'STAGES':<32} {'IN FLIGHT':>9} {'CACHED':>8}  CACHE")
    for node in nodes:
        if node.live:
            state = f"up ({node.processes} proc)"
        elif node.stopped:
            state = f"stopped {_age(node.last_seen, now)}"
        elif node.last_seen is None:
            state = "no heartbeat"
        else:
            state = f"LOST, seen {_age(node.last_seen, now)}"
        backlog = "-" if node.cached_backlog is None else str(node.cached_backlog)
        stages = ",".join(node.stages) or "-"
        print(
            f"{node.node:<20} {state:<22} {stages:<32} {sum(node.in_flight.values()):>9} "
            f"{backlog:>8}  {_fill(node)}"
        )
    lost = [n.node for n in nodes if not n.live and not n.stopped and n.cached_backlog]
    if lost:
        print(
            f"\n{', '.join(lost)}: not seen for {fleet.LIVE_WITHIN:.0f}s or more with cached work "
            "waiting; if it is gone for good: lakeferry fleet evacuate NODE"
        )


def confirm(args: argparse.Namespace, plan: fleet.Evacuation) -> str | None:
    """None when the evacuation may go ahead; else why not (a one-line message)."""
    from lakeferry.cliparse import confirm as ask

    return ask(
        args.yes,
        f"move {plan.waiting} task(s) of node {args.node} back to pending, to be fetched again "
        "by the other nodes?",
        f"fleet evacuate: {plan.waiting} task(s) wait on {args.node}; nothing asked, nothing "
        "done without a terminal: add --yes (or --dry-run to count them)",
    )


def _emit(args: argparse.Namespace, tasks: int, malformed: int) -> None:
    outcome = {"node": args.node, "dry_run": bool(args.dry_run), "tasks": tasks}
    print(json.dumps({**outcome, "malformed": malformed}))


async def run(args: argparse.Namespace, bus: Any, config: LoadedConfig) -> int:
    if not config.fleet:
        raise Refused(
            f"{config.path} is not a fleet member (set [daemon] fleet = true on every node "
            "that shares this Kafka cluster)"
        )
    bus = fleet.kafka_of(bus)
    if args.action == "status":
        print_status(await fleet.fleet_status(config, bus), args.json)
        return EXIT_OK
    try:
        plan, files = await fleet.evacuation_plan(config, bus, args.node, force=args.force)
    except fleet.NodeAlive as exc:
        raise Refused(f"fleet evacuate: {exc}") from None
    if args.dry_run or (not plan.waiting and not plan.malformed):
        verb = "would move" if args.dry_run else "nothing to move:"
        if args.json:
            _emit(args, plan.waiting, len(plan.malformed))
        else:
            print(f"{verb} {plan.waiting} task(s) of node {args.node} to "
                  f"{config.core.topics.pending}")  # fmt: skip
        return EXIT_OK
    why_not = confirm(args, plan)
    if why_not is not None:
        print(f"lakeferry: {why_not}", file=sys.stderr)
        return EXIT_USAGE if why_not != "aborted" else EXIT_FAILED
    done = await fleet.evacuate(config, bus, plan, files)
    if args.json:
        _emit(args, done.moved, len(done.malformed))
    else:
        extra = f"; {len(done.malformed)} malformed record(s) to the DLQ" if done.malformed else ""
        print(f"moved {done.moved} task(s) of node {args.node} to "
              f"{config.core.topics.pending}{extra}")  # fmt: skip
    return EXIT_OK


def add_parser(sub: Any, with_config: Any, fn: Any) -> None:
    from lakeferry.cliparse import command, group

    fsub = group(
        sub,
        "fleet",
        summary="the nodes of a fleet (several VMs on one Kafka cluster)",
        description="The nodes of a fleet: their state, and moving a lost node's cached work\n"
        "back to pending so that the other nodes fetch it again.",
        examples=["lakeferry fleet status", "lakeferry fleet evacuate vm-3 --dry-run"],
    )
    status = with_config(
        command(fsub, "status", summary="each node: alive or last seen, stages, in flight, "
                "cached backlog, cache fill", examples=["lakeferry fleet status --json"])
    )  # fmt: skip
    status.add_argument("--json", action="store_true", help="JSON Lines: one object per node")
    status.set_defaults(fn=fn, node=None)
    evac = with_config(
        command(fsub, "evacuate", summary="send a lost node's cached tasks back to pending",
                examples=["lakeferry fleet evacuate vm-3 --yes"])
    )  # fmt: skip
    evac.add_argument("node", metavar="NODE", help="the lost node's name ([daemon] node)")
    evac.add_argument(
        "--yes", "-y", action="store_true", help="do not ask (needed without a terminal)"
    )
    evac.add_argument(
        "--dry-run", action="store_true", help="count what would move, change nothing"
    )
    evac.add_argument("--force", action="store_true",
                      help="go ahead although the node's heartbeat is fresh (its uploads must "
                      "have no live members either way)")  # fmt: skip
    evac.add_argument("--json", action="store_true", help="print the outcome as one JSON line")
    evac.set_defaults(fn=fn)
