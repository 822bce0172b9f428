"""The curl engine's worker-thread loop (``lakeferry_http.curl_multi``), pass by pass.

These drive one pass of the loop by hand (its libcurl callbacks and its hand-over to trio), so
that an interleaving the network makes rare happens every time. Everything else about the
engine is tested through the downloader, on a real origin (``tests/test_plugin_http.py`` and
the modules that run on both engines).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from lakeferry.api import NetGuard
from lakeferry_http.curl_multi import EasyOptions, MultiThread, Transfer, _Loop


@pytest.fixture
def loop() -> Iterator[_Loop]:
    owner = MultiThread(EasyOptions(1.0, True, 1), NetGuard(), logging.getLogger("test"))
    worker = _Loop(owner)
    try:
        yield worker
    finally:
        worker.close()
        owner.release()


def transfer() -> Transfer:
    loopback = [ipaddress.ip_address("127.0.0.1")]
    return Transfer("http://127.0.0.1:9/x", [], "127.0.0.1", 9, loopback, [])


async def test_a_delivered_chunk_list_is_never_written_again(loop: _Loop) -> None:
    """Found by the resume test, one run in five: a pass handed trio the head with an empty
    chunk list and went on appending the next pieces to that same list; trio, applying the
    hand-over later, took them in, and again with the next pass (a kept partial of 200,000
    bytes where the origin had sent 100,000)."""
    t = transfer()
    on_body, on_header, _ = loop._callbacks(t)
    for line in (b"HTTP/1.1 200 OK\r\n", b"Content-Length: 9\r\n", b"\r\n"):
        on_header(line)
    loop.deliver()  # the head, no body yet; trio has not applied it
    on_body(b"body")
    loop.deliver()
    await trio.testing.wait_all_tasks_blocked()  # trio applies both hand-overs now
    assert t.head is not None
    assert list(t.inbox) == [b"body"]


async def test_a_transfer_pauses_past_the_high_water_mark(loop: _Loop) -> None:
    from lakeferry_http.curl_multi import HIGH_WATER

    t = transfer()
    on_body, _, _ = loop._callbacks(t)
    piece = b"x" * (HIGH_WATER // 4)
    assert [on_body(piece) for _ in range(4)] == [None] * 4
    assert on_body(piece) is not None  # CURL_WRITEFUNC_PAUSE: libcurl keeps it
    loop.deliver()
    await trio.testing.wait_all_tasks_blocked()
    assert (sum(map(len, t.inbox)), t.paused_seen) == (HIGH_WATER, True)
    loop.ack(t, HIGH_WATER)  # trio took them (no easy handle here: nothing to resume)
    assert on_body(piece) is None
