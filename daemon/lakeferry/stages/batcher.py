"""Collects handler items into batches and flushes each batch once, with retry.

Handlers call :meth:`Batcher.add` and wait until their batch is written; one flusher task
writes one batch at a time and closes a batch when

- it holds ``max_items``; or
- ``max_wait`` passed since its first item arrived (while the previous batch is being written,
  the next one grows; when that write ends, a batch already older than ``max_wait`` goes at
  once); or
- no item arrived for ``QUIET`` seconds *and* the previous batch closed at least ``max_wait``
  ago.

So a lone item after an idle spell is written ``QUIET`` after it arrived (latency), and a
stream, however bursty, is written at most once per ``max_wait`` plus once per ``max_items``
items: under a high rate the commits get fewer and larger (each commit has a fixed cost), and
no item waits for its batch to close longer than ``max_wait`` (plus the write in flight).

A failed flush is retried in place with backoff while the handlers wait, so a slow or failing
table pushes back on the consumer instead of piling items up. Memory is bounded by the
caller's in-flight limit: every item belongs to a waiting handler.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import trio

from lakeferry.logs import get_logger

log = get_logger("batcher")

T = TypeVar("T")
BACKOFF_MAX = 30.0
QUIET = 0.02
"""A batch that got no new item for this long is closed, if the previous batch closed at least
``max_wait`` ago (and ``max_wait`` is not shorter)."""


@dataclass
class _Batch(Generic[T]):
    items: list[T] = field(default_factory=list)
    done: trio.Event = field(default_factory=trio.Event)
    started: float = 0.0
    """When its first item arrived (trio time)."""


class Batcher(Generic[T]):
    def __init__(
        self,
        name: str,
        flush: Callable[[Sequence[T]], Awaitable[None]],
        max_items: Callable[[], int],
        max_wait: Callable[[], float],
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self._flush = flush
        self._max_items = max_items
        self._max_wait = max_wait
        self._on_error = on_error
        self._batch: _Batch[T] = _Batch()
        self._has_items = trio.Event()
        self._full = trio.Event()
        self._closed_at = -math.inf
        """When the previous batch was closed (trio time)."""

    async def add(self, item: T) -> None:
        """Add ``item`` and return once the batch holding it is written."""
        batch = self._batch
        if not batch.items:
            batch.started = trio.current_time()
        batch.items.append(item)
        self._has_items.set()
        if len(batch.items) >= self._max_items():
            self._full.set()
        await batch.done.wait()

    async def run(self) -> None:
        """The flusher; run it in the nursery of the stage that calls :meth:`add`."""
        while True:
            await self._has_items.wait()
            await self._collect(self._batch)
            batch, self._batch = self._batch, _Batch()
            self._has_items = trio.Event()
            self._full = trio.Event()
            self._closed_at = trio.current_time()
            await self._flush_with_retry(batch.items)
            batch.done.set()

    async def _collect(self, batch: _Batch[T]) -> None:
        """Wait until ``batch`` is full, old (``max_wait`` after its first item) or quiet
        (``QUIET`` without a new item, ``max_wait`` after the previous batch closed)."""
        max_wait = self._max_wait()
        deadline = batch.started + max_wait
        quiet_from = self._closed_at + max_wait
        while not self._full.is_set():
            now = trio.current_time()
            if now >= deadline:
                return
            seen = len(batch.items)
            with trio.move_on_at(min(deadline, max(now + QUIET, quiet_from))):
                await self._full.wait()
            if len(batch.items) == seen and trio.current_time() >= quiet_from:
                return

    async def _flush_with_retry(self, items: Sequence[T]) -> None:
        delay = 0.5
        while True:
            try:
                await self._flush(items)
                return
            except Exception:
                log.exception(
                    "batch write failed; retrying", extra={"batch": self.name, "wait": delay}
                )
                if self._on_error is not None:
                    self._on_error()
                await trio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
