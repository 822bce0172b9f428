"""Saved samples of every message kind keep decoding (schema evolution rule 2 and 4)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import msgspec
import pytest

from lakeferry.messages import (
    CACHED,
    DLQ,
    DOWNLOAD,
    EVENT,
    RESULT,
    SCHEMA_VERSION,
    CachedFile,
    DeadLetter,
    DlqTombstone,
    DownloadTask,
    Event,
    TopicCodec,
    UploadResult,
    decode_event,
)

SAMPLES = Path(__file__).parent / "samples"
T = dt.datetime(2026, 11, 28, 7, 0, 0, tzinfo=dt.UTC)


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def test_event_sample() -> None:
    ev = EVENT.decode(sample("event_v1.json"))
    assert ev == Event(
        id="evt-0001", url="https://origin.example/files/a.bin?sig=secret", sha256="a" * 64,
        size=1024, metadata={"site": "north"}, created_at=T,
    )  # fmt: skip


def test_minimal_event_gets_defaults() -> None:
    ev = decode_event(sample("event_minimal.json"))
    assert (ev.id, ev.url, ev.path, ev.sha256, ev.size, ev.metadata, ev.created_at) == (
        "x1", "http://h/f", None, None, None, {}, None,
    )  # fmt: skip


def test_download_task_sample() -> None:
    task = DOWNLOAD.decode(sample("download_task_v1.json"))
    assert isinstance(task, DownloadTask)
    assert task.attempt == 2
    assert task.due_at == T + dt.timedelta(minutes=10)
    assert [a.reason for a in task.history] == ["http_server_error", "timeout"]
    assert task.replays == 0  # field added after the sample was written: default applies
    assert task.v == SCHEMA_VERSION


def test_cached_and_result_samples() -> None:
    cached = CACHED.decode(sample("cached_file_v1.json"))
    assert isinstance(cached, CachedFile)
    assert (cached.cache_key, cached.size) == ("evt-0001", 1024)
    result = RESULT.decode(sample("upload_result_v1.json"))
    assert isinstance(result, UploadResult)
    assert result.skipped is True
    assert result.destination == "2026/11/28/evt-0001/a.bin"


def test_dlq_samples() -> None:
    dead = DLQ.decode(sample("dead_letter_v1.json"))
    assert isinstance(dead, DeadLetter)
    assert dead.reason == "retries_exhausted"
    assert dead.task is not None
    assert len(dead.attempts) == 2
    malformed = DLQ.decode(sample("dead_letter_malformed_v1.json"))
    assert isinstance(malformed, DeadLetter)
    assert malformed.task is None
    assert malformed.raw == b"not json\xff"
    stone = DLQ.decode(sample("dlq_tombstone_v1.json"))
    assert isinstance(stone, DlqTombstone)
    assert stone.action == "replay"


def test_unknown_fields_are_ignored() -> None:
    data = sample("event_v1.json").rstrip()[:-1] + b',"added_in_v9":{"x":1}}'
    assert EVENT.decode(data).id == "evt-0001"


@pytest.mark.parametrize(
    "raw",
    [
        b"", b"not json", b"[]", b'{"url":"http://h/f"}', b'{"id":"","url":"http://h/f"}',
        b'{"id":"a","url":"http://h/f","sha256":"XYZ"}', b'{"id":"a","url":"http://h/f","size":-1}',
        b'{"id":5,"url":"http://h/f"}',
    ],
)  # fmt: skip
def test_bad_events_refused(raw: bytes) -> None:
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        decode_event(raw)


def test_roundtrip_every_kind() -> None:
    codecs: list[tuple[str, TopicCodec[Any]]] = [
        ("event_v1.json", EVENT),
        ("download_task_v1.json", DOWNLOAD),
        ("cached_file_v1.json", CACHED),
        ("upload_result_v1.json", RESULT),
        ("dead_letter_v1.json", DLQ),
        ("dlq_tombstone_v1.json", DLQ),
    ]
    for name, codec in codecs:
        message = codec.decode(sample(name))
        assert codec.decode(codec.encode(message)) == message
