"""The ``http`` downloader's libcurl engine (``engine = "curl"``): pycurl's multi interface.

libcurl does the HTTP work in one worker thread per downloader
(:class:`~lakeferry_http.curl_multi.MultiThread`); this module is the trio side. Each GET is
one :class:`~lakeferry_http.curl_multi.Transfer`: the fetch submits it, waits for its head,
then reads its body in the pieces the worker hands over (acknowledging them, so the worker
reads on), and cancels it when it leaves early. A small file costs trio a few wake-ups, not
one per read.

The network guard, on every hop: libcurl never resolves a name itself and never follows a
redirect. For each hop, trio resolves the host through the guard
(:meth:`lakeferry.api.NetGuard.resolve`: only allowed addresses remain, none is ``blocked``),
pins the name to exactly those addresses (``CURLOPT_RESOLVE``), and the open-socket callback
checks the address of every socket libcurl opens against them
(:meth:`~lakeferry.api.NetGuard.check_peer`) before the socket exists. The guard's answer for
a host and port is reused for :data:`LOOKUP_TTL` seconds (:class:`CheckedLookups`; a burst of
requests to one host resolves it once, and requests arriving while it resolves wait for that
answer): only allowed addresses are ever kept, a refusal or a failure never is, and a reused
answer is pinned and checked exactly like a fresh one. A redirect ends the
hop's transfer; its ``Location`` is checked (:meth:`~lakeferry.api.NetGuard.check_url`) and
fetched as the next hop, up to ``max_redirects``, so a redirect to a private address is
refused like a first URL would be. URLs are parsed by httpx's parser, as with the httpx
engine (the same URL is the same request with either), and handed to libcurl normalised.

Timeouts: ``connect_timeout`` bounds resolving (trio) and connecting (libcurl's own
``CURLOPT_CONNECTTIMEOUT``); the head must arrive within ``connect_timeout + read_timeout``
of the request, and each later piece of the body within ``read_timeout`` of the last;
``total_timeout`` and ``min_throughput`` are the downloader's, as for httpx.

Error handling: libcurl's result codes become pipeline errors in :func:`curl_error`
(``timeout`` for its timeouts, ``connection`` for everything on the wire, a body shorter than
announced included); a refusal of the open-socket check is the guard's ``blocked``; messages
name the redacted URL only.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urljoin

import httpx
import pycurl
import trio

from lakeferry.api import (
    IPAddress,
    NetGuard,
    PermanentError,
    PipelineError,
    Reason,
    TransientError,
    parse_ip_literal,
)
from lakeferry_http.curl_multi import (
    HIGH_WATER,
    ConnectHook,
    EasyOptions,
    MultiThread,
    Outcome,
    Transfer,
)
from lakeferry_http.responses import REDIRECT_STATUSES, Response

if TYPE_CHECKING:
    from lakeferry_http.downloader import HttpDownloaderSettings

_DEFAULT_PORTS = {"http": 80, "https": 443}

LOOKUP_TTL = 5.0
"""Seconds the guard's answer for a host and port is reused (see :class:`CheckedLookups`)."""
LOOKUP_ENTRIES = 1024
"""Hosts (with their ports) whose answers are kept at most; the oldest goes first."""


class Pinned(NamedTuple):
    """The guard's answer for a host and port: the addresses a connection may reach, and the
    ``CURLOPT_RESOLVE`` entries pinning a name to them (none for an IP literal)."""

    allowed: list[IPAddress]
    resolve: list[str]


class CheckedLookups:
    """The guard's recent answers, so a burst of requests to one host resolves it once.

    An answer is kept for ``ttl`` seconds (trio's clock), at most ``size`` of them. Only what
    :meth:`NetGuard.resolve` returned is kept: the allowed addresses alone; a refusal
    (``blocked``), a failure or a cancelled lookup leaves nothing behind. Requests for a host
    being resolved wait for that lookup instead of starting their own; when it fails, each
    asks the guard itself (so each gets its own answer and its own error).
    """

    def __init__(self, guard: NetGuard, *, ttl: float = LOOKUP_TTL, size: int = LOOKUP_ENTRIES):
        self._guard = guard
        self._ttl = ttl
        self._size = size
        self._answers: dict[tuple[str, int], tuple[float, Pinned]] = {}
        self._resolving: dict[tuple[str, int], trio.Event] = {}

    async def resolve(self, host: str, port: int, timeout: float) -> Pinned:  # noqa: ASYNC109
        key = (host, port)
        kept = self._fresh(key)
        if kept is not None:
            await trio.lowlevel.checkpoint()
            return kept
        busy = self._resolving.get(key)
        if busy is not None:  # another request is resolving this host: its answer will do
            with trio.move_on_after(timeout) as waited:
                await busy.wait()
            kept = self._fresh(key)
            if kept is not None:
                return kept
            if waited.cancelled_caught:
                raise TransientError(Reason.TIMEOUT, f"resolving {host} timed out")
            return await self._ask(host, port, timeout)  # it failed: ask for ourselves
        done = self._resolving[key] = trio.Event()
        try:
            return await self._ask(host, port, timeout)
        finally:
            del self._resolving[key]
            done.set()

    def _fresh(self, key: tuple[str, int]) -> Pinned | None:
        found = self._answers.get(key)
        if found is None:
            return None
        if trio.current_time() < found[0]:
            return found[1]
        del self._answers[key]
        return None

    async def _ask(self, host: str, port: int, timeout: float) -> Pinned:  # noqa: ASYNC109
        allowed = await self._guard.resolve(host, port, timeout=timeout)
        resolve: list[str] = []
        if parse_ip_literal(host) is None:  # a name: pin it to the checked addresses
            addresses = ",".join(f"[{ip}]" if ip.version == 6 else str(ip) for ip in allowed)
            resolve = [f"+{host}:{port}:{addresses}"]
        pinned = Pinned(allowed, resolve)
        while len(self._answers) >= self._size:
            del self._answers[next(iter(self._answers))]  # the oldest
        self._answers[(host, port)] = (trio.current_time() + self._ttl, pinned)
        return pinned


