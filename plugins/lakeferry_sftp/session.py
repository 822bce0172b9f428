"""One SFTP session over a socket the SSRF guard already checked: blocking, for worker threads.

Everything here blocks (paramiko is a threaded, blocking library), so the downloader calls it
through ``trio.to_thread.run_sync``. The TCP connection is made by the downloader, to an
address :class:`lakeferry.api.NetGuard` allowed, and handed over as a connected socket:
paramiko never resolves or connects anything itself, so DNS rebinding cannot lead it
elsewhere.

Host keys: the server's key must be listed for the host in ``known_hosts`` (OpenSSH format,
``[host]:port`` for ports other than 22; hashed names work). A host that is not listed is
refused (``host_key_unknown``) and a host listed with another key is refused
(``host_key_mismatch``): there is no trust on first use, the equivalent of OpenSSH's
``StrictHostKeyChecking yes`` (paramiko's ``RejectPolicy``).

Resource handling: :class:`SftpSession` owns the transport (and its paramiko thread) and the
SFTP channel; :meth:`SftpSession.close` releases both and is safe to call twice.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import paramiko

from lakeferry.api import PermanentError

HOST_KEY_UNKNOWN = "host_key_unknown"
HOST_KEY_MISMATCH = "host_key_mismatch"
AUTH_FAILED = "auth_failed"


def known_hosts_name(host: str, port: int) -> str:
    """How OpenSSH names a host in ``known_hosts``: ``host``, or ``[host]:port`` off port 22."""
    return host if port == 22 else f"[{host}]:{port}"


def load_known_hosts(path: str) -> paramiko.HostKeys:
    """The host keys in ``path``; none when the file does not exist (every host is refused).

    An unreadable or unparseable file is PermanentError(``host_key_unknown``): no host can be
    checked, so none is trusted.
    """
    keys = paramiko.HostKeys()
    expanded = os.path.expanduser(path)
    if not expanded or not Path(expanded).exists():
        return keys
    try:
        keys.load(expanded)
    except (OSError, paramiko.SSHException, ValueError) as exc:
        raise PermanentError(
            HOST_KEY_UNKNOWN, f"cannot read known_hosts_file {expanded}: {exc}"
        ) from None
    return keys


class SftpSession:
    """An authenticated SFTP session. Build with :meth:`open`; every method blocks."""

    def __init__(self, transport: paramiko.Transport, client: paramiko.SFTPClient) -> None:
        self.transport = transport
        self.client = client

    @classmethod
    def open(
        cls,
        sock: socket.socket,
        *,
        host: str,
        port: int,
        username: str,
        key: paramiko.PKey | None,
        known_hosts: paramiko.HostKeys,
        connect_timeout: float,
        read_timeout: float,
    ) -> SftpSession:
        """Handshake, check the host key, authenticate with ``key``, open the SFTP channel.

        Takes ownership of ``sock`` (closed on failure). Raises PermanentError for a host key
        that is unknown or different (before authenticating: no credential goes to an
        impostor) and for refused authentication; paramiko's own exceptions otherwise.
        """
        try:
            transport = paramiko.Transport(sock)
        except BaseException:
            sock.close()
            raise
        try:
            transport.banner_timeout = connect_timeout
            transport.handshake_timeout = connect_timeout
            transport.auth_timeout = connect_timeout
            name = known_hosts_name(host, port)
            listed = known_hosts.lookup(name)
            if listed:
                # Ask for a key type we can check: the server may hold several.
                options = transport.get_security_options()
                wanted = _algorithms_for(list(listed.keys()))
                options.key_types = [t for t in wanted if t in options.key_types] + [
                    t for t in options.key_types if t not in wanted
                ]
            transport.start_client(timeout=connect_timeout)
            offered = transport.get_remote_server_key()
            if not listed:
                raise PermanentError(
                    HOST_KEY_UNKNOWN,
                    f"{name} is not in known_hosts (its {offered.get_name()} key is "
                    f"SHA256:{offered.fingerprint.split(':', 1)[-1]})",
                )
            expected = listed.get(offered.get_name())
            if expected is None or expected != offered:
                raise PermanentError(
                    HOST_KEY_MISMATCH,
                    f"{name} offered a {offered.get_name()} host key that known_hosts does not "
                    "list for it: the server was replaced, or someone is in the middle",
                )
            if key is None:
                raise PermanentError(
                    AUTH_FAILED,
                    "no private key configured ([downloaders.sftp] private_key_file)",
                )
            try:
                transport.auth_publickey(username, key)
            except paramiko.AuthenticationException as exc:
                # The user name is not shown: it may come from the URL's userinfo.
                raise PermanentError(
                    AUTH_FAILED, f"{name}: public-key authentication refused ({exc})"
                ) from None
            client = paramiko.SFTPClient.from_transport(transport)
            if client is None:
                raise paramiko.SSHException("the server refused the sftp subsystem")
            channel = client.get_channel()
            if channel is not None:
                channel.settimeout(read_timeout)
            return cls(transport, client)
        except BaseException:
            transport.close()
            sock.close()
            raise

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            self.transport.close()


def _algorithms_for(key_types: list[str]) -> list[str]:
    """Host key algorithms that yield keys of these types (RSA keys sign with SHA-2 too)."""
    out: list[str] = []
    for key_type in key_types:
        if key_type == "ssh-rsa":
            out += ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]
        else:
            out.append(key_type)
    return out
