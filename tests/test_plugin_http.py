"""The ``http`` downloader against the real test origin on 127.0.0.1 (``tools/origin.py``).

Every test that builds a downloader runs on each engine (httpx, curl: ``http_engine`` in
``helpers/http_engines.py``), each engine with an origin of its own.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import ipaddress
import socket
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from helpers.http_engines import DownloaderFactory
from helpers.origin import Origin, sha256_of
from helpers.plugins import plugin_context, task_for
from helpers.wait import wait_for_async, wait_until_async
from lakeferry.api import NetGuard, PermanentError, PipelineError, Reason, TransientError, is_public
from lakeferry.registry import load_registry
from lakeferry.stages.bounded import BoundedWriter
from lakeferry.testing import ChunkRecorder, download_writer
from lakeferry.units import dec_hook
from lakeferry_http import HttpDownloader, HttpDownloaderSettings
from lakeferry_http.curl_engine import CurlEngine
from lakeferry_http.downloader import parse_retry_after
from lakeferry_http.httpx_engine import HttpxEngine
from lakeferry_localfs import LocalFsCache, LocalFsCacheSettings

MiB = 2**20


@pytest.fixture(scope="module")
def origin(engine_origin: Origin) -> Origin:
    """An origin per engine (the module's tests count requests per file name)."""
    return engine_origin


def make_cache(tmp_path: Path) -> LocalFsCache:
    return LocalFsCache(
        LocalFsCacheSettings(path=str(tmp_path / "cache")), plugin_context(tmp_path)
    )


async def download(
    d: HttpDownloader, cache: LocalFsCache, url: str, key: str = "k", **event: Any
) -> tuple[str, int]:
    """Fetch into the cache as the download stage does; (sha256, bytes) of the committed file."""
    task = task_for(url, event_id=key, **event)
    async with cache.reserve(task.event.size) as reservation:
        pending = await cache.create(key)
        try:
            await d.fetch(task, BoundedWriter(pending, reservation, task.event.size))
            entry = await pending.commit(
                expected_sha256=task.event.sha256, expected_size=task.event.size
            )
        except BaseException:
            with trio.CancelScope(shield=True):
                await pending.abort()
            raise
    return entry.sha256, entry.size


async def failure(d: HttpDownloader, cache: LocalFsCache, url: str, **event: Any) -> PipelineError:
    with pytest.raises(PipelineError) as caught:
        await download(d, cache, url, **event)
    assert await cache.lookup("k") is None
    assert list(cache.root.rglob("*.part")) == []
    return caught.value


# --- settings and registration -------------------------------------------------------------------


def test_registered_for_http_and_https() -> None:
    registry = load_registry()
    reg = registry.get("downloader", "http")
    assert reg.schemes == ("http", "https")
    assert registry.for_scheme("HTTPS") == reg
    assert reg.settings_type is HttpDownloaderSettings


def test_settings_decode_from_config_values() -> None:
    s = msgspec.convert(
        {"connect_timeout": "2s", "read_timeout": "250ms", "max_size": "1GiB", "clients": 2},
        HttpDownloaderSettings,
        dec_hook=dec_hook,
    )
    assert (s.connect_timeout, s.read_timeout, s.total_timeout) == (2.0, 0.25, 3600.0)
    assert (s.max_size, s.clients, s.pool_connections, s.max_redirects) == (2**30, 2, 8, 5)
    assert s.allow_networks == []
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"clients": 0}, HttpDownloaderSettings, dec_hook=dec_hook)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"timeout": 1}, HttpDownloaderSettings, dec_hook=dec_hook)


# --- streaming -----------------------------------------------------------------------------------


async def test_streams_body_into_the_cache_with_its_sha256(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory
) -> None:
    cache = make_cache(tmp_path)
    size = 5 * MiB + 123
    async with downloader(tmp_path) as d:
        url = origin.file_url("stream.bin", size)
        digest = sha256_of("stream.bin", size)
        assert await download(d, cache, url, sha256=digest, size=size) == (digest, size)
        # Chunked transfer encoding (no Content-Length) streams the same way.
        chunked = origin.file_url("stream.bin", size, route="chunked")
        assert await download(d, cache, chunked, key="k2") == (digest, size)
        empty = origin.file_url("empty.bin", 0)
        assert await download(d, cache, empty, key="k3") == (sha256_of("empty.bin", 0), 0)


