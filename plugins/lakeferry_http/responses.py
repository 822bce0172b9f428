"""What an HTTP response means for a download, whichever engine fetched it.

Both engines of the ``http`` downloader (httpx and libcurl) hand the download logic a response
with a status, a reason phrase and headers (looked up by lower-case name); the functions here
turn those into the retry machinery's terms (:func:`status_error`), the validator a later
attempt may resume with (:func:`validator_of`), the span of a ``206`` (:func:`content_range`)
and the announced length (:func:`content_length`).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from lakeferry.api import PermanentError, PipelineError, Reason, TransientError

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
"""The statuses a client follows when they carry a ``Location`` (as httpx does)."""


class ResponseHead(Protocol):
    """A response's status line and headers (``headers.get`` takes lower-case names)."""

    @property
    def status_code(self) -> int: ...

    @property
    def reason_phrase(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


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


def status_error(response: ResponseHead, shown: str) -> PipelineError | None:
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


def is_encoded(response: ResponseHead) -> bool:
    """The body has a content coding (sent although we asked for identity): engines decode
    it, so its length on the wire says nothing about the file's size, nor do ranges."""
    return response.headers.get("content-encoding", "identity") != "identity"


def validator_of(response: ResponseHead) -> str | None:
    """The strong validator ``If-Range`` may carry for this response's content, if any."""
    if is_encoded(response):
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


def content_range(response: ResponseHead) -> tuple[int, int, int | None] | None:
    """(first, last, complete length or None) of a 206's ``Content-Range``; None if unusable."""
    m = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
    if m is None:
        return None
    first, last = int(m[1]), int(m[2])
    total = None if m[3] == "*" else int(m[3])
    if last < first or (total is not None and last >= total):
        return None
    return first, last, total


def content_length(response: ResponseHead) -> int | None:
    """The announced ``Content-Length``; None when absent or not a number."""
    value = response.headers.get("content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


class Response(ResponseHead, Protocol):
    """A response whose body is read as it arrives, in pieces of the engine's choosing."""

    def aiter_bytes(self) -> AsyncIterator[bytes]: ...


class Engine(Protocol):
    """How the ``http`` downloader speaks HTTP: httpx (:mod:`lakeferry_http.httpx_engine`) or
    libcurl (:mod:`lakeferry_http.curl_engine`). The download logic (resuming, limits, slow
    transfers) is the downloader's and the same for both; an engine only sends a GET,
    following redirects as configured with every hop through the network guard, and streams
    the final response."""

    def stream(
        self, url: str, headers: Mapping[str, str], shown: str
    ) -> AbstractAsyncContextManager[Response]:
        """GET ``url`` with ``headers``; the final response (after redirects) while the block
        runs. Leaving the block early abandons the transfer at once (its connection closed)."""

    def translate(self, exc: Exception, shown: str) -> PipelineError | None:
        """The pipeline error an exception of the engine's library means (None: not one)."""

    async def aclose(self) -> None: ...
