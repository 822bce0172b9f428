"""Batch closing: full, old or quiet (virtual time)."""

from __future__ import annotations

from collections.abc import Sequence

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
