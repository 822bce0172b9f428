"""Hostile input, generated: whatever arrives is handled with a clear reason, never a crash.

- Raw events: any bytes become a task on ``downloads.pending`` or a DLQ letter with reason
  ``malformed`` and the raw bytes — one record per input, none lost (the real intake on a real
  embedded bus).
- Destinations: every path or template result is a relative path that stays inside the sink
  root, or ``invalid_path``.
- URLs: every URL ends as a scheme to download, or ``malformed``/``blocked``/
  ``unsupported_scheme``; the http downloader never connects anywhere but loopback here.
- The daemon as a process, fed a sample of the worst: it stays up, and every event ends landed
  or dead-lettered with the expected reason.

Budgets are fixed (``@settings``); profiles and the example database are described in
``tests/helpers/hypothesis_profile.py``. Examples that once broke something are pinned with
``@example``: a deeply nested JSON line crashed the ingest stage (RecursionError from msgspec
and from ``json.loads``), and ``http://[::1/`` crashed the download stage (ValueError).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar
from urllib.parse import quote

import httpcore
import msgspec
import pytest
import trio
from hypothesis import example, given, settings
from hypothesis import strategies as st

from helpers.daemon import DaemonEnv
from helpers.http_engines import ENGINES
from helpers.origin import Origin
from helpers.plugins import plugin_context, task_for
from helpers.wait import wait_for
from lakeferry.admission import Admission
from lakeferry.api import (
    Event,
    NetGuard,
    PermanentError,
    PipelineError,
    RawEvent,
    Reason,
    redact_url,
    render_destination,
    safe_relative_path,
)
from lakeferry.bus.embedded import EmbeddedBus
from lakeferry.config import IngestConfig, TopicsConfig
from lakeferry.deadletters import DeadLetters
from lakeferry.messages import DLQ, DOWNLOAD, DeadLetter, decode_event
from lakeferry.metrics import Metrics
from lakeferry.paths import MAX_COMPONENT_BYTES, MAX_PATH_BYTES
from lakeferry.recent import RecentErrors
from lakeferry.stages.ingest import BusIntake
from lakeferry.testing import download_writer
from lakeferry.urls import check_url
from lakeferry_http import HttpDownloader, HttpDownloaderSettings
from lakeferry_http.curl_engine import CurlEngine
from lakeferry_http.httpx_engine import HttpxEngine
from lakeferry_localfs import LocalFsCache, LocalFsCacheSettings

T = TypeVar("T")
BUDGET = settings(max_examples=200, deadline=None)
NOW = dt.datetime(2026, 11, 28, 7, 0, tzinfo=dt.UTC)
DEEP = b'{"id": "deep", "url": "http://h/f", "x": ' + b"[" * 3000 + b"]" * 3000 + b"}"

# --- strategies ----------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
junk = json_values | st.binary(max_size=16).map(lambda b: b.decode("latin-1"))
ids = st.text(min_size=1, max_size=40) | st.sampled_from(["", "x" * 513, "../../etc", "a\x00b"])
urls = st.sampled_from(
    ["https://example.org/f.bin", "ftp://x/y", "http://[::1/", "", "x" * 9000, "javascript:1"]
) | st.text(max_size=60)
event_like = st.fixed_dictionaries(
    {"id": ids | junk, "url": urls | junk},
    optional={
        "path": st.text(max_size=40) | junk,
        "sha256": st.sampled_from(["a" * 64, "A" * 64, "xyz", ""]) | junk,
        "size": st.integers(min_value=-5, max_value=2**70) | junk,
        "metadata": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3) | junk,
        "created_at": st.sampled_from(["2026-11-28T07:00:00Z", "2026-13-01", "yesterday"]) | junk,
        "v": junk,
    },
)


def _dumps(value: Any, ascii: bool = False) -> bytes:
    # ASCII: non-ASCII characters as \u escapes, lone surrogates too ("\ud800").
    return json.dumps(value, ensure_ascii=ascii).encode("utf-8", "surrogatepass")


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid event's JSON with a few bytes changed, cut or inserted."""
    raw = bytearray(_dumps({"id": draw(st.text(min_size=1, max_size=12)), "url": "https://e/f"}))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(raw)))
        match draw(st.sampled_from(["flip", "cut", "insert"])):
            case "flip" if at < len(raw):
                raw[at] ^= draw(st.integers(1, 255))
            case "cut":
                del raw[at:]
            case _:
                raw[at:at] = draw(st.binary(min_size=1, max_size=4))
    return bytes(raw)


