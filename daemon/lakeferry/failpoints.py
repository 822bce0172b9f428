"""Failpoints: named places where a crash test makes this process freeze or die, for real.

Some races cannot be hit from outside on purpose: a results process frozen *between* deciding
to commit and writing the Delta log, overtaken by another member, then resumed. A failpoint puts
the process into exactly that state with a real signal, so a test or ``make chaos`` can check
what the system promises then (the commit is refused, nothing is written twice).

``LAKEFERRY_FAILPOINTS`` (read once, at import) lists ``name=action[@n]`` entries separated by
``;``: at the ``n``-th time (default: the first) the code reaches :func:`failpoint(name)
<failpoint>`, the process sends itself ``SIGSTOP`` (``stop``: every thread freezes until a
``SIGCONT``) or ``SIGKILL`` (``kill``). Unset, a failpoint is one dictionary lookup.

Points: ``delta.inventory.commit`` and ``delta.events.commit`` (after the table's checks, right
before the commit that writes Parquet and the log); ``delta.source.published`` (the ``delta``
source's batch is on the bus, its cursor not yet moved).
"""

from __future__ import annotations

import os
import signal
import threading

_ACTIONS = {"stop": signal.SIGSTOP, "kill": signal.SIGKILL}


def _parse(spec: str) -> dict[str, tuple[signal.Signals, int]]:
    points: dict[str, tuple[signal.Signals, int]] = {}
    for entry in filter(None, (part.strip() for part in spec.split(";"))):
        name, _, rest = entry.partition("=")
        action, _, nth = rest.partition("@")
        if action not in _ACTIONS or not name or (nth and not nth.isdigit()):
            raise ValueError(f"LAKEFERRY_FAILPOINTS: cannot read {entry!r} (name=stop|kill[@n])")
        points[name.strip()] = (_ACTIONS[action], int(nth or 1))
    return points


_POINTS = _parse(os.environ.get("LAKEFERRY_FAILPOINTS", ""))
_HITS: dict[str, int] = {}
_LOCK = threading.Lock()


def failpoint(name: str) -> None:
    """Freeze or kill this process here when ``LAKEFERRY_FAILPOINTS`` asks for ``name`` (and
    this is the hit it names). Safe from any thread."""
    point = _POINTS.get(name)
    if point is None:
        return
    with _LOCK:
        _HITS[name] = hit = _HITS.get(name, 0) + 1
    if hit == point[1]:
        os.kill(os.getpid(), point[0])
