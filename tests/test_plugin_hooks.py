"""One test per hook (the rule ``tests/test_plugin_docs.py`` enforces): ``test_hook_<name>``.

Each registers an in-process plugin implementing the hook and checks what the registry, and so
the daemon, gets from it.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from lakeferry.api import (
    PermanentError,
    PipelineError,
    RegisterCache,
    RegisterDownloader,
    RegisterInventory,
    RegisterSink,
    RegisterSource,
    TransientError,
    hookimpl,
)
from lakeferry.errors import ConfigError
from lakeferry.registry import load_registry


class ToySettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    size: int = 1


def toy_factory(settings: Any, context: Any) -> Any:
    return SimpleNamespace(settings=settings, context=context)


def test_hook_register_sources() -> None:
    class Plugin:
        @hookimpl
        def lakeferry_register_sources(self, register: RegisterSource) -> None:
            register("toy-source", toy_factory, ToySettings)

    registry = load_registry(extra_plugins=[("toy", Plugin())])
    reg = registry.get("source", "toy-source")
    assert (reg.factory, reg.settings_type, reg.plugin) == (toy_factory, ToySettings, "toy")
    assert "source:toy-source" in next(p for p in registry.plugins if p.name == "toy").provides


def test_hook_register_downloaders() -> None:
    class Plugin:
        @hookimpl
        def lakeferry_register_downloaders(self, register: RegisterDownloader) -> None:
            register("toy-dl", ("TOY", "toys"), toy_factory, ToySettings)

    registry = load_registry(extra_plugins=[("toy", Plugin())])
    reg = registry.get("downloader", "toy-dl")
    assert reg.schemes == ("toy", "toys")
    assert registry.for_scheme("Toy") is reg
    assert "downloader:toy-dl (toy, toys)" in registry.plugins[-1].provides


def test_hook_register_downloaders_refuses_a_claimed_scheme() -> None:
    class Plugin:
        @hookimpl
        def lakeferry_register_downloaders(self, register: RegisterDownloader) -> None:
            register("toy-dl", ("file",), toy_factory, ToySettings)

    with pytest.raises(ConfigError, match="'file' is already served"):
        load_registry(extra_plugins=[("toy", Plugin())])


def test_hook_register_caches() -> None:
    class Plugin:
        @hookimpl
        def lakeferry_register_caches(self, register: RegisterCache) -> None:
            register("toy-cache", toy_factory, ToySettings)

    reg = load_registry(extra_plugins=[("toy", Plugin())]).get("cache", "toy-cache")
    assert (reg.component, reg.factory, reg.settings_type) == ("cache", toy_factory, ToySettings)


def test_hook_register_sinks() -> None:
    class Plugin:
        @hookimpl
        def lakeferry_register_sinks(self, register: RegisterSink) -> None:
            register("toy-sink", toy_factory, ToySettings)

    reg = load_registry(extra_plugins=[("toy", Plugin())]).get("sink", "toy-sink")
    assert (reg.component, reg.factory, reg.settings_type) == ("sink", toy_factory, ToySettings)


def test_hook_register_sinks_refuses_a_kind_twice() -> None:
    class Plugin:
        @hookimpl
        def lakeferry_register_sinks(self, register: RegisterSink) -> None:
            register("localfs", toy_factory, ToySettings)

    with pytest.raises(ConfigError, match="already provided by 'localfs'"):
        load_registry(extra_plugins=[("toy", Plugin())])


def test_hook_register_inventories() -> None:
    class Plugin:
        @hookimpl
        def lakeferry_register_inventories(self, register: RegisterInventory) -> None:
            register("toy-inventory", toy_factory, ToySettings)

    reg = load_registry(extra_plugins=[("toy", Plugin())]).get("inventory", "toy-inventory")
    assert (reg.component, reg.factory, reg.settings_type) == (
        "inventory",
        toy_factory,
        ToySettings,
    )


def test_hook_classify_error_first_non_none_result_wins() -> None:
    calls: list[str] = []

    class Declines:
        @hookimpl
        def lakeferry_classify_error(self, error: BaseException, stage: str) -> Any:
            calls.append("declines")
            return None

    class Claims:
        @hookimpl
        def lakeferry_classify_error(self, error: BaseException, stage: str) -> Any:
            calls.append("claims")
            if isinstance(error, LookupError):
                return PermanentError("toy_gone", f"{stage}: {error!r}")
            return None

    class Late:  # registered last, so asked first
        @hookimpl
        def lakeferry_classify_error(self, error: BaseException, stage: str) -> Any:
            calls.append("late")
            if isinstance(error, TimeoutError):
                return TransientError("toy_slow", stage)
            return None

    registry = load_registry(
        extra_plugins=[("claims", Claims()), ("declines", Declines()), ("late", Late())]
    )
    result: PipelineError | None = registry.classify(KeyError("k"), "upload")
    assert isinstance(result, PermanentError)
    assert (result.reason, str(result)) == ("toy_gone", "upload: KeyError('k')")
    assert calls == ["late", "declines", "claims"]
    calls.clear()
    slow = registry.classify(TimeoutError(), "download")
    assert isinstance(slow, TransientError)
    assert calls == ["late"]  # the first non-None result ends the call
    assert registry.classify(ValueError("v"), "download") is None
