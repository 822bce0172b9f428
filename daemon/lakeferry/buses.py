"""Which bus a config names, and opening it: one entry per ``bus.kind`` in :data:`OPENERS`.

A bus module is imported only when its kind is opened, so a daemon on the embedded bus never
loads librdkafka. A new bus is a module in ``lakeferry/bus/`` that passes the bus contract
suite (``tests/test_bus_contract.py``) plus one opener here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from lakeferry.bus.base import Bus
from lakeferry.config import LoadedConfig
from lakeferry.errors import BusError
from lakeferry.topics import topic_settings

Opener = Callable[[LoadedConfig, "str | None", bool], Awaitable[Bus]]


async def _open_embedded(config: LoadedConfig, member: str | None, create: bool) -> Bus:
    from lakeferry.bus.embedded import EmbeddedBus

    cfg = config.core.bus
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


async def _open_kafka(config: LoadedConfig, member: str | None, create: bool) -> Bus:
    from lakeferry.bus.kafka import KafkaBus

    cfg = config.core.bus
    k = cfg.kafka
    return await KafkaBus.open(
        k.bootstrap_servers,
        client=k.client,
        producer=k.producer,
        consumer=k.consumer,
        default_partitions=cfg.partitions,
        replication_factor=k.replication_factor,
        topic_config=lambda topic: topic_settings(config, topic),
        operation_timeout=k.operation_timeout,
        member=member,
    )


OPENERS: dict[str, Opener] = {"embedded": _open_embedded, "kafka": _open_kafka}
"""``bus.kind`` -> how to open it from a config."""


async def open_bus(config: LoadedConfig, member: str | None = None, *, create: bool = False) -> Bus:
    """Open the bus the config names. ``member`` (``<node>.<instance>``) is the daemon's stable
    name, its consumers' static group membership on Kafka; tools pass none.

    Only the daemon creates an embedded bus (``create``): a tool pointed at a config whose bus
    does not exist would otherwise write to a new file no daemon reads. It gets a
    :class:`BusError` naming the path instead."""
    return await OPENERS[config.core.bus.kind](config, member, create)
