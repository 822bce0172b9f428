"""A real Apache Kafka broker for tests: the session fixture ``kafka_broker`` and small helpers.

The broker is ``tools/kafka/kafka.py`` (a single-node KRaft broker from Maven Central), started
once per test run on a free port with its data in a temporary directory. Tests share it, so each
test uses its own topic and group names (:func:`unique`).

``kafka_broker`` yields a ``Broker``:

- ``.bootstrap``: ``"127.0.0.1:PORT"``;
- ``.stop()`` / ``.start()``: an outage; the same port and data come back, so topics, records
  and committed offsets survive (``.kill()`` is the SIGKILL variant);
- ``.pause()`` / ``.resume()``: a hung broker (SIGSTOP/SIGCONT): connections are accepted but
  nothing answers.

A test that stops the broker must start it again before it ends (use ``try``/``finally``).

Without Java the fixture *fails* with what to install: a machine that cannot run Kafka must not
pass the suite by skipping it. The broker dies with the test run even when pytest is killed
(``owner_pid``).
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import sys
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

from helpers.markers import starts_processes
from helpers.tools import load_tool

_PATH = Path(__file__).resolve().parents[2] / "tools" / "kafka" / "kafka.py"
_NAME = "lakeferry_tools_kafka"


def _load() -> ModuleType:
    module = sys.modules.get(_NAME)
    if module is None:
        spec = importlib.util.spec_from_file_location(_NAME, _PATH)
        assert spec is not None, _PATH
        assert spec.loader is not None, _PATH
        module = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = module
        spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:
    from kafka import kafka  # tools/ is on mypy's path: the checker reads it

    kafka_tool = kafka
else:
    kafka_tool = _load()
"""``tools/kafka/kafka.py`` as a module (``start``, ``stop``, ``status``, ``ensure_dist`` ...)."""

Broker = kafka_tool.Broker
KAFKA_SCRIPT = _PATH

_counter = itertools.count()


def start_broker(workdir: Path) -> Any:
    """Fetch Kafka if needed and start a broker on a free port; ``pytest.fail`` when impossible."""
    try:
        kafka_tool.ensure_dist(quiet=True)
        port, controller = load_tool("harness").free_ports(2)
        return kafka_tool.start(
            port, workdir=workdir, controller_port=controller, heap="512m", owner_pid=os.getpid()
        )
    except kafka_tool.KafkaToolError as exc:
        pytest.fail(f"cannot run Apache Kafka for the tests: {exc}", pytrace=False)


@pytest.fixture(scope="session")
@starts_processes
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    broker = start_broker(tmp_path_factory.mktemp("kafka"))
    try:
        yield broker
    finally:
        broker.stop()


def unique(prefix: str) -> str:
    """A topic or group name no other test of this run uses."""
    return f"{prefix}-{next(_counter)}-{uuid.uuid4().hex[:8]}"


def admin(bootstrap: str) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap})


def create_topic(
    bootstrap: str, name: str, partitions: int = 1, config: dict[str, str] | None = None
) -> str:
    """Create a topic and wait until it exists; returns its name."""
    # confluent-kafka exports NewTopic at run time; its type stubs do not list it.
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    client = admin(bootstrap)  # must outlive the future: destroying it fails the request
    futures = client.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=10,
        request_timeout=15,
    )
    futures[name].result(timeout=20)
    return name


def produce(
    bootstrap: str,
    topic: str,
    values: Iterable[bytes],
    *,
    partition: int | None = None,
    key: bytes | None = None,
) -> int:
    """Produce and flush; returns how many were delivered (raises on a delivery error)."""
    from confluent_kafka import KafkaException, Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    errors: list[Any] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    count = 0
    for value in values:
        if partition is None:
            producer.produce(topic, value, key=key, on_delivery=delivered)
        else:
            producer.produce(topic, value, key=key, partition=partition, on_delivery=delivered)
        count += 1
    left = producer.flush(30)
    if errors or left:
        raise KafkaException(errors[0] if errors else f"{left} records not delivered")
    return count


def committed(
    bootstrap: str, group: str, topic: str, partitions: Sequence[int], timeout: float = 10
) -> dict[int, int]:
    """The group's committed offset per partition (negative: none), read by another client."""
    from confluent_kafka import Consumer, TopicPartition

    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        found = reader.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout)
    finally:
        reader.close()
    return {tp.partition: tp.offset for tp in found}


def end_offsets(bootstrap: str, topic: str, partitions: Sequence[int]) -> dict[int, int]:
    """The high watermark (next offset to be written) of each partition."""
    from confluent_kafka import Consumer, TopicPartition

    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("watermarks")})
    try:
        return {
            p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
    finally:
        reader.close()
