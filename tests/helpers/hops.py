"""Counting hand-offs to worker threads: ``trio.to_thread.run_sync`` and, optionally,
:meth:`lakeferry.iothreads.IoThreads.run`. For tests that pin how many hops a put costs."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from lakeferry.iothreads import IoThreads


class Hops:
    """How many hops were made while ``counting`` (set it False to stop counting)."""

    def __init__(self) -> None:
        self.count = 0
        self.counting = True

    def _hop(self) -> None:
        if self.counting:
            self.count += 1


def count_hops(monkeypatch: pytest.MonkeyPatch, *, iothreads: bool = False) -> Hops:
    hops = Hops()
    real_sync = trio.to_thread.run_sync

    async def run_sync(*args: Any, **kwargs: Any) -> Any:
        hops._hop()
        return await real_sync(*args, **kwargs)

    monkeypatch.setattr(trio.to_thread, "run_sync", run_sync)
    if iothreads:
        real_run = IoThreads.run

        async def run_on_threads(self: IoThreads, *args: Any) -> Any:
            hops._hop()
            return await real_run(self, *args)

        monkeypatch.setattr(IoThreads, "run", run_on_threads)
    return hops
