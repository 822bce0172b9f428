"""The ``lakeferry`` command line: run the daemon, check config, submit, DLQ tools, audit.

Every subcommand that reads a config takes ``-c/--config``; the default is ``$LAKEFERRY_CONFIG``,
else ``etc/lakeferry.toml`` when it exists, else ``/etc/lakeferry/lakeferry.toml``.
Exit codes: 0 success, 1 a check failed (audit found a problem) or an unexpected error (one
line, never a traceback unless ``LAKEFERRY_TRACEBACK=1``), 2 bad usage or bad config, 3 the
daemon gave up after repeated stage crashes. The parser's conventions: :mod:`lakeferry.cliparse`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import trio

from lakeferry import __version__
from lakeferry.cliparse import Parser, command, group, parse
from lakeferry.errors import BusError, ConfigError, PipelineError, StartRefused
from lakeferry.registry import Registry, load_registry

T = TypeVar("T")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CRASHED = 0, 1, 2, 3


def default_config_path() -> str:
    env = os.environ.get("LAKEFERRY_CONFIG")
    if env:
        return env
    if Path("etc/lakeferry.toml").exists():
        return "etc/lakeferry.toml"
    return "/etc/lakeferry/lakeferry.toml"


def _err(message: str) -> None:
    print(f"lakeferry: {message}", file=sys.stderr)


def _registry(path: str) -> Registry:
    """The plugins the config file's ``[plugins]`` section admits (read before the rest)."""
    from lakeferry.config import load_plugins

    return load_plugins(path)


def _load(path: str, registry: Registry | None = None) -> Any:
    from lakeferry.config import load_config

    return load_config(path, registry or _registry(path))


def _with_bus(config: Any, fn: Callable[[Any], Awaitable[T]], needs: Sequence[str] = ()) -> T:
    """Run ``fn(bus)`` on the config's bus (never creating an embedded one). ``needs``: topics
    the command uses; a Kafka cluster that does not answer, or lacks one of them, ends the
    command with one line saying so (within ``bus.kafka.operation_timeout``)."""
    from lakeferry.buses import open_bus

    async def main() -> T:
        bus = await open_bus(config)
        try:
            if bus.kind != "embedded":
                existing = await bus.list_topics()  # also: does the cluster answer at all
                missing = [t for t in needs if t not in existing]
                if missing:
                    raise BusError(
                        f"topic {', '.join(missing)} missing on kafka at "
                        f"{config.core.bus.kafka.bootstrap_servers}; create the topics with "
                        f"`lakeferry topics ensure -c {config.path}`"
                    )
            return await fn(bus)
        finally:
            await bus.aclose()

    return trio.run(main)


# -- run / check-config / plugins ----------------------------------------------------------------


def default_instance(stages: Sequence[str]) -> str:
    """A process's instance name when none is given: its stages (``main`` for all of them)."""
    from lakeferry.stages.catalog import STAGES

    return "main" if tuple(stages) == STAGES else "+".join(stages)


def cmd_run(args: argparse.Namespace) -> int:
    from lakeferry.owner import claim_all, claims_for
    from lakeferry.stages.catalog import STAGES, specs
    from lakeferry.supervisor import run_daemon

    registry = _registry(args.config)
    config = _load(args.config, registry)
    stages: tuple[str, ...] = STAGES
    if args.stages:
        wanted = [s.strip() for s in args.stages.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in STAGES]
        if unknown:
            raise ConfigError(
                "--stages", f"unknown stage(s) {unknown} (stages: {', '.join(STAGES)})"
            )
        if set(wanted) != set(STAGES) and config.core.bus.kind == "embedded":
            raise ConfigError(
                "--stages",
                "the embedded bus runs every stage in one process; "
                'use bus.kind = "kafka" to run stages as separate processes',
            )
        stages = tuple(s for s in STAGES if s in wanted)
    instance = args.instance or os.environ.get("LAKEFERRY_INSTANCE") or default_instance(stages)
    # Before anything else: a second daemon must not touch what the first one owns.
    locks = claim_all(claims_for(config, instance))
    try:
        return run_daemon(config, registry, specs(stages), instance)
    finally:
        for lock in locks:
            lock.release()


