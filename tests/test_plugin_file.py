"""The ``file`` downloader: local files inside allowed roots, into a real cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import quote

import msgspec
import pytest

from helpers.plugins import plugin_context, task_for
from lakeferry.api import ConfigError, PermanentError, Reason
from lakeferry.registry import load_registry
from lakeferry.testing import download_writer
from lakeferry_file import FileDownloader, FileDownloaderSettings
from lakeferry_localfs import LocalFsCache, LocalFsCacheSettings

MiB = 2**20


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    """(allowed root, a directory outside it)."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    return allowed, outside


def downloader(tmp_path: Path, *roots: Path | str) -> FileDownloader:
    settings = FileDownloaderSettings(roots=[str(r) for r in roots])
    return FileDownloader(settings, plugin_context(tmp_path))


def url_of(path: Path) -> str:
    return "file://" + quote(str(path))


async def fetch(tmp_path: Path, d: FileDownloader, url: str) -> tuple[bytes, int]:
    """Download ``url`` through the cache the way the download stage does; (bytes, written)."""
    cache = LocalFsCache(
        LocalFsCacheSettings(path=str(tmp_path / "cache")), plugin_context(tmp_path)
    )
    pending = await cache.create("k")
    try:
        await d.fetch(task_for(url), download_writer(pending))
    except BaseException:
        await pending.abort()
        raise
    await pending.commit(expected_sha256=None, expected_size=None)
    async with cache.open("k") as chunks:
        data = b"".join([c async for c in chunks])
    return data, pending.bytes_written


async def reason_of(tmp_path: Path, d: FileDownloader, url: str) -> str:
    with pytest.raises(PermanentError) as caught:
        await fetch(tmp_path, d, url)
    return caught.value.reason


def test_registered_by_entry_point() -> None:
    registry = load_registry()
    assert registry.for_scheme("file") == registry.get("downloader", "file")
    assert registry.get("downloader", "file").settings_type is FileDownloaderSettings


def test_settings(tmp_path: Path) -> None:
    assert msgspec.convert({}, FileDownloaderSettings).roots == []
    with pytest.raises(ConfigError, match="not an absolute path"):
        downloader(tmp_path, "relative/dir")


async def test_streams_a_file_inside_a_root(tmp_path: Path, roots: tuple[Path, Path]) -> None:
    allowed, _ = roots
    data = os.urandom(3 * MiB + 5)
    (allowed / "sub dir").mkdir()
    source = allowed / "sub dir" / "a file é.bin"
    source.write_bytes(data)
    got, written = await fetch(tmp_path, downloader(tmp_path, allowed), url_of(source))
    assert written == len(data)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()


async def test_no_roots_refuses_everything(tmp_path: Path, roots: tuple[Path, Path]) -> None:
    allowed, _ = roots
    (allowed / "f").write_bytes(b"x")
    assert await reason_of(tmp_path, downloader(tmp_path), url_of(allowed / "f")) == Reason.BLOCKED


async def test_outside_the_roots_is_blocked(tmp_path: Path, roots: tuple[Path, Path]) -> None:
    allowed, outside = roots
    (outside / "secret").write_bytes(b"s")
    d = downloader(tmp_path, allowed)
    assert await reason_of(tmp_path, d, url_of(outside / "secret")) == Reason.BLOCKED
    dotdot = f"file://{allowed}/../outside/secret"
    assert await reason_of(tmp_path, d, dotdot) == Reason.BLOCKED
    prefix_trick = tmp_path / "allowed-not"  # shares the root's string prefix
    prefix_trick.mkdir()
    (prefix_trick / "f").write_bytes(b"x")
    assert await reason_of(tmp_path, d, url_of(prefix_trick / "f")) == Reason.BLOCKED


async def test_symlinks_are_resolved_before_the_check(
    tmp_path: Path, roots: tuple[Path, Path]
) -> None:
    allowed, outside = roots
    (outside / "secret").write_bytes(b"s")
    (allowed / "link-out").symlink_to(outside / "secret")
    (allowed / "dir-out").symlink_to(outside)
    (allowed / "real").write_bytes(b"inside")
    (allowed / "link-in").symlink_to(allowed / "real")
    d = downloader(tmp_path, allowed)
    assert await reason_of(tmp_path, d, url_of(allowed / "link-out")) == Reason.BLOCKED
    assert await reason_of(tmp_path, d, url_of(allowed / "dir-out" / "secret")) == Reason.BLOCKED
    assert (await fetch(tmp_path, d, url_of(allowed / "link-in")))[0] == b"inside"


async def test_a_root_that_is_a_symlink_works(tmp_path: Path, roots: tuple[Path, Path]) -> None:
    allowed, _ = roots
    (tmp_path / "alias").symlink_to(allowed)
    (allowed / "f").write_bytes(b"data")
    d = downloader(tmp_path, tmp_path / "alias")
    assert (await fetch(tmp_path, d, url_of(tmp_path / "alias" / "f")))[0] == b"data"


async def test_missing_files_and_directories_are_not_found(
    tmp_path: Path, roots: tuple[Path, Path]
) -> None:
    allowed, _ = roots
    d = downloader(tmp_path, allowed)
    assert await reason_of(tmp_path, d, url_of(allowed / "nope")) == Reason.NOT_FOUND
    assert await reason_of(tmp_path, d, url_of(allowed)) == Reason.NOT_FOUND


async def test_special_files_are_refused_without_blocking(
    tmp_path: Path, roots: tuple[Path, Path]
) -> None:
    allowed, _ = roots
    os.mkfifo(allowed / "fifo")  # opening it for reading would wait for a writer forever
    assert (
        await reason_of(tmp_path, downloader(tmp_path, allowed), url_of(allowed / "fifo"))
        == Reason.BLOCKED
    )


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file://otherhost/etc/hostname", Reason.BLOCKED),
        ("file:relative/path", Reason.MALFORMED),
        ("http://example.org/x", Reason.UNSUPPORTED_SCHEME),
    ],
)
async def test_unusable_urls(
    tmp_path: Path, roots: tuple[Path, Path], url: str, reason: str
) -> None:
    assert await reason_of(tmp_path, downloader(tmp_path, roots[0]), url) == reason


async def test_localhost_form_is_accepted(tmp_path: Path, roots: tuple[Path, Path]) -> None:
    allowed, _ = roots
    (allowed / "f").write_bytes(b"data")
    url = f"file://localhost{quote(str(allowed / 'f'))}"
    assert (await fetch(tmp_path, downloader(tmp_path, allowed), url))[0] == b"data"
