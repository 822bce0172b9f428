"""What one inventory commit costs as a Delta table's live files grow.

    .venv/bin/python bench/delta_commits.py [--commits 2000] [--rows 67] [--every 250]
                                            [--checkpoint-interval 10] [--compact-every N]
                                            [--target-size BYTES] [--reopen-every N]
                                            [--tombstone-retention 'interval 0 seconds']

Commits the way the results stage does (``lakeferry_delta.inventory``): refresh the table
(``update_incremental``), read the app transactions of four partitions, append ``--rows``
rows with those transactions. No compaction runs unless ``--compact-every N`` (then
``optimize.compact()`` after every N commits, its CPU shown apart), so every commit adds a live
file. Prints the
CPU and wall time per commit, by step, for every ``--every`` commits: whether a commit's cost
follows the table's live files (bench/analysis.md, "Targets not met, and why").
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

COLUMNS = 10
PARTITIONS = 4


def rows(count: int, commit: int) -> pa.Table:
    schema = pa.schema([(f"c{i}", pa.string()) for i in range(COLUMNS)])
    values = {
        f"c{i}": [f"commit-{commit}-row-{j}-column-{i}-{'x' * 24}" for j in range(count)]
        for i in range(COLUMNS)
    }
    return pa.table(values, schema=schema)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=67, help="rows per commit")
    parser.add_argument("--every", type=int, default=250, help="commits per printed line")
    parser.add_argument("--checkpoint-interval", type=int, default=10)
    parser.add_argument(
        "--compact-every", type=int, default=0, help="compact after every N commits (0: never)"
    )
    parser.add_argument(
        "--target-size", type=int, default=0, help="compaction's target file size (0: deltalake's)"
    )
    parser.add_argument(
        "--tombstone-retention",
        default="",
        help="the table's delta.deletedFileRetentionDuration, e.g. 'interval 0 seconds' "
        "(default: deltalake's 7 days; to see what tombstones cost a commit)",
    )
    parser.add_argument(
        "--log-retention",
        default="",
        help="the table's delta.logRetentionDuration, e.g. 'interval 1 minute' "
        "(default: deltalake's 30 days; to see what the log's length costs a commit)",
    )
    parser.add_argument(
        "--reopen-every", type=int, default=0, help="reopen the table every N commits (0: never)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="delta-commits-") as folder:
        path = str(Path(folder) / "table")
        configuration = {"delta.checkpointInterval": str(args.checkpoint_interval)}
        if args.tombstone_retention:
            configuration["delta.deletedFileRetentionDuration"] = args.tombstone_retention
        if args.log_retention:
            configuration["delta.logRetentionDuration"] = args.log_retention
        write_deltalake(path, rows(1, 0), configuration=configuration)
        table = DeltaTable(path)
        spent = {"refresh": 0.0, "transactions": 0.0, "append": 0.0}
        wall = compacting = 0.0
        print(
            "commits        live files  log files  ms CPU per commit (refresh, transactions, append)  "
            "ms wall  compaction s CPU"
        )
        for commit in range(1, args.commits + 1):
            began_wall = time.monotonic()
            began = time.process_time()
            if args.reopen_every and commit % args.reopen_every == 0:
                table = DeltaTable(path)
            table.update_incremental()
            spent["refresh"] += time.process_time() - began
            began = time.process_time()
            for p in range(PARTITIONS):
                table.transaction_version(f"app-{p}")
            spent["transactions"] += time.process_time() - began
            now_ms = int(time.time() * 1000)
            properties = CommitProperties(
                app_transactions=[
                    Transaction(f"app-{p}", commit, now_ms) for p in range(PARTITIONS)
                ]
            )
            began = time.process_time()
            write_deltalake(table, rows(args.rows, commit), mode="append",
                            commit_properties=properties)  # fmt: skip
            spent["append"] += time.process_time() - began
            wall += time.monotonic() - began_wall
            if args.compact_every and commit % args.compact_every == 0:
                began = time.process_time()
                table.optimize.compact(target_size=args.target_size or None)
                compacting += time.process_time() - began
            if commit % args.every == 0:
                per = {step: 1000 * cpu / args.every for step, cpu in spent.items()}
                live = len(table.file_uris())
                logs = len(list((Path(path) / "_delta_log").iterdir()))
                print(
                    f"{commit - args.every + 1:>5}-{commit:<5}  {live:>10}  {logs:>9}  "
                    f"{sum(per.values()):6.1f} ({per['refresh']:.1f}, {per['transactions']:.1f}, "
                    f"{per['append']:.1f}){'':>21}{1000 * wall / args.every:7.1f}  {compacting:16.2f}"
                )
                spent = dict.fromkeys(spent, 0.0)
                wall = compacting = 0.0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