async def test_body_is_streamed_not_held_in_memory(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory
) -> None:
    cache = make_cache(tmp_path)
    size = 24 * MiB
    async with downloader(tmp_path) as d:
        await download(d, cache, origin.file_url("warm-up.bin", 1024))
        tracemalloc.start()
        try:
            await download(d, cache, origin.file_url("memory.bin", size), key="m")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 6 * MiB, f"peak {peak / MiB:.1f} MiB while downloading {size / MiB:.0f} MiB"


class SlowWriter(ChunkRecorder):
    """A cache writer slower than the origin: 10 ms for every 256 KiB (25 MB/s)."""

    def __init__(self) -> None:
        super().__init__()
        self.unpaced = 0

    async def write(self, chunk: bytes) -> None:
        self.unpaced += len(chunk)
        if self.unpaced >= 256 * 1024:
            self.unpaced = 0
            await trio.sleep(0.01)  # the pace of a slow disk is the thing under test
        await super().write(chunk)


async def test_a_slow_cache_holds_the_body_back(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory
) -> None:
    """The origin sends far faster than the writer takes: what is read ahead stays bounded
    (curl: the transfer pauses until trio has taken its pieces)."""
    size = 16 * MiB
    async with downloader(tmp_path) as d:
        await d.fetch(task_for(origin.file_url("warm-up-slow.bin", 1024)), ChunkRecorder())
        out = SlowWriter()
        tracemalloc.start()
        try:
            await d.fetch(task_for(origin.file_url("slow-cache.bin", size)), out)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert out.hexdigest() == sha256_of("slow-cache.bin", size)
    assert peak < 4 * MiB, f"peak {peak / MiB:.1f} MiB while downloading {size / MiB:.0f} MiB"
    assert out.chunks >= 16  # no more than 1 MiB a write


async def test_redirects_are_followed_up_to_the_limit(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory
) -> None:
    cache = make_cache(tmp_path)
    name = "redirected.bin"
    async with downloader(tmp_path, max_redirects=3) as d:
        url = origin.file_url(name, 1000, route="redirect/3")
        assert await download(d, cache, url, key="ok") == (sha256_of(name, 1000), 1000)
        error = await failure(d, cache, origin.file_url(name, 1000, route="redirect/4"))
        assert isinstance(error, PermanentError)
        assert error.reason == Reason.HTTP_CLIENT_ERROR
    async with downloader(tmp_path, follow_redirects=False) as d:
        error = await failure(d, cache, origin.file_url(name, 1000, route="redirect/1"))
        assert isinstance(error, PermanentError)
        assert "302" in str(error)


async def test_clients_share_the_load(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory, http_engine: str
) -> None:
    """httpx: downloads are spread over the clients' small pools. (curl has one multi handle;
    :func:`test_downloads_run_side_by_side` holds for both.)"""
    if http_engine != "httpx":
        pytest.skip("httpx's client pool")
    cache = make_cache(tmp_path)
    async with downloader(tmp_path, clients=4, pool_connections=4) as d:
        assert isinstance(d.engine, HttpxEngine)
        pool = d.engine.pool
        async with trio.open_nursery() as nursery:
            for i in range(12):
                url = origin.file_url(f"share-{i}.bin", 1000, route="slow", delay=0.3)
                nursery.start_soon(download, d, cache, url, f"share-{i}")
            # Each download takes 0.3 s at the origin: all twelve are under way at once.
            busy = await wait_for_async(
                lambda: list(pool.busy),
                lambda busy: sum(busy) == 12,
                timeout=10,
                what="all twelve downloads under way",
            )
            assert busy == [3, 3, 3, 3]
        assert pool.busy == [0, 0, 0, 0]
    for i in range(12):
        assert await cache.lookup(f"share-{i}") is not None


