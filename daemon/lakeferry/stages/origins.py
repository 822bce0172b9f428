"""Per-origin concurrency for the download stage: adaptive limits, host backoff, a host circuit.

One slow or failing origin must not take every download slot, and one that throttles must be
slowed as a whole rather than URL by URL. Each origin (``host:port`` of the URL) gets:

- **A limit that adapts (AIMD).** A new origin starts at ``initial`` concurrent downloads and
  grows by one per success while it uses its whole limit (doubling each round trip, as TCP's
  slow start), then, after its first setback, by one per round of successes (``1/limit`` per
  success). A setback — a 429 (``throttled``), a 5xx with a ``Retry-After`` above zero, a
  timeout, a refused or reset connection — halves it, at most once per round: downloads
  started before the last halving do not halve it again. It never exceeds ``ceiling``
  (``download.concurrency``: a lone healthy origin still gets every slot) nor a pinned maximum
  from ``download.host_limits``.
- **A pause on Retry-After.** A setback carrying ``retry_after`` holds the origin's new
  downloads until then (at most :data:`MAX_PAUSE`); longer than that opens the circuit.
- **A circuit.** ``circuit_failures`` setbacks in a row (downloads that ran together, as one
  round, count once: sixteen 429s of one burst halve the limit, they do not open the circuit),
  with no success between, open it for ``circuit_cooldown``
  (doubling on each reopening, up to :data:`MAX_COOLDOWN`). While it is open the origin's tasks
  are *parked*: :meth:`Origins.acquire` raises :class:`Parked` and the stage puts the task back
  on the first retry rung without spending an attempt. After the cooldown one probe goes
  through (half-open): a success closes the circuit (the limit starts again from one), a
  setback reopens it.
- **A fair share of the waiting room.** A task waiting for its origin holds no download slot
  (other origins keep flowing), but it holds one of the stage's ``download.queue`` places.
  So that a stalled or slow origin cannot fill them all, a task whose origin already has its
  share of waiters (the room divided by the origins at work, at most half of it) *and* would
  wait more than :data:`PARK_AFTER` seconds there (its waiters times the time between its
  download ends, or since the last one) is parked too. A fast origin drains its waiters in
  moments and is never parked for being busy; a lone slow one keeps half the room, so the next
  origin to come finds a place.

- **An origin failing everything.** A bare 5xx (no ``Retry-After``) is one URL's trouble and
  slows nobody, but :data:`FAILING_AFTER` of them in a row, with no other answer between, say
  the origin fails every request: the circuit opens the same way, except that its tasks are not
  parked but fail at once, without a request (:class:`NotTried`, a transient
  ``http_server_error``: an attempt spent, so URLs that only ever fail still reach the
  dead-letter topic, and a failing origin costs neither it nor this process a request per task).
  The probe after the cooldown is a real request, as above.

What does not count: 404s, checksum and size mismatches, cache faults, anything permanent
other than a refused connection. The origin answered; its limit stays, its run of setbacks ends.

State is per download process (each Kafka download worker, each VM, learns on its own) and
bounded: once :data:`MAX_TRACKED` are known, the longest idle (nothing in flight or waiting,
an open circuit included: a host not asked for since is tried afresh) are forgotten. Nothing
here does I/O; the clock is injectable (tests drive it).
"""

from __future__ import annotations

import enum
import fnmatch
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import trio

from lakeferry.config import DownloadConfig
from lakeferry.errors import PipelineError, Reason, TransientError
from lakeferry.logs import get_logger
from lakeferry.metrics import NO_ORIGIN, OriginStats
from lakeferry.stages.driver import NotStarted
from lakeferry.stages.pacing import Pacer

log = get_logger("download")

MAX_PAUSE = 300.0
"""Seconds a Retry-After may hold an origin's downloads in place; longer opens the circuit."""
MAX_COOLDOWN = 600.0
"""The longest a circuit stays open before its next probe."""
PARK_AFTER = 120.0
"""Seconds a task may expect to wait for its origin before it is parked (beyond its share)."""
STALLED_AFTER = 10.0
"""Seconds without a download end, while busy, after which an origin whose downloads have ended
before counts as stalled."""
RECHECK = 1.0
"""Seconds between the checks of a task waiting beyond its origin's share of the room."""
PROBE_EVERY = 10.0
"""Seconds an origin stays just below the concurrency it was last throttled at before one
more download at once is tried."""
FAILING_AFTER = 20
"""Bare server errors (5xx without Retry-After) in a row, with no other answer between, that
open an origin's circuit with its tasks failing rather than parked."""
MAX_TRACKED = 10_000
"""Origins remembered; beyond it the longest-idle ones (no download in flight or waiting) go."""