raw_events = st.one_of(
    st.binary(max_size=256),
    json_values.map(_dumps),
    event_like.map(_dumps),
    event_like.map(lambda e: _dumps(e, ascii=True)),
    mutated(),
    st.sampled_from(
        [b"", b"\xef\xbb\xbf{}", b"{}", b"null", b"[", DEEP, b'{"x":' + b"[" * 100_000]
    ),
)


def outcome(fn: Callable[..., T], *args: Any) -> tuple[Any, PermanentError | None]:
    """``(fn(*args), None)``, or ``(None, error)`` when it raises PermanentError; any other
    exception fails the test."""
    try:
        return fn(*args), None
    except PermanentError as exc:
        return None, exc


# --- raw events through the real intake ----------------------------------------------------------


TEMPLATE = "{event.id}/{filename}"
"""The sink's path template the intake renders destinations with."""
T0 = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)


def bus_intake(bus: EmbeddedBus) -> BusIntake:
    """The real intake with only what it uses: no scheme check (any URL that parses passes),
    destinations rendered with :data:`TEMPLATE`."""
    producer, metrics, topics = bus.producer(), Metrics(), TopicsConfig()
    rules = Admission(
        max_event_bytes=int(IngestConfig().max_event_bytes), template=TEMPLATE, schemes=frozenset()
    )
    return BusIntake(
        producer=producer, dead_letters=DeadLetters(producer, lambda: topics.dlq, metrics,
                                                    RecentErrors()),
        metrics=metrics, rules=lambda: rules, topics=lambda: topics,
    )  # fmt: skip


async def _intake(batch: list[bytes]) -> tuple[list[Event], list[DeadLetter]]:
    with tempfile.TemporaryDirectory() as tmp:
        async with await EmbeddedBus.open(Path(tmp) / "bus.sqlite") as bus:
            intake = bus_intake(bus)
            await intake.publish([RawEvent(raw, f"test:{i}") for i, raw in enumerate(batch)])
            topics = TopicsConfig()
            tasks = [DOWNLOAD.decode(r.value) async for r in bus.scan(topics.pending)]
            letters = [DLQ.decode(r.value) async for r in bus.scan(topics.dlq)]
    dead = [x for x in letters if isinstance(x, DeadLetter)]
    assert dead == letters  # letters, no tombstones
    return [t.event for t in tasks], dead


def _decodes(raw: bytes) -> bool:
    try:
        decode_event(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    return True


@pytest.mark.slow  # seconds: 200 examples, each a trip through the intake
@BUDGET
@given(st.lists(raw_events, min_size=1, max_size=6))
@example([DEEP])
@example([b'{"x":' + b"[" * 100_000, b"[" * 100_000])
@example(
    [b"\xff\xfe", b'{"id": "ok", "url": "https://e/f"}', b'{"id": "ok", "url": "https://e/f"}']
)
@example([b'{"id":"\x80"'])  # invalid UTF-8 in a string: UnicodeDecodeError from msgspec
@example([b'{"id": "\\ud800", "url": "http://x/"}'])  # lone surrogate id: UnicodeEncodeError
def test_any_bytes_become_an_event_or_a_malformed_letter(batch: list[bytes]) -> None:
    events, letters = trio.run(_intake, batch)
    # Never lost: one record per input, on exactly one of the two topics.
    assert len(events) + len(letters) == len(batch)
    good = [raw for raw in batch if _decodes(raw)]
    bad = [raw for raw in batch if not _decodes(raw)]
    # A good event whose URL does not parse, or whose id renders no safe destination, is
    # refused at ingest with its task; one that does not decode, with its raw bytes.
    unsafe = [x for x in letters if x.task is not None]
    malformed = [x for x in letters if x.task is None]
    assert Counter(e.id for e in events) + Counter(
        x.task.event.id for x in unsafe if x.task is not None
    ) == Counter(decode_event(raw).id for raw in good)
    for letter in unsafe:
        assert letter.task is not None
        assert letter.reason in (Reason.INVALID_PATH, Reason.MALFORMED)
        _, url_error = outcome(check_url, letter.task.event.url)
        _, path_error = outcome(render_destination, TEMPLATE, letter.task.event, T0)
        assert url_error is not None or path_error is not None
    letters = malformed
    assert Counter(letter.raw for letter in letters) == Counter(bad)
    for letter in letters:
        assert (letter.reason, letter.stage, letter.task) == (Reason.MALFORMED, "ingest", None)
        assert letter.error
        assert letter.source is not None
        assert letter.source.startswith("test:")
    for event in events:  # what passed is what an independent JSON reader sees
        assert event.created_at is not None
        assert event.created_at.tzinfo is not None
        assert 1 <= len(event.id) <= 512


# --- destination paths ---------------------------------------------------------------------------

PIECES = [
    "..", ".", "/", "//", "\\", "a", "b.txt", "C:", "c:", "\x00", "\n", "\x7f", "\u202e",
    "\u200b", "\ufeff", " ", "~", "%2e%2e", "\uff0e\uff0e", "\uff0f", "\u2025", "e\u0301",
    "\U0001f600", "CON", "x" * 255, "é" * 130, "\t", "$HOME", "{event.id}",
]  # fmt: skip
path_texts = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(PIECES) | st.text(max_size=6), max_size=14).map("".join),
    st.lists(st.sampled_from(PIECES), min_size=1, max_size=8).map("/".join),
)


