"""The plugin registry: loads plugins by entry point and holds the factories they register.

Core code never calls the untyped ``pm.hook.*`` directly; it asks a :class:`Registry`.
Built-in plugins are distributions' entry points in the ``lakeferry`` group like any third-party
plugin, so a site team's plugin is found exactly the way ours are.

Which plugins load is the ``[plugins]`` section's business (:func:`load_registry`): ``block``
names entry points never imported; a non-empty ``allow`` admits only the names it lists
(built-ins included); a plugin that fails to import or to register is left out and reported
with its traceback (:attr:`Registry.failed`), so one broken site plugin does not take the
daemon down — unless ``required`` names it, and then loading fails with that traceback.
Conflicts (a kind or URL scheme provided twice) and misspelled hook names stay errors: they
are mistakes in the set of plugins, not in one of them.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

import msgspec
import pluggy

from lakeferry import hookspecs
from lakeferry.components import PluginContext
from lakeferry.errors import ConfigError, PipelineError
from lakeferry.hookspecs import (
    REGISTER_HOOKS,
    ComponentKind,
    RegisterCache,
    RegisterDownloader,
    RegisterInventory,
    RegisterSink,
    RegisterSource,
)

ENTRY_POINT_GROUP = "lakeferry"

COMPONENT_KINDS: tuple[ComponentKind, ...] = tuple(REGISTER_HOOKS)


Factory = Callable[[Any, PluginContext], Any]
"""What builds a component from its settings (typed per kind in the ``Register*`` protocols)."""


@dataclass(frozen=True)
class Registration:
    """One component kind provided by one plugin."""

    component: ComponentKind
    kind: str
    factory: Factory
    settings_type: type[msgspec.Struct]
    plugin: str
    schemes: tuple[str, ...] = ()


PluginStatus = Literal["loaded", "blocked", "not_allowed", "failed", "shadowed"]
BUILT_IN = "lakeferry"
"""The distribution of the built-in plugins."""


@dataclass(frozen=True)
class PluginInfo:
    """One plugin (an entry point, or an in-process plugin) and what became of it."""

    name: str
    distribution: str
    version: str
    module: str
    provides: list[str] = field(default_factory=list)
    path: str = ""
    """The plugin module's file (found without importing it when it was not loaded)."""
    status: PluginStatus = "loaded"
    error: str = ""
    """The traceback of a plugin that failed to import or register."""


