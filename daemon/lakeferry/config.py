"""The daemon's configuration: TOML validated into typed msgspec Structs.

Loading happens in three steps, each of which names the offending key when it fails:

1. TOML parse (``tomllib``), then ``${VAR}`` / ``${VAR:-default}`` references in strings are
   replaced from the environment (an unset variable without a default is an error).
2. The core sections are converted into :class:`Config` (unknown keys and wrong types refused;
   durations like ``"250ms"`` and sizes like ``"20GiB"`` accepted).
3. Plugin sections (``[cache]``, ``[sink]``, ``[inventory]``, ``[[sources]]``,
   ``[downloaders.<kind>]``) are validated against the settings type the plugin registered for
   its ``kind``; an unknown kind is refused with the kinds that are known.

Paths (settings typed :data:`~lakeferry.units.LocalPath`, plugin settings included): a relative
one is relative to the config file's folder, whatever the working directory.

The ``[plugins]`` section is the exception to that order: it decides which plugins load, and
plugin sections can only be validated once they have, so :func:`load_plugins` reads it from
the raw TOML first (same environment references, same key-naming errors) and builds the
registry from it; the whole file is validated afterwards, ``[plugins]`` included. Changing it
needs a restart.
"""

from __future__ import annotations

import contextvars
import os
import re
import socket
import tomllib
import typing
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from lakeferry.errors import ConfigError
from lakeferry.hookspecs import ComponentKind
from lakeferry.paths import check_template
from lakeferry.registry import Registry, load_registry
from lakeferry.units import ByteSize, Duration, LocalPath, dec_hook

Concurrency = Annotated[int, Meta(ge=1, le=100_000)]
Positive = Annotated[int, Meta(ge=1)]
QueueSize = Annotated[int, Meta(ge=0, le=1_000_000)]
Share = Annotated[float, Meta(gt=0, le=1)]
Rate = Annotated[float, Meta(ge=0)]
LogLevel = Literal["debug", "info", "warning", "error"]


