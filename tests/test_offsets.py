"""OffsetTracker: the commit position never passes unfinished work."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lakeferry.bus.base import Record, TopicPartition
from lakeferry.bus.offsets import OffsetTracker, Ticket

TP = TopicPartition("t", 0)
TP1 = TopicPartition("t", 1)


def record(offset: int, tp: TopicPartition = TP) -> Record:
    return Record(tp.topic, tp.partition, offset, None, b"", {}, 0)


def test_contiguous_position() -> None:
    tracker = OffsetTracker()
    tickets = [tracker.track(record(o)) for o in range(5)]
    assert tracker.committable() == {TP: 0}
    assert tracker.done(*tickets[1])
    assert tracker.done(*tickets[2])
    assert tracker.committable() == {TP: 0}
    assert tracker.done(*tickets[0])
    assert tracker.committable() == {TP: 3}
    assert tracker.in_flight(TP) == 2
    tracker.done(*tickets[4])
    tracker.done(*tickets[3])
    assert tracker.committable() == {TP: 5}
    assert tracker.in_flight() == 0


def test_gaps_and_track_with_tp() -> None:
    tracker = OffsetTracker()
    a = tracker.track(TP, 5)
    b = tracker.track(TP, 9)
    assert a == Ticket(TP, 5, a.generation)
    assert tracker.position(TP) == 5
    tracker.done(*a)
    assert tracker.committable() == {TP: 9}
    tracker.done(*b)
    assert tracker.committable() == {TP: 10}
    with pytest.raises(ValueError, match="must increase"):
        tracker.track(TP, 9)
    with pytest.raises(TypeError):
        tracker.track(TP)


def test_mark_committed_reports_only_progress() -> None:
    tracker = OffsetTracker()
    t0 = tracker.track(record(0))
    t1 = tracker.track(record(0, TP1))
    tracker.done(*t0)
    assert tracker.committable() == {TP: 1, TP1: 0}
    tracker.mark_committed({TP: 1, TP1: 0})
    assert tracker.committable() == {}
    tracker.done(*t1)
    assert tracker.committable() == {TP1: 1}


def test_done_twice_or_unknown_is_ignored() -> None:
    tracker = OffsetTracker()
    t = tracker.track(record(3))
    assert tracker.done(*t)
    assert not tracker.done(*t)
    assert not tracker.done(TP, 4)
    assert not tracker.done(TP1, 0)
    assert tracker.committable() == {TP: 4}


def test_forget_then_reassign_ignores_old_work() -> None:
    tracker = OffsetTracker()
    old = tracker.track(record(7))
    tracker.forget(TP)
    assert tracker.committable() == {}
    assert tracker.in_flight() == 0
    assert not tracker.done(*old)
    # The partition comes back and offset 7 is redelivered: the old work must not count.
    new = tracker.track(record(7))
    assert not tracker.done(*old)
    assert tracker.committable() == {TP: 7}
    assert tracker.done(*new)
    assert tracker.committable() == {TP: 8}


def test_reset_after_seek_back_to_untracked_record() -> None:
    tracker = OffsetTracker()
    t = tracker.track(record(0))
    # Offset 1 was read, found not due, and the consumer seeked back to it.
    tracker.reset(TP, 1)
    assert tracker.committable() == {TP: 0}
    assert tracker.done(*t)  # work taken before the seek still counts
    assert tracker.committable() == {TP: 1}
    tracker.track(record(1))
    assert tracker.committable() == {TP: 1}


def test_reset_drops_work_at_or_after_the_seek() -> None:
    tracker = OffsetTracker()
    t0 = tracker.track(record(0))
    t1 = tracker.track(record(1))
    t2 = tracker.track(record(2))
    tracker.reset(TP, 1)
    assert tracker.in_flight(TP) == 1
    again = tracker.track(record(1))
    assert not tracker.done(*t1)  # old work for a dropped offset
    assert not tracker.done(*t2)
    assert tracker.done(*t0)
    assert tracker.committable() == {TP: 1}
    assert tracker.done(*again)
    assert tracker.committable() == {TP: 2}


def test_reset_of_unknown_partition_sets_position() -> None:
    tracker = OffsetTracker()
    tracker.reset(TP, 42)
    assert tracker.committable() == {TP: 42}
    assert tracker.partitions() == frozenset({TP})


@given(
    data=st.data(),
    offsets=st.lists(st.integers(0, 5), min_size=1, max_size=60).map(
        # increasing offsets with gaps: cumulative sums of (gap + 1)
        lambda gaps: [sum(gaps[: i + 1]) + i for i in range(len(gaps))]
    ),
)
def test_position_never_passes_unfinished_work(data: st.DataObject, offsets: list[int]) -> None:
    tracker = OffsetTracker()
    tickets = [tracker.track(TP, o) for o in offsets]
    order = data.draw(st.permutations(range(len(tickets))))
    unfinished = set(offsets)
    committed: int | None = None
    for index in order:
        assert tracker.done(*tickets[index])
        unfinished.discard(offsets[index])
        position = tracker.committable().get(TP, committed)
        assert position is not None
        if unfinished:
            assert position <= min(unfinished)
            # ...and it is as far as it can be: the lowest unfinished offset
            assert position == min(unfinished)
        if committed is not None:
            assert position >= committed
        if data.draw(st.booleans()):
            tracker.mark_committed({TP: position})
            committed = position
    assert tracker.committable().get(TP, committed) == offsets[-1] + 1
    assert tracker.in_flight() == 0


def test_memory_follows_what_is_in_flight_not_what_finished_behind_a_stuck_record() -> None:
    """One record stays in flight (an hour-long download) while 100,000 after it are taken
    and finish: the position stays at the stuck one, and the tracker keeps a few offsets, not
    one per record consumed since."""
    tracker = OffsetTracker()
    stuck = tracker.track(record(0))
    for o in range(1, 100_001):
        tracker.done(*tracker.track(record(o)))
    assert tracker.committable() == {TP: 0}
    assert len(tracker._parts[TP].taken) < 200
    assert tracker.done(*stuck)
    assert tracker.committable() == {TP: 100_001}
