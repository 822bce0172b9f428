"""systemd's notify protocol (sd_notify), spoken directly over the datagram socket.

When ``NOTIFY_SOCKET`` is unset (not under systemd ``Type=notify``) every call is a no-op.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

import trio


class Notifier:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if address:
            self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_interval: float | None = None
        if usec.isdigit() and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1_000_000

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *lines: str) -> None:
        if self._address is None:
            return
        # An OSError means systemd went away; there is nothing useful to do about it.
        with (
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock,
            contextlib.suppress(OSError),
        ):
            sock.sendto("\n".join(lines).encode(), self._address)

    def ready(self, status: str = "running") -> None:
        self.notify("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        self.notify(
            "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=draining")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    async def run_watchdog(self) -> None:
        """Ping the watchdog at half its interval while the trio loop is alive."""
        if self.watchdog_interval is None or self._address is None:
            return
        while True:
            self.notify("WATCHDOG=1")
            await trio.sleep(self.watchdog_interval / 2)
