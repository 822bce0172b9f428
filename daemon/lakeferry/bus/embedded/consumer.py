"""A consumer of the embedded bus: a group member that polls the SQLite file."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING

import trio

from lakeferry.bus.base import (
    AssignCallback,
    Record,
    RevokeCallback,
    TopicPartition,
)
from lakeferry.bus.buffers import PartitionBuffers
from lakeferry.bus.embedded.schema import _NO_END, FETCH_LIMIT, MIN_FETCH, _read_range

if TYPE_CHECKING:
    from lakeferry.bus.embedded.store import EmbeddedBus


class EmbeddedConsumer:
    """A group member of an :class:`EmbeddedBus`; create it with :meth:`EmbeddedBus.consumer`.

    Assigned every partition of its topics on the first :meth:`next`. Not meant for
    concurrent :meth:`next` callers (it stays correct, but fairness is per call).
    """

    def __init__(
        self,
        bus: EmbeddedBus,
        group: str,
        topics: Sequence[str],
        *,
        on_assign: AssignCallback | None,
        on_revoke: RevokeCallback | None,
    ) -> None:
        self.group = group
        self._bus = bus
        self._topics = list(dict.fromkeys(topics))
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._started = False
        self._closed = False
        self._start_lock = trio.Lock()
        self._assignment: frozenset[TopicPartition] = frozenset()
        # Next offset to fetch from the file, i.e. after what is buffered.
        self._fetch_pos: dict[TopicPartition, int] = {}
        self._buffers = PartitionBuffers()
        self._paused: set[TopicPartition] = set()
        self._early_seeks: dict[TopicPartition, int] = {}
        self._wakeup = trio.Event()
        self._next_fetch = 0

    def _wake(self) -> None:
        self._wakeup.set()

    async def _start(self) -> None:
        async with self._start_lock:
            if self._started or self._closed:
                return
            order, committed = await self._bus._run(
                partial(self._bus._join, group=self.group, topics=self._topics)
            )
            if self._closed:
                return
            self._buffers.add(order)
            self._assignment = frozenset(order)
            for tp in order:
                self._fetch_pos[tp] = self._early_seeks.get(tp, committed.get(tp, 0))
            self._early_seeks.clear()
            self._started = True
            if self._on_assign is not None:
                self._on_assign(list(order))

    async def next(self) -> Record:
        """The next record of an assigned, unpaused partition; waits until there is one.

        Raises :class:`trio.ClosedResourceError` once the consumer is closed, also when the
        close happens while waiting. Cancelling a waiting ``next`` loses no record.
        """
        if not self._started:
            await self._start()
        while True:
            # Checkpoint before taking a record from the buffer, never after: a cancellation
            # between the two would drop it.
            await trio.lowlevel.checkpoint()
            if self._closed:
                raise trio.ClosedResourceError("the consumer is closed")
            record = self._buffers.pop(self._paused)
            if record is not None:
                return record
            if self._wakeup.is_set():
                self._wakeup = trio.Event()
            wakeup = self._wakeup  # taken before the query: a write during it is not missed
            if await self._refill():
                continue
            with trio.move_on_after(self._bus.poll_interval):
                await wakeup.wait()

    async def _refill(self) -> bool:
        order = self._buffers.order
        count = len(order)
        start = self._next_fetch
        self._next_fetch = (start + 1) % count if count else 0
        wanted = [
            tp
            for tp in order[start:] + order[:start]
            if tp not in self._paused and self._buffers.is_empty(tp)
        ]
        if not wanted:
            return False
        limit = max(MIN_FETCH, FETCH_LIMIT // len(wanted))
        requests = [(tp, self._fetch_pos[tp]) for tp in wanted]

        def fetch(conn: sqlite3.Connection) -> list[tuple[TopicPartition, int, list[Record]]]:
            results = []
            total = 0
            for tp, position in requests:
                if total >= FETCH_LIMIT:
                    break
                records = _read_range(conn, tp, position, _NO_END, limit)
                results.append((tp, position, records))
                total += len(records)
            return results

        got = False
        for tp, position, records in await self._bus._run(fetch):
            # A seek (or a concurrent refill) while the query ran makes its answer stale.
            if not records or self._closed or self._fetch_pos.get(tp) != position:
                continue
            self._buffers.extend(tp, records)
            self._fetch_pos[tp] = records[-1].offset + 1
            got = got or tp not in self._paused
        return got

    def pause(self, tp: TopicPartition) -> None:
        """Stop returning records of ``tp`` (already buffered ones are kept)."""
        self._paused.add(tp)

    def resume(self, tp: TopicPartition) -> None:
        """Return records of ``tp`` again; wakes a waiting :meth:`next`."""
        self._paused.discard(tp)
        self._wake()

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` from ``offset`` next; its buffered records are discarded.

        Raises ``ValueError`` for a partition that is not assigned (once assigned).
        """
        if offset < 0:
            raise ValueError("offset must not be negative")
        if self._closed:
            raise trio.ClosedResourceError("the consumer is closed")
        if not self._started:
            self._early_seeks[tp] = offset
        elif tp not in self._assignment:
            raise ValueError(f"{tp} is not assigned to this consumer")
        else:
            self._buffers.clear(tp)
            self._fetch_pos[tp] = offset
        self._wake()

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Store the next offset to read per partition, durably, before returning."""
        if self._closed:
            raise trio.ClosedResourceError("the consumer is closed")
        items = [(TopicPartition(*tp), int(offset)) for tp, offset in offsets.items()]
        if any(offset < 0 for _, offset in items):
            raise ValueError("offsets must not be negative")
        if not items:
            await trio.lowlevel.checkpoint()
            return
        await self._bus._run(partial(self._bus._store_offsets, group=self.group, offsets=items))

    def assignment(self) -> frozenset[TopicPartition]:
        """Every partition of the topics once :meth:`next` started; empty before."""
        return self._assignment

    async def aclose(self) -> None:
        """Leave the group: ``on_revoke`` runs (its offsets are committed), a waiting
        :meth:`next` raises, buffers go."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        if self._bus._consumers.get(self.group) is self:
            del self._bus._consumers[self.group]
        self._wake()
        self._buffers.clear()
        final: Mapping[TopicPartition, int] | None = None
        try:
            if self._started and self._on_revoke is not None:
                final = self._on_revoke(list(self._buffers.order))
        finally:
            self._assignment = frozenset()
        if final:
            with trio.CancelScope(shield=True):
                items = [(TopicPartition(*tp), int(offset)) for tp, offset in final.items()]
                await self._bus._run(
                    partial(self._bus._store_offsets, group=self.group, offsets=items)
                )
        await trio.lowlevel.checkpoint()
