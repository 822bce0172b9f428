"""The ``eventhub`` source: events of a consumer group, checkpointed in blobs once published.

The azure-eventhub SDK's async API is asyncio; lakeferry runs trio. So the source runs the SDK's
*synchronous* ``EventHubConsumerClient`` in one worker thread: its ``receive_batch`` claims
partitions through the blob checkpoint store (load balancing against every other instance of
the same consumer group) and calls back, in that thread, with one partition's batch at a time.
The callback hands the batch to a trio task and blocks until the intake has published it; only
then does it write the partition's checkpoint. Three phases per batch, strictly in turn:
**receive** (SDK thread) → **publish** (trio) → **checkpoint** (SDK thread).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from azure.core.credentials import TokenCredential
from azure.core.exceptions import ResourceExistsError
from azure.eventhub import EventData, EventHubConsumerClient, PartitionContext
from azure.eventhub.amqp import AmqpMessageBodyType
from azure.eventhub.extensions.checkpointstoreblob import BlobCheckpointStore
from azure.identity import ClientSecretCredential, DefaultAzureCredential
from azure.storage.blob import ContainerClient

from lakeferry.api import Intake, PluginContext, RawEvent
from lakeferry_eventhub.ownership import ReleasingCheckpointStore
from lakeferry_eventhub.settings import EventHubSourceSettings, Secrets

CLOSE_TIMEOUT = 5.0
CLOSE_TIMEOUT_PER_PARTITION = 1.5
"""Longest wait, on shutdown, for the SDK to stop receiving and release its partitions: the
SDK closes the receivers one by one, each joining a keep-alive thread that sleeps up to 1 s."""
REPORT_INTERVAL = 60.0
"""The same SDK problem is logged at most once per this many seconds."""
STARTING_POSITIONS = {"earliest": "-1", "latest": "@latest"}
SOCKET_TIMEOUT = 0.02
"""Seconds the SDK's receive loop listens on one partition's link before it moves on to the
next: the synchronous client serves its partitions in turn from one thread, so a partition
with nothing to say holds up the others for this long (the SDK's 0.2 s made an event wait up
to 0.2 s per other partition owned; docs/benchmarks.md, "The Azure path"). A timed-out read
keeps what it read of a frame; writes (flow and disposition frames) are small."""
PREFETCH = 300
"""Events the SDK may buffer per partition (more when ``max_batch_size`` is larger)."""


class NotPublished(Exception):
    """The intake did not take a batch (the source is stopping, or publishing failed).

    Raised inside the SDK's callback so that no checkpoint is written: the SDK then closes
    that partition's receiver, and whoever owns the partition next starts again from its last
    checkpoint.
    """


def body_of(event: EventData) -> bytes:
    """The event's body as bytes: its data sections joined (what producers normally send)."""
    body: Any = event.body
    if event.body_type == AmqpMessageBodyType.DATA:
        return b"".join(bytes(part) for part in body)
    if isinstance(body, bytes):
        return body
    try:
        return event.body_as_str().encode("utf-8")
    except TypeError:
        return b""  # published anyway, so it is dead-lettered as malformed, not dropped


def origin_of(eventhub: str, partition_id: str, event: EventData) -> str:
    return f"eventhub:{eventhub}/{partition_id}/{event.sequence_number}"


@dataclass
class _Handoff:
    """One partition's batch, handed from the SDK thread to trio, and the answer."""

    events: list[RawEvent]
    published: concurrent.futures.Future[None] = field(default_factory=concurrent.futures.Future)