SETBACKS = frozenset({Reason.THROTTLED, Reason.TIMEOUT, Reason.CONNECTION})
"""Failure reasons that say the origin is overloaded or unreachable. A server error counts too
when it asks for a pause (``Retry-After`` above zero: a 503 saying "overloaded, come back
later"); a bare 5xx may be one URL's trouble (a broken object, a failing backend of one path)
and slows nobody else."""


class Outcome(enum.Enum):
    OK = "ok"
    """The download succeeded."""
    SETBACK = "setback"
    """Throttled, timeout, connection failure, a 5xx with Retry-After (:data:`SETBACKS`)."""
    NEUTRAL = "neutral"
    """The origin answered, but the task failed for its own reasons (404, checksum ...)."""
    FAULT = "fault"
    """A bare server error (5xx without Retry-After): the URL's trouble, unless the origin
    answers every request so (:data:`FAILING_AFTER`)."""
    CANCELLED = "cancelled"
    """The download was cancelled (drain): says nothing about the origin."""


def outcome_of(error: BaseException | None, *, answered: bool = False) -> Outcome:
    """What a download's end says about its origin. ``answered``: the origin had announced a
    size or sent body bytes in this attempt, so a broken connection or a timeout after that is
    the URL's trouble (a truncated file, a slow object), not a sign the origin is down."""
    if error is None:
        return Outcome.OK
    if isinstance(error, PipelineError):
        if error.reason == Reason.THROTTLED:
            return Outcome.SETBACK
        if error.reason in SETBACKS:
            return Outcome.NEUTRAL if answered else Outcome.SETBACK
        asks_for_pause = error.retry_after is not None and error.retry_after > 0
        if error.reason == Reason.HTTP_SERVER_ERROR:
            return Outcome.SETBACK if asks_for_pause else Outcome.FAULT
        return Outcome.NEUTRAL
    if isinstance(error, trio.Cancelled | NotStarted):
        return Outcome.CANCELLED
    return Outcome.NEUTRAL


class Parked(Exception):
    """The task should go back on the ladder without spending an attempt."""

    def __init__(self, origin: str, reason: str, detail: str) -> None:
        super().__init__(f"{origin}: {detail}")
        self.origin = origin
        self.reason = reason


class NotTried(TransientError):
    """The task's origin answered its last requests with server errors only: the attempt
    fails without a request (its circuit is open; see the module's text)."""

    def __init__(self, origin: str, detail: str) -> None:
        super().__init__(Reason.HTTP_SERVER_ERROR, f"not tried: origin {origin} {detail}")
        self.origin = origin


PARK_OPEN = "host_circuit_open"
PARK_BUSY = "host_busy"


@dataclass(frozen=True)
class OriginPolicy:
    """The settings (``[download]``), resolved; replaced whole on a reload."""

    ceiling: int = 50
    """``download.concurrency``: no origin ever gets more."""
    room: int = 500
    """``download.queue``: tasks the stage holds, waiting or downloading."""
    initial: int = 8
    circuit_failures: int = 5
    circuit_cooldown: float = 30.0
    pinned: Mapping[str, int] = field(default_factory=dict)
    """Pattern (fnmatch, on ``host:port`` or ``host``) -> that origin's maximum."""
    max_rate: int = 0
    """Bytes per second over every download (0: no cap)."""
    rates: Mapping[str, int] = field(default_factory=dict)
    """Pattern -> that origin's bytes per second."""

    def maximum(self, origin: str) -> int:
        limit = _match(self.pinned, origin)
        return self.ceiling if limit is None else max(1, min(limit, self.ceiling))

    def rate(self, origin: str) -> int:
        """The origin's bandwidth cap in bytes per second (0: none)."""
        return _match(self.rates, origin) or 0


def _match(patterns: Mapping[str, int], origin: str) -> int | None:
    """The value of the first pattern that matches ``host:port`` or ``host``."""
    host = origin.rsplit(":", 1)[0]
    for pattern, value in patterns.items():
        if fnmatch.fnmatchcase(origin, pattern) or fnmatch.fnmatchcase(host, pattern):
            return value
    return None


