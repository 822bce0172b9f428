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

from typing import TYPE_CHECKING

from lakeferry.api import RegisterSource, hookimpl, lazy_exports, lazy_factory
from lakeferry_kafka_source.settings import KafkaSourceSettings

if TYPE_CHECKING:
    from lakeferry_kafka_source.source import KafkaSource

__all__ = ["KafkaSource", "KafkaSourceSettings", "lakeferry_register_sources"]

# Imported on first use, not with the plugin: a daemon that uses no Kafka source (on the
# embedded bus) never loads librdkafka.
__getattr__ = lazy_exports(__name__, {"KafkaSource": "source"})


@hookimpl
def lakeferry_register_sources(register: RegisterSource) -> None:
    register(
        "kafka", lazy_factory("lakeferry_kafka_source.source:KafkaSource"), KafkaSourceSettings
    )
