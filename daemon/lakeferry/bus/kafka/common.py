"""What the Kafka bus's parts share: thresholds, which errors are retried, record conversion."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import TopicPartition as KTopicPartition

from lakeferry.bus.base import (
    Record,
    TopicPartition,
)
from lakeferry.logs import get_logger

log = get_logger("bus.kafka")

BUFFER_HIGH = 1000
BUFFER_LOW = 200
POLL_TIMEOUT = 0.05
CONSUME_BATCH = 500
HEALTH_CHECK_INTERVAL = 2.0
ADMIN_RETRY_INITIAL = 0.1
ADMIN_RETRY_MAX = 2.0
"""Backoff between tries of an admin or metadata call that failed with a retriable error."""

RETRIABLE = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,  # a leader election is under way
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,  # metadata of a new topic not everywhere yet
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.NOT_COORDINATOR,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
    }
)
"""Codes retried even where librdkafka does not flag the error ``retriable()``."""

KTP = KTopicPartition


def retriable(exc: KafkaException) -> bool:
    """Whether a failed call is worth trying again: the cluster is moving (leader elections,
    metadata not ready, a coordinator loading), not refusing."""
    err = exc.args[0] if exc.args else None
    if not isinstance(err, KafkaError) or err.fatal():
        return False
    return bool(err.retriable()) or err.code() in RETRIABLE


def unreachable(exc: KafkaException) -> bool:
    """Whether a failed call means no broker answered (as opposed to one refusing)."""
    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and err.code() in (
        KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN,
        KafkaError._RESOLVE,
    )  # fmt: skip


def _tp(tp: KTopicPartition) -> TopicPartition:
    return TopicPartition(tp.topic, tp.partition)


def _record(msg: Any) -> Record:
    headers = msg.headers() or []
    return Record(
        msg.topic(),
        msg.partition(),
        msg.offset(),
        msg.key(),
        msg.value() or b"",
        {k: (v or b"") for k, v in headers},
        msg.timestamp()[1],
    )
