"""Policy the download and upload stages share: how a plugin's exception is classified, and
one lock per key.

Both stages call plugins (downloaders; caches and sinks) that may raise anything. A
:class:`~lakeferry.errors.PipelineError` says itself whether it is transient or permanent;
anything else goes through the plugins' ``lakeferry_classify_error`` hook, and an exception no
plugin claims is transient with reason ``internal`` (a bug, retried rather than lost).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from lakeferry.errors import PipelineError, Reason, TransientError
from lakeferry.registry import Registry


def classify(registry: Registry, exc: BaseException, stage: str) -> PipelineError:
    """What ``exc``, raised by a component during ``stage``, means for the task."""
    if isinstance(exc, PipelineError):
        return exc
    classified = registry.classify(exc, stage)
    if classified is not None:
        return classified
    return TransientError(Reason.INTERNAL, f"{type(exc).__name__}: {exc}")


class KeyLocks:
    """One trio.Lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, trio.Lock] = {}
        self._users: defaultdict[str, int] = defaultdict(int)

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, trio.Lock())
        self._users[key] += 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if self._users[key] == 0:
                del self._users[key]
                del self._locks[key]
