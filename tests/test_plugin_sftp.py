"""The ``sftp`` example plugin against a real OpenSSH server on loopback (``helpers.sftp``)."""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from helpers.daemon import DaemonEnv
from helpers.plugins import plugin_context, task_for
from helpers.sftp import SftpServer
from helpers.wait import wait_until
from lakeferry.api import ConfigError, IPAddress, PermanentError, Reason, TransientError
from lakeferry.registry import load_registry
from lakeferry.testing import download_writer
from lakeferry.units import dec_hook
from lakeferry_localfs import LocalFsCache, LocalFsCacheSettings
from lakeferry_sftp import SftpDownloader, SftpDownloaderSettings

MiB = 2**20


def downloader(tmp_path: Path, server: SftpServer, **overrides: Any) -> SftpDownloader:
    settings = msgspec.convert(
        server.settings(**overrides), SftpDownloaderSettings, dec_hook=dec_hook
    )
    return SftpDownloader(settings, plugin_context(tmp_path))


def cache(tmp_path: Path) -> LocalFsCache:
    return LocalFsCache(
        LocalFsCacheSettings(path=str(tmp_path / "cache")), plugin_context(tmp_path)
    )


class CountingWriter:
    """Wraps a pending cache file; counts chunks and can cancel a scope after some."""

    def __init__(self, inner: Any, cancel_after: int = 0, scope: trio.CancelScope | None = None):
        self.inner = inner
        self.chunks: list[int] = []
        self.cancel_after = cancel_after
        self.scope = scope

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def write(self, chunk: bytes) -> None:
        self.chunks.append(len(chunk))
        await self.inner.write(chunk)
        if self.scope is not None and len(self.chunks) >= self.cancel_after:
            self.scope.cancel(reason="test: cancel mid-transfer")


async def fetch(
    tmp_path: Path, d: SftpDownloader, url: str, **event: Any
) -> tuple[bytes, list[int]]:
    c = cache(tmp_path)
    pending = await c.create("k")
    writer = CountingWriter(download_writer(pending))
    try:
        await d.fetch(task_for(url, **event), writer)
    except BaseException:
        await pending.abort()
        raise
    await pending.commit(expected_sha256=None, expected_size=None)
    async with c.open("k") as chunks:
        data = b"".join([x async for x in chunks])
    await d.aclose()
    return data, writer.chunks


def test_registered_by_entry_point() -> None:
    registry = load_registry()
    assert registry.for_scheme("sftp") == registry.get("downloader", "sftp")
    assert registry.get("downloader", "sftp").settings_type is SftpDownloaderSettings
    assert any(p.name == "sftp" and p.module == "lakeferry_sftp" for p in registry.plugins)


def test_settings(tmp_path: Path, sftp_server: SftpServer) -> None:
    defaults = msgspec.convert({}, SftpDownloaderSettings)
    assert defaults.known_hosts_file == "~/.ssh/known_hosts"
    assert defaults.allow_networks == []
    SftpDownloader(defaults, plugin_context(tmp_path))  # builds without a key (every daemon does)
    with pytest.raises(ConfigError, match="private_key_file"):
        downloader(tmp_path, sftp_server, private_key_file=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="allow_networks"):
        downloader(tmp_path, sftp_server, allow_networks=["not-a-network"])
    (tmp_path / "garbage").write_text("not a key\n")
    with pytest.raises(ConfigError, match="not a usable private key"):
        downloader(tmp_path, sftp_server, private_key_file=str(tmp_path / "garbage"))


async def test_downloads_a_file_in_chunks(tmp_path: Path, sftp_server: SftpServer) -> None:
    data = os.urandom(3 * MiB + 12345)
    (sftp_server.files / "big.bin").write_bytes(data)
    d = downloader(tmp_path, sftp_server, chunk_size="1MiB")
    got, chunks = await fetch(tmp_path, d, sftp_server.url("big.bin"), size=len(data))
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    assert chunks == [MiB, MiB, MiB, 12345]


async def test_user_from_settings_and_empty_file(tmp_path: Path, sftp_server: SftpServer) -> None:
    (sftp_server.files / "empty").write_bytes(b"")
    d = downloader(tmp_path, sftp_server, username=sftp_server.user)
    url = f"sftp://{sftp_server.host}:{sftp_server.port}{sftp_server.files / 'empty'}"
    assert await fetch(tmp_path, d, url) == (b"", [])


async def reason_of(tmp_path: Path, d: SftpDownloader, url: str, **event: Any) -> str:
    with pytest.raises(PermanentError) as caught:
        await fetch(tmp_path, d, url, **event)
    assert "@" not in str(caught.value), "user names are redacted"
    return caught.value.reason