def cmd_check_config(args: argparse.Namespace) -> int:
    """Everything a start and a reload check, without opening the bus or the network."""
    from lakeferry.build import check_components

    path = args.file or args.config
    registry = _registry(path)
    config = _load(path, registry)
    trio.run(check_components, config, registry)
    print(f"{path}: ok (bus {config.core.bus.kind}, sink {config.sink.kind}, "
          f"cache {config.cache.kind}, inventory {config.inventory.kind}, "
          f"{len(config.sources)} source(s))")  # fmt: skip
    return EXIT_OK


def cmd_plugins(args: argparse.Namespace) -> int:
    config = args.config
    if config is None:  # the default config's [plugins] lists apply when there is one
        default = default_config_path()
        config = default if Path(default).exists() else None
    registry = _registry(config) if config is not None else load_registry()
    everyone = [*registry.plugins, *registry.skipped]
    if args.json:
        for plugin in everyone:
            print(json.dumps(msgspec.to_builtins(plugin.__dict__)))
        return EXIT_FAILED if registry.failed else EXIT_OK
    width = max((len(p.name) for p in everyone), default=4)
    for p in registry.plugins:
        print(f"{p.name:<{width}}  {p.distribution} {p.version}  {p.module}  {p.path}")
        for item in p.provides:
            print(f"{'':<{width}}    provides {item}")
    for p in registry.skipped:
        status = p.status.replace("_", " ").upper()
        print(f"{p.name:<{width}}  {p.distribution} {p.version}  {p.module}  {p.path}  {status}")
        for line in p.error.splitlines():
            print(f"{'':<{width}}    {line}")
    if config is not None:
        print(f"([plugins] from {config})")
    return EXIT_FAILED if registry.failed else EXIT_OK


# -- submit --------------------------------------------------------------------------------------


