"""Message buses: the contract (:mod:`lakeferry.bus.base`) and its implementations."""

from __future__ import annotations

from pathlib import Path

import trio

from lakeferry.bus.base import (
    Bus,
    Consumer,
    OutgoingRecord,
    Producer,
    Record,
    TopicPartition,
    TopicSpec,
)
from lakeferry.config import LoadedConfig
from lakeferry.errors import BusError

__all__ = [
    "Bus",
    "Consumer",
    "OutgoingRecord",
    "Producer",
    "Record",
    "TopicPartition",
    "open_bus",
    "topic_specs",
]


def topic_specs(config: LoadedConfig) -> list[TopicSpec]:
    """Every topic the pipeline uses, with the configured partition count."""
    return [TopicSpec(name, config.core.bus.partitions) for name in config.all_topics()]


def kafka_topic_config(config: LoadedConfig, topic: str) -> dict[str, str]:
    """Broker-side settings lakeferry manages for ``topic``."""
    if topic == config.core.topics.dlq:
        # Keyed letters and tombstones: compaction keeps the last record of every event.
        return {"cleanup.policy": "compact"}
    return {
        "cleanup.policy": "delete",
        "retention.ms": str(int(config.core.bus.kafka.retention * 1000)),
    }


async def open_bus(config: LoadedConfig, member: str | None = None, *, create: bool = False) -> Bus:
    """Open the bus the config names. ``member`` (``<node>.<instance>``) is the daemon's stable
    name, its consumers' static group membership on Kafka; tools pass none.

    Only the daemon creates an embedded bus (``create``): a tool pointed at a config whose bus
    does not exist would otherwise write to a new file no daemon reads. It gets a
    :class:`BusError` naming the path instead."""
    cfg = config.core.bus
    if cfg.kind == "kafka":
        from lakeferry.bus.kafka import KafkaBus

        k = cfg.kafka
        return await KafkaBus.open(
            k.bootstrap_servers,
            client=k.client,
            producer=k.producer,
            consumer=k.consumer,
            default_partitions=cfg.partitions,
            replication_factor=k.replication_factor,
            topic_config=lambda topic: kafka_topic_config(config, topic),
            operation_timeout=k.operation_timeout,
            member=member,
        )
    from lakeferry.bus.embedded import EmbeddedBus

    path = Path(cfg.embedded.path)
    if not create and not await trio.Path(path).exists():
        raise BusError(
            f"no bus at {path} — is a daemon configured with this file? (relative paths in a "
            f"config are relative to its folder; a daemon creates the bus when it first starts)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    return await EmbeddedBus.open(
        cfg.embedded.path,
        default_partitions=cfg.partitions,
        poll_interval=cfg.embedded.poll_interval,
        synchronous=cfg.embedded.synchronous,
    )
