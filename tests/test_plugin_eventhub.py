"""The ``eventhub`` source against the Event Hubs emulator, with its checkpoints on Azurite.

The source runs the real azure-eventhub SDK (sync ``EventHubConsumerClient`` with a
``BlobCheckpointStore``) against ``tools/eventhubs_emulator.py``; a recording Intake is the
boundary. ``helpers.eventhub.source_for`` builds the sources, balancing load every 0.3 s (10 s by
default) so that two instances rebalance within a test.
"""

from __future__ import annotations

import functools
import logging
import re
import time
import tomllib
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
import trio
from azure.storage.blob import ContainerClient

import lakeferry_eventhub
from helpers.eventhub import source_for
from helpers.tools import load_tool
from helpers.wait import wait_for_async, wait_until_async
from lakeferry.api import ConfigError, PluginContext, RawEvent, Source
from lakeferry.config import parse_config
from lakeferry.registry import load_registry
from lakeferry.units import dec_hook
from lakeferry_eventhub import EventHubSource, EventHubSourceSettings
from lakeferry_eventhub.settings import Secrets

ROOT = Path(__file__).resolve().parents[1]
if TYPE_CHECKING:
    import eventhubs_emulator as emulator_tool  # tools/ is on mypy's path: the checker reads it
else:
    emulator_tool = load_tool("eventhubs_emulator")
TIMEOUT = 20


class RecordingIntake:
    """Records every published batch; holds chosen calls open until released, or fails one."""

    def __init__(self, *, hold: Sequence[int] = (), fail_call: int | None = None) -> None:
        self.batches: list[list[RawEvent]] = []
        self.calls = 0
        self.fail_call = fail_call
        self.holding = {call: trio.Event() for call in hold}
        self.release = {call: trio.Event() for call in hold}

    async def publish(self, events: Sequence[RawEvent]) -> None:
        self.calls += 1
        call = self.calls
        if call == self.fail_call:
            raise RuntimeError("the bus is down")
        if call in self.holding:
            self.holding[call].set()
            await self.release[call].wait()
        self.batches.append(list(events))

    @property
    def events(self) -> list[RawEvent]:
        return [event for batch in self.batches for event in batch]

    def bodies(self) -> list[bytes]:
        return [e.data for e in self.events]


def positions(events: Sequence[RawEvent]) -> list[tuple[str, int]]:
    """(partition, sequence number) of each event, from its origin."""
    found = []
    for event in events:
        m = re.fullmatch(r"eventhub:[^/]+/(\d+)/(\d+)", event.origin)
        assert m is not None, event.origin
        found.append((m.group(1), int(m.group(2))))
    return found


@pytest.fixture
def hub() -> Iterator[Callable[[int], Any]]:
    """Start an emulator with a hub of the given number of partitions (stopped afterwards)."""
    started: list[Any] = []

    def start(partitions: int) -> Any:
        emulator = emulator_tool.start(hub=f"hub-{uuid.uuid4().hex[:8]}", partitions=partitions)
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        emulator.stop()


@pytest.fixture
def container(azurite: Any) -> str:
    return f"checkpoints-{uuid.uuid4().hex[:12]}"


