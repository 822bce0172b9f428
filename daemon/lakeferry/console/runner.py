"""The console in the supervisor: bound with the other listen addresses, served in its nursery.

:func:`prepare` runs before the bus is opened (a taken port, or a non-loopback address without
a token, refuses the start with one line, exit 2); :func:`run` serves until the supervisor's
nursery is cancelled.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from lakeferry.console.app import ConsoleDeps, build_app
from lakeferry.console.auth import CREDENTIAL, TOKEN_ENV, Guard, is_loopback, load_token
from lakeferry.console.health import Readiness
from lakeferry.console.server import KEY, bind, serve
from lakeferry.console.trace import Tracer
from lakeferry.errors import StartRefused
from lakeferry.listen import split

if TYPE_CHECKING:
    from lakeferry.livefeed import LiveFeed
    from lakeferry.pipeline import Pipeline


@dataclass
class Prepared:
    sock: socket.socket
    guard: Guard


def prepare(listen: str) -> Prepared | None:
    """Check and bind ``console.listen`` (``""``: no console)."""
    if not listen:
        return None
    host, _ = split(listen)
    loopback = is_loopback(host)
    token = load_token()
    if not loopback and token is None:
        raise StartRefused(
            f"{KEY} {listen} is not a loopback address, and the console has no token: set "
            f"{TOKEN_ENV} (or the systemd credential {CREDENTIAL}), or listen on 127.0.0.1"
        )
    sock = bind(listen)
    assert sock is not None
    return Prepared(sock, Guard(token, loopback=loopback))


async def run(
    prepared: Prepared,
    pipeline: Pipeline,
    feed: LiveFeed,
    readiness: Readiness,
    node: str,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    inventory = pipeline.components.inventory if pipeline.components.has("inventory") else None
    tracer = Tracer(pipeline, inventory.lookup if inventory is not None else None)
    deps = ConsoleDeps(pipeline, feed, readiness, prepared.guard, tracer, node)
    try:
        await serve(build_app(deps), prepared.sock, task_status=task_status)
    finally:
        prepared.sock.close()