def curl_error(outcome: Outcome, shown: str) -> PipelineError:
    """The error a failed transfer's result means for a download."""
    if outcome.refusal is not None:
        return outcome.refusal
    code = outcome.code
    text = f"GET {shown}: {outcome.message or f'libcurl error {code}'}"
    if code == pycurl.E_OPERATION_TIMEDOUT:
        return TransientError(Reason.TIMEOUT, text)
    if code == pycurl.E_UNSUPPORTED_PROTOCOL:
        return PermanentError(Reason.UNSUPPORTED_SCHEME, text)
    if code == pycurl.E_URL_MALFORMAT:
        return PermanentError(Reason.MALFORMED, text)
    return TransientError(Reason.CONNECTION, text)


def _same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.raw_host, a.port) == (b.scheme, b.raw_host, b.port)


class CurlResponse:
    """A transfer's response as the download logic reads it: head parsed, body streamed."""

    def __init__(self, engine: CurlEngine, transfer: Transfer, shown: str) -> None:
        self._engine = engine
        self._transfer = transfer
        self._shown = shown
        lines = transfer.head or []
        status = lines[0].decode("latin-1").split(None, 2) if lines else []
        self.status_code = int(status[1]) if len(status) > 1 and status[1].isdigit() else 0
        reason = status[2].strip() if len(status) > 2 else ""
        if not reason:
            try:
                reason = HTTPStatus(self.status_code).phrase
            except ValueError:
                reason = ""
        self.reason_phrase = reason
        headers: dict[str, str] = {}
        for raw in lines[1:]:
            name, sep, value = raw.decode("latin-1").partition(":")
            if not sep:
                continue
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        self.headers: Mapping[str, str] = headers

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        return self

    def __aiter__(self) -> CurlResponse:
        return self

    async def __anext__(self) -> bytes:
        transfer = self._transfer
        while True:
            if transfer.inbox:
                await trio.lowlevel.checkpoint_if_cancelled()
                if len(transfer.inbox) == 1:
                    chunk = transfer.inbox.popleft()
                else:
                    chunk = b"".join(transfer.inbox)
                    transfer.inbox.clear()
                transfer.unacked += len(chunk)
                if transfer.outcome is None and (
                    transfer.paused_seen or transfer.unacked >= HIGH_WATER // 2
                ):
                    self._ack()
                return chunk
            outcome = transfer.outcome
            if outcome is not None:
                if outcome.code != 0:
                    raise curl_error(outcome, self._shown)
                raise StopAsyncIteration
            if transfer.paused_seen:
                self._ack()
            if not await self._engine.wait(transfer, self._engine.read_timeout):
                raise TransientError(
                    Reason.TIMEOUT,
                    f"GET {self._shown}: no data for {self._engine.read_timeout:g}s (read_timeout)",
                )

    def _ack(self) -> None:
        transfer = self._transfer
        self._engine.multi.ack(transfer, transfer.unacked)
        transfer.unacked = 0
        transfer.paused_seen = False


