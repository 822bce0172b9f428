"""Message buses: the contract (:mod:`lakeferry.bus.base`) and its implementations."""

from __future__ import annotations

from pathlib import Path

from lakeferry.bus.base import Bus, Consumer, OutgoingRecord, Producer, Record, TopicPartition
from lakeferry.config import LoadedConfig

__all__ = ["Bus", "Consumer", "OutgoingRecord", "Producer", "Record", "TopicPartition", "open_bus"]


async def open_bus(config: LoadedConfig) -> Bus:
    """Open the bus the config names."""
    from lakeferry.bus.embedded import EmbeddedBus

    cfg = config.core.bus
    Path(cfg.embedded.path).parent.mkdir(parents=True, exist_ok=True)
    bus = await EmbeddedBus.open(
        cfg.embedded.path,
        default_partitions=cfg.partitions,
        poll_interval=cfg.embedded.poll_interval,
        synchronous=cfg.embedded.synchronous,
    )
    return bus
