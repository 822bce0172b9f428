"""One worker thread owning a libcurl multi handle: transfers go in, progress comes out in batches.

Why a thread and not trio's own I/O: libcurl's multi-socket API could be driven from trio
(``wait_readable`` per socket, a timer task), but that needs tasks living as long as the
multi handle, and a downloader may start no background task of its own (components run in
the daemon's nurseries); a socket also outlives the transfer that opened it (keep-alive), so
the tasks could not belong to the fetches either. A thread owning the handle needs neither,
and every transfer costs the trio side only a command in and a batch out.

How it works: the thread runs libcurl's multi-socket loop on its own selector (the sockets
libcurl asks it to watch, the timer libcurl sets, and a wake-up socket for commands). The
trio side sends commands (:meth:`MultiThread.submit`, :meth:`~MultiThread.cancel`,
:meth:`~MultiThread.ack`); each pass of the loop carries out the commands queued so far, lets
libcurl work, and hands everything that happened to each trio run in *one*
``run_sync_soon`` call: response heads, body chunks, finished transfers. A small file's whole
life is a few passes and a few such batches, shared with the other transfers under way.

Backpressure: the thread counts the body bytes handed to trio and not yet acknowledged
(``ack``) per transfer; past :data:`HIGH_WATER` it pauses the transfer (the write callback
returns ``CURL_WRITEFUNC_PAUSE``: libcurl keeps that piece and stops reading the socket) and
resumes it when trio acknowledges. A transfer never holds more than about ``HIGH_WATER +
BUFFER_SIZE`` bytes in memory, however fast the origin and however slow the cache.

Resource handling: easy handles are reused (each keeps its settings; a transfer sets only
its URL, headers, pinned addresses and callbacks) and libcurl keeps ``maxconnects`` idle
connections for reuse. Cancelling a transfer removes its easy handle at the thread's next
pass (the wake-up socket makes that at once), which closes its connection. The thread starts
with the first transfer and stops in :meth:`MultiThread.close`.

Error handling: libcurl's result for each transfer (a ``CURLcode`` and its message) goes back
to trio as it is, with the refusal of the open-socket check when that was the cause; trio
turns them into pipeline errors. Should the loop itself fail, every transfer under way ends
with that failure, the thread exits, and the next submission starts a fresh one.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple

import certifi
import pycurl
import trio

from lakeferry.api import IPAddress, NetGuard, PermanentError

HIGH_WATER = 512 * 1024
"""Body bytes a transfer may have handed to trio unacknowledged before it pauses."""
BUFFER_SIZE = 128 * 1024
"""libcurl's receive buffer per easy handle: the largest piece one write callback brings."""

ConnectHook = Callable[[str, int], None]
"""``hook(address, port)``, called before a socket is opened to a checked address; raising
refuses the connection (tests record connections with it)."""

CLOSED = -1
"""The result code of transfers ended because the thread stopped or failed."""


class Outcome(NamedTuple):
    """How a transfer ended: libcurl's ``CURLcode`` (0: complete) and its message, and the
    guard's refusal when the open-socket check refused the address."""

    code: int
    message: str
    refusal: PermanentError | None = None


class Transfer:
    """One GET on the multi handle.

    Fields are owned by one side each: the request (set before :meth:`MultiThread.submit`,
    read-only afterwards), the worker's (touched only in the worker thread) and trio's
    (touched only in the trio thread, by :meth:`arrive` and the reader of the response).
    """

    __slots__ = (
        "allowed",
        "closed",
        "easy",
        "event",
        "head",
        "head_lines",
        "head_staged",
        "headers",
        "host",
        "inbox",
        "outcome",
        "outcome_staged",
        "outstanding",
        "paused",
        "paused_seen",
        "port",
        "resolve",
        "staged",
        "token",
        "touched",
        "unacked",
        "url",
    )

    def __init__(
        self,
        url: str,
        headers: list[str],
        host: str,
        port: int,
        allowed: Sequence[IPAddress],
        resolve: list[str],
    ) -> None:
        # The request.
        self.url = url
        self.headers = headers
        self.host = host
        self.port = port
        self.allowed = allowed
        """The addresses the guard checked for ``host``: the only ones a socket may reach."""
        self.resolve = resolve
        """``CURLOPT_RESOLVE`` entries pinning ``host`` to ``allowed`` (empty for literals)."""
        self.token = trio.lowlevel.current_trio_token()
        # The worker's.
        self.easy: pycurl.Curl | None = None
        self.head_lines: list[bytes] | None = []
        """Header lines of the response so far; None once the head is complete."""
        self.head_staged: list[bytes] | None = None
        self.staged: list[bytes] = []
        self.outcome_staged: Outcome | None = None
        self.outstanding = 0
        self.paused = False
        self.touched = False
        # Trio's.
        self.head: list[bytes] | None = None
        self.inbox: deque[bytes] = deque()
        self.outcome: Outcome | None = None
        self.paused_seen = False
        self.unacked = 0
        self.closed = False
        self.event: trio.Event | None = None

    def arrive(
        self, head: list[bytes] | None, chunks: list[bytes], outcome: Outcome | None, paused: bool
    ) -> None:
        """Trio thread: what the worker handed over in one pass."""
        if head is not None:
            self.head = head
        if chunks:
            self.inbox.extend(chunks)
        if outcome is not None:
            self.outcome = outcome
        if paused:
            self.paused_seen = True
        if self.event is not None:
            self.event.set()
            self.event = None


