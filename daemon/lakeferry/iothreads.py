"""Worker threads for blocking file work: jobs in through a queue, results back to trio in batches.

Why not ``trio.to_thread.run_sync``: each call there is a thread hop of its own (a worker woken
through a lock, the thread named with a system call, a ``run_sync_soon`` back with a wake-up of
trio's loop), ~60 µs of CPU per call on this project's 2-core benchmark machine under 50
concurrent downloads, where a small file's whole publish in the cache costs a few hundred.
Used by the localfs cache (its file work) and the id ledger (its group commits); plugins get it
from :mod:`lakeferry.api`. Here a job is
appended to a queue; a thread that is already running takes the next job without sleeping,
and jobs that finish close together go back to trio in one ``run_sync_soon``: 6 to 9 µs per job
in the same test (``bench/analysis.md``).

Scheduling: at most ``size`` threads, started when needed and ended after
:data:`IDLE_SECONDS` without work. A queued job wakes an idle thread, else starts one while
fewer than ``size`` run, as ``trio.to_thread`` with a limiter would: a short job never waits
behind a long one (a large file's write held up by the disk) while a thread could take it.
Jobs queue only while all ``size`` threads are busy.

Error handling: an exception in a job is the job's outcome, raised where it is awaited (or
handed to the ``deliver`` callback). Cancellation: :meth:`IoThreads.run` can be cancelled
before its job is queued, never after; the job always runs to its end, so a job that opens a
file is never abandoned with the file open.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

T = TypeVar("T")

IDLE_SECONDS = 10.0
"""A thread without work for this long ends."""

Deliver = Callable[[outcome.Outcome[Any]], object]


class IoThreads:
    """Up to ``size`` worker threads sharing one queue of jobs."""

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._jobs: collections.deque[tuple[Callable[[], Any], Deliver, trio.lowlevel.TrioToken]]
        self._jobs = collections.deque()
        self._threads = 0
        self._idle = 0
        self._done: dict[trio.lowlevel.TrioToken, list[tuple[Deliver, outcome.Outcome[Any]]]] = {}

    @property
    def threads(self) -> int:
        """Threads alive now (busy or idle)."""
        return self._threads

    def submit(self, fn: Callable[[], T], deliver: Callable[[outcome.Outcome[T]], object]) -> None:
        """Run ``fn()`` in a worker thread; then ``deliver(result)`` in this trio thread."""
        token = trio.lowlevel.current_trio_token()
        with self._lock:
            self._jobs.append((fn, deliver, token))
            if self._idle:
                self._work.notify()
                return
            if self._threads >= self._size:
                return
            self._threads += 1
        thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
        try:
            thread.start()
        except BaseException:
            with self._lock:
                self._threads -= 1
            raise

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in a worker thread; its result, or its exception raised here."""
        await trio.lowlevel.checkpoint_if_cancelled()
        task = trio.lowlevel.current_task()

        def deliver(result: outcome.Outcome[T]) -> None:
            trio.lowlevel.reschedule(task, result)

        self.submit(lambda: fn(*args), deliver)

        def abort(_: object) -> trio.lowlevel.Abort:
            return trio.lowlevel.Abort.FAILED  # the job runs to its end: wait for it

        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    # -- the worker threads ---------------------------------------------------------------

    def _serve(self) -> None:
        lock = self._lock
        lock.acquire()
        try:
            while True:
                if not self._jobs:
                    self._idle += 1
                    woken = self._work.wait(IDLE_SECONDS)
                    self._idle -= 1
                    if not self._jobs:
                        if woken:
                            continue  # another thread took the job it was woken for
                        self._threads -= 1
                        return
                fn, deliver, token = self._jobs.popleft()
                lock.release()
                try:
                    result = outcome.capture(fn)
                    del fn
                finally:
                    lock.acquire()
                batch = self._done.get(token)
                if batch is not None:  # a delivery to that run is due already: join it
                    batch.append((deliver, result))
                else:
                    self._done[token] = [(deliver, result)]
                    lock.release()
                    try:
                        token.run_sync_soon(self._deliver, token)
                        finished = False
                    except trio.RunFinishedError:
                        finished = True  # nobody is waiting any more
                    lock.acquire()
                    if finished:
                        del self._done[token]
                del deliver, result
        finally:
            lock.release()

    def _deliver(self, token: trio.lowlevel.TrioToken) -> None:
        """In the trio thread: hand every result that finished since the last call to its
        waiter."""
        with self._lock:
            batch = self._done.pop(token, [])
        for deliver, result in batch:
            deliver(result)
