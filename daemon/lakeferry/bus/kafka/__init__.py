"""The Kafka bus: the bus contract on confluent-kafka (librdkafka), for production scale-out.

Any Kafka-protocol broker works: Apache Kafka, Redpanda, Azure Event Hubs' Kafka endpoint,
Confluent Cloud. Any librdkafka setting passes through from ``[bus.kafka.client]`` (all
clients), ``[bus.kafka.producer]`` and ``[bus.kafka.consumer]`` — SASL and SSL included.

Threads, and why: librdkafka calls block (poll, commit, close, admin requests), and trio's
thread must never block. So:

- the **producer** is shared by the whole process; ``produce()`` only enqueues (safe on the
  trio thread), and one OS thread polls for delivery reports and hands all that one
  ``poll()`` served back to trio in one ``TrioToken.run_sync_soon`` call (one hop per
  acknowledged produce request, not per record). ``send`` returns when the broker acknowledged
  (``acks=all``, idempotence on).
- each **consumer** is owned by one OS thread that loops on ``consume()`` with a short timeout
  (so it keeps its group membership however busy the stage is) and runs every other operation
  on the consumer — commit, pause, resume, seek, close — between polls, as commands sent from
  trio. Records go into per-partition buffers on the trio side. When the buffers hold more
  than ``BUFFER_HIGH`` records the thread pauses every partition (fetching stops, the group
  membership stays) until they drain below ``BUFFER_LOW``: backpressure, never unbounded memory.
- rebalance callbacks run on the consumer thread inside ``consume()``; they call into trio
  synchronously (``trio.from_thread.run_sync``) so the stage can hand back its contiguous
  offsets, which are committed *before* the partitions go. Records fetched for a partition
  by a poll that began before a seek are dropped by generation number (the seek fetches them
  again), and a revoke clears the partition's buffer; nothing is delivered twice. (Rebalance
  callbacks run inside ``consume()`` and trio runs its callbacks in order, so records a poll
  returns after a rebalance always belong to the new assignment.)
- admin work (topics, scans, committed offsets) runs in ``trio.to_thread`` with timeouts; an
  error the cluster raises while it moves (a leader election, metadata of a new topic not yet
  everywhere) is retried with backoff for up to ``operation_timeout``, in the bus, so no caller
  sees ``NOT_LEADER_FOR_PARTITION`` right after creating a topic.

Resource handling: :meth:`KafkaBus.aclose` flushes the producer (bounded by
``operation_timeout``) and stops the threads; closing a consumer leaves the group in its thread
while trio awaits it without blocking.

Error handling: a broker outage does not fail anything by itself: deliveries wait inside
librdkafka (``message.timeout.ms``, 5 minutes by default), commits fail and are retried by the
stage, and the bus reports the outage through ``on_health`` (logs and metrics) and its recovery.
A *fatal* error of a consumer (librdkafka's word: most often a static member fenced because the
group saw a newer member under its ``group.instance.id``, as can happen when a join's answer is
lost in an outage) ends that consumer: its ``next()`` raises :class:`~lakeferry.errors.BusError`,
the stage crashes, and the supervisor's restart joins with a fresh client. Before, the consumer
kept polling a client librdkafka had given up on, and the stage waited forever.
"""

from __future__ import annotations

from lakeferry.bus.kafka.client import KafkaBus
from lakeferry.bus.kafka.common import BUFFER_HIGH, BUFFER_LOW, retriable, unreachable
from lakeferry.bus.kafka.consumer import KafkaConsumer
from lakeferry.bus.kafka.producer import KafkaProducer

__all__ = [
    "BUFFER_HIGH",
    "BUFFER_LOW",
    "KafkaBus",
    "KafkaConsumer",
    "KafkaProducer",
    "retriable",
    "unreachable",
]
