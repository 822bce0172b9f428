"""``DownloaderConformance``: what every :class:`lakeferry.api.Downloader` must do.

Subclass it in a test module and provide two fixtures:

- ``make_downloader`` → ``Callable[[], Downloader]``: builds a fresh downloader (its settings
  chosen by the test: short timeouts, the test server allowed through the network guard);
- ``download_cases`` → :class:`DownloadCases` (a plain, not async, fixture): URLs of the
  downloader's scheme for each case. A case left ``None`` skips its test (``url_to`` is only
  for downloaders that open network connections, and for those it is the SSRF contract).

The checks: a body arrives whole and hashes right; a large body arrives in chunks no larger
than ``max_chunk`` (the downloader streams, it never holds a file); a cancellation mid-transfer
propagates, writes nothing more, and leaves nothing in the cache once the writer is aborted,
and the downloader still works afterwards; not-found is ``PermanentError(not_found)``, a
server error and a timeout are ``TransientError`` (the latter with reason ``timeout``); and a
URL naming a loopback address is refused ``PermanentError(blocked)`` before any connection
reaches the listener the test opened there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
import trio

from lakeferry.api import Downloader, PermanentError, PipelineError, Reason, TransientError
from lakeferry.testing.memory import ChunkRecorder, MemoryCache, make_task

MiB = 2**20


@dataclass(frozen=True)
class RemoteFile:
    """A URL whose body the test knows: its size and sha256 (hex)."""

    url: str
    size: int
    sha256: str


@dataclass(frozen=True)
class DownloadCases:
    """The URLs a downloader's conformance tests fetch."""

    small: RemoteFile
    """An ordinary file (a few KiB)."""
    large: RemoteFile
    """A file of at least 4 times ``max_chunk`` bytes (8 MiB or more with the default)."""
    not_found: str | None = None
    """A URL whose file does not exist: ``PermanentError(not_found)``."""
    server_error: str | None = None
    """A URL the server fails on for now (HTTP 5xx or the like): ``TransientError``."""
    timeout: str | None = None
    """A URL that answers too slowly for the downloader's settings: ``TransientError(timeout)``."""
    url_to: Callable[[str, int], str] | None = None
    """Network downloaders: a URL of the scheme to ``host`` and ``port`` (``"127.0.0.1"``,
    ``"localhost"``); the guard test opens a listener there and expects ``blocked``."""
    max_chunk: int = 2 * MiB
    """The largest chunk a single ``write`` may carry."""


@asynccontextmanager
async def opened(make: Callable[[], Downloader]) -> AsyncIterator[Downloader]:
    downloader = make()
    try:
        yield downloader
    finally:
        with trio.CancelScope(shield=True):
            await downloader.aclose()


