"""The ``localfs`` cache and sink, on real files."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

from helpers.plugins import plugin_context
from lakeferry.api import (
    STAGING,
    STALE_TEMPORARY,
    ConfigError,
    Event,
    PermanentError,
    Reason,
    SinkFile,
    SinkItem,
)
from lakeferry.units import dec_hook
from lakeferry_localfs import (
    LocalFsCache,
    LocalFsCacheSettings,
    LocalFsSink,
    LocalFsSinkSettings,
)
from lakeferry_localfs import cache as cache_module
from lakeferry_localfs.cache import WRITE_BATCH
from lakeferry_localfs.stamp import XATTR

MiB = 2**20


def make_cache(tmp_path: Path, **settings: object) -> LocalFsCache:
    config = LocalFsCacheSettings(path=str(tmp_path / "cache"), **settings)  # type: ignore[arg-type]
    return LocalFsCache(config, plugin_context(tmp_path))


def make_sink(
    tmp_path: Path, root: Path | None = None, owner: str = "main", **settings: object
) -> LocalFsSink:
    config = LocalFsSinkSettings(root=str(root or tmp_path / "sink"), **settings)  # type: ignore[arg-type]
    return LocalFsSink(config, plugin_context(tmp_path, owner))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def put_in_cache(cache: LocalFsCache, key: str, data: bytes) -> None:
    async with cache.reserve(len(data)):
        pending = await cache.create(key)
        for start in range(0, len(data), 4096):
            await pending.write(data[start : start + 4096])
        await pending.commit(expected_sha256=sha(data), expected_size=len(data))


async def read_all(cache: LocalFsCache, key: str) -> bytes:
    async with cache.open(key) as chunks:
        return b"".join([chunk async for chunk in chunks])


def parts(cache: LocalFsCache) -> list[Path]:
    return sorted(cache.root.rglob("*.part"))


def files(cache: LocalFsCache) -> list[str]:
    return sorted(p.name for p in cache.root.rglob("*") if p.is_file())


@pytest.fixture(params=["stamps", "sidecars"])
def checksums(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Where the cache keeps each entry's sha256: in a stamp (an xattr), or, on a file system
    without user xattrs, in ``.meta`` sidecars (this one has them: the probe is told no)."""
    if request.param == "sidecars":
        monkeypatch.setattr(cache_module, "xattrs_supported", lambda root: False)
    return str(request.param)


# --- settings ----------------------------------------------------------------------------------


def test_settings_decode_from_config_values(tmp_path: Path) -> None:
    cache = msgspec.convert(
        {"path": "/c", "quota": "1GiB", "unknown_size_estimate": "1MiB"},
        LocalFsCacheSettings,
        dec_hook=dec_hook,
    )
    assert (cache.quota, cache.unknown_size_estimate, cache.fsync) == (2**30, MiB, False)
    assert msgspec.convert({"path": "/c"}, LocalFsCacheSettings).quota == 20 * 2**30
    sink = msgspec.convert({"root": "/s"}, LocalFsSinkSettings)
    assert (sink.path_template, sink.link, sink.fsync, sink.verify) == (
        "{event.id}/{filename}",
        True,
        True,
        True,
    )
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"path": "/c", "qouta": 1}, LocalFsCacheSettings)


# --- cache: writing and reading ----------------------------------------------------------------


async def test_cache_round_trip_hashes_on_the_fly(tmp_path: Path, checksums: str) -> None:
    cache = make_cache(tmp_path)
    assert cache.stamps == (checksums == "stamps")
    data = os.urandom(3 * MiB + 12345)
    async with cache.reserve(len(data)):
        pending = await cache.create("event/1 ünïcode")
        # Small and odd-sized chunks, batched by the pending file before each thread hop.
        for start in range(0, len(data), 4000):
            await pending.write(data[start : start + 4000])
        assert pending.bytes_written == len(data)
        entry = await pending.commit(expected_sha256=sha(data), expected_size=len(data))
    assert entry == ("event/1 ünïcode", len(data), sha(data))
    assert await cache.lookup("event/1 ünïcode") == entry
    assert await read_all(cache, "event/1 ünïcode") == data
    path = cache.local_path("event/1 ünïcode")
    assert path.read_bytes() == data
    assert path.name == sha(b"event/1 \xc3\xbcn\xc3\xafcode")  # named by the key's hash
    assert cache.usage() == (len(data), 1, 20 * 2**30)
    assert parts(cache) == []


async def test_a_batch_of_more_pieces_than_one_writev_takes(tmp_path: Path) -> None:
    """Pieces are written as they came (no copy joining them): more than IOV_MAX in a batch
    take several writev calls, in order."""
    cache = make_cache(tmp_path)
    data = os.urandom(3 * cache_module.IOV_MAX * 500)
    async with cache.reserve(len(data)):
        pending = await cache.create("tiny pieces")
        for start in range(0, len(data), 500):
            await pending.write(data[start : start + 500])
        await pending.commit(expected_sha256=sha(data), expected_size=len(data))
    assert cache.local_path("tiny pieces").read_bytes() == data


