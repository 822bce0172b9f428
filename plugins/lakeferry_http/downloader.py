"""The ``http`` downloader: streams ``http://`` and ``https://`` bodies into the cache.

Two engines speak HTTP for it, chosen by ``engine``: libcurl through pycurl (the default,
:mod:`lakeferry_http.curl_engine`: half the CPU per file, see bench/analysis.md) and httpx
(:mod:`lakeferry_http.httpx_engine`). Everything else is decided here, once, for both: what a
status means, resuming, size limits, slow transfers. Either way bodies are streamed piece by
piece as they arrive straight to the cache writer (which batches disk writes), never held
whole, and every connection, including each redirect hop, goes through the core's SSRF guard
(:class:`lakeferry.api.NetGuard`: non-public addresses are refused unless ``allow_networks``
or ``allow_hosts`` admit them).

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
  a blocked address, also as a redirect target (``blocked``), a URL scheme the engine cannot
  fetch (``unsupported_scheme``), an unusable URL (``malformed``);
- transient: 408/429 (``throttled``) and 5xx (``http_server_error``), both with ``retry_after``
  from ``Retry-After`` when given; timeouts, including ``total_timeout`` and a transfer slower
  than ``min_throughput`` (``timeout``); refused or reset connections, DNS failures, protocol
  errors and bodies shorter than announced (``connection``).

URLs in error messages are redacted (no userinfo, no query string: SAS tokens are secrets).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
import trio

from lakeferry.api import (
    ByteSize,
    DownloadTask,
    DownloadWriter,
    Duration,
    NetGuard,
    PermanentError,
    PluginContext,
    Reason,
    TransientError,
    guard_from_settings,
    redact_url,
)
from lakeferry_http.responses import (
    Engine,
    Response,
    content_length,
    content_range,
    is_encoded,
    parse_retry_after,
    status_error,
    validator_of,
)

__all__ = [
    "HttpDownloader",
    "HttpDownloaderSettings",
    "content_range",
    "parse_retry_after",
    "status_error",
    "validator_of",
]

Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class HttpDownloaderSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[downloaders.http]``."""

    engine: Literal["httpx", "curl"] = "curl"
    """What speaks HTTP: ``curl`` (libcurl's multi interface through pycurl, in one worker
    thread per downloader; half of httpx's CPU per small file, see bench/analysis.md), or
    ``httpx``."""

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
    """httpx: independent clients the downloads are spread over. curl: ``clients *
    pool_connections`` idle connections are kept open for reuse."""
    pool_connections: Positive = 8
    """httpx: connections each client may hold open (keep-alive included)."""
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


class HttpDownloader:
    """The ``http`` :class:`lakeferry.api.Downloader`, on the engine ``engine`` names."""

    supports_resume = True

    def __init__(self, settings: HttpDownloaderSettings, context: PluginContext) -> None:
        self._settings = settings
        self._log = context.logger
        self._guard = guard_from_settings(
            "downloaders.http", settings.allow_networks, settings.allow_hosts
        )
        self._engine: Engine
        if settings.engine == "curl":
            from lakeferry_http.curl_engine import CurlEngine  # pycurl only where it is used

            self._engine = CurlEngine(settings, self._guard, context.logger)
        else:
            from lakeferry_http.httpx_engine import HttpxEngine

            self._engine = HttpxEngine(settings, self._guard)

    @property
    def engine(self) -> Engine:
        """The engine speaking HTTP (:class:`~lakeferry_http.httpx_engine.HttpxEngine` or
        :class:`~lakeferry_http.curl_engine.CurlEngine`)."""
        return self._engine

    @property
    def guard(self) -> NetGuard:
        """The SSRF guard every connection passes (tests swap its ``resolver``)."""
        return self._guard

    async def fetch(self, task: DownloadTask, out: DownloadWriter) -> None:
        url = task.event.url
        shown = redact_url(url)
        self._guard.check_url(url)  # literal hosts and ports, before an engine parses the URL
        with trio.move_on_after(self._settings.total_timeout) as deadline:
            try:
                # A second request only when resuming failed and the file restarted.
                if not await self._request(url, shown, task.event.size, out):
                    await self._request(url, shown, task.event.size, out)
            except Exception as exc:
                error = self._engine.translate(exc, shown)
                if error is None:
                    raise
                raise error from exc
        if deadline.cancelled_caught:
            raise TransientError(
                Reason.TIMEOUT,
                f"GET {shown}: not complete within total_timeout "
                f"{self._settings.total_timeout!r} ({out.bytes_written} bytes received)",
            )

    async def _request(
        self, url: str, shown: str, expected_size: int | None, out: DownloadWriter
    ) -> bool:
        """One GET into ``out``; False when ``out`` was restarted and needs a plain request."""
        headers: dict[str, str] = {}
        if out.offset > 0:
            if out.validator is None:
                await out.restart()
            else:
                headers = {"Range": f"bytes={out.offset}-", "If-Range": out.validator}
        async with self._engine.stream(url, headers, shown) as response:
            if headers and response.status_code == 416:  # kept bytes beyond the content now
                await out.restart()
                return False
            error = status_error(response, shown)
            if error is not None:
                raise error
            encoded = is_encoded(response)
            length = None if encoded else content_length(response)
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
        response: Response,
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
            async for chunk in response.aiter_bytes():
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
        await self._engine.aclose()
