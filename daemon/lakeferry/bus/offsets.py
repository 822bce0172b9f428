"""Which consumed offsets may be committed: the highest *contiguous* completed position.

A stage works on many records of one partition at once and they finish in any order. The bus
may only be told "everything below N is done" once every taken record below N is done, so the
commit position of a partition is the lowest offset still in flight, or the offset after the
last one taken when nothing is in flight. :class:`OffsetTracker` keeps that position per
partition with O(1) amortised work per call: a deque of the taken offsets in order, and a map
from the in-flight ones to the generation they were taken in. Its memory follows the records in
flight: done offsets waiting behind an unfinished one are dropped once they outnumber the
in-flight ones twice over.

Generations keep old work apart from new work. :meth:`OffsetTracker.forget` (partition
revoked) and :meth:`OffsetTracker.reset` (seek) start a new generation, and a late
:meth:`~OffsetTracker.done` carrying an old generation is ignored, so work that finishes after
its partition went away (and perhaps came back, with the same offsets redelivered) never
moves the new position. Pass the :class:`Ticket` that :meth:`~OffsetTracker.track` returned:
``tracker.done(*ticket)``.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Mapping
from typing import NamedTuple

from lakeferry.bus.base import Record, TopicPartition

__all__ = ["OffsetTracker", "Ticket"]


class Ticket(NamedTuple):
    """What :meth:`OffsetTracker.track` hands out; give it back with ``done(*ticket)``."""

    tp: TopicPartition
    offset: int
    generation: int


COMPACT_SLACK = 64
"""Done offsets kept behind an unfinished one, beyond twice the in-flight count, before they
are dropped: the tracker's memory follows what is in flight, not what finished after it."""


class _PartitionState:
    __slots__ = ("committed", "end", "generation", "in_flight", "taken")

    def __init__(self, generation: int) -> None:
        self.generation = generation
        # Taken offsets not yet passed by the position, in increasing order. Those absent from
        # ``in_flight`` are done and wait for the ones before them.
        self.taken: deque[int] = deque()
        # In-flight (taken, not done) offset -> generation it was taken in.
        self.in_flight: dict[int, int] = {}
        # The next offset expected to be taken (last taken + 1, or where a seek put us).
        self.end: int | None = None
        # The position last reported to mark_committed().
        self.committed: int | None = None

    def position(self) -> int | None:
        taken = self.taken
        in_flight = self.in_flight
        while taken and taken[0] not in in_flight:
            taken.popleft()
        if taken:
            return taken[0]
        return self.end


class OffsetTracker:
    """In-flight offsets per partition, and the contiguous position that is safe to commit.

    Usage, in a consumer loop::

        record = await consumer.next()
        ticket = tracker.track(record)
        ...  # later, in whichever task finishes the work
        tracker.done(*ticket)
        ...  # periodically
        offsets = tracker.committable()
        await consumer.commit(offsets)
        tracker.mark_committed(offsets)

    Not thread-safe; every call is synchronous and meant for the trio thread.
    """

    def __init__(self) -> None:
        self._parts: dict[TopicPartition, _PartitionState] = {}
        self._generations = itertools.count(1)

    def _state(self, tp: TopicPartition) -> _PartitionState:
        state = self._parts.get(tp)
        if state is None:
            state = self._parts[tp] = _PartitionState(next(self._generations))
        return state

    def track(self, rec_or_tp: Record | TopicPartition, offset: int | None = None) -> Ticket:
        """Note that a record was taken. Offsets of one partition must increase (gaps allowed).

        Either ``track(record)`` or ``track(tp, offset)``.
        """
        if isinstance(rec_or_tp, Record):
            tp, offset = rec_or_tp.tp, rec_or_tp.offset
        else:
            tp = rec_or_tp
            if offset is None:
                raise TypeError("track(tp, offset): offset is required with a TopicPartition")
        state = self._state(tp)
        if state.end is not None and offset < state.end:
            raise ValueError(
                f"{tp}: offset {offset} taken after {state.end - 1}; offsets must increase"
            )
        taken = state.taken
        taken.append(offset)
        state.in_flight[offset] = state.generation
        state.end = offset + 1
        if len(taken) > 2 * len(state.in_flight) + COMPACT_SLACK:
            # One record stuck in flight (a long download) while the ones after it finish:
            # those wait in ``taken`` behind it, one per record consumed since. Only the
            # in-flight ones decide the position, so drop the rest (amortised O(1)).
            state.taken = deque(o for o in taken if o in state.in_flight)
        return Ticket(tp, offset, state.generation)

    def done(self, tp: TopicPartition, offset: int, generation: int | None = None) -> bool:
        """Note that the work for ``offset`` finished. Returns whether it counted.

        It does not count (and is ignored) when the partition was forgotten or reset since the
        offset was taken (``generation`` no longer matches), when the offset is not in flight,
        or when it was already done. ``generation=None`` accepts any generation: only safe
        for callers that never forget or reset.
        """
        state = self._parts.get(tp)
        if state is None:
            return False
        taken_in = state.in_flight.get(offset)
        if taken_in is None or (generation is not None and generation != taken_in):
            return False
        del state.in_flight[offset]
        return True

    def position(self, tp: TopicPartition) -> int | None:
        """The next offset to read for ``tp`` as far as finished work goes (None: unknown)."""
        state = self._parts.get(tp)
        return None if state is None else state.position()

    def committable(self) -> dict[TopicPartition, int]:
        """Next offset to read, per partition whose position moved since it was last committed."""
        out: dict[TopicPartition, int] = {}
        for tp, state in self._parts.items():
            pos = state.position()
            if pos is not None and pos != state.committed:
                out[tp] = pos
        return out

    def mark_committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Remember what was committed, so :meth:`committable` reports only new progress."""
        for tp, pos in offsets.items():
            state = self._parts.get(tp)
            if state is not None:
                state.committed = pos

    def forget(self, tp: TopicPartition) -> None:
        """Drop ``tp`` (revoked). Late :meth:`done` calls for its work are ignored."""
        self._parts.pop(tp, None)

    def reset(self, tp: TopicPartition, offset: int) -> None:
        """The consumer was seeked: the next record of ``tp`` taken will be at ``offset``.

        The usual case is seeking back to a record that was just read and not tracked (to
        read it again later), so every in-flight offset is below ``offset`` and simply stays.
        Offsets at or above ``offset`` are dropped: they will be read and tracked again, and a
        late :meth:`done` from their old work is ignored (a new generation starts). When
        nothing is in flight the position becomes ``offset``.
        """
        state = self._state(tp)
        taken = state.taken
        dropped = False
        while taken and taken[-1] >= offset:
            state.in_flight.pop(taken.pop(), None)
            dropped = True
        if dropped:
            state.generation = next(self._generations)
        state.end = offset

    def in_flight(self, tp: TopicPartition | None = None) -> int:
        """How many taken records are not done yet, for ``tp`` or in total."""
        if tp is not None:
            state = self._parts.get(tp)
            return 0 if state is None else len(state.in_flight)
        return sum(len(state.in_flight) for state in self._parts.values())

    def partitions(self) -> frozenset[TopicPartition]:
        """The partitions this tracker holds state for."""
        return frozenset(self._parts)
