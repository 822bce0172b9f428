"""Plugins load through entry points; misspelled hooks are caught; kinds are unique."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from lakeferry.errors import ConfigError
from lakeferry.hookspecs import hookimpl
from lakeferry.registry import load_registry

ROOT = Path(__file__).resolve().parents[1]


def test_builtins_load_through_entry_points() -> None:
    registry = load_registry()
    names = {p.name for p in registry.plugins}
    assert {"spool", "http", "file", "localfs", "delta"} <= names
    assert all(p.distribution == "lakeferry" for p in registry.plugins)
    assert registry.for_scheme("https") is not None
    assert registry.for_scheme("HTTP") is not None
    assert registry.for_scheme("gopher") is None
    assert set(registry.kinds("sink")) >= {"localfs"}
    assert set(registry.kinds("inventory")) >= {"delta"}


class _Settings(msgspec.Struct):
    pass


def test_misspelled_hook_is_caught() -> None:
    class Typo:
        @hookimpl
        def lakeferry_register_sink(self, register: Any) -> None:  # missing the "s"
            raise AssertionError("never called")

    with pytest.raises(ConfigError) as info:
        load_registry(extra_plugins=[("typo", Typo())])
    assert "lakeferry_register_sink" in str(info.value)


def test_duplicate_scheme_is_refused() -> None:
    class Rival:
        @hookimpl
        def lakeferry_register_downloaders(self, register: Any) -> None:
            register("rival", ["https"], lambda s, c: SimpleNamespace(), _Settings)

    with pytest.raises(ConfigError, match="'https' is already served"):
        load_registry(extra_plugins=[("rival", Rival())])


def test_classify_error_first_result_wins() -> None:
    from lakeferry.errors import PermanentError

    class Classifier:
        @hookimpl
        def lakeferry_classify_error(self, error: BaseException, stage: str) -> Any:
            if isinstance(error, KeyError):
                return PermanentError("my_reason", f"{stage}: {error}")
            return None

    registry = load_registry(extra_plugins=[("classifier", Classifier())])
    result = registry.classify(KeyError("k"), "download")
    assert isinstance(result, PermanentError)
    assert result.reason == "my_reason"
    assert registry.classify(ValueError("v"), "download") is None


@pytest.mark.slow
def test_plugins_command_lists_versions_and_kinds() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lakeferry", "plugins"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "lakeferry 0.1.0" in out.stdout
    assert "provides downloader:http (http, https)" in out.stdout
    assert "provides sink:localfs" in out.stdout
    assert "provides inventory:delta" in out.stdout


# -- [plugins] allow / block / required, and plugins that fail to load ---------------------------


def _broken_distribution(root: Path, *, at: str = "import") -> Path:
    """A dist-info on ``root`` whose ``lakeferry`` entry point ``broken`` fails at ``at``
    (``import``: the module raises; ``register``: its hook raises)."""
    body = (
        'raise RuntimeError("boom at import")\n'
        if at == "import"
        else "import msgspec\nfrom lakeferry.api import hookimpl\n\n"
        "class Settings(msgspec.Struct):\n    pass\n\n"
        "@hookimpl\n"
        "def lakeferry_register_downloaders(register):\n"
        '    register("broken", ["brk"], lambda settings, context: None, Settings)\n'
        '    raise RuntimeError("boom at register")\n'
    )
    (root / "lakeferry_broken_plugin.py").write_text(body)
    info = root / "lakeferry_broken-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: lakeferry-broken\nVersion: 1.2.3\n"
    )
    (info / "entry_points.txt").write_text("[lakeferry]\nbroken = lakeferry_broken_plugin\n")
    return root


def test_blocked_plugin_is_not_imported() -> None:
    registry = load_registry(block=["sftp"])
    assert "sftp" not in {p.name for p in registry.plugins}
    assert registry.for_scheme("sftp") is None
    (blocked,) = registry.skipped
    assert (blocked.name, blocked.status, blocked.distribution) == ("sftp", "blocked", "lakeferry")
    assert blocked.path.endswith("lakeferry_sftp/__init__.py")
    assert registry.for_scheme("https") is not None


def test_allow_list_admits_only_its_names() -> None:
    registry = load_registry(allow=["http", "localfs"])
    assert sorted(p.name for p in registry.plugins) == ["http", "localfs"]
    assert {p.status for p in registry.skipped} == {"not_allowed"}
    assert "delta" in {p.name for p in registry.skipped}
    assert registry.kinds("inventory") == []
    assert all(p.path.endswith("__init__.py") for p in registry.plugins)


def test_plugin_failing_at_import_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(_broken_distribution(tmp_path)))
    registry = load_registry()
    (failed,) = registry.failed
    assert (failed.name, failed.distribution, failed.version) == (
        "broken",
        "lakeferry-broken",
        "1.2.3",
    )
    assert "RuntimeError: boom at import" in failed.error
    assert "Traceback" in failed.error
    assert failed.path == str(tmp_path / "lakeferry_broken_plugin.py")
    assert registry.for_scheme("https") is not None, "the others load"
    with pytest.raises(ConfigError, match="boom at import") as info:
        load_registry(required=["broken"])
    assert info.value.key == "plugins.required"
    assert load_registry(block=["broken"]).failed == []


def test_plugin_failing_at_register_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(_broken_distribution(tmp_path, at="register")))
    registry = load_registry()
    assert [p.name for p in registry.failed] == ["broken"]
    assert "boom at register" in registry.failed[0].error
    assert registry.for_scheme("brk") is None, "its registrations are dropped"
    assert "broken" not in registry.kinds("downloader")
    assert registry.for_scheme("sftp") is not None
    with pytest.raises(ConfigError, match="boom at register"):
        load_registry(required=["broken"])


def test_in_process_plugin_failing_at_register() -> None:
    class Faulty:
        @hookimpl
        def lakeferry_register_sinks(self, register: Any) -> None:
            raise ValueError("faulty sink")

    registry = load_registry(extra_plugins=[("faulty", Faulty())])
    assert [p.name for p in registry.failed] == ["faulty"]
    assert "ValueError: faulty sink" in registry.failed[0].error
    assert "localfs" in registry.kinds("sink")
    blocked = load_registry(extra_plugins=[("faulty", Faulty())], block=["faulty"])
    assert blocked.failed == []
    assert blocked.skipped[0].status == "blocked"


def test_required_plugin_must_be_there() -> None:
    with pytest.raises(ConfigError, match="'nosuch' is not installed"):
        load_registry(required=["nosuch"])
    with pytest.raises(ConfigError, match="'sftp' is blocked"):
        load_registry(block=["sftp"], required=["sftp"])
    with pytest.raises(ConfigError, match="'sftp' is not allowed"):
        load_registry(allow=["http"], required=["sftp"])
    assert "sftp" in {p.name for p in load_registry(required=["sftp", "http"]).plugins}


def _config_with(tmp_path: Path, plugins: str) -> Path:
    text = (ROOT / "etc" / "lakeferry.toml").read_text()
    path = tmp_path / "lakeferry.toml"
    path.write_text(f"{text}\n[plugins]\n{plugins}\n")
    return path


def _cli(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    import os

    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = f"{pythonpath}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return subprocess.run(
        [sys.executable, "-m", "lakeferry", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env=env,
    )


@pytest.mark.slow
def test_plugins_command_shows_origin_blocked_and_failed(tmp_path: Path) -> None:
    (tmp_path / "dist").mkdir()
    dist = _broken_distribution(tmp_path / "dist")
    config = _config_with(tmp_path, 'block = ["sftp"]')
    out = _cli("plugins", "-c", str(config), pythonpath=dist)
    assert out.returncode == 1, out.stderr  # a plugin failed
    assert "plugins/lakeferry_http/__init__.py" in out.stdout
    assert "BLOCKED" in out.stdout.split("sftp", 1)[1].splitlines()[0]
    broken = out.stdout.split("\nbroken", 1)[1]
    assert "lakeferry-broken 1.2.3" in broken.splitlines()[0]
    assert "FAILED" in broken.splitlines()[0]
    assert "RuntimeError: boom at import" in broken
    listed = _cli("plugins", "--json", "-c", str(config), pythonpath=dist)
    assert listed.returncode == 1, listed.stderr
    statuses = {p["name"]: p["status"] for p in map(json.loads, listed.stdout.splitlines())}
    assert statuses["sftp"] == "blocked"
    assert statuses["broken"] == "failed"
    assert statuses["http"] == "loaded"


@pytest.mark.slow
def test_required_plugin_failing_stops_start_up(tmp_path: Path) -> None:
    (tmp_path / "dist").mkdir()
    dist = _broken_distribution(tmp_path / "dist")
    config = _config_with(tmp_path, 'required = ["broken"]')
    out = _cli("check-config", str(config), pythonpath=dist)
    assert out.returncode == 2
    assert "plugins.required" in out.stderr
    assert "boom at import" in out.stderr
    ok = _cli("check-config", str(_config_with(tmp_path, 'block = ["broken"]')), pythonpath=dist)
    assert ok.returncode == 0, ok.stderr


def _rival_http(root: Path) -> Path:
    """A site's distribution whose plugin is named ``http`` like the built-in one, and serves
    the ``https`` scheme with a downloader of its own."""
    (root / "acme_http_plugin.py").write_text(
        "from lakeferry.api import hookimpl\n"
        "import msgspec\n\n"
        "class Settings(msgspec.Struct):\n    pass\n\n"
        "@hookimpl\n"
        "def lakeferry_register_downloaders(register):\n"
        '    register("acme", ["http", "https"], lambda s, c: object(), Settings)\n'
    )
    info = root / "lakeferry_http-9.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lakeferry-http\nVersion: 9.0\n")
    (info / "entry_points.txt").write_text("[lakeferry]\nhttp = acme_http_plugin\n")
    return root


def test_a_plugin_named_like_a_built_in_is_reported_and_can_be_chosen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found: a site plugin named like a built-in (``lakeferry plugin new http``) was silently
    ignored, rc 0."""
    monkeypatch.syspath_prepend(str(_rival_http(tmp_path)))
    registry = load_registry()
    http = [p for p in registry.plugins if p.name == "http"]
    assert [p.distribution for p in http] == ["lakeferry"]  # the built-in, by default
    [shadowed] = [p for p in registry.skipped if p.name == "http"]
    assert (shadowed.status, shadowed.distribution) == ("shadowed", "lakeferry-http")
    assert shadowed.error.endswith('block = ["lakeferry:http"]')
    chosen = load_registry(block=["lakeferry:http"])
    assert [p.distribution for p in chosen.plugins if p.name == "http"] == ["lakeferry-http"]
    assert chosen.get("downloader", "acme").schemes == ("http", "https")
    assert [(p.name, p.status) for p in chosen.skipped] == [("http", "blocked")]


