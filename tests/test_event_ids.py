"""An event id names one file, and nothing is fetched that cannot or need not land.

Found by a user's tests: two events with one id and different URLs both landed (two files in the
sink, one inventory row, no letter, the audit clean); an invalid destination was refused only at
upload, after the whole download; an id that had landed was fetched again, then skipped. Now:
the id is bound to what it first named (``duplicate_id`` for a different URL, path or sha256),
destinations are rendered and checked at ingest, and a landed id is skipped before download.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import trio
import trio.testing

from helpers.daemon import DaemonEnv
from helpers.origin import Origin, sha256_of
from helpers.wait import wait_for, wait_until
from lakeferry.ledger import IdLedger, fingerprint
from lakeferry.messages import Event

T = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)


def letters(env: DaemonEnv) -> dict[str, dict[str, Any]]:
    return {x["key"]: x for x in env.letters()}


def settle(env: DaemonEnv, *batches: Path) -> dict[str, int]:
    wait_for(
        lambda: env.audit(*batches)[1],
        lambda counts: counts["in_flight"] == 0,
        timeout=60,
        what="the events to settle",
        interval=0.5,
    )
    return env.audit(*batches)[1]


def sink_files(env: DaemonEnv) -> list[str]:
    root = Path(env.data["sink"]["root"])
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and ".lakeferry-tmp" not in p.parts
    )


def test_a_second_url_under_one_id_is_dead_lettered_and_lands_nothing(
    daemon_env: DaemonEnv, origin: Origin
) -> None:
    env = daemon_env
    daemon = env.start()
    # The first one is slow: were the two not ordered by the bus, the second would win.
    first = origin.file_url("b.bin", 3000, route="slow", delay=1)
    second = origin.file_url("c.bin", 3000)
    same = origin.file_url("b.bin", 3000, route="slow", delay=1)
    batch = env.submit_events(
        [
            {"id": "h-good", "url": first},
            {"id": "h-good", "url": second},
            {"id": "h-good", "url": same},  # the same content again: a silent duplicate
        ]
    )
    counts = settle(env, batch)
    assert (counts["landed"], counts["duplicate_rows"], counts["unrecorded_in_sink"]) == (1, 0, 0)
    assert sink_files(env) == ["h-good/b.bin"]
    found = letters(env)
    [key] = found
    assert key.startswith("duplicate_id:h-good:")  # its own key: the id's letter stays free
    letter = found[key]
    assert letter["event_id"] == "h-good"
    assert (letter["reason"], letter["stage"]) == ("duplicate_id", "download")
    assert f"{origin.url}/slow/b.bin" in letter["error"]  # both URLs, redacted
    assert f"{origin.url}/files/c.bin" in letter["error"]
    assert "size=" not in letter["error"]  # query strings are secrets (SAS tokens)
    assert origin.count("/files/c.bin") == 0  # not one byte of the second file was fetched
    assert daemon.terminate() == 0


def test_a_landed_id_is_not_fetched_again_and_a_new_url_for_it_is_refused(
    daemon_env: DaemonEnv, origin: Origin
) -> None:
    env = daemon_env
    daemon = env.start()
    url = origin.file_url("once.bin", 2000)
    first = env.submit_events([{"id": "once", "url": url, "sha256": sha256_of("once.bin", 2000)}])
    assert settle(env, first)["landed"] == 1
    assert origin.count("/files/once.bin") == 1
    again = env.submit_events(
        [
            {"id": "once", "url": url, "sha256": sha256_of("once.bin", 2000)},
            {"id": "once", "url": url, "sha256": sha256_of("once.bin", 2000)},
        ]
    )
    wait_until(
        lambda: (
            env.metric("lakeferry_stage_messages_total", stage="download", outcome="landed_before")
            == 2
        ),
        timeout=60,
        what="the re-sent events to be skipped",
    )
    assert origin.count("/files/once.bin") == 1  # skipped before download
    other = env.submit_events([{"id": "once", "url": origin.file_url("other.bin", 10)}])
    wait_until(lambda: len(letters(env)) == 1, timeout=60, what="the conflicting event's letter")
    [letter] = letters(env).values()
    assert (letter["reason"], letter["event_id"]) == ("duplicate_id", "once")
    assert origin.count("/files/other.bin") == 0
    _code, counts = env.audit(first, again, other)
    assert (counts["landed"], counts["duplicate_rows"], counts["unrecorded_in_sink"]) == (1, 0, 0)
    assert daemon.terminate() == 0


def test_destinations_are_checked_at_ingest_before_any_byte_is_fetched(
    daemon_env: DaemonEnv, origin: Origin
) -> None:
    env = daemon_env
    env.data["sink"]["path_template"] = "{event.id}/{filename}"
    env.write()
    daemon = env.start()
    events = [
        {"id": "up", "url": origin.file_url("up.bin", 10), "path": "../x"},
        {"id": "..", "url": origin.file_url("dots.bin", 10)},  # renders "../dots.bin"
        {"id": "fine", "url": origin.file_url("fine.bin", 10)},
    ]
    # Through the spool: `lakeferry submit` refuses such events itself (tests/test_submit.py).
    batch = env.root / "spooled.jsonl"
    batch.write_text("".join(json.dumps(e) + "\n" for e in events))
    env.spool(batch)
    counts = settle(env, batch)
    assert (counts["landed"], counts["dead_lettered"], counts["lost"]) == (1, 2, 0)
    found = letters(env)
    assert {k: (v["reason"], v["stage"]) for k, v in found.items()} == {
        "up": ("invalid_path", "ingest"),
        "..": ("invalid_path", "ingest"),
    }
    assert origin.count("/files/up.bin") == origin.count("/files/dots.bin") == 0
    shown = env.shown("up")
    assert shown["letter"]["task"]["event"]["path"] == "../x"  # the whole event, for a replay
    assert daemon.terminate() == 0


async def test_the_ledger_binds_once_lands_and_forgets_after_its_window(tmp_path: Path) -> None:
    ledger = IdLedger(tmp_path / "ids.sqlite")
    a = Event(id="x", url="https://h/a.bin?sig=secret")
    b = Event(id="x", url="https://h/b.bin")
    try:
        bound = await ledger.bind(a)
        assert (bound.fingerprint, bound.url, bound.landed) == (
            fingerprint(a),
            "https://h/a.bin?<redacted>",
            False,
        )
        assert (await ledger.bind(b)).fingerprint == fingerprint(a)  # the first one holds
        await ledger.land(a)
        assert (await ledger.bind(a)).landed
        await ledger.land(b)  # another file never marks the id's binding landed for it
        assert (await ledger.bind(b)).fingerprint == fingerprint(a)
        # A different query string may be a different file: not the same fingerprint.
        assert fingerprint(a) != fingerprint(Event(id="x", url="https://h/a.bin?sig=other"))
        assert await ledger.prune(3600) == 0
        assert await ledger.prune(-1) == 1
        assert (await ledger.bind(b)).fingerprint == fingerprint(b)
    finally:
        await ledger.aclose()
    reopened = IdLedger(tmp_path / "ids.sqlite")  # durable across restarts
    try:
        assert (await reopened.bind(a)).fingerprint == fingerprint(b)
    finally:
        await reopened.aclose()


async def test_concurrent_ledger_calls_share_transactions(tmp_path: Path) -> None:
    ledger = IdLedger(tmp_path / "ids.sqlite")
    try:
        async with trio.open_nursery() as nursery:
            for i in range(500):
                nursery.start_soon(ledger.bind, Event(id=f"e{i}", url=f"https://h/{i}"))
        assert ledger.batches < 100
        assert (await ledger.bind(Event(id="e7", url="https://h/x"))).url == "https://h/7"
    finally:
        await ledger.aclose()


async def test_of_two_tasks_of_one_id_the_earlier_by_bus_order_binds_it(tmp_path: Path) -> None:
    """Handlers start in no guaranteed order (trio may run either first); the task fetched
    first must be the one that binds the id, even when the later one asks first."""
    from types import SimpleNamespace

    from lakeferry.bus.base import Record
    from lakeferry.config import Config
    from lakeferry.errors import PermanentError
    from lakeferry.lifecycle import ActiveCount, Lifecycle
    from lakeferry.messages import DOWNLOAD, DownloadTask
    from lakeferry.metrics import Metrics
    from lakeferry.stages.download import DownloadStage

    ledger = IdLedger(tmp_path / "ids.sqlite")
    metrics = Metrics()
    pipeline = SimpleNamespace(
        components=SimpleNamespace(ledger=ledger), settings=Config(), metrics=metrics,
        limiters={"download": trio.CapacityLimiter(1)},
        active={"download": ActiveCount(), "backfill": ActiveCount()},
        lifecycle=Lifecycle(shutdown_grace=5),
    )  # fmt: skip
    stage = DownloadStage(pipeline)  # type: ignore[arg-type]
    tasks = [
        DownloadTask(event=Event(id="x", url=f"https://h/{name}.bin"), received_at=T)
        for name in ("first", "second")
    ]
    for offset, task in enumerate(tasks):
        stage.dispatch(Record("p", 0, offset, b"x", DOWNLOAD.encode(task), {}, 0))
    outcomes: dict[str, object] = {}

    async def check(name: str, task: DownloadTask) -> None:
        try:
            outcomes[name] = await stage._check_id(task)
        except PermanentError as error:
            outcomes[name] = error.reason

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(check, "second", tasks[1])  # asks first
            await trio.testing.wait_all_tasks_blocked()
            assert outcomes == {}  # waits for the earlier task of its id
            nursery.start_soon(check, "first", tasks[0])
        assert outcomes == {"first": None, "second": "duplicate_id"}
    finally:
        await ledger.aclose()
        metrics.close()