def _assert_safe(path: str, root: Path) -> None:
    """``path`` is a plain relative path that cannot leave ``root`` on any file system."""
    pure = PurePosixPath(path)
    assert not pure.is_absolute()
    assert not path.startswith("/")
    assert "\\" not in path
    assert "\x00" not in path
    assert len(path.encode()) <= MAX_PATH_BYTES
    for part in path.split("/"):
        assert part not in ("", ".", "..")
        assert len(part.encode()) <= MAX_COMPONENT_BYTES
        assert unicodedata.normalize("NFKC", part) not in (".", "..")
    for ch in path:
        assert unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co"), repr(ch)
    assert path == unicodedata.normalize("NFC", path)
    assert safe_relative_path(path) == path  # idempotent
    resolved = (root / path).resolve()
    assert resolved.is_relative_to(root.resolve())
    assert resolved != root.resolve()


@pytest.fixture(scope="module")
def sink_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sink-root")
    (root / "inside").mkdir()
    (root / "inside" / "up").symlink_to("..")  # a symlink inside must not matter to the check
    return root


@BUDGET
@given(text=path_texts)
@example(text="\uff0e\uff0e/\uff0e\uff0e/etc/passwd")
@example(text="a/\u2025/b")
@example(text="x/\u202egnp.exe")
@example(text="a/\ud800b")  # a lone surrogate (cannot come from JSON, still refused)
def test_paths_are_safe_or_invalid(sink_root: Path, text: str) -> None:
    path, error = outcome(safe_relative_path, text)
    if error is not None:
        assert error.reason == Reason.INVALID_PATH
    else:
        _assert_safe(path, sink_root)


TEMPLATES = [
    "{event.id}/{filename}",
    "{date:%Y/%m/%d}/{event.id}/{filename}",
    "{event.metadata[site]}/{id}",
    "{filename}",
    "{event.sha256}/{event.size}",
    "{date:%Y}/../{id}",
    "{event.metadata[site]}",
    "/abs/{id}",
]
metadata = st.dictionaries(st.sampled_from(["site", "x"]), path_texts, max_size=2)
events_for_paths = st.builds(
    Event,
    id=path_texts.filter(lambda s: 1 <= len(s) <= 512),
    url=st.one_of(
        st.text(max_size=80),
        path_texts.map(lambda p: "https://h/dir/" + quote(p, safe="/")),
        path_texts.map(lambda p: "https://h/" + p),
    ),
    path=st.none() | path_texts,
    sha256=st.none() | st.just("a" * 64),
    size=st.none() | st.integers(0, 2**40),
    metadata=metadata,
    created_at=st.none() | st.datetimes(timezones=st.just(dt.UTC)),
)


@BUDGET
@given(template=st.sampled_from(TEMPLATES), event=events_for_paths)
@example(template="{filename}", event=Event(id="e", url="https://h/%2e%2e%2f%2e%2e%2fetc"))
@example(template="{filename}", event=Event(id="..", url="https://h/"))
def test_rendered_destinations_are_safe_or_invalid(
    sink_root: Path, template: str, event: Event
) -> None:
    path, error = outcome(render_destination, template, event, NOW)
    if error is not None:
        assert error.reason == Reason.INVALID_PATH
    else:
        _assert_safe(path, sink_root)


# --- URLs ----------------------------------------------------------------------------------------

