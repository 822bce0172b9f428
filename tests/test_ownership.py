"""One owner per state folder, and start-up refusals that systemd does not turn into a loop.

Found by running ``lakeferry run`` twice on one state folder: both ran, every event was fetched
twice, and a port already in use printed a traceback and exited 1 (a restart every 5 s under
the units). Now a second daemon exits 2 naming the owner; a taken port exits 2 naming the key.
"""

from __future__ import annotations

import configparser
import copy
import socket
from pathlib import Path
from typing import Any

import pytest

from helpers.daemon import DaemonEnv, harness
from helpers.wait import wait_for

ROOT = Path(__file__).resolve().parents[1]
UNITS = sorted((ROOT / "systemd").glob("*.service"))


def second_config(env: DaemonEnv, name: str, **changes: Any) -> Path:
    """The environment's config with its own ports (and ``changes`` on top)."""
    data = copy.deepcopy(env.data)
    for key in ("metrics", "live", "console"):
        data[key]["listen"] = "127.0.0.1:0"
    for section, values in changes.items():
        data[section].update(values)
    return harness.write_config(env.root / f"{name}.toml", data)


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    return lines[0]


def test_a_second_daemon_on_one_state_folder_exits_2_naming_the_owner(
    daemon_env: DaemonEnv,
) -> None:
    env = daemon_env
    first = env.start()
    other = second_config(env, "second")
    refused = harness.cli(other, "run", timeout=60)
    assert refused.returncode == 2
    line = one_line(refused.stderr)
    assert line == (
        f"lakeferry: another lakeferry (pid {first.pid}) owns {env.state}; "
        "stop it first, or give this daemon its own daemon.state_dir"
    )
    # The tools keep working beside the owner, and the owner keeps working.
    events = env.submit_events([{"id": "beside-1", "url": "file:///nope/x.bin"}])
    listed = env.cli("dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    wait_for(
        lambda: env.audit(events)[1],
        lambda counts: counts["dead_lettered"] == 1,
        timeout=60,
        what="the letter",
    )
    assert first.alive()

    # A SIGKILLed owner leaves its lock file behind; the lock itself dies with it.
    first.kill()
    again = env.start()
    assert (env.state / "lakeferry.lock").read_text().strip() == str(again.pid)


def test_an_embedded_bus_outside_the_state_folder_is_owned_as_well(
    daemon_env: DaemonEnv,
) -> None:
    env = daemon_env
    bus = env.root / "shared" / "bus.sqlite"
    env.data["bus"]["embedded"]["path"] = str(bus)
    env.write()
    first = env.start()
    elsewhere = second_config(env, "elsewhere", daemon={"state_dir": str(env.root / "other")})
    refused = harness.cli(elsewhere, "run", timeout=60)
    assert refused.returncode == 2
    assert one_line(refused.stderr) == (
        f"lakeferry: another lakeferry (pid {first.pid}) owns the embedded bus {bus}; stop it first"
    )


def test_kafka_workers_share_a_state_folder_but_not_an_instance(kafka_env: DaemonEnv) -> None:
    env = kafka_env
    first, _ = env.start_worker("download", "download-1")
    second, _ = env.start_worker("download", "download-2")  # a second worker: by design
    assert first.alive()
    assert second.alive()
    same = second_config(env, "same")
    refused = harness.cli(same, "run", "--stages", "download", "--instance", "download-1")
    assert refused.returncode == 2
    assert one_line(refused.stderr) == (
        f"lakeferry: another lakeferry (pid {first.pid}) owns instance 'download-1' in "
        f"{env.state}; give each worker of a VM its own --instance (LAKEFERRY_INSTANCE)"
    )


def unit_restart_policy(unit: Path) -> tuple[str, set[str]]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit.read_text())
    service = parser["Service"]
    return service.get("Restart", "no"), set(service.get("RestartPreventExitStatus", "").split())


@pytest.mark.parametrize("key", ["metrics", "live"])
def test_a_listen_address_in_use_exits_2_which_the_units_do_not_restart(
    daemon_env: DaemonEnv, key: str
) -> None:
    env = daemon_env
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env.data[key]["listen"] = f"127.0.0.1:{port}"
        env.write()
        result = env.cli("run", timeout=60)
    assert result.returncode == 2
    assert one_line(result.stderr).startswith(
        f"lakeferry: {key}.listen 127.0.0.1:{port} is already in use;"
    )
    # Nothing was started: the refusal comes before the bus and the stages.
    assert not (env.state / "bus.sqlite").exists()
    assert UNITS
    for unit in UNITS:
        restart, prevented = unit_restart_policy(unit)
        assert restart == "on-failure", unit.name
        assert str(result.returncode) in prevented, unit.name


def test_lock_files_hold_the_owner_pid_and_release_on_exit(tmp_path: Path) -> None:
    import os

    from lakeferry.errors import StartRefused
    from lakeferry.owner import claim

    lock = claim(tmp_path / "x.lock", "x", "fix it")
    assert (tmp_path / "x.lock").read_text() == f"{os.getpid()}\n"
    with pytest.raises(StartRefused, match=rf"^another lakeferry \(pid {os.getpid()}\) owns y; z$"):
        claim(tmp_path / "x.lock", "y", "z")
    lock.release()
    claim(tmp_path / "x.lock", "x", "fix it").release()
