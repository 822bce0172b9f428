"""The live feed and ``lakeferry top``: a real daemon, a real WebSocket, a real terminal (tmux)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from typing import Any

import trio
from rich.console import Console
from trio_websocket import open_websocket_url

from helpers.daemon import ROOT_DIR, DaemonEnv
from helpers.origin import Origin
from helpers.wait import wait_for, wait_until
from lakeferry.top import render

SNAPSHOT: dict[str, Any] = {
    "at": "2026-11-28T08:00:00+00:00", "pid": 42, "version": "0.1.0",
    "bus": {"kind": "kafka", "up": False},
    "stages": {
        "download": {"rate": 41.5, "done": 1234, "in_flight": 50, "capacity": 50, "lag": 17},
        "upload": {"rate": 40.0, "done": 1200, "in_flight": 3, "capacity": 40, "lag": 0},
    },
    "lanes": {
        "live": {"rate": 30.0, "done": 900, "in_flight": 36, "capacity": 50, "waiting": 2},
        "backfill": {"rate": 11.5, "done": 334, "in_flight": 14, "capacity": 25, "waiting": 9,
                     "queued": 48210, "backlog": 37},
    },
    "retries": {"retry.5m": 7}, "dlq": {"not_found": 2},
    "cache": {"bytes": 3 * 2**30, "files": 12, "quota": 20 * 2**30},
    "errors": [{"at": "2026-11-28T07:59:58+00:00", "stage": "download", "event_id": "e-9",
                "reason": "http_server_error", "error": "HTTP 503",
                "url": "https://h/f.bin?<redacted>"}],
}  # fmt: skip


def test_render_a_known_snapshot() -> None:
    console = Console(record=True, width=140, color_system=None)
    console.print(render(SNAPSHOT, "ws://x"))
    text = console.export_text()
    for expected in (
        "bus kafka DOWN", "download", "41.5", "1234", "retry.5m", "not_found",
        "lane live", "lane backfill", "queued 48210", "backlog downstream 37",
        "3.0 GiB of 20.0 GiB", "https://h/f.bin?<redacted> HTTP 503", "e-9",
    ):  # fmt: skip
        assert expected in text, expected


async def _first_snapshot(url: str) -> dict[str, Any]:
    async with open_websocket_url(url) as ws:
        await ws.get_message()  # the one that was ready when we connected
        return json.loads(await ws.get_message())  # type: ignore[no-any-return]


def test_feed_pushes_snapshots_of_a_running_daemon(daemon_env: DaemonEnv, origin: Origin) -> None:
    env = daemon_env
    url = f"ws://{env.start().address('live')}/"
    batch = env.submit_events(
        [{"id": f"live-{i}", "url": origin.file_url(f"live-{i}.bin", 2000)} for i in range(20)]
        + [{"id": "live-gone", "url": f"{origin.url}/missing/live.bin?sig=SECRET"}]
    )
    wait_for(
        lambda: env.audit(batch)[1],
        lambda counts: counts["in_flight"] == 0,
        timeout=30,
        what="the batch to finish",
    )
    # The feed pushes a snapshot every second: wait for one taken after the batch finished.
    snapshot = wait_for(
        lambda: trio.run(_first_snapshot, url),
        lambda s: s["stages"]["results"]["done"] >= 20 and s["dlq"],
        timeout=10,
        what="a snapshot of the finished batch",
    )
    assert snapshot["stages"]["results"]["done"] == 20
    assert snapshot["stages"]["download"]["capacity"] == 50
    # Both lanes, from the running stage: 20 live tasks done (and the one not found).
    assert snapshot["lanes"]["live"]["done"] == 21
    assert snapshot["lanes"]["backfill"] == {
        "rate": 0.0, "done": 0, "in_flight": 0, "capacity": 25, "waiting": 0, "queued": 0,
        "backlog": -1,
    }  # fmt: skip
    assert snapshot["dlq"] == {"not_found": 1}
    assert snapshot["errors"][-1]["event_id"] == "live-gone"
    assert "SECRET" not in json.dumps(snapshot)


def test_top_in_a_real_terminal(daemon_env: DaemonEnv) -> None:
    tmux = shutil.which("tmux")
    assert tmux is not None, "tmux is needed for this test: apt-get install tmux"
    env = daemon_env
    live = env.start().address("live")
    session = f"lf-top-{env.metrics_port}"
    command = f"{sys.executable} -m lakeferry top --url ws://{live}/; echo EXITED=$?; sleep 30"
    subprocess.run(
        [tmux, "new-session", "-d", "-s", session, "-x", "150", "-y", "45", command],
        check=True, cwd=ROOT_DIR,
    )  # fmt: skip
    try:

        def screen() -> str:
            out = subprocess.run(
                [tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True
            )
            return out.stdout

        wait_until(
            lambda: "stages" in screen() and "download" in screen(), timeout=20, what="top to draw"
        )
        shown = screen()
        assert "bus embedded up" in shown
        assert "q quits" in shown
        subprocess.run([tmux, "send-keys", "-t", session, "q"], check=True)
        wait_until(lambda: "EXITED=0" in screen(), timeout=10, what="top to exit on q")
    finally:
        subprocess.run([tmux, "kill-session", "-t", session], capture_output=True)


def test_rungs_show_in_delay_order_with_the_running_delays() -> None:
    """Found: rungs were sorted by topic name (retry.10m before retry.5m) and kept the names of
    delays a reload had changed."""
    snapshot = {
        **SNAPSHOT,
        "retries": {"retry.5m": 7, "retry.10m": 2},
        "rungs": [
            {"topic": "retry.5m", "delay": 1.0, "count": 7},
            {"topic": "retry.10m", "delay": 2.0, "count": 2},
            {"topic": "retry.20m", "delay": 0.25, "count": 0},
        ],
    }
    console = Console(record=True, width=140, color_system=None)
    console.print(render(snapshot, "ws://x", interactive=False))
    text = console.export_text()
    rows = [line.replace("│", " ").split() for line in text.splitlines() if "retry." in line]
    assert [row[:3] for row in rows] == [
        ["250ms", "retry.20m", "0"], ["1s", "retry.5m", "7"], ["2s", "retry.10m", "2"],
    ]  # fmt: skip
    assert "q quits" not in text


def test_top_without_a_daemon_says_why_in_one_line(daemon_env: DaemonEnv) -> None:
    env = daemon_env
    with socket.socket() as held:  # bound, not listening: a connection is refused
        held.bind(("127.0.0.1", 0))
        listen = f"127.0.0.1:{held.getsockname()[1]}"
        env.data["live"]["listen"] = listen
        env.write()
        result = env.cli("top", "--once")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"lakeferry: cannot reach the live feed at ws://{listen}/: connection refused (nothing "
        f"listens there); no daemon runs on {env.state} (start it: lakeferry run -c "
        f"{env.config})\n"
    )


def test_top_on_a_port_0_config_asks_for_the_address(daemon_env: DaemonEnv) -> None:
    env = daemon_env
    env.data["live"]["listen"] = "127.0.0.1:0"
    env.write()
    result = env.cli("top", "--once")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(
        "lakeferry: config error: live.listen: 127.0.0.1:0 takes any free port"
    )
    assert "--url" in result.stderr
    assert result.stderr.count("\n") == 1


def test_top_once_prints_a_snapshot_without_key_help(daemon_env: DaemonEnv) -> None:
    env = daemon_env
    live = env.start().address("live")
    result = env.cli("top", "--once", "--url", f"ws://{live}/")
    assert result.returncode == 0, result.stderr
    assert "bus embedded up" in result.stdout
    assert "q quits" not in result.stdout
    rows = [
        line.replace("│", " ").split()[:2]
        for line in result.stdout.splitlines()
        if "retry." in line
    ]
    assert rows == [["200ms", "retry.200ms"], ["400ms", "retry.400ms"],
                    ["800ms", "retry.800ms"], ["1.6s", "retry.1600ms"]]  # fmt: skip
