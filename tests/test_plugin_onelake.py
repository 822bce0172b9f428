"""The ``onelake`` sink with the real Azure SDK clients, against the DFS emulator.

Every test runs its own emulator (``dfs_emulator`` fixture); the sink talks to it with a SAS or
account-key credential. The tests of puts run once per ``api`` (``blob``: Put Blob / Put Block List
through azure-storage-blob; ``dfs``: create, append, flush, rename through azure-storage-file-
datalake); those about temporary files run on ``dfs`` only. Token credentials cannot be exercised
offline (the SDK also refuses them over http), so for those the tests check which credential object
the settings build and that a missing variable is a ConfigError naming it.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import ClientSecretCredential, DefaultAzureCredential, ManagedIdentityCredential
from azure.storage.filedatalake import DataLakeServiceClient

from helpers.hops import count_hops
from helpers.plugins import T0, plugin_context
from helpers.wait import wait_until_async
from lakeferry.api import (
    CacheEntry,
    ConfigError,
    Event,
    PermanentError,
    Reason,
    SinkFile,
    SinkItem,
    TransientError,
)
from lakeferry.registry import load_registry
from lakeferry.units import dec_hook
from lakeferry_onelake import OneLakeSink, OneLakeSinkSettings
from lakeferry_onelake.credentials import build_credential

KiB = 2**10
MiB = 2**20
SAS = "sv=2024-01-01&ss=b&srt=sco&sp=rwdlac&se=2030-01-01T00:00:00Z&sig=c2VjcmV0"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class MemoryCache:
    """Just enough of a CacheBackend for a sink: files in memory, read in fixed chunks."""

    def __init__(self, read_chunk: int = 100 * KiB) -> None:
        self.files: dict[str, bytes] = {}
        self.read_chunk = read_chunk
        self.max_chunk = 0

    def add(self, key: str, data: bytes) -> SinkFile:
        self.files[key] = data
        return SinkFile(self, key, len(data), sha(data))  # type: ignore[arg-type]

    @asynccontextmanager
    async def open(self, key: str) -> AsyncIterator[AsyncIterator[bytes]]:
        data = self.files[key]  # KeyError is not FileNotFoundError: keep them apart below

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(data), self.read_chunk):
                await trio.lowlevel.checkpoint()
                yield data[start : start + self.read_chunk]

        yield chunks()

    def local_path(self, key: str) -> Path | None:
        return None


class DiskCache(MemoryCache):
    """A cache whose files are on this machine's disk (``local_path``), as localfs's are."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.opened = 0
        root.mkdir(parents=True, exist_ok=True)

    def add(self, key: str, data: bytes) -> SinkFile:
        (self.root / key).write_bytes(data)
        return super().add(key, data)

    @asynccontextmanager
    async def open(self, key: str) -> AsyncIterator[AsyncIterator[bytes]]:
        self.opened += 1
        if not (self.root / key).exists():
            raise FileNotFoundError(key)
        async with super().open(key) as chunks:
            yield chunks

    def local_path(self, key: str) -> Path:
        return self.root / key


class GoneCache(MemoryCache):
    @asynccontextmanager
    async def open(self, key: str) -> AsyncIterator[AsyncIterator[bytes]]:
        raise FileNotFoundError(key)
        yield  # pragma: no cover


def settings(**values: Any) -> OneLakeSinkSettings:
    return msgspec.convert(values, OneLakeSinkSettings, dec_hook=dec_hook)


API = "blob"
"""The ``api`` of the test running now (the ``api`` fixture sets it)."""
UPLOAD_OP = {"blob": "put_blob", "dfs": "append"}
"""The emulator's name of the request that carries a small file's bytes."""
COMMIT_OP = {"blob": "put_blob", "dfs": "rename"}
"""The emulator's name of the request that makes the file visible."""


@pytest.fixture(autouse=True, params=["blob", "dfs"])
def api(request: pytest.FixtureRequest) -> Any:
    global API
    API = request.param
    yield request.param
    API = "blob"


def blob_only() -> None:
    if API != "blob":
        pytest.skip("a behaviour of api = 'blob'")


def dfs_only() -> None:
    if API != "dfs":
        pytest.skip("temporary files exist with api = 'dfs' only")


def emulator_settings(emulator: Any, **values: Any) -> OneLakeSinkSettings:
    base = {
        "api": API,
        "account_url": emulator.account_url(),
        "filesystem": "landing",
        "credential": "sas",
        "create_filesystem": True,
        "max_single_request_retries": 0,
        "timeout": "5s",
    }
    return settings(**{**base, **values})


@asynccontextmanager
async def open_sink(tmp_path: Path, emulator: Any, **values: Any) -> AsyncIterator[OneLakeSink]:
    sink = OneLakeSink(emulator_settings(emulator, **values), plugin_context(tmp_path))
    try:
        yield sink
    finally:
        await sink.aclose()


@pytest.fixture(autouse=True)
def sas_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKEFERRY_ONELAKE_SAS", SAS)


def event(event_id: str = "ev-1") -> Event:
    return Event(id=event_id, url=f"https://origin.example/files/{event_id}.bin", created_at=T0)


def tmp_files(files: dict[str, Any]) -> list[str]:
    return [p for p in files if ".lakeferry-tmp-" in p]


# --- settings ----------------------------------------------------------------------------------