async def test_downloads_run_side_by_side(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory
) -> None:
    """Twelve downloads at once are twelve requests under way at once: each response waits
    1 s at the origin, and every download ends only after all twelve requests arrived."""
    cache = make_cache(tmp_path)
    names = [f"side-{i}.bin" for i in range(12)]
    seen_at_end: dict[str, int] = {}

    async def one(name: str) -> None:
        await download(d, cache, origin.file_url(name, 70_000, route="slow", delay=1), name)
        seen_at_end[name] = sum(origin.count(f"/slow/{other}") for other in names)

    async with downloader(tmp_path) as d, trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(one, name)
    assert seen_at_end == dict.fromkeys(names, 12)
    for name in names:
        entry = await cache.lookup(name)
        assert entry is not None
        assert entry.sha256 == sha256_of(name, 70_000)


async def test_tls_is_verified_unless_turned_off(
    tmp_path: Path, tls_origin: Origin, downloader: DownloaderFactory
) -> None:
    """The origin's certificate is self-signed: refused (a connection failure, transient, as a
    certificate a site renews would be), and accepted with ``verify_tls = false``."""
    cache = make_cache(tmp_path)
    url = tls_origin.file_url("tls.bin", 70_000)
    before = tls_origin.count("/files/tls.bin")  # one origin for both engines
    async with downloader(tmp_path) as d:
        error = await failure(d, cache, url)
    assert (type(error), error.reason) == (TransientError, Reason.CONNECTION)
    async with downloader(tmp_path, verify_tls=False) as d:
        assert await download(d, cache, url) == (sha256_of("tls.bin", 70_000), 70_000)
    assert tls_origin.count("/files/tls.bin") - before == 1  # the refused one got no request


# --- classification ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "reason"),
    [
        (404, PermanentError, Reason.NOT_FOUND),
        (410, PermanentError, Reason.NOT_FOUND),
        (400, PermanentError, Reason.HTTP_CLIENT_ERROR),
        (401, PermanentError, Reason.HTTP_CLIENT_ERROR),
        (403, PermanentError, Reason.HTTP_CLIENT_ERROR),
        (451, PermanentError, Reason.HTTP_CLIENT_ERROR),
        (408, TransientError, Reason.THROTTLED),
        (429, TransientError, Reason.THROTTLED),
        (500, TransientError, Reason.HTTP_SERVER_ERROR),
        (502, TransientError, Reason.HTTP_SERVER_ERROR),
        (503, TransientError, Reason.HTTP_SERVER_ERROR),
    ],
)
async def test_status_codes_are_classified(
    tmp_path: Path,
    origin: Origin,
    status: int,
    kind: type[PipelineError],
    reason: str,
    downloader: DownloaderFactory,
) -> None:
    cache = make_cache(tmp_path)
    async with downloader(tmp_path) as d:
        url = f"{origin.url}/status/{status}/x.bin?sig=SECRET-TOKEN"
        error = await failure(d, cache, url)
    assert type(error) is kind
    assert error.reason == reason
    assert str(status) in str(error)
    assert "SECRET-TOKEN" not in str(error)  # query strings never reach messages
    assert error.retry_after is None


async def test_retry_after_is_carried(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory
) -> None:
    cache = make_cache(tmp_path)
    async with downloader(tmp_path) as d:
        for status in (429, 503):
            error = await failure(d, cache, f"{origin.url}/status/{status}/r?retry_after=7")
            assert error.retry_after == 7.0
        later = email.utils.format_datetime(
            dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120), usegmt=True
        )
        error = await failure(d, cache, f"{origin.url}/status/429/r?retry_after={later}")
        assert error.retry_after is not None
        assert 100 < error.retry_after <= 120


def test_parse_retry_after() -> None:
    now = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    assert parse_retry_after(None, now) is None
    assert parse_retry_after(" 30 ", now) == 30.0
    assert parse_retry_after("Mon, 01 Jan 2024 00:01:00 GMT", now) == 60.0
    assert parse_retry_after("Sun, 31 Dec 2023 00:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-5", now) is None


