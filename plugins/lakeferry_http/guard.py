"""The SSRF guard inside httpx: a network backend that checks every connection it makes.

The policy is the core's :class:`lakeferry.api.NetGuard` (see its module for what is refused
and why). This module puts it where httpx cannot go around it: httpcore asks
:class:`GuardedBackend` to connect for the first request *and for every redirect hop*; the
backend resolves the host once through the guard, connects to a checked address (never to the
name again), and checks the peer address of the socket it got. :func:`redirect_hook` also runs
the guard's text pre-flight on every ``Location`` before httpx parses it, so a redirect to
``http://0177.0.0.1/`` ends as ``blocked`` rather than as an unparseable URL.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urljoin

import httpcore
import httpx
import trio

from lakeferry.api import NetGuard, PermanentError, Reason


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's trio backend, connecting only to addresses the guard allows."""

    def __init__(self, guard: NetGuard, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.guard = guard
        self.inner = inner if inner is not None else httpcore.TrioBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        allowed = await self.guard.resolve(host, port, timeout=timeout)
        error: httpcore.ConnectError | None = None
        for ip in allowed:
            try:
                stream = await self.inner.connect_tcp(
                    str(ip),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                error = exc
                continue
            try:
                self.guard.check_peer(host, port, stream.get_extra_info("server_addr"), allowed)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await stream.aclose()
                raise
            return stream
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise PermanentError(Reason.BLOCKED, "unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)


def redirect_hook(guard: NetGuard) -> Callable[[httpx.Response], Awaitable[None]]:
    """An httpx response hook: pre-flight check of every redirect's ``Location``."""

    async def check_location(response: httpx.Response) -> None:
        location = response.headers.get("location")
        if location is None or not response.is_redirect:
            return
        try:
            guard.check_url(urljoin(str(response.request.url), location))
        except PermanentError as exc:
            if exc.reason == Reason.BLOCKED:
                raise
            # Anything else about the Location is httpx's to report (a protocol error).

    return check_location