def test_settings_defaults() -> None:
    s = settings(filesystem="ws")
    assert s.account_url == "https://onelake.dfs.fabric.microsoft.com"
    assert (s.base_path, s.path_template, s.credential) == (
        "", "{date:%Y/%m/%d}/{event.id}/{filename}", "default",
    )  # fmt: skip
    assert (s.tenant_id_env, s.client_id_env, s.client_secret_env) == (
        "AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET",
    )  # fmt: skip
    assert (s.sas_token_env, s.account_key_env) == (
        "LAKEFERRY_ONELAKE_SAS", "LAKEFERRY_ONELAKE_ACCOUNT_KEY",
    )  # fmt: skip
    assert (s.credential_file, s.secret_in_config, s.create_filesystem) == ("", "", False)
    assert (s.chunk_size, s.timeout, s.max_single_request_retries, s.max_connections) == (
        8 * MiB, 60.0, 1, 32,
    )  # fmt: skip
    assert s.api == "blob"
    assert settings(filesystem="ws", chunk_size="256KiB", timeout="90s").chunk_size == 256 * KiB


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"base_path": "/Sales.Lakehouse/Files"}, "must be relative"),
        ({"base_path": "Sales.Lakehouse/../other"}, "'..'"),
        ({"base_path": "a\\b"}, "backslash"),
        ({"base_path": "Files/%41bc"}, "%XX"),
        ({"filesystem": ""}, "filesystem"),
        ({"filesystem": "a/b"}, "filesystem"),
        ({"account_url": "ftp://x"}, "not an http"),
        ({"account_url": "https://a.dfs.core.windows.net/?sv=1&sig=2"}, "query string"),
        ({"path_template": "{event.nope}"}, "path template"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": "5GiB"}, "chunk_size"),
        ({"max_single_request_retries": -1}, ">= 0"),
        ({"credential": "password"}, "Invalid enum value 'password'"),
        ({"credential": "sas", "credential_file": "f", "secret_in_config": "s"}, "not both"),
        ({"credential": "default", "secret_in_config": "s"}, "reads no secret"),
        ({"unknown_key": 1}, "unknown field"),
    ],
)
def test_settings_refuse_bad_values(values: dict[str, Any], problem: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=re.escape(problem)):
        settings(**{"filesystem": "ws", **values})


def test_settings_repr_hides_the_secret() -> None:
    s = settings(filesystem="ws", credential="sas", secret_in_config=SAS)
    assert "c2VjcmV0" not in repr(s)
    assert "secret_in_config='<redacted>'" in repr(s)


def test_the_entry_point_registers_the_sink() -> None:
    reg = load_registry().get("sink", "onelake")
    assert (reg.settings_type, reg.plugin) == (OneLakeSinkSettings, "onelake")
    chosen = settings(account_url="https://acct.dfs.core.windows.net", filesystem="fs",
                      credential="sas")  # fmt: skip
    assert isinstance(reg.factory(chosen, plugin_context(Path("."))), OneLakeSink)


# --- landing files -----------------------------------------------------------------------------


async def test_round_trip_with_sha256_metadata(tmp_path: Path, dfs_emulator: Any) -> None:
    cache = MemoryCache()
    data = os.urandom(300 * KiB + 7)
    file = cache.add("k1", data)
    async with open_sink(tmp_path, dfs_emulator) as sink:
        destination = sink.destination(event(), now=T0)
        assert destination == "2024/05/06/ev-1/ev-1.bin"
        outcome = await sink.put(file, destination, event())
        assert outcome == (destination, False)
        assert await sink.stat(destination) == CacheEntry(destination, len(data), sha(data))
    files = dfs_emulator.files("landing")
    assert list(files) == [destination]
    assert files[destination]["size"] == len(data)
    assert files[destination]["sha256"] == sha(data)
    assert files[destination]["metadata"] == {
        "lakeferry_sha256": sha(data),
        "lakeferry_event_id": "ev-1",
    }
    assert dfs_emulator.read_file("landing", destination) == data
    ops = dfs_emulator.stats()["ok"]
    if API == "dfs":
        # stat, create tmp, 1 append (300 KiB < 8 MiB), flush, rename, verify
        assert (ops["create_file"], ops["append"], ops["flush"], ops["rename"]) == (1, 1, 1, 1)
    else:
        # stat, one Put Blob (300 KiB < 8 MiB) and nothing else, no temporary path
        assert ops["put_blob"] == 1
        assert not {"create_file", "append", "flush", "rename"} & set(dfs_emulator.stats()["ops"])


async def test_a_second_put_of_the_same_file_is_skipped(tmp_path: Path, dfs_emulator: Any) -> None:
    cache = MemoryCache()
    file = cache.add("k1", b"same bytes" * 1000)
    async with open_sink(tmp_path, dfs_emulator) as sink:
        assert not (await sink.put(file, "a/same.bin", event())).skipped
        dfs_emulator.reset_stats()
        assert await sink.put(file, "a/same.bin", event()) == ("a/same.bin", True)
    if API == "dfs":
        assert dfs_emulator.stats()["ops"] == {"get_properties": 1}  # one HEAD, no create
    else:  # a Put Blob that only creates is refused (409), then one HEAD
        assert dfs_emulator.stats()["ops"] == {"put_blob": 1, "get_properties": 1}
        assert dfs_emulator.stats()["statuses"] == {"409": 1, "200": 1}


