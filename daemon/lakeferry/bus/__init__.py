"""Message buses: the contract (:mod:`lakeferry.bus.base`) and its implementations.

Opening the bus a config names is :func:`lakeferry.buses.open_bus`; what topics the pipeline
needs and their settings, :mod:`lakeferry.topics`. Nothing here knows the application's
config.
"""

from __future__ import annotations

from lakeferry.bus.base import (
    Bus,
    Consumer,
    OutgoingRecord,
    Producer,
    Record,
    TopicPartition,
    TopicSpec,
)

__all__ = [
    "Bus",
    "Consumer",
    "OutgoingRecord",
    "Producer",
    "Record",
    "TopicPartition",
    "TopicSpec",
]
