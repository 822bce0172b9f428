"""The conformance kit (``lakeferry.testing``) run against every built-in component it covers.

The same classes a site team's plugin subclasses: ``http`` against the test origin (on each of
its engines, httpx and curl), ``file``
against a temporary root, the ``localfs`` cache and sink on temporary directories, and the
``onelake`` sink against the DFS emulator.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from helpers.origin import Origin, sha256_of
from lakeferry.api import ByteSize, CacheBackend, Downloader, PluginContext, Sink
from lakeferry.testing import (
    CacheConformance,
    DownloadCases,
    DownloaderConformance,
    RemoteFile,
    SinkConformance,
)
from lakeferry.units import dec_hook
from lakeferry_file import FileDownloader, FileDownloaderSettings
from lakeferry_http import HttpDownloader, HttpDownloaderSettings
from lakeferry_localfs import LocalFsCache, LocalFsCacheSettings, LocalFsSink, LocalFsSinkSettings
from lakeferry_localfs import cache as localfs_cache
from lakeferry_onelake import OneLakeSink, OneLakeSinkSettings

MiB = 2**20


class TestHttpDownloader(DownloaderConformance):
    @pytest.fixture
    def make_downloader(
        self, origin: Origin, lakeferry_context: PluginContext, http_engine: str
    ) -> Callable[[], Downloader]:
        host_port = origin.url.removeprefix("http://")
        settings = msgspec.convert(
            {
                "engine": http_engine,
                "allow_hosts": [host_port],
                "read_timeout": "0.5s",
                "connect_timeout": "2s",
            },
            HttpDownloaderSettings,
            dec_hook=dec_hook,
        )
        return lambda: HttpDownloader(settings, lakeferry_context)

    @pytest.fixture
    def download_cases(self, origin: Origin) -> DownloadCases:
        def remote(name: str, size: int) -> RemoteFile:
            return RemoteFile(origin.file_url(name, size), size, sha256_of(name, size))

        return DownloadCases(
            small=remote("conformance-small.bin", 5000),
            large=remote("conformance-large.bin", 10 * MiB),
            not_found=f"{origin.url}/missing/conformance.bin",
            server_error=f"{origin.url}/status/503",
            timeout=origin.file_url("conformance-slow.bin", 1000, route="slow", delay=3),
            url_to=lambda host, port: f"http://{host}:{port}/files/x.bin",
        )


class TestFileDownloader(DownloaderConformance):
    @pytest.fixture
    def make_downloader(
        self, tmp_path: Path, lakeferry_context: PluginContext
    ) -> Callable[[], Downloader]:
        settings = FileDownloaderSettings(roots=[str(tmp_path / "root")])
        return lambda: FileDownloader(settings, lakeferry_context)

    @pytest.fixture
    def download_cases(self, tmp_path: Path) -> DownloadCases:
        root = tmp_path / "root"
        root.mkdir()

        def local(name: str, size: int) -> RemoteFile:
            data = (hashlib.sha256(name.encode()).digest() * (size // 32 + 1))[:size]
            (root / name).write_bytes(data)
            return RemoteFile((root / name).as_uri(), size, hashlib.sha256(data).hexdigest())

        return DownloadCases(
            small=local("small.bin", 5000),
            large=local("large.bin", 9 * MiB),
            not_found=(root / "missing.bin").as_uri(),
        )


class TestLocalFsCache(CacheConformance):
    @pytest.fixture(params=["stamps", "sidecars"])
    def make_cache(
        self,
        tmp_path: Path,
        lakeferry_context: PluginContext,
        request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch,
    ) -> Callable[[int], CacheBackend]:
        """Checksums in xattrs, and in sidecars (as on a file system without user xattrs)."""
        if request.param == "sidecars":
            monkeypatch.setattr(localfs_cache, "xattrs_supported", lambda root: False)

        def make(quota: int) -> CacheBackend:
            settings = LocalFsCacheSettings(path=str(tmp_path / "cache"), quota=ByteSize(quota))
            return LocalFsCache(settings, lakeferry_context)

        return make


class TestLocalFsSink(SinkConformance):
    @pytest.fixture
    def make_sink(self, tmp_path: Path, lakeferry_context: PluginContext) -> Callable[[], Sink]:
        settings = LocalFsSinkSettings(root=str(tmp_path / "sink"))
        return lambda: LocalFsSink(settings, lakeferry_context)


class TestOneLakeSink(SinkConformance):
    """Both ways of landing a file: ``api = "blob"`` (the default) and ``"dfs"``."""

    @pytest.fixture(params=["blob", "dfs"])
    def make_sink(
        self,
        dfs_emulator: Any,
        lakeferry_context: PluginContext,
        monkeypatch: pytest.MonkeyPatch,
        request: pytest.FixtureRequest,
    ) -> Callable[[], Sink]:
        monkeypatch.setenv("LAKEFERRY_ONELAKE_SAS", "sv=2024-01-01&sig=c2VjcmV0")
        settings = msgspec.convert(
            {
                "api": request.param,
                "account_url": dfs_emulator.account_url(),
                "filesystem": "landing",
                "credential": "sas",
                "create_filesystem": True,
                "max_single_request_retries": 0,
                "timeout": "5s",
                "chunk_size": "64KiB",
            },
            OneLakeSinkSettings,
            dec_hook=dec_hook,
        )
        return lambda: OneLakeSink(settings, lakeferry_context)


class TestSftpDownloader(DownloaderConformance):
    """The example protocol plugin against the real OpenSSH server of the tests."""

    @pytest.fixture
    def make_downloader(
        self, sftp_server: Any, lakeferry_context: PluginContext
    ) -> Callable[[], Downloader]:
        from lakeferry_sftp import SftpDownloader, SftpDownloaderSettings

        # Only the server's own port is allowed, so the kit's guard case on other loopback
        # ports is refused as it would be for any private address.
        values = sftp_server.settings(allow_networks=[], read_timeout="2s")
        values["allow_hosts"] = [f"127.0.0.1:{sftp_server.port}"]
        settings = msgspec.convert(values, SftpDownloaderSettings, dec_hook=dec_hook)
        return lambda: SftpDownloader(settings, lakeferry_context)

    @pytest.fixture
    def download_cases(self, sftp_server: Any) -> DownloadCases:
        def remote(name: str, size: int) -> RemoteFile:
            data = (hashlib.sha256(name.encode()).digest() * (size // 32 + 1))[:size]
            (sftp_server.files / name).write_bytes(data)
            return RemoteFile(sftp_server.url(name), size, hashlib.sha256(data).hexdigest())

        return DownloadCases(
            small=remote("conformance-small.bin", 5000),
            large=remote("conformance-large.bin", 10 * MiB),
            not_found=sftp_server.url("conformance-missing.bin"),
            server_error=None,
            timeout=None,
            url_to=lambda host, port: f"sftp://{sftp_server.user}@{host}:{port}/x.bin",
        )
