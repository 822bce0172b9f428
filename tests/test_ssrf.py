"""The SSRF guard, proven: every way of naming a non-public address ends as ``blocked``.

Layers, from the inside out: the core's :class:`~lakeferry.api.NetGuard` (address parsing,
policy, resolve-once), the ``http`` downloader against the real test origin (pre-flight,
connect-time and per-redirect-hop checks, with :class:`~helpers.network.SpyBackend` proving no
connection was attempted), and the daemon as a process (DLQ letters with reason ``blocked``).
The downloader's tests and the daemon's run on each engine of the ``http`` downloader (httpx,
curl); with curl the spy is the engine's connect hook (:func:`helpers.http_engines.spy_on`).

Network rule: traffic goes to loopback only. Names are resolved by injected resolvers (no DNS);
non-loopback addresses appear only as *targets the guard refuses*, and the spy backend turns
any attempt to connect to one into a test failure before a socket exists.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import msgspec
import pytest
import trio
import trio.testing

from helpers.daemon import DaemonEnv
from helpers.http_engines import spy_on
from helpers.network import SpyBackend, counting_listener
from helpers.origin import Origin, sha256_of
from helpers.plugins import plugin_context, task_for
from helpers.wait import wait_for, wait_until_async
from lakeferry.api import (
    IPAddress,
    NetGuard,
    PermanentError,
    PipelineError,
    Reason,
    TransientError,
    parse_ip_literal,
)
from lakeferry.testing import ChunkRecorder, download_writer
from lakeferry_http import HttpDownloader, HttpDownloaderSettings
from lakeferry_http.curl_engine import CheckedLookups
from lakeferry_localfs import LocalFsCache, LocalFsCacheSettings


def port_of(origin: Origin) -> int:
    return int(origin.url.rsplit(":", 1)[1])


class FakeResolver:
    """A resolver from a table, counting lookups; unknown names fail like NXDOMAIN."""

    def __init__(self, table: dict[str, Sequence[str]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        await trio.lowlevel.checkpoint()
        self.lookups.append(host)
        if host not in self.table:
            raise OSError(-2, "Name or service not known")
        return [ipaddress.ip_address(a) for a in self.table[host]]


async def no_dns(host: str, port: int) -> list[IPAddress]:
    raise AssertionError(f"DNS lookup of {host!r}: literals and localhost never need one")


@asynccontextmanager
async def open_guarded(
    engine: str, tmp_path: Path, resolver: Any = no_dns, **settings: Any
) -> AsyncIterator[tuple[HttpDownloader, SpyBackend]]:
    settings["engine"] = engine
    d = HttpDownloader(HttpDownloaderSettings(**settings), plugin_context(tmp_path))
    spy = spy_on(d)
    d.guard.resolver = resolver
    try:
        yield d, spy
    finally:
        await d.aclose()


class GuardedFactory(Protocol):
    def __call__(
        self, tmp_path: Path, resolver: Any = ..., **settings: Any
    ) -> AbstractAsyncContextManager[tuple[HttpDownloader, SpyBackend]]: ...


@pytest.fixture
def guarded_downloader(http_engine: str) -> GuardedFactory:
    """``guarded_downloader(tmp_path, resolver, **settings)``: a downloader on the engine under
    test, its names resolved by ``resolver``, its connections spied on."""
    return partial(open_guarded, http_engine)


@pytest.fixture(scope="module")
def origin(engine_origin: Origin) -> Origin:
    """An origin per engine (the tests count requests per path)."""
    return engine_origin


@pytest.fixture
def daemon_env(daemon_env: DaemonEnv, http_engine: str) -> DaemonEnv:
    """The daemon on the engine under test."""
    daemon_env.data["downloaders"]["http"]["engine"] = http_engine
    daemon_env.write()
    return daemon_env


async def fetch_error(d: HttpDownloader, tmp_path: Path, url: str) -> PipelineError:
    cache = LocalFsCache(
        LocalFsCacheSettings(path=str(tmp_path / "cache")), plugin_context(tmp_path)
    )
    pending = await cache.create("k")
    try:
        with pytest.raises(PipelineError) as caught:
            await d.fetch(task_for(url), download_writer(pending))
    finally:
        await pending.abort()
    return caught.value


# --- addresses -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),  # one decimal number
        ("0x7f000001", "127.0.0.1"),  # one hex number
        ("0177.0.0.1", "127.0.0.1"),  # octal part
        ("0x7f.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),  # a.b: the last part fills 24 bits
        ("127.0.1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),  # trailing dot
        ("0", "0.0.0.0"),
        ("0251.0376.0251.0376", "169.254.169.254"),
        ("0xA9FEA9FE", "169.254.169.254"),
        ("[::1]", "::1"),
        ("::ffff:127.0.0.1", "::ffff:127.0.0.1"),
        ("[::ffff:7f00:1]", "::ffff:127.0.0.1"),
        ("[fe80::1%25eth0]", "fe80::1%eth0"),
        ("example.org", None),
        ("256.0.0.1", None),
        ("08.0.0.1", None),  # not octal: a name
        ("1.2.3.4.5", None),
        ("4294967296", None),
        ("", None),
    ],
)
def test_ip_literals_in_every_spelling(host: str, address: str | None) -> None:
    parsed = parse_ip_literal(host)
    assert parsed == (ipaddress.ip_address(address) if address is not None else None)


BLOCKED_URLS = [
    "http://127.0.0.1/",
    "http://localhost/",
    "http://LOCALHOST./admin",
    "http://metadata.localhost/",
    "http://0.0.0.0/",
    "http://0/",
    "http://[::]/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped
    "http://[::ffff:a9fe:a9fe]/",  # IPv4-mapped metadata
    "http://[::127.0.0.1]/",  # IPv4-compatible
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
    "http://[2002:a00:1::]/",  # 6to4 of 10.0.0.1
    "http://169.254.169.254/latest/meta-data/",
    "http://0xA9FEA9FE/latest/meta-data/",
    "http://2130706433/",
    "http://0177.0.0.1/",
    "http://0x7f000001/",
    "http://127.1/",
    "http://10.0.0.1/",
    "http://172.16.5.4/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",  # CGNAT
    "http://224.0.0.1/",  # multicast
    "http://240.0.0.1/",  # reserved
    "http://255.255.255.255/",
    "http://[fc00::1]/",  # unique local
    "http://[fd12:3456::1]/",
    "http://[fe80::1%25eth0]/",  # link-local with a zone
    "http://[ff02::1]/",
    "https://user:secret@127.0.0.1:8443/x?sig=SECRET",
]


@pytest.mark.parametrize("url", BLOCKED_URLS)
def test_literal_hosts_are_blocked_without_dns(url: str) -> None:
    with pytest.raises(PermanentError) as caught:
        NetGuard(resolver=no_dns).check_url(url)
    assert caught.value.reason == Reason.BLOCKED
    assert "secret" not in str(caught.value).lower()


@pytest.mark.parametrize(
    "url", ["http://8.8.8.8/", "https://[2001:4860:4860::8888]/", "http://example.org/"]
)
def test_public_literals_and_names_pass_the_preflight(url: str) -> None:
    NetGuard(resolver=no_dns).check_url(url)  # names are checked when resolved, not here


@pytest.mark.parametrize(
    "url", ["http://[::1/", "http://h:99999/", "http://h:0/", "http:///path", "http://h:x/"]
)
def test_unusable_urls_are_malformed(url: str) -> None:
    with pytest.raises(PermanentError) as caught:
        NetGuard(resolver=no_dns).check_url(url)
    assert caught.value.reason == Reason.MALFORMED


async def test_names_resolve_once_and_only_allowed_addresses_remain() -> None:
    resolver = FakeResolver(
        {
            "files.example.com": ["10.0.0.7"],  # public-looking, private answer
            "meta.example.com": ["169.254.169.254", "::ffff:169.254.169.254"],
            "mixed.example.com": ["10.0.0.7", "93.184.216.34", "::1"],
        }
    )
    guard = NetGuard(resolver=resolver)
    for host in ("files.example.com", "meta.example.com"):
        with pytest.raises(PermanentError) as caught:
            await guard.resolve(host, 443)
        assert caught.value.reason == Reason.BLOCKED
    assert await guard.resolve("mixed.example.com", 443) == [ipaddress.ip_address("93.184.216.34")]
    assert resolver.lookups == ["files.example.com", "meta.example.com", "mixed.example.com"]
    for literal in ("127.0.0.1", "0x7f000001", "localhost", "a.localhost", "::1"):
        with pytest.raises(PermanentError):
            await guard.resolve(literal, 80)
    assert len(resolver.lookups) == 3  # literals and localhost never reach the resolver
    with pytest.raises(TransientError) as failed:
        await guard.resolve("nxdomain.example.com", 443)
    assert failed.value.reason == Reason.CONNECTION


async def test_allow_hosts_by_name_port_and_suffix() -> None:
    resolver = FakeResolver(
        {
            "mirror.internal": ["10.1.2.3"],
            "a.corp.example": ["10.9.9.9"],
            "corp.example": ["10.9.9.8"],
        }
    )
    guard = NetGuard(
        allow_hosts=["Mirror.Internal.", "*.corp.example", "127.0.0.1:8080", "[::1]:9000"],
        resolver=resolver,
    )
    assert await guard.resolve("mirror.internal", 443) == [ipaddress.ip_address("10.1.2.3")]
    assert await guard.resolve("a.corp.example", 80) == [ipaddress.ip_address("10.9.9.9")]
    with pytest.raises(PermanentError):
        await guard.resolve("corp.example", 80)  # "*." admits names under it, not itself
    # An allowed address matches in any spelling, on its port only.
    assert guard.allows_host("2130706433", 8080)
    assert guard.allows_host("::ffff:127.0.0.1", 8080)
    assert not guard.allows_host("127.0.0.1", 8081)
    assert guard.allows_host("::1", 9000)
    guard.check_url("http://0x7f000001:8080/")
    with pytest.raises(PermanentError):
        guard.check_url("http://127.0.0.1:8081/")
    for bad in ("*", "a b", "[nope]:1", "host:99999", "*.*.x", "::1:2:3:zz"):
        with pytest.raises(ValueError):  # noqa: PT011 - several different messages
            NetGuard(allow_hosts=[bad])


def test_peer_address_must_be_the_checked_one() -> None:
    guard = NetGuard()
    allowed = [ipaddress.ip_address("93.184.216.34")]
    guard.check_peer("h", 80, ("93.184.216.34", 80), allowed)
    guard.check_peer("h", 80, ("::ffff:93.184.216.34", 80, 0, 0), allowed)
    with pytest.raises(PermanentError) as caught:
        guard.check_peer("h", 80, ("10.0.0.1", 80), allowed)
    assert caught.value.reason == Reason.BLOCKED


async def test_core_connect_tcp_for_other_plugins() -> None:
    with counting_listener("127.0.0.1") as allowed, counting_listener("127.0.0.2") as refused:
        guard = NetGuard(allow_hosts=[f"127.0.0.1:{allowed.port}"], resolver=no_dns)
        stream = await guard.connect_tcp("127.0.0.1", allowed.port)
        await stream.aclose()
        with pytest.raises(PermanentError) as caught:
            await guard.connect_tcp("127.0.0.2", refused.port)
        assert caught.value.reason == Reason.BLOCKED
        await wait_until_async(
            lambda: allowed.accepted == 1, timeout=10, what="the allowed listener to accept"
        )
        await trio.sleep(0.2)  # time for a connection the guard must not make to show up
        assert (allowed.accepted, refused.accepted) == (1, 0)


# --- the http downloader -------------------------------------------------------------------------


@pytest.mark.parametrize("url", BLOCKED_URLS)
async def test_downloader_refuses_before_connecting(
    tmp_path: Path, url: str, guarded_downloader: GuardedFactory
) -> None:
    async with guarded_downloader(tmp_path) as (d, spy):
        error = await fetch_error(d, tmp_path, url)
    assert (type(error), error.reason) == (PermanentError, Reason.BLOCKED)
    assert spy.connects == []


async def test_loopback_spellings_of_the_origin_are_blocked(
    tmp_path: Path, origin: Origin, guarded_downloader: GuardedFactory
) -> None:
    port = port_of(origin)
    spellings = ["127.0.0.1", "localhost", "2130706433", "0177.0.0.1", "0x7f000001", "127.1"]
    async with guarded_downloader(tmp_path) as (d, spy):
        for host in spellings:
            error = await fetch_error(d, tmp_path, f"http://{host}:{port}/files/ssrf-{host}?size=9")
            assert error.reason == Reason.BLOCKED, host
    assert spy.connects == []
    assert not any(origin.count(f"/files/ssrf-{h}") for h in spellings)


async def test_public_looking_name_with_a_private_answer(
    tmp_path: Path, guarded_downloader: GuardedFactory
) -> None:
    resolver = FakeResolver(
        {"files.example.com": ["10.0.0.7"], "meta.example.net": ["169.254.169.254"]}
    )
    async with guarded_downloader(tmp_path, resolver=resolver) as (d, spy):
        for url in ("https://files.example.com/report.csv", "http://meta.example.net/latest/"):
            error = await fetch_error(d, tmp_path, url)
            assert (type(error), error.reason) == (PermanentError, Reason.BLOCKED)
    assert resolver.lookups == ["files.example.com", "meta.example.net"]
    assert spy.connects == []


async def test_name_is_resolved_once_and_the_checked_address_is_pinned(
    tmp_path: Path, origin: Origin, guarded_downloader: GuardedFactory
) -> None:
    port = port_of(origin)
    resolver = FakeResolver({"origin.example.test": ["127.0.0.1"]})
    settings = {"allow_networks": ["127.0.0.1/32"]}
    async with guarded_downloader(tmp_path, resolver=resolver, **settings) as (d, spy):
        cache = LocalFsCache(
            LocalFsCacheSettings(path=str(tmp_path / "cache")), plugin_context(tmp_path)
        )
        pending = await cache.create("pinned")
        url = f"http://origin.example.test:{port}/files/pinned.bin?size=5000"
        await d.fetch(task_for(url), download_writer(pending))
        entry = await pending.commit(
            expected_sha256=sha256_of("pinned.bin", 5000), expected_size=None
        )
    assert entry.size == 5000
    assert resolver.lookups == ["origin.example.test"]
    assert spy.connects == [("127.0.0.1", port)]  # the address, never the name


async def test_curl_resolves_a_burst_to_one_host_once(
    tmp_path: Path, origin: Origin, guarded_downloader: GuardedFactory, http_engine: str
) -> None:
    """Twenty downloads from one name at once: one lookup (the others wait for its answer),
    every connection to the checked address."""
    if http_engine != "curl":
        pytest.skip("the httpx engine resolves per new connection, in its pool")
    port = port_of(origin)
    resolver = FakeResolver({"burst.example.test": ["127.0.0.1"]})
    settings = {"allow_networks": ["127.0.0.1/32"]}
    async with guarded_downloader(tmp_path, resolver=resolver, **settings) as (d, spy):

        async def one(i: int) -> None:
            out = ChunkRecorder()
            url = f"http://burst.example.test:{port}/files/burst-{i}.bin?size=3000"
            await d.fetch(task_for(url), out)
            assert out.hexdigest() == sha256_of(f"burst-{i}.bin", 3000)

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(one, i)
    assert resolver.lookups == ["burst.example.test"]
    assert spy.connects
    assert {address for address, _ in spy.connects} == {"127.0.0.1"}


class SwitchingGuard(NetGuard):
    """A guard whose resolver answers from a table the test changes, counting lookups."""

    def __init__(self, **settings: Any) -> None:
        self.answers: dict[str, list[str]] = {}
        self.started = trio.Event()
        self.release = trio.Event()
        self.release.set()
        self.fail: Exception | None = None
        super().__init__(resolver=self._resolve, **settings)
        self.lookups = 0

    async def _resolve(self, host: str, port: int) -> list[IPAddress]:
        self.lookups += 1
        self.started.set()
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return [ipaddress.ip_address(a) for a in self.answers[host]]


async def test_checked_lookups_keep_only_allowed_answers_for_their_ttl(
    autojump_clock: trio.testing.MockClock,
) -> None:
    guard = SwitchingGuard(allow_networks=["127.0.0.1/32"])
    lookups = CheckedLookups(guard, ttl=5.0, size=2)
    guard.answers["h.test"] = ["10.0.0.7"]  # private: refused
    for _ in range(2):
        with pytest.raises(PermanentError) as refused:
            await lookups.resolve("h.test", 80, 10)
        assert refused.value.reason == Reason.BLOCKED
    assert guard.lookups == 2  # a refusal is never kept
    guard.answers["h.test"] = ["10.0.0.7", "127.0.0.1"]
    pinned = await lookups.resolve("h.test", 80, 10)
    assert pinned == (
        [ipaddress.ip_address("127.0.0.1")],  # only the allowed address is kept and pinned
        ["+h.test:80:127.0.0.1"],
    )
    guard.answers["h.test"] = ["127.0.0.9"]
    await trio.sleep(4.9)
    assert await lookups.resolve("h.test", 80, 10) == pinned  # within the TTL: reused
    assert guard.lookups == 3
    await trio.sleep(0.2)
    with pytest.raises(PermanentError):  # past it: asked again, and refused again
        await lookups.resolve("h.test", 80, 10)
    assert guard.lookups == 4
    # Per port (allow_hosts can name one), at most `size` kept, the oldest dropped first.
    guard.answers["h.test"] = ["127.0.0.1"]
    for port in (80, 81, 82, 81):
        await lookups.resolve("h.test", port, 10)
    assert guard.lookups == 7
    await lookups.resolve("h.test", 80, 10)
    assert guard.lookups == 8
    # An IP literal is not looked up, but its check is kept too; never pinned (no name).
    literal = await lookups.resolve("127.0.0.1", 8080, 10)
    assert literal == ([ipaddress.ip_address("127.0.0.1")], [])


async def test_checked_lookups_share_one_lookup_and_not_its_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    guard = SwitchingGuard(allow_networks=["127.0.0.1/32"])
    lookups = CheckedLookups(guard)
    guard.answers["h.test"] = ["127.0.0.1"]
    results: list[object] = []

    async def ask(host: str = "h.test") -> None:
        try:
            results.append(await lookups.resolve(host, 80, 10))
        except PipelineError as exc:
            results.append(exc.reason)

    # Five at once while the first lookup hangs: one lookup, five answers.
    guard.release = trio.Event()
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(ask)
        await guard.started.wait()
        await trio.sleep(1)
        guard.release.set()
    assert guard.lookups == 1
    assert len(results) == 5
    assert len(set(map(repr, results))) == 1
    # A lookup that fails: each waiting request asks for itself (and gets its own error).
    results.clear()
    guard.fail = OSError(-2, "Name or service not known")
    guard.release = trio.Event()
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(ask, "f.test")
        await trio.sleep(1)
        guard.release.set()
    assert results == [Reason.CONNECTION] * 3
    assert guard.lookups == 1 + 3


async def test_redirects_to_private_targets_are_refused_at_each_hop(
    tmp_path: Path, origin: Origin, guarded_downloader: GuardedFactory
) -> None:
    """The origin is allowed by host:port; where it redirects is not, however it is spelled."""
    port = port_of(origin)
    with counting_listener("127.0.0.2") as trap, counting_listener("127.0.0.1") as trap_v4:
        targets = [
            "http://10.0.0.1/x",
            "http://169.254.169.254/latest/meta-data/iam/",
            "http://[::ffff:169.254.169.254]/",
            f"{trap.url}/x",  # loopback, not allowed
            f"http://localhost:{trap_v4.port}/x",
            f"http://0177.0.0.1:{trap_v4.port}/x",  # the allowed address, another port
            f"http://2130706433:{trap_v4.port}/x",
            f"http://[::ffff:127.0.0.1]:{trap_v4.port}/x",
            f"http://127.0.0.1:{trap_v4.port}/x",
            "http://internal.example.test/x",  # names: checked when the hop connects
            f"http://trap.example.test:{trap.port}/x",
        ]
        resolver = FakeResolver(
            {"internal.example.test": ["10.0.0.9"], "trap.example.test": ["127.0.0.2"]}
        )
        allow = {"allow_hosts": [f"127.0.0.1:{port}"]}
        async with guarded_downloader(tmp_path, resolver=resolver, **allow) as (d, spy):
            before = origin.count("/goto")
            for target in targets:
                error = await fetch_error(d, tmp_path, f"{origin.url}/goto?url={quote(target)}")
                assert (type(error), error.reason) == (PermanentError, Reason.BLOCKED), target
            # A redirect within the allowed origin is followed.
            cache = LocalFsCache(
                LocalFsCacheSettings(path=str(tmp_path / "cache2")), plugin_context(tmp_path)
            )
            pending = await cache.create("hop")
            await d.fetch(
                task_for(origin.file_url("hop.bin", 100, route="redirect/2")),
                download_writer(pending),
            )
            await pending.commit(expected_sha256=sha256_of("hop.bin", 100), expected_size=100)
        # The origin counts a request before it answers, so the count is already complete;
        # the pause is time for a connection that must not happen to reach a trap.
        await trio.sleep(0.2)
        assert origin.count("/goto") - before == len(targets)  # every first hop was served
        assert (trap.accepted, trap_v4.accepted) == (0, 0)
    assert resolver.lookups == ["internal.example.test", "trap.example.test"]
    assert {host for host, _ in spy.connects} == {"127.0.0.1"}
    assert {p for _, p in spy.connects} == {port}


def test_allow_hosts_setting_is_validated(tmp_path: Path, http_engine: str) -> None:
    from lakeferry.api import ConfigError

    settings = msgspec.convert(
        {"engine": http_engine, "allow_hosts": ["a b"]}, HttpDownloaderSettings
    )
    with pytest.raises(ConfigError) as caught:
        HttpDownloader(settings, plugin_context(tmp_path))
    assert caught.value.key == "downloaders.http.allow_hosts"


# --- the daemon ----------------------------------------------------------------------------------


def test_daemon_dead_letters_blocked_urls(daemon_env: DaemonEnv, origin: Origin) -> None:
    """End to end: only the origin's host:port is allowed; everything else is ``blocked``."""
    env = daemon_env
    port = port_of(origin)
    env.data["downloaders"]["http"].update(allow_networks=[], allow_hosts=[f"127.0.0.1:{port}"])
    env.write()
    with counting_listener("127.0.0.2") as trap, counting_listener("127.0.0.1") as trap_v4:
        blocked = {
            "ssrf-metadata": "http://169.254.169.254/latest/meta-data/",
            "ssrf-decimal": f"http://2130706433:{trap_v4.port}/",
            "ssrf-octal": f"http://0177.0.0.1:{trap_v4.port}/",
            "ssrf-hex": f"http://0x7f000001:{trap_v4.port}/",
            "ssrf-localhost": f"http://localhost:{port}/files/x?size=10",
            "ssrf-v6": f"http://[::1]:{port}/files/x?size=10",
            "ssrf-mapped": f"http://[::ffff:127.0.0.1]:{trap_v4.port}/",
            "ssrf-zero": f"http://0.0.0.0:{port}/files/x?size=10",
            "ssrf-other-port": f"{trap_v4.url}/x",
            "ssrf-other-ip": f"{trap.url}/x",
            "ssrf-redirect-private": f"{origin.url}/goto?url={quote('http://10.0.0.1/x')}",
            "ssrf-redirect-metadata": (
                f"{origin.url}/goto?url={quote('http://169.254.169.254/latest/meta-data/')}"
            ),
            "ssrf-redirect-loopback": f"{origin.url}/goto?url={quote(trap.url + '/x')}",
        }
        events = [{"id": k, "url": v} for k, v in blocked.items()]
        events.append({"id": "ssrf-ok", "url": origin.file_url("ssrf-ok.bin", 4000)})
        daemon = env.start()
        batch = env.submit_events(events)
        wait_for(
            lambda: env.audit(batch)[1],
            lambda counts: counts["in_flight"] == 0,
            timeout=60,
            what="every event to settle",
            interval=1,
        )
        letters = env.letters()
        assert {x["event_id"]: x["reason"] for x in letters} == dict.fromkeys(blocked, "blocked")
        assert all(x["stage"] == "download" for x in letters)
        code, counts = env.audit(batch)
        assert (counts["landed"], counts["dead_lettered"], counts["lost"]) == (1, len(blocked), 0)
        assert code == 0
        # Blocked is permanent: no retries, and nothing ever connected to the traps.
        assert env.metric("lakeferry_retries_total") == 0
        assert (trap.accepted, trap_v4.accepted) == (0, 0)
        assert origin.count("/files/x") == 0
        assert daemon.terminate() == 0


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "http://127.0.0.1:8080/x",
            "127.0.0.1 is a loopback address, refused against SSRF; to allow it, add "
            '"127.0.0.1/32" to downloaders.http.allow_networks or "127.0.0.1:8080" to '
            "downloaders.http.allow_hosts",
        ),
        (
            "http://169.254.169.254/latest/meta-data/",
            "169.254.169.254 is a link-local address (cloud metadata lives there), refused "
            'against SSRF; to allow it, add "169.254.169.254/32" to '
            'downloaders.http.allow_networks or "169.254.169.254:80" to '
            "downloaders.http.allow_hosts",
        ),
        (
            "http://[::ffff:10.1.2.3]/x",
            "::ffff:a01:203 is the IPv4-mapped form of 10.1.2.3, a private address, refused "
            'against SSRF; to allow it, add "10.1.2.3/32" to downloaders.http.allow_networks or '
            '"[::ffff:10.1.2.3]:80" to downloaders.http.allow_hosts',
        ),
    ],
)
def test_a_refusal_names_the_rule_and_the_setting_that_opens_it(url: str, message: str) -> None:
    """Found: ``127.0.0.1 is 127.0.0.1: a blocked network``, which named neither."""
    from lakeferry.netguard import guard_from_settings

    guard = guard_from_settings("downloaders.http", [], [])
    with pytest.raises(PermanentError) as caught:
        guard.check_url(url)
    assert (caught.value.reason, str(caught.value)) == (Reason.BLOCKED, message)
    # ...and the setting it names opens it.
    opened = guard_from_settings("downloaders.http", [message.split('"')[1]], [])
    opened.check_url(url)
