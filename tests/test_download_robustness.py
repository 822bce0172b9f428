"""Download robustness: resume with Range, slow drips, size limits, full disks, old partials.

Most tests run the ``http`` downloader against the real origin (``/ranged`` supports Range,
If-Range, ETag and Last-Modified, and cuts its first response short) into the real ``localfs``
cache, one attempt at a time the way the download stage does it (:func:`attempt`). The end of
the file runs the daemon as a process: a resumed download, a checksum mismatch that repeats,
and a cache on a tiny tmpfs that fills up (root only: mounting needs it). Every test that
downloads runs on each engine of the ``http`` downloader (httpx, curl); the daemon's tests on the
default engine only.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from helpers.daemon import DaemonEnv
from helpers.http_engines import DownloaderFactory
from helpers.markers import starts_processes
from helpers.origin import Origin, content, sha256_of
from helpers.plugins import plugin_context, task_for
from helpers.wait import wait_for
from lakeferry.api import (
    CacheEntry,
    PermanentError,
    Reason,
    TransientError,
)
from lakeferry.stages.bounded import BoundedWriter
from lakeferry.stages.download import keep_partial_after
from lakeferry_http import HttpDownloader, HttpDownloaderSettings
from lakeferry_localfs import LocalFsCache, LocalFsCacheSettings
from lakeferry_localfs.cache import LocalFsPendingFile

KiB = 1024
MiB = 2**20
DEFAULT_ENGINE = next(
    f.default for f in msgspec.structs.fields(HttpDownloaderSettings) if f.name == "engine"
)


def make_cache(root: Path, **settings: Any) -> LocalFsCache:
    return LocalFsCache(
        LocalFsCacheSettings(path=str(root), **settings), plugin_context(root.parent)
    )


@pytest.fixture(scope="module")
def origin(engine_origin: Origin) -> Origin:
    """An origin per engine (the ranged route keeps state per file name)."""
    return engine_origin


@pytest.fixture
def daemon_env(daemon_env: DaemonEnv, http_engine: str) -> DaemonEnv:
    """The daemon, on the default engine only: a whole daemon per engine cost the suite a
    minute, and what differs between the engines is covered engine by engine above (and in
    tests/test_plugin_http.py, tests/test_ssrf.py and the conformance kit)."""
    if http_engine != DEFAULT_ENGINE:
        pytest.skip(f"daemon-level tests run on the default engine ({DEFAULT_ENGINE})")
    daemon_env.data["downloaders"]["http"]["engine"] = http_engine
    daemon_env.write()
    return daemon_env


async def attempt(
    d: HttpDownloader, cache: LocalFsCache, url: str, key: str = "k", **event: Any
) -> CacheEntry:
    """One download attempt exactly as the download stage makes it (resume, keep or discard)."""
    task = task_for(url, event_id=key, **event)
    async with cache.reserve(task.event.size) as reservation:
        pending = await cache.create(key, resume=d.supports_resume)
        try:
            out = BoundedWriter(pending, reservation, task.event.size)
            await out.cover_kept_bytes()
            await d.fetch(task, out)
            return await pending.commit(
                expected_sha256=task.event.sha256, expected_size=task.event.size
            )
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await pending.abort(keep_partial=keep_partial_after(exc))
            raise


def leftovers(cache: LocalFsCache) -> list[str]:
    return sorted(p.name.split(".", 1)[1] for p in cache.root.rglob("*.*") if ".meta" not in p.name)


# --- resuming ------------------------------------------------------------------------------------


async def test_second_attempt_fetches_only_the_rest(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory
) -> None:
    name, size, cut = "resume-etag.bin", 300_000, 100_000
    url = origin.file_url(name, size, route="ranged", cut=cut)
    cache = make_cache(tmp_path / "cache")
    async with downloader(tmp_path) as d:
        with pytest.raises(TransientError) as first:
            await attempt(d, cache, url)
        assert first.value.reason == Reason.CONNECTION  # body ended early
        assert cache.kept_partials("k") == 1
        assert cache.usage().bytes == cut  # kept bytes count against the quota
        entry = await attempt(d, cache, url, sha256=sha256_of(name, size), size=size)
    assert (entry.size, entry.sha256) == (size, sha256_of(name, size))
    path = f"/ranged/{name}"
    etag = f'"{sha256_of(name, size)[:16]}"'
    assert origin.ranged_requests(path) == [(None, None), (f"bytes={cut}-", etag)]
    assert origin.bytes_sent(path) == size  # 100,000 + 200,000: nothing fetched twice
    assert cache.kept_partials("k") == 0
    assert cache.usage().bytes == size
    assert leftovers(cache) == []


async def test_last_modified_is_a_validator_too(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory
) -> None:
    name, size = "resume-lm.bin", 200_000
    url = origin.file_url(name, size, route="ranged", validator="last-modified")
    cache = make_cache(tmp_path / "cache")
    async with downloader(tmp_path) as d:
        with pytest.raises(TransientError):
            await attempt(d, cache, url)
        entry = await attempt(d, cache, url)
    assert entry.sha256 == sha256_of(name, size)
    (_, _), (second_range, if_range) = origin.ranged_requests(f"/ranged/{name}")
    assert second_range == f"bytes={size // 2}-"
    assert if_range is not None
    assert if_range.endswith("GMT")
    assert origin.bytes_sent(f"/ranged/{name}") == size


async def test_changed_content_restarts_from_zero(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory
) -> None:
    """If-Range does not match: the server sends the new file whole; the kept bytes go."""
    name, size, cut = "resume-changed.bin", 150_000, 60_000
    url = origin.file_url(name, size, route="ranged", cut=cut, change=1)
    cache = make_cache(tmp_path / "cache")
    async with downloader(tmp_path) as d:
        with pytest.raises(TransientError):
            await attempt(d, cache, url)
        entry = await attempt(d, cache, url)
    assert entry.sha256 == sha256_of(f"{name}#2", size) != sha256_of(name, size)
    assert origin.bytes_sent(f"/ranged/{name}") == cut + size
    assert [r for r, _ in origin.ranged_requests(f"/ranged/{name}")] == [None, f"bytes={cut}-"]


async def test_server_without_ranges_restarts_from_zero(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory
) -> None:
    name, size, cut = "resume-noranges.bin", 150_000, 50_000
    url = origin.file_url(name, size, route="ranged", cut=cut, ranges=0)
    cache = make_cache(tmp_path / "cache")
    async with downloader(tmp_path) as d:
        with pytest.raises(TransientError):
            await attempt(d, cache, url)
        entry = await attempt(d, cache, url)
    assert entry.sha256 == sha256_of(name, size)
    assert origin.bytes_sent(f"/ranged/{name}") == cut + size


async def test_without_a_validator_nothing_is_kept(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory
) -> None:
    name, size = "resume-novalidator.bin", 120_000
    url = origin.file_url(name, size, route="ranged", validator="none")
    cache = make_cache(tmp_path / "cache")
    async with downloader(tmp_path) as d:
        with pytest.raises(TransientError):
            await attempt(d, cache, url)
        assert cache.kept_partials("k") == 0
        assert leftovers(cache) == []
        entry = await attempt(d, cache, url)
    assert entry.sha256 == sha256_of(name, size)
    assert origin.ranged_requests(f"/ranged/{name}") == [(None, None), (None, None)]


async def test_unsatisfiable_range_restarts_with_a_plain_request(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory
) -> None:
    """More bytes kept than the file has now: 416, then one plain GET within the attempt."""
    name, size = "resume-416.bin", 80_000
    url = origin.file_url(name, size, route="ranged", cuts=0)
    cache = make_cache(tmp_path / "cache")
    pending = await cache.create("k")
    await pending.write(b"x" * 100_000)
    pending.set_validator(f'"{sha256_of(name, size)[:16]}"')
    await pending.abort(keep_partial=True)
    assert cache.kept_partials("k") == 1
    async with downloader(tmp_path) as d:
        entry = await attempt(d, cache, url)
    assert entry.sha256 == sha256_of(name, size)
    assert [r for r, _ in origin.ranged_requests(f"/ranged/{name}")] == ["bytes=100000-", None]


async def test_permanent_failure_discards_the_partial(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory
) -> None:
    name, size = "resume-permanent.bin", 100_000
    url = origin.file_url(name, size, route="ranged")
    cache = make_cache(tmp_path / "cache")
    async with downloader(tmp_path) as d:
        with pytest.raises(TransientError):
            await attempt(d, cache, url)
        assert cache.kept_partials("k") == 1
        with pytest.raises(PermanentError) as caught:
            await attempt(d, cache, url, sha256="0" * 64)
    assert caught.value.reason == Reason.CHECKSUM_MISMATCH
    assert cache.kept_partials("k") == 0
    assert cache.usage().bytes == 0
    assert leftovers(cache) == []


async def test_announced_total_over_max_size_on_resume(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory
) -> None:
    name, size = "resume-toolarge.bin", 300_000
    url = origin.file_url(name, size, route="ranged", cut=100_000)
    cache = make_cache(tmp_path / "cache")
    async with downloader(tmp_path) as d:
        with pytest.raises(TransientError):
            await attempt(d, cache, url)
    async with downloader(tmp_path, max_size=250_000) as d:
        with pytest.raises(PermanentError) as caught:
            await attempt(d, cache, url)
    assert caught.value.reason == Reason.TOO_LARGE
    assert "300000 bytes exceed max_size" in str(caught.value)  # the whole file, not the rest


def test_what_is_worth_keeping() -> None:
    assert keep_partial_after(TransientError(Reason.CONNECTION, "reset"))
    assert keep_partial_after(TransientError(Reason.TIMEOUT, "slow"))
    assert keep_partial_after(KeyboardInterrupt())
    assert not keep_partial_after(PermanentError(Reason.NOT_FOUND, "gone"))
    assert not keep_partial_after(TransientError("cache_full", "ENOSPC"))
    assert not keep_partial_after(TransientError("cache_io", "EIO"))


# --- the cache's side of resuming ----------------------------------------------------------------


async def keep_partial(cache: LocalFsCache, key: str, data: bytes, validator: str) -> None:
    pending = await cache.create(key)
    await pending.write(data)
    pending.set_validator(validator)
    await pending.abort(keep_partial=True)


async def test_kept_partials_survive_a_restart_until_too_old(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    cache = make_cache(root)
    await keep_partial(cache, "young", b"y" * 5000, '"v1"')
    await keep_partial(cache, "old", b"o" * 3000, '"v2"')
    await keep_partial(cache, "gone", b"g" * 1000, '"v3"')
    sidecars = {p.name: p for p in root.rglob("*.resume")}
    assert len(sidecars) == 3
    # Age one partial beyond partial_max_age; orphan another's sidecar; crash leftovers too.
    for sidecar in sidecars.values():
        kept = json.loads(sidecar.read_bytes())
        if kept["key"] == "old":
            kept["kept_at"] -= 2 * 86400
            sidecar.write_bytes(json.dumps(kept).encode())
        if kept["key"] == "gone":
            sidecar.with_suffix(".part").unlink()
    shard = next(iter(sidecars.values())).parent
    (shard / (64 * "a" + ".0123456789ab.part")).write_bytes(b"in progress at a crash")
    (shard / (64 * "a" + ".0123456789ab.resume-tmp")).write_bytes(b"{")

    again = make_cache(root)
    assert (again.kept_partials("young"), again.kept_partials("old")) == (1, 0)
    assert again.kept_partials("gone") == 0
    assert again.usage().bytes == 5000
    assert again.kept_bytes == 5000
    assert len(list(root.rglob("*.part"))) == 1
    assert len(list(root.rglob("*.resume*"))) == 1
    pending = await again.create("young", resume=True)
    assert (pending.offset, pending.validator, pending.bytes_written) == (5000, '"v1"', 5000)
    await pending.write(b"z" * 10)
    entry = await pending.commit(expected_sha256=None, expected_size=5010)
    assert entry.sha256 == hashlib.sha256(b"y" * 5000 + b"z" * 10).hexdigest()
    assert again.usage().bytes == 5010


async def test_create_without_resume_drops_kept_partials(tmp_path: Path) -> None:
    cache = make_cache(tmp_path / "cache")
    await keep_partial(cache, "k", b"p" * 4000, '"v"')
    assert cache.usage().bytes == 4000
    pending = await cache.create("k")  # a downloader that cannot resume
    assert pending.offset == 0
    assert cache.kept_partials("k") == 0
    assert cache.usage().bytes == 0
    await pending.abort()
    assert leftovers(cache) == []


async def test_restart_drops_kept_bytes(tmp_path: Path) -> None:
    cache = make_cache(tmp_path / "cache")
    await keep_partial(cache, "k", b"p" * 4000, '"v"')
    pending = await cache.create("k", resume=True)
    assert pending.offset == 4000
    await pending.restart()
    assert (pending.offset, pending.bytes_written, pending.validator) == (0, 0, None)
    await pending.write(b"fresh")
    entry = await pending.commit(expected_sha256=None, expected_size=5)
    assert entry.size == 5


async def test_two_processes_cannot_both_take_one_partial(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    await keep_partial(make_cache(root), "k", b"p" * 4000, '"v"')
    a, b = make_cache(root), make_cache(root)  # both scanned the same kept partial
    first = await a.create("k", resume=True)
    second = await b.create("k", resume=True)
    assert (first.offset, second.offset) == (4000, 0)
    await first.abort()
    await second.abort()


async def test_nothing_is_kept_unless_asked(tmp_path: Path) -> None:
    cache = make_cache(tmp_path / "cache")
    pending = await cache.create("k")
    await pending.write(b"data")
    pending.set_validator('"v"')
    await pending.abort()
    assert leftovers(cache) == []
    assert cache.kept_partials("k") == 0


# --- slow transfers and size limits ---------------------------------------------------------------


async def test_slow_drip_fails_on_min_throughput(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory
) -> None:
    cache = make_cache(tmp_path / "cache")
    url = origin.file_url("drip-slow.bin", 5000, route="drip", chunk=100, every=0.25)
    async with downloader(tmp_path, min_throughput=1000, min_throughput_window=1) as d:
        started = time.monotonic()
        with pytest.raises(TransientError) as caught:
            await attempt(d, cache, url)
        elapsed = time.monotonic() - started
    assert caught.value.reason == Reason.TIMEOUT
    assert "min_throughput" in str(caught.value)
    assert 0.9 < elapsed < 3  # one window, although bytes kept arriving (read_timeout is 60 s)


async def test_steady_transfer_above_min_throughput_completes(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory
) -> None:
    cache = make_cache(tmp_path / "cache")
    url = origin.file_url("drip-ok.bin", 4000, route="drip", chunk=500, every=0.15)
    async with downloader(tmp_path, min_throughput=1000, min_throughput_window=1) as d:
        entry = await attempt(d, cache, url)  # ~1.2 s in all: longer than a window
    assert entry.sha256 == sha256_of("drip-ok.bin", 4000)


async def test_min_throughput_zero_turns_the_check_off(
    tmp_path: Path, origin: Origin, downloader: DownloaderFactory
) -> None:
    cache = make_cache(tmp_path / "cache")
    url = origin.file_url("drip-off.bin", 300, route="drip", chunk=100, every=0.4)
    async with downloader(tmp_path, min_throughput=0, min_throughput_window=0.3) as d:
        entry = await attempt(d, cache, url)
    assert entry.size == 300


# --- a full cache volume -------------------------------------------------------------------------


async def test_enospc_is_cache_full_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Everywhere: the write fails as a full disk would (a seam on the write)."""
    cache = make_cache(tmp_path / "cache")
    real = LocalFsPendingFile._write_sync

    def full(self: LocalFsPendingFile, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(LocalFsPendingFile, "_write_sync", full)
    pending = await cache.create("k")
    pending.set_validator('"v"')
    await pending.write(b"x" * MiB)  # written in a worker thread: its error surfaces next
    with pytest.raises(TransientError) as caught:
        await pending.commit(expected_sha256=None, expected_size=MiB)
    assert caught.value.reason == "cache_full"
    await pending.abort(keep_partial=keep_partial_after(caught.value))
    assert leftovers(cache) == []
    assert await cache.lookup("k") is None
    monkeypatch.setattr(LocalFsPendingFile, "_write_sync", real)
    pending = await cache.create("k")
    await pending.write(b"x" * MiB)
    assert (await pending.commit(expected_sha256=None, expected_size=MiB)).size == MiB


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the ENOSPC seam test runs everywhere)")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")