SCHEMES = ["http", "https", "HTTP", "ftp", "file", "gopher", "javascript", "data", "h ttp", ""]
HOSTS = [
    "example.org", "127.0.0.1", "2130706433", "0x7f000001", "0177.0.0.1", "[::1]",
    "[::ffff:127.0.0.1]", "169.254.169.254", "10.0.0.1", "localhost", "8.8.8.8", "", "[::1",
    "exa mple.org", "ex\u00e4mple.org", "xn--", "a" * 300, "[fe80::1%25eth0]", "0",
]  # fmt: skip
PORTS = ["", ":0", ":1", ":80", ":65535", ":65536", ":99999", ":-1", ":abc", ":"]


@st.composite
def hostile_urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(SCHEMES))
    userinfo = draw(st.sampled_from(["", "user@", "user:SECRETpw@", "a@b@", ":@"]))
    host = draw(st.sampled_from(HOSTS) | st.text(max_size=12))
    port = draw(st.sampled_from(PORTS))
    path = draw(st.text(max_size=30))
    query = draw(st.sampled_from(["", "?sig=SECRETsig", "?a=b&sig=SECRETsig#frag"]))
    return f"{scheme}://{userinfo}{host}{port}/{path}{query}"


any_url = hostile_urls() | st.text(max_size=100) | st.just("http://h/" + "a" * 9000)


@BUDGET
@given(url=any_url)
@example(url="http://[::1/")
@example(url="http://h:99999/")
@example(url="http://h/\r\nHost: evil")
def test_url_checks_give_a_clear_answer(url: str) -> None:
    scheme, error = outcome(check_url, url)
    if error is not None:
        assert error.reason == Reason.MALFORMED
    else:
        assert scheme
        assert scheme == scheme.lower()
    _, refused = outcome(NetGuard().check_url, url)
    assert refused is None or refused.reason in (Reason.BLOCKED, Reason.MALFORMED)
    shown = redact_url(url)  # never raises
    assert "SECRETpw" not in shown
    assert "SECRETsig" not in shown


class NoNetwork(httpcore.AsyncNetworkBackend):
    """Refuses every connection the guard lets through (tests do not leave loopback)."""

    def __init__(self) -> None:
        self.connects: list[str] = []

    async def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        self.connects.append(host)
        await trio.lowlevel.checkpoint()
        raise httpcore.ConnectError(f"test: no network to {host}")

    def check(self, host: str, port: int) -> None:
        """The same, as the curl engine's connect hook (raising refuses the connection)."""
        self.connects.append(host)
        raise ConnectionRefusedError(f"test: no network to {host}")

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)


async def private_dns(host: str, port: int) -> list[Any]:
    await trio.lowlevel.checkpoint()
    return [ipaddress.ip_address("10.0.0.1")]


