"""Group commit: many trio tasks' small writes, one blocking transaction per batch.

A blocking store (SQLite here) costs a worker-thread hop and a transaction per call; at a
thousand calls a second the hops, not the work, are what the CPU spends. So callers hand in a
request and wait; whoever finds no batch running takes every request queued so far and runs
them together in one call of ``work`` in a worker thread (one transaction), then hands each
caller its own result. Under load batches grow by themselves; alone, a request runs at once.

Cancellation: a request not yet taken by a batch is withdrawn; once taken, the batch runs to
its end (shielded: the other callers wait on it) and the cancelled caller just does not look
at its result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Generic, TypeVar

import trio

from lakeferry.iothreads import IoThreads

Q = TypeVar("Q")
R = TypeVar("R")


class BatchFailed(Exception):
    """The batch holding this request failed (the cause is chained)."""


class _Batch(Generic[Q, R]):
    def __init__(self) -> None:
        self.requests: list[Q] = []
        self.results: list[R] = []
        self.error: BaseException | None = None
        self.finished = trio.Event()


class GroupCommit(Generic[Q, R]):
    """Runs ``work(requests) -> results`` (same length, same order) for batches of requests."""

    def __init__(self, work: Callable[[Sequence[Q]], list[R]], threads: IoThreads) -> None:
        self._work = work
        self._threads = threads
        """Where ``work`` runs: one batch at a time (others may share the threads)."""
        self._filling: _Batch[Q, R] = _Batch()
        self._running = False
        self._ran = trio.Event()
        self.batches = 0
        """Batches run so far (for tests and metrics)."""

    async def submit(self, request: Q) -> R:
        """Queue ``request`` for the next batch; its result once that batch ran."""
        batch = self._filling
        index = len(batch.requests)
        batch.requests.append(request)
        try:
            while not batch.finished.is_set():
                if self._running:
                    await self._ran.wait()
                else:
                    await self._lead()
        except BaseException:
            if batch is self._filling:  # not taken yet: withdraw it
                batch.requests[index] = _WITHDRAWN  # type: ignore[assignment]
            raise
        if batch.error is not None:
            # Every caller of the batch gets its own exception, chained to the one that ended it.
            raise BatchFailed(f"{type(batch.error).__name__}: {batch.error}") from batch.error
        return batch.results[index]

    async def _lead(self) -> None:
        batch, self._filling = self._filling, _Batch()
        self._running = True
        live = [(i, r) for i, r in enumerate(batch.requests) if r is not _WITHDRAWN]
        try:
            with trio.CancelScope(shield=True):
                results = await self._threads.run(partial(self._work, [r for _, r in live]))
            slots: list[R | None] = [None] * len(batch.requests)
            for (i, _), result in zip(live, results, strict=True):
                slots[i] = result
            batch.results = slots  # type: ignore[assignment]
            self.batches += 1
        except Exception as exc:
            batch.error = exc
        finally:
            self._running = False
            batch.finished.set()
            self._ran.set()
            self._ran = trio.Event()


_WITHDRAWN = object()