async def test_commit_without_expectations_and_empty_file(tmp_path: Path, checksums: str) -> None:
    cache = make_cache(tmp_path)
    assert cache.stamps == (checksums == "stamps")
    pending = await cache.create("empty")
    entry = await pending.commit(expected_sha256=None, expected_size=None)
    assert entry == ("empty", 0, sha(b""))
    assert await read_all(cache, "empty") == b""


@pytest.mark.parametrize(
    ("expected_sha", "expected_size", "reason"),
    [
        ("0" * 64, None, Reason.CHECKSUM_MISMATCH),
        (None, 999, Reason.SIZE_MISMATCH),
    ],
)
async def test_commit_mismatch_is_permanent_and_leaves_nothing(
    tmp_path: Path, expected_sha: str | None, expected_size: int | None, reason: Reason
) -> None:
    cache = make_cache(tmp_path)
    pending = await cache.create("k")
    await pending.write(b"hello")
    with pytest.raises(PermanentError) as caught:
        await pending.commit(expected_sha256=expected_sha, expected_size=expected_size)
    assert caught.value.reason == reason
    assert await cache.lookup("k") is None
    assert parts(cache) == []
    assert cache.usage().bytes == 0
    await pending.abort()  # the download stage aborts after any failure: must be harmless
    assert files(cache) == []


async def test_an_entry_is_one_file_with_its_checksum_stamped(tmp_path: Path) -> None:
    """No sidecar: on ext4 without a journal, every file created and deleted made each later
    create slower (the inode allocator skips recently deleted inodes one by one)."""
    cache = make_cache(tmp_path)
    assert cache.stamps  # this file system keeps user xattrs
    data = b"stamped" * 1000
    await put_in_cache(cache, "k", data)
    path = cache.local_path("k")
    assert files(cache) == [path.name]
    st = path.stat()
    assert os.getxattr(path, XATTR) == f"{sha(data)}:{len(data)}:{st.st_mtime_ns}".encode()
    assert await cache.lookup("k") == ("k", len(data), sha(data))
    os.setxattr(path, XATTR, b"0" * 64 + f":{len(data)}:{st.st_mtime_ns}".encode())
    assert await cache.lookup("k") == ("k", len(data), "0" * 64)  # the stamp is what counts
    os.removexattr(path, XATTR)
    assert await cache.lookup("k") is None
    await cache.remove("k")
    assert files(cache) == []


async def test_abort_removes_the_part_file(tmp_path: Path, checksums: str) -> None:
    cache = make_cache(tmp_path)
    assert cache.stamps == (checksums == "stamps")
    pending = await cache.create("k")
    await pending.write(b"x" * MiB)
    await pending._settle()  # the batch is on disk
    assert len(parts(cache)) == 1
    await pending.abort()
    assert parts(cache) == []
    assert await cache.lookup("k") is None


