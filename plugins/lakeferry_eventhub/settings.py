"""The ``[[sources]]`` settings of the ``eventhub`` kind, and the secrets they name."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from lakeferry.api import ConfigError, Duration

Credential = Literal["connection_string", "default", "service_principal"]


class EventHubSourceSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An event hub's consumer group, with a blob container for checkpoints and ownership."""

    eventhub_name: str
    """The event hub (the entity inside the namespace)."""
    fully_qualified_namespace: str = ""
    """``<namespace>.servicebus.windows.net``; required unless a connection string is used."""
    consumer_group: str = "$Default"
    """Every daemon of a deployment uses the same group: they share the hub's partitions."""
    connection_string_env: str = ""
    """Name of the environment variable holding the namespace's (or hub's) connection string."""
    credential: Credential | None = None
    """``connection_string``, ``default`` (DefaultAzureCredential: managed identity, workload
    identity, Azure CLI...) or ``service_principal``; unset: ``connection_string`` when
    ``connection_string_env`` is set, else ``default``."""
    tenant_id_env: str = "AZURE_TENANT_ID"
    client_id_env: str = "AZURE_CLIENT_ID"
    client_secret_env: str = "AZURE_CLIENT_SECRET"
    """Environment variables of the service principal (``credential = "service_principal"``)."""

    checkpoint_container: str
    """Blob container of the checkpoints and partition ownership (one per consumer group is
    usual; several hubs and groups may share one, blob names carry both)."""
    checkpoint_blob_url: str = ""
    """The storage account's blob endpoint, ``https://<account>.blob.core.windows.net``."""
    checkpoint_connection_string_env: str = ""
    """Name of the environment variable holding the storage account's connection string;
    unset: ``checkpoint_blob_url`` with the Event Hubs identity (or DefaultAzureCredential when
    Event Hubs uses a connection string)."""
    create_checkpoint_container: bool = False
    """Create the container when it is missing (needs the right to create containers)."""

    max_batch_size: Annotated[int, Meta(ge=1, le=10_000)] = 300
    """Most events of one partition handed to the intake per ``publish`` (and checkpointed)."""
    max_wait_time: Duration = Duration(0)
    """How long a partition's batch may wait to fill up to ``max_batch_size`` before it is
    published with fewer events; 0: publish what has arrived at once (a batch is then what
    arrived while the previous one was being published: large under load, one event when
    quiet)."""
    starting_position: Literal["earliest", "latest"] = "earliest"
    """Where a partition without a checkpoint starts."""
    load_balancing_interval: Duration = Duration(10.0)
    """How often each instance renews its partition ownership and rebalances."""
    partition_ownership_expiration_interval: Duration = Duration(0)
    """After this long without renewal an instance's partitions may be taken over (after a
    crash); 0: six load-balancing intervals (the SDK's default)."""

    def __post_init__(self) -> None:
        if not self.eventhub_name.strip():
            raise ValueError("eventhub_name must not be empty")
        if not self.consumer_group.strip():
            raise ValueError("consumer_group must not be empty")
        if not self.checkpoint_container.strip():
            raise ValueError("checkpoint_container must not be empty")
        credential = self.identity
        if credential == "connection_string" and not self.connection_string_env:
            raise ValueError('credential = "connection_string" needs connection_string_env')
        if credential != "connection_string" and not self.fully_qualified_namespace.strip():
            raise ValueError(f'credential = "{credential}" needs fully_qualified_namespace')
        if not (self.checkpoint_blob_url or self.checkpoint_connection_string_env):
            raise ValueError("set checkpoint_blob_url or checkpoint_connection_string_env")
        if self.load_balancing_interval <= 0:
            raise ValueError("load_balancing_interval must be positive")
        expiry = self.partition_ownership_expiration_interval
        if expiry and expiry <= self.load_balancing_interval:
            raise ValueError(
                "partition_ownership_expiration_interval must be longer than "
                "load_balancing_interval (or 0 for the default)"
            )

    @property
    def identity(self) -> Credential:
        """The credential in effect (``credential`` or what its absence means)."""
        if self.credential is not None:
            return self.credential
        return "connection_string" if self.connection_string_env else "default"

    @property
    def ownership_expiration(self) -> float:
        expiry = self.partition_ownership_expiration_interval
        return float(expiry) if expiry else 6 * float(self.load_balancing_interval)


@dataclass(frozen=True, repr=False)
class Secrets:
    """What the settings name in the environment, read once when the source is built."""

    eventhub_connection_string: str | None
    checkpoint_connection_string: str | None
    service_principal: tuple[str, str, str] | None
    """(tenant id, client id, client secret)."""

    @classmethod
    def from_environment(
        cls, settings: EventHubSourceSettings, env: Mapping[str, str] | None = None
    ) -> Secrets:
        """Raises ConfigError naming the setting whose variable is unset or empty."""
        environ = os.environ if env is None else env

        def read(key: str, name: str) -> str:
            value = environ.get(name, "")
            if not value.strip():
                raise ConfigError(key, f"environment variable {name} is not set")
            return value

        identity = settings.identity
        return cls(
            eventhub_connection_string=(
                read("connection_string_env", settings.connection_string_env)
                if identity == "connection_string"
                else None
            ),
            checkpoint_connection_string=(
                read("checkpoint_connection_string_env", settings.checkpoint_connection_string_env)
                if settings.checkpoint_connection_string_env
                else None
            ),
            service_principal=(
                (
                    read("tenant_id_env", settings.tenant_id_env),
                    read("client_id_env", settings.client_id_env),
                    read("client_secret_env", settings.client_secret_env),
                )
                if identity == "service_principal"
                else None
            ),
        )

    def __repr__(self) -> str:  # never show secrets in logs or tracebacks
        return "Secrets(...)"
