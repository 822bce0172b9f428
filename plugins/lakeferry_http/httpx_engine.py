"""The ``http`` downloader's httpx engine (``engine = "httpx"``; the default is ``"curl"``).

Resource handling: a handful of small httpx clients instead of one big pool. httpcore's pool
scans every connection for every request, so one pool shared by 50 download slots collapses
(see docs/design.md, performance notes); each request checks out the least busy of
``clients`` clients, each holding at most ``pool_connections`` connections. Every connection,
including each redirect hop, goes through :class:`~lakeferry_http.guard.GuardedBackend`,
which applies the core's SSRF guard, and every redirect's ``Location`` through
:func:`~lakeferry_http.guard.redirect_hook`. Proxy variables and ``.netrc`` from the
environment are ignored (``trust_env`` off): where a download goes is decided by config.

Error handling: httpx's exceptions become pipeline errors in :meth:`HttpxEngine.translate`
(timeouts ``timeout``; too many redirects ``http_client_error``; a scheme httpx cannot fetch
``unsupported_scheme``; an unusable URL or host name ``malformed``; anything else on the
wire ``connection``).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING

import httpcore
import httpx
import trio

from lakeferry.api import NetGuard, PermanentError, PipelineError, Reason, TransientError
from lakeferry_http.guard import GuardedBackend, redirect_hook
from lakeferry_http.responses import Response

if TYPE_CHECKING:
    from lakeferry_http.downloader import HttpDownloaderSettings


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
    """A few httpx clients; each request borrows the least busy one."""

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


class HttpxResponse:
    """An httpx response as the download logic reads it; remembers the body iterator it
    handed out, so that an early exit can finish it (:func:`_abandon_body`)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.chunks: AsyncIterator[bytes] | None = None

    @property
    def status_code(self) -> int:
        return self.response.status_code

    @property
    def reason_phrase(self) -> str:
        return self.response.reason_phrase

    @property
    def headers(self) -> Mapping[str, str]:
        return self.response.headers

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        self.chunks = self.response.aiter_bytes()
        return self.chunks


class HttpxEngine:
    """GETs through a few small httpx clients on the guarded network backend."""

    def __init__(self, settings: HttpDownloaderSettings, guard: NetGuard) -> None:
        self._settings = settings
        self._guard = guard
        self.backend = GuardedBackend(guard)
        """The network backend every connection goes through (tests swap its ``inner``)."""
        ssl_context = httpx.create_ssl_context(verify=settings.verify_tls, trust_env=False)
        self.pool = ClientPool([self._client(ssl_context) for _ in range(settings.clients)])

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
            network_backend=self.backend,
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

    @asynccontextmanager
    async def stream(
        self, url: str, headers: Mapping[str, str], shown: str
    ) -> AsyncIterator[Response]:
        with self.pool.checkout() as client:
            async with client.stream("GET", url, headers=headers) as response:
                body = HttpxResponse(response)
                try:
                    yield body
                except BaseException:
                    if body.chunks is not None:
                        await _abandon_body(response, body.chunks)
                    raise

    def translate(self, exc: Exception, shown: str) -> PipelineError | None:
        if isinstance(exc, httpx.InvalidURL):
            return PermanentError(Reason.MALFORMED, f"invalid URL {shown}")
        if isinstance(exc, UnicodeError):  # idna.IDNAError from httpx's URL parser
            return PermanentError(Reason.MALFORMED, f"invalid host name in {shown}")
        if isinstance(exc, httpx.HTTPError):
            return transport_error(exc, shown)
        return None

    async def aclose(self) -> None:
        await self.pool.aclose()