Delivery = tuple[Transfer, list[bytes] | None, list[bytes], Outcome | None, bool]


def _arrive_all(deliveries: list[Delivery]) -> None:
    for transfer, head, chunks, outcome, paused in deliveries:
        transfer.arrive(head, chunks, outcome, paused)


_SUBMIT, _CANCEL, _ACK, _STOP = range(4)


class EasyOptions(NamedTuple):
    """What every easy handle of one downloader is set up with."""

    connect_timeout: float
    verify_tls: bool
    maxconnects: int


class MultiThread:
    """The trio side's handle on the worker thread: commands in, batches out."""

    def __init__(self, options: EasyOptions, guard: NetGuard, logger: logging.Logger) -> None:
        self.options = options
        self.guard = guard
        self.log = logger
        self.connect_hook: ConnectHook | None = None
        """See :data:`ConnectHook`."""
        self._lock = threading.Lock()
        self._commands: list[tuple[int, Transfer | None, int]] = []
        self._wake_pending = False
        self._thread: threading.Thread | None = None
        self._loop: _Loop | None = None
        self.cpu_seconds = 0.0
        """CPU time the worker threads used, counted when each ends (benchmarks read it)."""
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)

    # -- trio's side ------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Easy handles on the multi handle now (read from any thread)."""
        loop = self._loop
        return 0 if loop is None else len(loop.running)

    def submit(self, transfer: Transfer) -> None:
        self._command(_SUBMIT, transfer)

    def cancel(self, transfer: Transfer) -> None:
        """Remove the transfer's easy handle (promptly; closes its connection)."""
        transfer.closed = True
        self._command(_CANCEL, transfer)

    def ack(self, transfer: Transfer, size: int) -> None:
        """Trio took ``size`` more body bytes of the transfer (it may read on if paused)."""
        self._command(_ACK, transfer, size)

    def _command(self, kind: int, transfer: Transfer | None, size: int = 0) -> None:
        with self._lock:
            self._commands.append((kind, transfer, size))
            wake = not self._wake_pending
            self._wake_pending = True
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="lakeferry-curl", daemon=True
                )
                self._thread.start()
        if wake:
            with contextlib.suppress(BlockingIOError):  # the worker has bytes to read already
                self._wake_write.send(b"\0")

    def close(self) -> threading.Thread | None:
        """Stop the thread (transfers under way end); the thread to join, if one ran."""
        with self._lock:
            thread = self._thread
            if thread is None or not thread.is_alive():
                self._thread = None
                return None
        self._command(_STOP, None)
        return thread

    def release(self) -> None:
        """Close the wake-up sockets, once the thread is joined."""
        self._wake_read.close()
        self._wake_write.close()

    # -- the worker thread ------------------------------------------------------------------

    def _take_commands(self) -> list[tuple[int, Transfer | None, int]]:
        with self._lock:
            commands, self._commands = self._commands, []
            self._wake_pending = False
        return commands

    def _run(self) -> None:
        loop = self._loop = _Loop(self)
        try:
            loop.run()
        except BaseException as exc:  # the loop failed: end what runs, let the next start anew
            self.log.exception("curl engine failed; transfers under way end with it")
            loop.end_all(Outcome(CLOSED, f"curl engine failed: {exc!r}"))
        finally:
            loop.close()
            self.cpu_seconds += time.thread_time()


