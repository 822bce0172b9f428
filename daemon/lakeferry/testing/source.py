"""``SourceConformance``: what the daemon relies on from every :class:`lakeferry.api.Source`.

Subclass it and provide two fixtures:

- ``make_source`` → ``Callable[[], Source]``: a new source on the test's input each time it is
  called (the next call is the same source after a restart: the daemon builds a new one from
  the same settings). It starts from the oldest input not yet acknowledged (Kafka
  ``start_from = "earliest"``, an Event Hub ``starting_position = "earliest"``);
- ``feed`` → ``Callable[[Sequence[bytes]], None]``: puts raw events into that input (writes a
  file into the watched folder, produces to the topic, sends to the event hub). It may block:
  the tests call it in a worker thread. Every test gets a fresh input from these fixtures.

The checks, each against a :class:`RecordingIntake` (no daemon needed): ``run`` reports
``task_status.started()``; every event fed, before the start and while running, reaches
``intake.publish`` once, its bytes intact, with a non-empty origin no other event has;
malformed bytes (not JSON, not an event, not UTF-8) are passed through unvalidated, since
validating is the intake's job; when ``publish`` raises, ``run`` fails with that error (or
publishes the same events again itself), and the next run delivers every event that was not
published: nothing is acknowledged before ``publish`` returned; a cancellation while a
``publish`` is in flight ends ``run`` within ``cancel_timeout`` seconds, and the next run
delivers that batch again; a cancellation while the source waits for input ends it within
``cancel_timeout`` too.

The events are single lines (no ``\\n`` or ``\\r``, never blank), so line-based sources carry
them as they are. A source whose input cannot carry some of :attr:`SourceConformance.malformed`
(a text-only protocol) may narrow that tuple in its subclass, saying why.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Sequence

import pytest
import trio

from lakeferry.api import RawEvent, Source

Feed = Callable[[Sequence[bytes]], None]
"""The ``feed`` fixture's type: puts raw events into the source's input (may block)."""


class IntakeUnavailable(Exception):
    """What a :class:`RecordingIntake` told to fail raises from ``publish``: the bus is down."""


class RecordingIntake:
    """A :class:`lakeferry.api.Intake` that records what a source publishes; no daemon behind it.

    ``batches`` holds a copy of every batch whose ``publish`` returned, ``events`` their events
    in order, and ``calls`` counts every call (failed and held ones too). ``fail_next(n)`` makes
    the next ``n`` calls raise :class:`IntakeUnavailable` (the bus is down) before recording
    anything; ``hold_next()`` makes the next call wait, unrecorded, until :meth:`release` (a
    publish in flight: cancel the source meanwhile and the call records nothing), with
    ``holding`` true while it waits. :meth:`wait_until` waits, with a time limit, for what it
    has received to meet a condition.
    """

    def __init__(self) -> None:
        self.batches: list[list[RawEvent]] = []
        self.calls = 0
        self.holding = False
        self._fail = 0
        self._hold = False
        self._released = trio.Event()
        self._changed = trio.Event()

    def fail_next(self, count: int = 1) -> None:
        """The next ``count`` calls raise :class:`IntakeUnavailable`."""
        self._fail = count

    def hold_next(self) -> None:
        """The next call waits until :meth:`release` before it records and returns."""
        self._hold = True
        self._released = trio.Event()

    def release(self) -> None:
        self._released.set()

    async def publish(self, events: Sequence[RawEvent]) -> None:
        self.calls += 1
        batch = list(events)  # what the source handed over now, whatever it does with it later
        if self._fail:
            self._fail -= 1
            await trio.lowlevel.checkpoint()
            raise IntakeUnavailable(f"publish call {self.calls} failed: the bus is down (test)")
        if self._hold:
            self._hold = False
            self.holding = True
            self._notify()
            try:
                await self._released.wait()
            finally:
                self.holding = False
        else:
            await trio.lowlevel.checkpoint()
        self.batches.append(batch)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, condition: Callable[[], bool], *, limit: float) -> bool:
        """Wait until ``condition()`` holds (True), re-checked at every batch recorded and every
        call held, or until ``limit`` seconds passed (False)."""
        with trio.move_on_after(limit):
            while not condition():
                await self._changed.wait()
            return True
        return False

    @property
    def events(self) -> list[RawEvent]:
        return [event for batch in self.batches for event in batch]

    def received(self) -> set[bytes]:
        """The bytes of every event published so far."""
        return {event.data for event in self.events}


def contains(error: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``error``, one of the errors it groups, or one it was raised from is a ``kind``."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        found = todo.pop()
        if id(found) in seen:
            continue
        seen.add(id(found))
        if isinstance(found, kind):
            return True
        if isinstance(found, BaseExceptionGroup):
            todo.extend(found.exceptions)
        todo.extend(e for e in (found.__cause__, found.__context__) if e is not None)
    return False


def _shown(data: set[bytes] | list[bytes], most: int = 3) -> str:
    shown = ", ".join(repr(d[:60]) for d in sorted(data)[:most])
    return shown + (" ..." if len(data) > most else "")


class SourceConformance:
    """The source contract; subclass with ``make_source`` and ``feed`` fixtures."""

    pytestmark = pytest.mark.trio
    start_timeout: float = 30.0
    """Seconds ``run`` may take to report ``started()``."""
    delivery_timeout: float = 60.0
    """Seconds the fed events may take to reach the intake."""
    cancel_timeout: float = 10.0
    """Seconds a cancelled ``run`` may take to end (closing clients, leaving a group)."""
    batch: int = 5
    """Events per ``feed`` call."""
    event_size: int = 32 * 1024
    """Bytes of the one larger event among those fed (the others are about 120 bytes)."""
    malformed: tuple[bytes, ...] = (
        b'{"id": "conformance-cut", "url": "https://origin.exa',
        b"not json at all",
        b'{"id": 42, "url": ["not", "an", "event"]}',
        b'["a", "json", "array"]',
        b"\xff\xfe\xfd not UTF-8 \x80\x81",
        b"  blanks around, a\ttab inside  ",
    )
    """Raw events the intake would dead-letter: the source passes them on as they are."""

    # -- helpers -------------------------------------------------------------------------------

    def _events(self, tag: str, count: int | None = None) -> list[bytes]:
        """``count`` valid events no other test uses; the first one ``event_size`` bytes."""
        token = f"{uuid.uuid4().hex[:12]}-{tag}"
        out = []
        for i in range(self.batch if count is None else count):
            text = (
                f'{{"id": "conformance-{token}-{i}", "url": "https://origin.example/{token}/{i}"}}'
            )
            if i == 0:  # padded in its metadata up to event_size
                pad = "x" * max(self.event_size - len(text) - 25, 0)
                text = text[:-1] + f', "metadata": {{"pad": "{pad}"}}}}'
            out.append(text.encode())
        return out

    async def _feed(self, feed: Feed, events: Sequence[bytes]) -> None:
        with trio.fail_after(self.delivery_timeout):
            await trio.to_thread.run_sync(feed, list(events))

    async def _fed(self, feed: Feed, tag: str) -> list[bytes]:
        """New events (:meth:`_events`), fed before the source starts; they wait in its input."""
        events = self._events(tag)
        await self._feed(feed, events)
        return events

    async def _run_until(
        self,
        source: Source,
        intake: RecordingIntake,
        condition: Callable[[], bool],
        *,
        once_started: Sequence[bytes] = (),
        feed: Feed | None = None,
    ) -> tuple[bool, float]:
        """Run ``source`` until ``condition()`` holds (at most ``delivery_timeout``), feeding
        ``once_started`` after ``started()``, then cancel it. Whether the condition held, and
        the seconds ``run`` took to end once cancelled. What ``run`` raises propagates."""
        async with trio.open_nursery() as nursery:
            with trio.fail_after(self.start_timeout):
                await nursery.start(source.run, intake)
            if feed is not None:
                await self._feed(feed, once_started)  # the source really receives by now
            held = await intake.wait_until(condition, limit=self.delivery_timeout)
            cancelled_at = trio.current_time()
            nursery.cancel_scope.cancel(reason="conformance: the test has seen what it waited for")
        return held, trio.current_time() - cancelled_at

    async def _deliver(self, source: Source, intake: RecordingIntake, wanted: set[bytes]) -> None:
        """Run ``source`` until ``wanted`` reached ``intake``, then cancel it."""
        arrived, _ = await self._run_until(source, intake, lambda: wanted <= intake.received())
        missing = wanted - intake.received()
        assert arrived, (
            f"{len(missing)} of {len(wanted)} events fed never reached intake.publish "
            f"within {self.delivery_timeout:g}s: {_shown(missing)}"
        )

    @staticmethod
    def _check_intact(events: Sequence[RawEvent], fed: Sequence[bytes]) -> None:
        """Each event fed published once, byte for byte, with an origin of its own."""
        for event in events:
            assert isinstance(event.data, bytes), f"data is {type(event.data).__name__}, not bytes"
            assert isinstance(event.origin, str), f"origin is {type(event.origin).__name__}"
            assert event.origin.strip(), f"an empty origin for {event.data[:60]!r}"
        published = Counter(event.data for event in events)
        missing = set(fed) - set(published)
        unexpected = set(published) - set(fed)
        problem = (
            f"{len(missing)} events fed were not published: {_shown(missing)}; "
            f"{len(unexpected)} published were never fed (altered?): {_shown(unexpected)}"
        )
        assert not missing, problem
        assert not unexpected, problem
        twice = [data for data, n in published.items() if n > 1]
        assert not twice, f"published twice in one uninterrupted run: {_shown(twice)}"
        origins = Counter(event.origin for event in events)
        shared = [origin for origin, n in origins.items() if n > 1]
        assert not shared, f"several events share an origin: {shared[:3]}"

    # -- the checks ----------------------------------------------------------------------------

    async def test_has_a_name(self, make_source: Callable[[], Source]) -> None:
        await trio.lowlevel.checkpoint()
        source = make_source()
        assert isinstance(source.name, str)
        assert source.name.strip(), "a source's name appears in logs: it must not be empty"

    async def test_reports_started_and_delivers_every_event_intact(
        self, make_source: Callable[[], Source], feed: Feed
    ) -> None:
        before, after = await self._fed(feed, "before"), self._events("after")
        intake = RecordingIntake()
        fed = set(before + after)
        await self._run_until(
            make_source(), intake, lambda: fed <= intake.received(), once_started=after, feed=feed
        )
        self._check_intact(intake.events, before + after)

    async def test_passes_malformed_bytes_through_unvalidated(
        self, make_source: Callable[[], Source], feed: Feed
    ) -> None:
        fed = [*self._events("valid", 1), *self.malformed]
        intake = RecordingIntake()
        await self._run_until(
            make_source(),
            intake,
            lambda: set(fed) <= intake.received(),
            once_started=fed,
            feed=feed,
        )
        self._check_intact(intake.events, fed)

    async def test_a_failing_publish_fails_the_run_and_loses_nothing(
        self, make_source: Callable[[], Source], feed: Feed
    ) -> None:
        fed = await self._fed(feed, "unpublished")
        intake = RecordingIntake()
        intake.fail_next()
        failure: Exception | None = None
        retried = False
        try:
            # Only a source that publishes again by itself sees the condition hold: others fail.
            retried, _ = await self._run_until(
                make_source(), intake, lambda: set(fed) <= intake.received()
            )
        except Exception as exc:
            failure = exc
        assert intake.calls >= 1, "publish was never called"
        if failure is None:
            assert retried, (
                "publish failed, yet run neither failed nor published those events again "
                f"within {self.delivery_timeout:g}s"
            )
            return
        assert contains(failure, IntakeUnavailable), f"run failed, not from publish: {failure!r}"
        # The daemon restarts a failed source: the new run must deliver what was not published.
        await self._deliver(make_source(), RecordingIntake(), set(fed) - intake.received())

    async def test_a_cancellation_during_publish_ends_promptly_and_loses_nothing(
        self, make_source: Callable[[], Source], feed: Feed
    ) -> None:
        fed = await self._fed(feed, "in-flight")
        first = RecordingIntake()
        first.hold_next()  # the first publish never returns: it is in flight when cancelled
        in_flight, took = await self._run_until(make_source(), first, lambda: first.holding)
        assert in_flight, f"publish was not called within {self.delivery_timeout:g}s"
        assert took <= self.cancel_timeout, f"run took {took:.1f}s to end after its cancellation"
        # What the cancelled publish carried was not acknowledged: the next run delivers it.
        await self._deliver(make_source(), RecordingIntake(), set(fed) - first.received())

    async def test_a_cancellation_while_waiting_for_input_ends_promptly(
        self, make_source: Callable[[], Source], feed: Feed
    ) -> None:
        fed = self._events("idle")
        intake = RecordingIntake()
        arrived, took = await self._run_until(
            make_source(),
            intake,
            lambda: set(fed) <= intake.received(),
            once_started=fed,
            feed=feed,
        )
        assert arrived, f"the events fed did not arrive within {self.delivery_timeout:g}s"
        assert took <= self.cancel_timeout, f"run took {took:.1f}s to end after its cancellation"
