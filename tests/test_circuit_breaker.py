"""The upload stage's circuit breaker, in virtual time."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from lakeferry.stages.upload import CircuitBreaker


async def test_opens_after_consecutive_failures_and_half_opens(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker(failures=3, cooldown=10)
    for _ in range(2):
        breaker.failure()
    assert not breaker.is_open
    breaker.success()  # a success resets the count
    for _ in range(3):
        breaker.failure()
    assert breaker.is_open
    opened = trio.current_time()
    passed: list[float] = []

    async def uploader() -> None:
        await breaker.wait_closed()
        passed.append(trio.current_time() - opened)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(uploader)
        await trio.sleep(10.5)  # virtual time: just past the cooldown
        # After the cooldown exactly one probe goes through; the others keep waiting.
        assert passed == [10.0]
        breaker.failure()  # the probe failed: open for another cooldown
        await trio.sleep(10.1)  # virtual time: just past the second cooldown
        assert passed == pytest.approx([10.0, 20.5])
        breaker.success()  # the second probe succeeded: everyone proceeds
    assert passed == pytest.approx([10.0, 20.5, 20.6])
    assert not breaker.is_open


async def test_closed_breaker_never_blocks(autojump_clock: trio.testing.MockClock) -> None:
    breaker = CircuitBreaker(failures=1, cooldown=5)
    start = trio.current_time()
    await breaker.wait_closed()
    assert trio.current_time() == start
