"""Where the ``onelake`` sink's credential comes from, and the SDK object built from it.

A missing environment variable or credential file is a :class:`ConfigError` naming the setting
and the variable, raised when the sink is built (at start and on reload), never on the first
upload. Secrets are read once and kept only inside the credential object; nothing here logs.

Token credentials (``default``, ``managed_identity``, ``service_principal``) need an https
``account_url`` (the SDK refuses bearer tokens over http); ``sas`` and ``account_key`` work on
ADLS Gen2 (and the test emulator), not on OneLake, which accepts Microsoft Entra tokens.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from azure.core.credentials import AzureNamedKeyCredential, TokenCredential
from azure.identity import (
    ClientSecretCredential,
    DefaultAzureCredential,
    ManagedIdentityCredential,
)

from lakeferry.api import ConfigError
from lakeferry_onelake.settings import OneLakeSinkSettings

Credential = str | AzureNamedKeyCredential | TokenCredential
"""What the SDK's ``credential=`` takes: a SAS token, an account key, or a token credential."""

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def build_credential(
    settings: OneLakeSinkSettings, environ: Mapping[str, str] | None = None
) -> Credential:
    """The credential ``settings`` ask for, with its secrets read now."""
    env = os.environ if environ is None else environ
    kind = settings.credential
    if kind == "default":
        return DefaultAzureCredential()
    if kind == "managed_identity":
        client_id = env.get(settings.client_id_env) or None
        return ManagedIdentityCredential(client_id=client_id)
    if kind == "service_principal":
        tenant_id = _from_env(settings, env, "tenant_id_env")
        client_id = _from_env(settings, env, "client_id_env")
        secret = read_secret(settings, env, "client_secret_env")
        return ClientSecretCredential(tenant_id, client_id, secret)
    if kind == "sas":
        token = read_secret(settings, env, "sas_token_env").lstrip("?")
        if "sig=" not in token:
            raise ConfigError(
                _source_key(settings, "sas_token_env"),
                "the SAS token has no 'sig=' field (expected e.g. 'sv=...&sp=...&sig=...')",
            )
        return token
    key = read_secret(settings, env, "account_key_env")
    return AzureNamedKeyCredential(account_name(settings.account_url), key)


def account_name(account_url: str) -> str:
    """The storage account an URL names: ``<account>.dfs.core.windows.net`` or, on loopback,
    the first path segment (``http://127.0.0.1:10004/devstoreaccount1``)."""
    url = urlsplit(account_url)
    host = url.hostname or ""
    name = url.path.strip("/").split("/")[0] if host in _LOOPBACK else host.split(".")[0]
    if not name:
        raise ConfigError(
            "sink.account_url",
            f"cannot tell the storage account from {account_url!r} "
            "(credential = 'account_key' needs https://<account>.dfs.core.windows.net)",
        )
    return name


def read_secret(settings: OneLakeSinkSettings, env: Mapping[str, str], env_field: str) -> str:
    """The secret from ``credential_file``, else ``secret_in_config``, else the environment."""
    if settings.credential_file:
        return _read_credential_file(settings.credential_file, env)
    if settings.secret_in_config:
        return settings.secret_in_config
    return _from_env(settings, env, env_field)


def _from_env(settings: OneLakeSinkSettings, env: Mapping[str, str], field: str) -> str:
    name: str = getattr(settings, field)
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(
            f"sink.{field}",
            f"environment variable {name} is not set or empty "
            f"(credential = {settings.credential!r} reads it)",
        )
    return value


def _source_key(settings: OneLakeSinkSettings, env_field: str) -> str:
    if settings.credential_file:
        return "sink.credential_file"
    if settings.secret_in_config:
        return "sink.secret_in_config"
    return f"sink.{env_field}"


def _read_credential_file(name: str, env: Mapping[str, str]) -> str:
    if os.path.isabs(name):
        path = Path(name)
    else:
        if "/" in name or name in (".", ".."):
            raise ConfigError(
                "sink.credential_file",
                f"{name!r} must be a credential name (no '/') or an absolute path",
            )
        directory = env.get("CREDENTIALS_DIRECTORY", "")
        if not directory:
            raise ConfigError(
                "sink.credential_file",
                f"{name!r} is a systemd credential name but $CREDENTIALS_DIRECTORY is not set "
                "(use LoadCredential= in the unit, or give an absolute path)",
            )
        path = Path(directory) / name
    try:
        secret = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            "sink.credential_file", f"cannot read {str(path)!r}: {exc.strerror or exc}"
        ) from None
    if not secret:
        raise ConfigError("sink.credential_file", f"{str(path)!r} is empty")
    return secret
