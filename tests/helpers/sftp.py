"""A real OpenSSH server on loopback for the ``sftp`` plugin's tests (session fixture).

``/usr/sbin/sshd`` comes from Debian's ``openssh-server`` (``make system-deps`` installs it).
The server runs as the current user (root on CI; sshd refuses to run otherwise), on a free
port of 127.0.0.1, with a host key and one authorized client key generated for the session,
public-key authentication only and the in-process ``internal-sftp`` subsystem. Files to fetch
go under ``files``.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.markers import starts_processes
from helpers.tools import load_tool
from helpers.wait import wait_until

SSHD = Path("/usr/sbin/sshd")


@dataclass(frozen=True)
class SftpServer:
    host: str
    port: int
    user: str
    files: Path
    """A directory on the server; ``url(name)`` addresses files under it."""
    client_key: Path
    """The private key the server accepts."""
    other_key: Path
    """A private key the server does not accept."""
    known_hosts: Path
    """Lists the server's real host key."""
    wrong_known_hosts: Path
    """Lists another key for the server."""
    log: Path

    def url(self, name: str, *, user: str | None = None) -> str:
        return f"sftp://{user or self.user}@{self.host}:{self.port}{self.files / name}"

    def settings(self, **overrides: object) -> dict[str, object]:
        """``[downloaders.sftp]`` settings that reach this server."""
        return {
            "private_key_file": str(self.client_key),
            "known_hosts_file": str(self.known_hosts),
            "allow_networks": ["127.0.0.0/8"],
            **overrides,
        }


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "lakeferry-test", "-f", str(path)],
        check=True,
        capture_output=True,
    )


def _serves_ssh(port: int, proc: subprocess.Popen[bytes], log: Path) -> bool:
    """Whether sshd answers on ``port`` with its banner; raises if it exited."""
    if proc.poll() is not None:
        raise RuntimeError(f"sshd exited ({proc.returncode}):\n{log.read_text()}")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


@pytest.fixture(scope="session")
@starts_processes
def sftp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SftpServer]:
    if not SSHD.exists() or shutil.which("ssh-keygen") is None:
        raise RuntimeError(f"{SSHD} is missing: run `make system-deps` (openssh-server)")
    root = tmp_path_factory.mktemp("sshd")
    files = root / "files"
    files.mkdir()
    host_key, client_key, other_key, wrong_host = (
        root / "host_key",
        root / "client_key",
        root / "other_key",
        root / "wrong_host_key",
    )
    for key in (host_key, client_key, other_key, wrong_host):
        _keygen(key)
    authorized = root / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    port = load_tool("harness").free_port()
    name = f"[127.0.0.1]:{port}"
    known_hosts, wrong_known_hosts = root / "known_hosts", root / "wrong_known_hosts"
    for path, key in ((known_hosts, host_key), (wrong_known_hosts, wrong_host)):
        kind, blob = key.with_suffix(".pub").read_text().split()[:2]
        path.write_text(f"{name} {kind} {blob}\n")
    config = root / "sshd_config"
    config.write_text(
        f"Port {port}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {host_key}\n"
        f"PidFile {root / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {authorized}\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\n"
        "StrictModes no\n"
        "UsePAM no\n"
        "MaxStartups 100\n"
        "MaxSessions 100\n"
        "Subsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation directory
    log = root / "sshd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_until(
            lambda: _serves_ssh(port, proc, log),
            timeout=15,
            what=f"sshd to serve on port {port} (its log: {log})",
        )
        yield SftpServer(
            host="127.0.0.1",
            port=port,
            user=getpass.getuser(),
            files=files,
            client_key=client_key,
            other_key=other_key,
            known_hosts=known_hosts,
            wrong_known_hosts=wrong_known_hosts,
            log=log,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
