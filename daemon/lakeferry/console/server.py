"""Serve the console with hypercorn's trio worker, on sockets bound before the start.

The supervisor binds the console's address with the other listen addresses (a taken port
refuses the start with one line, :mod:`lakeferry.listen`); hypercorn serves on those sockets in
the supervisor's nursery, in the daemon's own trio loop, until the nursery is cancelled.
"""

from __future__ import annotations

import logging
import socket

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app
from starlette.applications import Starlette

from lakeferry.listen import address, refusal, split
from lakeferry.logs import get_logger

log = get_logger("console")

KEY = "console.listen"


def bind(listen: str) -> socket.socket | None:
    """Bind ``listen`` now (``""``: None); :class:`lakeferry.errors.StartRefused` when it
    cannot be bound."""
    if not listen:
        return None
    host, port = split(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise refusal(KEY, listen, exc) from None
    return sock


async def serve(
    app: Starlette,
    sock: socket.socket,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``sock`` until cancelled."""
    config = HypercornConfig()
    config.accesslog = None
    config.errorlog = logging.getLogger("lakeferry.console.http")
    config.graceful_timeout = 1.0
    config.keep_alive_timeout = 30.0
    sockets = Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[])

    class Started:
        def started(self, value: object = None) -> None:
            log.info("console listening", extra={"listen": address(sock)})
            task_status.started()

    # Starlette's ASGI signature is looser than hypercorn's typing of one.
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
    await worker_serve(wrapped, config, sockets=sockets, task_status=Started())


__all__ = ["KEY", "bind", "serve"]
