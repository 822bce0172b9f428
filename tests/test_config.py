"""Config loading: typed values, env references, and errors that name the key."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from lakeferry.config import diff, load_config, parse_config
from lakeferry.errors import ConfigError
from lakeferry.registry import Registry, load_registry
from lakeferry.stages.catalog import live_keys

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "etc" / "lakeferry.toml"


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


def base() -> dict[str, Any]:
    return tomllib.loads(DEFAULT.read_text())


def error_of(
    data: dict[str, Any], registry: Registry, env: dict[str, str] | None = None
) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(data, registry, env=env or {})
    return info.value


def test_default_config_is_valid(registry: Registry) -> None:
    cfg = load_config(DEFAULT, registry, env={})
    assert cfg.core.download.concurrency == 50
    assert cfg.core.upload.concurrency == 40
    assert cfg.core.retry.delays == [300.0, 600.0, 1200.0, 2400.0]
    assert cfg.cache.kind == "localfs"
    assert cfg.cache.settings.quota == 20 * 2**30
    # Relative to the file's folder (etc/): the checkout's var/lakeferry.
    assert cfg.core.daemon.state_dir == str(DEFAULT.resolve().parents[1] / "var" / "lakeferry")
    assert cfg.core.bus.embedded.path == cfg.core.daemon.state_dir + "/bus.sqlite"
    assert {"http", "file"} <= cfg.downloaders.keys()


def test_env_references_resolve(registry: Registry) -> None:
    cfg = load_config(DEFAULT, registry, env={"LAKEFERRY_STATE": "/srv/lf"})
    assert cfg.core.bus.embedded.path == "/srv/lf/bus.sqlite"
    assert cfg.sink.settings.root == "/srv/lf/sink"


def test_unset_env_without_default_names_key(registry: Registry) -> None:
    data = base()
    data["daemon"]["state_dir"] = "${NOPE_NOT_SET}"
    err = error_of(data, registry)
    assert err.key == "daemon.state_dir"
    assert "NOPE_NOT_SET" in err.problem


def test_durations_and_sizes(registry: Registry) -> None:
    data = base()
    data["daemon"]["shutdown_grace"] = "250ms"
    data["retry"]["delays"] = ["100ms", "1s", "2m", "1h"]
    data["cache"]["quota"] = "1.5GiB"
    cfg = parse_config(data, registry, env={})
    assert cfg.core.daemon.shutdown_grace == pytest.approx(0.25)
    assert cfg.core.retry.delays == [0.1, 1, 120, 3600]
    assert cfg.cache.settings.quota == int(1.5 * 2**30)


@pytest.mark.parametrize(
    ("mutate", "key", "problem"),
    [
        (lambda d: d["download"].update(concurrency=-3), "download.concurrency", ">= 1"),
        (lambda d: d["download"].update(concurency=3), "download.concurency", "unknown key"),
        (lambda d: d.update(bogus={}), "bogus", "unknown key"),
        (lambda d: d["upload"].update(concurrency="many"), "upload.concurrency", "Expected `int`"),
        (
            lambda d: d["daemon"].update(shutdown_grace="soon"),
            "daemon.shutdown_grace",
            "invalid duration",
        ),
        (lambda d: d["cache"].update(quota="lots"), "cache.quota", "invalid size"),
        (lambda d: d["sink"].update(kind="s3"), "sink.kind", "unknown sink kind 's3'"),
        (lambda d: d["cache"].pop("kind"), "cache.kind", "missing"),
        (
            lambda d: d["sources"][0].update(kind="carrier-pigeon"),
            "sources[0].kind",
            "unknown source kind",
        ),
        (lambda d: d["sources"][0].update(colour="blue"), "sources[0].colour", "unknown key"),
        (lambda d: d["sources"][0].update(lane="fast"), "sources[0].lane", "'fast' is not a lane"),
        (lambda d: d["download"].update(backfill_share=0), "download.backfill_share", "> 0"),
        (
            lambda d: d["downloaders"].update(gopher={}),
            "downloaders.gopher",
            "unknown downloader kind",
        ),
        (lambda d: d["retry"].update(topics=["a", "b"]), "retry.topics", "one topic per delay"),
        (lambda d: d["daemon"].update(log_level="loud"), "daemon.log_level", "Invalid enum value"),
        (lambda d: d["metrics"].update(listen="nowhere"), "metrics.listen", "host:port"),
    ],
)
def test_bad_values_name_key_and_problem(
    registry: Registry, mutate: Any, key: str, problem: str
) -> None:
    data = base()
    mutate(data)
    err = error_of(data, registry)
    assert err.key == key
    assert problem in err.problem


def test_diff_splits_live_and_restart(registry: Registry) -> None:
    old = parse_config(base(), registry, env={})
    data = base()
    data["download"]["concurrency"] = 7
    data["retry"]["delays"] = ["1s", "2s", "3s", "4s"]
    data["bus"]["partitions"] = 8
    new = parse_config(data, registry, env={})
    live, restart = diff(old, new, live_keys())
    assert live == ["download.concurrency", "retry.delays"]
    assert restart == ["bus.partitions"]


def test_origin_settings_and_pinned_hosts_apply_live(registry: Registry) -> None:
    old = parse_config(base(), registry, env={})
    data = base()
    data["download"]["host_limits"] = {"*.blob.core.windows.net:443": 16, "files.example": 4}
    data["download"]["host_circuit_cooldown"] = "1m"
    new = parse_config(data, registry, env={})
    live, restart = diff(old, new, live_keys())
    assert live == [
        "download.host_circuit_cooldown",
        "download.host_limits",
        "download.host_limits.*.blob.core.windows.net:443",
        "download.host_limits.files.example",
    ]
    assert restart == []
    # ... and back to none.
    live, restart = diff(new, old, live_keys())
    assert restart == []


def test_lane_settings_apply_live_and_the_lanes_topic_needs_a_restart(registry: Registry) -> None:
    old = parse_config(base(), registry, env={})
    data = base()
    data["download"].update(backfill_share=0.25, backfill_rate=20, backfill_delay="1s")
    data["topics"] = {"backfill": "history.pending"}
    new = parse_config(data, registry, env={})
    live, restart = diff(old, new, live_keys())
    assert live == [
        "download.backfill_delay", "download.backfill_rate", "download.backfill_share",
    ]  # fmt: skip
    assert restart == ["topics.backfill"]
    assert "history.pending" in new.all_topics()


def test_a_download_queue_below_the_concurrency_is_refused(registry: Registry) -> None:
    data = base()
    data["download"].update(concurrency=50, queue=20)
    err = error_of(data, registry)
    assert err.key == "download.queue"
    assert "below download.concurrency (50)" in err.problem
    data["download"]["host_limits"] = {"files.example": 0}
    data["download"]["queue"] = 0
    assert error_of(data, registry).key.startswith("download.host_limits")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lakeferry", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


@pytest.mark.slow
def test_check_config_cli(tmp_path: Path) -> None:
    ok = run_cli("check-config", str(DEFAULT))
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(DEFAULT.read_text().replace("concurrency = 50", "concurrency = -1"))
    result = run_cli("check-config", str(bad))
    assert result.returncode == 2
    assert "download.concurrency" in result.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[daemon\n")
    result = run_cli("check-config", str(broken))
    assert result.returncode == 2
    assert "not valid TOML" in result.stderr


def test_plugins_section_is_read_before_the_registry(tmp_path: Path) -> None:
    from lakeferry.config import load_plugins, plugins_section

    assert plugins_section({}).allow == []
    data = {"plugins": {"block": ["${BLOCKED}"], "required": ["http"]}}
    section = plugins_section(data, env={"BLOCKED": "sftp"})
    assert (section.block, section.required) == (["sftp"], ["http"])
    for bad, key in (
        ({"allow": "http"}, "plugins.allow"),
        ({"allwo": []}, "plugins.allwo"),
        ({"allow": ["http"], "block": ["http"]}, "plugins.block"),
        ({"allow": ["http"], "required": ["delta"]}, "plugins.required"),
        ({"block": ["http"], "required": ["http"]}, "plugins.required"),
    ):
        with pytest.raises(ConfigError) as info:
            plugins_section({"plugins": bad})
        assert info.value.key == key, bad
    path = tmp_path / "lakeferry.toml"
    path.write_text(DEFAULT.read_text() + '\n[plugins]\nblock = ["sftp", "kafka"]\n')
    registry = load_plugins(path, env={})
    assert {p.name for p in registry.skipped} == {"sftp", "kafka"}
    cfg = load_config(path, registry, env={})
    assert cfg.core.plugins.block == ["sftp", "kafka"]
    assert "sftp" not in cfg.downloaders


def test_plugins_section_needs_a_restart(registry: Registry) -> None:
    old = parse_config(base(), registry, env={})
    data = base()
    data["plugins"] = {"block": ["sftp"]}
    live, restart = diff(old, parse_config(data, registry, env={}), live_keys())
    assert live == []
    assert restart == ["plugins.block"]