async def test_different_content_overwrites_the_target(tmp_path: Path, dfs_emulator: Any) -> None:
    cache = MemoryCache()
    first, second = cache.add("k1", b"first" * 100), cache.add("k2", b"second version" * 50)
    same_size = cache.add("k3", b"FIRST" * 100)  # same size, other sha256: not skipped
    async with open_sink(tmp_path, dfs_emulator) as sink:
        await sink.put(first, "x/file.bin", event("e1"))
        assert not (await sink.put(second, "x/file.bin", event("e2"))).skipped
        assert dfs_emulator.read_file("landing", "x/file.bin") == b"second version" * 50
        assert not (await sink.put(same_size, "x/file.bin", event("e3"))).skipped
    files = dfs_emulator.files("landing")
    assert list(files) == ["x/file.bin"]  # no temporary files left
    assert files["x/file.bin"]["metadata"] == {
        "lakeferry_sha256": sha(b"FIRST" * 100),
        "lakeferry_event_id": "e3",
    }


async def test_a_large_file_is_streamed_in_chunks(tmp_path: Path, dfs_emulator: Any) -> None:
    cache = MemoryCache(read_chunk=100 * KiB)
    data = os.urandom(3 * MiB + 12345)
    file = cache.add("big", data)
    chunk = 512 * KiB
    async with open_sink(tmp_path, dfs_emulator, chunk_size=chunk) as sink:
        await sink.put(file, "big/file.bin", event())
    stats = dfs_emulator.stats()
    if API == "dfs":
        assert stats["ok"]["append"] == math.ceil(len(data) / chunk) == 7
        assert stats["max_append_bytes"] == chunk  # each request carries one chunk
        assert stats["appended_bytes"] == len(data)
    else:  # one block per chunk, then one block list; never one request with the whole file
        assert (stats["ok"]["put_block"], stats["ok"]["put_block_list"]) == (7, 1)
        assert "put_blob" not in stats["ops"]
        assert stats["max_block_bytes"] == chunk
    assert dfs_emulator.files("landing")["big/file.bin"]["sha256"] == sha(data)


async def test_an_empty_file_lands(tmp_path: Path, dfs_emulator: Any) -> None:
    cache = MemoryCache()
    async with open_sink(tmp_path, dfs_emulator) as sink:
        await sink.put(cache.add("e", b""), "empty.bin", event())
        assert await sink.stat("empty.bin") == ("empty.bin", 0, sha(b""))
    assert "append" not in dfs_emulator.stats()["ops"]


async def test_stat(tmp_path: Path, dfs_emulator: Any) -> None:
    async with open_sink(tmp_path, dfs_emulator) as sink:
        assert await sink.stat("nothing/here.bin") is None
        await sink.put(MemoryCache().add("k", b"abc"), "dir/a.bin", event())
        assert await sink.stat("dir") is None  # a directory is not a file
        # A file landed by something else, without our metadata: stat hashes its bytes.
        client = DataLakeServiceClient(dfs_emulator.account_url(), credential=SAS)
        with client:
            fc = client.get_file_system_client("landing").get_file_client("dir/foreign.bin")
            await trio.to_thread.run_sync(lambda: fc.upload_data(b"foreign", overwrite=True))
        assert await sink.stat("dir/foreign.bin") == ("dir/foreign.bin", 7, sha(b"foreign"))


@pytest.mark.parametrize(
    ("filesystem", "base_path"),
    [
        ("My Workspace", "Sales.Lakehouse/Files/landing"),
        (
            "8e2f4c1a-0d3b-4b7e-9a51-2f6c7d8e9f01",
            "4b7e9a51-2f6c-4d8e-9f01-8e2f4c1a0d3b/Files/landing/",
        ),
    ],
)
async def test_onelake_style_workspace_and_lakehouse_paths(
    tmp_path: Path, dfs_emulator: Any, filesystem: str, base_path: str
) -> None:
    cache = MemoryCache()
    data = b"onelake" * 321
    async with open_sink(
        tmp_path, dfs_emulator, filesystem=filesystem, base_path=base_path
    ) as sink:
        destination = sink.destination(event("ev/ü"), now=T0)
        outcome = await sink.put(cache.add("k", data), destination, event("ev/ü"))
        assert outcome.destination == destination  # relative to base_path, as stat takes it
        assert await sink.stat(destination) == (destination, len(data), sha(data))
    landed = dfs_emulator.files(filesystem)
    assert list(landed) == [f"{base_path.rstrip('/')}/{destination}"]
    # Metadata travels in HTTP headers: a non-ASCII event id is stored hex-encoded.
    assert landed[f"{base_path.rstrip('/')}/{destination}"]["metadata"]["lakeferry_event_id"] == (
        "ev/ü".encode().hex()
    )


# --- what refuses, and how ---------------------------------------------------------------------


async def test_a_missing_filesystem_is_named(tmp_path: Path, dfs_emulator: Any) -> None:
    async with open_sink(
        tmp_path, dfs_emulator, filesystem="nope", create_filesystem=False
    ) as sink:
        with pytest.raises(TransientError) as caught:
            await sink.put(MemoryCache().add("k", b"x"), "a.bin", event())
        assert caught.value.reason == "sink_missing"
        assert "filesystem 'nope' does not exist" in str(caught.value)
        with pytest.raises(TransientError, match="'nope' does not exist"):
            await sink.stat("a.bin")


