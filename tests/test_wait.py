"""The wait helpers (``helpers.wait``): what they return, how they fail, how often they poll."""

from __future__ import annotations

import itertools
import re
import time

import pytest
import trio
import trio.testing

from helpers.wait import wait_for, wait_for_async, wait_until, wait_until_async


def test_returns_the_first_truthy_value() -> None:
    counter = itertools.count()
    assert wait_until(lambda: next(counter) >= 3 and "ready", timeout=5, what="three") == "ready"


def test_a_timeout_names_what_was_awaited_and_the_last_value() -> None:
    counter = itertools.count()
    started = time.monotonic()
    with pytest.raises(AssertionError) as caught:
        wait_for(
            lambda: {"landed": next(counter)},
            lambda counts: counts["landed"] < 0,
            timeout=0.2,
            what="nothing to land",
            interval=0.01,
        )
    assert time.monotonic() - started >= 0.2
    message = str(caught.value)
    assert message.startswith("timed out after 0.2 s waiting for nothing to land; last value (")
    last = re.search(r"\{'landed': (\d+)\}$", message)
    assert last is not None, message
    assert int(last.group(1)) >= 2  # the last of several polls, not the first


def test_a_probe_that_raises_ends_the_wait() -> None:
    def broken() -> bool:
        raise RuntimeError("the process died")

    with pytest.raises(RuntimeError, match="the process died"):
        wait_until(broken, timeout=5, what="anything")


def test_a_slow_probe_is_not_called_more_often_than_it_takes() -> None:
    calls: list[float] = []

    def slow() -> bool:
        calls.append(time.monotonic())
        time.sleep(0.1)
        return False

    with pytest.raises(AssertionError):
        wait_until(slow, timeout=0.55, what="never", interval=0.001)
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert len(calls) <= 4
    # A 0.1 s probe, then at least a 0.1 s pause; only the last one is cut short by the deadline
    # (a last poll at the deadline).
    assert all(gap >= 0.2 for gap in gaps[:-1]), gaps


async def test_async_polls_sync_and_async_probes(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[int] = []

    async def grow() -> list[int]:
        seen.append(len(seen))
        await trio.sleep(1)
        return seen

    assert await wait_for_async(grow, lambda s: len(s) == 3, timeout=10, what="three") == [0, 1, 2]
    start = trio.current_time()
    assert await wait_until_async(lambda: trio.current_time() - start >= 5, timeout=10, what="5 s")


async def test_async_timeout_in_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    with pytest.raises(AssertionError, match=r"waiting for a miracle; last value \(\d+ polls\): 0"):
        await wait_until_async(lambda: 0, timeout=30, what="a miracle")
    assert trio.current_time() - start == pytest.approx(30)
