"""Fleet mode: several nodes (VMs) on one Kafka cluster, each with its own cache.

A node's cached messages go to its own topic and are uploaded only by its own upload workers;
a lost node's waiting tasks are evacuated back to pending and land exactly once elsewhere; two
VMs cannot run under one node name.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio

from helpers.daemon import DaemonEnv, harness, origin_events
from helpers.kafka import unique
from helpers.wait import wait_for, wait_until
from lakeferry import fleet
from lakeferry.bus.base import OutgoingRecord, TopicSpec
from lakeferry.bus.kafka import KafkaBus
from lakeferry.config import parse_config
from lakeferry.errors import ConfigError, StartRefused
from lakeferry.messages import (
    CACHED,
    DLQ,
    DOWNLOAD,
    Attempt,
    CachedFile,
    DeadLetter,
    DownloadTask,
    Event,
    utcnow,
)
from lakeferry.registry import load_registry

FAST = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


def node_config(tmp_path: Path, node: str, **daemon: Any) -> Any:
    data = harness.config_dict(tmp_path, kafka="127.0.0.1:1")
    data = harness.fleet_node(data, tmp_path, node)
    data["daemon"].update(daemon)
    return parse_config(data, load_registry(), env={})


# -- config ---------------------------------------------------------------------------------


def test_a_node_has_its_own_cached_topic_and_upload_group(tmp_path: Path) -> None:
    config = node_config(tmp_path, "vm-1")
    assert config.core.topics.cached == "downloads.cached.vm-1"
    assert config.cached_topic_of("vm-2") == "downloads.cached.vm-2"
    assert config.group_for("upload") == "lakeferry.upload.vm-1"
    assert config.group_of("upload", "vm-2") == "lakeferry.upload.vm-2"
    # Everything else is shared by the fleet.
    assert config.group_for("download") == "lakeferry.download"
    assert config.group_for("results") == "lakeferry.results"
    topics = config.all_topics()
    assert {"downloads.cached.vm-1", "lakeferry.nodes", "downloads.pending"} <= set(topics)
    assert "downloads.cached" not in topics


def test_the_heartbeat_topic_is_compacted_in_short_segments(tmp_path: Path) -> None:
    from lakeferry.topics import topic_settings

    config = node_config(tmp_path, "vm-1")
    settings = topic_settings(config, "lakeferry.nodes")
    assert settings["cleanup.policy"] == "compact"
    assert int(settings["segment.ms"]) <= 3_600_000  # else a week of heartbeats to scan
    assert topic_settings(config, "downloads.cached.vm-1")["cleanup.policy"] == "delete"


def test_cell_mode_is_unchanged(tmp_path: Path) -> None:
    config = node_config(tmp_path, "vm-1", fleet=False)
    assert config.core.topics.cached == "downloads.cached"
    assert config.group_for("upload") == "lakeferry.upload"
    assert "lakeferry.nodes" not in config.all_topics()


def test_fleet_mode_is_refused_where_it_cannot_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"daemon\.node.*'vm 1' cannot end a topic name"):
        node_config(tmp_path, "vm 1")
    data = harness.fleet_node(harness.config_dict(tmp_path), tmp_path, "vm-1")
    with pytest.raises(ConfigError, match=r'daemon\.fleet.*needs bus.kind = "kafka"'):
        parse_config(data, load_registry(), env={})


# -- evacuation, on a real broker ------------------------------------------------------------


def cached_file(i: int, *, attempt: int = 0) -> CachedFile:
    history = tuple(
        Attempt(attempt=n, at=utcnow(), stage="download", reason="http_server_error", error="503")
        for n in range(attempt)
    )
    task = DownloadTask(
        event=Event(id=f"ev-{i}", url=f"https://example.org/{i}.bin"),
        received_at=utcnow(),
        attempt=attempt,
        history=history,
        destination=f"ev-{i}/{i}.bin",
    )
    return CachedFile(
        task=task, cache_key=f"key-{i}", size=i, sha256=f"{i:064x}", downloaded_at=utcnow()
    )


async def fleet_bus(kafka_broker: Any, tmp_path: Path) -> tuple[dict[str, Any], Any, KafkaBus]:
    """A fleet's config data (its own topics), the config of node "survivor", and a bus."""
    data = harness.config_dict(
        tmp_path, kafka=kafka_broker.bootstrap,
        namespace=f"{unique('fl')}.",
    )  # fmt: skip
    config = parse_config(harness.fleet_node(data, tmp_path, "survivor"), load_registry(), env={})
    bus = await KafkaBus.open(kafka_broker.bootstrap, consumer=FAST)
    names = [*config.all_topics(), config.cached_topic_of("lost")]
    await bus.ensure_topics([TopicSpec(name, 2) for name in names])
    return data, config, bus