class _Receiver:
    """The SDK side: the consumer client, its checkpoint store, and the thread running them.

    :meth:`receive` runs in one worker thread until :meth:`close` (any other thread) stops it.
    ``handoff`` is called in that thread and returns only once trio published the batch.
    """

    def __init__(
        self,
        settings: EventHubSourceSettings,
        secrets: Secrets,
        logger: logging.Logger,
        handoff: Callable[[list[RawEvent]], None],
    ) -> None:
        self.settings = settings
        self.log = logger
        self._handoff = handoff
        self._reported: dict[str, float] = {}
        self._stopping = threading.Event()
        self.finished = threading.Event()
        needs_identity = (
            secrets.eventhub_connection_string is None or not secrets.checkpoint_connection_string
        )
        token_credential = _token_credential(secrets) if needs_identity else None
        self._credential = token_credential
        if secrets.checkpoint_connection_string:
            store = BlobCheckpointStore.from_connection_string(
                secrets.checkpoint_connection_string, settings.checkpoint_container
            )
        else:
            store = BlobCheckpointStore(
                settings.checkpoint_blob_url, settings.checkpoint_container, token_credential
            )
        self._blob_store = store
        self.store = ReleasingCheckpointStore(store)
        try:
            self._connect(secrets, token_credential)
        except BaseException:
            self._release_clients()
            raise

    def _connect(self, secrets: Secrets, token_credential: TokenCredential | None) -> None:
        settings = self.settings
        if settings.create_checkpoint_container:
            self._create_container(secrets, token_credential)
        options: dict[str, Any] = {
            "checkpoint_store": self.store,
            "load_balancing_interval": float(settings.load_balancing_interval),
            "partition_ownership_expiration_interval": settings.ownership_expiration,
            "socket_timeout": SOCKET_TIMEOUT,
        }
        if secrets.eventhub_connection_string is not None:
            self.client = EventHubConsumerClient.from_connection_string(
                secrets.eventhub_connection_string,
                settings.consumer_group,
                eventhub_name=settings.eventhub_name,
                **options,
            )
        else:
            assert token_credential is not None
            self.client = EventHubConsumerClient(
                settings.fully_qualified_namespace,
                settings.eventhub_name,
                settings.consumer_group,
                token_credential,
                **options,
            )
        # Fails fast (after the SDK's retries) on a wrong namespace, hub or credential.
        self.partition_ids: list[str] = self.client.get_partition_ids()

    def _create_container(self, secrets: Secrets, credential: TokenCredential | None) -> None:
        settings = self.settings
        if secrets.checkpoint_connection_string:
            container = ContainerClient.from_connection_string(
                secrets.checkpoint_connection_string, settings.checkpoint_container
            )
        else:
            container = ContainerClient(
                settings.checkpoint_blob_url, settings.checkpoint_container, credential
            )
        with container:
            try:
                container.create_container()
                self.log.info("eventhub source created container %s", settings.checkpoint_container)
            except ResourceExistsError:
                pass

    # -- the SDK thread --------------------------------------------------------------------------

    def receive(self) -> None:
        """Claim partitions and receive until closed (the SDK's own loop, in this thread)."""
        settings = self.settings
        try:
            if not self._stopping.is_set():
                self.client.receive_batch(
                    on_event_batch=self._on_event_batch,
                    max_batch_size=settings.max_batch_size,
                    # Link credit: enough for a full batch, the SDK's 300 at least.
                    prefetch=max(settings.max_batch_size, PREFETCH),
                    # None: the SDK calls back as soon as events are buffered (with a wait,
                    # it holds them until the batch is full or the wait is over).
                    max_wait_time=float(settings.max_wait_time) or None,
                    starting_position=STARTING_POSITIONS[settings.starting_position],
                    on_error=self._on_error,
                    on_partition_initialize=self._on_partition_initialize,
                    on_partition_close=self._on_partition_close,
                )
        finally:
            self.finished.set()

    def _on_event_batch(self, context: PartitionContext, events: list[EventData]) -> None:
        if not events:
            return  # a max_wait_time passed without events
        if self._stopping.is_set():
            raise NotPublished("the source is stopping")
        partition_id = context.partition_id
        hub = self.settings.eventhub_name
        self._handoff([RawEvent(body_of(e), origin_of(hub, partition_id, e)) for e in events])
        # Published: the events are on the bus, so the checkpoint may move past them.
        context.update_checkpoint(events[-1])

    def _on_error(self, context: PartitionContext | None, error: Exception) -> None:
        where = f"partition {context.partition_id}" if context is not None else "load balancing"
        if isinstance(error, NotPublished):
            self.log.debug("eventhub source %s: %s", where, error)
        else:
            self._report(f"eventhub source {where}: {error!r} (the SDK retries)")

    def _on_partition_initialize(self, context: PartitionContext) -> None:
        self.log.info("eventhub source claimed partition %s", context.partition_id)

    def _on_partition_close(self, context: PartitionContext, reason: Any) -> None:
        self.log.info(
            "eventhub source closed partition %s (%s)",
            context.partition_id,
            getattr(reason, "name", reason),
        )

    # -- any thread ------------------------------------------------------------------------------

    def close(self, timeout: float) -> bool:
        """Stop receiving, release the partitions, close; True when the SDK thread ended.

        ``client.close`` only stops processors that already exist: it is repeated until the
        SDK thread ends, in case that thread was just entering ``receive_batch``. Ownership
        is no longer renewed from the start, and what the SDK failed to release (see
        :mod:`lakeferry_eventhub.ownership`) is released at the end.
        """
        self._stopping.set()
        self.store.stop_renewing()
        deadline = time.monotonic() + timeout
        while True:
            self.client.close()
            if self.finished.wait(min(0.5, max(deadline - time.monotonic(), 0))):
                break
            if time.monotonic() >= deadline:
                return False
        try:
            released = self.store.release_remaining()
        except Exception as exc:
            self.log.warning(
                "eventhub source could not release its partitions (%r); others take them "
                "over when the ownership expires",
                exc,
            )
        else:
            if released:
                self.log.info("eventhub source released partitions %s", ", ".join(released))
        self._release_clients()
        return True

    def _release_clients(self) -> None:
        self._blob_store.close()
        close = getattr(self._credential, "close", None)
        if close is not None:
            close()

    def _report(self, text: str) -> None:
        now = time.monotonic()
        if now - self._reported.get(text, -REPORT_INTERVAL) >= REPORT_INTERVAL:
            if len(self._reported) > 1000:  # texts may carry ids: keep memory bounded
                self._reported.clear()
            self._reported[text] = now
            self.log.warning("%s", text)


