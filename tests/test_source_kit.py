"""The source conformance kit fails the sources it must fail.

``QueueSource`` reads an in-memory queue whose messages stay until acknowledged. Written right,
it passes every check of :class:`lakeferry.testing.SourceConformance` (``TestQueueSource``);
with one flaw each — acknowledging before publishing, validating, altering bytes, sharing
origins, reporting started too early, swallowing a failed publish, ignoring a cancellation —
the check meant for that flaw fails, for that reason.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import trio
import trio.testing

from lakeferry.api import Intake, RawEvent, Source
from lakeferry.testing import IntakeUnavailable, RecordingIntake, SourceConformance


class Queue:
    """Messages (number, bytes) kept until acknowledged, like a broker's queue."""

    def __init__(self) -> None:
        self.messages: dict[int, bytes] = {}
        self._numbers = itertools.count()

    def put(self, events: Sequence[bytes]) -> None:
        for event in events:
            self.messages[next(self._numbers)] = event

    def take(self, most: int, skip: set[int]) -> list[tuple[int, bytes]]:
        return [(n, d) for n, d in sorted(self.messages.items()) if n not in skip][:most]

    def acknowledge(self, numbers: Sequence[int]) -> None:
        for number in numbers:
            self.messages.pop(number, None)


FLAWS = (
    "acknowledges_first",
    "validates",
    "strips",
    "one_origin",
    "publishes_twice",
    "started_before_receiving",
    "never_started",
    "swallows_publish_errors",
    "slow_to_cancel",
)


class QueueSource:
    """A source on a :class:`Queue`: receive, publish, acknowledge; or with one ``flaw``."""

    def __init__(self, queue: Queue, flaw: str | None = None) -> None:
        assert flaw is None or flaw in FLAWS, flaw
        self.name = "queue:test"
        self.queue = queue
        self.flaw = flaw

    async def run(
        self, intake: Intake, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        flaw = self.flaw
        if flaw == "never_started":
            return
        # Known at the start only: what arrives later is never seen by this flaw.
        snapshot = set(self.queue.messages) if flaw == "started_before_receiving" else None
        task_status.started()
        published: set[int] = set()
        try:
            while True:
                batch = self.queue.take(3, skip=published)
                if snapshot is not None:
                    batch = [(n, d) for n, d in batch if n in snapshot]
                if not batch:
                    await trio.sleep(0.005)
                    continue
                numbers = [n for n, _ in batch]
                if flaw == "acknowledges_first":
                    self.queue.acknowledge(numbers)
                events = [RawEvent(d, f"queue:{n}") for n, d in batch]
                if flaw == "validates":
                    events = [e for e in events if _is_json(e.data)]
                elif flaw == "strips":
                    events = [RawEvent(e.data.strip(), e.origin) for e in events]
                elif flaw == "one_origin":
                    events = [RawEvent(e.data, "queue") for e in events]
                try:
                    await intake.publish(events)
                    if flaw == "publishes_twice":
                        await intake.publish(events)
                except IntakeUnavailable:
                    if flaw != "swallows_publish_errors":
                        raise
                published.update(numbers)
                self.queue.acknowledge(numbers)
        finally:
            if flaw == "slow_to_cancel":
                with trio.CancelScope(shield=True):
                    await trio.sleep(1)


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


class TestQueueSource(SourceConformance):
    """The flawless one passes the whole kit."""

    delivery_timeout = 5.0
    cancel_timeout = 0.5

    @pytest.fixture
    def queue(self) -> Queue:
        return Queue()

    @pytest.fixture
    def make_source(self, queue: Queue) -> Callable[[], Source]:
        return lambda: QueueSource(queue)

    @pytest.fixture
    def feed(self, queue: Queue) -> Callable[[Sequence[bytes]], None]:
        return queue.put


class Kit(SourceConformance):
    """The kit with short timeouts, its checks called directly."""

    start_timeout = 2.0
    delivery_timeout = 1.0
    cancel_timeout = 0.5


WHICH_CHECK_FAILS = [
    ("acknowledges_first", "test_a_failing_publish_fails_the_run_and_loses_nothing",
     "never reached intake.publish"),
    ("acknowledges_first", "test_a_cancellation_during_publish_ends_promptly_and_loses_nothing",
     "never reached intake.publish"),
    ("validates", "test_passes_malformed_bytes_through_unvalidated", "4 events fed were not"),
    ("strips", "test_passes_malformed_bytes_through_unvalidated", "1 published were never fed"),
    ("one_origin", "test_reports_started_and_delivers_every_event_intact", "share an origin"),
    ("publishes_twice", "test_reports_started_and_delivers_every_event_intact",
     "published twice"),
    ("started_before_receiving", "test_reports_started_and_delivers_every_event_intact",
     "5 events fed were not published"),
    ("never_started", "test_reports_started_and_delivers_every_event_intact",
     "without calling task_status.started()"),
    ("swallows_publish_errors", "test_a_failing_publish_fails_the_run_and_loses_nothing",
     "neither failed nor published those events again"),
    ("slow_to_cancel", "test_a_cancellation_while_waiting_for_input_ends_promptly",
     "to end after its cancellation"),
    ("slow_to_cancel", "test_a_cancellation_during_publish_ends_promptly_and_loses_nothing",
     "to end after its cancellation"),
]  # fmt: skip


def _messages(error: BaseException) -> str:
    if isinstance(error, BaseExceptionGroup):
        return " | ".join(_messages(e) for e in error.exceptions)
    return str(error)


@pytest.mark.parametrize(("flaw", "check", "because"), WHICH_CHECK_FAILS)
async def test_a_flawed_source_fails_its_check(flaw: str, check: str, because: str) -> None:
    queue = Queue()
    run_check: Callable[..., Any] = getattr(Kit(), check)
    with pytest.raises((AssertionError, RuntimeError, ExceptionGroup)) as info:
        await run_check(make_source=lambda: QueueSource(queue, flaw), feed=queue.put)
    assert because in _messages(info.value)


async def test_every_flaw_is_caught() -> None:
    await trio.lowlevel.checkpoint()
    assert {flaw for flaw, _, _ in WHICH_CHECK_FAILS} == set(FLAWS)


async def test_the_recording_intake_fails_holds_and_records() -> None:
    intake = RecordingIntake()
    event = RawEvent(b"x", "o:1")
    intake.fail_next(2)
    for _ in range(2):
        with pytest.raises(IntakeUnavailable):
            await intake.publish([event])
    assert (intake.calls, intake.batches) == (2, [])
    intake.hold_next()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(intake.publish, [event])
        await trio.testing.wait_all_tasks_blocked()
        assert intake.holding
        assert intake.batches == []
        intake.release()
    assert not intake.holding
    assert intake.batches == [[event]]
    assert intake.received() == {b"x"}
    intake.hold_next()
    with trio.move_on_after(0.01):  # cancelled while held: nothing recorded
        await intake.publish([RawEvent(b"y", "o:2")])
    assert (intake.calls, intake.events) == (4, [event])