async def test_cancelled_write_then_shielded_abort_leaves_no_entry(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    pending = await cache.create("k")
    with trio.CancelScope() as scope:
        try:
            await pending.write(b"a" * MiB)
            scope.cancel(reason="test")
            await pending.write(b"b" * MiB)
        except BaseException:
            await pending.abort()  # abort shields itself
            raise
    assert scope.cancelled_caught
    assert await cache.lookup("k") is None
    assert parts(cache) == []


async def test_recommit_replaces_entry_and_accounts_once(tmp_path: Path, checksums: str) -> None:
    cache = make_cache(tmp_path)
    assert cache.stamps == (checksums == "stamps")
    await put_in_cache(cache, "k", b"first version")
    await put_in_cache(cache, "k", b"second")
    assert await read_all(cache, "k") == b"second"
    assert (await cache.lookup("k")) == ("k", 6, sha(b"second"))
    assert cache.usage()[:2] == (6, 1)


async def test_lookup_refuses_data_that_does_not_match_its_checksum_record(
    tmp_path: Path, checksums: str
) -> None:
    cache = make_cache(tmp_path)
    assert cache.stamps == (checksums == "stamps")
    await put_in_cache(cache, "k", b"0123456789")
    cache.local_path("k").write_bytes(b"short")
    assert await cache.lookup("k") is None
    cache.local_path("k").unlink()
    assert await cache.lookup("k") is None


async def test_open_and_remove_of_missing_keys(tmp_path: Path, checksums: str) -> None:
    cache = make_cache(tmp_path)
    assert cache.stamps == (checksums == "stamps")
    with pytest.raises(FileNotFoundError):
        async with cache.open("nope"):
            pass
    await cache.remove("nope")  # no error
    await put_in_cache(cache, "k", b"data")
    await cache.remove("k")
    assert await cache.lookup("k") is None
    assert cache.usage()[:2] == (0, 0)
    with pytest.raises(FileNotFoundError):
        async with cache.open("k"):
            pass


async def test_startup_scan_counts_entries_and_removes_crash_leftovers(
    tmp_path: Path, checksums: str
) -> None:
    cache = make_cache(tmp_path)
    await put_in_cache(cache, "kept", b"k" * 1000)
    await put_in_cache(cache, "unchecked", b"d" * 10)
    crashed = await cache.create("crashed")  # a download in progress when the process died
    await crashed.write(b"c" * (WRITE_BATCH + 1))
    await crashed._settle()  # the batch is on disk
    assert crashed._fh is not None
    crashed._fh.close()  # the process died: its file (and the lock on it) is gone
    unchecked = cache.local_path("unchecked")  # data without its checksum: not ours
    if checksums == "stamps":
        os.removexattr(unchecked, XATTR)
    else:
        unchecked.with_name(unchecked.name + ".meta").unlink()
    # A sidecar without data: a crash between writing it and the rename.
    lone = cache.local_path("lone")
    lone.parent.mkdir(exist_ok=True)
    lone.with_name(lone.name + ".meta").write_bytes(b'{"key":"lone","size":1,"sha256":"x"}')
    stranger = cache.root / "README.txt"
    stranger.write_text("not ours")

    restarted = make_cache(tmp_path)
    assert parts(restarted) == []
    assert restarted.usage()[:2] == (1000, 1)
    assert await restarted.lookup("kept") == ("kept", 1000, sha(b"k" * 1000))
    assert not unchecked.exists()
    kept = restarted.local_path("kept").name
    sidecars = [kept + ".meta"] if checksums == "sidecars" else []
    assert files(restarted) == sorted([kept, *sidecars, stranger.name])


async def test_start_up_stamps_entries_an_earlier_release_published_with_sidecars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(cache_module, "xattrs_supported", lambda root: False)
        old = make_cache(tmp_path)
        await put_in_cache(old, "a", b"a" * 100)
        await put_in_cache(old, "b", b"b" * 200)
        await put_in_cache(old, "wrong", b"w" * 300)
    wrong = old.local_path("wrong")
    wrong.write_bytes(b"w" * 299)  # its sidecar no longer describes it

    cache = make_cache(tmp_path)
    assert cache.stamps
    assert cache.usage()[:2] == (300, 2)
    assert await cache.lookup("a") == ("a", 100, sha(b"a" * 100))
    assert await cache.lookup("b") == ("b", 200, sha(b"b" * 200))
    assert await cache.lookup("wrong") is None
    assert files(cache) == sorted([cache.local_path("a").name, cache.local_path("b").name])


def test_unusable_cache_path_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"cache\.path"):
        LocalFsCache(
            LocalFsCacheSettings(path=str(tmp_path / "file" / "c")), plugin_context(tmp_path)
        )


# --- cache: quota --------------------------------------------------------------------------------


async def test_reserve_waits_until_remove_frees_room(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, quota=1000)
    await put_in_cache(cache, "big", b"b" * 800)
    admitted = trio.Event()

    async def download() -> None:
        async with cache.reserve(300):
            admitted.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(download)
        await trio.testing.wait_all_tasks_blocked()
        assert not admitted.is_set()
        assert cache.waiting == 1
        await cache.remove("big")
        await admitted.wait()
    assert cache.reserved == 0
    assert cache.waiting == 0


async def test_committed_bytes_count_as_used_after_the_reservation(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, quota=1000, unknown_size_estimate=100)
    async with cache.reserve(None):
        assert cache.reserved == 100
        pending = await cache.create("k")
        await pending.write(b"x" * 250)
        await pending.commit(expected_sha256=None, expected_size=None)
    assert cache.reserved == 0
    assert cache.usage().bytes == 250


