"""Per-origin limits, backoff and circuit (lakeferry.stages.origins), on trio's mock clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from lakeferry.errors import PermanentError, Reason, TransientError
from lakeferry.metrics import TOP_ORIGINS, Metrics
from lakeferry.stages import origins as origins_module
from lakeferry.stages.origins import (
    FAILING_AFTER,
    MAX_COOLDOWN,
    PARK_BUSY,
    PARK_OPEN,
    PROBE_EVERY,
    RECHECK,
    Circuit,
    NotTried,
    Origin,
    OriginPolicy,
    Origins,
    Outcome,
    Parked,
    Slot,
    outcome_of,
)
from lakeferry.stages.pacing import Pacer
from lakeferry.urls import origin_of

A = "a.example:443"
B = "b.example:443"


def make(**policy: object) -> Origins:
    return Origins(OriginPolicy(**policy))  # type: ignore[arg-type]


def state(origins: Origins, name: str) -> Origin:
    origin = origins.get(name)
    assert origin is not None, name
    return origin


async def take(origins: Origins, name: str, n: int | None = None) -> list[Slot]:
    """``n`` slots (default: as many as the origin's limit allows now, 8 for a new one)."""
    if n is None:
        known = origins.get(name)
        n = known.cap if known is not None else 8
    return [await origins.acquire(name) for _ in range(n)]


def test_origin_of_names_host_and_port() -> None:
    assert origin_of("https://Files.Example.com/a?b=1") == "files.example.com:443"
    assert origin_of("http://files.example.com:8080/a") == "files.example.com:8080"
    assert origin_of("http://[::1]:81/x") == "[::1]:81"
    assert origin_of("sftp://u@host/x") == "host:22"
    assert origin_of("file:///var/data/x") == ""
    assert origin_of("http://bad:port/x") == ""


def test_which_failures_are_setbacks() -> None:
    assert outcome_of(None) is Outcome.OK
    assert outcome_of(TransientError(Reason.THROTTLED, "429")) is Outcome.SETBACK
    overloaded = TransientError(Reason.HTTP_SERVER_ERROR, "503", retry_after=5)
    assert outcome_of(overloaded) is Outcome.SETBACK
    # A bare 5xx (or "Retry-After: 0") may be one URL's trouble: it slows nobody else (a
    # fault: only a run of them with nothing else between says the origin fails everything).
    assert outcome_of(TransientError(Reason.HTTP_SERVER_ERROR, "503")) is Outcome.FAULT
    now = TransientError(Reason.HTTP_SERVER_ERROR, "503", retry_after=0)
    assert outcome_of(now) is Outcome.FAULT
    assert outcome_of(TransientError(Reason.TIMEOUT, "slow")) is Outcome.SETBACK
    assert outcome_of(TransientError(Reason.CONNECTION, "refused")) is Outcome.SETBACK
    # Once the origin answered (a size, body bytes), a cut or a stall is the URL's trouble.
    cut = TransientError(Reason.CONNECTION, "closed after half the body")
    assert outcome_of(cut, answered=True) is Outcome.NEUTRAL
    assert outcome_of(TransientError(Reason.TIMEOUT, "drip"), answered=True) is Outcome.NEUTRAL
    throttled = TransientError(Reason.THROTTLED, "429")
    assert outcome_of(throttled, answered=True) is Outcome.SETBACK
    assert outcome_of(PermanentError(Reason.NOT_FOUND, "404")) is Outcome.NEUTRAL
    assert outcome_of(TransientError(Reason.CHECKSUM_MISMATCH, "x")) is Outcome.NEUTRAL
    assert outcome_of(TransientError("cache_full", "x")) is Outcome.NEUTRAL
    assert outcome_of(ValueError("bug")) is Outcome.NEUTRAL


async def succeed(origins: Origins, name: str, rounds: int) -> Origin:
    """``rounds`` rounds of downloads at the origin's whole limit, all successful."""
    for _ in range(rounds):
        for slot in await take(origins, name):
            origins.release(slot, Outcome.OK)
    return state(origins, name)


async def test_a_lone_healthy_origin_grows_to_every_slot_and_no_further() -> None:
    origins = make(ceiling=50, initial=8)
    origin = await succeed(origins, A, 200)
    assert origin.cap == 50
    assert origin.limit == 50.0


async def test_growth_is_earned_only_while_the_limit_is_in_use() -> None:
    origins = make(ceiling=50, initial=8)
    for _ in range(100):  # one download at a time: the origin never uses its 8
        origins.release(await origins.acquire(A), Outcome.OK)
    assert state(origins, A).limit == 8.0


async def test_setbacks_of_one_round_halve_the_limit_once() -> None:
    origins = make(ceiling=50, initial=16)
    slots = await take(origins, A, 16)
    for slot in slots:  # 16 downloads that started together all get 429
        origins.release(slot, Outcome.SETBACK)
    origin = state(origins, A)
    assert origin.limit == 8.0
    # The next round's setback halves again.
    origins.release(await origins.acquire(A), Outcome.SETBACK)
    assert origin.limit == 4.0
    # After a setback growth is additive: +1 per round of successes, not per success.
    origin.setbacks_in_row = 0
    for _ in range(4):
        slots = await take(origins, A, origin.cap)
        for slot in slots:
            origins.release(slot, Outcome.OK)
    assert 7.0 <= origin.limit <= 8.5


async def test_an_origin_at_its_limit_makes_the_next_download_wait_without_parking() -> None:
    origins = make(ceiling=50, initial=2, room=100)
    held = await take(origins, A, 2)
    got: list[Slot] = []

    async def third() -> None:
        got.append(await origins.acquire(A))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(third)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        assert state(origins, A).waiting == 1
        # Another origin is not held up by A.
        other = await origins.acquire(B)
        origins.release(other, Outcome.OK)
        origins.release(held[0], Outcome.OK)
    assert len(got) == 1


async def test_failures_in_a_row_open_the_circuit_then_one_probe_closes_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    origins = make(ceiling=50, initial=8, circuit_failures=3, circuit_cooldown=30.0)
    for _ in range(3):
        origins.release(await origins.acquire(A), Outcome.SETBACK)
    origin = state(origins, A)
    assert origin.circuit is Circuit.OPEN
    with pytest.raises(Parked) as parked:
        await origins.acquire(A)
    assert parked.value.reason == PARK_OPEN
    # Other origins are not affected.
    origins.release(await origins.acquire(B), Outcome.OK)

    await trio.sleep(30)
    probe = await origins.acquire(A)
    assert state(origins, A).circuit is Circuit.HALF_OPEN
    with pytest.raises(Parked):  # one probe at a time
        await origins.acquire(A)
    origins.release(probe, Outcome.OK)
    assert state(origins, A).circuit is Circuit.CLOSED
    assert origin.cap == 1  # starts again from one, and slow-starts
    origins.release(await origins.acquire(A), Outcome.OK)
    assert origin.cap == 2
    assert origins.parked == {PARK_OPEN: 2, PARK_BUSY: 0}


async def test_circuit_failures_zero_never_opens_the_circuit() -> None:
    origins = make(initial=1, circuit_failures=0)
    for _ in range(50):
        origins.release(await origins.acquire(A), Outcome.SETBACK)
    assert state(origins, A).circuit is Circuit.CLOSED
    assert state(origins, A).cap == 1


async def test_a_failed_probe_reopens_for_twice_as_long(
    autojump_clock: trio.testing.MockClock,
) -> None:
    origins = make(circuit_failures=1, circuit_cooldown=30.0)
    origins.release(await origins.acquire(A), Outcome.SETBACK)
    origin = state(origins, A)
    for expected in (60.0, 120.0, 240.0, 480.0, MAX_COOLDOWN, MAX_COOLDOWN):
        await trio.sleep_until(origin.open_until)
        probe = await origins.acquire(A)
        start = trio.current_time()
        origins.release(probe, Outcome.SETBACK)
        assert origin.circuit is Circuit.OPEN
        assert origin.open_until - start == pytest.approx(expected)


async def test_retry_after_holds_the_origins_new_downloads_until_then(
    autojump_clock: trio.testing.MockClock,
) -> None:
    origins = make(ceiling=50, initial=4)
    start = trio.current_time()
    origins.release(await origins.acquire(A), Outcome.SETBACK, retry_after=7.0)
    await origins.acquire(A)
    assert trio.current_time() - start == pytest.approx(7.0)
    # A Retry-After beyond MAX_PAUSE opens the circuit instead: the tasks park.
    origins.release(await origins.acquire(B), Outcome.SETBACK, retry_after=3600.0)
    with pytest.raises(Parked):
        await origins.acquire(B)


async def waiter(origins: Origins, name: str, parked: list[str]) -> None:
    """A task waiting for ``name``: notes the reason when it is parked instead."""
    try:
        await origins.acquire(name)
    except Parked as exc:
        parked.append(exc.reason)


async def saturate(origins: Origins, name: str, held: list[Slot], rounds: int) -> None:
    """``rounds`` times: fill the origin to its limit, then one download ends well."""
    for _ in range(rounds):
        origin = state(origins, name)
        held += await take(origins, name, origin.cap - origin.active)
        origins.release(held.pop(0), Outcome.OK)


async def test_a_concurrency_limit_is_found_kept_and_probed_rarely(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A 429 while the origin serves the others is an answer to how many at once: nobody is
    paused, the limit grows back to just below that many and stays there, trying one more
    only every PROBE_EVERY seconds."""
    origins = make(ceiling=50, initial=8)
    held = await take(origins, A, 1)
    await saturate(origins, A, held, 1)
    origin = state(origins, A)
    held += await take(origins, A, origin.cap - origin.active)
    turned_away = held.pop()
    origins.release(held.pop(0), Outcome.OK)  # served while the other was turned away
    at = origin.cap
    origins.release(turned_away, Outcome.SETBACK, retry_after=1.0)
    assert origin.paused_until <= trio.current_time()  # nobody paused
    assert origin.cap < at
    await saturate(origins, A, held, 50)
    assert origin.cap == at - 1  # back fast, and no further
    await trio.sleep(PROBE_EVERY)
    await saturate(origins, A, held, 50)
    assert origin.cap == at  # one probe, which held: no further until the next
    await trio.sleep(PROBE_EVERY)
    await saturate(origins, A, held, 1)
    assert origin.cap == at + 1


async def test_a_stalled_origin_gets_its_share_of_the_waiting_room_then_parks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    origins = make(ceiling=50, initial=1, room=10)
    await origins.acquire(A)  # A's one slot hangs
    parked: list[str] = []
    async with trio.open_nursery() as nursery:
        for _ in range(10):  # not slow yet (nothing has had to wait): the whole room
            nursery.start_soon(waiter, origins, A, parked)
        await trio.testing.wait_all_tasks_blocked()
        assert state(origins, A).waiting == 10
        await trio.sleep(30)  # nothing ends for 30 s: stalled, 10 waiters x 30 s to wait
        # The waiters beyond A's share (5 of the room of 10) saw it and parked themselves.
        assert parked == [PARK_BUSY] * 5
        assert state(origins, A).waiting == 5
        with pytest.raises(Parked) as exc:  # and so does the next task
            await origins.acquire(A)
        assert exc.value.reason == PARK_BUSY
        # B busy too: its first task waits, while A's next one parks.
        await origins.acquire(B)
        nursery.start_soon(origins.acquire, B)
        await trio.testing.wait_all_tasks_blocked()
        assert state(origins, B).waiting == 1
        with pytest.raises(Parked):
            await origins.acquire(A)
        assert state(origins, A).waiting == 5
        nursery.cancel_scope.cancel()
    assert origins.parked[PARK_BUSY] == 7


async def test_waiters_beyond_the_share_park_before_anything_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An origin that hangs from its first request has no time between ends to go by: the
    time it has been busy is the estimate, so the room it holds beyond its share is given back
    within a few seconds, not when its downloads time out."""
    origins = make(ceiling=50, initial=8, room=500)
    for _ in range(8):
        await origins.acquire(A)  # they hang
    parked: list[str] = []
    async with trio.open_nursery() as nursery:
        for _ in range(490):
            nursery.start_soon(waiter, origins, A, parked)
        await trio.testing.wait_all_tasks_blocked()
        assert state(origins, A).waiting == 490  # at once: nothing known yet
        await trio.sleep(2 * RECHECK)
        assert state(origins, A).waiting == 250  # its share: half the room
        assert len(parked) == 240
        nursery.cancel_scope.cancel()


async def test_a_fast_origin_over_its_share_is_not_parked(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Over its share of the room, but its downloads end every 10 ms: a task would wait a
    tenth of a second there, not 30 s."""
    origins = make(ceiling=50, initial=2, room=10)
    slots = await take(origins, A, 2)
    for _ in range(20):  # a steady origin: one end every 10 ms
        mock_clock.jump(0.01)
        origins.release(slots.pop(0), Outcome.OK)
        slots.append(await origins.acquire(A))
    held_b = await take(origins, B, 2)  # B at its limit: its next task waits
    async with trio.open_nursery() as nursery:
        for _ in range(state(origins, A).cap - len(slots) + 10):
            nursery.start_soon(origins.acquire, A)
        nursery.start_soon(origins.acquire, B)
        await trio.testing.wait_all_tasks_blocked()
        assert state(origins, A).waiting == 10  # 10 >= 10 // 2: over its share
        nursery.start_soon(origins.acquire, A)
        await trio.testing.wait_all_tasks_blocked()
        assert state(origins, A).waiting == 11  # waits: not parked
        nursery.cancel_scope.cancel()
    assert origins.parked[PARK_BUSY] == 0
    for slot in held_b:
        origins.release(slot, Outcome.OK)


async def test_neutral_failures_leave_the_limit_and_end_a_run_of_setbacks() -> None:
    origins = make(ceiling=50, initial=8, circuit_failures=2)
    origins.release(await origins.acquire(A), Outcome.SETBACK)
    origin = state(origins, A)
    assert origin.limit == 4.0
    origins.release(await origins.acquire(A), Outcome.NEUTRAL)
    origins.release(await origins.acquire(A), Outcome.SETBACK)
    assert origin.circuit is Circuit.CLOSED  # 404s in between: not two in a row
    origins.release(await origins.acquire(A), Outcome.CANCELLED)
    assert origin.limit == 2.0
    assert (origin.succeeded, origin.setbacks, origin.failed) == (0, 2, 1)


async def test_server_errors_slow_nobody_until_the_origin_answers_nothing_else(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A bare 5xx is one URL's trouble: the limit stays. FAILING_AFTER of them in a row, with
    no other answer between, open the circuit with the origin's tasks failing (an attempt
    spent, no request); after the cooldown one probe is a real request (the mixed-origins
    bench: each of 20,000 tasks for an origin answering 503 to everything cost a whole
    request and ~1.4 ms of the download process's CPU, 0.63x the healthy origin's files/s)."""
    origins = make(ceiling=50, initial=8, circuit_failures=5, circuit_cooldown=30.0)
    for _ in range(FAILING_AFTER - 1):
        origins.release(await origins.acquire(A), Outcome.FAULT)
    origin = state(origins, A)
    assert (origin.circuit, origin.limit) == (Circuit.CLOSED, 8.0)
    # Any other answer between (a success, a 404) ends the run.
    origins.release(await origins.acquire(A), Outcome.NEUTRAL)
    for _ in range(FAILING_AFTER - 1):
        origins.release(await origins.acquire(A), Outcome.FAULT)
    assert origin.circuit is Circuit.CLOSED
    origins.release(await origins.acquire(A), Outcome.FAULT)
    assert (origin.circuit, origin.failing) == (Circuit.OPEN, True)

    # Its tasks fail at once, before the ledger (check) or while waiting (acquire): transient,
    # so the ladder and the dead-letter topic end them as if they had been tried.
    with pytest.raises(NotTried) as not_tried:
        origins.check(A)
    assert not_tried.value.transient
    assert not_tried.value.reason == Reason.HTTP_SERVER_ERROR
    assert "not tried" in str(not_tried.value)
    assert "30 s" in str(not_tried.value)
    with pytest.raises(NotTried):
        await origins.acquire(A)
    assert origin.not_tried == 2
    assert origin.parked == 0
    origins.release(await origins.acquire(B), Outcome.OK)  # other origins are not affected

    await trio.sleep(30)
    probe = await origins.acquire(A)  # a real request
    with pytest.raises(NotTried):  # one probe at a time
        await origins.acquire(A)
    origins.release(probe, Outcome.FAULT)
    assert (origin.circuit, origin.failing) == (Circuit.OPEN, True)
    assert origin.open_until - trio.current_time() == pytest.approx(60.0)
    await trio.sleep(60)
    origins.release(await origins.acquire(A), Outcome.OK)
    assert (origin.circuit, origin.failing, origin.faults_in_row) == (Circuit.CLOSED, False, 0)
    origins.check(A)  # nothing raised: its tasks go to it again
    assert [s.not_tried for s in origins()[0] if s.name == A] == [3]


async def test_server_errors_count_for_nothing_with_the_circuit_off() -> None:
    origins = make(initial=8, circuit_failures=0)
    for _ in range(FAILING_AFTER * 2):
        origins.release(await origins.acquire(A), Outcome.FAULT)
    assert state(origins, A).circuit is Circuit.CLOSED


async def test_pinned_maxima_by_pattern_and_live_changes() -> None:
    policy = OriginPolicy(ceiling=50, initial=8, pinned={"*.blob.example": 3, "a.example:443": 20})
    origins = Origins(policy)
    assert policy.maximum("x.blob.example:443") == 3
    assert policy.maximum(A) == 20
    assert policy.maximum("a.example:80") == 50
    origin = await succeed(origins, A, 100)
    assert origin.cap == 20
    origins.set_policy(OriginPolicy(ceiling=50, initial=8, pinned={"a.example": 5}))
    assert origin.cap == 5
    origins.set_policy(OriginPolicy(ceiling=4, initial=8))
    assert origin.cap == 4  # never above download.concurrency


async def test_the_table_of_origins_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(origins_module, "MAX_TRACKED", 100)
    origins = make()
    held = await origins.acquire("held.example:80")
    for i in range(1000):
        origins.release(await origins.acquire(f"h{i}.example:80"), Outcome.OK)
    assert len(origins) <= 100
    assert origins.get("held.example:80") is not None  # in use: never forgotten
    current, forgotten = origins()
    assert sum(s.succeeded for s in current) + forgotten.succeeded == 1000
    origins.release(held, Outcome.OK)


async def test_metrics_give_the_busiest_origins_a_series_and_sum_the_rest() -> None:
    origins = make()
    metrics = Metrics()
    metrics.track_origins(origins)
    try:
        for i in range(TOP_ORIGINS + 5):
            for _ in range(i + 1):
                origins.release(await origins.acquire(f"h{i}.example:80"), Outcome.OK)
        samples = {
            (s.labels["origin"], s.labels.get("outcome")): s.value
            for family in metrics.registry.collect()
            if family.name == "lakeferry_origin_downloads"
            for s in family.samples
            if s.name.endswith("_total")
        }
        origins_seen = {origin for origin, _ in samples}
        assert len(origins_seen) == TOP_ORIGINS + 1
        assert "h0.example:80" not in origins_seen  # the quietest five are "other"
        assert samples[("other", "ok")] == sum(range(1, 6))
        assert samples[(f"h{TOP_ORIGINS + 4}.example:80", "ok")] == TOP_ORIGINS + 5
    finally:
        metrics.close()


async def test_a_pacer_shares_its_rate_between_takers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer(1000)
    finished: list[float] = []

    async def download() -> None:
        for _ in range(10):
            await pacer.take(1000)
        finished.append(trio.current_time())

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(download)
        nursery.start_soon(download)
    # 20,000 bytes at 1,000 a second, the first second's worth let through at once; the two
    # downloads take turns, so both end near the end.
    assert max(finished) - start == pytest.approx(19.0)
    assert min(finished) - start >= 17.0


async def test_downloads_are_paced_by_the_global_and_their_origins_caps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    origins = make(max_rate=10_000, rates={"slow.example": 1000})
    slow = await origins.acquire("slow.example:443")
    start = trio.current_time()
    for _ in range(5):
        await origins.pace("slow.example:443", 1000)
    assert trio.current_time() - start == pytest.approx(4.0)  # the origin's 1,000 B/s
    start = trio.current_time()
    for _ in range(5):
        await origins.pace(A, 10_000)
    assert trio.current_time() - start == pytest.approx(4.0)  # the global 10,000 B/s
    origins.release(slow, Outcome.OK)
    # Live: a new policy changes the caps of known origins at once.
    origins.set_policy(OriginPolicy(rates={"slow.example": 0}))
    start = trio.current_time()
    await origins.pace("slow.example:443", 1_000_000)
    assert trio.current_time() == start


def download_stage(tmp_path: Path) -> tuple[Any, Any]:
    """A download stage on a real id ledger and nothing else (what ``_attempt`` touches before
    the cache), and the ledger."""
    from types import SimpleNamespace

    from lakeferry.config import Config
    from lakeferry.ledger import IdLedger
    from lakeferry.lifecycle import ActiveCount, Lifecycle
    from lakeferry.metrics import Metrics
    from lakeferry.stages.download import DownloadStage

    ledger = IdLedger(tmp_path / "ids.sqlite")
    pipeline = SimpleNamespace(
        components=SimpleNamespace(ledger=ledger), settings=Config(), metrics=Metrics(),
        limiters={"download": trio.CapacityLimiter(1)},
        active={"download": ActiveCount(), "backfill": ActiveCount()},
        lifecycle=Lifecycle(shutdown_grace=5),
    )  # fmt: skip
    return DownloadStage(pipeline), ledger  # type: ignore[arg-type]


async def test_a_task_its_origin_would_park_is_parked_before_the_ledger(tmp_path: Path) -> None:
    """A dead origin's tasks are parked by the hundred: each is parked before it binds its id
    in the ledger or looks in the cache (the mixed-origins bench: 19,738 parked tasks took
    their share of two busy cores from the healthy origin's files)."""
    import datetime as dt

    from lakeferry.config import Config
    from lakeferry.messages import DownloadTask, Event

    stage, ledger = download_stage(tmp_path)
    url = "https://dead.example/f.bin"
    for _ in range(Config().download.host_circuit_failures):
        stage.origins.release(await stage.origins.acquire(origin_of(url)), Outcome.SETBACK)
    parked: list[str] = []

    async def park(task: DownloadTask, why: Parked) -> None:
        parked.append(why.reason)

    stage._park = park
    task = DownloadTask(event=Event(id="e", url=url), received_at=dt.datetime.now(dt.UTC))
    assert await stage._attempt(task, "downloads.pending") == "parked"
    assert parked == [PARK_OPEN]
    assert ledger.batches == 0  # the id was not bound
    await ledger.aclose()


async def test_a_task_of_an_origin_failing_everything_fails_before_the_ledger(
    tmp_path: Path,
) -> None:
    """Not tried: the attempt fails through the stage's usual path (history, ladder, DLQ),
    before the task binds its id or looks in the cache."""
    import datetime as dt

    from lakeferry.errors import PipelineError
    from lakeferry.messages import DownloadTask, Event

    stage, ledger = download_stage(tmp_path)
    url = "https://failing.example/f.bin"
    for _ in range(FAILING_AFTER):
        stage.origins.release(await stage.origins.acquire(origin_of(url)), Outcome.FAULT)
    failed: list[PipelineError] = []

    async def fail(task: DownloadTask, error: PipelineError, topic: str) -> None:
        failed.append(error)

    stage._failed = fail
    task = DownloadTask(event=Event(id="e", url=url), received_at=dt.datetime.now(dt.UTC))
    assert await stage._attempt(task, "downloads.pending") == "failed"
    assert [type(e) for e in failed] == [NotTried]
    assert ledger.batches == 0  # the id was not bound
    await ledger.aclose()
