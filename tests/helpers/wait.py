"""Waiting for what another thread, task or process will do: the tests' one way to poll.

- ``wait_until(predicate, timeout=, what=)`` calls ``predicate`` until it returns something
  truthy and returns that value.
- ``wait_for(probe, until, timeout=, what=)`` calls ``probe`` until ``until(value)`` holds and
  returns that value; use it when the value is worth reading in a failure (audit counts, a
  metric, committed offsets), since a plain predicate can only report ``False``.
- ``wait_until_async`` and ``wait_for_async`` are the same for trio tests; their ``predicate``
  or ``probe`` may be a plain function or an async one. They measure time with trio's clock, so
  they also work under ``autojump_clock`` (in virtual time).

Why not a fixed sleep: on a busy machine it is too short (a flaky test), and on an idle one it
is too long (a slow suite). Why not a loop written inline: it forgets to say what it waited for.
After ``timeout`` seconds these raise an ``AssertionError`` that names ``what``, the timeout and
the last value seen, e.g. ``timed out after 60 s waiting for the batch to land; last value:
{'landed': 3, 'in_flight': 2}``.

Polling: every ``interval`` seconds (short by default), but never more often than the probe
itself takes: a probe that runs a CLI for 0.5 s is called at most every 0.5 s, so waiting uses
at most about half a core and leaves the rest to the daemon it is waiting for.

A predicate or probe that raises ends the wait with its exception: an assertion inside it is a
failure, not a reason to keep polling.

A sleep that remains in a test is the thing under test (time passes and nothing may happen, a
producer's pace, a handler's work, virtual time), and says so in a comment.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

import trio

T = TypeVar("T")

INTERVAL = 0.05
"""Seconds between polls of a cheap predicate."""


def _timed_out(what: str, timeout: float, polls: int, last: object) -> AssertionError:
    return AssertionError(
        f"timed out after {timeout:g} s waiting for {what}; last value ({polls} polls): {last!r}"
    )


def wait_for(
    probe: Callable[[], T],
    until: Callable[[T], object],
    *,
    timeout: float,
    what: str,
    interval: float = INTERVAL,
) -> T:
    """Call ``probe`` until ``until`` accepts its value, which is returned; blocking."""
    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        started = time.monotonic()
        value = probe()
        polls += 1
        if until(value):
            return value
        now = time.monotonic()
        if now >= deadline:
            raise _timed_out(what, timeout, polls, value)
        time.sleep(min(max(interval, now - started), deadline - now))


def wait_until(
    predicate: Callable[[], T], *, timeout: float, what: str, interval: float = INTERVAL
) -> T:
    """Call ``predicate`` until it returns something truthy, which is returned; blocking."""
    return wait_for(predicate, bool, timeout=timeout, what=what, interval=interval)


@overload
async def wait_for_async(
    probe: Callable[[], Awaitable[T]],
    until: Callable[[T], object],
    *,
    timeout: float,
    what: str,
    interval: float = ...,
) -> T: ...
@overload
async def wait_for_async(
    probe: Callable[[], T],
    until: Callable[[T], object],
    *,
    timeout: float,
    what: str,
    interval: float = ...,
) -> T: ...
async def wait_for_async(
    probe: Callable[[], Any],
    until: Callable[[Any], object],
    *,
    timeout: float,
    what: str,
    interval: float = INTERVAL,
) -> Any:
    """Call (and await, if async) ``probe`` until ``until`` accepts its value; trio."""
    deadline = trio.current_time() + timeout
    polls = 0
    while True:
        started = trio.current_time()
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        polls += 1
        if until(value):
            return value
        now = trio.current_time()
        if now >= deadline:
            raise _timed_out(what, timeout, polls, value)
        await trio.sleep(min(max(interval, now - started), deadline - now))


@overload
async def wait_until_async(
    predicate: Callable[[], Awaitable[T]], *, timeout: float, what: str, interval: float = ...
) -> T: ...
@overload
async def wait_until_async(
    predicate: Callable[[], T], *, timeout: float, what: str, interval: float = ...
) -> T: ...
async def wait_until_async(
    predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = INTERVAL
) -> Any:
    """Call (and await, if async) ``predicate`` until it returns something truthy; trio."""
    return await wait_for_async(predicate, bool, timeout=timeout, what=what, interval=interval)
