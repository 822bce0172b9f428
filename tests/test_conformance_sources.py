"""The source conformance kit (``lakeferry.testing.SourceConformance``) on every built-in source.

The same class a site team's source subclasses, each on its real input: ``spool`` on a
temporary folder, ``kafka`` on the session's Apache Kafka broker (``kafka_broker``), and
``eventhub`` on the Event Hubs emulator (``tools/eventhubs_emulator.py``) with its checkpoints
on Azurite.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from lakeferry_kusto import KustoSource, KustoSourceSettings

from helpers.eventhub import source_for
from helpers.kafka import create_topic, produce, unique
from helpers.tools import load_tool
from lakeferry.api import Duration, PluginContext, Source
from lakeferry.registry import load_registry
from lakeferry.testing import SourceConformance
from lakeferry_kafka_source import KafkaSource, KafkaSourceSettings
from lakeferry_spool import SpoolSettings, SpoolSource

emulator_tool: Any = load_tool("eventhubs_emulator")
kusto_tool: Any = load_tool("kusto_emulator")

PARTITIONS = 2
"""Kafka and Event Hub inputs have two partitions: events of a feed are spread over both."""


class TestSpoolSource(SourceConformance):
    @pytest.fixture
    def make_source(self, tmp_path: Path, lakeferry_context: PluginContext) -> Callable[[], Source]:
        settings = SpoolSettings(
            path=str(tmp_path / "spool"), poll_interval=Duration(0.02), batch_lines=2
        )
        return lambda: SpoolSource(settings, lakeferry_context)

    @pytest.fixture
    def feed(self, tmp_path: Path) -> Callable[[Sequence[bytes]], None]:
        spool = tmp_path / "spool"
        names = itertools.count()

        def feed(events: Sequence[bytes]) -> None:
            """One file per call, written aside and renamed in (the contract with writers)."""
            spool.mkdir(parents=True, exist_ok=True)
            name = f"{next(names):04d}.jsonl"
            staging = spool / f".{name}.partial"
            staging.write_bytes(b"".join(event + b"\n" for event in events))
            staging.rename(spool / name)

        return feed


class TestKafkaSource(SourceConformance):
    @pytest.fixture
    def topic(self, kafka_broker: Any) -> str:
        return create_topic(kafka_broker.bootstrap, unique("conformance"), partitions=PARTITIONS)

    @pytest.fixture
    def make_source(
        self, kafka_broker: Any, topic: str, lakeferry_context: PluginContext
    ) -> Callable[[], Source]:
        settings = KafkaSourceSettings(
            bootstrap_servers=kafka_broker.bootstrap,
            topics=[topic],
            group_id=unique("conformance-group"),
            batch_max=3,
            poll_timeout=Duration(0.1),
        )
        return lambda: KafkaSource(settings, lakeferry_context)

    @pytest.fixture
    def feed(self, kafka_broker: Any, topic: str) -> Callable[[Sequence[bytes]], None]:
        partitions = itertools.cycle(range(PARTITIONS))

        def feed(events: Sequence[bytes]) -> None:
            for event in events:
                produce(kafka_broker.bootstrap, topic, [event], partition=next(partitions))

        return feed


class TestEventHubSource(SourceConformance):
    cancel_timeout = 12.0
    """Closing waits for the SDK to stop each partition's receiver (see CLOSE_TIMEOUT)."""

    @pytest.fixture
    def emulator(self) -> Iterator[Any]:
        emulator = emulator_tool.start(hub=f"hub-{uuid.uuid4().hex[:8]}", partitions=PARTITIONS)
        try:
            yield emulator
        finally:
            emulator.stop()

    @pytest.fixture
    def make_source(
        self, emulator: Any, azurite: Any, monkeypatch: pytest.MonkeyPatch
    ) -> Callable[[], Source]:
        container = f"conformance-{uuid.uuid4().hex[:12]}"
        return lambda: source_for(emulator, azurite, container, monkeypatch, max_batch_size=3)

    @pytest.fixture
    def feed(self, emulator: Any) -> Callable[[Sequence[bytes]], None]:
        partitions = itertools.cycle(str(p) for p in range(PARTITIONS))

        def feed(events: Sequence[bytes]) -> None:
            for event in events:
                emulator.send(next(partitions), [event])

        return feed


class TestDeltaSource(SourceConformance):
    """A local Delta table with the raw event in a binary column (``raw_column``: malformed
    bytes included) and a row id; each ``feed`` is one append (one table version)."""

    @pytest.fixture
    def make_source(self, tmp_path: Path, lakeferry_context: PluginContext) -> Callable[[], Source]:
        from lakeferry_delta import DeltaSource, DeltaSourceSettings

        settings = DeltaSourceSettings(
            table_uri=str(tmp_path / "table"), id_column="row_id", raw_column="raw",
            poll_interval=Duration(0.05), batch_rows=3,
        )  # fmt: skip
        return lambda: DeltaSource(settings, lakeferry_context)

    @pytest.fixture
    def feed(self, tmp_path: Path) -> Callable[[Sequence[bytes]], None]:
        import pyarrow as pa
        from deltalake import write_deltalake

        schema = pa.schema([("row_id", pa.string()), ("raw", pa.binary())])
        write_deltalake(str(tmp_path / "table"), pa.table({"row_id": [], "raw": []}, schema))

        def feed(events: Sequence[bytes]) -> None:
            ids = [uuid.uuid4().hex for _ in events]
            rows = pa.table({"row_id": ids, "raw": list(events)}, schema)
            write_deltalake(str(tmp_path / "table"), rows, mode="append")

        return feed


def _utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


class TestKustoSource(SourceConformance):
    """The raw event in a string column (``raw_column``), a sequence number as the cursor."""

    malformed = tuple(
        m for m in SourceConformance.malformed if _utf8(m)
    )  # Kusto has no binary column type: bytes that are not UTF-8 cannot be stored in a row

    @pytest.fixture
    def emulator(self) -> Iterator[Any]:
        emulator = kusto_tool.start(database="history")
        emulator.create_table("Raw", [("seq", "long"), ("row_id", "string"), ("raw", "string")])
        try:
            yield emulator
        finally:
            emulator.stop()

    @pytest.fixture
    def make_source(self, emulator: Any, lakeferry_context: PluginContext) -> Callable[[], Source]:
        source_settings = KustoSourceSettings(
            cluster_url=emulator.url, database="history", query="Raw", cursor_column="seq",
            id_column="row_id", raw_column="raw", credential="none", page_rows=3,
            poll_interval=Duration(0.05), backoff_initial=Duration(0.01),
        )  # fmt: skip
        return lambda: KustoSource(source_settings, lakeferry_context)

    @pytest.fixture
    def feed(self, emulator: Any) -> Callable[[Sequence[bytes]], None]:
        sequence = itertools.count()

        def feed(events: Sequence[bytes]) -> None:
            emulator.append("Raw", [
                {"seq": next(sequence), "row_id": uuid.uuid4().hex, "raw": e.decode()}
                for e in events
            ])  # fmt: skip

        return feed


def test_every_source_kind_runs_the_kit() -> None:
    """A new built-in source kind gets a class in this module too."""
    tested = {"spool", "kafka", "eventhub", "delta", "kusto"}
    assert set(load_registry().kinds("source")) == tested