async def test_missing_file_is_not_found(tmp_path: Path, sftp_server: SftpServer) -> None:
    d = downloader(tmp_path, sftp_server)
    assert await reason_of(tmp_path, d, sftp_server.url("nope.bin")) == Reason.NOT_FOUND
    assert await reason_of(tmp_path, d, sftp_server.url("")[:-1] + "/.") == Reason.NOT_FOUND


async def test_size_limits(tmp_path: Path, sftp_server: SftpServer) -> None:
    (sftp_server.files / "ten.bin").write_bytes(b"0123456789")
    url = sftp_server.url("ten.bin")
    small = downloader(tmp_path, sftp_server, max_size=9)
    assert await reason_of(tmp_path, small, url) == Reason.TOO_LARGE
    d = downloader(tmp_path, sftp_server)
    assert await reason_of(tmp_path, d, url, size=11) == Reason.SIZE_MISMATCH


async def test_wrong_host_key_is_refused(tmp_path: Path, sftp_server: SftpServer) -> None:
    (sftp_server.files / "a.bin").write_bytes(b"a")
    d = downloader(tmp_path, sftp_server, known_hosts_file=str(sftp_server.wrong_known_hosts))
    assert await reason_of(tmp_path, d, sftp_server.url("a.bin")) == "host_key_mismatch"
    unknown = downloader(tmp_path, sftp_server, known_hosts_file=str(tmp_path / "none"))
    assert await reason_of(tmp_path, unknown, sftp_server.url("a.bin")) == "host_key_unknown"
    unreadable = downloader(tmp_path, sftp_server, known_hosts_file=str(tmp_path))  # a directory
    assert await reason_of(tmp_path, unreadable, sftp_server.url("a.bin")) == "host_key_unknown"


async def test_refused_key_is_a_permanent_auth_failure(
    tmp_path: Path, sftp_server: SftpServer
) -> None:
    (sftp_server.files / "a.bin").write_bytes(b"a")
    d = downloader(tmp_path, sftp_server, private_key_file=str(sftp_server.other_key))
    assert await reason_of(tmp_path, d, sftp_server.url("a.bin")) == "auth_failed"
    nobody = downloader(tmp_path, sftp_server)
    url = sftp_server.url("a.bin", user="nosuchuser")
    assert await reason_of(tmp_path, nobody, url) == "auth_failed"
    keyless = downloader(tmp_path, sftp_server, private_key_file="")
    assert await reason_of(tmp_path, keyless, sftp_server.url("a.bin")) == "auth_failed"


async def test_resumes_from_the_offset(tmp_path: Path, sftp_server: SftpServer) -> None:
    data = os.urandom(2 * MiB + 7)
    path = sftp_server.files / "resume.bin"
    path.write_bytes(data)
    d = downloader(tmp_path, sftp_server, chunk_size="256KiB")
    c = cache(tmp_path)
    # The first attempt is cancelled after two chunks; its bytes are kept.
    first = await c.create("r")
    with trio.CancelScope() as scope:
        await d.fetch(
            task_for(sftp_server.url("resume.bin")),
            CountingWriter(download_writer(first), 2, scope),
        )
    assert scope.cancelled_caught
    assert first.validator is not None
    await first.abort(keep_partial=True)
    second = await c.create("r", resume=True)
    assert second.offset == 512 * 1024
    writer = CountingWriter(download_writer(second))
    await d.fetch(task_for(sftp_server.url("resume.bin")), writer)
    assert sum(writer.chunks) == len(data) - 512 * 1024, "only the rest was read"
    entry = await second.commit(
        expected_sha256=hashlib.sha256(data).hexdigest(), expected_size=len(data)
    )
    assert entry.size == len(data)
    # A file changed since (other mtime) restarts from zero.
    third = await c.create("s")
    with trio.CancelScope() as scope:
        await d.fetch(
            task_for(sftp_server.url("resume.bin")),
            CountingWriter(download_writer(third), 1, scope),
        )
    await third.abort(keep_partial=True)
    changed = os.urandom(MiB)
    path.write_bytes(changed)
    os.utime(path, (1_000_000_000, 1_000_000_000))
    fourth = await c.create("s", resume=True)
    assert fourth.offset == 256 * 1024
    await d.fetch(task_for(sftp_server.url("resume.bin")), download_writer(fourth))
    entry = await fourth.commit(
        expected_sha256=hashlib.sha256(changed).hexdigest(), expected_size=len(changed)
    )
    assert entry.size == len(changed)


