"""The one way components are built from a config: :class:`Builder`.

The daemon (:class:`~lakeferry.pipeline.Pipeline`), ``lakeferry check-config``, a reload,
``lakeferry audit`` and the demo all build through it, so a component is always built with its
plugin's factory, its validated settings and a :class:`PluginContext`, and a ``ConfigError`` it
raises always names the key under its section (``cache.path``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple

import trio

from lakeferry.components import (
    CacheBackend,
    Downloader,
    Inventory,
    PluginContext,
    Sink,
    Source,
)
from lakeferry.config import LoadedConfig, PluginChoice
from lakeferry.errors import ConfigError
from lakeferry.hookspecs import ComponentKind
from lakeferry.logs import get_logger
from lakeferry.registry import Registry


def owner_name(node: str, instance: str) -> str:
    """A process's stable name for components (:attr:`PluginContext.owner`), file-name safe."""
    return re.sub(r"[^A-Za-z0-9._@+-]", "_", f"{node}.{instance}")


class Fetcher(NamedTuple):
    """The downloader serving a URL scheme, and whether it resumes (``supports_resume``)."""

    downloader: Downloader
    resumes: bool


class Builder:
    """Builds the components ``config`` selects, as process ``owner`` (``<node>.<instance>``,
    or a tool's name). ``check_only``: validate, create nothing, connect to nothing."""

    def __init__(
        self,
        config: LoadedConfig,
        registry: Registry,
        owner: str = "main",
        *,
        check_only: bool = False,
    ) -> None:
        self.config = config
        self.registry = registry
        self.owner = owner
        self.check_only = check_only

    def context(self, kind: str) -> PluginContext:
        """What a component of ``kind`` is told about the daemon that builds it."""
        config = self.config
        return PluginContext(
            state_dir=Path(config.core.daemon.state_dir), logger=get_logger(f"plugin.{kind}"),
            owner=self.owner, check_only=self.check_only,
            max_event_bytes=int(config.core.ingest.max_event_bytes),
        )  # fmt: skip

    def _build(self, component: ComponentKind, choice: PluginChoice, section: str) -> Any:
        reg = self.registry.get(component, choice.kind)
        try:
            return reg.factory(choice.settings, self.context(choice.kind))
        except ConfigError as exc:
            if exc.key == section or exc.key.startswith((f"{section}.", f"{section}[")):
                raise
            key = f"{section}.{exc.key}" if exc.key else section
            raise ConfigError(key, exc.problem) from None

    def cache(self) -> CacheBackend:
        built: CacheBackend = self._build("cache", self.config.cache, "cache")
        return built

    def sink(self) -> Sink:
        built: Sink = self._build("sink", self.config.sink, "sink")
        return built

    def inventory(self) -> Inventory:
        built: Inventory = self._build("inventory", self.config.inventory, "inventory")
        return built

    def sources(self) -> list[Source]:
        return [
            self._build("source", choice, f"sources[{i}]")
            for i, choice in enumerate(self.config.sources)
        ]

    def downloaders(self) -> dict[str, Fetcher]:
        """One downloader per configured kind, indexed by every URL scheme it serves."""
        out: dict[str, Fetcher] = {}
        for kind, choice in self.config.downloaders.items():
            downloader: Downloader = self._build("downloader", choice, f"downloaders.{kind}")
            # A plugin written before supports_resume was part of the protocol lacks it.
            fetcher = Fetcher(downloader, getattr(downloader, "supports_resume", False) is True)
            for scheme in self.registry.get("downloader", kind).schemes:
                out[scheme] = fetcher
        return out

    async def check(self) -> None:
        """Build every component the config selects in check-only mode and close them:
        ``lakeferry check-config`` and a reload refuse what a start would refuse."""
        assert self.check_only, "a check builds in check-only mode"
        with trio.CancelScope(shield=True):
            for make in (self.cache, self.sink, self.inventory):
                await make().aclose()
            self.sources()  # sources have nothing to close
            fetchers = self.downloaders().values()
            for downloader in {id(f.downloader): f.downloader for f in fetchers}.values():
                await downloader.aclose()


async def check_components(config: LoadedConfig, registry: Registry) -> None:
    """What a start and a reload check first (see :meth:`Builder.check`)."""
    await Builder(config, registry, check_only=True).check()
