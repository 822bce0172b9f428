"""Batch closing: full, old or quiet (virtual time)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
import trio.testing

from lakeferry.stages.batcher import QUIET, Batcher


def batcher(flushed: list[tuple[float, list[int]]], *, max_items: int = 100,
            max_wait: float = 1.0) -> Batcher[int]:  # fmt: skip
    async def flush(items: Sequence[int]) -> None:
        flushed.append((trio.current_time(), list(items)))

    return Batcher("test", flush, lambda: max_items, lambda: max_wait)


async def test_a_lone_item_is_written_after_the_quiet_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flushed: list[tuple[float, list[int]]] = []
    b = batcher(flushed)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(b.run)
        start = trio.current_time()
        await b.add(1)
        nursery.cancel_scope.cancel()
    [(at, items)] = flushed
    assert items == [1]
    assert at - start == QUIET  # not max_wait (1 s)


async def test_a_steady_stream_fills_a_batch_until_max_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flushed: list[tuple[float, list[int]]] = []
    b = batcher(flushed, max_wait=0.5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(b.run)
        start = trio.current_time()
        for i in range(100):  # one item every 10 ms: never quiet for QUIET
            nursery.start_soon(b.add, i)
            await trio.sleep(QUIET / 2)  # virtual time: the stream's pace
        await trio.sleep(1)  # virtual time: past max_wait, the rest is flushed
        nursery.cancel_scope.cancel()
    first_at, first = flushed[0]
    assert first_at - start == 0.5
    assert first == list(range(50))
    assert sum(len(items) for _, items in flushed) == 100


async def test_a_full_batch_is_written_at_once(autojump_clock: trio.testing.MockClock) -> None:
    flushed: list[tuple[float, list[int]]] = []
    b = batcher(flushed, max_items=3)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(b.run)
        start = trio.current_time()
        for i in range(3):
            nursery.start_soon(b.add, i)
        await trio.sleep(QUIET / 4)  # virtual time: less than QUIET, yet the full batch is out
        [(at, items)] = flushed
        assert (at, sorted(items)) == (start, [0, 1, 2])
        nursery.cancel_scope.cancel()


async def test_a_bursty_stream_gets_one_batch_per_max_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Bursts of 10 items every 3 * QUIET (~170 items/s): each burst is followed by a quiet gap,
    yet batches close by age, not by quiet, so 1,200 items take ~7 commits, not one per burst
    (120), and no item waits for its batch longer than max_wait."""
    flushed: list[tuple[float, list[int]]] = []
    b = batcher(flushed, max_items=1000, max_wait=0.5)
    added: dict[int, float] = {}

    async def add(i: int) -> None:
        added[i] = trio.current_time()
        await b.add(i)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(b.run)
        for burst in range(120):
            for k in range(10):
                nursery.start_soon(add, burst * 10 + k)
            await trio.sleep(3 * QUIET)  # virtual time: the stream's pace, gaps longer than QUIET
        await trio.sleep(2)  # virtual time: the rest is flushed
        nursery.cancel_scope.cancel()
    assert sum(len(items) for _, items in flushed) == 1200
    assert len(flushed) <= 3 * 120 * QUIET / 0.5 + 2
    waits = [at - added[i] for at, items in flushed for i in items]
    assert max(waits) <= 0.5 + 1e-9


async def test_a_lone_item_after_a_stream_waits_at_most_max_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flushed: list[tuple[float, list[int]]] = []
    b = batcher(flushed, max_wait=0.5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(b.run)
        await b.add(1)  # after an idle spell: written QUIET later
        start = trio.current_time()
        await b.add(2)  # right after a batch closed: waits for max_wait since that close
        assert trio.current_time() - start <= 0.5
        await trio.sleep(1)  # virtual time: idle again
        start = trio.current_time()
        await b.add(3)
        assert trio.current_time() - start == pytest.approx(QUIET)
        nursery.cancel_scope.cancel()
    assert [items for _, items in flushed] == [[1], [2], [3]]


async def test_the_next_batch_grows_while_a_slow_write_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A write that takes longer than max_wait: the items that arrived meanwhile go in one
    batch as soon as it ends, not after another max_wait."""
    flushed: list[tuple[float, list[int]]] = []

    async def slow(items: Sequence[int]) -> None:
        await trio.sleep(2)  # virtual time: a slow commit
        flushed.append((trio.current_time(), list(items)))

    b: Batcher[int] = Batcher("test", slow, lambda: 1000, lambda: 0.5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(b.run)
        start = trio.current_time()
        nursery.start_soon(b.add, 0)
        await trio.sleep(QUIET * 2)  # virtual time: the first batch closes and its write starts
        for i in range(1, 51):
            nursery.start_soon(b.add, i)
            await trio.sleep(0.01)  # virtual time: the stream's pace during the write
        await trio.sleep(5)  # virtual time: both writes end
        nursery.cancel_scope.cancel()
    assert [sorted(items) for _, items in flushed] == [[0], list(range(1, 51))]
    assert [at - start for at, _ in flushed] == pytest.approx([QUIET + 2, QUIET + 4])