async def _fetch(url: str, engine: str) -> tuple[PipelineError | None, list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = msgspec.convert({"engine": engine, "clients": 1}, HttpDownloaderSettings)
        d = HttpDownloader(settings, plugin_context(Path(tmp)))
        spy = NoNetwork()
        if isinstance(d.engine, HttpxEngine):
            d.engine.backend.inner = spy
        else:
            assert isinstance(d.engine, CurlEngine)
            d.engine.connect_hook = spy.check
        d.guard.resolver = private_dns
        cache = LocalFsCache(LocalFsCacheSettings(path=tmp + "/cache"), plugin_context(Path(tmp)))
        pending = await cache.create("k")
        error = None
        try:
            await d.fetch(task_for(url), download_writer(pending))
        except PipelineError as exc:
            error = exc
        finally:
            await pending.abort()
            await d.aclose()
    return error, spy.connects


@pytest.mark.slow  # seconds: 200 examples, each a real download attempt
@BUDGET
@given(url=hostile_urls().filter(lambda u: u.split("://")[0].lower() in ("http", "https")))
@example(url="http://user:SECRETpw@0177.0.0.1:80/x?sig=SECRETsig")
@example(url="http://[::1/")
@example(url="http://xn--/")  # idna.IDNAError escaped the downloader
@pytest.mark.parametrize("engine", ENGINES)
def test_http_downloader_classifies_every_url(url: str, engine: str) -> None:
    error, connects = trio.run(_fetch, url, engine)
    assert error is not None  # nothing here can succeed: no network
    assert error.reason in (
        Reason.BLOCKED, Reason.MALFORMED, Reason.UNSUPPORTED_SCHEME, Reason.CONNECTION,
    ), (error.reason, str(error))  # fmt: skip
    assert "SECRETpw" not in str(error)
    assert "SECRETsig" not in str(error)
    # Only public literal addresses get as far as a connection attempt (refused by the test).
    for host in connects:
        assert NetGuard().allows_address(ipaddress.ip_address(host)), host
    if error.reason == Reason.CONNECTION:
        assert connects or "resolve" in str(error) or "GET" in str(error)


# --- the daemon, fed the worst -------------------------------------------------------------------


def test_daemon_survives_hostile_events(daemon_env: DaemonEnv, origin: Origin) -> None:
    env = daemon_env
    good = {"id": "hostile-ok", "url": origin.file_url("hostile-ok.bin", 3000)}
    expected = {
        "hostile-bad-ipv6": ({"url": "http://[::1/x"}, "malformed"),
        "hostile-port": ({"url": f"{origin.url.rsplit(':', 1)[0]}:99999/x"}, "malformed"),
        "hostile-ctl": ({"url": origin.file_url("x.bin", 10) + "\r\nX: y"}, "malformed"),
        "hostile-ftp": ({"url": "ftp://example.org/f"}, "unsupported_scheme"),
        "hostile-js": ({"url": "javascript:alert(1)"}, "unsupported_scheme"),
        "hostile-long": ({"url": "http://h/" + "a" * 9000}, "malformed"),
        "hostile-meta": ({"url": "http://user:pw@169.254.169.254/latest/"}, "blocked"),
        "hostile-dotdot": (
            {"url": origin.file_url("dd.bin", 10), "path": "../../etc/passwd"},
            "invalid_path",
        ),
        "hostile-bidi": (
            {"url": origin.file_url("bidi.bin", 10), "path": "x/\u202egnp.exe"},
            "invalid_path",
        ),
        "hostile-fullwidth": (
            {"url": origin.file_url("fw.bin", 10), "path": "\uff0e\uff0e/\uff0e\uff0e/x"},
            "invalid_path",
        ),
    }
    lines = [json.dumps({"id": k, **fields}).encode() for k, (fields, _) in expected.items()]
    lines += [json.dumps(good).encode(), DEEP, b'{"x":' + b"[" * 50_000, b"\xff\xfe not json"]
    events_file = env.root / "hostile.jsonl"
    events_file.write_bytes(b"\n".join(lines) + b"\n")
    daemon = env.start()
    # `lakeferry submit` refuses such a file itself, naming the first bad line...
    result = env.cli("submit", "--file", str(events_file), "--quiet")
    assert result.returncode == 2
    assert "(nothing sent; 12 of 14 events refused)" in result.stderr
    # ...so it reaches the daemon the way a producer's file would: through the spool.
    env.spool(events_file)
    wait_for(
        lambda: env.audit(events_file)[1],
        lambda counts: counts["in_flight"] == 0,
        timeout=60,
        what="hostile events to settle",
        interval=1,
    )
    letters = env.letters()
    by_key = {x["key"]: x["reason"] for x in letters}  # keyed by event id when readable
    assert {k: by_key.get(k) for k in expected} == {k: r for k, (_, r) in expected.items()}
    raw_keys = [x["key"] for x in letters if x["key"].startswith("malformed:")]
    assert len(raw_keys) == 3  # the three lines without a readable id, with their bytes
    assert len(letters) == len(expected) + 3
    code, counts = env.audit(events_file)
    assert (counts["landed"], counts["lost"], counts["duplicate_rows"]) == (1, 0, 0)
    assert code == 0
    assert daemon.alive()
    assert env.metric("lakeferry_stage_restarts_total") == 0  # no stage crashed
    assert daemon.terminate() == 0


def test_an_event_over_the_size_limit_is_a_malformed_letter_with_its_head() -> None:
    """One limit for every way in (``ingest.max_event_bytes``): a source that hands the
    intake a larger event gets it dead-lettered, its first bytes kept for the operator."""
    raw = json.dumps({"id": "huge", "url": "https://e/f", "metadata": {"x": "y" * (2 << 20)}})
    events, letters = trio.run(_intake, [raw.encode()])
    assert events == []
    [letter] = letters
    assert (letter.reason, letter.task) == (Reason.MALFORMED, None)
    assert "larger than ingest.max_event_bytes (1048576 bytes)" in letter.error
    assert letter.raw == raw.encode()[: 1 << 20]