async def test_a_directory_in_the_way_is_permanent(tmp_path: Path, dfs_emulator: Any) -> None:
    cache = MemoryCache()
    async with open_sink(tmp_path, dfs_emulator) as sink:
        await sink.put(cache.add("k", b"x"), "a/b/c.bin", event())
        with pytest.raises(PermanentError) as caught:
            await sink.put(cache.add("k2", b"y"), "a/b", event())
        assert caught.value.reason == Reason.INVALID_PATH
        with pytest.raises(PermanentError) as caught:  # a file in the way of a directory
            await sink.put(cache.add("k3", b"z"), "a/b/c.bin/d.bin", event())
        assert caught.value.reason == Reason.INVALID_PATH
    assert sorted(dfs_emulator.files("landing")) == ["a/b/c.bin"]


async def test_a_corrupt_cached_file_never_lands(tmp_path: Path, dfs_emulator: Any) -> None:
    cache = MemoryCache()
    file = cache.add("k", b"the bytes")
    liar = SinkFile(cache, "k", file.size, "0" * 64)  # type: ignore[arg-type]
    short = SinkFile(cache, "k", file.size + 1, file.sha256)  # type: ignore[arg-type]
    async with open_sink(tmp_path, dfs_emulator) as sink:
        with pytest.raises(PermanentError) as caught:
            await sink.put(liar, "c.bin", event())
        assert caught.value.reason == Reason.CHECKSUM_MISMATCH
        with pytest.raises(PermanentError) as caught:
            await sink.put(short, "c.bin", event())
        assert caught.value.reason == Reason.SIZE_MISMATCH
        with pytest.raises(PermanentError) as caught:
            await sink.put(GoneCache().add("g", b"x"), "c.bin", event())
        assert caught.value.reason == Reason.CACHE_MISSING
    assert dfs_emulator.files("landing") == {}  # temporary files deleted, nothing committed