async def test_flaky_origin_is_transient_then_succeeds(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory
) -> None:
    cache = make_cache(tmp_path)
    name = "flaky-once.bin"
    url = origin.file_url(name, 70_000, route="flaky", fail=1)
    async with downloader(tmp_path) as d:
        error = await failure(d, cache, url)
        assert isinstance(error, TransientError)
        assert (error.reason, error.retry_after) == (Reason.HTTP_SERVER_ERROR, 0.0)
        assert await download(d, cache, url) == (sha256_of(name, 70_000), 70_000)
    assert origin.count(f"/flaky/{name}") == 2


async def test_read_timeout_is_transient(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory
) -> None:
    cache = make_cache(tmp_path)
    async with downloader(tmp_path, read_timeout=0.2) as d:
        url = origin.file_url("stalls.bin", 300_000, route="slow", delay=1, after=100_000)
        error = await failure(d, cache, url)
    assert isinstance(error, TransientError)
    assert error.reason == Reason.TIMEOUT


async def test_total_timeout_is_transient(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory
) -> None:
    cache = make_cache(tmp_path)
    async with downloader(tmp_path, read_timeout=5, total_timeout=0.3) as d:
        url = origin.file_url("too-slow.bin", 1000, route="slow", delay=1)
        error = await failure(d, cache, url)
    assert isinstance(error, TransientError)
    assert error.reason == Reason.TIMEOUT
    assert "total_timeout" in str(error)


