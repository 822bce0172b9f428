"""The retry ladder: which delay topic a transient failure climbs to, and when it is due.

Rung *n* (0-based) holds tasks that failed ``n + 1`` times. Every message on one rung was
given the same delay, so due times on a rung's partition are in offset order and the download
stage may wait for the head of a partition without delaying later messages (it pauses only that
partition). The delays can change live (SIGHUP); messages already on a rung keep the due time
they were given. The number of rungs and their topics need a restart.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import NamedTuple

DUE_HEADER = "lf-due-ms"
ATTEMPT_HEADER = "lf-attempt"
ORIGIN_HEADER = "lf-origin-topic"
FIRST_SEEN_HEADER = "lf-first-seen"
FIRST_ERROR_HEADER = "lf-first-error"
LAST_ERROR_HEADER = "lf-last-error"
LANE_HEADER = "lf-lane"
"""On an intake record (``lakeferry submit --lane``): the lane of its events; absent: live."""


class Rung(NamedTuple):
    number: int
    topic: str
    delay: float


class RetryLadder:
    """Maps a failure count to a rung; ``None`` once the ladder is exhausted."""

    def __init__(self, topics: Sequence[str], delays: Sequence[float]) -> None:
        if len(topics) != len(delays) or not topics:
            raise ValueError("a ladder needs one delay per topic and at least one rung")
        self.topics = tuple(topics)
        self.delays = tuple(float(d) for d in delays)

    def set_delays(self, delays: Sequence[float]) -> None:
        if len(delays) != len(self.topics):
            raise ValueError(f"the ladder has {len(self.topics)} rungs; got {len(delays)} delays")
        self.delays = tuple(float(d) for d in delays)

    def rung_for(self, failures: int) -> Rung | None:
        """The rung for a task that has now failed ``failures`` times (1 = first failure)."""
        index = failures - 1
        if 0 <= index < len(self.topics):
            return Rung(index, self.topics[index], self.delays[index])
        return None

    def index_of(self, topic: str) -> int | None:
        try:
            return self.topics.index(topic)
        except ValueError:
            return None


def due_ms(headers: Mapping[str, bytes]) -> int | None:
    raw = headers.get(DUE_HEADER)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def to_ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)
