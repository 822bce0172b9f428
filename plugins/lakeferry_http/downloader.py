"""The ``http`` downloader: streams ``http://`` and ``https://`` bodies into the cache with httpx.

Resource handling: a handful of small httpx clients instead of one big pool. httpcore's pool
scans every connection for every request, so one pool shared by 50 download slots collapses
(see DESIGN.md, performance notes); each download checks out the least busy of ``clients``
clients, each holding at most ``pool_connections`` connections. Bodies are streamed piece by
piece as they arrive straight to the cache writer (which batches disk writes), never held
whole. Every connection, including each redirect hop, goes through
:class:`~lakeferry_http.guard.GuardedBackend`, which applies the core's SSRF guard
(:class:`lakeferry.api.NetGuard`: non-public addresses are refused unless ``allow_networks`` or
``allow_hosts`` admit them). Proxy variables and ``.netrc`` from the environment are ignored
(``trust_env`` off): where a download goes is decided by config.

Resuming: when the cache hands over bytes kept from an earlier attempt, the request asks for
the rest (``Range: bytes=<offset>-``) on the condition that the content is unchanged
(``If-Range: <validator>``). A ``206`` starting at the offset continues the file; a ``200``
(the content changed, or the server ignores ranges) restarts it from zero with the body at
hand; a ``416`` or a ``206`` for other bytes restarts it with a second, plain request. A
response's validator is its strong ETag, else a strong Last-Modified (at least a second before
its Date), and none when the body has a content coding: without a validator nothing is kept.

Slow transfers: besides ``read_timeout`` (silence) and ``total_timeout``, a body must bring at
least ``min_throughput`` bytes in every ``min_throughput_window``, so a server that drips a
byte now and then cannot hold a download slot for an hour.

Error handling, by what the retry machinery should do:

- permanent: 404/410 (``not_found``), other 4xx except 408/429 (``http_client_error``), a
  redirect not followed or too many of them, a size over ``max_size`` announced or reached
  (``too_large``), a ``Content-Length`` that contradicts the event's size (``size_mismatch``),
  a blocked address, also as a redirect target (``blocked``), a URL scheme httpx cannot fetch
  (``unsupported_scheme``), an unusable URL (``malformed``);
- transient: 408/429 (``throttled``) and 5xx (``http_server_error``), both with ``retry_after``
  from ``Retry-After`` when given; timeouts, including ``total_timeout`` and a transfer slower
  than ``min_throughput`` (``timeout``); refused or reset connections, DNS failures, protocol
  errors and bodies shorter than announced (``connection``).

URLs in error messages are redacted (no userinfo, no query string: SAS tokens are secrets).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Annotated

import httpcore
import httpx
import msgspec
import trio

from lakeferry.api import (
    ByteSize,
    DownloadTask,
    DownloadWriter,
    Duration,
    NetGuard,
    PermanentError,
    PipelineError,
    PluginContext,
    Reason,
    TransientError,
    guard_from_settings,
    redact_url,
)
from lakeferry_http.guard import GuardedBackend, redirect_hook

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)

Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class HttpDownloaderSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[downloaders.http]``."""

    connect_timeout: Duration = Duration(10)
    """Seconds to resolve the host and open a connection (each redirect hop too)."""
    read_timeout: Duration = Duration(60)
    """Longest silence while waiting for the response or the next piece of the body."""
    total_timeout: Duration = Duration(3600)
    """The whole download, redirects and body included."""
    max_size: ByteSize = ByteSize(20 * 2**30)
    """Larger bodies are refused (``too_large``), before reading when announced."""
    user_agent: str = "lakeferry"
    headers: dict[str, str] = {}
    """Extra request headers sent with every download."""
    clients: Positive = 8
    """Independent httpx clients the downloads are spread over."""
    pool_connections: Positive = 8
    """Connections each client may hold open (keep-alive included)."""
    verify_tls: bool = True
    follow_redirects: bool = True
    max_redirects: NonNegative = 5
    allow_networks: list[str] = []
    """CIDR networks to connect to although not public (``["10.1.0.0/16", "127.0.0.1/32"]``)."""
    allow_hosts: list[str] = []
    """Hosts to connect to although not public: ``name``, ``name:port``, ``*.domain`` (names
    under it), an IP literal or ``[IPv6]:port`` (``["mirror.internal", "127.0.0.1:8080"]``)."""
    min_throughput: ByteSize = ByteSize(1024)
    """A body must bring at least this many bytes in every ``min_throughput_window`` (0: off)."""
    min_throughput_window: Duration = Duration(30)
    """See ``min_throughput``; slower transfers fail as ``timeout`` (transient)."""


def parse_retry_after(value: str | None, now: dt.datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - now).total_seconds())