def origin_policy(download: DownloadConfig) -> OriginPolicy:
    """The policy ``[download]`` asks for."""
    return OriginPolicy(
        ceiling=download.concurrency,
        room=download.room,
        initial=download.host_initial,
        circuit_failures=download.host_circuit_failures,
        circuit_cooldown=float(download.host_circuit_cooldown),
        pinned=dict(download.host_limits),
        max_rate=int(download.max_rate),
        rates={pattern: int(rate) for pattern, rate in download.host_rates.items()},
    )


class Circuit(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class Origin:
    """What the stage knows of one origin."""

    name: str
    limit: float
    maximum: int
    slow_start: bool = True
    active: int = 0
    waiting: int = 0
    saturations: int = 0
    """Times a download start brought the origin to its limit."""
    epoch: int = 0
    """Bumped by each halving: a setback of a download started before it does not halve."""
    setbacks_in_row: int = 0
    """Rounds in a row that ended in a setback (downloads that ran together count once)."""
    faults_in_row: int = 0
    """Bare server errors in a row, with no other answer between."""
    circuit: Circuit = Circuit.CLOSED
    failing: bool = False
    """The circuit was opened by :attr:`faults_in_row`: tasks fail rather than park."""
    open_until: float = 0.0
    cooldown: float = 0.0
    paused_until: float = 0.0
    last_used: float = 0.0
    last_done: float = 0.0
    """When a download of the origin last ended, or when the origin last became busy."""
    interval: float = 0.0
    """Mean seconds between the origin's download ends while busy (0: none seen yet)."""
    ceiling: float = math.inf
    """The concurrency the origin last answered with a setback: growth stops one below it
    until :attr:`probe_at`."""
    probe_at: float = 0.0
    lot: trio.lowlevel.ParkingLot = field(default_factory=trio.lowlevel.ParkingLot)
    """Live tasks waiting for the origin."""
    backfill_lot: trio.lowlevel.ParkingLot = field(default_factory=trio.lowlevel.ParkingLot)
    """Backfill tasks waiting for it: they go only when no live task waits."""
    live_waiting: int = 0
    pacer: Pacer = field(default_factory=lambda: Pacer(0))
    """The origin's bandwidth cap (``download.host_rates``)."""
    # Totals for metrics.
    started: int = 0
    succeeded: int = 0
    setbacks: int = 0
    failed: int = 0
    parked: int = 0
    not_tried: int = 0

    def stats(self) -> OriginStats:
        return OriginStats(
            self.name, started=self.started, succeeded=self.succeeded, setbacks=self.setbacks,
            failed=self.failed, parked=self.parked, not_tried=self.not_tried, limit=self.cap,
            active=self.active, waiting=self.waiting,
            circuit_open=self.circuit is not Circuit.CLOSED,
        )  # fmt: skip

    @property
    def cap(self) -> int:
        """Downloads that may run at once now."""
        if self.circuit is Circuit.HALF_OPEN:
            return 1
        return max(1, min(self.maximum, math.floor(self.limit)))

    def idle(self) -> bool:
        return self.active == 0 and self.waiting == 0

    def wake(self, count: int) -> None:
        """Let up to ``count`` waiters look again: live ones first."""
        woken = len(self.lot.unpark(count=count))
        if count > woken:
            self.backfill_lot.unpark(count=count - woken)

    def wake_all(self) -> None:
        self.lot.unpark_all()
        self.backfill_lot.unpark_all()

    def expected_wait(self, now: float) -> float:
        """Seconds a task joining the origin's waiters may expect to wait: one download end
        per :attr:`interval`, or, once nothing has ended for :data:`STALLED_AFTER` seconds,
        per the time since the last end (a stalled origin's estimate grows while nothing
        ends; a moment's gap in a fast origin's stream does not count)."""
        since = now - self.last_done
        if self.interval == 0 or since > STALLED_AFTER:
            # Nothing has ended yet: the time busy so far is all there is to go by.
            return self.waiting * max(self.interval, since)
        return self.waiting * self.interval


@dataclass
class Slot:
    """One download's hold on its origin; :meth:`Origins.release` reports how it went."""

    origin: Origin
    epoch: int
    saturations: int
    """The origin's :attr:`Origin.saturations` before this download started: more at its end
    means the origin used its whole limit meanwhile (growth is earned)."""
    succeeded: int
    """The origin's :attr:`Origin.succeeded` before this download started: more at its end
    means the origin served others meanwhile."""


class Origins:
    """Every origin's state, and the waiting between them (one per download stage)."""

    def __init__(
        self, policy: OriginPolicy, *, clock: Callable[[], float] = trio.current_time
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._origins: dict[str, Origin] = {}
        self.parked: dict[str, int] = {PARK_OPEN: 0, PARK_BUSY: 0}
        self.pacer = Pacer(policy.max_rate, clock=clock)
        """``download.max_rate``: every download's bytes."""
        self._forgotten = NO_ORIGIN
        self._busy_origins = 0
        """Origins with at least one task waiting or downloading."""

    # -- settings --------------------------------------------------------------------------

    def set_policy(self, policy: OriginPolicy) -> None:
        """A reload: new maxima apply at once (a limit above its new maximum is cut)."""
        if policy == self.policy:
            return
        self.policy = policy
        self.pacer.rate = policy.max_rate
        for origin in self._origins.values():
            origin.maximum = policy.maximum(origin.name)
            origin.limit = min(origin.limit, origin.maximum)
            origin.pacer.rate = policy.rate(origin.name)
            origin.wake_all()

    # -- reading ---------------------------------------------------------------------------

    def get(self, name: str) -> Origin | None:
        return self._origins.get(name)

    def __iter__(self) -> Iterator[Origin]:
        return iter(list(self._origins.values()))

    def __len__(self) -> int:
        return len(self._origins)

    def __call__(self) -> tuple[list[OriginStats], OriginStats]:
        """For metrics (:data:`lakeferry.metrics.OriginSnapshot`): every origin known now, and
        the totals of those forgotten."""
        return [o.stats() for o in self._origins.values()], self._forgotten

    # -- the stage's calls -----------------------------------------------------------------

    async def acquire(self, name: str, *, backfill: bool = False) -> Slot:
        """Wait until ``name`` may start one more download; raise :class:`Parked` when its
        circuit is open or it already has its share of the waiting room. A ``backfill`` task
        goes only while no live task waits for the origin."""
        origin = self._origin(name)
        self._admit(origin)
        self._wait(origin, +1)
        lot = origin.backfill_lot if backfill else origin.lot
        if not backfill:
            origin.live_waiting += 1
        taking = 0
        try:
            while True:
                now = self._clock()
                self._refresh(origin, now)
                if origin.circuit is Circuit.OPEN:
                    self._turn_away(origin, "circuit open")
                if origin.circuit is Circuit.HALF_OPEN and origin.active >= 1:
                    self._turn_away(origin, "circuit half-open, its probe is running")
                if now < origin.paused_until:
                    with trio.move_on_at(origin.paused_until):
                        await lot.park()
                    continue
                if origin.active < origin.cap and not (backfill and origin.live_waiting):
                    taking = 1
                    break
                if origin.waiting <= self._share():
                    await lot.park()
                    continue
                # Beyond the share: look again now and then, as the origin may turn out slow.
                with trio.move_on_after(RECHECK):
                    await lot.park()
                self._park_if_slow(origin)
        finally:
            self._wait(origin, -1)
            if not backfill:
                origin.live_waiting -= 1
                if not origin.live_waiting:
                    origin.wake(max(0, origin.cap - origin.active - taking))
        mark = origin.saturations
        if origin.active == 0:
            origin.last_done = self._clock()  # busy from now: ends are timed from here
        self._change(origin, active=+1)
        if origin.active >= origin.cap:
            origin.saturations += 1
        origin.started += 1
        origin.last_used = self._clock()
        return Slot(origin, origin.epoch, mark, origin.succeeded)

    def check(self, name: str) -> None:
        """Raise :class:`Parked` now if a task for ``name`` would be parked on arrival (its
        circuit is open, or it is over its share and slow); nothing for an origin not known."""
        origin = self._origins.get(name)
        if origin is not None:
            self._admit(origin)

    async def pace(self, name: str, n: int) -> None:
        """Wait until ``n`` more bytes from origin ``name`` (``""``: none) fit in the caps."""
        await self.pacer.take(n)
        origin = self._origins.get(name)
        if origin is not None:
            await origin.pacer.take(n)

    def release(self, slot: Slot, outcome: Outcome, *, retry_after: float | None = None) -> None:
        origin = slot.origin
        self._change(origin, active=-1)
        now = self._clock()
        origin.last_used = now
        if outcome is not Outcome.CANCELLED:
            since = now - origin.last_done
            origin.interval = since if origin.interval == 0 else 0.8 * origin.interval + 0.2 * since
            origin.last_done = now
        if outcome is Outcome.OK:
            origin.succeeded += 1
            self._succeeded(origin, slot)
        elif outcome is Outcome.SETBACK:
            origin.setbacks += 1
            self._setback(origin, slot, now, retry_after)
        elif outcome is Outcome.NEUTRAL:
            origin.failed += 1
            origin.setbacks_in_row = 0
            origin.faults_in_row = 0
            if origin.circuit is Circuit.HALF_OPEN:
                self._close(origin)
        elif outcome is Outcome.FAULT:
            origin.failed += 1
            self._fault(origin, now)
        if origin.circuit is Circuit.OPEN:
            origin.wake_all()  # every waiter is parked on the ladder now
        else:
            origin.wake(max(0, origin.cap - origin.active))
        self._forget_idle()

    # -- the rules -------------------------------------------------------------------------

    def _origin(self, name: str) -> Origin:
        origin = self._origins.get(name)
        if origin is None:
            maximum = self.policy.maximum(name)
            origin = Origin(name, limit=float(min(self.policy.initial, maximum)), maximum=maximum)
            origin.pacer = Pacer(self.policy.rate(name), clock=self._clock)
            origin.last_used = self._clock()
            self._origins[name] = origin
        return origin

    def _admit(self, origin: Origin) -> None:
        """Park a task that would only wait behind its origin's share of the room."""
        self._refresh(origin, self._clock())
        if origin.circuit is Circuit.OPEN:
            self._turn_away(origin, "circuit open")
        self._park_if_slow(origin)

    def _share(self) -> int:
        """An origin's share of the room: divided between the origins at work, and never more
        than half (a lone stalled origin must leave room for the next origin to come)."""
        room = self.policy.room
        return max(1, min(room // max(1, self._busy_origins), room // 2))

    def _park_if_slow(self, origin: Origin) -> None:
        """Park a task beyond its origin's share when it would wait there past PARK_AFTER."""
        if origin.waiting < self._share():
            return
        wait = origin.expected_wait(self._clock())
        if wait > PARK_AFTER:
            self._park(
                origin, PARK_BUSY,
                f"{origin.waiting} downloads already wait for it (about {wait:.0f} s)",
            )  # fmt: skip

    def _wait(self, origin: Origin, step: int) -> None:
        """One more (``+1``) or one fewer (``-1``) task waits for ``origin``."""
        self._change(origin, waiting=step)

    def _change(self, origin: Origin, *, active: int = 0, waiting: int = 0) -> None:
        """Count tasks in and out of ``origin``, and it in and out of the busy origins."""
        was_busy = not origin.idle()
        origin.active += active
        origin.waiting += waiting
        is_busy = not origin.idle()
        if is_busy != was_busy:
            self._busy_origins += 1 if is_busy else -1

    def _park(self, origin: Origin, reason: str, detail: str) -> None:
        origin.parked += 1
        self.parked[reason] += 1
        raise Parked(origin.name, reason, detail)

    def _refresh(self, origin: Origin, now: float) -> None:
        if origin.circuit is Circuit.OPEN and now >= origin.open_until:
            origin.circuit = Circuit.HALF_OPEN

    def _turn_away(self, origin: Origin, detail: str) -> None:
        """A task the open circuit keeps from the origin: failed at once when the origin
        fails everything, parked otherwise."""
        if origin.failing:
            origin.not_tried += 1
            probe = max(0.0, origin.open_until - self._clock())
            raise NotTried(
                origin.name,
                f"answered its last {FAILING_AFTER} or more requests with server errors "
                f"(5xx) only; the next is tried in {probe:.0f} s",
            )
        self._park(origin, PARK_OPEN, detail)

    def _fault(self, origin: Origin, now: float) -> None:
        """A bare server error: the run of setbacks ends (the origin answered); enough of them
        in a row, or one from a probe, open the circuit with the origin's tasks failing."""
        origin.setbacks_in_row = 0
        origin.faults_in_row += 1
        if origin.circuit is Circuit.HALF_OPEN or (
            origin.circuit is Circuit.CLOSED
            and self.policy.circuit_failures > 0
            and origin.faults_in_row >= FAILING_AFTER
        ):
            self._open(origin, now, 0.0, failing=True)

    def _succeeded(self, origin: Origin, slot: Slot) -> None:
        origin.setbacks_in_row = 0
        origin.faults_in_row = 0
        if origin.circuit is Circuit.HALF_OPEN:
            self._close(origin)
            return
        if origin.saturations == slot.saturations:
            return  # the origin never used its whole limit while this one ran
        step = 1.0 if origin.slow_start else 1.0 / max(1.0, origin.limit)
        top = float(origin.maximum)
        if origin.ceiling - 1 < top:
            # Back quickly to just below the concurrency it throttled at; past it only by one,
            # once every PROBE_EVERY (a probe that holds raises the ceiling).
            step = 1.0
            now = self._clock()
            if origin.limit >= origin.ceiling - 1 and now >= origin.probe_at:
                origin.ceiling += 1
                origin.probe_at = now + PROBE_EVERY
            top = min(top, origin.ceiling - 1)
        origin.limit = max(origin.limit, min(top, origin.limit + step))

    def _setback(self, origin: Origin, slot: Slot, now: float, retry_after: float | None) -> None:
        wait = retry_after if retry_after is not None and retry_after > 0 else 0.0
        # Turned away with a Retry-After while it serves others (downloads still running, or
        # done since this one started): an answer to how many at once. Its limit is cut and
        # grows back to just below that many, but nobody else is paused.
        serving = origin.active > 0 or origin.succeeded > slot.succeeded
        too_many = bool(wait) and serving and origin.circuit is Circuit.CLOSED
        if too_many and wait <= MAX_PAUSE:
            wait = 0.0
        if slot.epoch != origin.epoch:
            # Started before the last halving (or opening): its round was counted already.
            if wait and origin.circuit is Circuit.CLOSED and wait <= MAX_PAUSE:
                origin.paused_until = max(origin.paused_until, now + wait)
            return
        if too_many:
            origin.ceiling = float(max(2, origin.cap))
            origin.probe_at = now + PROBE_EVERY
        origin.setbacks_in_row += 1
        origin.limit = max(1.0, origin.limit / 2)
        origin.slow_start = False
        origin.epoch += 1
        if (
            origin.circuit is Circuit.HALF_OPEN
            or 0 < self.policy.circuit_failures <= origin.setbacks_in_row
            or wait > MAX_PAUSE
        ):
            self._open(origin, now, wait)
        elif wait:
            origin.paused_until = max(origin.paused_until, now + wait)

    def _open(self, origin: Origin, now: float, wait: float, *, failing: bool = False) -> None:
        base = self.policy.circuit_cooldown
        reopening = origin.circuit is not Circuit.CLOSED
        origin.cooldown = min(MAX_COOLDOWN, origin.cooldown * 2 if reopening else base)
        origin.circuit = Circuit.OPEN
        origin.failing = failing
        origin.open_until = now + max(origin.cooldown, min(wait, MAX_COOLDOWN))
        origin.limit = 1.0
        origin.slow_start = True
        origin.epoch += 1
        log.warning(
            "origin circuit open: its downloads fail without a request (server errors only)"
            if failing
            else "origin circuit open: its downloads wait on the first retry rung",
            extra={"origin": origin.name, "setbacks_in_row": origin.setbacks_in_row,
                   "faults_in_row": origin.faults_in_row,
                   "probe_in": round(origin.open_until - now, 1)},
        )  # fmt: skip

    def _close(self, origin: Origin) -> None:
        origin.circuit = Circuit.CLOSED
        origin.failing = False
        origin.cooldown = 0.0
        origin.setbacks_in_row = 0
        origin.faults_in_row = 0
        log.info("origin circuit closed: its probe succeeded", extra={"origin": origin.name})

    def _forget_idle(self) -> None:
        if len(self._origins) <= MAX_TRACKED:
            return
        # Down to nine tenths at once: one sort per MAX_TRACKED / 10 new origins, not per one.
        idle = sorted((o for o in self._origins.values() if o.idle()), key=lambda o: o.last_used)
        for origin in idle[: len(self._origins) - MAX_TRACKED * 9 // 10]:
            del self._origins[origin.name]
            f = self._forgotten
            self._forgotten = f._replace(
                started=f.started + origin.started, succeeded=f.succeeded + origin.succeeded,
                setbacks=f.setbacks + origin.setbacks, failed=f.failed + origin.failed,
                parked=f.parked + origin.parked, not_tried=f.not_tried + origin.not_tried,
            )  # fmt: skip
