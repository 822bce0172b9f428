"""Who owns a state folder: exclusive lock files that a second daemon finds taken.

Two daemons on one embedded bus both consume every partition (the embedded bus has one member
per group per process), so every event is fetched, uploaded and recorded twice. A daemon on the
embedded bus therefore owns its state folder: ``<state_dir>/lakeferry.lock``, and
``<bus file>.lock`` too when the bus file lives elsewhere. On Kafka, several stage processes of
one VM share the state folder and the cache by design (the broker's consumer groups split the
work); what one of them must own alone is its *instance* (its static group membership), so
the lock is ``<state_dir>/lakeferry-<instance>.lock``.

The lock is ``flock(LOCK_EX | LOCK_NB)`` on the file, held for the life of the process: the
kernel releases it when the process dies, however it dies, so a stale lock file never blocks
a restart. The file holds the owner's pid, for the message the next one prints. Tools that
only read or append (``submit``, ``dlq``, ``audit``, ``top``) never take it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import IO, NamedTuple

from lakeferry.config import LoadedConfig
from lakeferry.errors import StartRefused

_SAFE = re.compile(r"[^A-Za-z0-9._@+-]")


class OwnerLock:
    """Exclusive ownership of one lock file; released by :meth:`release` or process exit."""

    def __init__(self, path: Path, fh: IO[str]) -> None:
        self.path = path
        self._fh: IO[str] | None = fh

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the descriptor drops the flock
            self._fh = None


def instance_lock_name(instance: str) -> str:
    """The lock file name of a Kafka stage instance (unsafe characters replaced)."""
    return f"lakeferry-{_SAFE.sub('_', instance)}.lock"


def claim(path: Path, owned: str, fix: str) -> OwnerLock:
    """Take ``path`` for this process, or raise :class:`StartRefused` naming the owner.

    The message reads ``another lakeferry (pid N) owns <owned>; <fix>``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = path.open("a+", encoding="ascii")  # never truncate before holding the lock
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        pid = fh.read().strip() or "unknown"
        fh.close()
        raise StartRefused(f"another lakeferry (pid {pid}) owns {owned}; {fix}") from None
    except BaseException:
        fh.close()
        raise
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return OwnerLock(path, fh)


class Claim(NamedTuple):
    path: Path
    owned: str
    """What the lock stands for, as the refusal names it."""
    fix: str
    """What the operator can do about a refusal."""


def claims_for(config: LoadedConfig, instance: str) -> list[Claim]:
    """What a daemon with this config must own alone (see the module docstring)."""
    state = Path(config.core.daemon.state_dir)
    if config.core.bus.kind != "embedded":
        return [
            Claim(
                state / instance_lock_name(instance),
                f"instance {instance!r} in {state}",
                "give each worker of a VM its own --instance (LAKEFERRY_INSTANCE)",
            )
        ]
    fix = "stop it first, or give this daemon its own daemon.state_dir"
    claims = [Claim(state / "lakeferry.lock", str(state), fix)]
    bus = Path(config.core.bus.embedded.path)
    if not bus.resolve().is_relative_to(state.resolve()):
        lock = bus.with_name(bus.name + ".lock")
        claims.append(Claim(lock, f"the embedded bus {bus}", "stop it first"))
    return claims


def claim_all(claims: Sequence[Claim]) -> list[OwnerLock]:
    """Take every lock in order; on a refusal, release the ones already taken."""
    taken: list[OwnerLock] = []
    try:
        for item in claims:
            taken.append(claim(item.path, item.owned, item.fix))
    except BaseException:
        for lock in taken:
            with contextlib.suppress(OSError):
                lock.release()
        raise
    return taken


def owners(state_dir: Path) -> list[int]:
    """The pids of the live daemons that own locks in ``state_dir`` (none: no daemon runs
    on it). Tests each lock without taking it for more than an instant."""
    found: list[int] = []
    for path in sorted(state_dir.glob("lakeferry*.lock")):
        try:
            fh = path.open("r", encoding="ascii")
        except OSError:
            continue
        with fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = fh.read().strip()
                if pid.isdigit():
                    found.append(int(pid))
            else:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    return found
