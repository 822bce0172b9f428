"""lakeferry built-in plugin ``kafka``: an external Kafka topic as an event source.

Registers the source kind ``kafka`` (settings :class:`KafkaSourceSettings`, a ``[[sources]]``
entry). Each record's value is one raw event (the JSON of an event); records are committed in
the consumer group only after the daemon has them on its bus (:class:`KafkaSource`). Several
daemons with the same ``group_id`` share the topic's partitions.

Any Kafka-protocol service works. Azure Event Hubs' Kafka endpoint (Standard tier or above; the
event hub is the topic, the Kafka consumer group is created on first use)::

    [[sources]]
    kind = "kafka"
    bootstrap_servers = "<namespace>.servicebus.windows.net:9093"
    topics = ["<event hub>"]
    group_id = "lakeferry-ingest"

    [sources.config]        # the same as config = { ... } on one line
    "security.protocol" = "SASL_SSL"
    "sasl.mechanism" = "PLAIN"
    "sasl.username" = "$ConnectionString"
    "sasl.password" = "${EVENTHUB_CONNECTION_STRING}"

``sasl.username`` is the literal string ``$ConnectionString``; the password is the namespace's
connection string (``Endpoint=sb://<namespace>.servicebus.windows.net/;SharedAccessKeyName=...;
SharedAccessKey=...``), taken from the environment, never written into the file.
"""

from __future__ import annotations

from collections.abc import Callable

from lakeferry.api import PluginContext, hookimpl
from lakeferry_kafka_source.settings import KafkaSourceSettings
from lakeferry_kafka_source.source import KafkaSource

__all__ = ["KafkaSource", "KafkaSourceSettings", "lakeferry_register_sources"]


def _build(settings: KafkaSourceSettings, context: PluginContext) -> KafkaSource:
    return KafkaSource(settings, context)


@hookimpl
def lakeferry_register_sources(register: Callable[..., None]) -> None:
    register("kafka", _build, KafkaSourceSettings)