async def test_a_small_file_on_local_disk_is_one_put_blob_from_one_worker_thread(
    tmp_path: Path, dfs_emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The common case on the Azure path (a small file in the localfs cache): read, checked
    and put in one worker thread with one request, the cache's stream not opened."""
    blob_only()
    cache = DiskCache(tmp_path / "cache")
    data = os.urandom(64 * KiB)
    file = cache.add("k", data)
    async with open_sink(tmp_path, dfs_emulator) as sink:
        await sink.stat("warm.bin")  # the filesystem check, out of the way
        dfs_emulator.reset_stats()
        hops = count_hops(monkeypatch)
        assert await sink.put(file, "d/small.bin", event()) == ("d/small.bin", False)
        hops.counting = False
    assert hops.count == 1
    assert cache.opened == 0
    stats = dfs_emulator.stats()
    assert stats["ops"] == {"put_blob": 1}  # a new file: one request
    assert stats["md5_checked"] == 1  # Content-MD5 on the upload, checked by the server
    assert dfs_emulator.files("landing")["d/small.bin"]["sha256"] == sha(data)


async def test_a_cancelled_delete_of_a_temporary_returns_without_waiting_for_its_request(
    tmp_path: Path, dfs_emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleting a temporary file is best effort: a cancelled wait (a drain) returns at once and
    the request finishes in its thread; the file stays an orphan to delete later."""
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    class SlowFile:
        def delete_file(self) -> None:
            started.set()
            release.wait(30)
            finished.set()

    async with open_sink(tmp_path, dfs_emulator) as sink:
        monkeypatch.setattr(sink, "_file", lambda path: SlowFile())
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sink._delete_quietly, "d/.x.lakeferry-tmp-1")
                await trio.to_thread.run_sync(started.wait, 30)
                scope.cancel()
        assert scope.cancelled_caught
        assert not finished.is_set()  # returned while its request still ran
        assert sink._orphans == {"d/.x.lakeferry-tmp-1"}
        release.set()
        await trio.to_thread.run_sync(finished.wait, 30)
    assert finished.is_set()


async def test_every_blob_upload_request_carries_content_md5(
    tmp_path: Path, dfs_emulator: Any
) -> None:
    blob_only()
    cache = DiskCache(tmp_path / "cache")
    data = os.urandom(3 * MiB + 1)
    async with open_sink(tmp_path, dfs_emulator, chunk_size=512 * KiB) as sink:
        await sink.put(cache.add("big", data), "big.bin", event())
    stats = dfs_emulator.stats()
    assert cache.opened == 1  # larger than chunk_size: streamed through the cache
    assert stats["ok"]["put_block"] == stats["md5_checked"] == 7
    assert dfs_emulator.read_file("landing", "big.bin") == data


async def test_a_corrupt_file_on_local_disk_never_lands(tmp_path: Path, dfs_emulator: Any) -> None:
    cache = DiskCache(tmp_path / "cache")
    file = cache.add("k", b"the bytes")
    liar = SinkFile(cache, "k", file.size, "0" * 64)  # type: ignore[arg-type]
    short = SinkFile(cache, "k", file.size + 1, file.sha256)  # type: ignore[arg-type]
    gone = cache.add("g", b"x")
    (cache.root / "g").unlink()
    async with open_sink(tmp_path, dfs_emulator) as sink:
        for bad, reason in ((liar, Reason.CHECKSUM_MISMATCH), (short, Reason.SIZE_MISMATCH)):
            with pytest.raises(PermanentError) as caught:
                await sink.put(bad, "c.bin", event())
            assert caught.value.reason == reason
        with pytest.raises(PermanentError) as caught:
            await sink.put(gone, "c.bin", event())
        assert caught.value.reason == Reason.CACHE_MISSING
    assert dfs_emulator.files("landing") == {}


async def test_proxies_come_from_the_environment_read_once(
    tmp_path: Path, dfs_emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """requests reads the environment (proxies, CA bundle, ~/.netrc) again for every request
    unless told not to: 6 % of the daemon's CPU on the Azure path. The sink reads it once."""
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    cache = MemoryCache()
    dead = "http://127.0.0.1:9"  # the discard port: nothing listens
    async with open_sink(tmp_path, dfs_emulator) as sink:
        monkeypatch.setenv("HTTP_PROXY", dead)
        monkeypatch.setenv("http_proxy", dead)
        assert not (await sink.put(cache.add("k", b"a"), "p.bin", event())).skipped
    async with open_sink(tmp_path, dfs_emulator, timeout="2s") as sink:  # built with the proxy
        with pytest.raises(TransientError) as caught:
            await sink.put(cache.add("k", b"b"), "p.bin", event())
        assert caught.value.reason == "sink_unavailable"
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with open_sink(tmp_path, dfs_emulator) as sink:  # NO_PROXY is honoured too
        assert not (await sink.put(cache.add("k", b"c"), "p.bin", event())).skipped


async def test_a_directory_with_a_percent_escape_is_refused(
    tmp_path: Path, dfs_emulator: Any
) -> None:
    # The SDK's rename decodes %XX in its source path: such a put could never finish.
    async with open_sink(tmp_path, dfs_emulator) as sink:
        with pytest.raises(PermanentError) as caught:
            await sink.put(MemoryCache().add("k", b"x"), "a%41b/c.bin", event())
        assert caught.value.reason == Reason.INVALID_PATH
        await sink.put(MemoryCache().add("k", b"x"), "dir/100%41.bin", event())  # a name may
    assert list(dfs_emulator.files("landing")) == ["dir/100%41.bin"]


# --- faults ------------------------------------------------------------------------------------


async def test_throttling_with_retry_after_is_transient(tmp_path: Path, dfs_emulator: Any) -> None:
    cache = MemoryCache()
    async with open_sink(tmp_path, dfs_emulator) as sink:
        for status in (503, 429):
            dfs_emulator.fail_next(1, status=status, retry_after=7, ops=[UPLOAD_OP[API]])
            with pytest.raises(TransientError) as caught:
                await sink.put(cache.add("k", b"x" * 100), "t.bin", event())
            assert (caught.value.reason, caught.value.retry_after) == (Reason.THROTTLED, 7.0)
            assert f"HTTP {status}" in str(caught.value)
        dfs_emulator.fail_next(1, status=500)
        with pytest.raises(TransientError) as caught:
            await sink.put(cache.add("k", b"x" * 100), "t.bin", event())
        assert (caught.value.reason, caught.value.retry_after) == ("sink_unavailable", None)
        assert not (await sink.put(cache.add("k", b"x" * 100), "t.bin", event())).skipped
    assert list(dfs_emulator.files("landing")) == ["t.bin"]  # failed attempts left no tmp files


async def test_the_sdk_retries_once_by_itself(tmp_path: Path, dfs_emulator: Any) -> None:
    async with open_sink(tmp_path, dfs_emulator, max_single_request_retries=1) as sink:
        dfs_emulator.fail_next(1, status=503, retry_after=1, ops=[COMMIT_OP[API]])
        assert not (await sink.put(MemoryCache().add("k", b"x"), "r.bin", event())).skipped
    stats = dfs_emulator.stats()
    assert (stats["faults"]["status_503"], stats["ops"][COMMIT_OP[API]]) == (1, 2)


async def test_a_burst_of_503_longer_than_the_sdk_retries(
    tmp_path: Path, dfs_emulator: Any
) -> None:
    async with open_sink(tmp_path, dfs_emulator, max_single_request_retries=1) as sink:
        dfs_emulator.fail_next(2, status=503, retry_after=3)
        with pytest.raises(TransientError) as caught:
            await sink.put(MemoryCache().add("k", b"x"), "r.bin", event())
        assert (caught.value.reason, caught.value.retry_after) == (Reason.THROTTLED, 3.0)


async def test_dropped_connections_are_transient(tmp_path: Path, dfs_emulator: Any) -> None:
    cache = MemoryCache()
    async with open_sink(tmp_path, dfs_emulator) as sink:
        dfs_emulator.drop_connections(1, ops=[UPLOAD_OP[API]])
        with pytest.raises(TransientError) as caught:
            await sink.put(cache.add("k", b"y" * 1000), "d.bin", event())
        assert caught.value.reason == "sink_unavailable"
        assert "connection" in str(caught.value)
        await sink.put(cache.add("k", b"y" * 1000), "d.bin", event())
    assert dfs_emulator.stats()["faults"]["dropped"] == 1
    assert list(dfs_emulator.files("landing")) == ["d.bin"]


async def test_a_lost_rename_response_then_the_retry_is_skipped(
    tmp_path: Path, dfs_emulator: Any
) -> None:
    # The rename (Put Blob) happens but its response is lost: the next attempt finds the file
    # in place.
    cache = MemoryCache()
    async with open_sink(tmp_path, dfs_emulator) as sink:
        dfs_emulator.drop_connections(1, ops=[COMMIT_OP[API]], after=True)
        with pytest.raises(TransientError):
            await sink.put(cache.add("k", b"z" * 10), "l.bin", event())
        assert (await sink.put(cache.add("k", b"z" * 10), "l.bin", event())).skipped
    assert list(dfs_emulator.files("landing")) == ["l.bin"]


async def test_a_block_list_whose_response_is_lost_is_not_refused_on_the_sdks_retry(
    tmp_path: Path, dfs_emulator: Any
) -> None:
    """The SDK sends Put Block List again when the first response is lost; the blocks are
    committed by then, so the service answers 400 InvalidBlockList to the retry. The file is
    there, whole: that is a landed file, not a rejected one."""
    blob_only()
    cache = MemoryCache()
    data = os.urandom(300 * KiB)
    async with open_sink(
        tmp_path, dfs_emulator, chunk_size=128 * KiB, max_single_request_retries=1
    ) as sink:
        dfs_emulator.drop_connections(1, ops=["put_block_list"], after=True)
        assert not (await sink.put(cache.add("k", data), "big.bin", event())).skipped
    stats = dfs_emulator.stats()
    assert (stats["ops"]["put_block_list"], stats["statuses"]["400"]) == (2, 1)
    assert dfs_emulator.read_file("landing", "big.bin") == data


async def test_temporary_files_that_could_not_be_deleted_are_retried(
    tmp_path: Path, dfs_emulator: Any
) -> None:
    dfs_only()
    cache = MemoryCache()
    async with open_sink(tmp_path, dfs_emulator) as sink:
        dfs_emulator.fail_next(1, status=503, ops=["flush"])
        dfs_emulator.fail_next(1, status=503, ops=["delete"])  # the cleanup fails too
        with pytest.raises(TransientError):
            await sink.put(cache.add("k", b"w"), "o/w.bin", event())
        assert len(tmp_files(dfs_emulator.files("landing"))) == 1
        await sink.put(cache.add("k2", b"v"), "o/v.bin", event())  # deletes the leftover
    assert sorted(dfs_emulator.files("landing")) == ["o/v.bin"]


async def test_a_slow_sink_times_out(tmp_path: Path, dfs_emulator: Any) -> None:
    async with open_sink(tmp_path, dfs_emulator, timeout="300ms") as sink:
        dfs_emulator.latency(1.0)
        with pytest.raises(TransientError) as caught:
            await sink.stat("x.bin")
        dfs_emulator.latency(0)
    assert caught.value.reason == "sink_unavailable"
    assert "timed out" in str(caught.value)


@pytest.mark.parametrize(("status", "reason"), [(401, "sink_denied"), (403, "sink_denied")])
async def test_a_refused_credential_is_transient(
    tmp_path: Path, dfs_emulator: Any, status: int, reason: str
) -> None:
    async with open_sink(tmp_path, dfs_emulator) as sink:
        dfs_emulator.fail_next(1, status=status)
        with pytest.raises(TransientError) as caught:
            await sink.put(MemoryCache().add("k", b"x"), "a.bin", event())
    assert caught.value.reason == reason
    assert "access is granted" in str(caught.value)


async def test_other_client_errors_are_permanent(tmp_path: Path, dfs_emulator: Any) -> None:
    async with open_sink(tmp_path, dfs_emulator) as sink:
        dfs_emulator.fail_next(
            1, status=400, code="InvalidFileOrDirectoryPathName",
            ops=["put_blob" if API == "blob" else "create_file"],
        )  # fmt: skip
        with pytest.raises(PermanentError) as caught:
            await sink.put(MemoryCache().add("k", b"x"), "a.bin", event())
    assert caught.value.reason == Reason.SINK_REJECTED
    assert "InvalidFileOrDirectoryPathName" in str(caught.value)


# --- credentials -------------------------------------------------------------------------------


def test_the_emulator_refuses_requests_without_a_credential(dfs_emulator: Any) -> None:
    dfs_emulator.create_filesystem("landing")
    url = f"{dfs_emulator.account_url()}/landing?restype=container"
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(url, timeout=5)
    assert caught.value.code == 401
    assert caught.value.headers["x-ms-error-code"] == "NoAuthenticationInformation"
    caught.value.close()
    with (
        DataLakeServiceClient(dfs_emulator.account_url()) as client,
        pytest.raises(ClientAuthenticationError) as refused,
    ):
        client.get_file_system_client("landing").get_file_system_properties()
    assert refused.value.status_code == 401
    with urllib.request.urlopen(f"{url}&sv=2024-01-01&sig=x", timeout=5) as response:
        assert response.status == 200  # any SAS is accepted: signatures are not verified


async def test_account_key_from_the_environment(
    tmp_path: Path, dfs_emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_KEY", ACCOUNT_KEY)
    async with open_sink(
        tmp_path, dfs_emulator, credential="account_key", account_key_env="MY_KEY"
    ) as sink:
        await sink.put(MemoryCache().add("k", b"keyed"), "k.bin", event())
    assert list(dfs_emulator.files("landing")) == ["k.bin"]


async def test_account_key_from_a_systemd_credential(
    tmp_path: Path, dfs_emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "onelake-key").write_text(ACCOUNT_KEY + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.delenv("LAKEFERRY_ONELAKE_ACCOUNT_KEY", raising=False)
    async with open_sink(
        tmp_path, dfs_emulator, credential="account_key", credential_file="onelake-key"
    ) as sink:
        await sink.put(MemoryCache().add("k", b"keyed"), "k.bin", event())
    # and by absolute path, without $CREDENTIALS_DIRECTORY
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    async with open_sink(
        tmp_path, dfs_emulator, credential="account_key",
        credential_file=str(creds / "onelake-key"),
    ) as sink:  # fmt: skip
        assert await sink.stat("k.bin") == ("k.bin", 5, sha(b"keyed"))


def test_sas_from_a_file_or_the_config(tmp_path: Path) -> None:
    secret_file = tmp_path / "sas"
    secret_file.write_text("?" + SAS)
    url = "https://acct.dfs.core.windows.net"
    s = settings(
        account_url=url, filesystem="c", credential="sas", credential_file=str(secret_file)
    )
    assert build_credential(s, {}) == SAS  # the leading '?' goes
    s = settings(account_url=url, filesystem="c", credential="sas", secret_in_config=SAS)
    assert build_credential(s, {}) == SAS
    with pytest.raises(ConfigError) as caught:
        build_credential(settings(filesystem="c", credential="sas"), {"LAKEFERRY_ONELAKE_SAS": "x"})
    assert (caught.value.key, "sig=" in caught.value.problem) == ("sink.sas_token_env", True)


def test_account_key_builds_a_named_key_for_the_account() -> None:
    s = settings(
        account_url="https://mylake.dfs.core.windows.net", filesystem="c",
        credential="account_key",
    )  # fmt: skip
    credential = build_credential(s, {"LAKEFERRY_ONELAKE_ACCOUNT_KEY": ACCOUNT_KEY})
    assert isinstance(credential, AzureNamedKeyCredential)
    assert credential.named_key == ("mylake", ACCOUNT_KEY)


def test_service_principal_settings_build_a_client_secret_credential() -> None:
    env = {"AZURE_TENANT_ID": str(uuid.uuid4()), "AZURE_CLIENT_ID": str(uuid.uuid4()),
           "AZURE_CLIENT_SECRET": "s3cret"}  # fmt: skip
    credential = build_credential(settings(filesystem="ws", credential="service_principal"), env)
    assert isinstance(credential, ClientSecretCredential)
    credential.close()
    custom = settings(
        filesystem="ws", credential="service_principal", tenant_id_env="T", client_id_env="C",
        client_secret_env="S",
    )  # fmt: skip
    credential = build_credential(custom, {"T": "t", "C": "c", "S": "s"})
    assert isinstance(credential, ClientSecretCredential)
    credential.close()


@pytest.mark.parametrize(
    ("missing", "key"),
    [
        ("AZURE_TENANT_ID", "sink.tenant_id_env"),
        ("AZURE_CLIENT_ID", "sink.client_id_env"),
        ("AZURE_CLIENT_SECRET", "sink.client_secret_env"),
    ],
)
def test_a_missing_variable_is_a_config_error_naming_it(missing: str, key: str) -> None:
    env = {"AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c", "AZURE_CLIENT_SECRET": "s"}
    del env[missing]
    with pytest.raises(ConfigError) as caught:
        build_credential(settings(filesystem="ws", credential="service_principal"), env)
    assert caught.value.key == key
    assert missing in caught.value.problem


def test_credential_file_problems_are_config_errors(tmp_path: Path) -> None:
    s = settings(filesystem="ws", credential="service_principal", credential_file="sp-secret")
    env = {"AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c"}
    with pytest.raises(ConfigError, match=r"CREDENTIALS_DIRECTORY is not set"):
        build_credential(s, env)
    with pytest.raises(ConfigError, match=r"cannot read"):
        build_credential(s, {**env, "CREDENTIALS_DIRECTORY": str(tmp_path)})
    (tmp_path / "sp-secret").write_text("\n")
    with pytest.raises(ConfigError, match=r"is empty"):
        build_credential(s, {**env, "CREDENTIALS_DIRECTORY": str(tmp_path)})
    (tmp_path / "sp-secret").write_text("s3cret\n")
    credential = build_credential(s, {**env, "CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert isinstance(credential, ClientSecretCredential)
    credential.close()
    bad = settings(filesystem="ws", credential="sas", credential_file="../x")
    with pytest.raises(ConfigError, match="credential name"):
        build_credential(bad, {"CREDENTIALS_DIRECTORY": str(tmp_path)})


def test_default_and_managed_identity_credentials() -> None:
    default = build_credential(settings(filesystem="ws"), {})
    assert isinstance(default, DefaultAzureCredential)
    default.close()
    managed = build_credential(settings(filesystem="ws", credential="managed_identity"), {})
    assert isinstance(managed, ManagedIdentityCredential)
    managed.close()


def test_token_credentials_need_https(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        OneLakeSink(
            settings(account_url="http://127.0.0.1:1/devstoreaccount1", filesystem="ws"),
            plugin_context(tmp_path),
        )
    assert caught.value.key == "sink.account_url"
    assert "HTTPS" in caught.value.problem


async def test_a_onelake_sink_builds_without_network(tmp_path: Path) -> None:
    # The default settings name OneLake; building the sink does no I/O (tokens come later).
    sink = OneLakeSink(
        settings(filesystem="My Workspace", base_path="Sales.Lakehouse/Files"),
        plugin_context(tmp_path),
    )
    assert (
        sink.where == "https://onelake.dfs.fabric.microsoft.com/My Workspace/Sales.Lakehouse/Files"
    )
    await sink.aclose()


_KILLED_PUT = """
import json, logging, sys
from pathlib import Path
import trio
from lakeferry.api import Event, PluginContext, SinkFile
from lakeferry_onelake import OneLakeSink, OneLakeSinkSettings
import msgspec
from lakeferry.units import dec_hook

class Stalling:
    # A cache whose file yields one chunk, then never another: the put hangs mid-stream.
    async def _chunks(self):
        yield b"x" * 65536
        await trio.sleep_forever()
    def open(self, key):
        from contextlib import asynccontextmanager
        @asynccontextmanager
        async def opened():
            yield self._chunks()
        return opened()
    def local_path(self, key):
        return None

async def main():
    settings = msgspec.convert(json.loads(sys.argv[1]), OneLakeSinkSettings, dec_hook=dec_hook)
    context = PluginContext(state_dir=Path(sys.argv[2]), logger=logging.getLogger(),
                            owner="vm1.upload-1")
    sink = OneLakeSink(settings, context)
    event = Event(id="big", url="https://origin.example/big.bin")
    await sink.put(SinkFile(Stalling(), "k", 3 << 20, "0" * 64), "d/big.bin", event)

trio.run(main)
"""


def _temporaries(emulator: Any) -> list[str]:
    service = DataLakeServiceClient(emulator.account_url(), credential=SAS)
    try:
        names = [p.name for p in service.get_file_system_client("landing").get_paths()]
    except Exception:  # the filesystem is not created yet
        return []
    finally:
        service.close()
    return [n for n in names if ".lakeferry-tmp-" in n]


@pytest.mark.slow
async def test_a_put_killed_mid_way_is_swept_by_the_owners_next_start(
    tmp_path: Path, dfs_emulator: Any
) -> None:
    """Found after kill -9: temporary files stayed in the lake beside landed ones, and
    nothing ever removed them. The owner's next start deletes them, without listing the lake;
    another owner's start leaves them alone (its own puts may be under way)."""
    dfs_only()
    import json
    import signal
    import sys

    state = tmp_path / "state"
    values = {
        "api": "dfs", "account_url": dfs_emulator.account_url(), "filesystem": "landing",
        "credential": "sas", "create_filesystem": True, "max_single_request_retries": 0,
        "timeout": "5s",
    }  # fmt: skip
    script = tmp_path / "put.py"
    script.write_text(_KILLED_PUT)
    put = await trio.lowlevel.open_process(
        [sys.executable, str(script), json.dumps(values), str(state)]
    )
    try:

        def temporaries() -> list[str]:
            assert put.poll() is None, "the put ended on its own"
            return _temporaries(dfs_emulator)

        await wait_until_async(temporaries, timeout=60, what="the put's temporary file")
    finally:
        put.send_signal(signal.SIGKILL)
        await put.wait()
    [left] = _temporaries(dfs_emulator)
    assert left.startswith("d/.big.bin.lakeferry-tmp-")

    cache = MemoryCache()
    other = OneLakeSink(emulator_settings(dfs_emulator), plugin_context(state, "vm2.upload-1"))
    try:
        assert await other.sweep() == 0
        assert [i async for i in other.walk()] == [SinkItem(left, True)]
    finally:
        await other.aclose()
    owner = OneLakeSink(emulator_settings(dfs_emulator), plugin_context(state, "vm1.upload-1"))
    try:
        assert await owner.sweep() == 1
        assert _temporaries(dfs_emulator) == []
        await owner.put(cache.add("k", b"v"), "d/v.bin", event())
        assert [i async for i in owner.walk()] == [SinkItem("d/v.bin", False)]
        assert await owner.sweep() == 0  # the journal was cleared
    finally:
        await owner.aclose()


async def test_a_leftover_that_could_not_be_deleted_is_swept_after_a_restart(
    tmp_path: Path, dfs_emulator: Any
) -> None:
    dfs_only()
    cache = MemoryCache()
    async with open_sink(tmp_path, dfs_emulator) as sink:
        dfs_emulator.fail_next(1, status=503, ops=["flush"])
        dfs_emulator.fail_next(1, status=503, ops=["delete"])  # the cleanup fails too
        with pytest.raises(TransientError):
            await sink.put(cache.add("k", b"w"), "o/w.bin", event())
    assert len(tmp_files(dfs_emulator.files("landing"))) == 1
    # stopped before a retry, and restarted with api = "blob", which makes no temporary files
    # but still sweeps what a "dfs" run left
    async with open_sink(tmp_path, dfs_emulator, api="blob") as restarted:
        assert await restarted.sweep() == 1
    assert tmp_files(dfs_emulator.files("landing")) == []