class DownloaderConformance:
    """The downloader contract; subclass with ``make_downloader`` and ``download_cases``."""

    pytestmark = pytest.mark.trio
    deadline: float = 60.0
    """Seconds any single fetch in these tests may take before the test fails."""

    async def _fetch(self, downloader: Downloader, url: str, out: ChunkRecorder) -> None:
        with trio.fail_after(self.deadline):
            await downloader.fetch(make_task(url), out)

    async def _failure(self, make: Callable[[], Downloader], url: str) -> PipelineError:
        out = ChunkRecorder()
        async with opened(make) as downloader:
            with pytest.raises(PipelineError) as info:
                await self._fetch(downloader, url, out)
        return info.value

    async def test_fetches_the_whole_body(
        self, make_downloader: Callable[[], Downloader], download_cases: DownloadCases
    ) -> None:
        small = download_cases.small
        out = ChunkRecorder()
        async with opened(make_downloader) as downloader:
            await self._fetch(downloader, small.url, out)
        assert (out.bytes_written, out.hexdigest()) == (small.size, small.sha256)

    async def test_streams_large_bodies_in_bounded_chunks(
        self, make_downloader: Callable[[], Downloader], download_cases: DownloadCases
    ) -> None:
        large = download_cases.large
        assert large.size >= 4 * download_cases.max_chunk, "the large file is too small"
        out = ChunkRecorder()
        async with opened(make_downloader) as downloader:
            await self._fetch(downloader, large.url, out)
        assert (out.bytes_written, out.hexdigest()) == (large.size, large.sha256)
        assert out.max_chunk <= download_cases.max_chunk, "a write carried too large a chunk"
        assert out.chunks >= 4

    async def test_cancellation_mid_transfer_commits_nothing(
        self, make_downloader: Callable[[], Downloader], download_cases: DownloadCases
    ) -> None:
        cache = MemoryCache()
        scope = trio.CancelScope()
        cache.on_write = lambda writer: scope.cancel()
        async with opened(make_downloader) as downloader:
            pending = await cache.create("key")
            with scope, trio.fail_after(self.deadline):
                await downloader.fetch(make_task(download_cases.large.url), pending)
            assert scope.cancelled_caught, "the fetch finished or swallowed the cancellation"
            assert pending.chunks <= 2, "writes went on after the cancellation"
            await pending.abort()
            assert await cache.lookup("key") is None
            out = ChunkRecorder()  # the downloader is still usable
            await self._fetch(downloader, download_cases.small.url, out)
            assert out.hexdigest() == download_cases.small.sha256

    @staticmethod
    def _case(download_cases: DownloadCases, name: str) -> Any:
        value = getattr(download_cases, name)
        if value is None:
            pytest.skip(f"download_cases.{name} is None: not applicable")
        return value

    @pytest.fixture
    def not_found_url(self, download_cases: DownloadCases) -> str:
        return str(self._case(download_cases, "not_found"))

    @pytest.fixture
    def server_error_url(self, download_cases: DownloadCases) -> str:
        return str(self._case(download_cases, "server_error"))

    @pytest.fixture
    def timeout_url(self, download_cases: DownloadCases) -> str:
        return str(self._case(download_cases, "timeout"))

    @pytest.fixture
    def url_to(self, download_cases: DownloadCases) -> Callable[[str, int], str]:
        found: Callable[[str, int], str] = self._case(download_cases, "url_to")
        return found

    async def test_not_found_is_permanent(
        self, make_downloader: Callable[[], Downloader], not_found_url: str
    ) -> None:
        error = await self._failure(make_downloader, not_found_url)
        assert isinstance(error, PermanentError)
        assert error.reason == Reason.NOT_FOUND

    async def test_server_error_is_transient(
        self, make_downloader: Callable[[], Downloader], server_error_url: str
    ) -> None:
        error = await self._failure(make_downloader, server_error_url)
        assert isinstance(error, TransientError)
        assert error.reason

    async def test_timeout_is_transient(
        self, make_downloader: Callable[[], Downloader], timeout_url: str
    ) -> None:
        error = await self._failure(make_downloader, timeout_url)
        assert isinstance(error, TransientError)
        assert error.reason == Reason.TIMEOUT

    async def test_network_guard_refuses_loopback_without_connecting(
        self, make_downloader: Callable[[], Downloader], url_to: Callable[[str, int], str]
    ) -> None:
        accepted = 0

        async def count(stream: trio.SocketStream) -> None:
            nonlocal accepted
            accepted += 1
            await stream.aclose()

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, count, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            for host in ("127.0.0.1", "localhost"):
                out = ChunkRecorder()
                async with opened(make_downloader) as downloader:
                    with pytest.raises(PermanentError) as info:
                        await self._fetch(downloader, url_to(host, port), out)
                assert info.value.reason == Reason.BLOCKED, (host, info.value)
                assert out.bytes_written == 0
            await trio.sleep(0.05)  # a connection in flight would be accepted by now
            nursery.cancel_scope.cancel(reason="guard test done")
        assert accepted == 0, "the downloader connected to a blocked address"
