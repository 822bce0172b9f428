"""The ``spool`` source against real files, with a recording Intake as the boundary."""

from __future__ import annotations

import logging
import os
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

import lakeferry_spool
from helpers.wait import wait_until_async
from lakeferry.api import ConfigError, Duration, PluginContext, RawEvent, Source
from lakeferry.units import dec_hook
from lakeferry_spool import SpoolSettings, SpoolSource
from lakeferry_spool.reader import LineReader

TIMEOUT = 10
FAST = Duration(0.01)


class RecordingIntake:
    """Records every published batch; can hold one call open until released."""

    def __init__(self, *, hold_call: int | None = None, keep: bool = True) -> None:
        self.batches: list[list[RawEvent]] = []
        self.events_seen = 0
        self.last: RawEvent | None = None
        self.calls = 0
        self.hold_call = hold_call
        self.holding = trio.Event()
        self.release = trio.Event()
        self._keep = keep

    async def publish(self, events: Sequence[RawEvent]) -> None:
        self.calls += 1
        if self.calls == self.hold_call:
            self.holding.set()
            await self.release.wait()
        if self._keep:
            self.batches.append(list(events))
        self.events_seen += len(events)
        self.last = events[-1]

    @property
    def events(self) -> list[RawEvent]:
        return [event for batch in self.batches for event in batch]


def settings_for(tmp_path: Path, **overrides: Any) -> SpoolSettings:
    values: dict[str, Any] = {"path": str(tmp_path / "spool"), "poll_interval": FAST}
    values.update(overrides)
    return SpoolSettings(**values)


def make_source(tmp_path: Path, max_event_bytes: int = 1 << 20, **overrides: Any) -> SpoolSource:
    context = PluginContext(
        state_dir=tmp_path / "state", logger=logging.getLogger("test.spool"),
        max_event_bytes=max_event_bytes,
    )  # fmt: skip
    return SpoolSource(settings_for(tmp_path, **overrides), context)


def drop(directory: Path, name: str, content: bytes) -> Path:
    """Write elsewhere, then rename in: the contract with writers."""
    directory.mkdir(parents=True, exist_ok=True)
    staging = directory / f".{name}.partial"
    staging.write_bytes(content)
    target = directory / name
    staging.rename(target)
    return target


def jsonl(*ids: str) -> bytes:
    return b"".join(b'{"id": "%s"}\n' % i.encode() for i in ids)


async def appears(path: Path) -> None:
    """Wait for the source to move a file to ``path``: polls the file system (there is no event
    to wait on)."""
    await wait_until_async(
        path.exists, timeout=TIMEOUT, what=f"the source to move a file to {path}", interval=0.005
    )


def write_lines(path: Path, template: bytes, count: int) -> int:
    with open(path, "wb") as f:
        for i in range(count):
            f.write(template % i)
    return path.stat().st_size


def test_registers_the_spool_kind(tmp_path: Path) -> None:
    calls: list[tuple[str, Any, Any]] = []
    lakeferry_spool.lakeferry_register_sources(register=lambda *args: calls.append(args))
    [(kind, factory, settings_type)] = calls
    assert kind == "spool"
    settings = msgspec.convert(
        {"path": str(tmp_path), "poll_interval": "250ms"},
        settings_type,
        dec_hook=dec_hook,
    )
    assert settings.poll_interval == 0.25
    assert (settings.pattern, settings.batch_lines, settings.done_dir) == ("*.jsonl", 500, "")
    context = PluginContext(state_dir=tmp_path, logger=logging.getLogger("test"))
    source = factory(settings, context)
    assert isinstance(source, SpoolSource)
    assert source.done_dir == tmp_path / "done"
    typed: Source = SpoolSource(settings, context)  # mypy checks the protocol
    assert typed.name == f"spool:{tmp_path}"
    with pytest.raises(ConfigError, match="done_dir"):
        SpoolSource(settings_for(tmp_path, done_dir=str(tmp_path / "spool" / ".")), context)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"path": "x", "intervall": 1}, SpoolSettings, dec_hook=dec_hook)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"path": "x", "batch_lines": 0}, SpoolSettings, dec_hook=dec_hook)


async def test_started_once_the_folders_exist(tmp_path: Path) -> None:
    source = make_source(tmp_path)
    intake = RecordingIntake()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(source.run, intake)
            assert (tmp_path / "spool").is_dir()
            assert (tmp_path / "spool" / "done").is_dir()
            nursery.cancel_scope.cancel(reason="test over")


