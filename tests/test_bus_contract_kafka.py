"""The bus contract (:mod:`bus_contract`) run on Kafka: a real Apache Kafka broker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from bus_contract import BusContract, BusFactory

from lakeferry.bus.base import Bus
from lakeferry.bus.kafka import KafkaBus

# Small groups: a member that leaves or dies is noticed within seconds.
FAST_GROUPS = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


class TestKafkaBus(BusContract):
    quiet_s = 1.0
    timeout_s = 30.0

    @pytest.fixture
    async def bus_factory(self, kafka_broker: Any) -> AsyncIterator[BusFactory]:
        opened: list[KafkaBus] = []

        async def factory() -> Bus:
            bus = await KafkaBus.open(kafka_broker.bootstrap, consumer=FAST_GROUPS)
            opened.append(bus)
            return bus

        yield factory
        for bus in opened:
            await bus.aclose()