class CurlEngine:
    """GETs on libcurl's multi interface, driven by one worker thread."""

    def __init__(
        self, settings: HttpDownloaderSettings, guard: NetGuard, logger: logging.Logger
    ) -> None:
        self._settings = settings
        self._guard = guard
        self.read_timeout = float(settings.read_timeout)
        self.multi = MultiThread(
            EasyOptions(
                connect_timeout=settings.connect_timeout,
                verify_tls=settings.verify_tls,
                maxconnects=settings.clients * settings.pool_connections,
            ),
            guard,
            logger,
        )
        self._headers = {"User-Agent": settings.user_agent, **settings.headers}
        self.lookups = CheckedLookups(guard)
        """The guard's recent answers, reused for :data:`LOOKUP_TTL` seconds."""

    @property
    def connect_hook(self) -> ConnectHook | None:
        """Called with every address a socket is about to be opened to (tests spy with it)."""
        return self.multi.connect_hook

    @connect_hook.setter
    def connect_hook(self, hook: ConnectHook | None) -> None:
        self.multi.connect_hook = hook

    @property
    def in_flight(self) -> int:
        """Transfers on the multi handle now (started and not yet removed)."""
        return self.multi.in_flight

    async def wait(self, transfer: Transfer, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until the worker hands over something for ``transfer``; False on timeout."""
        event = transfer.event = trio.Event()
        with trio.move_on_after(timeout):
            await event.wait()
            return True
        return False

    @asynccontextmanager
    async def stream(
        self, url: str, headers: Mapping[str, str], shown: str
    ) -> AsyncIterator[Response]:
        s = self._settings
        first = target = self._parse(url, shown)
        hops = 0
        while True:
            sent = self._headers
            if "authorization" in (k.lower() for k in sent) and not _same_origin(first, target):
                sent = {k: v for k, v in sent.items() if k.lower() != "authorization"}
            transfer = await self._submit(target, {**sent, **headers}, shown)
            try:
                response = await self._head(transfer, shown)
                location = response.headers.get("location")
                if (
                    s.follow_redirects
                    and response.status_code in REDIRECT_STATUSES
                    and location is not None
                ):
                    hops += 1
                    if hops > s.max_redirects:
                        raise PermanentError(
                            Reason.HTTP_CLIENT_ERROR,
                            f"GET {shown}: Exceeded maximum allowed redirects.",
                        )
                    target = self._redirect(target, location, shown)
                    continue
                yield response
                return
            finally:
                if transfer.outcome is None:
                    self.multi.cancel(transfer)
                transfer.inbox.clear()  # what was not read, say after a limit, goes now

    def _parse(self, url: str, shown: str) -> httpx.URL:
        try:
            return httpx.URL(url)
        except httpx.InvalidURL:
            raise PermanentError(Reason.MALFORMED, f"invalid URL {shown}") from None
        except UnicodeError:  # idna.IDNAError from httpx's URL parser
            raise PermanentError(Reason.MALFORMED, f"invalid host name in {shown}") from None

    def _redirect(self, current: httpx.URL, location: str, shown: str) -> httpx.URL:
        """The next hop: ``location`` against ``current``, pre-flighted by the guard first
        (as text, before a URL parser that refuses ``0177.0.0.1`` could call it malformed)."""
        try:
            self._guard.check_url(urljoin(str(current), location))
        except PermanentError as exc:
            if exc.reason == Reason.BLOCKED:
                raise
            # Anything else about the Location is the URL parser's to report.
        try:
            target = current.join(location)
        except (httpx.InvalidURL, UnicodeError):
            raise TransientError(
                Reason.CONNECTION, f"GET {shown}: invalid URL in a redirect's Location"
            ) from None
        if target.scheme not in _DEFAULT_PORTS:
            raise PermanentError(
                Reason.UNSUPPORTED_SCHEME,
                f"GET {shown}: a redirect to an unsupported protocol '{target.scheme}://'",
            )
        return target

    async def _submit(self, target: httpx.URL, headers: Mapping[str, str], shown: str) -> Transfer:
        """Resolve and check the hop's host, pin it, and hand the GET to the worker."""
        scheme = target.scheme
        if scheme not in _DEFAULT_PORTS:
            raise PermanentError(
                Reason.UNSUPPORTED_SCHEME, f"GET {shown}: unsupported protocol '{scheme}://'"
            )
        host = target.raw_host.decode("ascii")
        if not host:
            raise PermanentError(Reason.MALFORMED, f"GET {shown}: URL without a host")
        port = target.port or _DEFAULT_PORTS[scheme]
        pinned = await self.lookups.resolve(host, port, self._settings.connect_timeout)
        transfer = Transfer(
            str(target),
            [f"{name}: {value}" for name, value in headers.items()],
            host,
            port,
            pinned.allowed,
            pinned.resolve,
        )
        self.multi.submit(transfer)
        return transfer

    async def _head(self, transfer: Transfer, shown: str) -> CurlResponse:
        """Wait for the response's head (or the transfer's end)."""
        patience = self._settings.connect_timeout + self.read_timeout
        while transfer.head is None:
            outcome = transfer.outcome
            if outcome is not None:
                if outcome.code:
                    raise curl_error(outcome, shown)
                raise TransientError(Reason.CONNECTION, f"GET {shown}: a response without a head")
            if not await self.wait(transfer, patience):
                raise TransientError(
                    Reason.TIMEOUT,
                    f"GET {shown}: no response within connect_timeout + read_timeout "
                    f"({patience:g}s)",
                )
        return CurlResponse(self, transfer, shown)

    def translate(self, exc: Exception, shown: str) -> PipelineError | None:
        return None  # this engine raises pipeline errors itself

    async def aclose(self) -> None:
        thread = self.multi.close()
        if thread is not None:
            await trio.to_thread.run_sync(thread.join)
        self.multi.release()
