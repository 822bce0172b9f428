"""Network probes for the SSRF tests: a listener that counts connections, a spying backend.

The workplace rule these tests keep: traffic goes to loopback only. :class:`SpyBackend` sits
between the guard and the real network and refuses (with an AssertionError, before any socket
is made) to connect anywhere else, so a guard that failed open would fail the test instead of
reaching 10.x or 169.254.x.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import httpcore
import trio


class CountingListener:
    """A TCP listener on a loopback address that accepts, counts and closes connections."""

    def __init__(self, host: str = "127.0.0.2") -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.05)
        self.host = host
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="counting-listener", daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@contextmanager
def counting_listener(host: str = "127.0.0.2") -> Iterator[CountingListener]:
    listener = CountingListener(host)
    listener._thread.start()
    try:
        yield listener
    finally:
        listener._stop.set()
        listener._thread.join()
        listener.sock.close()


class SpyBackend(httpcore.AsyncNetworkBackend):
    """httpcore's trio backend that records every connect and allows loopback addresses only.

    The curl engine connects in libcurl, not through httpcore: there the spy is the engine's
    ``connect_hook`` (:meth:`check`), called before each socket is opened; its AssertionError
    refuses the connection (and the recorded connect fails the test).
    """

    def __init__(self) -> None:
        self.inner = httpcore.TrioBackend()
        self.connects: list[tuple[str, int]] = []

    def check(self, host: str, port: int) -> None:
        """Record a connect; refuse it unless the address is loopback."""
        self.connects.append((host, port))
        # The guard hands over checked addresses, never names; and tests reach loopback only.
        address = ipaddress.ip_address(host)
        assert address.is_loopback, f"the test would have connected to {host}"

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.check(host, port)
        return await self.inner.connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)
