"""The hooks lakeferry calls on its plugins (pluggy, project name ``lakeferry``).

Each ``lakeferry_register_*`` hook is called once, when the plugin manager is built, with a
``register`` function; the plugin calls it once per component kind it provides. Every
implementation is called (no first-result short cut). Nothing async runs inside a hook: the
registered factories are called later by the daemon, and the components they build run in the
daemon's nurseries.

``lakeferry_classify_error`` is called when a component raised an exception that is not a
:class:`lakeferry.errors.PipelineError`; the first non-None result wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, Protocol

import msgspec
import pluggy

from lakeferry.components import (
    CacheFactory,
    DownloaderFactory,
    InventoryFactory,
    SinkFactory,
    SourceFactory,
)

if TYPE_CHECKING:
    from lakeferry.errors import PipelineError

PROJECT = "lakeferry"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

ComponentKind = Literal["source", "downloader", "cache", "sink", "inventory"]
"""What a plugin can provide. Each kind has its hook below and its ``Register*`` protocol."""

REGISTER_HOOKS: dict[ComponentKind, str] = {
    "source": "lakeferry_register_sources",
    "downloader": "lakeferry_register_downloaders",
    "cache": "lakeferry_register_caches",
    "sink": "lakeferry_register_sinks",
    "inventory": "lakeferry_register_inventories",
}
"""Each component kind and the hook that registers it (``tests/test_plugin_docs.py`` holds
this table to the hooks defined here)."""


# The ``register`` function each hook receives, one protocol per component kind: a plugin
# annotates its hook with it (``register: RegisterSink``) and mypy checks every call.


class RegisterSource(Protocol):
    def __call__(
        self, kind: str, factory: SourceFactory, settings_type: type[msgspec.Struct]
    ) -> None: ...


class RegisterDownloader(Protocol):
    def __call__(
        self,
        kind: str,
        schemes: Sequence[str],
        factory: DownloaderFactory,
        settings_type: type[msgspec.Struct],
    ) -> None: ...


class RegisterCache(Protocol):
    def __call__(
        self, kind: str, factory: CacheFactory, settings_type: type[msgspec.Struct]
    ) -> None: ...


class RegisterSink(Protocol):
    def __call__(
        self, kind: str, factory: SinkFactory, settings_type: type[msgspec.Struct]
    ) -> None: ...


class RegisterInventory(Protocol):
    def __call__(
        self, kind: str, factory: InventoryFactory, settings_type: type[msgspec.Struct]
    ) -> None: ...


@hookspec
def lakeferry_register_sources(register: RegisterSource) -> None:
    """Register event sources: ``register(kind, factory, settings_type)``.

    Called once at start-up. ``settings_type`` is a msgspec Struct the ``[[sources]]`` entry of
    that kind is validated into; the factory receives the instance and a PluginContext.
    """


@hookspec
def lakeferry_register_downloaders(register: RegisterDownloader) -> None:
    """Register downloaders: ``register(kind, schemes, factory, settings_type)``.

    ``schemes`` are the URL schemes served (``("http", "https")``). Settings come from
    ``[downloaders.<kind>]``. A scheme claimed by two plugins is a configuration error.
    """


@hookspec
def lakeferry_register_caches(register: RegisterCache) -> None:
    """Register cache backends: ``register(kind, factory, settings_type)`` (``[cache]``)."""


@hookspec
def lakeferry_register_sinks(register: RegisterSink) -> None:
    """Register sinks: ``register(kind, factory, settings_type)`` (``[sink]``)."""


@hookspec
def lakeferry_register_inventories(register: RegisterInventory) -> None:
    """Register inventory writers: ``register(kind, factory, settings_type)`` (``[inventory]``)."""


@hookspec(firstresult=True)
def lakeferry_classify_error(error: BaseException, stage: str) -> PipelineError | None:
    """Turn a foreign exception into a TransientError or PermanentError.

    Called by the download and upload stages (``stage`` is ``"download"`` or ``"upload"``)
    for an exception that is not already a PipelineError. First non-None result wins; when all
    return None the daemon treats the error as transient with reason ``internal``.
    """