class Registry:
    """Every registered factory, by component and kind. Build with :func:`load_registry`."""

    def __init__(
        self,
        pm: pluggy.PluginManager,
        plugins: list[PluginInfo],
        skipped: Sequence[PluginInfo] = (),
    ) -> None:
        self._pm = pm
        self.plugins = plugins
        """The plugins loaded."""
        self.skipped: list[PluginInfo] = list(skipped)
        """The plugins not loaded: blocked, not allowed, or failed (with a traceback)."""
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
        for component, hook_name in REGISTER_HOOKS.items():
            hook = getattr(self._pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                plugin = self._pm.get_name(impl.plugin) or "?"
                register = (
                    self._downloader_registrar(plugin)
                    if component == "downloader"
                    else self._registrar(component, plugin)
                )
                try:
                    impl.function(register=register)
                except ConfigError:
                    raise  # a conflict between plugins: the set of plugins is wrong
                except Exception as exc:
                    raise _PluginBroken(plugin, _traceback(exc)) from exc

    def _registrar(
        self, component: ComponentKind, plugin: str
    ) -> RegisterSource | RegisterCache | RegisterSink | RegisterInventory:
        def register(kind: str, factory: Factory, settings_type: type[msgspec.Struct]) -> None:
            self._add(_checked(Registration(component, kind, factory, settings_type, plugin)))

        return register

    def _downloader_registrar(self, plugin: str) -> RegisterDownloader:
        def register(
            kind: str,
            schemes: Sequence[str],
            factory: Factory,
            settings_type: type[msgspec.Struct],
        ) -> None:
            if isinstance(schemes, str) or not schemes:
                raise TypeError(f"downloader {kind!r}: schemes must be a non-empty list of str")
            lowered = tuple(s.lower() for s in schemes)
            reg = Registration("downloader", kind, factory, settings_type, plugin, lowered)
            self._add(_checked(reg))

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

    @property
    def failed(self) -> list[PluginInfo]:
        """The plugins that failed to import or register, each with its traceback."""
        return [p for p in self.skipped if p.status == "failed"]

    def for_scheme(self, scheme: str) -> Registration | None:
        return self._schemes.get(scheme.lower())

    def classify(self, error: BaseException, stage: str) -> PipelineError | None:
        result: PipelineError | None = self._pm.hook.lakeferry_classify_error(
            error=error, stage=stage
        )
        return result


def _checked(reg: Registration) -> Registration:
    """A registration whose arguments are what the ``Register*`` protocols say, checked at run
    time too (a plugin need not be type-checked): a clear error instead of a failure later."""
    if not isinstance(reg.kind, str) or not reg.kind:
        raise TypeError(f"{reg.component} kind must be a non-empty str, not {reg.kind!r}")
    if not callable(reg.factory):
        raise TypeError(f"{reg.component} {reg.kind!r}: factory {reg.factory!r} is not callable")
    if not (isinstance(reg.settings_type, type) and issubclass(reg.settings_type, msgspec.Struct)):
        raise TypeError(
            f"{reg.component} {reg.kind!r}: settings_type must be a msgspec.Struct subclass, "
            f"not {reg.settings_type!r}"
        )
    return reg


def lazy_factory(target: str) -> Factory:
    """A factory for ``"package.module:Class"`` that imports the module on the first build, so
    registering a plugin loads none of the libraries its component needs::

        register("delta", lazy_factory("lakeferry_delta.inventory:DeltaInventory"), Settings)

    The class is called as ``Class(settings, context)``.
    """
    module, _, name = target.partition(":")
    if not module or not name:
        raise ValueError(f"lazy_factory wants 'package.module:Class', not {target!r}")

    def factory(settings: Any, context: PluginContext) -> Any:
        return getattr(importlib.import_module(module), name)(settings, context)

    factory.__qualname__ = factory.__name__ = f"lazy_factory({target!r})"
    return factory


class _PluginBroken(Exception):
    """A plugin's registration hook raised: the plugin is left out (or, if required, fatal)."""

    def __init__(self, plugin: str, trace: str) -> None:
        super().__init__(plugin)
        self.plugin = plugin
        self.trace = trace


def _traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).rstrip()


def _entry_points() -> Iterable[importlib.metadata.EntryPoint]:
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


def _ordered(
    entry_points: Iterable[importlib.metadata.EntryPoint],
) -> list[importlib.metadata.EntryPoint]:
    """By name, the built-in distribution first among equal names, each (name, distribution)
    once (a distribution found twice on ``sys.path`` is one)."""
    unique: dict[tuple[str, str], importlib.metadata.EntryPoint] = {}
    for ep in entry_points:
        dist = ep.dist.name if ep.dist is not None else "?"
        unique.setdefault((ep.name, dist), ep)
    return [unique[k] for k in sorted(unique, key=lambda k: (k[0], k[1] != BUILT_IN, k[1]))]


def _shadowed(info: PluginInfo, winner: PluginInfo) -> str:
    return (
        f"plugin name {info.name!r} is also provided by {winner.distribution} "
        f"{winner.version}, which is loaded; this one ({info.distribution} {info.version}) is "
        f"not. To load this one instead, block the other: [plugins] block = "
        f'["{winner.distribution}:{info.name}"]'
    )


def _module_path(module: str, loaded: object | None = None) -> str:
    """The file of a plugin module; found without importing it (top-level modules only)."""
    if loaded is not None:
        return str(getattr(loaded, "__file__", "") or "")
    if "." in module:
        return ""  # find_spec would import the parent packages
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return ""
    return spec.origin or "" if spec is not None else ""


def _required_error(name: str, problem: str) -> ConfigError:
    return ConfigError("plugins.required", f"plugin {name!r} {problem}")


