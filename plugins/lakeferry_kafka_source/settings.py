"""The ``[[sources]]`` settings of the ``kafka`` kind."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from lakeferry.api import Duration

RESERVED = frozenset(
    {
        "bootstrap.servers",
        "group.id",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "auto.offset.reset",
        "enable.partition.eof",
    }
)
"""librdkafka keys the source sets itself: delivery depends on them."""

ConfigValue = str | int | float | bool


class KafkaSourceSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An external Kafka topic (or Event Hub) of raw events, consumed in a consumer group."""

    bootstrap_servers: str
    """``host:port[,host:port...]``; Event Hubs: ``<namespace>.servicebus.windows.net:9093``."""
    topics: Annotated[list[str], Meta(min_length=1)]
    """Topics to consume (Event Hubs: the event hub names)."""
    group_id: str = "lakeferry-ingest"
    """The consumer group; every daemon of a deployment uses the same one to share partitions."""
    batch_max: Annotated[int, Meta(ge=1, le=100_000)] = 500
    """Most records handed to the intake per ``publish`` (and committed at once)."""
    poll_timeout: Duration = Duration(0.5)
    """Longest wait for the first record of a batch; also bounds how long a cancellation waits."""
    config: dict[str, ConfigValue] = {}
    """Passed to librdkafka as they are (SASL/SSL, timeouts); values may use ``${ENV}``."""
    start_from: Literal["earliest", "latest"] = "earliest"
    """Where a group without committed offsets starts (``auto.offset.reset``)."""

    def __post_init__(self) -> None:
        if not self.bootstrap_servers.strip():
            raise ValueError("bootstrap_servers must not be empty")
        if any(not topic.strip() for topic in self.topics):
            raise ValueError("topics must not contain empty names")
        if not self.group_id.strip():
            raise ValueError("group_id must not be empty")
        if self.poll_timeout <= 0:
            raise ValueError("poll_timeout must be positive")
        reserved = sorted(RESERVED & self.config.keys())
        if reserved:
            raise ValueError(
                f"config may not set {', '.join(reserved)}: the source sets it "
                "(use bootstrap_servers, group_id, start_from)"
            )