async def test_evacuation_sends_waiting_tasks_back_to_pending_once(
    kafka_broker: Any, tmp_path: Path
) -> None:
    _data, config, bus = await fleet_bus(kafka_broker, tmp_path)
    lost_topic, lost_group = config.cached_topic_of("lost"), config.group_of("upload", "lost")
    with trio.fail_after(120):
        files = [cached_file(i, attempt=i % 3) for i in range(30)]
        await bus.producer().send_many(
            [OutgoingRecord(lost_topic, CACHED.encode(f), f.task.event.id.encode()) for f in files]
            + [OutgoingRecord(lost_topic, b"{not a cached file", b"junk")]
        )
        # The lost node had uploaded one record: its group committed past it.
        consumer = bus.consumer(lost_group, [lost_topic])
        first = await consumer.next()
        await consumer.commit({first.tp: first.offset + 1})
        # While a member of its upload group lives, the node may still be uploading.
        with pytest.raises(fleet.NodeAlive, match="live upload member"):
            await fleet.evacuation_plan(config, bus, "lost")
        await consumer.aclose()  # a dynamic member: it leaves the group at once
        plan, waiting = await fleet.evacuation_plan(config, bus, "lost")
        assert (plan.waiting, len(plan.malformed)) == (29, 1)
        await fleet.evacuate(config, bus, plan, waiting)

        moved = [DOWNLOAD.decode(r.value) async for r in bus.scan(config.core.topics.pending)]
        expected = {f.task.event.id: f.task for f in files if f.task.event.id != _id(first)}
        assert sorted(t.event.id for t in moved) == sorted(expected)
        for task in moved:  # attempts and history kept, nothing else changed
            assert task == expected[task.event.id]
        letters = [DLQ.decode(r.value) async for r in bus.scan(config.core.topics.dlq)]
        assert [(x.reason, x.raw) for x in letters if isinstance(x, DeadLetter)] == [
            ("malformed", b"{not a cached file")
        ]
        # The node's group is past everything: a second run (or the node coming back) has
        # nothing left to move.
        again, _ = await fleet.evacuation_plan(config, bus, "lost")
        assert (again.waiting, again.malformed) == (0, [])
        ends = await bus.end_offsets(lost_topic)
        assert await bus.committed(lost_group, lost_topic) == ends
    await bus.aclose()


def _id(record: Any) -> str:
    return str(CACHED.decode(record.value).task.event.id)


async def test_a_node_with_a_fresh_heartbeat_is_not_evacuated_or_doubled(
    kafka_broker: Any, tmp_path: Path
) -> None:
    data, config, bus = await fleet_bus(kafka_broker, tmp_path)
    beat = fleet.Heartbeat(
        node="lost", instance="main", home="elsewhere:/var/lib/lakeferry", pid=1,
        stages=("download", "upload"), at=utcnow(),
    )  # fmt: skip
    record = OutgoingRecord(
        config.core.topics.nodes, fleet.HEARTBEAT.encode(beat), fleet.heartbeat_key("lost", "main")
    )
    # This VM, configured as node "lost" (its own state folder: another home).
    lost = parse_config(harness.fleet_node(data, tmp_path, "lost"), load_registry(), env={})
    with trio.fail_after(60):
        await bus.producer().send_many([record])
        with pytest.raises(fleet.NodeAlive, match="heartbeat"):
            await fleet.evacuation_plan(config, bus, "lost")
        with pytest.raises(StartRefused, match="'lost' is in use by a live lakeferry"):
            await fleet.refuse_taken_node(lost, bus)
        # Once that process said it stopped, the name is free and the node is not live.
        stopped = msgspec.structs.replace(beat, stopping=True)
        await bus.producer().send_many([record._replace(value=fleet.HEARTBEAT.encode(stopped))])
        await fleet.refuse_taken_node(lost, bus)
        statuses = {s.node: s for s in await fleet.fleet_status(config, bus)}
        assert (statuses["lost"].stopped, statuses["lost"].live) == (True, False)
        assert statuses["lost"].cached_backlog == 0
    await bus.aclose()


# -- whole daemons ----------------------------------------------------------------------------


class Fleet:
    """Nodes of one fleet on ``env``'s broker and topics, sharing its sink and inventory."""

    def __init__(self, env: DaemonEnv) -> None:
        self.env = env
        self.consoles: dict[str, str] = {}
        """Each started node's console address (its last started process's)."""

    def config(self, node: str) -> Path:
        return harness.write_config(
            self.env.root / f"{node}.toml", harness.fleet_node(self.env.data, self.env.root, node)
        )

    def start(self, node: str, stages: str | None = None, instance: str = "main") -> Any:
        config = self.config(node)
        assert harness.cli(config, "topics", "ensure").returncode == 0
        daemon = harness.DaemonProcess(
            config, self.env.root / f"{node}-{instance}.log", stages=stages, instance=instance
        )
        self.env.daemons.append(daemon)
        daemon.start()
        self.consoles[node] = daemon.address("console")
        return daemon

    def status(self, node: str) -> dict[str, dict[str, Any]]:
        result = harness.cli(self.config(node), "fleet", "status", "--json")
        assert result.returncode == 0, result.stderr
        return {s["node"]: s for s in map(json.loads, result.stdout.splitlines())}