@pytest.fixture
@starts_processes
def tiny_volume(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (a real file system that fills up); unmounted afterwards."""
    path = tmp_path / "tiny"
    _mount_tmpfs(path, "2m")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def test_real_full_disk_is_transient_and_publishes_nothing(
    tmp_path: Path, origin: Origin, tiny_volume: Path, downloader: DownloaderFactory
) -> None:
    cache = make_cache(tiny_volume / "cache")
    url = origin.file_url("enospc.bin", 3 * MiB)
    async with downloader(tmp_path) as d:
        with pytest.raises(TransientError) as caught:
            await attempt(d, cache, url)
        assert caught.value.reason == "cache_full"
        assert leftovers(cache) == []
        assert await cache.lookup("k") is None
        assert cache.usage().bytes == 0
        entry = await attempt(d, cache, origin.file_url("fits.bin", MiB), key="small")
    assert entry.sha256 == sha256_of("fits.bin", MiB)


# --- the daemon ----------------------------------------------------------------------------------


def letters(env: DaemonEnv) -> dict[str, dict[str, Any]]:
    return {x["key"]: x for x in env.letters()}


def test_daemon_resumes_and_retries_a_checksum_mismatch_once(
    daemon_env: DaemonEnv, origin: Origin
) -> None:
    env = daemon_env
    name, size = "daemon-resume.bin", 400_000
    resume_url = origin.file_url(name, size, route="ranged", cut=150_000)
    wrong = origin.file_url("daemon-wrong.bin", 5000)
    daemon = env.start()
    batch = env.submit_events(
        [
            {"id": "resumed", "url": resume_url, "sha256": sha256_of(name, size)},
            {"id": "mismatch", "url": wrong, "sha256": "0" * 64},
        ]
    )
    wait_for(
        lambda: env.audit(batch)[1],
        lambda counts: counts["in_flight"] == 0,
        timeout=60,
        what="both events to settle",
        interval=1,
    )
    code, counts = env.audit(batch)
    assert (counts["landed"], counts["dead_lettered"], counts["lost"]) == (1, 1, 0)
    # The resumed file: two requests, the second for the rest only; every byte sent once.
    assert origin.bytes_sent(f"/ranged/{name}") == size
    assert [r for r, _ in origin.ranged_requests(f"/ranged/{name}")] == [None, "bytes=150000-"]
    # The mismatch: retried once (it might have been a file replaced mid-download), then final.
    letter = letters(env)["mismatch"]
    assert (letter["reason"], letter["stage"]) == ("checksum_mismatch", "download")
    shown = env.shown("mismatch")
    history = shown["letter"]["task"]["history"]
    assert [h["reason"] for h in history] == ["checksum_mismatch", "checksum_mismatch"]
    assert origin.count("/files/daemon-wrong.bin") == 2
    assert code == 0
    assert daemon.terminate() == 0


def test_daemon_waits_out_a_full_cache_volume(
    daemon_env: DaemonEnv, origin: Origin, tiny_volume: Path
) -> None:
    """The cache's volume fills up: downloads wait in place (no ladder, no DLQ, nothing half
    written lands), then finish once room returns."""
    env = daemon_env
    env.data["cache"]["path"] = str(tiny_volume / "cache")
    env.write()
    filler = tiny_volume / "filler"
    filler.write_bytes(b"\0" * (2 * MiB - 256 * KiB))  # leaves too little for any file below
    sizes = [700 * KiB, 900 * KiB, 600 * KiB]
    events = [
        {
            "id": f"full-{i}",
            "url": origin.file_url(f"full-{i}.bin", s),
            "sha256": sha256_of(f"full-{i}.bin", s),
        }
        for i, s in enumerate(sizes)
    ]
    daemon = env.start()
    batch = env.submit_events(events)
    daemon.wait_for_log("cache volume full; waiting in place", timeout=30)
    time.sleep(2)  # time passes (several backoff rounds) and nothing may give up or go wrong
    assert env.metric("lakeferry_stage_messages_total", stage="results") == 0
    assert env.metric("lakeferry_retries_total") == 0
    assert env.metric("lakeferry_dlq_total") == 0
    assert env.metric("lakeferry_stage_in_flight", stage="download") >= 1  # holding its slot
    filler.unlink()  # room again
    wait_for(
        lambda: env.audit(batch)[1],
        lambda counts: counts["landed"] == 3,
        timeout=60,
        what="the files to land",
        interval=1,
    )
    code, counts = env.audit(batch)  # re-hashes every landed file
    assert (counts["checksum_mismatches"], counts["missing_in_sink"], counts["lost"]) == (0, 0, 0)
    assert code == 0
    sink = Path(env.data["sink"]["root"])
    for i, s in enumerate(sizes):
        assert (sink / f"full-{i}" / f"full-{i}.bin").read_bytes() == content(f"full-{i}.bin", s)
    assert daemon.terminate() == 0


class CacheSampler:
    """Samples the bytes of every file under a cache directory from a thread, as fast as it
    can, and keeps the largest total seen (part files of running downloads included)."""

    def __init__(self, root: Path) -> None:
        import threading

        self.root = root
        self.largest = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _total(self) -> int:
        total = 0
        for folder, _dirs, files in os.walk(self.root):
            for name in files:
                try:
                    total += os.stat(os.path.join(folder, name)).st_size
                except FileNotFoundError:
                    continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.largest = max(self.largest, self._total())
            self.samples += 1

    def __enter__(self) -> CacheSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_a_body_without_size_never_outgrows_the_cache_quota(
    daemon_env: DaemonEnv, origin: Origin
) -> None:
    """Found with a 1 MB quota: an event without ``size`` whose URL sent 2 GiB went into the
    cache (1.83 GB on disk when sampled) and landed. Now the reservation grows with the body
    and the body is cut off ``too_large`` once it outgrows the whole quota; one the origin
    announces is refused at once; the cache never holds more than the quota."""
    env = daemon_env
    quota = MiB
    env.data["cache"].update({"quota": quota, "unknown_size_estimate": "256KiB"})
    env.write()
    events = [
        {"id": "chunked-64m", "url": origin.file_url("c64.bin", 64 * MiB, route="chunked")},
        {"id": "announced-64m", "url": origin.file_url("a64.bin", 64 * MiB)},
        {"id": "fits", "url": origin.file_url("fits.bin", 900 * KiB)},
        {"id": "fits-chunked", "url": origin.file_url("fc.bin", 700 * KiB, route="chunked")},
    ]
    cache = Path(env.data["cache"]["path"])
    daemon = env.start()
    with CacheSampler(cache) as sampler:
        batch = env.submit_events(events)
        wait_for(
            lambda: env.audit(batch)[1],
            lambda counts: counts["in_flight"] == 0,
            timeout=90,
            what="every event to settle",
            interval=1,
        )
    code, counts = env.audit(batch)
    assert (counts["landed"], counts["dead_lettered"], counts["lost"]) == (2, 2, 0)
    found = letters(env)
    assert {k: v["reason"] for k, v in found.items()} == {
        "chunked-64m": "too_large",
        "announced-64m": "too_large",
    }
    assert "quota" in found["chunked-64m"]["error"]
    assert sampler.samples > 10
    assert sampler.largest <= quota, f"the cache held {sampler.largest} bytes"
    assert code == 0
    assert daemon.terminate() == 0


async def test_the_writer_cuts_a_body_off_before_its_bytes_reach_the_cache() -> None:
    """Whatever a downloader plugin does, nothing past the event's size or the whole quota
    reaches the cache file."""
    from lakeferry.testing import MemoryCache

    cache = MemoryCache(quota=10 * KiB)
    async with cache.reserve(None) as reservation:
        pending = await cache.create("sized")
        out = BoundedWriter(pending, reservation, expected_size=3 * KiB)
        await out.write(b"x" * (2 * KiB))
        with pytest.raises(PermanentError) as caught:
            await out.write(b"x" * (2 * KiB))
        assert caught.value.reason == Reason.SIZE_MISMATCH
        assert pending.bytes_written == 2 * KiB
        with pytest.raises(PermanentError) as caught:
            await out.expect_size(4 * KiB)
        assert caught.value.reason == Reason.SIZE_MISMATCH

        pending = await cache.create("unsized")
        out = BoundedWriter(pending, reservation, expected_size=None)
        for _ in range(10):
            await out.write(b"y" * KiB)
        assert reservation.size == 10 * KiB
        with pytest.raises(PermanentError) as caught:
            await out.write(b"y")
        assert caught.value.reason == Reason.TOO_LARGE
        assert pending.bytes_written == 10 * KiB
        with pytest.raises(PermanentError) as caught:
            await BoundedWriter(await cache.create("big"), reservation, None).expect_size(
                10 * KiB + 1
            )
        assert caught.value.reason == Reason.TOO_LARGE