def _token_credential(secrets: Secrets) -> TokenCredential:
    """The Entra ID identity: for Event Hubs, and for checkpoints without a connection string."""
    if secrets.service_principal is not None:
        tenant_id, client_id, client_secret = secrets.service_principal
        return ClientSecretCredential(tenant_id, client_id, client_secret)
    return DefaultAzureCredential()


class EventHubSource:
    """Publishes an event hub's events (bodies as raw event bytes), then checkpoints them.

    Each batch holds events of one partition, at most ``max_batch_size``, in sequence order;
    they go to ``intake.publish`` with the origins ``eventhub:<hub>/<partition>/<sequence>``.
    Only after ``publish`` returned (the events are on the bus) is the partition's checkpoint
    (offset and sequence number of the batch's last event) written to the blob container.
    Instances with the same consumer group and container share the partitions: each claims a
    fair share, takes over the partitions of an instance that stopped (released at once) or
    died (after ``partition_ownership_expiration_interval``), and starts every partition from
    its checkpoint.

    Delivery is at-least-once: a batch published but not checkpointed (crash, cancellation,
    a partition handed over meanwhile) is published again by the next owner; downstream
    deduplicates by event id.

    Resource handling: one consumer client per :meth:`run`, driven by one worker thread (the
    SDK receives all partitions of this instance in that thread, one batch at a time), plus
    the SDK's own load-balancing thread. At most one batch is in the trio side at a time; the
    SDK prefetches up to ``max(300, max_batch_size)`` events per partition. On cancellation
    the batch being published is abandoned (not checkpointed), and the client is closed in a
    worker thread — it stops receiving and releases this instance's partitions, so others
    take them at their next balancing — given ``CLOSE_TIMEOUT`` plus
    ``CLOSE_TIMEOUT_PER_PARTITION`` per partition of the hub before it is abandoned; the trio
    thread never waits on the SDK otherwise.

    Error handling: a wrong namespace, hub or credential raises from :meth:`run` once the
    SDK's retries are spent, before ``task_status.started()``. Later connection, ownership and
    checkpoint problems are reported by the SDK, logged (once a minute each) and retried by
    it. A failing ``publish`` (the bus is down) raises out of :meth:`run`, without a
    checkpoint: the daemon restarts the source with backoff.
    """

    def __init__(self, settings: EventHubSourceSettings, context: PluginContext) -> None:
        self.name = f"eventhub:{settings.eventhub_name}"
        self._settings = settings
        self._secrets = Secrets.from_environment(settings)
        self._logger = context.logger

    async def run(
        self, intake: Intake, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Receive, publish and checkpoint until cancelled; ready once the hub answered."""
        settings = self._settings
        token = trio.lowlevel.current_trio_token()
        to_trio, from_sdk = trio.open_memory_channel[_Handoff](0)

        def handoff(events: list[RawEvent]) -> None:
            """In the SDK thread: wait until trio published ``events``; NotPublished if not."""
            batch = _Handoff(events)
            try:
                trio.from_thread.run(to_trio.send, batch, trio_token=token)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.RunFinishedError):
                raise NotPublished("the source is stopping") from None
            except trio.Cancelled:
                raise NotPublished("the source is stopping") from None
            batch.published.result()

        receiver = await trio.to_thread.run_sync(
            lambda: _Receiver(settings, self._secrets, self._logger, handoff),
            abandon_on_cancel=True,
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._publish, intake, from_sdk)
                nursery.start_soon(self._receive, receiver)
                self._logger.info(
                    "eventhub source receiving %s (%d partitions) as consumer group %s; "
                    "checkpoints in container %s",
                    settings.eventhub_name,
                    len(receiver.partition_ids),
                    settings.consumer_group,
                    settings.checkpoint_container,
                )
                task_status.started()
        finally:
            timeout = CLOSE_TIMEOUT + CLOSE_TIMEOUT_PER_PARTITION * len(receiver.partition_ids)
            with trio.move_on_after(timeout + 1, shield=True):
                closed = await trio.to_thread.run_sync(
                    receiver.close, timeout, abandon_on_cancel=True
                )
                if not closed:
                    self._logger.warning(
                        "eventhub source: the SDK did not stop within %gs; abandoned", timeout
                    )

    async def _receive(self, receiver: _Receiver) -> None:
        # Abandoned on cancel: the thread ends when run() closes the client.
        await trio.to_thread.run_sync(receiver.receive, abandon_on_cancel=True)
        raise RuntimeError("the Event Hubs client stopped receiving on its own")

    async def _publish(self, intake: Intake, batches: trio.MemoryReceiveChannel[_Handoff]) -> None:
        """Publish each batch the SDK hands over; tell the SDK thread how it went."""
        async with batches:
            async for batch in batches:
                try:
                    # Not ours to catch: a failing publish means the bus is down.
                    await intake.publish(batch.events)
                except BaseException as exc:
                    reason = "the source is stopping" if _cancelled(exc) else f"publish: {exc!r}"
                    batch.published.set_exception(NotPublished(reason))
                    raise
                batch.published.set_result(None)


def _cancelled(exc: BaseException) -> bool:
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_cancelled(e) for e in exc.exceptions)
    return False