async def test_cancellation_leaves_nothing_committed(
    tmp_path: Path, sftp_server: SftpServer
) -> None:
    (sftp_server.files / "cancel.bin").write_bytes(os.urandom(4 * MiB))
    d = downloader(tmp_path, sftp_server, chunk_size="512KiB")
    c = cache(tmp_path)
    pending = await c.create("c")
    writer = CountingWriter(download_writer(pending), 1, None)
    with trio.CancelScope() as scope:
        writer.scope = scope
        await d.fetch(task_for(sftp_server.url("cancel.bin")), writer)
    assert scope.cancelled_caught
    assert writer.chunks == [512 * 1024], "stopped at the first chunk boundary"
    await pending.abort()
    assert await c.lookup("c") is None
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and "c" in p.name]


async def test_guard_refuses_before_connecting(
    tmp_path: Path, sftp_server: SftpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = downloader(tmp_path, sftp_server)
    connects: list[object] = []

    async def no_connect(*args: object, **kwargs: object) -> object:
        connects.append(args)
        raise AssertionError("connected")

    monkeypatch.setattr(trio, "open_tcp_stream", no_connect)

    async def private(host: str, port: int) -> Sequence[IPAddress]:
        return [ipaddress.ip_address("10.1.2.3")]

    d.guard.resolver = private
    for url in (
        "sftp://u@files.example.org/data.bin",  # a name that resolves to a private address
        "sftp://u@10.0.0.7/data.bin",
        "sftp://u@169.254.169.254:22/latest",
        "sftp://u@[::1]/x",
    ):
        assert await reason_of(tmp_path, d, url) == Reason.BLOCKED, url
    assert connects == []
    # Loopback is blocked too without the allow-list.
    strict = downloader(tmp_path, sftp_server, allow_networks=[])
    assert await reason_of(tmp_path, strict, sftp_server.url("x")) == Reason.BLOCKED


async def test_connection_refused_is_transient(tmp_path: Path, sftp_server: SftpServer) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    d = downloader(tmp_path, sftp_server)
    with pytest.raises(TransientError) as caught:
        await fetch(tmp_path, d, f"sftp://u@127.0.0.1:{port}/x")
    assert caught.value.reason == Reason.CONNECTION


async def test_server_hanging_up_is_transient(tmp_path: Path, sftp_server: SftpServer) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def hang_up(stream: trio.SocketStream) -> None:
        await stream.send_all(b"SSH-2.0-OpenSSH_9.2\r\n")
        await stream.aclose()  # mid-handshake

    d = downloader(tmp_path, sftp_server)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, hang_up, listeners)
        with pytest.raises(TransientError) as caught:
            await fetch(tmp_path, d, f"sftp://u@127.0.0.1:{port}/x")
        nursery.cancel_scope.cancel(reason="test done")
    assert caught.value.reason == Reason.CONNECTION


async def test_malformed_urls(tmp_path: Path, sftp_server: SftpServer) -> None:
    d = downloader(tmp_path, sftp_server)
    assert await reason_of(tmp_path, d, f"sftp://127.0.0.1:{sftp_server.port}/x") == "malformed"
    assert await reason_of(tmp_path, d, sftp_server.url("x") + "/") == "malformed"


def test_daemon_lands_sftp_files(daemon_env: DaemonEnv, sftp_server: SftpServer) -> None:
    env = daemon_env
    env.data["downloaders"]["sftp"] = sftp_server.settings()
    env.write()
    blobs = {f"e2e-{i}.bin": os.urandom(100_000 + i) for i in range(5)}
    for name, blob in blobs.items():
        (sftp_server.files / name).write_bytes(blob)
    events = [
        {"id": f"sftp-{i}", "url": sftp_server.url(name), "sha256": hashlib.sha256(b).hexdigest()}
        for i, (name, b) in enumerate(blobs.items())
    ]
    events.append({"id": "sftp-missing", "url": sftp_server.url("missing.bin")})
    env.start()
    submitted = env.submit_events(events)

    def settled() -> bool:
        counts = env.audit(submitted)[1]
        return counts["landed"] + counts["dead_lettered"] == len(events)

    wait_until(settled, timeout=60, what="every sftp event landed or dead-lettered")
    code, counts = env.audit(submitted)
    assert code == 0, counts
    assert counts["landed"] == 5
    assert counts["dead_lettered"] == 1
    assert counts["checksum_mismatches"] == 0
    letters = env.cli("dlq", "list", "--reason", "not_found")
    assert "sftp-missing" in letters.stdout, letters.stdout + letters.stderr
    sink = Path(env.data["sink"]["root"])
    for i, (name, blob) in enumerate(blobs.items()):
        assert (sink / f"sftp-{i}" / name).read_bytes() == blob