async def test_empty_cache_admits_one_file_larger_than_the_free_space(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, quota=100, unknown_size_estimate=1000)
    order: list[str] = []

    async def download(name: str, release: trio.Event) -> None:
        async with cache.reserve(None):
            order.append(name)
            await release.wait()

    first, second = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(download, "first", first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(download, "second", second)
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["first"]  # the second waits: the cache is not empty any more
        first.set()
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["first", "second"]
        second.set()


async def test_known_size_larger_than_quota_is_too_large(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, quota=100)
    with pytest.raises(PermanentError) as caught:
        async with cache.reserve(101):
            pass
    assert caught.value.reason == Reason.TOO_LARGE


async def test_waiters_are_admitted_in_arrival_order(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, quota=1000)
    await put_in_cache(cache, "a", b"a" * 600)
    admitted: list[str] = []

    async def download(name: str, size: int) -> None:
        async with cache.reserve(size):
            admitted.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(download, "large", 900)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(download, "small", 200)  # fits now, but must not overtake
        await trio.testing.wait_all_tasks_blocked()
        assert admitted == []
        await cache.remove("a")  # room for large only; small follows once large is done
    assert admitted == ["large", "small"]


async def test_cancelled_waiter_leaves_the_queue_and_unblocks_the_next(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, quota=1000)
    await put_in_cache(cache, "a", b"a" * 600)
    admitted: list[str] = []

    async def download(name: str, size: int) -> None:
        async with cache.reserve(size):
            admitted.append(name)

    head = trio.CancelScope()

    async def abandoned_download() -> None:
        with head:
            await download("large", 900)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(abandoned_download)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(download, "small", 300)
        await trio.testing.wait_all_tasks_blocked()
        assert admitted == []
        head.cancel(reason="download abandoned")
        await trio.testing.wait_all_tasks_blocked()
        assert admitted == ["small"]
    assert head.cancelled_caught
    assert cache.waiting == 0
    assert cache.reserved == 0


async def test_set_quota_wakes_waiters_and_fails_those_now_too_large(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, quota=1000)
    await put_in_cache(cache, "a", b"a" * 900)
    outcomes: dict[str, str] = {}

    async def download(name: str, size: int) -> None:
        try:
            async with cache.reserve(size):
                outcomes[name] = "admitted"
        except PermanentError as error:
            outcomes[name] = error.reason

    async with trio.open_nursery() as nursery:
        nursery.start_soon(download, "huge", 1000)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(download, "medium", 500)
        await trio.testing.wait_all_tasks_blocked()
        assert outcomes == {}
        cache.set_quota(1500)
        await trio.testing.wait_all_tasks_blocked()
        assert outcomes == {}  # huge (head) still does not fit: 900 + 1000 > 1500
        cache.set_quota(950)  # huge can never fit now; medium is next in line
        await trio.testing.wait_all_tasks_blocked()
        assert outcomes == {"huge": Reason.TOO_LARGE}
        cache.set_quota(1400)
    assert outcomes == {"huge": Reason.TOO_LARGE, "medium": "admitted"}
    assert cache.usage().quota == 1400


async def test_unknown_size_reserves_the_estimate_but_never_more_than_the_quota(
    tmp_path: Path,
) -> None:
    cache = make_cache(tmp_path, quota=1000, unknown_size_estimate=5000)
    async with cache.reserve(None) as reservation:
        assert (reservation.size, cache.reserved) == (1000, 1000)
    small = make_cache(tmp_path / "small", quota=1000, unknown_size_estimate=100)
    async with small.reserve(None) as reservation:
        assert reservation.size == 100


async def test_a_reservation_grows_when_there_is_room_and_never_past_the_quota(
    tmp_path: Path,
) -> None:
    cache = make_cache(tmp_path, quota=1000, unknown_size_estimate=100)
    async with cache.reserve(None) as reservation:
        await reservation.grow(50)  # holds more already: nothing to do
        await reservation.grow(600)
        assert (reservation.size, cache.reserved) == (600, 600)
        with pytest.raises(PermanentError) as caught:
            await reservation.grow(1001)
        assert caught.value.reason == Reason.TOO_LARGE
        assert reservation.size == 600
    assert cache.reserved == 0


async def test_growth_waits_for_room_and_goes_before_new_reservations(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, quota=1000, unknown_size_estimate=100)
    await put_in_cache(cache, "a", b"a" * 500)
    order: list[str] = []
    release = trio.Event()

    async def growing() -> None:
        async with cache.reserve(None) as reservation:
            order.append("started")
            await reservation.grow(550)  # 500 used + 100 held + 450 more > 1000
            order.append("grown")
            await release.wait()

    async def newcomer() -> None:
        async with cache.reserve(100):
            order.append("newcomer")

    async with trio.open_nursery() as nursery:
        async with cache.reserve(100):
            nursery.start_soon(growing)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(newcomer)
            await trio.testing.wait_all_tasks_blocked()
            assert order == ["started"]
            assert cache.waiting == 2
        await trio.testing.wait_all_tasks_blocked()
        # The growth still does not fit; the newcomer would (500 + 100 + 100), but waits.
        assert order == ["started"]
        await cache.remove("a")
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(order) == ["grown", "newcomer", "started"]  # admitted in one pass
        release.set()
    assert cache.reserved == 0


async def test_downloads_that_all_wait_to_grow_do_not_wait_forever(tmp_path: Path) -> None:
    """Two bodies of unknown size, each needing 700 of a 1000-byte quota: whichever would
    complete the circle of waiters gives its bytes back (cache_full), the other finishes."""
    cache = make_cache(tmp_path, quota=1000, unknown_size_estimate=400)
    outcomes: dict[str, str] = {}

    async def download(name: str) -> None:
        try:
            async with cache.reserve(None) as reservation:
                await trio.testing.wait_all_tasks_blocked()  # both hold 400 now
                await reservation.grow(700)
                outcomes[name] = "grown"
        except PermanentError as error:
            outcomes[name] = error.reason
        except Exception as error:
            outcomes[name] = getattr(error, "reason", repr(error))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(download, "one")
            nursery.start_soon(download, "two")
    assert sorted(outcomes.values()) == ["cache_full", "grown"]
    assert (cache.reserved, cache.waiting) == (0, 0)


# --- sink ----------------------------------------------------------------------------------------


EVENT = Event(id="ev-1", url="https://example.org/data/report.csv?sig=secret")
NOW = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


async def cached_file(cache: LocalFsCache, key: str, data: bytes) -> SinkFile:
    await put_in_cache(cache, key, data)
    return SinkFile(cache, key, len(data), sha(data))


async def test_destination_renders_template_or_uses_event_path(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, path_template="{date:%Y/%m/%d}/{event.id}/{filename}")
    assert sink.destination(EVENT, now=NOW) == "2024/01/02/ev-1/report.csv"
    default = make_sink(tmp_path)
    assert default.destination(EVENT, now=NOW) == "ev-1/report.csv"
    with_path = msgspec.structs.replace(EVENT, path="lake/raw/r.csv")
    assert default.destination(with_path, now=NOW) == "lake/raw/r.csv"
    with pytest.raises(PermanentError) as caught:
        default.destination(msgspec.structs.replace(EVENT, path="../escape"), now=NOW)
    assert caught.value.reason == Reason.INVALID_PATH


def test_bad_template_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sink\.path_template"):
        make_sink(tmp_path, path_template="{nope}/{filename}")


async def test_put_hard_links_from_the_cache_then_skips_the_identical_file(tmp_path: Path) -> None:
    cache, sink = make_cache(tmp_path), make_sink(tmp_path)
    data = os.urandom(2 * MiB)
    file = await cached_file(cache, "ev-1", data)
    outcome = await sink.put(file, "ev-1/report.csv", EVENT)
    assert outcome == ("ev-1/report.csv", False)
    target = sink.root / "ev-1" / "report.csv"
    assert target.read_bytes() == data
    cached = cache.local_path("ev-1")
    assert target.stat().st_ino == cached.stat().st_ino
    assert target.stat().st_nlink == 2
    assert os.getxattr(target, XATTR).decode().startswith(sha(data) + ":")
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.csv"]  # no temp files

    again = await sink.put(file, "ev-1/report.csv", EVENT)
    assert again == ("ev-1/report.csv", True)
    await cache.remove("ev-1")  # the upload stage removes the cached copy: the landed one stays
    assert target.read_bytes() == data
    assert target.stat().st_nlink == 1
    assert await sink.stat("ev-1/report.csv") == ("ev-1/report.csv", len(data), sha(data))
    assert await sink.stat("ev-1/other.csv") is None


async def test_put_copies_when_linking_is_off(tmp_path: Path) -> None:
    cache, sink = make_cache(tmp_path), make_sink(tmp_path, link=False)
    data = os.urandom(MiB + 7)
    file = await cached_file(cache, "k", data)
    assert await sink.put(file, "a/b/c.bin", EVENT) == ("a/b/c.bin", False)
    target = sink.root / "a/b/c.bin"
    assert target.read_bytes() == data
    assert target.stat().st_ino != cache.local_path("k").stat().st_ino
    assert await sink.put(file, "a/b/c.bin", EVENT) == ("a/b/c.bin", True)


def other_file_system(tmp_path: Path) -> Path | None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        return None
    return shm


async def test_put_copies_across_file_systems(tmp_path: Path) -> None:
    shm = other_file_system(tmp_path)
    if shm is None:
        pytest.skip("needs a second file system at /dev/shm")
    cache = make_cache(tmp_path)
    root = shm / f"lakeferry-test-{os.getpid()}-{tmp_path.name}"
    try:
        sink = make_sink(tmp_path, root=root)
        data = os.urandom(MiB)
        file = await cached_file(cache, "k", data)
        assert await sink.put(file, "x.bin", EVENT) == ("x.bin", False)  # EXDEV: copied
        assert (root / "x.bin").read_bytes() == data
    finally:
        shutil.rmtree(root)


@pytest.mark.parametrize("existing", [b"different content!", b"different size"])
async def test_put_overwrites_a_different_file(tmp_path: Path, existing: bytes) -> None:
    cache, sink = make_cache(tmp_path), make_sink(tmp_path)
    data = b"N" * len(b"different content!")
    target = sink.root / "d" / "f.txt"
    target.parent.mkdir()
    target.write_bytes(existing)
    file = await cached_file(cache, "k", data)
    assert await sink.put(file, "d/f.txt", EVENT) == ("d/f.txt", False)
    assert target.read_bytes() == data


async def test_stale_checksum_attribute_is_not_trusted(tmp_path: Path) -> None:
    cache, sink = make_cache(tmp_path), make_sink(tmp_path, link=False)
    data = b"A" * 1000
    file = await cached_file(cache, "k", data)
    await sink.put(file, "f.bin", EVENT)
    target = sink.root / "f.bin"
    st = target.stat()
    target.write_bytes(b"B" * 1000)  # same size, new bytes; the xattr still names the old sha
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert await sink.stat("f.bin") == ("f.bin", 1000, sha(b"B" * 1000))
    assert await sink.put(file, "f.bin", EVENT) == ("f.bin", False)
    assert target.read_bytes() == data


@pytest.mark.parametrize(
    "destination",
    ["../outside.txt", "/etc/passwd", "a/../../b", "a//b", "a/\x00b", "a\\b", "C:/x", "a/\u202eb"],
)
async def test_unsafe_destinations_are_refused(tmp_path: Path, destination: str) -> None:
    cache, sink = make_cache(tmp_path), make_sink(tmp_path)
    file = await cached_file(cache, "k", b"data")
    with pytest.raises(PermanentError) as caught:
        await sink.put(file, destination, EVENT)
    assert caught.value.reason == Reason.INVALID_PATH
    assert list(sink.root.iterdir()) == []


async def test_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    cache, sink = make_cache(tmp_path), make_sink(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (sink.root / "escape").symlink_to(outside)
    file = await cached_file(cache, "k", b"data")
    with pytest.raises(PermanentError) as caught:
        await sink.put(file, "escape/f.txt", EVENT)
    assert caught.value.reason == Reason.INVALID_PATH
    assert list(outside.iterdir()) == []


async def test_existing_symlink_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    cache, sink = make_cache(tmp_path), make_sink(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep")
    (sink.root / "f.txt").symlink_to(victim)
    file = await cached_file(cache, "k", b"data")
    assert await sink.put(file, "f.txt", EVENT) == ("f.txt", False)
    assert victim.read_bytes() == b"keep"
    assert not (sink.root / "f.txt").is_symlink()


async def test_directory_in_the_way_is_refused(tmp_path: Path) -> None:
    cache, sink = make_cache(tmp_path), make_sink(tmp_path)
    (sink.root / "d" / "f.txt").mkdir(parents=True)
    (sink.root / "file").write_bytes(b"x")
    file = await cached_file(cache, "k", b"data")
    for destination in ("d/f.txt", "file/below.txt"):
        with pytest.raises(PermanentError) as caught:
            await sink.put(file, destination, EVENT)
        assert caught.value.reason == Reason.INVALID_PATH


@pytest.mark.parametrize("link", [True, False])
async def test_missing_cached_file_is_cache_missing(tmp_path: Path, link: bool) -> None:
    cache, sink = make_cache(tmp_path), make_sink(tmp_path, link=link)
    file = await cached_file(cache, "k", b"data")
    await cache.remove("k")
    with pytest.raises(PermanentError) as caught:
        await sink.put(file, "d/f.txt", EVENT)
    assert caught.value.reason == Reason.CACHE_MISSING
    assert list((sink.root / "d").iterdir()) == []


@pytest.mark.parametrize("link", [True, False])
async def test_corrupted_cached_file_is_refused(tmp_path: Path, link: bool) -> None:
    cache, sink = make_cache(tmp_path), make_sink(tmp_path, link=link)
    file = await cached_file(cache, "k", b"good data")
    path = cache.local_path("k")
    before = path.stat().st_mtime_ns
    path.write_bytes(b"evil data")
    # Changed behind the cache's back: a new mtime (a write in the same clock tick keeps the
    # old one; the test must not depend on the clock's granularity).
    os.utime(path, ns=(before + 10**9, before + 10**9))
    with pytest.raises(PermanentError) as caught:
        await sink.put(file, "d/f.txt", EVENT)
    assert caught.value.reason == Reason.CHECKSUM_MISMATCH
    assert list((sink.root / "d").iterdir()) == []


@pytest.mark.parametrize("size", [100_000, 3 * MiB])  # the round's own call, and a call apart
async def test_a_linked_file_is_checked_by_its_stamp_without_reading_it(
    tmp_path: Path, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The linked inode is the one the cache hashed while writing it: its stamp says so, and
    landing it reads none of its bytes again (a large file would be read twice)."""
    import lakeferry_localfs.sink as sink_module

    cache, sink = make_cache(tmp_path), make_sink(tmp_path)
    data = os.urandom(size)
    file = await cached_file(cache, "k", data)

    def no_reading(*_args: object) -> int:
        raise AssertionError("a stamped linked file was hashed again")

    monkeypatch.setattr(sink_module, "_hash_some", no_reading)
    assert await sink.put(file, "d/f.bin", EVENT) == ("d/f.bin", False)
    assert (sink.root / "d" / "f.bin").read_bytes() == data


@pytest.mark.parametrize("size", [100_000, 3 * MiB])
async def test_a_linked_file_without_a_stamp_is_hashed_and_a_mismatch_refused(
    tmp_path: Path, size: int
) -> None:
    cache, sink = make_cache(tmp_path), make_sink(tmp_path)
    data = os.urandom(size)
    file = await cached_file(cache, "k", data)
    path = cache.local_path("k")
    os.removexattr(path, XATTR)  # e.g. copied in by hand: nothing vouches for the bytes
    assert await sink.put(file, "d/ok.bin", EVENT) == ("d/ok.bin", False)
    liar = SinkFile(cache, "k", size, sha(b"something else"))
    os.removexattr(path, XATTR)  # the landed put stamped the shared inode
    with pytest.raises(PermanentError) as caught:
        await sink.put(liar, "d/bad.bin", EVENT)
    assert caught.value.reason == Reason.CHECKSUM_MISMATCH
    assert not (sink.root / "d" / "bad.bin").exists()


async def test_without_fsync_or_verify_the_file_still_lands(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, fsync=True)
    sink = make_sink(tmp_path, fsync=False, verify=False)
    data = os.urandom(300_000)
    file = await cached_file(cache, "k", data)
    assert await sink.put(file, "f.bin", EVENT) == ("f.bin", False)
    assert (sink.root / "f.bin").read_bytes() == data
    assert await sink.put(file, "f.bin", EVENT) == ("f.bin", True)


async def test_stat_of_a_directory_is_none(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    (sink.root / "d").mkdir()
    assert await sink.stat("d") is None


# -- several processes sharing one cache (download and upload workers on one VM) -------------


async def put(cache: LocalFsCache, key: str, size: int) -> None:
    async with cache.reserve(size):
        pending = await cache.create(key)
        await pending.write(b"x" * size)
        await pending.commit(expected_sha256=None, expected_size=size)


async def test_a_waiting_download_sees_room_freed_by_another_process(tmp_path: Path) -> None:
    downloader = make_cache(tmp_path, quota=3000)
    uploader = make_cache(tmp_path, quota=3000)  # the same directory, as another process would
    for i in range(3):
        await put(downloader, f"k{i}", 1000)
    admitted = trio.Event()

    async def fourth() -> None:
        await put(downloader, "k3", 1000)
        admitted.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fourth)
            await trio.sleep(0.3)  # time passes and the cache stays full: the fourth waits
            assert not admitted.is_set()
            await uploader.remove("k0")  # the other process uploads one and frees its room
            await admitted.wait()  # seen through the periodic re-read of the disk
    assert await downloader.lookup("k3") is not None


async def test_start_up_leaves_other_processes_parts_alone(tmp_path: Path) -> None:
    writer = make_cache(tmp_path)
    pending = await writer.create("busy")
    await pending.write(b"y" * 300_000)
    await pending.write(b"y" * WRITE_BATCH)  # more than a write batch: the part file is written
    await pending._settle()
    parts_before = sorted(p.name for p in (tmp_path / "cache").rglob("*.part"))
    assert len(parts_before) == 1
    make_cache(tmp_path)  # another worker starts and scans: the part is locked, so it stays
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*.part")) == parts_before
    entry = await pending.commit(expected_sha256=None, expected_size=300_000 + WRITE_BATCH)
    assert entry.size == 300_000 + WRITE_BATCH
    # A part whose writer died (no lock held any more) is an orphan and goes.
    orphan = tmp_path / "cache" / "ab" / ("ab" + "0" * 62 + ".deadbeef0000.part")
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"z")
    make_cache(tmp_path)
    assert not orphan.exists()


# --- sink: temporary files -----------------------------------------------------------------------


async def test_temporary_files_live_in_the_owners_staging_folder(tmp_path: Path) -> None:
    """Found after kill -9: files like .g01678.bin.lakeferry-tmp-62bf6ac28463 stayed beside
    landed files. A put's temporary file is now in <root>/.lakeferry-tmp/<owner>/, and the
    owner's next start sweeps that folder."""
    cache = make_cache(tmp_path)
    sink = make_sink(tmp_path, owner="vm1.upload-1", link=False)
    seen: list[Path] = []
    file = await cached_file(cache, "k", b"z" * 5000)
    original = sink._copy

    async def spy(file: SinkFile, tmp: Path) -> tuple[int, str]:
        seen.append(tmp)
        return await original(file, tmp)

    sink._copy = spy  # type: ignore[method-assign]
    await sink.put(file, "d/f.bin", EVENT)
    [tmp] = seen
    assert tmp.parent == sink.root / STAGING / "vm1.upload-1"
    assert not tmp.exists()
    assert sorted(p.name for p in (sink.root / "d").iterdir()) == ["f.bin"]


async def test_a_sink_sweeps_what_its_owner_left_and_what_is_stale(tmp_path: Path) -> None:
    import time as _time

    cache = make_cache(tmp_path)
    first = make_sink(tmp_path, owner="vm1.upload-1")
    await first.put(await cached_file(cache, "k", b"a" * 100), "a.bin", EVENT)
    staging = first.root / STAGING
    # What a put killed mid-way leaves, for this owner and two others.
    (staging / "vm1.upload-1").mkdir(parents=True, exist_ok=True)
    (staging / "vm1.upload-1" / "1111-a.bin").write_bytes(b"partial")
    (staging / "vm1.upload-1" / "2222-b.bin").write_bytes(b"partial")
    (staging / "vm2.upload-1").mkdir()
    (staging / "vm2.upload-1" / "3333-c.bin").write_bytes(b"in flight elsewhere")
    (staging / "gone.upload-9").mkdir()
    abandoned = staging / "gone.upload-9" / "4444-d.bin"
    abandoned.write_bytes(b"from a machine that never came back")
    old = _time.time() - STALE_TEMPORARY - 60
    os.utime(abandoned, (old, old))

    walked = [item async for item in first.walk()]
    assert sorted(walked) == sorted(
        [
            SinkItem("a.bin", False),
            SinkItem(f"{STAGING}/vm1.upload-1/1111-a.bin", True),
            SinkItem(f"{STAGING}/vm1.upload-1/2222-b.bin", True),
            SinkItem(f"{STAGING}/vm2.upload-1/3333-c.bin", True),
            SinkItem(f"{STAGING}/gone.upload-9/4444-d.bin", True),
        ]
    )
    restarted = make_sink(tmp_path, owner="vm1.upload-1")
    assert await restarted.sweep() == 3
    left = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    assert left == ["vm2.upload-1/3333-c.bin"]
    assert not (staging / "gone.upload-9").exists()
    assert (first.root / "a.bin").read_bytes() == b"a" * 100
    assert await restarted.sweep() == 0


async def test_walk_flags_an_older_releases_temporary_files(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    (sink.root / "d").mkdir()
    (sink.root / "d" / "f.bin").write_bytes(b"landed")
    (sink.root / "d" / ".f.bin.lakeferry-tmp-62bf6ac28463").write_bytes(b"left")
    assert sorted([item async for item in sink.walk()]) == [
        SinkItem("d/.f.bin.lakeferry-tmp-62bf6ac28463", True),
        SinkItem("d/f.bin", False),
    ]


async def test_the_staging_folder_is_not_a_destination(tmp_path: Path) -> None:
    cache, sink = make_cache(tmp_path), make_sink(tmp_path)
    file = await cached_file(cache, "k", b"x")
    with pytest.raises(PermanentError) as caught:
        await sink.put(file, f"{STAGING}/main/evil.bin", EVENT)
    assert caught.value.reason == Reason.INVALID_PATH


async def test_refresh_reads_what_other_processes_did(tmp_path: Path) -> None:
    """Found in stage-per-process mode: a download worker's cache gauge stayed at 7.34 MB with
    20 files while the upload workers had emptied the folder."""
    downloader = make_cache(tmp_path, quota=10_000)
    uploader = make_cache(tmp_path, quota=10_000)  # the same folder, another process
    await put_in_cache(downloader, "a", b"a" * 3000)
    await put_in_cache(downloader, "b", b"b" * 2000)
    assert (await uploader.refresh())[:2] == (5000, 2)
    await uploader.remove("a")
    await uploader.remove("b")
    assert downloader.usage()[:2] == (5000, 2)  # what it counted alone
    assert (await downloader.refresh())[:2] == (0, 0)
    assert downloader.usage()[:2] == (0, 0)


# --- sink: folders, created and checked once -------------------------------------------------


async def test_a_checked_folder_is_not_checked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, sink = make_cache(tmp_path), make_sink(tmp_path)
    resolved: list[Path] = []
    real = Path.resolve

    def resolve(self: Path, strict: bool = False) -> Path:
        resolved.append(self)
        return real(self, strict=strict)

    monkeypatch.setattr(Path, "resolve", resolve)
    file = await cached_file(cache, "k", b"data")
    for i in range(3):
        await sink.put(file, f"2024/01/02/ev-{i}/f.bin", EVENT)
        await sink.put(file, f"2024/01/02/f{i}.bin", EVENT)
    # The first put checks its folder and those above it; a new folder inside a checked one
    # is created inside the root by construction, and a checked folder costs a stat.
    assert resolved == [sink.root / "2024/01/02/ev-0"]
    for i in range(3):
        assert (sink.root / f"2024/01/02/ev-{i}/f.bin").read_bytes() == b"data"
        assert (sink.root / f"2024/01/02/f{i}.bin").read_bytes() == b"data"


async def test_a_checked_folder_replaced_by_a_symlink_out_of_the_root_is_refused(
    tmp_path: Path,
) -> None:
    cache, sink = make_cache(tmp_path), make_sink(tmp_path)
    file = await cached_file(cache, "k", b"data")
    await sink.put(file, "d/a.bin", EVENT)
    await sink.put(file, "d/sub/a.bin", EVENT)
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    shutil.rmtree(sink.root / "d")
    (sink.root / "d").symlink_to(outside)
    for destination in ("d/b.bin", "d/sub/b.bin", "d/new/b.bin"):
        with pytest.raises(PermanentError) as caught:
            await sink.put(file, destination, EVENT)
        assert caught.value.reason == Reason.INVALID_PATH
    assert [p for p in outside.rglob("*") if not p.is_dir()] == []


async def test_removed_folders_are_made_again(tmp_path: Path) -> None:
    """An operator may remove folders of the sink, the staging folder included, while it runs."""
    cache, sink = make_cache(tmp_path), make_sink(tmp_path)
    file = await cached_file(cache, "k", b"data")
    await sink.put(file, "d/a.bin", EVENT)
    shutil.rmtree(sink.root / "d")
    assert await sink.put(file, "d/b.bin", EVENT) == ("d/b.bin", False)
    shutil.rmtree(sink.root / STAGING)
    assert await sink.put(file, "d/c.bin", EVENT) == ("d/c.bin", False)
    copier = make_sink(tmp_path, link=False)
    await copier.put(file, "d/d.bin", EVENT)
    shutil.rmtree(sink.root / STAGING)
    assert await copier.put(file, "d/e.bin", EVENT) == ("d/e.bin", False)
    assert sorted(p.name for p in (sink.root / "d").iterdir()) == [
        "b.bin",
        "c.bin",
        "d.bin",
        "e.bin",
    ]
