"""The ``slow`` marker, derived rather than remembered (a pytest plugin: in ``pytest_plugins``).

``make test-fast`` runs ``pytest -m "not slow"`` and must stay under a minute on two busy cores.
So a test is marked ``slow`` when it starts another process (the daemon, Kafka, Azurite, sshd,
nginx, the ``lakeferry`` CLI, any tool), or when it takes seconds on its own (real Delta tables,
the Event Hubs SDK, a large hypothesis budget: mark it by hand, after ``pytest --durations=20``).
For processes there are three ways, so that a new test cannot forget:

- A fixture that starts a process says so where it is defined, with ``@starts_processes``
  under ``@pytest.fixture``; every test that uses it, directly or through other fixtures, is
  marked ``slow`` at collection (``pytest_collection_modifyitems``).
- A module whose tests run processes themselves says ``pytestmark = pytest.mark.slow``; a single
  test, ``@pytest.mark.slow`` (or ``pytest.param(..., marks=pytest.mark.slow)``).
- The guard: an audit hook (``sys.addaudithook``) sees every process start in this interpreter
  (``subprocess.Popen``, ``os.fork``, ``os.posix_spawn``, ``os.system``, ``os.exec*``...). A test
  that is not marked ``slow`` and starts one anyway fails in its teardown, naming the command
  and the ways above.

The guard watches the test's set-up, call and teardown, not collection or session set-up of a
slow test's fixtures, and not other processes (a daemon's own children are its business).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Generator
from types import FrameType
from typing import Any, TypeVar

import pytest

F = TypeVar("F", bound=Callable[..., Any])

PROCESS_FIXTURES: set[str] = set()
"""Names of the fixtures that start processes (filled by ``@starts_processes``)."""

SPAWN_EVENTS = frozenset(
    {
        "subprocess.Popen",
        "os.system",
        "os.posix_spawn",
        "os.fork",
        "os.forkpty",
        "os.exec",
        "os.spawn",
        "pty.spawn",
    }
)
"""Audit events that start a process (``docs.python.org/3/library/audit_events.html``)."""

LOOKUP_MODULES = frozenset({"platform", "ctypes.util"})
"""Standard modules that run a short helper once per interpreter to look something up
(``uname -p`` for ``platform.processor()``, which SDKs call for their user agent; ``ldconfig``
for ``ctypes.util.find_library``): whichever test comes first would be blamed, so these are not
counted."""


def starts_processes(fixture: F) -> F:
    """Declare a fixture as one that starts processes: the tests that use it are ``slow``.
    Apply it under ``@pytest.fixture``."""
    PROCESS_FIXTURES.add(fixture.__name__)
    return fixture


class _Guard:
    """Records the processes started while an unmarked test runs."""

    def __init__(self) -> None:
        self.watching = False
        self.started: list[str] = []

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if self.watching and event in SPAWN_EVENTS and not _from_a_lookup():
            self.started.append(f"{event} {_describe(args)}")


def _from_a_lookup() -> bool:
    frame: FrameType | None = sys._getframe(2)  # the caller of the audited call
    while frame is not None:
        if frame.f_globals.get("__name__") in LOOKUP_MODULES:
            return True
        frame = frame.f_back
    return False


def _describe(args: tuple[Any, ...]) -> str:
    # subprocess.Popen: (executable, args, cwd, env); os.exec/os.spawn: (path, args, env);
    # os.system: (command,); os.fork: ().
    shown = args[1] if len(args) > 1 and args[1] is not None else args[:1]
    text = " ".join(map(str, shown)) if isinstance(shown, list | tuple) else str(shown)
    return text[:200]


_guard = _Guard()
sys.addaudithook(_guard)  # hooks cannot be removed; this one is idle outside unmarked tests


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    _guard.started = []
    _guard.watching = item.get_closest_marker("slow") is None
    try:
        return (yield)
    finally:
        _guard.watching = False


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    yield
    started, _guard.started = _guard.started, []
    if _guard.watching and started:
        _guard.watching = False
        listed = "\n  ".join(started[:5])
        pytest.fail(
            f"{item.nodeid} started a process but is not marked slow (make test-fast skips "
            f"slow tests):\n  {listed}\nMark it: @pytest.mark.slow on the test, pytestmark = "
            "pytest.mark.slow in its module, or @starts_processes on the fixture that starts "
            "the process (tests/helpers/markers.py).",
            pytrace=False,
        )
