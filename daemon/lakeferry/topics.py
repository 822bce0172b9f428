"""The pipeline's topics on the bus: which must exist, creating them, and drift reports.

``lakeferry topics ensure`` creates the missing topics with the configured partitions (and on
Kafka replication, retention and the DLQ's compaction) and reports existing ones whose settings
differ; it never changes an existing topic (partition counts only grow, and that re-keys
events, so it is the operator's call). The daemon checks at start-up that every topic exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lakeferry.bus.base import Bus, TopicSpec
from lakeferry.config import LoadedConfig
from lakeferry.errors import ConfigError

NODES_SEGMENT_MS = 3_600_000
"""segment.ms of the fleet's heartbeat topic."""


def topic_specs(config: LoadedConfig) -> list[TopicSpec]:
    """Every topic the pipeline uses, with the configured partition count."""
    return [TopicSpec(name, config.core.bus.partitions) for name in config.all_topics()]


def topic_settings(config: LoadedConfig, topic: str) -> dict[str, str]:
    """Broker-side settings lakeferry manages for ``topic`` (buses that have brokers)."""
    if topic == config.core.topics.dlq:
        # Keyed letters and tombstones: compaction keeps the last record of every event.
        return {"cleanup.policy": "compact"}
    if config.fleet and topic == config.core.topics.nodes:
        # Heartbeats keyed by process: compaction keeps the last of each. Kafka compacts only
        # closed segments (a week each by default): an hour keeps what a start-up or `fleet
        # status` scans to a few hundred records per process.
        return {"cleanup.policy": "compact", "segment.ms": str(NODES_SEGMENT_MS)}
    return {
        "cleanup.policy": "delete",
        "retention.ms": str(int(config.core.bus.kafka.retention * 1000)),
    }


@dataclass
class TopicReport:
    created: list[str] = field(default_factory=list)
    ok: list[str] = field(default_factory=list)
    differs: dict[str, list[str]] = field(default_factory=dict)


async def missing_topics(config: LoadedConfig, bus: Bus) -> list[str]:
    existing = await bus.list_topics()
    return [name for name in config.all_topics() if name not in existing]


async def require_topics(config: LoadedConfig, bus: Bus) -> None:
    """Refuse to start when a topic is missing, naming them and the command that fixes it."""
    missing = await missing_topics(config, bus)
    if missing and bus.kind != "embedded":
        raise ConfigError(
            "topics",
            f"missing on the bus: {', '.join(missing)}; create them with "
            f"`lakeferry topics ensure -c {config.path}`",
        )
    if missing:  # the embedded bus is ours: create what it lacks
        await bus.ensure_topics([s for s in topic_specs(config) if s.name in missing])


async def ensure(config: LoadedConfig, bus: Bus) -> TopicReport:
    report = TopicReport()
    specs = topic_specs(config)
    existing = await bus.list_topics()
    missing = [s for s in specs if s.name not in existing]
    if missing:
        await bus.ensure_topics(missing)
        report.created = [s.name for s in missing]
    present = [s for s in specs if s.name in existing]
    described = await bus.describe_topics([s.name for s in present]) if present else {}
    for spec in present:
        problems = []
        if existing[spec.name] != spec.partitions:
            problems.append(f"partitions {existing[spec.name]} (configured {spec.partitions})")
        if spec.name in described:
            actual = described[spec.name]
            for key, want in topic_settings(config, spec.name).items():
                if actual.get(key) != want:
                    problems.append(f"{key}={actual.get(key)} (configured {want})")
        if problems:
            report.differs[spec.name] = problems
        else:
            report.ok.append(spec.name)
    return report