@pytest.mark.slow
def test_a_lost_nodes_cached_work_lands_once_elsewhere(kafka_env: DaemonEnv, origin: Any) -> None:
    """Node a downloads but never uploads (its upload worker is the one that died with it);
    node b runs everything. b's uploads never receive a's cached messages: a's files wait in
    a's cached topic. Then a is killed (SIGKILL) and evacuated: b fetches them again and
    everything lands exactly once."""
    env, nodes = kafka_env, Fleet(kafka_env)
    env.data["sources"] = []
    env.write()
    a = nodes.start("a", stages="ingest,download", instance="a-dl")
    events = origin_events(origin, "fleet", 60)
    batch = env.submit_events(events)
    wait_for(
        lambda: nodes.status("a")["a"]["cached_backlog"],
        lambda n: n == 60,
        timeout=120,
        what="node a to download everything",
    )
    b = nodes.start("b")
    # b's upload workers are up and work; a's cached messages are not theirs.
    more = env.submit_events(origin_events(origin, "fleet-b", 10))
    env.wait_settled(more, landed=10, timeout=120, what="node b to land its own events")
    status = nodes.status("b")
    assert (status["a"]["cached_backlog"], status["b"]["cached_backlog"]) == (60, 0)
    assert (status["a"]["live"], status["b"]["live"]) == (True, True)
    # The console of any node shows every node.
    page = httpx.get(f"http://{nodes.consoles['b']}/").text
    rows = page.split('id="nodes"')[1]
    assert '<tr data-node="a">' in rows
    assert '<tr data-node="b">' in rows
    a_row = rows.split('<tr data-node="a">')[1].split("</tr>")[0]
    assert ">live<" in a_row
    assert '<td class="num">60</td>' in a_row
    # a refuses to be evacuated while alive; then it dies for good.
    refused = harness.cli(nodes.config("b"), "fleet", "evacuate", "a", "--yes")
    assert refused.returncode == 2
    assert "heartbeat" in refused.stderr
    a.kill()
    dry = harness.cli(nodes.config("b"), "fleet", "evacuate", "a", "--dry-run", "--force")
    assert dry.returncode == 0, dry.stderr
    assert "would move 60 task(s)" in dry.stdout
    unasked = harness.cli(nodes.config("b"), "fleet", "evacuate", "a", "--force")
    assert unasked.returncode == 2
    assert "add --yes" in unasked.stderr
    moved = harness.cli(nodes.config("b"), "fleet", "evacuate", "a", "--force", "--yes")
    assert moved.returncode == 0, moved.stderr
    assert "moved 60 task(s)" in moved.stdout
    counts = env.wait_settled(batch, more, landed=70, timeout=180, what="a's work to land on b")
    assert (counts["lost"], counts["duplicate_rows"], counts["checksum_mismatches"]) == (0, 0, 0)
    code, _ = env.audit(batch, more)
    assert code == 0
    assert nodes.status("b")["a"]["cached_backlog"] == 0
    assert b.alive()


@pytest.mark.slow
def test_two_vms_cannot_run_under_one_node_name(kafka_env: DaemonEnv, origin: Any) -> None:
    env, nodes = kafka_env, Fleet(kafka_env)
    env.data["sources"] = []
    env.write()
    nodes.start("twin", stages="ingest")
    wait_until(lambda: nodes.status("other").get("twin", {}).get("live"), timeout=60,
               what="twin's first heartbeat")  # fmt: skip
    # Another state folder (another VM's cache) under the same name.
    data = harness.fleet_node(env.data, env.root / "elsewhere", "twin")
    config = harness.write_config(env.root / "twin-elsewhere.toml", data)
    daemon = harness.DaemonProcess(config, env.root / "twin-elsewhere.log", instance="other")
    env.daemons.append(daemon)
    daemon.start(wait_ready=0)
    assert daemon.wait(60) == 2
    assert "node name 'twin' is in use by a live lakeferry" in daemon.tail()
    assert "give this VM its own [daemon] node" in daemon.tail()


def test_heartbeat_age_decides_liveness() -> None:
    now = utcnow()
    beat = fleet.Heartbeat(node="n", instance="i", home="h", pid=1, stages=(), at=now)
    assert fleet.is_live(beat, now + dt.timedelta(seconds=fleet.LIVE_WITHIN - 1))
    assert not fleet.is_live(beat, now + dt.timedelta(seconds=fleet.LIVE_WITHIN))
    stopping = fleet.Heartbeat(node="n", instance="i", home="h", pid=1, stages=(), at=now,
                               stopping=True)  # fmt: skip
    assert not fleet.is_live(stopping, now)