def status_error(response: httpx.Response, shown: str) -> PipelineError | None:
    """The error a response's status means for a download, or None when it is a success."""
    status = response.status_code
    if 200 <= status < 300:
        return None
    text = f"GET {shown}: HTTP {status} {response.reason_phrase}".rstrip()
    retry_after = parse_retry_after(response.headers.get("retry-after"), dt.datetime.now(dt.UTC))
    if status in (404, 410):
        return PermanentError(Reason.NOT_FOUND, text)
    if status in (408, 429):
        return TransientError(Reason.THROTTLED, text, retry_after=retry_after)
    if 300 <= status < 400:
        return PermanentError(Reason.HTTP_CLIENT_ERROR, f"{text} (redirect not followed)")
    if 400 <= status < 500:
        return PermanentError(Reason.HTTP_CLIENT_ERROR, text)
    return TransientError(Reason.HTTP_SERVER_ERROR, text, retry_after=retry_after)


def transport_error(exc: httpx.HTTPError, shown: str) -> PipelineError:
    """The error an httpx exception means for a download."""
    detail = str(exc) or type(exc).__name__
    text = f"GET {shown}: {detail}"
    if isinstance(exc, httpx.TimeoutException):
        return TransientError(Reason.TIMEOUT, text)
    if isinstance(exc, httpx.TooManyRedirects):
        return PermanentError(Reason.HTTP_CLIENT_ERROR, text)
    if isinstance(exc, httpx.UnsupportedProtocol):
        return PermanentError(Reason.UNSUPPORTED_SCHEME, text)
    return TransientError(Reason.CONNECTION, text)


def validator_of(response: httpx.Response) -> str | None:
    """The strong validator ``If-Range`` may carry for this response's content, if any."""
    if response.headers.get("content-encoding", "identity") != "identity":
        return None  # ranges would count encoded bytes; we store decoded ones
    etag = response.headers.get("etag")
    if etag:
        return None if etag.startswith("W/") else etag
    modified = response.headers.get("last-modified")
    date = response.headers.get("date")
    if not modified or not date:
        return None
    try:
        strong = (
            email.utils.parsedate_to_datetime(date) - email.utils.parsedate_to_datetime(modified)
        ).total_seconds() >= 1
    except (TypeError, ValueError, IndexError):
        return None
    return modified if strong else None  # RFC 9110 13.1.5: only a strong date


def content_range(response: httpx.Response) -> tuple[int, int, int | None] | None:
    """(first, last, complete length or None) of a 206's ``Content-Range``; None if unusable."""
    m = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
    if m is None:
        return None
    first, last = int(m[1]), int(m[2])
    total = None if m[3] == "*" else int(m[3])
    if last < first or (total is not None and last >= total):
        return None
    return first, last, total


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


async def _abandon_body(response: httpx.Response, chunks: AsyncIterator[bytes]) -> None:
    """Finish reading a body we stopped reading early (a limit, a cancellation, a failed write).

    httpx reads a body through a chain of nested async generators and closing the outer one
    leaves the inner ones suspended, to be finalized by the garbage collector (trio then warns;
    encode/httpx#3686). Closing the response closes the connection, so resuming the chain makes
    the innermost read fail at once and every generator finishes. Shielded: this never blocks.
    """
    with trio.CancelScope(shield=True):
        await response.aclose()
        try:
            async for _ in chunks:
                pass
        except httpx.HTTPError:
            pass


class ClientPool:
    """A few httpx clients; each download borrows the least busy one."""

    def __init__(self, clients: list[httpx.AsyncClient]) -> None:
        self.clients = clients
        self.busy = [0] * len(clients)

    @contextmanager
    def checkout(self) -> Iterator[httpx.AsyncClient]:
        index = min(range(len(self.clients)), key=self.busy.__getitem__)
        self.busy[index] += 1
        try:
            yield self.clients[index]
        finally:
            self.busy[index] -= 1

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


