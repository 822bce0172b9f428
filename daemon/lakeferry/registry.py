"""The plugin registry: loads plugins by entry point and holds the factories they register.

Core code never calls the untyped ``pm.hook.*`` directly; it asks a :class:`Registry`.
Built-in plugins are distributions' entry points in the ``lakeferry`` group like any third-party
plugin, so a site team's plugin is found exactly the way ours are.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal, Protocol

import msgspec
import pluggy

from lakeferry import hookspecs
from lakeferry.components import (
    CacheFactory,
    DownloaderFactory,
    InventoryFactory,
    SinkFactory,
    SourceFactory,
)
from lakeferry.errors import ConfigError, PipelineError

ENTRY_POINT_GROUP = "lakeferry"

ComponentKind = Literal["source", "downloader", "cache", "sink", "inventory"]
COMPONENT_KINDS: tuple[ComponentKind, ...] = ("source", "downloader", "cache", "sink", "inventory")


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


@dataclass(frozen=True)
class Registration:
    """One component kind provided by one plugin."""

    component: ComponentKind
    kind: str
    factory: Callable[[Any, Any], Any]
    settings_type: type[msgspec.Struct]
    plugin: str
    schemes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PluginInfo:
    name: str
    distribution: str
    version: str
    module: str
    provides: list[str] = field(default_factory=list)


class Registry:
    """Every registered factory, by component and kind. Build with :func:`load_registry`."""

    def __init__(self, pm: pluggy.PluginManager, plugins: list[PluginInfo]) -> None:
        self._pm = pm
        self.plugins = plugins
        self._by: dict[tuple[ComponentKind, str], Registration] = {}
        self._schemes: dict[str, Registration] = {}

    # -- registration, called from hooks ---------------------------------------------------

    def _add(self, reg: Registration) -> None:
        existing = self._by.get((reg.component, reg.kind))
        if existing is not None:
            raise ConfigError(
                f"plugins.{reg.plugin}",
                f"{reg.component} kind {reg.kind!r} is already provided by {existing.plugin!r}",
            )
        self._by[(reg.component, reg.kind)] = reg
        for scheme in reg.schemes:
            claimed = self._schemes.get(scheme)
            if claimed is not None:
                raise ConfigError(
                    f"plugins.{reg.plugin}",
                    f"URL scheme {scheme!r} is already served by {claimed.plugin!r}",
                )
            self._schemes[scheme] = reg

    def _collect(self) -> None:
        for hook_name, component in (
            ("lakeferry_register_sources", "source"),
            ("lakeferry_register_downloaders", "downloader"),
            ("lakeferry_register_caches", "cache"),
            ("lakeferry_register_sinks", "sink"),
            ("lakeferry_register_inventories", "inventory"),
        ):
            hook = getattr(self._pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                plugin = self._pm.get_name(impl.plugin) or "?"
                register = self._registrar(component, plugin)  # type: ignore[arg-type]
                impl.function(register=register)

    def _registrar(self, component: ComponentKind, plugin: str) -> Callable[..., None]:
        def register(kind: str, *args: Any) -> None:
            if component == "downloader":
                schemes, factory, settings_type = args
                reg = Registration(
                    component,
                    kind,
                    factory,
                    settings_type,
                    plugin,
                    tuple(s.lower() for s in schemes),
                )
            else:
                factory, settings_type = args
                reg = Registration(component, kind, factory, settings_type, plugin)
            self._add(reg)

        return register

    # -- queries ---------------------------------------------------------------------------

    def get(self, component: ComponentKind, kind: str) -> Registration:
        reg = self._by.get((component, kind))
        if reg is None:
            known = ", ".join(sorted(self.kinds(component))) or "none"
            raise ConfigError("", f"unknown {component} kind {kind!r} (known: {known})")
        return reg

    def kinds(self, component: ComponentKind) -> list[str]:
        return [k for (c, k) in self._by if c == component]

    def registrations(self) -> list[Registration]:
        return list(self._by.values())

    def for_scheme(self, scheme: str) -> Registration | None:
        return self._schemes.get(scheme.lower())

    def classify(self, error: BaseException, stage: str) -> PipelineError | None:
        result: PipelineError | None = self._pm.hook.lakeferry_classify_error(
            error=error, stage=stage
        )
        return result


def _entry_points() -> Iterable[importlib.metadata.EntryPoint]:
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


def load_registry(extra_plugins: Sequence[tuple[str, ModuleType | object]] = ()) -> Registry:
    """Load every ``lakeferry`` entry point, check hook names, and collect registrations.

    ``extra_plugins`` registers in-process plugins (tests) after the entry points.
    A misspelled hook implementation (``lakeferry_register_sink``) raises ConfigError.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    infos: list[PluginInfo] = []
    for ep in sorted(_entry_points(), key=lambda e: e.name):
        module = ep.load()
        if pm.is_registered(module):
            continue
        pm.register(module, name=ep.name)
        dist = ep.dist
        infos.append(
            PluginInfo(
                name=ep.name,
                distribution=dist.name if dist is not None else "?",
                version=dist.version if dist is not None else "?",
                module=ep.value,
            )
        )
    for name, plugin in extra_plugins:
        pm.register(plugin, name=name)
        infos.append(PluginInfo(name=name, distribution="(in-process)", version="-", module=name))
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise ConfigError(f"plugins.{exc.plugin}", f"unknown hook implementation: {exc}") from exc
    registry = Registry(pm, infos)
    registry._collect()
    for info in infos:
        for reg in registry.registrations():
            if reg.plugin == info.name:
                label = f"{reg.component}:{reg.kind}"
                if reg.schemes:
                    label += f" ({', '.join(reg.schemes)})"
                info.provides.append(label)
    return registry