async def test_refused_connection_is_transient(
    tmp_path: Path, downloader: DownloaderFactory
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cache = make_cache(tmp_path)
    async with downloader(tmp_path, connect_timeout=2) as d:
        error = await failure(d, cache, f"http://127.0.0.1:{port}/files/x")
    assert isinstance(error, TransientError)
    assert error.reason == Reason.CONNECTION


async def test_unresolvable_host_is_transient(
    tmp_path: Path, downloader: DownloaderFactory
) -> None:
    cache = make_cache(tmp_path)
    async with downloader(tmp_path, connect_timeout=5) as d:
        error = await failure(d, cache, "http://no-such-host.invalid/file.bin")
    assert isinstance(error, TransientError)
    assert error.reason in (Reason.CONNECTION, Reason.TIMEOUT)


async def test_truncated_body_is_transient(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory
) -> None:
    cache = make_cache(tmp_path)
    async with downloader(tmp_path) as d:
        error = await failure(d, cache, origin.file_url("cut.bin", 500_000, route="truncated"))
    assert isinstance(error, TransientError)
    assert error.reason == Reason.CONNECTION


async def test_announced_size_over_max_is_refused_before_reading(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory
) -> None:
    cache = make_cache(tmp_path)
    async with downloader(tmp_path, max_size=MiB) as d:
        task = task_for(origin.file_url("huge.bin", 50 * MiB))
        pending = await cache.create("k")
        with pytest.raises(PermanentError) as caught:
            await d.fetch(task, download_writer(pending))
        assert pending.bytes_written == 0
        await pending.abort()
    assert caught.value.reason == Reason.TOO_LARGE


async def test_body_over_max_is_refused_mid_stream(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory
) -> None:
    cache = make_cache(tmp_path)
    async with downloader(tmp_path, max_size=MiB) as d:
        task = task_for(origin.file_url("huge.bin", 8 * MiB, route="chunked"))
        pending = await cache.create("k")
        with pytest.raises(PermanentError) as caught:
            await d.fetch(task, download_writer(pending))
        assert 0 < pending.bytes_written <= MiB
        await pending.abort()
    assert caught.value.reason == Reason.TOO_LARGE


async def test_size_contradicting_the_event_is_permanent(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory
) -> None:
    cache = make_cache(tmp_path)
    async with downloader(tmp_path) as d:
        error = await failure(d, cache, origin.file_url("sized.bin", 5000), size=4000)
        assert (type(error), error.reason) == (PermanentError, Reason.SIZE_MISMATCH)
        chunked = origin.file_url("sized.bin", 5000, route="chunked")
        error = await failure(d, cache, chunked, size=4000)
        assert (type(error), error.reason) == (PermanentError, Reason.SIZE_MISMATCH)
        wrong_sha = "0" * 64
        error = await failure(d, cache, origin.file_url("sized.bin", 5000), sha256=wrong_sha)
        assert (type(error), error.reason) == (PermanentError, Reason.CHECKSUM_MISMATCH)


async def test_unsupported_redirect_scheme_is_permanent(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory
) -> None:
    cache = make_cache(tmp_path)
    async with downloader(tmp_path) as d:
        error = await failure(d, cache, f"{origin.url}/goto?url=ftp://example.org/f")
    assert (type(error), error.reason) == (PermanentError, Reason.UNSUPPORTED_SCHEME)


async def test_cancellation_mid_download_leaves_no_entry(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory
) -> None:
    cache = make_cache(tmp_path)
    url = origin.file_url("cancelled.bin", 2 * MiB, route="slow", delay=2, after=MiB)
    async with downloader(tmp_path) as d:
        with trio.move_on_after(0.5) as scope:
            await download(d, cache, url)
    assert scope.cancelled_caught
    assert await cache.lookup("k") is None
    assert list(cache.root.rglob("*.part")) == []
    assert cache.usage().bytes == 0
    assert cache.reserved == 0


async def test_curl_removes_a_cancelled_transfer_at_once(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory, http_engine: str
) -> None:
    """The cancelled fetch's easy handle leaves the multi handle (and its connection closes)
    while the origin is still holding the response back; after aclose no worker thread runs."""
    if http_engine != "curl":
        pytest.skip("libcurl's multi handle")
    url = origin.file_url("curl-cancelled.bin", 2 * MiB, route="slow", delay=3, after=MiB)
    async with downloader(tmp_path) as d:
        engine = d.engine
        assert isinstance(engine, CurlEngine)
        out = ChunkRecorder()
        with trio.move_on_after(0.5) as scope:
            await d.fetch(task_for(url), out)
        assert scope.cancelled_caught
        assert out.bytes_written <= MiB
        await wait_until_async(
            lambda: engine.in_flight == 0, timeout=1, what="the transfer to leave the multi"
        )
        assert any(t.name == "lakeferry-curl" for t in threading.enumerate())
    assert not any(t.name == "lakeferry-curl" for t in threading.enumerate())


# --- the address guard ---------------------------------------------------------------------------


async def test_loopback_is_blocked_by_default(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory
) -> None:
    cache = make_cache(tmp_path)
    async with downloader(tmp_path, allow_networks=[]) as d:
        error = await failure(d, cache, origin.file_url("guarded.bin", 10))
    assert (type(error), error.reason) == (PermanentError, Reason.BLOCKED)
    assert origin.count("/files/guarded.bin") == 0  # refused before connecting


async def test_every_redirect_hop_is_checked(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory
) -> None:
    cache = make_cache(tmp_path)
    port = origin.url.rsplit(":", 1)[1]
    async with downloader(tmp_path, allow_networks=["127.0.0.1/32"]) as d:
        hop = f"http://127.0.0.2:{port}/files/x"  # loopback too, but not allowed
        error = await failure(d, cache, f"{origin.url}/goto?url={hop}")
    assert (type(error), error.reason) == (PermanentError, Reason.BLOCKED)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # CGNAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped
        ("::ffff:8.8.8.8", True),
        ("::127.0.0.1", False),  # IPv4-compatible
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
        ("64:ff9b::808:808", True),
        ("2002:a00:1::", False),  # 6to4 of 10.0.0.1
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", False),  # Teredo, client 10.0.0.1
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


def test_allow_networks() -> None:
    guard = NetGuard(allow_networks=["10.0.0.0/8", "::1/128"])
    assert guard.allows_address(ipaddress.ip_address("10.9.9.9"))
    assert guard.allows_address(ipaddress.ip_address("::ffff:10.9.9.9"))
    assert guard.allows_address(ipaddress.ip_address("::1"))
    assert not guard.allows_address(ipaddress.ip_address("127.0.0.1"))
    assert guard.allows_address(ipaddress.ip_address("1.1.1.1"))
    with pytest.raises(ValueError, match="does not appear"):
        NetGuard(allow_networks=["not-a-network"])
