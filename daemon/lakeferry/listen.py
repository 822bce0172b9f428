"""The daemon's listen addresses (``metrics.listen``, ``live.listen``, ``console.listen``): parsed
and bound once.

A listen address that cannot be bound is not a crash: the process exits 2 with one line that
names the key and the address (``metrics.listen 127.0.0.1:9464 is already in use``), and the
systemd units do not restart on exit 2, so a taken port never becomes a restart loop.

Port 0 takes any free port; the ``ready`` log line names the addresses bound (:func:`address`),
which is how the test harness runs daemons side by side without picking ports itself.
"""

from __future__ import annotations

import errno
import socket

import trio

from lakeferry.errors import StartRefused


def split(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) into a host to bind (default 127.0.0.1) and a port."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def refusal(key: str, listen: str, exc: OSError) -> StartRefused:
    """The one-line refusal for a listen address that could not be bound."""
    if exc.errno == errno.EADDRINUSE:
        return StartRefused(
            f"{key} {listen} is already in use; stop what listens there or set another "
            f'{key} ("" turns it off)'
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return StartRefused(f"{key} {listen}: no such address on this machine")
    if exc.errno == errno.EACCES:
        return StartRefused(f"{key} {listen}: permission denied (ports below 1024 need root)")
    return StartRefused(f"{key} {listen}: cannot listen ({exc.strerror or exc})")


async def open_listeners(key: str, listen: str) -> list[trio.SocketListener]:
    """Bind ``listen`` now (an empty address: nothing); :class:`StartRefused` when it fails."""
    if not listen:
        return []
    host, port = split(listen)
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise refusal(key, listen, exc) from None


def address(sock: socket.socket | trio.socket.SocketType) -> str:
    """The ``host:port`` (``[v6]:port``) ``sock`` is bound to."""
    host, port, *_ = sock.getsockname()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