class HttpDownloader:
    """The ``http`` :class:`lakeferry.api.Downloader`."""

    supports_resume = True

    def __init__(self, settings: HttpDownloaderSettings, context: PluginContext) -> None:
        self._settings = settings
        self._log = context.logger
        self._guard = guard_from_settings(
            "downloaders.http", settings.allow_networks, settings.allow_hosts
        )
        self._backend = GuardedBackend(self._guard)
        ssl_context = httpx.create_ssl_context(verify=settings.verify_tls, trust_env=False)
        self._pool = ClientPool([self._client(ssl_context) for _ in range(settings.clients)])

    def _client(self, ssl_context: ssl.SSLContext) -> httpx.AsyncClient:
        s = self._settings
        limits = httpx.Limits(
            max_connections=s.pool_connections, max_keepalive_connections=s.pool_connections
        )
        transport = httpx.AsyncHTTPTransport(verify=ssl_context, limits=limits, trust_env=False)
        # httpx offers no way to pass a network backend; its transport is a thin shell around
        # this pool (httpx is pinned below 0.29, and the guard's tests fail if this stops working).
        transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=self._backend,
        )
        return httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(
                connect=s.connect_timeout, read=s.read_timeout, write=s.read_timeout, pool=None
            ),
            headers={"User-Agent": s.user_agent, "Accept-Encoding": "identity", **s.headers},
            follow_redirects=s.follow_redirects,
            max_redirects=s.max_redirects,
            trust_env=False,
            event_hooks={"response": [redirect_hook(self._guard)] if s.follow_redirects else []},
        )

    @property
    def pool(self) -> ClientPool:
        return self._pool

    @property
    def guard(self) -> NetGuard:
        """The SSRF guard every connection passes (tests swap its ``resolver``)."""
        return self._guard

    @property
    def backend(self) -> GuardedBackend:
        return self._backend

    async def fetch(self, task: DownloadTask, out: DownloadWriter) -> None:
        url = task.event.url
        shown = redact_url(url)
        self._guard.check_url(url)  # literal hosts and ports, before httpx parses the URL
        with (
            self._pool.checkout() as client,
            trio.move_on_after(self._settings.total_timeout) as deadline,
        ):
            try:
                # A second request only when resuming failed and the file restarted.
                if not await self._request(client, url, shown, task.event.size, out):
                    await self._request(client, url, shown, task.event.size, out)
            except httpx.InvalidURL as exc:
                raise PermanentError(Reason.MALFORMED, f"invalid URL {shown}") from exc
            except UnicodeError as exc:  # idna.IDNAError from httpx's URL parser
                raise PermanentError(Reason.MALFORMED, f"invalid host name in {shown}") from exc
            except httpx.HTTPError as exc:
                raise transport_error(exc, shown) from exc
        if deadline.cancelled_caught:
            raise TransientError(
                Reason.TIMEOUT,
                f"GET {shown}: not complete within total_timeout "
                f"{self._settings.total_timeout!r} ({out.bytes_written} bytes received)",
            )

    async def _request(
        self,
        client: httpx.AsyncClient,
        url: str,
        shown: str,
        expected_size: int | None,
        out: DownloadWriter,
    ) -> bool:
        """One GET into ``out``; False when ``out`` was restarted and needs a plain request."""
        headers: dict[str, str] = {}
        if out.offset > 0:
            if out.validator is None:
                await out.restart()
            else:
                headers = {"Range": f"bytes={out.offset}-", "If-Range": out.validator}
        async with client.stream("GET", url, headers=headers) as response:
            if headers and response.status_code == 416:  # kept bytes beyond the content now
                await out.restart()
                return False
            error = status_error(response, shown)
            if error is not None:
                raise error
            # A body with a content coding (sent although we asked for identity) is decoded
            # below, so its length on the wire says nothing about the file's size.
            encoded = response.headers.get("content-encoding", "identity") != "identity"
            length = None if encoded else _content_length(response)
            if response.status_code == 206:
                span = content_range(response)
                if not headers or encoded or span is None or span[0] != out.offset:
                    await out.restart()  # not the bytes we asked for
                    return False
                total = span[2]
                if length is None or length != span[1] - span[0] + 1:
                    length = span[1] - span[0] + 1
            else:
                if out.bytes_written:
                    await out.restart()  # the content changed, or ranges are not supported
                out.set_validator(validator_of(response))
                total = length
            await self._body(response, shown, expected_size, total, length, out)
        return True

    async def _body(
        self,
        response: httpx.Response,
        shown: str,
        expected_size: int | None,
        total: int | None,
        length: int | None,
        out: DownloadWriter,
    ) -> None:
        """Stream the body after ``out.bytes_written`` kept bytes; ``total`` is the whole
        file's announced size, ``length`` this body's (None: unknown)."""
        s = self._settings
        max_size = s.max_size
        if total is not None and total > max_size:
            raise PermanentError(
                Reason.TOO_LARGE, f"GET {shown}: {total} bytes exceed max_size {max_size}"
            )
        if total is not None and expected_size is not None and total != expected_size:
            raise PermanentError(
                Reason.SIZE_MISMATCH,
                f"GET {shown}: server announces {total} bytes, the event {expected_size}",
            )
        if total is not None:
            await out.expect_size(total)  # room for all of it, or too_large now
        start = received = out.bytes_written
        floor, window = s.min_throughput, s.min_throughput_window
        watching = floor > 0 and window > 0
        watchdog = trio.CancelScope()
        if watching:
            watchdog.deadline = trio.current_time() + window
        in_window = 0
        with watchdog:
            chunks = response.aiter_bytes()
            try:
                async for chunk in chunks:
                    received += len(chunk)
                    if expected_size is not None and received > expected_size:
                        raise PermanentError(
                            Reason.SIZE_MISMATCH,
                            f"GET {shown}: body exceeds the event's size {expected_size}",
                        )
                    if received > max_size:
                        raise PermanentError(
                            Reason.TOO_LARGE, f"GET {shown}: body exceeds max_size {max_size}"
                        )
                    in_window += len(chunk)
                    if watching and in_window >= floor:
                        in_window = 0
                        watchdog.deadline = trio.current_time() + window
                    await out.write(chunk)
            except BaseException:
                await _abandon_body(response, chunks)
                raise
        if watchdog.cancelled_caught:
            raise TransientError(
                Reason.TIMEOUT,
                f"GET {shown}: fewer than {floor} bytes in {window!r} (min_throughput), "
                f"{received} bytes received",
            )
        if length is not None and received - start < length:
            raise TransientError(
                Reason.CONNECTION,
                f"GET {shown}: body ended after {received - start} of {length} bytes",
            )

    async def aclose(self) -> None:
        await self._pool.aclose()
