"""Collects handler items into batches and flushes each batch once, with retry.

Handlers call :meth:`Batcher.add` and wait until their batch is written; one flusher task
closes a batch when it reaches ``max_items``, or ``max_wait`` after its first item, or when no
item arrived for ``QUIET`` seconds: a trickle is written at once (latency), a stream fills its
batches (throughput). A failed
flush is retried in place with backoff while the handlers wait, so a slow or failing table
pushes back on the consumer instead of piling items up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import trio

from lakeferry.logs import get_logger

log = get_logger("batcher")

T = TypeVar("T")
BACKOFF_MAX = 30.0
QUIET = 0.02
"""A batch that got no new item for this long is closed (if ``max_wait`` is not shorter)."""


@dataclass
class _Batch(Generic[T]):
    items: list[T] = field(default_factory=list)
    done: trio.Event = field(default_factory=trio.Event)


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

    async def add(self, item: T) -> None:
        """Add ``item`` and return once the batch holding it is written."""
        batch = self._batch
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
            await self._flush_with_retry(batch.items)
            batch.done.set()

    async def _collect(self, batch: _Batch[T]) -> None:
        """Wait until ``batch`` is full, old (``max_wait``) or quiet (``QUIET``)."""
        deadline = trio.current_time() + self._max_wait()
        while not self._full.is_set():
            seen = len(batch.items)
            with trio.move_on_at(min(deadline, trio.current_time() + QUIET)):
                await self._full.wait()
            if len(batch.items) == seen or trio.current_time() >= deadline:
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
