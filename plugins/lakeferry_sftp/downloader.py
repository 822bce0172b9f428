"""The ``sftp`` downloader: streams files named by ``sftp://`` URLs into the cache with paramiko.

URLs: ``sftp://[user@]host[:port]/absolute/path`` (``/~/path``: relative to the login
directory). The user is the URL's, else ``username`` from the settings; a password in the URL
is ignored (public-key authentication only: a secret does not belong in an event).

Resource handling: one SSH connection per download, at most ``max_connections`` at once
(servers limit sessions: OpenSSH's ``MaxStartups``). The TCP connection is made by
:meth:`lakeferry.api.NetGuard.connect_tcp` (resolved once, only to allowed addresses, peer
checked: the SSRF rules of every network plugin) and its socket handed to paramiko, which
never connects anything itself. paramiko blocks, so every call into it runs in a worker thread
(``trio.to_thread.run_sync``), at most one per connection. The file is read ``chunk_size``
bytes at a time (each chunk as pipelined 32 KiB SFTP reads) and each chunk is written to the
cache before the next is asked for: memory stays at one chunk per download.

Cancellation is honoured between chunks: a worker thread cannot be interrupted, so a
cancelled download returns once its current call does, which ``read_timeout`` bounds. The
session is closed (shielded) on every way out.

Resuming: the validator of a file is ``<mtime>:<size>`` from the server's ``stat``. Bytes kept
from an earlier attempt are continued from ``out.offset`` (SFTP reads at any offset) only when
the validator is unchanged; otherwise the file restarts from zero. SFTP reports mtime in whole
seconds, so a file rewritten with the same size within the same second is not noticed — the
event's ``sha256``, when given, still catches that.

Error handling, by what the retry machinery should do:

- permanent: no such file or a directory (``not_found``), permission denied
  (``permission_denied``), the host's key not in ``known_hosts`` (``host_key_unknown``) or
  different (``host_key_mismatch``), authentication refused or no key configured
  (``auth_failed``, see below), a size over ``max_size`` (``too_large``) or other than the
  event's (``size_mismatch``), a blocked address (``blocked``), an unusable URL or no user
  name (``malformed``);
- transient: refused, reset or dropped connections, DNS failures, SSH protocol errors and
  files that shrink while read (``connection``); ``connect_timeout``, ``read_timeout`` and
  ``total_timeout`` (``timeout``).

Authentication failures are permanent on purpose: the same key will be refused again, every
retry is a failed login that can get the daemon's address banned (fail2ban, ``MaxAuthTries``),
and a credential problem is fixed by an operator, who then replays the dead letters
(``lakeferry dlq replay --reason auth_failed``).

URLs in error messages are redacted (no userinfo, no query string).
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit

import paramiko
import trio

from lakeferry.api import (
    ConfigError,
    DownloadTask,
    DownloadWriter,
    NetGuard,
    PermanentError,
    PipelineError,
    PluginContext,
    Reason,
    TransientError,
    guard_from_settings,
    redact_url,
)
from lakeferry_sftp.session import SftpSession, load_known_hosts
from lakeferry_sftp.settings import SftpDownloaderSettings

T = TypeVar("T")

PERMISSION_DENIED = "permission_denied"


class SftpDownloader:
    """The ``sftp`` :class:`lakeferry.api.Downloader`."""

    supports_resume = True

    def __init__(self, settings: SftpDownloaderSettings, context: PluginContext) -> None:
        self._settings = settings
        self._log = context.logger
        self._guard = guard_from_settings(
            "downloaders.sftp", settings.allow_networks, settings.allow_hosts
        )
        if settings.chunk_size < 1:
            raise ConfigError("downloaders.sftp.chunk_size", "must be at least 1 byte")
        self._key = _load_key(settings)
        self._connections = trio.Semaphore(settings.max_connections)
        self._threads = trio.CapacityLimiter(settings.max_connections)

    @property
    def guard(self) -> NetGuard:
        """The SSRF guard every connection passes (tests swap its ``resolver``)."""
        return self._guard

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._threads)

    async def fetch(self, task: DownloadTask, out: DownloadWriter) -> None:
        url = task.event.url
        shown = redact_url(url)
        host, port, username, path = self._parse(url, shown)
        s = self._settings
        async with self._connections:
            with trio.move_on_after(s.total_timeout) as deadline:
                session = await self._open(host, port, username, shown)
                try:
                    await self._transfer(session, path, shown, task.event.size, out)
                except PipelineError:
                    raise
                except (OSError, EOFError, paramiko.SSHException) as exc:
                    raise _classify(exc, shown) from exc
                finally:
                    with trio.CancelScope(shield=True):
                        await self._call(session.close)
        if deadline.cancelled_caught:
            raise TransientError(
                Reason.TIMEOUT,
                f"{shown}: not complete within total_timeout {s.total_timeout!r} "
                f"({out.bytes_written} bytes received)",
            )

    def _parse(self, url: str, shown: str) -> tuple[str, int, str, str]:
        self._guard.check_url(url)  # literal hosts and ports, before any DNS
        try:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port or 22
        except ValueError as exc:
            raise PermanentError(Reason.MALFORMED, f"{shown}: not a valid URL") from exc
        if parts.scheme.lower() != "sftp":
            raise PermanentError(Reason.UNSUPPORTED_SCHEME, f"{shown}: not an sftp:// URL")
        if not host:
            raise PermanentError(Reason.MALFORMED, f"{shown}: no host")
        username = unquote(parts.username) if parts.username else self._settings.username
        if not username:
            raise PermanentError(
                Reason.MALFORMED, f"{shown}: no user name (in the URL or [downloaders.sftp])"
            )
        path = unquote(parts.path)
        if path.startswith("/~/"):
            path = path[3:]  # relative to the login directory
        if not path or path.endswith("/") or "\x00" in path:
            raise PermanentError(Reason.MALFORMED, f"{shown}: no file path")
        return host, port, username, path

    async def _open(self, host: str, port: int, username: str, shown: str) -> SftpSession:
        s = self._settings
        stream = await self._guard.connect_tcp(host, port, timeout=s.connect_timeout)
        # paramiko wants a blocking socket: take the checked, connected one out of trio.
        sock = socket.socket(fileno=stream.socket.detach())
        sock.setblocking(True)
        try:
            known_hosts = await self._call(load_known_hosts, s.known_hosts_file)
        except BaseException:
            sock.close()
            raise
        try:
            return await self._call(
                lambda: SftpSession.open(
                    sock,
                    host=host,
                    port=port,
                    username=username,
                    key=self._key,
                    known_hosts=known_hosts,
                    connect_timeout=s.connect_timeout,
                    read_timeout=s.read_timeout,
                )
            )
        except PipelineError:
            raise
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise _classify(exc, shown) from exc

    async def _transfer(
        self,
        session: SftpSession,
        path: str,
        shown: str,
        expected_size: int | None,
        out: DownloadWriter,
    ) -> None:
        s = self._settings
        attrs = await self._call(session.client.stat, path)
        mode = attrs.st_mode or 0
        if stat.S_ISDIR(mode):
            raise PermanentError(Reason.NOT_FOUND, f"{shown} is a directory, not a file")
        size = attrs.st_size or 0
        if size > s.max_size:
            raise PermanentError(
                Reason.TOO_LARGE, f"{shown}: {size} bytes exceed max_size {s.max_size}"
            )
        if expected_size is not None and size != expected_size:
            raise PermanentError(
                Reason.SIZE_MISMATCH,
                f"{shown}: the server has {size} bytes, the event says {expected_size}",
            )
        await out.expect_size(size)  # room for all of it, or too_large now
        validator = f"{attrs.st_mtime}:{size}"
        if out.offset > 0 and (out.validator != validator or out.offset > size):
            await out.restart()  # the file changed since the kept bytes were read
        if out.bytes_written == 0:
            out.set_validator(validator)
        handle = await self._call(session.client.open, path, "rb")
        try:
            position = out.bytes_written
            while position < size:
                want = min(s.chunk_size, size - position)
                chunk = await self._call(_read_at, handle, position, want)
                if len(chunk) < want:
                    raise TransientError(
                        Reason.CONNECTION,
                        f"{shown}: the file ended after {position + len(chunk)} of {size} bytes",
                    )
                await out.write(chunk)
                position += len(chunk)
        finally:
            with trio.CancelScope(shield=True):
                await self._call(handle.close)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def _read_at(handle: paramiko.SFTPFile, position: int, length: int) -> bytes:
    """``length`` bytes from ``position`` as pipelined requests (fewer at the end of the file)."""
    return b"".join(handle.readv([(position, length)]))


def _classify(exc: BaseException, shown: str) -> PipelineError:
    """The error a paramiko or socket exception means for a download."""
    detail = str(exc) or type(exc).__name__
    text = f"{shown}: {detail}"
    if isinstance(exc, FileNotFoundError):
        return PermanentError(Reason.NOT_FOUND, f"{shown}: no such file")
    if isinstance(exc, PermissionError):
        return PermanentError(PERMISSION_DENIED, f"{shown}: permission denied")
    if isinstance(exc, TimeoutError):
        return TransientError(Reason.TIMEOUT, text)
    return TransientError(Reason.CONNECTION, text)


def _key_path(name: str) -> Path:
    expanded = os.path.expanduser(name)
    if os.path.isabs(expanded):
        return Path(expanded)
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials and os.sep not in name:
        return Path(credentials) / name
    raise ConfigError(
        "downloaders.sftp.private_key_file",
        f"{name!r}: give an absolute path, or a name in $CREDENTIALS_DIRECTORY (systemd)",
    )


def _load_key(settings: SftpDownloaderSettings) -> paramiko.PKey | None:
    if not settings.private_key_file:
        return None
    key = "downloaders.sftp.private_key_file"
    passphrase: str | None = None
    if settings.private_key_passphrase_env:
        passphrase = os.environ.get(settings.private_key_passphrase_env)
        if passphrase is None:
            raise ConfigError(
                "downloaders.sftp.private_key_passphrase_env",
                f"environment variable {settings.private_key_passphrase_env} is not set",
            )
    path = _key_path(settings.private_key_file)
    try:
        return paramiko.PKey.from_path(path, passphrase)
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None
    except paramiko.PasswordRequiredException:
        raise ConfigError(key, f"{path} is encrypted: set private_key_passphrase_env") from None
    except (paramiko.SSHException, ValueError) as exc:
        raise ConfigError(key, f"{path} is not a usable private key: {exc}") from None
