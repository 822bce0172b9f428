"""lakeferry built-in plugin ``eventhub``: an Azure Event Hub as an event source (AMQP).

Registers the source kind ``eventhub`` (settings :class:`EventHubSourceSettings`, a
``[[sources]]`` entry). Each event's body is one raw event (the JSON of an event). The source
receives from a consumer group through the SDK's ``EventHubConsumerClient`` with a
``BlobCheckpointStore``: every daemon configured with the same hub, consumer group and
checkpoint container shares the hub's partitions (the SDK's load balancing), and a partition's
checkpoint is written only after its events are on the daemon's bus (:class:`EventHubSource`).
Unlike the ``kafka`` source on the Event Hubs Kafka endpoint, this works on every tier,
Basic included.

On Azure you need:

- the Event Hubs namespace (``<namespace>.servicebus.windows.net``), the event hub, and a
  consumer group for lakeferry (create one, e.g. ``lakeferry``, rather than sharing
  ``$Default`` with other readers: each reader of a group competes for its partitions);
- a storage account and a blob container for checkpoints and partition ownership (one
  container per consumer group is simplest; the blob names carry namespace, hub and group);
- an identity for the daemon: a managed identity or workload identity (``credential =
  "default"``, DefaultAzureCredential) or a service principal (``credential =
  "service_principal"``, its tenant id, client id and secret in the environment), with the
  roles **Azure Event Hubs Data Receiver** on the event hub (or namespace) and **Storage Blob
  Data Contributor** on the container (or account). With ``create_checkpoint_container = true``
  it also needs the right to create containers. A connection string (a shared access policy
  with *Listen*) also works: name its environment variable in ``connection_string_env``; the
  storage account's connection string likewise goes in ``checkpoint_connection_string_env``.

For example, with a managed identity::

    [[sources]]
    kind = "eventhub"
    fully_qualified_namespace = "${EVENTHUB_NAMESPACE}"    # <namespace>.servicebus.windows.net
    eventhub_name = "downloads"
    consumer_group = "lakeferry"
    checkpoint_blob_url = "https://<account>.blob.core.windows.net"
    checkpoint_container = "lakeferry-checkpoints"

or with connection strings from the environment (secrets never go into the file)::

    [[sources]]
    kind = "eventhub"
    eventhub_name = "downloads"
    consumer_group = "lakeferry"
    connection_string_env = "EVENTHUB_CONNECTION_STRING"
    checkpoint_connection_string_env = "CHECKPOINT_STORAGE_CONNECTION_STRING"
    checkpoint_container = "lakeferry-checkpoints"

Several ingesters (one per cell) use the same ``consumer_group`` and ``checkpoint_container``;
``load_balancing_interval`` (10 s) sets how fast they rebalance, and
``partition_ownership_expiration_interval`` (six times that) how long the partitions of a crashed
instance wait before another takes them over.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lakeferry.api import RegisterSource, hookimpl, lazy_exports, lazy_factory
from lakeferry_eventhub.settings import EventHubSourceSettings

if TYPE_CHECKING:
    from lakeferry_eventhub.source import EventHubSource

__all__ = ["EventHubSource", "EventHubSourceSettings", "lakeferry_register_sources"]


# Imported on first use, not with the plugin: azure-eventhub costs ~39 MiB.
__getattr__ = lazy_exports(__name__, {"EventHubSource": "source"})


@hookimpl
def lakeferry_register_sources(register: RegisterSource) -> None:
    register(
        "eventhub", lazy_factory("lakeferry_eventhub.source:EventHubSource"), EventHubSourceSettings
    )
