"""The ``[inventory]`` settings of the ``delta`` kind."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from lakeferry.api import Duration, LocalPathOrUri

Credential = Literal[
    "default", "managed_identity", "service_principal", "sas", "account_key", "emulator", "none"
]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class TableAccess(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How to reach Delta tables on Azure (or any store deltalake knows): the credential
    fields shared by the ``delta`` inventory and the ``delta`` source (see
    :class:`DeltaSettings` for what each means)."""

    storage_options: dict[str, str] = {}
    credential: Credential = "default"
    account_name: str | None = None
    tenant_id_env: str = "AZURE_TENANT_ID"
    client_id_env: str = "AZURE_CLIENT_ID"
    client_secret_env: str = "AZURE_CLIENT_SECRET"
    sas_token_env: str = "LAKEFERRY_DELTA_SAS"
    account_key_env: str = "LAKEFERRY_DELTA_ACCOUNT_KEY"
    credential_file: str = ""


class DeltaSettings(TableAccess, kw_only=True, forbid_unknown_fields=True):
    """Where the two Delta tables live, how to reach them, and how they are kept tidy.

    ``inventory_uri`` and ``events_uri`` are a local path (used as given, so prefer absolute
    paths) or an Azure URI: ``abfss://<filesystem>@<account>.dfs.core.windows.net/<path>`` (ADLS
    Gen2) or ``abfss://<workspace>@onelake.dfs.fabric.microsoft.com/<lakehouse>.Lakehouse/Tables/
    <table>`` (OneLake; workspace and lakehouse by name or GUID). Other URIs deltalake accepts
    (``s3://`` ...) work with ``storage_options`` alone.

    Azure credentials (ignored for local paths; see :mod:`lakeferry_delta.credentials`), named
    as for the ``onelake`` sink: ``credential`` picks the kind; secrets are not written in the
    config, only the *names* of the environment variables (``*_env``) that hold them, or
    ``credential_file``: a systemd credential name (from ``$CREDENTIALS_DIRECTORY``) or an
    absolute path holding the kind's one secret (client secret, SAS token or account key),
    which wins over the environment. ``storage_options`` go to deltalake as given, after (and
    over) what ``credential`` produced; never logged.

    ``partition_by_date`` only matters when a table is *created*: it adds a ``committed_date``
    (inventory) or ``received_date`` (events) column, the UTC date of the row, and partitions
    by it. An existing table keeps the layout it was created with.

    Maintenance (``maintain()``, see :mod:`lakeferry_delta.maintenance`): a duration or count of
    0 turns that step off.
    """

    inventory_uri: LocalPathOrUri
    events_uri: LocalPathOrUri
    partition_by_date: bool = False

    compact_every: Duration = Duration(3600)
    compact_min_files: NonNegative = 50
    compact_max_files: NonNegative = 100
    checkpoint_every_commits: NonNegative = 100
    vacuum_every: Duration = Duration(86400)
    vacuum_retention: Duration = Duration(168 * 3600)
    vacuum_enforce_retention: bool = True
    log_retention: Duration = Duration(900)
