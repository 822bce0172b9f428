"""The ``localfs`` sink's durability rounds, on real files: puts share their syncs, and none
returns before its file (or the identical file it found) is on disk."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from helpers.hops import count_hops
from helpers.plugins import plugin_context
from helpers.wait import wait_until_async
from lakeferry.api import (
    STAGING,
    Event,
    PermanentError,
    Reason,
    SinkFile,
    TransientError,
)
from lakeferry_localfs import LocalFsCache, LocalFsCacheSettings, LocalFsSink, LocalFsSinkSettings
from lakeferry_localfs.durability import DurabilityRounds, find_syncfs

EVENT = Event(id="ev-1", url="https://example.org/data/report.csv")
MODES = ["syncfs", "fsync"]
"""How a round syncs: syncfs(2) where the kernel has it, fsync of each file and folder else."""


class Syncs:
    """Counts the sync system calls of this process (every thread)."""

    def __init__(self) -> None:
        self.fsync = 0
        self.syncfs = 0


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> Syncs:
    counted = Syncs()
    real = os.fsync

    def fsync(fd: int) -> None:
        counted.fsync += 1
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return counted


def make_sink(
    tmp_path: Path, mode: str, syncs: Syncs | None = None, **settings: object
) -> LocalFsSink:
    config = LocalFsSinkSettings(root=str(tmp_path / "sink"), **settings)  # type: ignore[arg-type]
    sink = LocalFsSink(config, plugin_context(tmp_path))
    rounds: DurabilityRounds | None = getattr(sink, "_durable", None)
    if rounds is not None:
        if mode == "syncfs":
            if rounds.syncfs is None:
                pytest.skip("no syncfs(2) that reports errors here")
            if syncs is not None:
                rounds.syncfs = counting(rounds.syncfs, syncs)
        else:
            rounds.syncfs = None
    return sink


def counting(call: Callable[[int], None], syncs: Syncs) -> Callable[[int], None]:
    def syncfs(fd: int) -> None:
        syncs.syncfs += 1
        call(fd)

    return syncfs


def rounds_of(sink: LocalFsSink) -> DurabilityRounds:
    assert sink._durable is not None
    return sink._durable


async def cached_files(tmp_path: Path, *bodies: bytes) -> list[SinkFile]:
    cache = LocalFsCache(
        LocalFsCacheSettings(path=str(tmp_path / "cache")), plugin_context(tmp_path)
    )
    files = []
    for i, data in enumerate(bodies):
        sha256 = hashlib.sha256(data).hexdigest()
        async with cache.reserve(len(data)):
            pending = await cache.create(f"k{i}")
            await pending.write(data)
            await pending.commit(expected_sha256=sha256, expected_size=len(data))
        files.append(SinkFile(cache, f"k{i}", len(data), sha256))
    return files


def staged(sink: LocalFsSink) -> list[Path]:
    return sorted(p for p in (sink.root / STAGING).rglob("*") if p.is_file())


class BlockedSync:
    """Holds a round in its "sync the names" step until released (from the test's thread)."""

    def __init__(self, rounds: DurabilityRounds) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.found: list[Path] = []
        original = rounds._sync_names

        def sync_names(published: list[Path], found: list[Path]) -> None:
            self.found += found
            self.entered.set()
            self.release.wait(timeout=60)
            original(published, found)

        rounds._sync_names = sync_names  # type: ignore[method-assign]


@pytest.mark.parametrize("mode", MODES)
async def test_concurrent_puts_share_their_syncs(tmp_path: Path, mode: str, syncs: Syncs) -> None:
    n = 16
    bodies = [os.urandom(64 * 1024) for _ in range(n)]
    files = await cached_files(tmp_path, *bodies)
    sink = make_sink(tmp_path, mode, syncs)
    outcomes: dict[int, tuple[str, bool]] = {}

    async def put(i: int) -> None:
        outcomes[i] = await sink.put(files[i], f"d/f{i}.bin", EVENT)

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(put, i)
    assert outcomes == {i: (f"d/f{i}.bin", False) for i in range(n)}
    for i, data in enumerate(bodies):
        assert (sink.root / f"d/f{i}.bin").read_bytes() == data
    # Two fsyncs a put before: 2n calls. Now two syncs a round, and rounds < n.
    assert syncs.fsync + syncs.syncfs < 2 * n
    rounds = rounds_of(sink).rounds
    assert rounds < n
    if mode == "syncfs":
        assert (syncs.syncfs, syncs.fsync) == (2 * rounds, 0)
    else:  # each temporary file, and the one folder once a round
        assert (syncs.syncfs, syncs.fsync) == (0, n + rounds)
    assert staged(sink) == []


@pytest.mark.parametrize("mode", MODES)
async def test_a_put_returns_only_after_its_round_synced_the_name(
    tmp_path: Path, mode: str
) -> None:
    [file] = await cached_files(tmp_path, b"x" * 1000)
    sink = make_sink(tmp_path, mode)
    blocked = BlockedSync(rounds_of(sink))
    returned = trio.Event()

    async def put() -> None:
        assert await sink.put(file, "d/f.bin", EVENT) == ("d/f.bin", False)
        returned.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(put)
        await wait_until_async(blocked.entered.is_set, timeout=30, what="the round's last sync")
        assert (sink.root / "d/f.bin").read_bytes() == b"x" * 1000  # renamed, not yet durable
        await trio.testing.wait_all_tasks_blocked()
        assert not returned.is_set(), "the put returned before its name was synced"
        blocked.release.set()
    assert returned.is_set()


@pytest.mark.parametrize("mode", MODES)
async def test_a_skipped_put_waits_until_the_file_it_found_is_durable(
    tmp_path: Path, mode: str, syncs: Syncs
) -> None:
    """The identical file at the target may come from a put whose round has not ended yet, or
    from a process that crashed before its round: the put reports it only after a sync."""
    data = os.urandom(5000)
    [file] = await cached_files(tmp_path, data)
    sink = make_sink(tmp_path, mode, syncs)
    target = sink.root / "d" / "f.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(data)  # what the crashed process renamed into place
    blocked = BlockedSync(rounds_of(sink))
    returned = trio.Event()

    async def put() -> None:
        assert await sink.put(file, "d/f.bin", EVENT) == ("d/f.bin", True)
        returned.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(put)
        await wait_until_async(blocked.entered.is_set, timeout=30, what="a sync round")
        await trio.testing.wait_all_tasks_blocked()
        assert not returned.is_set(), "a skipped put returned before the file was synced"
        assert blocked.found == [target]
        blocked.release.set()
    assert returned.is_set()
    if mode == "fsync":
        assert syncs.fsync == 2  # the file, then its folder
    else:
        assert syncs.syncfs == 1


async def test_without_fsync_nothing_is_synced(tmp_path: Path, syncs: Syncs) -> None:
    data = os.urandom(3000)
    [file] = await cached_files(tmp_path, data)
    sink = make_sink(tmp_path, "fsync", fsync=False)
    assert sink._durable is None
    assert await sink.put(file, "d/f.bin", EVENT) == ("d/f.bin", False)
    assert await sink.put(file, "d/f.bin", EVENT) == ("d/f.bin", True)
    copier = make_sink(tmp_path, "fsync", fsync=False, link=False)
    assert await copier.put(file, "e/f.bin", EVENT) == ("e/f.bin", False)
    assert (sink.root / "e/f.bin").read_bytes() == data
    assert syncs.fsync == 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("step", ["files", "names"])
async def test_a_failed_sync_fails_the_round_and_a_retry_lands_it(
    tmp_path: Path, mode: str, step: str
) -> None:
    bodies = [os.urandom(2000), os.urandom(2000)]
    files = await cached_files(tmp_path, *bodies)
    sink = make_sink(tmp_path, mode)
    rounds = rounds_of(sink)
    original = getattr(rounds, f"_sync_{step}")
    broken = True

    def failing(*args: list[Path]) -> None:
        if broken:
            raise OSError(errno.EIO, "Input/output error")
        original(*args)

    setattr(rounds, f"_sync_{step}", failing)
    caught: list[TransientError] = []

    async def put(i: int) -> None:
        with pytest.raises(TransientError) as info:
            await sink.put(files[i], f"d/f{i}.bin", EVENT)
        caught.append(info.value)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(put, 0)
        nursery.start_soon(put, 1)
    assert rounds.rounds == 0
    broken = False
    assert [e.reason for e in caught] == ["sink_io", "sink_io"]
    assert "Input/output error" in str(caught[0])
    assert staged(sink) == []
    # The retry: after a failed sync of the names the files are in place already, so the
    # retry finds them identical and reports them once a round made them durable.
    skipped = step == "names"
    for i, data in enumerate(bodies):
        assert await sink.put(files[i], f"d/f{i}.bin", EVENT) == (f"d/f{i}.bin", skipped)
        assert (sink.root / f"d/f{i}.bin").read_bytes() == data


async def test_a_failing_put_does_not_fail_the_others_of_its_round(tmp_path: Path) -> None:
    bodies = [os.urandom(1000) for _ in range(4)]
    files = await cached_files(tmp_path, *bodies)
    corrupted = files[2].cache.local_path(files[2].key)
    assert corrupted is not None
    corrupted.write_bytes(b"\0" * 1000)  # in the cache, after its checksum was taken
    sink = make_sink(tmp_path, "fsync")
    errors: dict[int, PermanentError] = {}

    async def put(i: int) -> None:
        try:
            await sink.put(files[i], f"f{i}.bin", EVENT)
        except PermanentError as exc:
            errors[i] = exc

    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(put, i)
    assert {i: e.reason for i, e in errors.items()} == {2: Reason.CHECKSUM_MISMATCH}
    assert sorted(p.name for p in sink.root.glob("*.bin")) == ["f0.bin", "f1.bin", "f3.bin"]
    assert staged(sink) == []


async def test_larger_files_and_copies_land_through_rounds(tmp_path: Path, syncs: Syncs) -> None:
    """A linked file too large to be staged in the round, and a copied one: staged by the put,
    published and synced by a round."""
    large, small = os.urandom(3 * 2**20), os.urandom(4000)
    files = await cached_files(tmp_path, large, small)
    linker = make_sink(tmp_path, "syncfs", syncs)
    copier = make_sink(tmp_path, "syncfs", syncs, link=False)
    assert await linker.put(files[0], "a/large.bin", EVENT) == ("a/large.bin", False)
    assert await copier.put(files[1], "b/small.bin", EVENT) == ("b/small.bin", False)
    assert (linker.root / "a/large.bin").read_bytes() == large
    assert (linker.root / "b/small.bin").read_bytes() == small
    assert syncs.syncfs == 4
    await linker.aclose()
    await copier.aclose()


def test_syncfs_is_found_on_linux_from_5_8(monkeypatch: pytest.MonkeyPatch) -> None:
    import platform
    import sys

    if sys.platform != "linux":
        assert find_syncfs() is None
        return
    monkeypatch.setattr(platform, "release", lambda: "5.4.0-generic")
    assert find_syncfs() is None  # its syncfs drops write-back errors
    monkeypatch.setattr(platform, "release", lambda: "6.1.0-13-amd64")
    assert find_syncfs() is not None


async def test_small_files_cost_no_worker_thread_hop_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linked, checked and stamped in their round's worker-thread call: a hop a round, not one
    (or more) a put (hops counted through trio.to_thread and through IoThreads)."""
    n = 16
    files = await cached_files(tmp_path, *(os.urandom(64 * 1024) for _ in range(n)))
    sink = make_sink(tmp_path, "fsync")
    hops = count_hops(monkeypatch, iothreads=True)
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(sink.put, files[i], f"ev-{i}/f.bin", EVENT)
    assert hops.count < n  # one a put before
    assert hops.count == rounds_of(sink).rounds
