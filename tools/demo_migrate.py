"""``make demo MIGRATE=1``: a cut-over from the polling pipeline, on the Kusto emulator.

1. The old pipeline's history: 3,000 events in a Kusto table (``tools/kusto_emulator.py``,
   ingestion times one millisecond apart, in bursts of ten at one instant), each naming a file
   on the demo origin.
2. "Already landed in the old pipeline": 500 of them, landed first (submitted and waited for),
   so that their ids are in the inventory and the id ledger before the cut-over.
3. The backfill: the daemon restarted with a ``kusto`` source (``follow = false``, the backfill
   lane) that pages through the whole history. The 500 are skipped (their ids landed: no
   download, no second row); the other 2,500 land.
4. A summary, then ``lakeferry audit --json`` over all 3,000 as the last line.

Exits 0 only if all 3,000 are in the inventory once each, the 500 were not fetched again, and
the audit found nothing lost or duplicated.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import kusto_emulator
import origin as origin_mod

HISTORY = 3000
OLD = 500
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def wait_landed(config: Path, events_file: Path, want: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    counts: dict[str, Any] = {}
    while time.monotonic() < deadline:
        audit = harness.cli(config, "audit", "--json", "--events", str(events_file))
        counts = json.loads(audit.stdout.strip().splitlines()[-1])
        print(f"\r  landed {counts['landed']:5d} of {want}", end="", flush=True)
        if counts["landed"] >= want and counts["in_flight"] == 0:
            break
        time.sleep(1)
    print()
    return counts


def run_migrate(args: argparse.Namespace, state: Path) -> tuple[int, str]:
    data = harness.config_dict(state)
    data["sources"] = []
    config = harness.write_config(state / "lakeferry.toml", data)
    print(f"demo state in {state}\nconfig {config}")
    problems: list[str] = []
    daemons: list[harness.DaemonProcess] = []
    kusto = kusto_emulator.start(database="oldpipeline")
    try:
        with origin_mod.serve() as origin:
            rows = [
                {"ingested": T0 + dt.timedelta(milliseconds=i // 10), "event_id": f"mig-{i:05d}",
                 "file_url": origin.file_url(f"mig-{i}.bin", 1000 + i), "bytes": 1000 + i}
                for i in range(HISTORY)
            ]  # fmt: skip
            kusto.create_table("Downloads", [
                ("ingested", "datetime"), ("event_id", "string"), ("file_url", "string"),
                ("bytes", "long"),
            ])  # fmt: skip
            kusto.append("Downloads", rows)
            print(f"the old pipeline's history: {HISTORY} events in Kusto at {kusto.url}")
            old_file = state / "landed-by-the-old-pipeline.jsonl"
            old_file.write_text("".join(
                json.dumps({"id": r["event_id"], "url": r["file_url"], "size": r["bytes"]}) + "\n"
                for r in rows[:: HISTORY // OLD][:OLD]
            ))  # fmt: skip
            all_file = state / "history.jsonl"
            all_file.write_text("".join(json.dumps({"id": r["event_id"]}) + "\n" for r in rows))

            print(f"1) the old pipeline lands {OLD} of them")
            daemon = harness.DaemonProcess(config, state / "daemon.log")
            daemons.append(daemon)
            daemon.start()
            harness.cli(config, "submit", "--file", str(old_file), "--quiet", check=True)
            counts = wait_landed(config, old_file, OLD, args.timeout)
            daemon.terminate(timeout=60)
            if counts["landed"] != OLD:
                problems.append(f"the old pipeline landed {counts['landed']} of {OLD}")

            print("2) cut-over: the daemon with a kusto source backfills the whole history")
            data["sources"] = [{
                "kind": "kusto", "lane": "backfill", "cluster_url": kusto.url,
                "database": "oldpipeline", "query": "Downloads", "cursor_column": "ingested",
                "id_column": "event_id", "credential": "none", "follow": False,
                "columns": {"url": "file_url", "size": "bytes"}, "page_rows": 250,
            }]  # fmt: skip
            harness.write_config(config, data)
            daemon = harness.DaemonProcess(config, state / "daemon.log")
            daemons.append(daemon)
            daemon.start()
            started = time.time()
            counts = wait_landed(config, all_file, HISTORY, args.timeout)
            seconds = time.time() - started
            metrics = harness.scrape(daemon.metrics_port)
            code = daemon.terminate(timeout=60)
    finally:
        for each in daemons:  # a demo that failed leaves no daemon running
            each.stop()
        kusto.stop()

    skipped = harness.metric_sum(
        metrics, "lakeferry_stage_messages_total", stage="download", outcome="landed_before"
    )
    downloaded = harness.metric_sum(
        metrics, "lakeferry_stage_messages_total", stage="download", outcome="downloaded"
    )
    print("\n== lakeferry cut-over demo summary ==")
    print(f"history in Kusto        {HISTORY} events ({kusto.requests} queries)")
    print(f"landed before cut-over  {OLD}")
    print(f"backfill                {downloaded:.0f} downloaded, {skipped:.0f} skipped "
          f"(already landed) in {seconds:.1f}s")  # fmt: skip
    print(f"landed in all           {counts.get('landed')}")
    print(f"daemon exit code        {code} (SIGTERM drain)")
    if skipped != OLD:
        problems.append(f"expected the {OLD} landed before to be skipped, {skipped:.0f} were")
    if downloaded != HISTORY - OLD:
        problems.append(f"expected {HISTORY - OLD} downloads, got {downloaded:.0f}")
    if code != 0:
        problems.append(f"daemon exited {code} on SIGTERM")
    for p in problems:
        print(f"PROBLEM: {p}")
    final = harness.cli(config, "audit", "--json", "--events", str(all_file))
    return (0 if not problems and final.returncode == 0 else 1), final.stdout.strip()