class _Loop:
    """The worker thread's state: the multi handle, its sockets and timer, the transfers."""

    def __init__(self, owner: MultiThread) -> None:
        self.owner = owner
        self.multi = pycurl.CurlMulti()
        self.multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self.multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        self.multi.setopt(pycurl.M_MAXCONNECTS, owner.options.maxconnects)
        self.selector = selectors.DefaultSelector()
        self.selector.register(owner._wake_read, selectors.EVENT_READ)
        self.wake_fd = owner._wake_read.fileno()
        self.watched: set[int] = set()
        self.deadline: float | None = None
        self.running: dict[pycurl.Curl, Transfer] = {}
        self.spare: list[pycurl.Curl] = []
        self.touched: list[Transfer] = []
        self.stopping = False

    # -- libcurl's callbacks --------------------------------------------------------------

    def _on_socket(self, what: int, fd: int, multi: object, socketp: object) -> None:
        events = (selectors.EVENT_READ if what & pycurl.POLL_IN else 0) | (
            selectors.EVENT_WRITE if what & pycurl.POLL_OUT else 0
        )
        if what == pycurl.POLL_REMOVE or not events:
            if fd in self.watched:
                self.watched.discard(fd)
                self.selector.unregister(fd)
            return
        if fd in self.watched:
            self.selector.modify(fd, events)
        else:
            self.selector.register(fd, events)
            self.watched.add(fd)

    def _on_timer(self, timeout_ms: int) -> None:
        self.deadline = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000

    def _touch(self, transfer: Transfer) -> None:
        if not transfer.touched:
            transfer.touched = True
            self.touched.append(transfer)

    def _callbacks(
        self, transfer: Transfer
    ) -> tuple[
        Callable[[bytes], int | None],
        Callable[[bytes], None],
        Callable[[int, tuple[int, int, int, tuple[str, int]]], int],
    ]:
        def on_body(data: bytes) -> int | None:
            if transfer.outstanding >= HIGH_WATER:
                transfer.paused = True
                self._touch(transfer)
                return pycurl.WRITEFUNC_PAUSE
            transfer.staged.append(data)
            transfer.outstanding += len(data)
            self._touch(transfer)
            return None

        def on_header(line: bytes) -> None:
            lines = transfer.head_lines
            if lines is None:
                return  # trailers of a chunked body
            if line.startswith(b"HTTP/"):
                lines.clear()
            if line not in (b"\r\n", b"\n"):
                lines.append(line)
                return
            parts = lines[0].split(None, 2) if lines else []
            if len(parts) >= 2 and parts[1][:1] == b"1":
                lines.clear()  # an interim response (100 Continue): the real one follows
                return
            transfer.head_staged = lines
            transfer.head_lines = None
            self._touch(transfer)

        def open_socket(purpose: int, address: tuple[int, int, int, tuple[str, int]]) -> int:
            family, socktype, protocol, peer = address
            try:
                self.owner.guard.check_peer(transfer.host, transfer.port, peer, transfer.allowed)
                hook = self.owner.connect_hook
                if hook is not None:
                    hook(peer[0], peer[1])
            except PermanentError as refusal:
                transfer.outcome_staged = Outcome(pycurl.E_COULDNT_CONNECT, str(refusal), refusal)
                return pycurl.SOCKET_BAD
            except Exception as exc:  # the hook refused: a connection that failed
                transfer.outcome_staged = Outcome(pycurl.E_COULDNT_CONNECT, str(exc))
                return pycurl.SOCKET_BAD
            return socket.socket(family, socktype, protocol).detach()  # libcurl closes it

        return on_body, on_header, open_socket

    # -- transfers ------------------------------------------------------------------------

    def _easy(self) -> pycurl.Curl:
        if self.spare:
            return self.spare.pop()
        options = self.owner.options
        easy = pycurl.Curl()
        easy.setopt(pycurl.NOSIGNAL, 1)
        easy.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        easy.setopt(pycurl.FOLLOWLOCATION, 0)  # redirects are followed by trio, hop by hop
        easy.setopt(pycurl.PROXY, "")  # never a proxy from the environment
        easy.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        easy.setopt(pycurl.ACCEPT_ENCODING, "identity")  # and decode one sent anyway
        easy.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, round(options.connect_timeout * 1000)))
        easy.setopt(pycurl.BUFFERSIZE, BUFFER_SIZE)
        easy.setopt(pycurl.CAINFO, certifi.where())  # the same trust store as httpx
        easy.setopt(pycurl.SSL_VERIFYPEER, 1 if options.verify_tls else 0)
        easy.setopt(pycurl.SSL_VERIFYHOST, 2 if options.verify_tls else 0)
        return easy

    def start(self, transfer: Transfer) -> None:
        if transfer.closed:
            return
        easy = self._easy()
        on_body, on_header, open_socket = self._callbacks(transfer)
        easy.setopt(pycurl.URL, transfer.url)
        easy.setopt(pycurl.HTTPHEADER, transfer.headers)
        easy.setopt(pycurl.RESOLVE, transfer.resolve)
        easy.setopt(pycurl.WRITEFUNCTION, on_body)
        easy.setopt(pycurl.HEADERFUNCTION, on_header)
        easy.setopt(pycurl.OPENSOCKETFUNCTION, open_socket)
        transfer.easy = easy
        self.running[easy] = transfer
        self.multi.add_handle(easy)

    def _detach(self, transfer: Transfer) -> None:
        easy = transfer.easy
        if easy is None:
            return
        transfer.easy = None
        del self.running[easy]
        self.multi.remove_handle(easy)
        self.spare.append(easy)

    def cancel(self, transfer: Transfer) -> None:
        self._detach(transfer)

    def ack(self, transfer: Transfer, size: int) -> None:
        transfer.outstanding -= size
        easy = transfer.easy
        if transfer.paused and easy is not None and transfer.outstanding < HIGH_WATER:
            transfer.paused = False
            try:
                easy.pause(pycurl.PAUSE_CONT)  # may deliver the kept piece right away
            except pycurl.error as exc:  # the transfer failed as it resumed
                code, message = exc.args if len(exc.args) == 2 else (CLOSED, str(exc))
                self.finish(easy, code or CLOSED, message)

    def finish(self, easy: pycurl.Curl, code: int, message: str) -> None:
        transfer = self.running.get(easy)
        if transfer is None:
            return
        self._detach(transfer)
        if code == 0 or transfer.outcome_staged is None:  # else: refused at the open-socket check
            transfer.outcome_staged = Outcome(code, message)
        self._touch(transfer)

    def end_all(self, outcome: Outcome) -> None:
        for transfer in list(self.running.values()):
            self._detach(transfer)
            transfer.outcome_staged = outcome
            self._touch(transfer)
        self.deliver()

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        while not self.stopping:
            for kind, transfer, size in self.owner._take_commands():
                if kind == _STOP:
                    self.stopping = True
                elif transfer is None:
                    continue
                elif kind == _SUBMIT:
                    self.start(transfer)
                elif kind == _CANCEL:
                    self.cancel(transfer)
                else:
                    self.ack(transfer, size)
            self.reap()
            self.deliver()
            if self.stopping:
                break
            timeout = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
            for key, mask in self.selector.select(timeout):
                if key.fd == self.wake_fd:
                    self._drain_wake()
                    continue
                action = (pycurl.CSELECT_IN if mask & selectors.EVENT_READ else 0) | (
                    pycurl.CSELECT_OUT if mask & selectors.EVENT_WRITE else 0
                )
                self.multi.socket_action(key.fd, action)
            if self.deadline is not None and time.monotonic() >= self.deadline:
                self.deadline = None
                self.multi.socket_action(pycurl.SOCKET_TIMEOUT, 0)
        self.end_all(Outcome(CLOSED, "the downloader was closed"))

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self.owner._wake_read.recv(4096):
                pass

    def reap(self) -> None:
        while True:
            queued, done, failed = self.multi.info_read()
            for easy in done:
                self.finish(easy, 0, "")
            for easy, code, message in failed:
                self.finish(easy, code, message)
            if not queued:
                return

    def deliver(self) -> None:
        """Hand everything that happened in this pass to trio: one call per trio run."""
        if not self.touched:
            return
        batches: dict[trio.lowlevel.TrioToken, list[Delivery]] = {}
        for transfer in self.touched:
            transfer.touched = False
            # The lists change hands: trio reads them later, so the worker starts new ones
            # (even an empty one: trio would read what the worker appended to it meanwhile).
            delivery: Delivery = (
                transfer,
                transfer.head_staged,
                transfer.staged,
                transfer.outcome_staged if transfer.easy is None else None,
                transfer.paused,
            )
            transfer.head_staged = None
            transfer.staged = []
            batches.setdefault(transfer.token, []).append(delivery)
        self.touched.clear()
        for token, deliveries in batches.items():
            # A run that is over has nobody waiting for these transfers any more.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(_arrive_all, deliveries)

    def close(self) -> None:
        for transfer in list(self.running.values()):
            self._detach(transfer)
        for easy in self.spare:
            easy.close()
        self.multi.close()
        self.selector.close()