@pytest.mark.slow
def test_plugins_command_and_start_warn_about_a_shadowed_plugin(tmp_path: Path) -> None:
    (tmp_path / "dist").mkdir()
    dist = _rival_http(tmp_path / "dist")
    listed = _cli("plugins", pythonpath=dist)
    line = next(x for x in listed.stdout.splitlines() if "lakeferry-http 9.0" in x)
    assert line.startswith("http")
    assert line.endswith("SHADOWED")
    assert 'block = ["lakeferry:http"]' in listed.stdout

    from helpers.daemon import harness

    data = harness.config_dict(tmp_path / "state")
    config = harness.write_config(tmp_path / "lakeferry.toml", data)
    daemon = harness.DaemonProcess(config, tmp_path / "daemon.log", env={"PYTHONPATH": str(dist)})
    daemon.start()
    try:
        warned = daemon.wait_for_log("plugin not loaded: another plugin has its name")
        assert (warned["level"], warned["distribution"]) == ("warning", "lakeferry-http")
    finally:
        assert daemon.terminate() == 0


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (("odd", ["odd"], object, object), "settings_type must be a msgspec.Struct subclass"),
        (("odd", ["odd"], "not callable", msgspec.Struct), "is not callable"),
        (("odd", "odd", object, msgspec.Struct), "schemes must be a non-empty list of str"),
        (("", ["odd"], object, msgspec.Struct), "kind must be a non-empty str"),
    ],
)
def test_a_registration_against_the_protocol_is_refused_by_name(
    args: tuple[Any, ...], problem: str
) -> None:
    """Plugins need not be type-checked: ``register`` checks its arguments at run time too,
    and the plugin is left out with a message naming the mistake."""

    class Odd:
        @hookimpl
        def lakeferry_register_downloaders(self, register: Any) -> None:
            register(*args)

    registry = load_registry([("odd", Odd())])
    assert [p.name for p in registry.failed] == ["odd"]
    assert problem in registry.failed[0].error
    assert registry.for_scheme("odd") is None
