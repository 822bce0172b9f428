"""Azure credentials for the Delta tables: settings in, deltalake ``storage_options`` out.

deltalake talks to ADLS Gen2, OneLake and Azurite through the Rust ``object_store`` crate, whose
Azure client takes its credential from ``storage_options`` (and, for keys missing there, from
``AZURE_*`` environment variables). The ``credential`` setting maps onto it:

``default``
    Nothing is added: object_store's own chain applies. Complete credentials in the environment
    first (``AZURE_CLIENT_ID`` + ``AZURE_CLIENT_SECRET`` + ``AZURE_TENANT_ID``; workload
    identity with ``AZURE_FEDERATED_TOKEN_FILE``; ``AZURE_STORAGE_ACCOUNT_KEY`` ...), otherwise
    the VM's managed identity through IMDS (a user-assigned identity is picked by
    ``AZURE_CLIENT_ID``, or ``azure_msi_resource_id`` in ``storage_options``). object_store
    fetches the token and refreshes it before it expires, inside deltalake, so no token is ever
    handed over from Python. Chosen over azure-identity's ``DefaultAzureCredential`` plus a
    ``bearer_token`` because a static bearer token cannot be refreshed in an open ``DeltaTable``
    (it would mean reopening the table, replaying its log, about once an hour). What the chain
    lacks against ``DefaultAzureCredential`` are the developer logins: on a workstation put
    ``azure_use_azure_cli = "true"`` in ``storage_options``. (The ``onelake`` sink's ``default``
    is ``DefaultAzureCredential``, which tries the CLI login too.)
``managed_identity``
    The same chain, with ``azure_client_id`` from ``client_id_env`` when that variable is set
    (a user-assigned identity). object_store cannot be told to skip complete credentials in the
    environment: on a VM with ``AZURE_CLIENT_SECRET`` set, those win.
``service_principal``
    ``azure_tenant_id``, ``azure_client_id``, ``azure_client_secret`` (object_store's client
    credentials flow, refreshed by object_store).
``sas``
    ``azure_storage_sas_key`` (the token, with or without its leading ``?``; it must have a
    ``sig=`` field).
``account_key``
    ``azure_storage_account_key`` (not for OneLake).
``emulator``
    ``azure_storage_use_emulator = true``: Azurite with its well-known account. object_store
    reads the endpoint from the ``AZURITE_BLOB_STORAGE_URL`` environment variable, *without* the
    account path (``http://127.0.0.1:10000``; ``.../devstoreaccount1`` fails on every request),
    default ``http://127.0.0.1:10000``. The only mode that works on Azurite: with an account key
    against Azurite's URL the third commit fails (Azurite ignores List Blobs ``startFrom``).
``none``
    ``azure_skip_signature = true``: anonymous requests (public containers, test proxies).

OneLake URIs (``*.fabric.microsoft.com``) also get ``azure_use_fabric_endpoint = true``;
``account_name`` (for ``az://<container>/<path>`` URIs) becomes ``azure_storage_account_name``.
Secrets come from the environment variables named in the settings or from ``credential_file``
(a systemd credential name or an absolute path), and are returned apart so that error messages
can be scrubbed of them.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from lakeferry.api import ConfigError
from lakeferry_delta.settings import TableAccess

AZURE_SCHEMES = frozenset({"abfss", "abfs", "az", "adl", "azure"})
_AZURE_HTTPS_HOSTS = (".dfs.core.windows.net", ".blob.core.windows.net", ".fabric.microsoft.com")
_ONELAKE_HOST = ".fabric.microsoft.com"
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_SECRET_KEY_WORDS = ("key", "secret", "token", "sas", "password", "signature")


class StorageOptions(NamedTuple):
    """What deltalake gets for one table, and the secret values among them."""

    options: dict[str, str]
    secrets: tuple[str, ...]


def is_azure_uri(uri: str) -> bool:
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in AZURE_SCHEMES:
        return True
    host = (parts.hostname or "").lower()
    return scheme == "https" and host.endswith(_AZURE_HTTPS_HOSTS)


def is_onelake_uri(uri: str) -> bool:
    return is_azure_uri(uri) and (urlsplit(uri).hostname or "").lower().endswith(_ONELAKE_HOST)


def display_uri(uri: str) -> str:
    """``uri`` for logs: the filesystem (``abfss://<fs>@``) kept, password and query dropped."""
    parts = urlsplit(uri)
    if not parts.scheme or len(parts.scheme) == 1:  # a local path (or C:\ on Windows)
        return uri
    user = f"{parts.username}@" if parts.username else ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    query = "?<redacted>" if parts.query else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}{query}"