async def test_lines_published_in_order_with_origins(tmp_path: Path) -> None:
    source = make_source(tmp_path, batch_lines=2)
    spool = tmp_path / "spool"
    path = drop(spool, "a.jsonl", b'{"id": "1"}\n\n  \n{"id": "2"}\r\n{"id": "3"}\n{"id": "4"}')
    intake = RecordingIntake()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(source.run, intake)
            await appears(spool / "done" / "a.jsonl")
            nursery.cancel_scope.cancel(reason="test over")
    assert intake.batches == [
        [RawEvent(b'{"id": "1"}', f"spool:{path}:1"), RawEvent(b'{"id": "2"}', f"spool:{path}:4")],
        [RawEvent(b'{"id": "3"}', f"spool:{path}:5"), RawEvent(b'{"id": "4"}', f"spool:{path}:6")],
    ]
    assert not path.exists()
    assert list((spool / "done" / ".progress").iterdir()) == []


async def test_files_in_name_order_and_others_ignored(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    drop(spool, "b.jsonl", jsonl("b1"))
    drop(spool, "a.jsonl", jsonl("a1", "a2"))
    ignored = ["c.jsonl.tmp", "notes.txt", ".hidden.jsonl"]
    for name in ignored:
        (spool / name).write_bytes(jsonl("nope"))
    (spool / "dir.jsonl").mkdir()
    source = make_source(tmp_path)
    intake = RecordingIntake()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(source.run, intake)
            await appears(spool / "done" / "b.jsonl")
            drop(spool, "0-late.jsonl", jsonl("late"))  # picked up by a later scan
            await appears(spool / "done" / "0-late.jsonl")
            # Time for a few more scans (FAST is 10 ms): the ignored files stay ignored.
            await trio.sleep(0.05)
            nursery.cancel_scope.cancel(reason="test over")
    assert [e.data for e in intake.events] == [
        b'{"id": "a1"}',
        b'{"id": "a2"}',
        b'{"id": "b1"}',
        b'{"id": "late"}',
    ]
    for name in ignored:
        assert (spool / name).exists()


async def test_file_moved_only_after_publish_returned(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    path = drop(spool, "a.jsonl", jsonl(*(str(i) for i in range(5))))
    source = make_source(tmp_path, batch_lines=2)
    intake = RecordingIntake(hold_call=3)  # the last batch
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(source.run, intake)
            await intake.holding.wait()
            await trio.sleep(0.05)  # scans go on while publish is held: the file stays
            assert path.exists()
            assert not (spool / "done" / "a.jsonl").exists()
            intake.release.set()
            await appears(spool / "done" / "a.jsonl")
            assert not path.exists()
            nursery.cancel_scope.cancel(reason="test over")
    assert len(intake.events) == 5


async def test_restart_resumes_after_the_last_published_batch(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    ids = [str(i) for i in range(10)]
    path = drop(spool, "a.jsonl", jsonl(*ids))
    first = RecordingIntake(hold_call=3)  # lines 5-6 in flight when the process dies
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(make_source(tmp_path, batch_lines=2).run, first)
            await first.holding.wait()
            nursery.cancel_scope.cancel(reason="crash")
    assert [e.origin for e in first.events] == [f"spool:{path}:{n}" for n in range(1, 5)]
    assert path.exists()
    assert (spool / "done" / ".progress" / "a.jsonl.lines").exists()

    second = RecordingIntake()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(make_source(tmp_path, batch_lines=2).run, second)
            await appears(spool / "done" / "a.jsonl")
            nursery.cancel_scope.cancel(reason="test over")
    assert [e.origin for e in second.events] == [f"spool:{path}:{n}" for n in range(5, 11)]
    assert [e.data for e in first.events + second.events] == jsonl(*ids).splitlines()
    assert not (spool / "done" / ".progress" / "a.jsonl.lines").exists()


async def test_progress_of_another_file_with_the_same_name_is_ignored(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    drop(spool, "a.jsonl", jsonl("old1", "old2", "old3"))
    first = RecordingIntake(hold_call=2)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(make_source(tmp_path, batch_lines=2).run, first)
            await first.holding.wait()
            nursery.cancel_scope.cancel(reason="crash")
    # The operator replaces the file by a new one of the same name.
    (spool / "a.jsonl").unlink()
    drop(spool, "a.jsonl", jsonl("new1", "new2", "new3", "new4"))
    second = RecordingIntake()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(make_source(tmp_path, batch_lines=2).run, second)
            await appears(spool / "done" / "a.jsonl")
            nursery.cancel_scope.cancel(reason="test over")
    assert [e.data for e in second.events] == jsonl("new1", "new2", "new3", "new4").splitlines()


async def test_stale_progress_is_pruned_at_start(tmp_path: Path) -> None:
    progress = tmp_path / "spool" / "done" / ".progress"
    progress.mkdir(parents=True)
    (progress / "gone.jsonl.lines").write_bytes(b"{}")
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(make_source(tmp_path).run, RecordingIntake())
            nursery.cancel_scope.cancel(reason="test over")
    assert list(progress.iterdir()) == []


async def test_same_name_twice_keeps_both_in_done(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    done = tmp_path / "finished"
    source = make_source(tmp_path, done_dir=str(done))
    intake = RecordingIntake()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(source.run, intake)
            drop(spool, "a.jsonl", jsonl("1"))
            await appears(done / "a.jsonl")
            drop(spool, "a.jsonl", jsonl("2"))
            await appears(done / "a.1.jsonl")
            nursery.cancel_scope.cancel(reason="test over")
    assert (done / "a.jsonl").read_bytes() == jsonl("1")
    assert (done / "a.1.jsonl").read_bytes() == jsonl("2")
    assert not (spool / "done").exists()


async def test_large_file_is_streamed(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    lines = 100_000
    line = b'{"id": "%06d", "url": "https://example.org/some/rather/long/path/file.bin"}\n'
    size = write_lines(spool / "big.jsonl", line, lines)
    assert size > 7_000_000
    intake = RecordingIntake(keep=False)
    tracemalloc.start()
    try:
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                await nursery.start(make_source(tmp_path).run, intake)
                await appears(spool / "done" / "big.jsonl")
                nursery.cancel_scope.cancel(reason="test over")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert intake.events_seen == lines
    assert intake.calls == lines // 500
    assert intake.last is not None
    assert intake.last.origin.endswith(f"big.jsonl:{lines}")
    assert peak < size / 5, f"peak {peak} bytes for a {size} byte file"


async def test_an_overlong_line_is_cut_and_skipped_past(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    drop(spool, "a.jsonl", b"x" * 5000 + b"\n" + jsonl("after") + b"y" * 100 + b"\n")
    intake = RecordingIntake()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(make_source(tmp_path, max_event_bytes=100).run, intake)
            await appears(spool / "done" / "a.jsonl")
            nursery.cancel_scope.cancel(reason="test over")
    assert [(e.data, e.origin.rsplit(":", 1)[1]) for e in intake.events] == [
        (b"x" * 100, "1"),
        (b'{"id": "after"}', "2"),
        (b"y" * 100, "3"),  # exactly the limit: whole
    ]


async def test_unreadable_file_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = tmp_path / "spool"
    path = drop(spool, "a.jsonl", jsonl("1"))
    failures = 3
    real_open = LineReader.open

    def flaky_open(self: LineReader) -> Any:
        nonlocal failures
        if failures:
            failures -= 1
            raise PermissionError(13, "Permission denied", str(self.path))
        return real_open(self)

    if os.geteuid() == 0:  # root reads through chmod 000: inject the failure instead
        monkeypatch.setattr(LineReader, "open", flaky_open)
    else:
        path.chmod(0)
    intake = RecordingIntake()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(make_source(tmp_path).run, intake)
            await trio.sleep(0.1)  # scans go on; an unreadable file yields nothing meanwhile
            if os.geteuid() != 0:
                assert intake.events == []
                path.chmod(0o644)
            await appears(spool / "done" / "a.jsonl")
            nursery.cancel_scope.cancel(reason="test over")
    assert [e.data for e in intake.events] == [b'{"id": "1"}']


async def test_a_failing_publish_ends_the_source(tmp_path: Path) -> None:
    class BrokenIntake:
        async def publish(self, events: Sequence[RawEvent]) -> None:
            raise ConnectionError("bus down")

    spool = tmp_path / "spool"
    path = drop(spool, "a.jsonl", jsonl("1"))
    with trio.fail_after(TIMEOUT), pytest.RaisesGroup(pytest.RaisesExc(ConnectionError)):
        async with trio.open_nursery() as nursery:
            await nursery.start(make_source(tmp_path).run, BrokenIntake())
    assert path.exists()