def cmd_plugin_new(args: argparse.Namespace) -> int:
    from lakeferry import plugin_template

    try:
        target = plugin_template.write(args.name, args.kind, Path(args.dir))
    except (ValueError, FileExistsError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    print(f"wrote {target}: pip install -e '{target}[test]', then pytest in it")
    return EXIT_OK


def add_plugin_parser(sub: Any) -> None:
    """``lakeferry plugin new NAME --kind KIND [--dir DIR]``: a new plugin package."""
    from lakeferry.plugin_template import KINDS

    psub = group(
        sub,
        "plugin",
        summary="tools for plugin authors",
        examples=["lakeferry plugin new acme --kind downloader"],
    )
    new = command(
        psub,
        "new",
        summary="write a new plugin package from the template",
        description="Write a new plugin package, lakeferry-NAME/, with the plugin, its tests and\n"
        "its entry point; it loads once installed (pip install -e lakeferry-NAME).",
        examples=["lakeferry plugin new acme --kind downloader --dir ~/src"],
    )
    new.add_argument(
        "name", metavar="NAME", help="the kind's name, e.g. acme (package lakeferry-acme)"
    )
    new.add_argument(
        "--kind", required=True, choices=KINDS, help="what the plugin provides: %(choices)s"
    )
    new.add_argument(
        "--dir", default=".", metavar="DIR", help="where to create lakeferry-NAME/ (default: .)"
    )
    new.set_defaults(fn=cmd_plugin_new)


def _progress(total: int, label: str, quiet: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    progress = Progress(
        f"[bold]{label}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=quiet or total < 1,
        transient=False,
    )
    return progress


def cmd_submit(args: argparse.Namespace) -> int:
    from lakeferry import submitcmd
    from lakeferry.admission import admission
    from lakeferry.bus.base import OutgoingRecord
    from lakeferry.retry import LANE_HEADER

    registry = _registry(args.config)
    config = _load(args.config, registry)
    topic = config.core.topics.intake
    try:
        events = submitcmd.events_of(args)
        submitcmd.check(admission(config, registry), events)
    except submitcmd.Refused as exc:
        _err(str(exc))
        return EXIT_USAGE
    lines = [raw for _, raw in events]
    headers = {LANE_HEADER: args.lane.encode()} if args.lane != "live" else {}

    async def send(bus: Any) -> int:
        producer = bus.producer()
        with _progress(len(lines), "submitting", args.quiet or len(lines) < 2) as progress:
            task = progress.add_task("submit", total=len(lines))
            for start in range(0, len(lines), max(1, args.batch)):
                chunk = lines[start : start + max(1, args.batch)]
                records = [
                    OutgoingRecord(topic, raw, submitcmd.key_of(raw), headers) for raw in chunk
                ]
                await producer.send_many(records)
                progress.advance(task, len(chunk))
        return len(lines)

    count = _with_bus(config, send, needs=[topic])
    if not args.quiet:
        lane = f" (lane {args.lane})" if headers else ""
        print(f"submitted {count} event(s) to {topic}{lane}", file=sys.stderr)
    if args.urls and not args.file:
        for raw in lines:
            print(json.loads(raw)["id"])
    return EXIT_OK


# -- dlq -----------------------------------------------------------------------------------------


def cmd_dlq(args: argparse.Namespace) -> int:
    from lakeferry import dlqcmd

    config = _load(args.config)
    try:
        topics = config.core.topics
        needs = (
            [topics.dlq, topics.pending, topics.intake] if args.action == "replay" else [topics.dlq]
        )
        result: int = _with_bus(config, lambda bus: dlqcmd.run(args, bus, topics), needs)
    except dlqcmd.Refused as exc:
        _err(str(exc))
        return EXIT_USAGE
    return result


def cmd_fleet(args: argparse.Namespace) -> int:
    from lakeferry import fleetcmd

    config = _load(args.config)
    needs = [config.core.topics.nodes, config.core.topics.pending] if config.fleet else []
    try:
        result: int = _with_bus(config, lambda bus: fleetcmd.run(args, bus, config), needs)
    except fleetcmd.Refused as exc:
        _err(str(exc))
        return EXIT_USAGE
    return result


# -- top -----------------------------------------------------------------------------------------


def cmd_top(args: argparse.Namespace) -> int:
    from lakeferry.owner import owners
    from lakeferry.top import Unreachable, run_top

    url = args.url
    state_dir = None
    if url and not url.startswith(("ws://", "wss://")):
        _err(f"--url {url}: not a live feed URL (use ws://HOST:PORT/, the daemon's live.listen)")
        return EXIT_USAGE
    if not url:
        config = _load(args.config)
        listen = config.core.live.listen
        if not listen:
            raise ConfigError("live.listen", "the live feed is disabled in this config")
        if listen.endswith(":0"):
            raise ConfigError(
                "live.listen",
                f"{listen} takes any free port, so top cannot know it: pass --url "
                "ws://ADDRESS/ with the live address the daemon's 'ready' log line names",
            )
        url = f"ws://{listen}/"
        state_dir = Path(config.core.daemon.state_dir)
    try:
        return trio.run(lambda: run_top(url, once=args.once))
    except KeyboardInterrupt:
        return EXIT_OK
    except Unreachable as exc:
        message = str(exc)
        if state_dir is not None:
            running = owners(state_dir)
            message += (
                f"; a daemon (pid {', '.join(map(str, running))}) owns {state_dir}: is its "
                "live.listen this one?"
                if running
                else f"; no daemon runs on {state_dir} (start it: lakeferry run -c {args.config})"
            )
        _err(message)
        return EXIT_USAGE


# -- topics --------------------------------------------------------------------------------------


def cmd_topics(args: argparse.Namespace) -> int:
    from lakeferry import topics

    config = _load(args.config)

    async def main(bus: Any) -> int:
        if args.action == "list":
            existing = await bus.list_topics()
            for name in config.all_topics():
                count = existing.get(name)
                ends = await bus.end_offsets(name) if count is not None else {}
                state = f"{count} partitions, {sum(ends.values())} records" if count else "missing"
                print(f"{name:<24} {state}")
            return EXIT_OK
        report = await topics.ensure(config, bus)
        for name in report.created:
            print(f"created   {name} ({config.core.bus.partitions} partitions)")
        for name in report.ok:
            print(f"ok        {name}")
        for name, problems in report.differs.items():
            print(f"DIFFERS   {name}: {'; '.join(problems)}")
        return EXIT_FAILED if report.differs else EXIT_OK

    return _with_bus(config, main)


# -- audit ---------------------------------------------------------------------------------------


def cmd_audit(args: argparse.Namespace) -> int:
    from lakeferry.audit import audit, submitted_ids
    from lakeferry.build import Builder

    registry = _registry(args.config)
    config = _load(args.config, registry)
    submitted: set[str] = set()
    for events_file in args.events or ():
        try:
            submitted |= submitted_ids(Path(events_file))
        except OSError as exc:
            _err(f"--events {events_file}: cannot read it ({exc.strerror or exc})")
            return EXIT_USAGE

    async def main(bus: Any) -> Any:
        builder = Builder(config, registry, owner="audit")
        inventory, sink = builder.inventory(), builder.sink()
        try:
            return await audit(config, bus, inventory, sink, submitted=submitted,
                               verify_sink=not args.no_verify_sink)  # fmt: skip
        finally:
            await inventory.aclose()
            await sink.aclose()

    report = _with_bus(config, main, needs=config.all_topics())
    if args.json:
        print(json.dumps(report.counts()))
    else:
        for key, value in report.counts().items():
            print(f"{key:>20}: {value}")
        if report.lost_ids:
            print(f"{'lost ids':>20}: {', '.join(report.lost_ids)}")
        if report.unrecorded:
            print(f"{'unrecorded files':>20}: {', '.join(report.unrecorded)}")
        if report.temporary:
            print(f"{'temporary files':>20}: {', '.join(report.temporary)}")
    return EXIT_OK if report.ok else EXIT_FAILED


# -- parser --------------------------------------------------------------------------------------


DESCRIPTION = """\
lakeferry moves files named by events into a data lake: it takes events from a bus,
downloads each URL, uploads the file to the sink and records it in the inventory.

Commands that read a config take -c FILE; the default is $LAKEFERRY_CONFIG, else
etc/lakeferry.toml when it exists, else /etc/lakeferry/lakeferry.toml."""

EXIT_CODES = """\
exit codes: 0 success, 1 a check failed (audit found a problem) or an unexpected error,
2 bad usage or config, 3 the daemon gave up after repeated stage crashes.

example:
  lakeferry check-config -c etc/lakeferry.toml && lakeferry run -c etc/lakeferry.toml"""


def build_parser() -> Parser:
    from lakeferry import dlqcmd, fleetcmd, submitcmd

    parser = Parser(
        prog="lakeferry",
        description=DESCRIPTION,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lakeferry {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "-c",
            "--config",
            metavar="FILE",
            default=default_config_path(),
            help="config file (TOML); default here: %(default)s",
        )
        return p

    from lakeferry.stages.catalog import CATALOG

    stage_lines = "".join(f"\n  {spec.name:<9} {spec.summary}" for spec in CATALOG)
    run = with_config(
        command(
            sub,
            "run",
            summary="run the daemon (all stages, or the ones --stages names)",
            description="Run the daemon in the foreground: SIGTERM drains and stops it, SIGHUP\n"
            "reloads the config. With --stages it runs only those stages (one process per\n"
            "stage is the production shape on Kafka). The stages, in event order:" + stage_lines,
            examples=[
                "lakeferry run -c etc/lakeferry.toml",
                "lakeferry run -c /etc/lakeferry/lakeferry.toml --stages download --instance dl-1",
            ],
        )
    )
    run.add_argument(
        "--stages",
        metavar="LIST",
        help=f"comma-separated subset of {','.join(spec.name for spec in CATALOG)} (default: all)",
    )
    run.add_argument(
        "--instance",
        metavar="NAME",
        help="this worker's name among the processes of one VM (default: $LAKEFERRY_INSTANCE, "
        "else its stages); on Kafka it is the worker's static group membership",
    )
    run.set_defaults(fn=cmd_run)

    check = with_config(
        command(
            sub,
            "check-config",
            summary="check a config file as a start would, without opening the bus or the network",
            description="Check a config file with every check that run and a reload (SIGHUP)\n"
            "perform: settings, plugin settings, allow-lists, the path template on a sample\n"
            "event, the retry ladder and the listen addresses. Opens neither bus nor network.",
            examples=["lakeferry check-config -c /etc/lakeferry/lakeferry.toml"],
        )
    )
    check.add_argument(
        "file", nargs="?", metavar="FILE", help="the config file (the same as -c FILE)"
    )
    check.set_defaults(fn=cmd_check_config)

    plugins = command(
        sub,
        "plugins",
        summary="list plugins: where from, what they provide, blocked, shadowed and failed ones",
        examples=["lakeferry plugins", "lakeferry plugins --json | jq .name"],
    )
    plugins.add_argument("--json", action="store_true", help="JSON Lines: one object per plugin")
    plugins.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        default=None,
        help="apply this file's [plugins] allow/block lists (default: the file run would read)",
    )
    plugins.set_defaults(fn=cmd_plugins)
    add_plugin_parser(sub)

    submitcmd.add_parser(sub, with_config, cmd_submit)
    dlqcmd.add_parser(sub, with_config, cmd_dlq)
    fleetcmd.add_parser(sub, with_config, cmd_fleet)

    top = with_config(
        command(
            sub,
            "top",
            summary="live view of a running daemon: rates, in flight, retries, DLQ (q quits)",
            examples=["lakeferry top -c etc/lakeferry.toml", "lakeferry top --once"],
        )
    )
    top.add_argument(
        "--url", metavar="URL", help="live feed URL (default: ws://<live.listen>/ of the config)"
    )
    top.add_argument("--once", action="store_true", help="print one snapshot and exit")
    top.set_defaults(fn=cmd_top)

    tsub = group(
        sub,
        "topics",
        summary="the pipeline's topics on the bus: create them, list them",
        examples=["lakeferry topics ensure -c etc/lakeferry.kafka.toml"],
    )
    for action, text, example in (
        (
            "ensure",
            "create missing topics; report ones whose settings differ",
            "lakeferry topics ensure -c etc/lakeferry.kafka.toml",
        ),
        (
            "list",
            "show each topic's partitions and record count",
            "lakeferry topics list -c etc/lakeferry.toml",
        ),
    ):
        p = with_config(command(tsub, action, summary=text, examples=[example]))
        p.set_defaults(fn=cmd_topics)

    aud = with_config(
        command(
            sub,
            "audit",
            summary="reconcile events against inventory, sink and DLQ (exit 1 on a finding)",
            description="Reconcile every event the bus has seen against the inventory, the sink\n"
            "and the DLQ: lost events, duplicate rows, checksum mismatches, files in the sink\n"
            "the inventory does not know, and temporary files left behind. Exit 1 on a finding.",
            examples=[
                "lakeferry audit -c etc/lakeferry.toml",
                "lakeferry audit --json --events submitted.jsonl | jq .lost",
            ],
        )
    )
    aud.add_argument("--json", action="store_true", help="print the counts as one JSON line")
    aud.add_argument(
        "--events",
        action="append",
        metavar="FILE",
        help="JSONL file of submitted events to include (repeatable)",
    )
    aud.add_argument(
        "--no-verify-sink", action="store_true", help="skip hashing and listing the sink's files"
    )
    aud.set_defaults(fn=cmd_audit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    try:
        code: int = args.fn(args)
    except ConfigError as exc:
        _err(f"config error: {exc}")
        return EXIT_USAGE
    except BusError as exc:
        _err(f"bus error: {exc}")
        return EXIT_USAGE
    except StartRefused as exc:
        _err(str(exc))
        return EXIT_USAGE
    except PipelineError as exc:  # a sink or inventory the tool needs is unavailable
        _err(f"{exc.reason}: {exc}")
        return EXIT_USAGE
    except ValueError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        if _closed_pipe(exc):
            # The reader went away (`lakeferry dlq show | head -1`): stop quietly, and keep the
            # interpreter's last flush of stdout from failing again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_FAILED
        if not isinstance(exc, Exception) or os.environ.get("LAKEFERRY_TRACEBACK"):
            raise
        # A bug, not the operator's mistake: one line that says so instead of a traceback.
        _err(
            f"unexpected error: {type(exc).__name__}: {exc} (a bug in lakeferry: run again "
            "with LAKEFERRY_TRACEBACK=1 to see where, and report it)"
        )
        return EXIT_FAILED
    return code


def _closed_pipe(exc: BaseException) -> bool:
    if isinstance(exc, BrokenPipeError):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_closed_pipe(inner) for inner in exc.exceptions)
    return False


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