def storage_options_for(
    settings: TableAccess,
    uri: str,
    *,
    setting: str,
    logger: logging.Logger,
    environ: Mapping[str, str] | None = None,
) -> StorageOptions:
    """The storage options of the table at ``uri`` (``setting`` names its key for errors).

    Raises :class:`ConfigError` naming the setting and the environment variable or credential
    file when a secret cannot be read.
    """
    env = os.environ if environ is None else environ
    explicit = dict(settings.storage_options)
    explicit_secrets = tuple(
        value
        for key, value in explicit.items()
        if value and any(word in key.lower() for word in _SECRET_KEY_WORDS)
    )
    if not is_azure_uri(uri):
        return StorageOptions(explicit, explicit_secrets)

    section = setting.rsplit(".", 1)[0]
    onelake = is_onelake_uri(uri)
    if onelake:
        _check_onelake_uri(uri, setting, logger)
    kind = settings.credential
    options: dict[str, str] = {}
    secrets: list[str] = []
    if kind == "managed_identity":
        client_id = env.get(settings.client_id_env, "").strip()
        if client_id:
            options["azure_client_id"] = client_id
    elif kind == "service_principal":
        options["azure_tenant_id"] = _env(env, settings.tenant_id_env, f"{section}.tenant_id_env")
        options["azure_client_id"] = _env(env, settings.client_id_env, f"{section}.client_id_env")
        options["azure_client_secret"] = _secret(env, settings, section, "client_secret_env")
        secrets.append(options["azure_client_secret"])
    elif kind == "sas":
        token = _secret(env, settings, section, "sas_token_env").removeprefix("?")
        if "sig=" not in token:
            raise ConfigError(
                _secret_key(settings, section, "sas_token_env"),
                "the SAS token has no 'sig=' field (expected e.g. 'sv=...&sp=...&sig=...')",
            )
        options["azure_storage_sas_key"] = token
        secrets.append(token)
    elif kind == "account_key":
        if onelake:
            raise ConfigError(
                f"{section}.credential", "OneLake takes no account keys (use default or sas)"
            )
        options["azure_storage_account_key"] = _secret(env, settings, section, "account_key_env")
        secrets.append(options["azure_storage_account_key"])
        if settings.account_name is None and _account_of(uri) is None:
            raise ConfigError(
                f"{section}.account_name",
                f"needed with credential = account_key for {display_uri(uri)}",
            )
    elif kind == "emulator":
        if onelake:
            raise ConfigError(f"{section}.credential", "there is no emulator for OneLake")
        _check_emulator_url(env, section)
        options["azure_storage_use_emulator"] = "true"
    elif kind == "none":
        options["azure_skip_signature"] = "true"
    if settings.account_name is not None:
        options["azure_storage_account_name"] = settings.account_name
    if onelake:
        options["azure_use_fabric_endpoint"] = "true"
    options.update(explicit)
    return StorageOptions(options, (*secrets, *explicit_secrets))


# -- secrets -----------------------------------------------------------------------------------


def _secret(env: Mapping[str, str], settings: TableAccess, section: str, env_field: str) -> str:
    """The kind's one secret: from ``credential_file`` when set, else from the environment."""
    if settings.credential_file:
        return _credential_file(env, settings.credential_file, f"{section}.credential_file")
    name: str = getattr(settings, env_field)
    return _env(env, name, f"{section}.{env_field}")


def _secret_key(settings: TableAccess, section: str, env_field: str) -> str:
    return f"{section}.credential_file" if settings.credential_file else f"{section}.{env_field}"


def _env(env: Mapping[str, str], name: str, key: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(key, f"environment variable {name} is not set or empty")
    return value


def _credential_file(env: Mapping[str, str], name: str, key: str) -> str:
    """A systemd credential (``LoadCredential=<name>:...``), or the file at an absolute path."""
    if os.path.isabs(name):
        path = Path(name)
    else:
        if "/" in name or name in (".", ".."):
            raise ConfigError(
                key, f"{name!r} must be a credential name (no '/') or an absolute path"
            )
        directory = env.get("CREDENTIALS_DIRECTORY", "")
        if not directory:
            raise ConfigError(
                key,
                f"{name!r} is a systemd credential name but $CREDENTIALS_DIRECTORY is not set "
                "(use LoadCredential= in the unit, or give an absolute path)",
            )
        path = Path(directory) / name
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(key, f"cannot read credential {path}: {exc.strerror or exc}") from None
    if not value:
        raise ConfigError(key, f"credential {path} is empty")
    return value


# -- URIs --------------------------------------------------------------------------------------


def _account_of(uri: str) -> str | None:
    host = (urlsplit(uri).hostname or "").lower()
    for suffix in (".dfs.core.windows.net", ".blob.core.windows.net"):
        if host.endswith(suffix):
            return host.removesuffix(suffix)
    return None


def _check_onelake_uri(uri: str, setting: str, logger: logging.Logger) -> None:
    parts = urlsplit(uri)
    segments = [s for s in parts.path.split("/") if s]
    # abfss://<workspace>@onelake.../<item>/... or https://onelake.../<workspace>/<item>/...
    workspace = segments.pop(0) if parts.scheme.lower() == "https" and segments else None
    if not (workspace or parts.username):
        raise ConfigError(
            setting,
            "a OneLake URI names its workspace: abfss://<workspace>@onelake.dfs.fabric."
            "microsoft.com/<lakehouse>.Lakehouse/Tables/<table>",
        )
    item_ok = bool(segments) and (segments[0].endswith(".Lakehouse") or _GUID.match(segments[0]))
    if not (item_ok and len(segments) >= 3 and segments[1] == "Tables"):
        logger.warning(
            "%s is not <lakehouse>.Lakehouse/Tables/<table> (or <lakehouse GUID>/Tables/<table>):"
            " the table works but does not show up among the lakehouse's tables",
            display_uri(uri),
        )


def _check_emulator_url(env: Mapping[str, str], section: str) -> None:
    url = env.get("AZURITE_BLOB_STORAGE_URL", "")
    if url and urlsplit(url).path.strip("/"):
        raise ConfigError(
            f"{section}.credential",
            f"AZURITE_BLOB_STORAGE_URL must be Azurite's base URL without the account path "
            f"(like http://127.0.0.1:10000), not {url}",
        )


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` without the given secret values and without URL query strings (SAS tokens)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return re.sub(r"(://[^\s?#\"']*)\?[^\s#\"']*", r"\1?<redacted>", text)
