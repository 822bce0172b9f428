"""The ``[downloaders.sftp]`` settings: apart from the downloader, so that registering the
plugin does not import paramiko."""

from __future__ import annotations

from typing import Annotated

import msgspec

from lakeferry.api import ByteSize, Duration, LocalPath

Positive = Annotated[int, msgspec.Meta(ge=1)]


class SftpDownloaderSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[downloaders.sftp]``."""

    username: str = ""
    """Login name when the URL names none (``sftp://host/path``)."""
    private_key_file: str = ""
    """The client's private key (OpenSSH or PEM; Ed25519, ECDSA or RSA): an absolute path, or
    a bare name looked up in ``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``). Read
    when the downloader is built; empty: every download fails as ``auth_failed``."""
    private_key_passphrase_env: str = ""
    """Environment variable holding the key's passphrase, for an encrypted key."""
    known_hosts_file: LocalPath = "~/.ssh/known_hosts"
    """Host keys (OpenSSH format) servers must present; a host not listed is refused. Read at
    every connection, so entries added later apply at once."""
    connect_timeout: Duration = Duration(10)
    """Resolving, connecting, the SSH handshake and authentication, each."""
    read_timeout: Duration = Duration(60)
    """Longest wait for one SFTP reply (a chunk of the file, a stat)."""
    total_timeout: Duration = Duration(3600)
    """The whole download."""
    max_size: ByteSize = ByteSize(20 * 2**30)
    """Larger files are refused (``too_large``) before reading."""
    chunk_size: ByteSize = ByteSize(2**20)
    """Bytes read (as pipelined SFTP requests) and handed to the cache at a time."""
    max_connections: Positive = 8
    """SSH connections open at once (per daemon); further downloads wait for one."""
    allow_networks: list[str] = []
    """CIDR networks to connect to although not public (``["10.1.0.0/16"]``)."""
    allow_hosts: list[str] = []
    """Hosts to connect to although not public: ``name``, ``name:port``, ``*.domain``, an IP
    literal or ``[IPv6]:port`` (as for the ``http`` downloader)."""