def load_registry(
    extra_plugins: Sequence[tuple[str, ModuleType | object]] = (),
    *,
    allow: Sequence[str] = (),
    block: Sequence[str] = (),
    required: Sequence[str] = (),
) -> Registry:
    """Load the ``lakeferry`` entry points the lists admit, check hook names, collect
    registrations.

    ``block``: names never imported. ``allow``: when non-empty, only these names are imported
    (built-in plugins are entry points too: list every one you use). A plugin that raises while
    being imported, registered with pluggy or asked for its registrations is left out and
    recorded in :attr:`Registry.skipped` with its traceback — unless it is in ``required``,
    then ConfigError carries the traceback; a required plugin that is blocked, not allowed or
    not installed is a ConfigError too. ``extra_plugins`` registers in-process plugins (tests)
    after the entry points, under the same lists. A misspelled hook implementation
    (``lakeferry_register_sink``) and a kind or scheme provided twice raise ConfigError.
    """
    allowed, blocked, needed = set(allow), set(block), set(required)
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    infos: list[PluginInfo] = []
    skipped: list[PluginInfo] = []

    def admitted(info: PluginInfo) -> bool:
        status: PluginStatus | None = None
        qualified = f"{info.distribution}:{info.name}"
        if info.name in blocked or qualified in blocked:
            status = "blocked"
        elif allowed and info.name not in allowed and qualified not in allowed:
            status = "not_allowed"
        if status is None:
            return True
        if info.name in needed:
            raise _required_error(info.name, f"is {status.replace('_', ' ')} by [plugins]")
        skipped.append(_with(info, status=status))
        return False

    def failed(info: PluginInfo, trace: str) -> None:
        if info.name in needed:
            raise _required_error(info.name, f"failed to load:\n{trace}")
        skipped.append(_with(info, status="failed", error=trace))

    loaded_names: dict[str, PluginInfo] = {}
    for ep in _ordered(_entry_points()):
        dist = ep.dist
        info = PluginInfo(
            name=ep.name,
            distribution=dist.name if dist is not None else "?",
            version=dist.version if dist is not None else "?",
            module=ep.value,
        )
        if not admitted(info):
            skipped[-1] = _with(skipped[-1], path=_module_path(ep.module))
            continue
        winner = loaded_names.get(ep.name)
        if winner is not None:
            # Two distributions name a plugin alike: the first admitted one loads (built-ins
            # first); the other is reported, with how to choose it instead.
            skipped.append(_with(info, status="shadowed", path=_module_path(ep.module),
                                 error=_shadowed(info, winner)))  # fmt: skip
            continue
        loaded_names[ep.name] = info
        try:
            module = ep.load()
            if pm.is_registered(module):
                continue
            pm.register(module, name=ep.name)
        except Exception as exc:
            failed(_with(info, path=_module_path(ep.module)), _traceback(exc))
            continue
        infos.append(_with(info, path=_module_path(ep.module, sys.modules.get(ep.module))))
    for name, plugin in extra_plugins:
        info = PluginInfo(name=name, distribution="(in-process)", version="-", module=name)
        if not admitted(info):
            continue
        try:
            pm.register(plugin, name=name)
        except Exception as exc:
            failed(info, _traceback(exc))
            continue
        home = (
            plugin if isinstance(plugin, ModuleType) else sys.modules.get(type(plugin).__module__)
        )
        infos.append(_with(info, path=_module_path(name, home)))
    missing = sorted(needed - {i.name for i in infos} - {i.name for i in skipped})
    if missing:
        raise _required_error(missing[0], "is not installed (no such lakeferry entry point)")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise ConfigError(f"plugins.{exc.plugin}", f"unknown hook implementation: {exc}") from exc
    registry = _collect_isolated(pm, infos, skipped, failed)
    for info in registry.plugins:
        for reg in registry.registrations():
            if reg.plugin == info.name:
                label = f"{reg.component}:{reg.kind}"
                if reg.schemes:
                    label += f" ({', '.join(reg.schemes)})"
                info.provides.append(label)
    return registry


def _collect_isolated(
    pm: pluggy.PluginManager,
    infos: list[PluginInfo],
    skipped: list[PluginInfo],
    failed: Callable[[PluginInfo, str], None],
) -> Registry:
    """Collect every registration; a plugin whose hook raises is dropped and collecting
    starts over without it (registrations are cheap and have no side effects)."""
    while True:
        registry = Registry(pm, infos, skipped)
        try:
            registry._collect()
        except _PluginBroken as broken:
            info = next(i for i in infos if i.name == broken.plugin)
            infos = [i for i in infos if i.name != broken.plugin]
            pm.unregister(name=broken.plugin)
            failed(info, broken.trace)
            continue
        return registry


def _with(info: PluginInfo, **changes: Any) -> PluginInfo:
    return dataclasses.replace(info, **changes)


def lazy_exports(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) for a plugin package: ``names`` maps each exported name
    to the submodule that defines it, imported on first access. Registering a plugin then loads
    none of the libraries its components need until one is built::

        __getattr__ = lazy_exports(__name__, {"MySink": "sink"})
    """

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return __getattr__
