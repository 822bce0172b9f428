"""The development Kafka (``tools/kafka/kafka.py``): the test fixture's broker and the CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from helpers.kafka import (
    KAFKA_SCRIPT,
    committed,
    create_topic,
    kafka_tool,
    produce,
    start_broker,
    unique,
)

# Every test here runs Kafka's tools or Java.
pytestmark = pytest.mark.slow


def consume(bootstrap: str, group: str, topic: str, count: int, timeout: float = 20) -> list[Any]:
    """Read ``count`` records with a fresh member of ``group``; commit after each one."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    records: list[Any] = []
    try:
        for _ in range(count):
            msg = consumer.poll(timeout)
            assert msg is not None, f"no record within {timeout}s after {len(records)}"
            assert msg.error() is None, msg.error()
            records.append(msg)
            consumer.commit(message=msg, asynchronous=False)
    finally:
        consumer.close()
    return records


def test_round_trip_through_the_fixture_broker(kafka_broker: Any) -> None:
    bootstrap = kafka_broker.bootstrap
    assert bootstrap == f"127.0.0.1:{kafka_broker.port}"
    topic = create_topic(bootstrap, unique("roundtrip"), partitions=2)
    produce(bootstrap, topic, [b"p0-%d" % i for i in range(5)], partition=0)
    produce(bootstrap, topic, [b"p1-%d" % i for i in range(5)], partition=1)
    records = consume(bootstrap, unique("group"), topic, 10)
    by_partition: dict[int, list[bytes]] = {0: [], 1: []}
    for msg in records:
        by_partition[msg.partition()].append(msg.value())
    assert by_partition == {p: [b"p%d-%d" % (p, i) for i in range(5)] for p in (0, 1)}


def test_topics_and_committed_offsets_survive_a_restart(kafka_broker: Any) -> None:
    bootstrap = kafka_broker.bootstrap
    topic = create_topic(bootstrap, unique("outage"))
    group = unique("group")
    produce(bootstrap, topic, [b"%d" % i for i in range(5)])
    assert [m.value() for m in consume(bootstrap, group, topic, 3)] == [b"0", b"1", b"2"]

    pid = kafka_broker.pid
    kafka_broker.stop()
    try:
        assert not kafka_broker.running()
        with socket.socket() as probe:  # really down: the port refuses connections
            assert probe.connect_ex(("127.0.0.1", kafka_broker.port)) != 0
    finally:
        kafka_broker.start()
    assert kafka_broker.pid != pid
    assert kafka_broker.bootstrap == bootstrap

    assert committed(bootstrap, group, topic, [0]) == {0: 3}
    produce(bootstrap, topic, [b"5"])
    assert [m.value() for m in consume(bootstrap, group, topic, 3)] == [b"3", b"4", b"5"]


def test_a_paused_broker_hangs_until_resumed(kafka_broker: Any) -> None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    client = AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
    assert client.list_topics(timeout=10).brokers
    kafka_broker.pause()
    try:
        with socket.create_connection(("127.0.0.1", kafka_broker.port), timeout=1):
            pass  # the kernel still accepts connections ...
        fresh = AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
        with pytest.raises(KafkaException):
            fresh.list_topics(timeout=1)  # ... but nothing answers
    finally:
        kafka_broker.resume()
    assert client.list_topics(timeout=10).brokers


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(KAFKA_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def test_cli_up_status_down(tmp_path: Path, kafka_broker: Any) -> None:
    # kafka_broker: Kafka is fetched, and a second broker must coexist with the session's one.
    port = kafka_tool.free_port()
    workdir = tmp_path / "kafka"
    try:
        up = run_cli("up", "--port", str(port), "--dir", str(workdir))
        assert up.returncode == 0, up.stderr
        assert up.stdout.strip() == f"127.0.0.1:{port}"
        pid = int((workdir / "kafka.pid").read_text())

        again = run_cli("up", "--port", str(port), "--dir", str(workdir))
        assert (again.returncode, again.stdout.strip()) == (0, f"127.0.0.1:{port}")
        assert int((workdir / "kafka.pid").read_text()) == pid  # idempotent: same broker

        other = run_cli("up", "--port", str(kafka_tool.free_port()), "--dir", str(workdir))
        assert other.returncode == 1
        assert "already runs" in other.stderr

        state = run_cli("status", "--dir", str(workdir))
        assert state.returncode == 0
        assert state.stdout.startswith(f"127.0.0.1:{port} (pid {pid}")

        # A user's client sees a working broker.
        topic = create_topic(f"127.0.0.1:{port}", unique("cli"))
        produce(f"127.0.0.1:{port}", topic, [b"hello"])
        assert [m.value() for m in consume(f"127.0.0.1:{port}", unique("g"), topic, 1)] == [
            b"hello"
        ]

        down = run_cli("down", "--dir", str(workdir))
        assert (down.returncode, down.stdout.strip()) == (0, "stopped")
        assert not kafka_tool.pid_alive(pid)
        assert not (workdir / "kafka.pid").exists()
        state = run_cli("status", "--dir", str(workdir))
        assert (state.returncode, state.stdout.strip()) == (3, "not running")
        down = run_cli("down", "--dir", str(workdir))
        assert (down.returncode, down.stdout.strip()) == (0, "not running")
    finally:
        kafka_tool.stop(workdir)


def test_missing_java_names_what_to_install(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no java, no mvn
    result = run_cli("dist", env=dict(os.environ))
    assert result.returncode == 1
    assert "apt-get install openjdk-17-jre-headless maven" in result.stderr

    with pytest.raises(pytest.fail.Exception, match="openjdk-17-jre-headless"):
        start_broker(tmp_path / "kafka")


def test_offsets_of_a_group_read_by_another_client(kafka_broker: Any) -> None:
    bootstrap = kafka_broker.bootstrap
    topic = create_topic(bootstrap, unique("offsets"), partitions=2)
    group = unique("group")
    assert committed(bootstrap, group, topic, [0, 1]) == {0: -1001, 1: -1001}
    produce(bootstrap, topic, [b"a", b"b"], partition=1)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 1, 2)], asynchronous=False)
    finally:
        consumer.close()
    assert committed(bootstrap, group, topic, [0, 1]) == {0: -1001, 1: 2}
