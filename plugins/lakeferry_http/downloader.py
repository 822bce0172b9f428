"""The ``http`` downloader: streams ``http://`` and ``https://`` bodies into the cache with httpx.

Resource handling: a handful of small httpx clients instead of one big pool. httpcore's pool
scans every connection for every request, so one pool shared by 50 download slots collapses
(see DESIGN.md, performance notes); each download checks out the least busy of ``clients``
clients, each holding at most ``pool_connections`` connections. Bodies are streamed in chunks
straight to the cache writer, never held whole. Every connection, including each redirect hop,
goes through :class:`~lakeferry_http.guard.GuardedBackend`, which refuses private and other
non-public addresses unless ``allow_networks`` admits them. Proxy variables and ``.netrc`` from
the environment are ignored (``trust_env`` off): where a download goes is decided by config.

Error handling, by what the retry machinery should do:

- permanent: 404/410 (``not_found``), other 4xx except 408/429 (``http_client_error``), a
  redirect not followed or too many of them, a size over ``max_size`` announced or reached
  (``too_large``), a ``Content-Length`` that contradicts the event's size (``size_mismatch``),
  a blocked address (``blocked``), a URL scheme httpx cannot fetch (``unsupported_scheme``);
- transient: 408/429 (``throttled``) and 5xx (``http_server_error``), both with ``retry_after``
  from ``Retry-After`` when given; timeouts, including ``total_timeout`` (``timeout``); refused
  or reset connections, DNS failures, protocol errors and bodies shorter than announced
  (``connection``).

URLs in error messages are redacted (no userinfo, no query string: SAS tokens are secrets).
"""

from __future__ import annotations

import datetime as dt
import email.utils
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
    CacheWriter,
    ConfigError,
    DownloadTask,
    Duration,
    PermanentError,
    PipelineError,
    PluginContext,
    Reason,
    TransientError,
    redact_url,
)
from lakeferry_http.guard import AddressPolicy, GuardedBackend

CHUNK_SIZE = 256 * 1024
"""Bytes per ``out.write``: large enough that the cache's thread hops stay rare."""

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

    def __init__(self, settings: HttpDownloaderSettings, context: PluginContext) -> None:
        self._settings = settings
        self._log = context.logger
        try:
            policy = AddressPolicy(settings.allow_networks)
        except ValueError as exc:
            raise ConfigError("downloaders.http.allow_networks", str(exc)) from exc
        self._backend = GuardedBackend(policy)
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
        )

    @property
    def pool(self) -> ClientPool:
        return self._pool

    async def fetch(self, task: DownloadTask, out: CacheWriter) -> None:
        url = task.event.url
        shown = redact_url(url)
        with (
            self._pool.checkout() as client,
            trio.move_on_after(self._settings.total_timeout) as deadline,
        ):
            try:
                await self._stream(client, url, shown, task.event.size, out)
            except httpx.InvalidURL as exc:
                raise PermanentError(Reason.MALFORMED, f"invalid URL {shown}") from exc
            except httpx.HTTPError as exc:
                raise transport_error(exc, shown) from exc
        if deadline.cancelled_caught:
            raise TransientError(
                Reason.TIMEOUT,
                f"GET {shown}: not complete within total_timeout "
                f"{self._settings.total_timeout!r} ({out.bytes_written} bytes received)",
            )

    async def _stream(
        self,
        client: httpx.AsyncClient,
        url: str,
        shown: str,
        expected_size: int | None,
        out: CacheWriter,
    ) -> None:
        max_size = self._settings.max_size
        async with client.stream("GET", url) as response:
            error = status_error(response, shown)
            if error is not None:
                raise error
            # A body with a content coding (sent although we asked for identity) is decoded
            # below, so its length on the wire says nothing about the file's size.
            encoded = response.headers.get("content-encoding", "identity") != "identity"
            length = None if encoded else _content_length(response)
            if length is not None and length > max_size:
                raise PermanentError(
                    Reason.TOO_LARGE, f"GET {shown}: {length} bytes exceed max_size {max_size}"
                )
            if length is not None and expected_size is not None and length != expected_size:
                raise PermanentError(
                    Reason.SIZE_MISMATCH,
                    f"GET {shown}: server announces {length} bytes, the event {expected_size}",
                )
            received = 0
            chunks = response.aiter_bytes(CHUNK_SIZE)
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
                    await out.write(chunk)
            except BaseException:
                await _abandon_body(response, chunks)
                raise
            if length is not None and received < length:
                raise TransientError(
                    Reason.CONNECTION, f"GET {shown}: body ended after {received} of {length} bytes"
                )

    async def aclose(self) -> None:
        await self._pool.aclose()
