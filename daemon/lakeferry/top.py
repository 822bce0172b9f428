"""``lakeferry top``: the live feed in the terminal, like htop. ``q`` or Ctrl-C quits.

Connects to the daemon's live-feed WebSocket (``live.listen``) and redraws on every snapshot.
With ``--once`` it prints the first snapshot and exits (for scripts and for tests).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import termios
import tty
from collections.abc import Iterator
from typing import Any

import trio
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _bar(used: float, total: float, width: int = 20) -> str:
    if total <= 0:
        return " " * width
    filled = min(width, round(width * used / total))
    return "█" * filled + "░" * (width - filled)


def _delay(seconds: float) -> str:
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:g}s" if seconds >= 1 else f"{seconds * 1000:.0f}ms"


def render(
    snapshot: dict[str, Any], source: str = "", *, interactive: bool = True
) -> RenderableType:
    """One screen for one snapshot (``interactive``: with the key help)."""
    bus = snapshot.get("bus", {})
    state = "[green]up[/]" if bus.get("up", True) else "[bold red]DOWN[/]"
    header = Text.from_markup(
        f"[bold]lakeferry[/] {snapshot.get('version', '?')}  pid {snapshot.get('pid', '?')}  "
        f"bus {bus.get('kind', '?')} {state}  {snapshot.get('at', '')}  {source}"
        + ("   [dim]q quits[/]" if interactive else "")
    )
    stages = Table(title="stages", expand=True, title_justify="left")
    for column in ("stage", "files/s", "done", "in flight", "capacity", "", "lag"):
        stages.add_column(column, justify="left" if column in ("stage", "") else "right")
    for name, s in snapshot.get("stages", {}).items():
        stages.add_row(
            name, f"{s['rate']:.1f}", str(s["done"]), str(s["in_flight"]), str(s["capacity"]),
            _bar(s["in_flight"], s["capacity"]), str(s["lag"]),
        )  # fmt: skip
    lanes = snapshot.get("lanes") or {}
    if lanes:
        for name, lane in lanes.items():
            extra = ""
            if name == "backfill":
                backlog = lane.get("backlog", -1)
                extra = (
                    f"queued {lane.get('queued', 0)}, backlog downstream "
                    f"{backlog if backlog >= 0 else '?'}"
                )
            stages.add_row(
                f"  lane {name}", f"{lane['rate']:.1f}", str(lane["done"]), str(lane["in_flight"]),
                str(lane["capacity"]), _bar(lane["in_flight"], lane["capacity"]),
                f"{lane.get('waiting', 0)} waiting" + (f"; {extra}" if extra else ""),
            )  # fmt: skip
    side = Table.grid(expand=True, padding=(0, 2))
    side.add_column()
    side.add_column()
    side.add_column()
    retries = Table(title="retries by rung", title_justify="left")
    retries.add_column("after")
    retries.add_column("rung")
    retries.add_column("count", justify="right")
    rungs = snapshot.get("rungs")
    if rungs is None:  # a daemon older than the rungs list: topic names only
        rungs = [{"topic": t, "delay": None, "count": c}
                 for t, c in sorted(snapshot.get("retries", {}).items())]  # fmt: skip
    for rung in sorted(rungs, key=lambda r: (r["delay"] is None, r["delay"] or 0)):
        delay = _delay(rung["delay"]) if rung["delay"] is not None else ""
        retries.add_row(delay, rung["topic"], str(rung["count"]))
    dlq = Table(title="dead letters by reason", title_justify="left")
    dlq.add_column("reason")
    dlq.add_column("count", justify="right")
    for reason, count in sorted(snapshot.get("dlq", {}).items()):
        dlq.add_row(reason, str(count))
    cache = snapshot.get("cache") or {}
    cache_text = Text(
        f"cache  {_bytes(cache.get('bytes', 0))} of {_bytes(cache.get('quota', 0))}\n"
        f"       {_bar(cache.get('bytes', 0), cache.get('quota', 0), 24)}\n"
        f"       {cache.get('files', 0)} files"
    )
    side.add_row(retries, dlq, cache_text)
    errors = Table(title="recent errors", expand=True, title_justify="left")
    for column in ("at", "stage", "reason", "event", "url / error"):
        errors.add_column(column, overflow="fold" if column == "url / error" else "ellipsis")
    for e in list(snapshot.get("errors", []))[-8:]:
        errors.add_row(
            e["at"][11:19], e["stage"], e["reason"], str(e.get("event_id") or "-"),
            f"{e.get('url') or ''} {e['error']}".strip(),
        )  # fmt: skip
    return Group(header, stages, side, errors)


@contextlib.contextmanager
def _cbreak() -> Iterator[bool]:
    """Single-key input without echo while it lasts (only when stdin is a terminal)."""
    if not sys.stdin.isatty():
        yield False
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _wait_for_quit(cancel: trio.CancelScope) -> None:
    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stream:
        while True:
            data = await stream.receive_some(16)
            if not data or b"q" in data.lower():
                cancel.cancel(reason="q pressed")
                return


async def run_top(url: str, *, once: bool = False, console: Console | None = None) -> int:
    if console is None:
        # Printed into a pipe or a file (--once in a script): wide enough not to cut names.
        console = Console() if sys.stdout.isatty() else Console(width=140)
    try:
        async with open_websocket_url(url) as ws:
            if once:
                console.print(render(json.loads(await ws.get_message()), url, interactive=False))
                return 0
            with (
                _cbreak() as interactive,
                Live(console=console, screen=True, auto_refresh=False) as live,
                trio.CancelScope() as scope,
            ):
                async with trio.open_nursery() as nursery:
                    if interactive:
                        nursery.start_soon(_wait_for_quit, scope)
                    while True:
                        snapshot = json.loads(await ws.get_message())
                        live.update(render(snapshot, url), refresh=True)
    except (OSError, HandshakeError) as exc:
        raise Unreachable(f"cannot reach the live feed at {url}: {why_unreachable(exc)}") from None
    except ConnectionClosed:
        console.print("the daemon closed the live feed")
        return 0
    return 0


class Unreachable(Exception):
    """The live feed did not answer (the message says how)."""


def why_unreachable(exc: BaseException) -> str:
    """What went wrong connecting to the feed, in words an operator can act on."""
    if _caused_by(exc, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    if isinstance(exc, HandshakeError):
        return f"something answered, but not a lakeferry live feed ({exc})"
    return str(exc) or type(exc).__name__


def _caused_by(exc: BaseException | None, kind: type[BaseException]) -> bool:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, kind):
            return True
        if isinstance(exc, BaseExceptionGroup) and any(
            _caused_by(inner, kind) for inner in exc.exceptions
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