async def in_thread(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Blocking helpers off the trio thread: the source under test needs it."""
    return await trio.to_thread.run_sync(functools.partial(function, *args, **kwargs))


def _blobs(azurite: Any, container: str, kind: str) -> dict[str, dict[str, str]]:
    client = ContainerClient.from_connection_string(azurite.connection_string, container)
    with client:
        if not client.exists():
            return {}
        return {
            blob.name.rsplit("/", 1)[1]: dict(blob.metadata or {})
            for blob in client.list_blobs(include=["metadata"])
            if f"/{kind}/" in blob.name
        }


async def checkpoints(azurite: Any, container: str) -> dict[str, int]:
    """The checkpointed sequence number of each partition."""
    found = await in_thread(_blobs, azurite, container, "checkpoint")
    return {p: int(meta["sequencenumber"]) for p, meta in found.items()}


async def owners(azurite: Any, container: str) -> dict[str, str]:
    """The owner id of each partition ('' when released)."""
    found = await in_thread(_blobs, azurite, container, "ownership")
    return {p: meta.get("ownerid") or "" for p, meta in found.items()}


async def wait_for_checkpoints(azurite: Any, container: str, expected: dict[str, int]) -> None:
    await wait_for_async(
        lambda: checkpoints(azurite, container),
        lambda found: found == expected,
        timeout=TIMEOUT,
        what=f"checkpoints {expected}",
    )


async def send(emulator: Any, partition: str, bodies: list[bytes]) -> None:
    await in_thread(emulator.send, partition, bodies)


# -- settings ------------------------------------------------------------------------------------


def convert(**values: Any) -> EventHubSourceSettings:
    return msgspec.convert(values, EventHubSourceSettings, dec_hook=dec_hook)


def test_registers_the_eventhub_kind_and_checks_settings() -> None:
    calls: list[tuple[str, Any, Any]] = []
    lakeferry_eventhub.lakeferry_register_sources(register=lambda *args: calls.append(args))
    [(kind, factory, settings_type)] = calls
    assert (kind, settings_type) == ("eventhub", EventHubSourceSettings)

    settings = convert(
        eventhub_name="hub",
        fully_qualified_namespace="ns.example",
        checkpoint_blob_url="https://acct.blob.example",
        checkpoint_container="cp1",
        max_wait_time="250ms",
    )
    assert settings.max_wait_time == 0.25
    assert (settings.consumer_group, settings.max_batch_size, settings.starting_position) == (
        "$Default",
        300,
        "earliest",
    )
    assert settings.identity == "default"
    assert settings.load_balancing_interval == 10.0
    assert settings.ownership_expiration == 60
    assert settings.create_checkpoint_container is False
    source: Source = factory(settings, PluginContext(Path("x"), logging.getLogger("t")))
    assert source.name == "eventhub:hub"

    with_string = convert(
        eventhub_name="hub",
        connection_string_env="CS",
        checkpoint_connection_string_env="ST",
        checkpoint_container="cp1",
    )
    assert with_string.identity == "connection_string"
    assert float(with_string.max_wait_time) == 0.0  # hand over what has arrived at once

    def refused(**values: Any) -> str:
        values = {
            "eventhub_name": "hub",
            "fully_qualified_namespace": "ns.example",
            "checkpoint_blob_url": "https://acct.blob.example",
            "checkpoint_container": "cp1",
            **values,
        }
        with pytest.raises(msgspec.ValidationError) as info:
            convert(**values)
        return str(info.value)

    assert "unknown field" in refused(topic="t")
    assert "credential" in refused(credential="sas")
    assert "connection_string_env" in refused(credential="connection_string")
    assert "fully_qualified_namespace" in refused(fully_qualified_namespace="")
    assert "checkpoint_blob_url" in refused(checkpoint_blob_url="")
    assert "checkpoint_container" in refused(checkpoint_container=" ")
    assert "eventhub_name" in refused(eventhub_name="")
    assert "starting_position" in refused(starting_position="beginning")
    assert ">= 1" in refused(max_batch_size=0)
    assert "max_wait_time" in refused(max_wait_time=-1)
    assert "longer than" in refused(
        load_balancing_interval="10s", partition_ownership_expiration_interval="5s"
    )


def test_secrets_come_from_the_environment_and_stay_out_of_reprs() -> None:
    settings = convert(
        eventhub_name="hub",
        fully_qualified_namespace="ns.example",
        credential="service_principal",
        checkpoint_connection_string_env="ST",
        checkpoint_container="cp1",
    )
    env = {
        "AZURE_TENANT_ID": "t",
        "AZURE_CLIENT_ID": "c",
        "AZURE_CLIENT_SECRET": "s3cret",
        "ST": "storage-secret",
    }
    secrets = Secrets.from_environment(settings, env)
    assert secrets.service_principal == ("t", "c", "s3cret")
    assert secrets.checkpoint_connection_string == "storage-secret"
    assert secrets.eventhub_connection_string is None
    assert "s3cret" not in repr(secrets)
    with pytest.raises(ConfigError, match="AZURE_CLIENT_SECRET is not set") as info:
        Secrets.from_environment(settings, {**env, "AZURE_CLIENT_SECRET": ""})
    assert info.value.key == "client_secret_env"
    with pytest.raises(ConfigError, match="ST is not set"):
        Secrets.from_environment(settings, {k: v for k, v in env.items() if k != "ST"})


def readme_eventhub_sources() -> list[str]:
    blocks = re.findall(r"```toml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [b for b in blocks if 'kind = "eventhub"' in b]


def test_the_documented_configs_are_valid() -> None:
    base = tomllib.loads((ROOT / "etc" / "lakeferry.toml").read_text())
    registry = load_registry()
    env = {
        "EVENTHUB_NAMESPACE": "ns.servicebus.windows.net",
        "CHECKPOINT_ACCOUNT": "acct",
    }
    blocks = readme_eventhub_sources()
    assert blocks, "README.md documents the eventhub source"
    docstring = lakeferry_eventhub.__doc__ or ""
    blocks += re.findall(r"::\n\n((?:    .*\n|\n)+)", docstring)
    assert len(blocks) >= 3
    for block in blocks:
        text = "\n".join(line.removeprefix("    ") for line in block.splitlines())
        base["sources"] = tomllib.loads(text)["sources"]
        loaded = parse_config(base, registry, env=env)
        [choice] = loaded.sources
        assert choice.kind == "eventhub"
        assert choice.settings.consumer_group == "lakeferry"


# -- against the emulator ------------------------------------------------------------------------


async def test_events_reach_the_intake_with_origins_and_are_checkpointed(
    hub: Callable[[int], Any], azurite: Any, container: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = hub(2)
    await send(emulator, "0", [b"p0-%d" % i for i in range(10)])
    await send(emulator, "1", [b"p1-%d" % i for i in range(5)])
    source = source_for(emulator, azurite, container, monkeypatch, max_batch_size=4)
    assert source.name == f"eventhub:{emulator.hub_name}"
    intake = RecordingIntake()

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(source.run, intake)
            await wait_until_async(
                lambda: len(intake.events) >= 15, timeout=TIMEOUT, what="15 events"
            )
            await send(emulator, "1", [b"p1-5"])  # arrives while receiving
            await wait_until_async(
                lambda: len(intake.events) >= 16, timeout=TIMEOUT, what="the 16th event"
            )
            await wait_for_checkpoints(azurite, container, {"0": 9, "1": 5})
            cancelled_at = time.monotonic()
            nursery.cancel_scope.cancel(reason="test done")
        took = time.monotonic() - cancelled_at

    assert len(intake.events) == 16
    assert all(1 <= len(batch) <= 4 for batch in intake.batches)
    assert all(len({p for p, _ in positions(batch)}) == 1 for batch in intake.batches)
    for partition, count in (("0", 10), ("1", 6)):
        mine = [e for e in intake.events if positions([e])[0][0] == partition]
        assert [e.data for e in mine] == [b"p%s-%d" % (partition.encode(), i) for i in range(count)]
        assert [e.origin for e in mine] == [
            f"eventhub:{emulator.hub_name}/{partition}/{i}" for i in range(count)
        ]
    assert took < 8, f"shutdown took {took:.1f}s"
    # Shutdown released the partitions for the other instances.
    assert set((await owners(azurite, container)).values()) <= {""}


async def test_checkpoints_are_written_only_after_publish_returned(
    hub: Callable[[int], Any], azurite: Any, container: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = hub(1)
    await send(emulator, "0", [b"%d" % i for i in range(9)])
    intake = RecordingIntake(hold=(1, 2))
    source = source_for(emulator, azurite, container, monkeypatch, max_batch_size=3)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(source.run, intake)
            # The first publish has not returned: no checkpoint at all, however long it takes.
            await intake.holding[1].wait()
            assert await checkpoints(azurite, container) == {}
            await trio.sleep(0.5)  # time passes, publish still held: still no checkpoint
            assert await checkpoints(azurite, container) == {}
            intake.release[1].set()
            # The second batch is being published: the checkpoint stays after the first.
            await intake.holding[2].wait()
            assert await checkpoints(azurite, container) == {"0": 2}
            await trio.sleep(0.5)  # time passes, publish still held: the checkpoint stays
            assert await checkpoints(azurite, container) == {"0": 2}
            intake.release[2].set()
            await wait_for_checkpoints(azurite, container, {"0": 8})
            nursery.cancel_scope.cancel(reason="test done")
    assert intake.bodies() == [b"%d" % i for i in range(9)]


async def test_a_restarted_source_resumes_after_the_last_checkpoint(
    hub: Callable[[int], Any], azurite: Any, container: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = hub(1)
    await send(emulator, "0", [b"%d" % i for i in range(12)])

    # Shut down while the third batch is being published: it is not checkpointed.
    first = RecordingIntake(hold=(3,))
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            source = source_for(emulator, azurite, container, monkeypatch, max_batch_size=3)
            await nursery.start(source.run, first)
            await first.holding[3].wait()
            nursery.cancel_scope.cancel(reason="shutdown")
    assert first.bodies() == [b"%d" % i for i in range(6)]
    assert await checkpoints(azurite, container) == {"0": 5}

    # A new instance resumes after the checkpoint: the abandoned batch again, nothing lost.
    second = RecordingIntake()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            source = source_for(emulator, azurite, container, monkeypatch, max_batch_size=3)
            await nursery.start(source.run, second)
            await wait_until_async(
                lambda: len(second.events) >= 6, timeout=TIMEOUT, what="six events"
            )
            await wait_for_checkpoints(azurite, container, {"0": 11})
            nursery.cancel_scope.cancel(reason="test done")
    assert second.bodies() == [b"%d" % i for i in range(6, 12)]


async def test_a_failing_publish_propagates_and_checkpoints_nothing(
    hub: Callable[[int], Any], azurite: Any, container: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = hub(1)
    await send(emulator, "0", [b"a", b"b"])
    source = source_for(emulator, azurite, container, monkeypatch)
    with trio.fail_after(TIMEOUT), pytest.raises(ExceptionGroup) as info:
        await source.run(RecordingIntake(fail_call=1))
    assert info.group_contains(RuntimeError, match="the bus is down")
    assert await checkpoints(azurite, container) == {}


async def _publish_delay(intake: RecordingIntake, emulator: Any, partition: str) -> float:
    """Seconds from appending one event to ``partition`` until it was published."""
    wanted = len(intake.events) + 1
    sent = time.monotonic()
    await send(emulator, partition, [b"now"])
    await wait_until_async(lambda: len(intake.events) >= wanted, timeout=TIMEOUT, what="the event")
    return time.monotonic() - sent


async def _publish_delays(source: EventHubSource, emulator: Any, partitions: int) -> list[float]:
    """Seconds from appending one event to a partition until the source published it, for one
    event per partition in turn, once the source owns (and has heard from) every partition."""
    intake = RecordingIntake()
    delays = []
    with trio.fail_after(TIMEOUT * 3):
        async with trio.open_nursery() as nursery:
            await nursery.start(source.run, intake)
            for partition in range(partitions):
                await send(emulator, str(partition), [b"warm"])
            await wait_until_async(
                lambda: len(intake.events) >= partitions, timeout=TIMEOUT, what="warm-up events"
            )
            for partition in range(partitions):
                delays.append(await _publish_delay(intake, emulator, str(partition)))
            nursery.cancel_scope.cancel(reason="measured")
    return sorted(delays)


async def test_an_event_is_published_without_waiting_on_the_other_partitions(
    hub: Callable[[int], Any], azurite: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The synchronous SDK listens on each partition it owns in turn, each for its socket
    timeout (0.2 s by default), and with a ``max_wait_time`` it holds a batch until that wait
    is over: an event on a quiet hub waited for every other partition's listen. Measured
    against the SDK's defaults in the same run, not against a clock."""
    partitions = 8
    emulator = hub(partitions)
    ours = await _publish_delays(
        source_for(emulator, azurite, f"cp-{uuid.uuid4().hex[:12]}", monkeypatch),
        emulator, partitions,
    )  # fmt: skip
    monkeypatch.setattr(lakeferry_eventhub.source, "SOCKET_TIMEOUT", 0.2)  # the SDK's own
    emulator = hub(partitions)
    sdk = await _publish_delays(
        source_for(
            emulator, azurite, f"cp-{uuid.uuid4().hex[:12]}", monkeypatch, max_wait_time=1.0
        ),
        emulator, partitions,
    )  # fmt: skip
    median = partitions // 2
    assert ours[median] * 2 < sdk[median], (ours, sdk)


async def test_two_instances_share_partitions_and_one_takes_over_from_the_other(
    hub: Callable[[int], Any], azurite: Any, container: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = hub(4)
    partitions = ["0", "1", "2", "3"]
    sent: list[bytes] = []

    async def feed(prefix: str, count: int, pause: float) -> None:
        for i in range(count):
            body = b"%s-%d" % (prefix.encode(), i)
            await send(emulator, partitions[i % 4], [body])
            sent.append(body)
            await trio.sleep(pause)  # a producer's pace: events keep coming during a rebalance

    async def run_in(
        scope: trio.CancelScope,
        done: trio.Event,
        source: EventHubSource,
        intake: RecordingIntake,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            with scope:
                await source.run(intake, task_status=task_status)
        finally:
            done.set()

    a, b = RecordingIntake(), RecordingIntake()
    a_scope, a_done = trio.CancelScope(), trio.Event()
    with trio.fail_after(45):
        async with trio.open_nursery() as nursery:
            await feed("before", 20, 0)
            a_source = source_for(emulator, azurite, container, monkeypatch, max_batch_size=5)
            await nursery.start(run_in, a_scope, a_done, a_source, a)
            await wait_until_async(
                lambda: len(a.events) >= 20, timeout=TIMEOUT, what="A's 20 events"
            )

            # B joins while events keep coming: the partitions are rebalanced under load.
            nursery.start_soon(feed, "during", 60, 0.03)
            b_source = source_for(emulator, azurite, container, monkeypatch, max_batch_size=5)
            await nursery.start(run_in, trio.CancelScope(), trio.Event(), b_source, b)
            await wait_until_async(lambda: len(sent) == 80, timeout=TIMEOUT, what="the feed")
            await wait_for_async(
                lambda: owners(azurite, container),
                lambda found: sorted(Counter(found.values()).values()) == [2, 2],
                timeout=TIMEOUT,
                what="two partitions owned by each instance",
            )
            await wait_until_async(
                lambda: set(a.bodies()) | set(b.bodies()) == set(sent),
                timeout=TIMEOUT,
                what="every event sent so far to be published",
            )
            assert b.events, "the second instance never got a partition"
            # Settle: every partition checkpointed up to its last event.
            last = {p: len(emulator.events(p)) - 1 for p in partitions}
            await wait_for_checkpoints(azurite, container, last)
            assert any(body.startswith(b"during") for body in a.bodies()), "A kept nothing"

            # A stops: it releases its partitions, B takes them over from their checkpoints.
            shared_phase = len(b.events)
            a_scope.cancel(reason="instance A stops")
            await a_done.wait()
            await feed("after", 20, 0)
            await wait_until_async(
                lambda: set(a.bodies()) | set(b.bodies()) == set(sent),
                timeout=TIMEOUT,
                what="B to publish the events sent after A stopped",
            )
            shares = Counter((await owners(azurite, container)).values())
            assert list(shares.values()) == [4], shares
            await wait_for_checkpoints(
                azurite, container, {p: len(emulator.events(p)) - 1 for p in partitions}
            )
            nursery.cancel_scope.cancel(reason="test done")

    # B resumed each taken-over partition right after its checkpoint: nothing read again.
    for partition in partitions:
        taken = [s for p, s in positions(b.events[shared_phase:]) if p == partition]
        assert taken == list(range(last[partition] + 1, last[partition] + 1 + len(taken)))
    published = a.bodies() + b.bodies()
    duplicates = len(published) - len(set(published))
    print(f"two instances: {len(sent)} events, {duplicates} published twice at the handovers")
    assert set(published) == set(sent), "lost events"
    assert duplicates <= 2 * 5 * 4, "more than a batch per partition and handover"
