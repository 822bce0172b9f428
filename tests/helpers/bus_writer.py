"""Produce into an embedded bus file from another process, printing every acknowledged record.

Run as a script: ``python bus_writer.py PATH TOPIC COUNT [TASKS] [DELAY_S]``. ``COUNT`` 0
writes until killed. ``TASKS`` concurrent senders (group commit) take sequence numbers from one
counter; after each ``send`` returns the script prints ``ack <seq>`` and flushes. Values are
self-checking (:func:`make_value`, :func:`check_value`), so a reader can tell a torn record.
"""

from __future__ import annotations

import hashlib
import itertools
import sys


def make_value(seq: int) -> bytes:
    body = (b"%d." % seq) * (1 + seq % 40)
    return b"%d:%s:%s" % (seq, hashlib.sha256(body).hexdigest().encode(), body)


def check_value(value: bytes) -> int:
    """The sequence number of an intact value; raises ``ValueError`` for a torn one."""
    seq, digest, body = value.split(b":", 2)
    if hashlib.sha256(body).hexdigest().encode() != digest or make_value(int(seq)) != value:
        raise ValueError(f"torn record {value[:40]!r}")
    return int(seq)


async def produce(path: str, topic: str, count: int, tasks: int, delay: float) -> None:
    import trio

    from lakeferry.bus.embedded import EmbeddedBus

    bus = await EmbeddedBus.open(path)
    producer = bus.producer()
    numbers = itertools.count() if count == 0 else iter(range(count))

    async def sender() -> None:
        for seq in numbers:
            key = None if seq % 3 else b"key-%d" % (seq % 11)
            await producer.send(topic, make_value(seq), key=key, headers={"seq": b"%d" % seq})
            print(f"ack {seq}", flush=True)
            if delay:
                await trio.sleep(delay)  # the pace the caller asked for, not a wait

    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(sender)
    await bus.aclose()


def main(argv: list[str]) -> None:
    import trio

    path, topic, count = argv[0], argv[1], int(argv[2])
    tasks = int(argv[3]) if len(argv) > 3 else 1
    delay = float(argv[4]) if len(argv) > 4 else 0.0
    trio.run(produce, path, topic, count, tasks, delay)


if __name__ == "__main__":
    main(sys.argv[1:])
