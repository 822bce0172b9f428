"""The embedded bus beyond the contract: other processes, kill -9, group commit, maintenance."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing
from bus_contract import scan_all, take

from helpers.bus_writer import check_value
from lakeferry.bus.base import OutgoingRecord, Record, TopicPartition, TopicSpec
from lakeferry.bus.embedded import EmbeddedBus
from lakeferry.errors import BusError

WRITER = Path(__file__).parent / "helpers" / "bus_writer.py"


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[EmbeddedBus]:
    bus = await EmbeddedBus.open(tmp_path / "bus.db", poll_interval=0.02)
    yield bus
    await bus.aclose()


async def start_writer(
    path: Path, topic: str, count: int, tasks: int = 1, delay: float = 0.0
) -> trio.Process:
    args = [sys.executable, str(WRITER), str(path), topic, str(count), str(tasks), str(delay)]
    return await trio.lowlevel.open_process(args, stdout=subprocess.PIPE)


async def read_acks(proc: trio.Process, kill_after: int | None = None) -> set[int]:
    """Sequence numbers the writer printed as acknowledged, until its stdout closes.

    With ``kill_after``, SIGKILL the writer once that many were read (and keep reading what
    it printed before it died).
    """
    assert proc.stdout is not None
    acked: set[int] = set()
    pending = b""
    while chunk := await proc.stdout.receive_some():
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            word, seq = line.split()
            assert word == b"ack"
            acked.add(int(seq))
        if kill_after is not None and len(acked) >= kill_after and proc.returncode is None:
            proc.kill()
    return acked


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.mark.slow
async def test_acknowledged_records_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "bus.db"
    async with await EmbeddedBus.open(path) as bus:
        await bus.ensure_topics([TopicSpec("work", 3)])
    proc = await start_writer(path, "work", 0, tasks=8)
    try:
        with trio.fail_after(15):
            acked = await read_acks(proc, kill_after=400)  # killed in the middle of writing
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == -signal.SIGKILL

    def integrity() -> str:
        with sqlite3.connect(path) as conn:
            return str(conn.execute("PRAGMA integrity_check").fetchone()[0])

    assert await trio.to_thread.run_sync(integrity) == "ok"
    async with await EmbeddedBus.open(path) as bus:
        records = await scan_all(bus, "work")
    seqs = [check_value(r.value) for r in records]  # raises on a torn record
    assert all(r.headers == {"seq": b"%d" % s} for r, s in zip(records, seqs, strict=True))
    assert len(seqs) == len(set(seqs))
    assert acked <= set(seqs), f"lost acknowledged records: {sorted(acked - set(seqs))[:10]}"


@pytest.mark.slow
async def test_another_process_produces_while_we_consume(bus: EmbeddedBus) -> None:
    await bus.ensure_topics([TopicSpec("shared", 2)])
    consumer = bus.consumer("readers", ["shared"])
    received: list[Record] = []
    proc = await start_writer(Path(bus.path), "shared", 150, tasks=2, delay=0.002)
    try:
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    bus.producer().send_many,
                    [OutgoingRecord("shared", b"local-%d" % i) for i in range(50)],
                )

                async def produce_more() -> None:
                    for i in range(50, 150):
                        await bus.producer().send("shared", b"local-%d" % i)

                nursery.start_soon(produce_more)
                received.extend(await take(consumer, 300, within=15))
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    local = sorted(r.value for r in received if r.value.startswith(b"local-"))
    remote = sorted(check_value(r.value) for r in received if not r.value.startswith(b"local-"))
    assert local == sorted(b"local-%d" % i for i in range(150))
    assert remote == list(range(150))
    for records in [[r for r in received if r.partition == p] for p in (0, 1)]:
        assert [r.offset for r in records] == sorted({r.offset for r in records})
    await consumer.aclose()


async def test_partitioning_is_crc32_or_round_robin(bus: EmbeddedBus) -> None:
    await bus.ensure_topics([TopicSpec("parts", 4)])
    producer = bus.producer()
    for key in (b"abc", b"", b"\x00\xff", b"download-42"):
        await producer.send("parts", b"keyed", key=key)
    for _ in range(8):
        await producer.send("parts", b"unkeyed")
    records = await scan_all(bus, "parts")
    for r in records:
        if r.key is not None:
            assert r.partition == zlib.crc32(r.key) % 4
    unkeyed = [r.partition for r in records if r.key is None]
    assert sorted(unkeyed) == [0, 0, 1, 1, 2, 2, 3, 3]


async def test_topics_are_created_on_first_use(tmp_path: Path) -> None:
    async with await EmbeddedBus.open(tmp_path / "bus.db", default_partitions=2) as bus:
        assert await bus.end_offsets("fresh") == {}
        await bus.producer().send("fresh", b"x", key=b"k")
        assert sum((await bus.end_offsets("fresh")).values()) == 1
        consumer = bus.consumer("g", ["subscribed"])
        with trio.move_on_after(0.05):
            await consumer.next()
        assert consumer.assignment() == {TopicPartition("subscribed", p) for p in (0, 1)}
        await bus.ensure_topics([TopicSpec("fresh", 9), TopicSpec("big", 5)])
        assert len(await bus.end_offsets("fresh")) == 2  # an existing topic keeps its count
        assert len(await bus.end_offsets("big")) == 5


async def test_group_commit_batches_concurrent_sends(bus: EmbeddedBus) -> None:
    producer = bus.producer()
    before = bus.write_batches
    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(producer.send, "batched", b"%d" % i)
    assert bus.write_batches - before < 20
    assert sorted(r.value for r in await scan_all(bus, "batched")) == sorted(
        b"%d" % i for i in range(200)
    )


async def test_cancelled_sends_never_half_write(bus: EmbeddedBus) -> None:
    """A sender cancelled before its batch is taken withdraws; once taken, the batch is written."""
    producer = bus.producer()
    await producer.send("cancel", b"warm-up")  # creates the topic
    outcome: dict[str, bool] = {}

    async def send(value: bytes, scope: trio.CancelScope) -> None:
        with scope:
            await producer.send("cancel", value)
            outcome[value.decode()] = True
        if scope.cancelled_caught:
            outcome[value.decode()] = False

    scopes = {name: trio.CancelScope() for name in ("a", "b", "c", "d")}
    # Holding the connection makes every writer wait, so each step below is deterministic.
    await bus._limiter.acquire()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, b"a", scopes["a"])  # leads batch 1, waits for the connection
        await trio.testing.wait_all_tasks_blocked()
        for name in ("b", "c", "d"):  # queue as batch 2
            nursery.start_soon(send, name.encode(), scopes[name])
        await trio.testing.wait_all_tasks_blocked()
        scopes["a"].cancel()  # a leader is shielded: batch 1 is still written
        scopes["d"].cancel()  # batch 2 not taken yet: d withdraws
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == {"d": False}
        bus._limiter.release()
        await bus._limiter.acquire()  # queued before batch 2's leader: it will wait for us
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == {"a": True, "d": False}
        # Batch 2 (b, c) is taken by one of them. Cancel both: the leader is shielded and
        # succeeds, the follower is told nothing, but the batch is written whole.
        scopes["b"].cancel()
        scopes["c"].cancel()
        await trio.testing.wait_all_tasks_blocked()
        bus._limiter.release()
    assert (outcome["a"], outcome["d"]) == (True, False)
    assert sorted([outcome["b"], outcome["c"]]) == [False, True]
    values = [r.value for r in await scan_all(bus, "cancel")]
    assert values[:2] == [b"warm-up", b"a"]
    assert sorted(values[2:]) == [b"b", b"c"]


async def test_one_member_per_group(bus: EmbeddedBus) -> None:
    first = bus.consumer("g", ["t"])
    with pytest.raises(BusError, match="already has a member"):
        bus.consumer("g", ["other"])
    await first.aclose()
    await bus.consumer("g", ["t"]).aclose()


async def test_invalid_records_are_refused_before_queueing(bus: EmbeddedBus) -> None:
    producer = bus.producer()
    with pytest.raises(TypeError):
        await producer.send("t", "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await producer.send("t", b"v", key="k")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await producer.send("t", b"v", headers={"h": "text"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="topic"):
        await producer.send("", b"v")
    await producer.send("t", b"fine")
    assert [r.value for r in await scan_all(bus, "t")] == [b"fine"]


async def test_use_after_close(tmp_path: Path) -> None:
    bus = await EmbeddedBus.open(tmp_path / "bus.db")
    consumer = bus.consumer("g", ["t"])
    await bus.aclose()
    await bus.aclose()  # idempotent
    with pytest.raises(trio.ClosedResourceError):
        await bus.producer().send("t", b"v")
    with pytest.raises(trio.ClosedResourceError):
        await bus.end_offsets("t")
    with pytest.raises(trio.ClosedResourceError):
        bus.consumer("g2", ["t"])
    with pytest.raises(trio.ClosedResourceError):
        await consumer.next()


async def test_file_is_wal_with_the_documented_schema(tmp_path: Path) -> None:
    path = tmp_path / "bus.db"
    await (await EmbeddedBus.open(path)).aclose()

    def inspect() -> tuple[str, set[str], int]:
        with sqlite3.connect(path) as conn:
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            names = {
                n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        return mode, names, version

    mode, names, version = await trio.to_thread.run_sync(inspect)
    assert mode == "wal"
    assert names == {"topics", "log_ends", "records", "group_offsets"}
    assert version == 1
    with pytest.raises(ValueError, match="synchronous"):
        await EmbeddedBus.open(path, synchronous="sometimes")


async def test_prune_keeps_work_any_group_has_not_consumed(bus: EmbeddedBus) -> None:
    await bus.ensure_topics([TopicSpec("work", 1), TopicSpec("idle", 1)])
    producer = bus.producer()
    await producer.send_many([OutgoingRecord("work", b"%d" % i) for i in range(10)])
    await producer.send_many([OutgoingRecord("idle", b"%d" % i) for i in range(3)])
    tp = TopicPartition("work", 0)
    for group, position in (("fast", 6), ("slow", 4)):
        member = bus.consumer(group, ["work"])
        await member.commit({tp: position})
        await member.aclose()

    assert await bus.prune(now_ms(), retention_ms=60_000) == 0  # nothing old enough
    assert await bus.prune(now_ms() + 10_000, retention_ms=5_000) == 4  # below "slow"
    assert [r.offset for r in await scan_all(bus, "work")] == list(range(4, 10))
    assert len(await scan_all(bus, "idle")) == 3  # no group ever committed there

    # The slow group resumes where it was; a new group starts at the first retained record.
    slow = bus.consumer("slow", ["work"])
    assert [r.offset for r in await take(slow, 6)] == list(range(4, 10))
    await slow.aclose()

    # Without keep_uncommitted everything old goes, and offsets are never reused.
    assert await bus.prune(now_ms() + 10_000, retention_ms=5_000, keep_uncommitted=False) == 9
    assert await bus.end_offsets("work") == {0: 10}
    await producer.send("work", b"after")
    newcomer = bus.consumer("new", ["work"])
    (record,) = await take(newcomer, 1)
    assert (record.offset, record.value) == (10, b"after")
    await newcomer.aclose()


async def test_compact_keeps_the_latest_record_per_key(bus: EmbeddedBus) -> None:
    await bus.ensure_topics([TopicSpec("dlq", 2)])
    sent = [
        (b"k1", b"k1-a"),
        (b"k2", b"k2-a"),
        (b"k1", b"k1-b"),
        (None, b"plain-1"),
        (b"k3", b"k3-a"),
        (b"k1", b"k1-c"),
        (b"k2", b"k2-b"),
        (None, b"plain-2"),
    ]
    await bus.producer().send_many([OutgoingRecord("dlq", v, k) for k, v in sent])
    ends = await bus.end_offsets("dlq")
    assert await bus.compact("dlq") == 3
    assert await bus.compact("dlq") == 0
    assert await bus.compact("missing") == 0
    kept = await scan_all(bus, "dlq")
    assert sorted(r.value for r in kept) == [b"k1-c", b"k2-b", b"k3-a", b"plain-1", b"plain-2"]
    assert await bus.end_offsets("dlq") == ends
