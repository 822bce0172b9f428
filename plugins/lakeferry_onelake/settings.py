"""The ``[sink]`` settings of the ``onelake`` kind (OneLake, or any ADLS Gen2 account).

Secrets never need to be in the TOML: the settings name the *environment variables* that hold
them, or a systemd credential file. ``secret_in_config`` exists for the rare site that insists,
and is discouraged (a config file is read by more people and tools than a credential).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from lakeferry.api import (
    ByteSize,
    Duration,
    Event,
    PermanentError,
    render_destination,
    safe_relative_path,
)

MiB = 2**20
MAX_APPEND = 4000 * MiB
"""The service's limit for one append request."""

Api = Literal["blob", "dfs"]
CredentialKind = Literal["default", "service_principal", "sas", "account_key", "managed_identity"]
SECRET_KINDS = frozenset({"service_principal", "sas", "account_key"})
"""Credential kinds that read a secret (client secret, SAS token, account key)."""

PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
"""``%41``-like text: the SDK's rename unquotes its source path, so a directory must not hold it."""


class OneLakeSinkSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[sink]`` with ``kind = "onelake"``."""

    account_url: str = "https://onelake.dfs.fabric.microsoft.com"
    """The DFS endpoint: OneLake's, or ``https://<account>.dfs.core.windows.net`` for ADLS Gen2."""
    filesystem: str
    """OneLake: the workspace (name or GUID). ADLS Gen2: the container (filesystem)."""
    base_path: str = ""
    """Folder inside the filesystem that destinations are relative to. OneLake:
    ``<lakehouse>.Lakehouse/Files/<folder>`` or ``<lakehouse-guid>/Files/<folder>``."""
    path_template: str = "{date:%Y/%m/%d}/{event.id}/{filename}"
    """Destination for events without a ``path``; fields as for the ``localfs`` sink."""
    credential: CredentialKind = "default"
    """``default`` (DefaultAzureCredential: managed identity on Azure VMs, the Azure CLI login on
    a workstation, ``AZURE_*`` variables), ``managed_identity``, ``service_principal``,
    ``sas``, ``account_key`` (the last two: ADLS Gen2 only)."""
    tenant_id_env: str = "AZURE_TENANT_ID"
    """Environment variable with the tenant id (``service_principal``)."""
    client_id_env: str = "AZURE_CLIENT_ID"
    """Environment variable with the client id (``service_principal``; ``managed_identity``: a
    user-assigned identity's client id, when set)."""
    client_secret_env: str = "AZURE_CLIENT_SECRET"
    """Environment variable with the client secret (``service_principal``)."""
    sas_token_env: str = "LAKEFERRY_ONELAKE_SAS"
    """Environment variable with the SAS token (``sas``)."""
    account_key_env: str = "LAKEFERRY_ONELAKE_ACCOUNT_KEY"
    """Environment variable with the storage account key (``account_key``)."""
    credential_file: str = ""
    """Read the secret from a file instead of the environment: a name looked up in
    ``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``), or an absolute path."""
    secret_in_config: str = ""
    """The secret itself. Discouraged: use the environment or ``credential_file``."""
    api: Api = "blob"
    """How a file is landed. ``blob``: through the Blob endpoint that OneLake and ADLS Gen2 also
    serve (``.dfs.`` in ``account_url`` becomes ``.blob.``, as the SDK does): one Put Blob for a
    file of at most ``chunk_size`` bytes, Put Block per ``chunk_size`` + one Put Block List for a
    larger one; each is atomic by itself, with no temporary path (2 requests per small file, with
    the idempotency check). ``dfs``: create a temporary path, append, flush, rename it into place
    and read its properties back (6 requests per small file)."""
    chunk_size: ByteSize = ByteSize(8 * MiB)
    """Bytes per append (``dfs``) or block (``blob``) request, and the largest file sent in one
    Put Blob; each upload holds about this much in memory."""
    timeout: Duration = Duration(60)
    """Longest wait to connect, and between bytes of a response, per request."""
    max_single_request_retries: Annotated[int, Meta(ge=0, le=10)] = 1
    """Retries the SDK makes itself; kept small so that the upload stage's backoff and circuit
    breaker handle throttling and outages."""
    max_connections: Annotated[int, Meta(ge=1, le=256)] = 32
    """Worker threads (and pooled HTTP connections) the sink uses at once."""
    create_filesystem: bool = False
    """Create the filesystem if missing (ADLS Gen2 and the test emulator; not OneLake)."""

    def __post_init__(self) -> None:
        url = urlsplit(self.account_url)
        if url.scheme not in ("https", "http") or not url.netloc:
            raise ValueError(f"account_url {self.account_url!r} is not an http(s) URL")
        if url.query or url.fragment:
            raise ValueError(
                "account_url must not carry a query string (a SAS token belongs in the "
                "environment: credential = 'sas' and sas_token_env)"
            )
        if not self.filesystem.strip() or "/" in self.filesystem:
            raise ValueError(f"filesystem {self.filesystem!r} must be one non-empty name")
        check_base_path(self.base_path)
        sample = Event(id="sample-id", url="https://example.org/a/file.bin")
        try:
            render_destination(self.path_template, sample, dt.datetime.now(dt.UTC))
        except PermanentError as exc:
            raise ValueError(str(exc)) from None
        if not 0 < self.chunk_size <= MAX_APPEND:
            raise ValueError(f"chunk_size must be between 1 byte and {MAX_APPEND // MiB} MiB")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if self.credential_file and self.secret_in_config:
            raise ValueError("set credential_file or secret_in_config, not both")
        if (self.credential_file or self.secret_in_config) and self.credential not in SECRET_KINDS:
            raise ValueError(
                f"credential = {self.credential!r} reads no secret; credential_file and "
                "secret_in_config are for service_principal, sas and account_key"
            )

    def __repr__(self) -> str:
        # The default repr would show secret_in_config.
        fields = ", ".join(
            f"{name}={'<redacted>' if name == 'secret_in_config' and value else value!r}"
            for name, value in self.__rich_repr__()
        )
        return f"OneLakeSinkSettings({fields})"

    def __rich_repr__(self) -> Any:
        for name in self.__struct_fields__:
            value = getattr(self, name)
            yield name, ("<redacted>" if name == "secret_in_config" and value else value)


def check_base_path(base_path: str) -> str:
    """``base_path`` without trailing slashes; ValueError when absolute or unsafe."""
    if base_path.startswith("/") or base_path.startswith("\\"):
        raise ValueError(f"base_path {base_path!r} must be relative to the filesystem")
    stripped = base_path.rstrip("/")
    if not stripped:
        return ""
    try:
        normalised = safe_relative_path(stripped)
    except PermanentError as exc:
        raise ValueError(f"base_path: {exc}") from None
    if PERCENT_ESCAPE.search(normalised):
        raise ValueError(
            f"base_path {base_path!r} contains a %XX sequence, which the Azure SDK's rename "
            "would decode"
        )
    return normalised