class _Section(Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class DaemonConfig(_Section):
    state_dir: LocalPath = "var/lakeferry"
    node: str = ""
    """This machine's name among the VMs that share a Kafka cluster (default: the host name).
    With the process's instance name it makes the static group membership of its consumers."""
    fleet: bool = False
    """One node of a fleet: several VMs on one Kafka cluster share intake, pending, the retry
    rungs, results and the DLQ; what points at this VM's cache (``topics.cached``) is this
    node's alone, ``<topics.cached>.<node>``. Needs ``bus.kind = "kafka"``."""
    shutdown_grace: Duration = Duration(30)
    log_level: LogLevel = "info"
    log_format: Literal["json", "text"] = "json"
    restart_backoff: Duration = Duration(1)
    restart_backoff_max: Duration = Duration(30)
    max_crashes: Positive = 5
    crash_window: Duration = Duration(300)


class EmbeddedBusConfig(_Section):
    path: LocalPath = ""
    """The SQLite file; empty: ``bus.sqlite`` in ``daemon.state_dir``."""
    poll_interval: Duration = Duration(0.05)
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    retention: Duration = Duration(7 * 86400)


ClientValue = str | int | float | bool


class KafkaBusConfig(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    replication_factor: Positive = 1
    retention: Duration = Duration(7 * 86400)
    """retention.ms of the pipeline's topics (the DLQ is compacted and kept)."""
    client: dict[str, ClientValue] = msgspec.field(default_factory=dict)
    """librdkafka settings for every client (security.protocol, sasl.*, ssl.* ...)."""
    producer: dict[str, ClientValue] = msgspec.field(default_factory=dict)
    consumer: dict[str, ClientValue] = msgspec.field(default_factory=dict)
    operation_timeout: Duration = Duration(10)
    """Admin and metadata calls (topic checks, scans) give up after this long."""


class BusConfig(_Section):
    kind: Literal["embedded", "kafka"] = "embedded"
    partitions: Positive = 4
    group: str = "lakeferry"
    embedded: EmbeddedBusConfig = msgspec.field(default_factory=EmbeddedBusConfig)
    kafka: KafkaBusConfig = msgspec.field(default_factory=KafkaBusConfig)


class TopicsConfig(_Section):
    intake: str = "events.raw"
    pending: str = "downloads.pending"
    cached: str = "downloads.cached"
    """In fleet mode the prefix of each node's own: the loaded config names this node's."""
    results: str = "downloads.results"
    backfill: str = "downloads.backfill"
    """The backfill lane's pending tasks (:mod:`lakeferry.stages.lanes`)."""
    dlq: str = "downloads.dlq"
    nodes: str = "lakeferry.nodes"
    """Fleet mode only: every process's heartbeat, compacted (``lakeferry fleet status``)."""


class RetryConfig(_Section):
    delays: list[Duration] = msgspec.field(
        default_factory=lambda: [Duration(300), Duration(600), Duration(1200), Duration(2400)]
    )
    topics: list[str] = msgspec.field(
        default_factory=lambda: ["retry.5m", "retry.10m", "retry.20m", "retry.40m"]
    )


class IngestConfig(_Section):
    concurrency: Concurrency = 4
    max_event_bytes: ByteSize = ByteSize(1 << 20)
    """The largest raw event accepted, from any source and from ``lakeferry submit``; a larger
    one is dead-lettered ``malformed`` (submit refuses it)."""
    events_table: bool = True
    events_batch_rows: Positive = 1000
    events_batch_wait: Duration = Duration(1)


class DownloadConfig(_Section):
    """``[download]``: the download stage; every key applies live on SIGHUP."""

    concurrency: Concurrency = 50
    """Downloads at once, over every origin."""
    queue: QueueSize = 0
    """Tasks the stage holds at once: downloading, or waiting for their origin (a waiting task
    holds no download slot, so other origins keep flowing). At least ``concurrency``; 0: ten
    times ``concurrency``."""
    attempt_timeout: Duration = Duration(3600)
    host_initial: Concurrency = 8
    """Downloads at once a new origin (``host:port``) starts with; its limit then adapts
    (:mod:`lakeferry.stages.origins`), up to ``concurrency`` or its ``host_limits`` entry."""
    host_limits: dict[str, Concurrency] = msgspec.field(default_factory=dict)
    """Pattern (``host``, ``host:port``, ``*`` wildcards) -> the origin's most downloads at once."""
    host_circuit_failures: QueueSize = 5
    """Rounds of setbacks in a row (429s, 5xx with Retry-After, timeouts, refused connections)
    that open an origin's circuit: its downloads wait on the first retry rung, spending no
    attempt. 0: the circuit never opens (each task climbs the ladder on its own)."""
    host_circuit_cooldown: Duration = Duration(30)
    """How long an origin's circuit stays open before one probe (doubling up to 10 minutes)."""
    max_rate: ByteSize = ByteSize(0)
    """Bytes per second over every download (``"100MiB"``); 0: no cap."""
    host_rates: dict[str, ByteSize] = msgspec.field(default_factory=dict)
    """Pattern (as ``host_limits``) -> the origin's bytes per second."""
    backfill_share: Share = 0.5
    """The most of ``concurrency`` the backfill lane holds at once (a fraction, at least one
    slot); it takes a slot only while no live task waits for one."""
    backfill_rate: Rate = 0.0
    """Backfill downloads started per second at most; 0: no cap."""
    backfill_delay: Duration = Duration(0.1)
    """The longest a live file should wait behind backfill files in the stages after download:
    the backfill lane starts nothing new while the files downloaded and not yet recorded (of
    either lane) would take longer than this to drain at the rate files are being recorded."""
    backfill_queue: QueueSize = 0
    """Backfill tasks the stage holds at once (0: twice the lane's slots)."""

    @property
    def room(self) -> int:
        """``queue``, or its default."""
        return self.queue or 10 * self.concurrency

    @property
    def backfill_slots(self) -> int:
        """The backfill lane's share of the download slots (at least one)."""
        return max(1, int(self.concurrency * self.backfill_share))

    @property
    def backfill_room(self) -> int:
        """``backfill_queue``, or its default."""
        return self.backfill_queue or 2 * self.backfill_slots


class UploadConfig(_Section):
    concurrency: Concurrency = 40
    backoff_initial: Duration = Duration(0.5)
    backoff_max: Duration = Duration(60)
    breaker_failures: Positive = 5
    breaker_cooldown: Duration = Duration(10)


class ResultsConfig(_Section):
    batch_rows: Positive = 1000
    batch_wait: Duration = Duration(0.5)


class LedgerConfig(_Section):
    """``[ledger]``: the id ledger in the state folder (:mod:`lakeferry.ledger`)."""

    window: Duration = Duration(86400)
    """How long an event id is remembered: bound to what it first named (a later event with
    the id and another URL, path or sha256 is dead-lettered ``duplicate_id``) and known as
    landed (not fetched again). About 200 bytes of disk per id in the window."""


class MetricsConfig(_Section):
    listen: str = "127.0.0.1:9464"
    """``host:port``; an empty string disables the endpoint."""


class LiveConfig(_Section):
    listen: str = "127.0.0.1:9465"
    """``host:port`` of the live-view WebSocket (``lakeferry top``); ``""`` disables it."""


class ConsoleConfig(_Section):
    listen: str = "127.0.0.1:9466"
    """``host:port`` of the operator console (:mod:`lakeferry.console`); ``""`` disables it.
    Bound anywhere but loopback it needs a token (``LAKEFERRY_CONSOLE_TOKEN``, or the systemd
    credential ``console-token``): the start is refused without one."""


class CommitConfig(_Section):
    interval: Duration = Duration(0.2)
    """How often each stage commits its contiguous completed offsets."""


class PluginsConfig(_Section):
    """``[plugins]``: which entry points of the ``lakeferry`` group load (names, as listed by
    ``lakeferry plugins``). Read before the rest of the file; see :func:`load_plugins`."""

    allow: list[str] = msgspec.field(default_factory=list)
    """When non-empty, only these plugins load — built-ins included (``http``, ``localfs``,
    ``delta`` ... must be listed when used)."""
    block: list[str] = msgspec.field(default_factory=list)
    """These plugins are never imported."""
    required: list[str] = msgspec.field(default_factory=list)
    """Start-up fails, with the traceback, when one of these fails to load; any other plugin
    that fails is left out and reported (log, ``lakeferry plugins``)."""


class Config(_Section):
    """The whole configuration. Plugin sections hold the validated plugin settings objects."""

    daemon: DaemonConfig = msgspec.field(default_factory=DaemonConfig)
    bus: BusConfig = msgspec.field(default_factory=BusConfig)
    topics: TopicsConfig = msgspec.field(default_factory=TopicsConfig)
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)
    ingest: IngestConfig = msgspec.field(default_factory=IngestConfig)
    download: DownloadConfig = msgspec.field(default_factory=DownloadConfig)
    upload: UploadConfig = msgspec.field(default_factory=UploadConfig)
    results: ResultsConfig = msgspec.field(default_factory=ResultsConfig)
    ledger: LedgerConfig = msgspec.field(default_factory=LedgerConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    live: LiveConfig = msgspec.field(default_factory=LiveConfig)
    console: ConsoleConfig = msgspec.field(default_factory=ConsoleConfig)
    commit: CommitConfig = msgspec.field(default_factory=CommitConfig)
    plugins: PluginsConfig = msgspec.field(default_factory=PluginsConfig)
    cache: dict[str, Any] = msgspec.field(default_factory=dict)
    sink: dict[str, Any] = msgspec.field(default_factory=dict)
    inventory: dict[str, Any] = msgspec.field(default_factory=dict)
    sources: list[dict[str, Any]] = msgspec.field(default_factory=list)
    downloaders: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)


class PluginChoice(Struct, frozen=True):
    """A plugin section after validation: its kind and the plugin's settings object."""

    kind: str
    settings: Any
    lane: str = "live"
    """Sources only: the lane of the events it reads (``live`` or ``backfill``)."""


class LoadedConfig(Struct, frozen=True):
    """A validated configuration and the plugin settings it selects."""

    path: str
    core: Config
    cache: PluginChoice
    sink: PluginChoice
    inventory: PluginChoice
    sources: list[PluginChoice]
    downloaders: dict[str, PluginChoice]
    cached_prefix: str = ""
    """``topics.cached`` as configured: in fleet mode ``core.topics.cached`` is this node's
    (``<prefix>.<node>``), and other nodes' are named from this."""

    @property
    def node(self) -> str:
        """``daemon.node``, or the host name when it is not set."""
        return self.core.daemon.node or socket.gethostname()

    @property
    def fleet(self) -> bool:
        return self.core.daemon.fleet

    def cached_topic_of(self, node: str) -> str:
        """A node's cached topic (fleet mode)."""
        return node_topic(self.cached_prefix or self.core.topics.cached, node)

    def group_for(self, consumer: str) -> str:
        """The consumer group of a stage's consumer: ``<bus.group>.<consumer>``; in fleet mode
        the upload stage's is the node's own (``….upload.<node>``), as its topic is."""
        return self.group_of(consumer, self.node)

    def group_of(self, consumer: str, node: str) -> str:
        group = f"{self.core.bus.group}.{consumer}"
        return f"{group}.{node}" if self.fleet and consumer in NODE_SCOPED_GROUPS else group

    @property
    def retry_topics(self) -> list[str]:
        return list(self.core.retry.topics)

    def all_topics(self) -> list[str]:
        """The topics this process needs (in fleet mode: this node's cached topic, and the
        heartbeats)."""
        t = self.core.topics
        fleet = [t.nodes] if self.fleet else []
        return [
            t.intake, t.pending, t.backfill, t.cached, t.results, t.dlq,
            *self.core.retry.topics, *fleet,
        ]  # fmt: skip


NODE_SCOPED_GROUPS = frozenset({"upload"})
"""Consumers of a node's own topic: their group is the node's own in fleet mode."""

NODE_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
"""A node name must be able to end a Kafka topic name."""


def node_topic(prefix: str, node: str) -> str:
    return f"{prefix}.{node}"


_BASE: contextvars.ContextVar[Path] = contextvars.ContextVar("config_base", default=Path("."))
"""The folder relative paths of the config being parsed are relative to."""

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _resolve_env(value: Any, key: str, env: dict[str, str]) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(
                key, f"environment variable {name} is not set (use ${{{name}:-default}})"
            )

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: _resolve_env(v, f"{key}.{k}" if key else k, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env(v, f"{key}[{i}]", env) for i, v in enumerate(value)]
    return value


def _key_from_path(msg: str, prefix: str = "") -> tuple[str, str]:
    """Split msgspec's ``"... - at `$.a.b[0]`"`` into (``prefix.a.b[0]``, ``...``)."""
    m = re.search(r" - at `\$(.*)`$", msg)
    path = m.group(1) if m else ""
    problem = msg[: m.start()] if m else msg
    key = (prefix + path).lstrip(".")
    unknown = re.match(r"Object contains unknown field `(.+)`", problem)
    if unknown:
        key = f"{key}.{unknown.group(1)}".lstrip(".")
        problem = "unknown key"
    return key, problem


def _convert(data: Any, type_: type[Any], prefix: str) -> Any:
    try:
        return msgspec.convert(data, type_, dec_hook=dec_hook, str_keys=True)
    except msgspec.ValidationError as exc:
        key, problem = _key_from_path(str(exc), prefix)
        raise ConfigError(key, problem) from None


def resolve_paths(value: Any, base: Path) -> Any:
    """``value`` (a settings Struct) with every :data:`~lakeferry.units.LocalPath` field made
    absolute against ``base`` (the config file's folder), nested sections and lists too."""
    if not isinstance(value, Struct):
        return value
    hints = typing.get_type_hints(type(value), include_extras=True)
    changes: dict[str, Any] = {}
    for name in value.__struct_fields__:
        current = getattr(value, name)
        marker = _path_marker(hints.get(name))
        if marker is not None and isinstance(current, str):
            changes[name] = _resolve(current, base, marker)
        elif isinstance(current, list) and current:
            item = (
                _path_marker(typing.get_args(hints.get(name))[0])
                if typing.get_args(hints.get(name))
                else None
            )
            if item is not None:
                changes[name] = [
                    _resolve(v, base, item) if isinstance(v, str) else v for v in current
                ]
        elif isinstance(current, Struct):
            changes[name] = resolve_paths(current, base)
    return msgspec.structs.replace(value, **changes) if changes else value


def _path_marker(hint: Any) -> str | None:
    if typing.get_origin(hint) is not typing.Annotated:
        return None
    for meta in typing.get_args(hint)[1:]:
        extra = getattr(meta, "extra", None) or {}
        marker = extra.get("lakeferry")
        if marker in ("local_path", "local_path_or_uri"):
            return str(marker)
    return None


def _resolve(value: str, base: Path, marker: str) -> str:
    if not value or (marker == "local_path_or_uri" and "://" in value):
        return value
    expanded = os.path.expanduser(value)
    if os.path.isabs(expanded):
        return expanded
    return os.path.normpath(base / expanded)


def _plugin(
    registry: Registry, component: ComponentKind, section: dict[str, Any], key: str
) -> PluginChoice:
    data = dict(section)
    kind = data.pop("kind", None)
    if kind is None:
        raise ConfigError(
            f"{key}.kind",
            f"missing (known {component} kinds: {', '.join(sorted(registry.kinds(component)))})",
        )
    if not isinstance(kind, str):
        raise ConfigError(f"{key}.kind", "expected a string")
    try:
        reg = registry.get(component, kind)
    except ConfigError as exc:
        raise ConfigError(f"{key}.kind", exc.problem) from None
    return PluginChoice(kind, resolve_paths(_convert(data, reg.settings_type, key), _BASE.get()))


LANES = ("live", "backfill")
"""The lanes a source's events may take (:mod:`lakeferry.stages.lanes`)."""


def _source(registry: Registry, section: dict[str, Any], key: str) -> PluginChoice:
    """A ``[[sources]]`` table: the plugin's settings, and the ``lane`` every source has."""
    data = dict(section)
    lane = data.pop("lane", "live")
    if lane not in LANES:
        raise ConfigError(f"{key}.lane", f"{lane!r} is not a lane; use one of: {', '.join(LANES)}")
    choice = _plugin(registry, "source", data, key)
    return msgspec.structs.replace(choice, lane=lane)


def _validate_core(core: Config) -> None:
    retry = core.retry
    if not retry.delays:
        raise ConfigError("retry.delays", "at least one rung is required")
    if len(retry.delays) != len(retry.topics):
        raise ConfigError(
            "retry.topics",
            f"has {len(retry.topics)} topics for {len(retry.delays)} delays; "
            "give one topic per delay",
        )
    names = [*msgspec.structs.astuple(core.topics), *retry.topics]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError("topics", f"topic names must differ; repeated: {', '.join(dupes)}")
    if 0 < core.download.queue < core.download.concurrency:
        raise ConfigError(
            "download.queue",
            f"{core.download.queue} is below download.concurrency "
            f"({core.download.concurrency}); make it at least that",
        )
    _validate_plugins(core.plugins)
    listens = (
        ("metrics.listen", core.metrics.listen),
        ("live.listen", core.live.listen),
        ("console.listen", core.console.listen),
    )
    for key, listen in listens:
        if not listen:
            continue
        if not re.fullmatch(r"\[?[0-9A-Za-z.:-]*\]?:\d{1,5}", listen):
            raise ConfigError(key, f"expected host:port, got {listen!r}")
        port = int(listen.rpartition(":")[2])
        if not 0 <= port <= 65535:  # 0: any free port, named in the ready log line
            raise ConfigError(key, f"port {port} of {listen!r} is not between 0 and 65535")


def _validate_plugins(plugins: PluginsConfig) -> None:
    both = sorted(set(plugins.allow) & set(plugins.block))
    if both:
        raise ConfigError("plugins.block", f"also in plugins.allow: {', '.join(both)}")
    if plugins.allow:
        unlisted = sorted(set(plugins.required) - set(plugins.allow))
        if unlisted:
            raise ConfigError("plugins.required", f"not in plugins.allow: {', '.join(unlisted)}")
    clash = sorted(set(plugins.required) & set(plugins.block))
    if clash:
        raise ConfigError("plugins.required", f"also in plugins.block: {', '.join(clash)}")


def parse_config(
    data: dict[str, Any],
    registry: Registry,
    *,
    path: str = "<memory>",
    env: dict[str, str] | None = None,
) -> LoadedConfig:
    """Validate already-parsed TOML data."""
    resolved = _resolve_env(data, "", dict(os.environ) if env is None else env)
    base = Path.cwd() if path == "<memory>" else Path(path).absolute().parent
    token = _BASE.set(base)
    try:
        return _parse(resolved, registry, path)
    finally:
        _BASE.reset(token)


def _parse(resolved: dict[str, Any], registry: Registry, path: str) -> LoadedConfig:
    core: Config = resolve_paths(_convert(resolved, Config, ""), _BASE.get())
    if not core.bus.embedded.path:
        bus_file = os.path.join(core.daemon.state_dir, "bus.sqlite")
        embedded = msgspec.structs.replace(core.bus.embedded, path=bus_file)
        core = msgspec.structs.replace(
            core, bus=msgspec.structs.replace(core.bus, embedded=embedded)
        )
    _validate_core(core)
    cached_prefix = core.topics.cached
    if core.daemon.fleet:
        core = _fleet_core(core)
    for name in ("cache", "sink", "inventory"):
        if not getattr(core, name):
            raise ConfigError(f"{name}.kind", f"the [{name}] section is required")
    sources = [_source(registry, s, f"sources[{i}]") for i, s in enumerate(core.sources)]
    downloaders: dict[str, PluginChoice] = {}
    configured = dict(core.downloaders)
    for kind in registry.kinds("downloader"):
        configured.setdefault(kind, {})
    for kind, settings in configured.items():
        key = f"downloaders.{kind}"
        if not isinstance(settings, dict):
            raise ConfigError(key, "expected a table")
        if kind not in registry.kinds("downloader"):
            known = ", ".join(sorted(registry.kinds("downloader")))
            raise ConfigError(key, f"unknown downloader kind {kind!r} (known: {known})")
        downloaders[kind] = _plugin(registry, "downloader", {"kind": kind, **settings}, key)
    sink = _plugin(registry, "sink", core.sink, "sink")
    template = getattr(sink.settings, "path_template", None)
    if isinstance(template, str):  # the ingest stage renders destinations with it
        try:
            check_template(template)
        except ValueError as exc:
            raise ConfigError("sink.path_template", str(exc)) from None
    return LoadedConfig(
        path=path,
        core=core,
        cache=_plugin(registry, "cache", core.cache, "cache"),
        sink=sink,
        inventory=_plugin(registry, "inventory", core.inventory, "inventory"),
        sources=sources,
        downloaders=downloaders,
        cached_prefix=cached_prefix,
    )


def _fleet_core(core: Config) -> Config:
    """Fleet mode checked, and ``topics.cached`` resolved to this node's topic."""
    if core.bus.kind != "kafka":
        raise ConfigError(
            "daemon.fleet", f'needs bus.kind = "kafka" (a fleet shares one Kafka cluster), '
            f"not {core.bus.kind!r}"
        )  # fmt: skip
    node = core.daemon.node or socket.gethostname()
    if not NODE_NAME.fullmatch(node):
        where = "daemon.node" if core.daemon.node else "daemon.node (the host name)"
        raise ConfigError(
            where, f"{node!r} cannot end a topic name: use 1 to 100 letters, digits, '.', "
            "'_' or '-'"
        )  # fmt: skip
    topics = msgspec.structs.replace(core.topics, cached=node_topic(core.topics.cached, node))
    return msgspec.structs.replace(core, topics=topics)


def _read_toml(p: Path) -> dict[str, Any]:
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read {p}: {exc.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{p} is not valid TOML: {exc}") from None


def load_config(
    path: str | Path, registry: Registry, env: dict[str, str] | None = None
) -> LoadedConfig:
    """Read and validate a TOML file. Raises ConfigError naming the key and the problem."""
    p = Path(path)
    return parse_config(_read_toml(p), registry, path=str(p), env=env)


def plugins_section(data: dict[str, Any], env: dict[str, str] | None = None) -> PluginsConfig:
    """The ``[plugins]`` section of parsed TOML, validated on its own (before the registry)."""
    raw = data.get("plugins", {})
    resolved = _resolve_env(raw, "plugins", dict(os.environ) if env is None else env)
    plugins: PluginsConfig = _convert(resolved, PluginsConfig, "plugins")
    _validate_plugins(plugins)
    return plugins


def load_plugins(path: str | Path, env: dict[str, str] | None = None) -> Registry:
    """The registry the config file at ``path`` asks for: its ``[plugins]`` allow, block and
    required lists applied. Read this first, then :func:`load_config` with the result."""
    section = plugins_section(_read_toml(Path(path)), env)
    return load_registry(allow=section.allow, block=section.block, required=section.required)


LIVE_KEYS = frozenset(
    {
        "daemon.log_level",
        "daemon.shutdown_grace",
        "retry.delays",
        "commit.interval",
        "cache.quota",
        "ledger.window",
    }
)
"""Settings outside the stages that SIGHUP applies to a running daemon; each stage declares its
own (:attr:`lakeferry.stagespec.StageSpec.live_keys`). Everything else needs a restart."""


def _number(value: Any) -> Any:
    if isinstance(value, int | float):  # Duration, ByteSize
        return value.real
    raise NotImplementedError(type(value))


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Struct):
        value = msgspec.to_builtins(value, enc_hook=_number)
    if isinstance(value, dict) and (value or not prefix):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


LIVE_PREFIXES = ("downloaders.",)
"""Downloader settings apply live: new downloads use downloaders built from the new settings."""


def diff(
    old: LoadedConfig, new: LoadedConfig, stage_keys: Collection[str]
) -> tuple[list[str], list[str]]:
    """Changed keys of ``new`` relative to ``old``, split into (live, needs_restart); live
    are :data:`LIVE_KEYS`, ``downloaders.*`` and the stages' ``stage_keys``."""

    def is_live(key: str) -> bool:
        return (
            key in LIVE_KEYS
            or key in stage_keys
            or key.startswith(LIVE_PREFIXES)
            or any(key.startswith(f"{k}.") for k in stage_keys)  # an entry of a live table
        )

    a, b = _flatten(old.core), _flatten(new.core)
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    live = [k for k in changed if is_live(k)]
    restart = [k for k in changed if not is_live(k)]
    return live, restart
