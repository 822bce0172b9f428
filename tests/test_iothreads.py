"""Worker threads for blocking work (:mod:`lakeferry.iothreads`): a queue of jobs in, results
back to trio in batches."""

from __future__ import annotations

import functools
import threading

import outcome
import pytest
import trio

from helpers.wait import wait_until_async
from lakeferry import iothreads
from lakeferry.iothreads import IoThreads

pytestmark = pytest.mark.trio


async def test_results_and_errors_come_back_to_the_caller() -> None:
    pool = IoThreads(2, "test-io")
    assert await pool.run(lambda a, b: a + b, 2, 3) == 5
    assert await pool.run(threading.get_ident) != threading.get_ident()

    def fail() -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        await pool.run(fail)


async def test_threads_are_bounded_and_jobs_queue_behind_them() -> None:
    pool = IoThreads(3, "test-io")
    gate = threading.Event()
    lock = threading.Lock()
    running = 0
    most = 0

    def job() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        gate.wait(10)
        with lock:
            running -= 1

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(pool.run, job)
        await wait_until_async(lambda: running == 3, timeout=10, what="three jobs running")
        assert pool.threads == 3
        gate.set()
    assert most == 3


async def test_jobs_that_finish_together_come_back_in_one_delivery() -> None:
    """The point of the queue: one wake-up of trio for many finished jobs, not one each."""
    pool = IoThreads(2, "test-io")
    deliveries = 0
    deliver = pool._deliver

    def counting(token: trio.lowlevel.TrioToken) -> None:
        nonlocal deliveries
        deliveries += 1
        deliver(token)

    pool._deliver = counting  # type: ignore[method-assign]
    finished = threading.Semaphore(0)
    results: list[int] = []

    def job(i: int) -> int:
        finished.release()
        return i

    def collect(result: outcome.Outcome[int]) -> None:
        results.append(result.unwrap())

    for i in range(10):
        pool.submit(functools.partial(job, i), collect)
    for _ in range(10):  # trio is kept busy (this thread blocks) while all ten finish
        assert finished.acquire(timeout=10)
    await wait_until_async(lambda: len(results) == 10, timeout=10, what="ten results")
    assert sorted(results) == list(range(10))
    assert deliveries <= 2  # a thread may deliver its last result just before trio reads


async def test_a_started_job_runs_to_its_end_despite_a_cancellation() -> None:
    pool = IoThreads(1, "test-io")
    started, release = threading.Event(), threading.Event()
    ended: list[str] = []

    def job() -> str:
        started.set()
        release.wait(10)
        ended.append("job")
        return "done"

    got: list[str] = []
    with trio.CancelScope() as scope:

        async def cancel_when_started() -> None:
            await wait_until_async(started.is_set, timeout=10, what="the job to start")
            scope.cancel(reason="test")
            release.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_when_started)
            got.append(await pool.run(job))  # not abandoned: returns once the job ends
            await trio.lowlevel.checkpoint()  # where the cancellation is delivered
    assert scope.cancelled_caught
    assert got == ["done"]
    assert ended == ["job"]
    with trio.CancelScope() as scope:
        scope.cancel(reason="test")
        await pool.run(ended.append, "never")  # cancelled before it is queued: never runs
    assert ended == ["job"]


async def test_idle_threads_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iothreads, "IDLE_SECONDS", 0.05)
    pool = IoThreads(2, "test-io")
    await pool.run(lambda: None)
    assert pool.threads == 1
    await wait_until_async(lambda: pool.threads == 0, timeout=10, what="the idle thread to end")
    assert await pool.run(lambda: "again") == "again"  # a new one starts for the next job


async def test_a_short_job_does_not_wait_behind_a_long_one() -> None:
    """A write held up by the disk must not hold up the publish of a small file while another
    thread could run it."""
    pool = IoThreads(2, "test-io")
    release = threading.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pool.run, release.wait, 10)
        await wait_until_async(lambda: pool.threads == 1, timeout=10, what="the long job's thread")
        started = trio.current_time()
        assert await pool.run(lambda: "short") == "short"  # (a job cannot be cancelled)
        assert trio.current_time() - started < 5, "the short job waited for the long one"
        release.set()
