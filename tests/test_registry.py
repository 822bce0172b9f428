"""Plugins load through entry points; misspelled hooks are caught; kinds are unique."""

from __future__ import annotations

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
