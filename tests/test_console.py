"""The operator console (lakeferry.console) on a running daemon: in a real browser (Debian's
chromium through selenium), over plain HTTP for health and the token, and its parts alone."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from helpers.browser import chromium, screenshot, until
from helpers.daemon import DaemonEnv, harness
from helpers.origin import Origin
from helpers.wait import wait_for, wait_until
from lakeferry import dlq
from lakeferry.bus.base import OutgoingRecord, TopicSpec
from lakeferry.console.auth import Guard, is_loopback, load_token, same_origin
from lakeferry.console.trace import Tracer
from lakeferry.messages import DOWNLOAD, DeadLetter, DownloadTask, Event
from lakeferry.retry import DUE_HEADER

# -- in a browser --------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_operator_replays_a_dead_letter_and_traces_it_to_its_landed_row(
    daemon_env: DaemonEnv, origin: Origin, tmp_path: Path
) -> None:
    """Three files whose origin fails them five times (each dead-lettered retries_exhausted,
    the sixth request would succeed) and one that is missing (not_found): filter, open a
    letter, dry-run, replay it, see it leave the list and its file land, trace it to its row."""
    env = daemon_env
    daemon = env.start()
    tag = uuid.uuid4().hex[:8]  # the origin's flaky counts are per name and live a session
    flaky = {f"cons-{i}": f"c{i}-{tag}.bin" for i in range(3)}
    events = [
        {"id": event_id, "url": origin.file_url(name, 3000, route="flaky", fail=5)}
        for event_id, name in flaky.items()
    ]
    events.append({"id": "cons-missing", "url": f"{origin.url}/status/404/m-{tag}.bin"})
    env.submit_events(events)
    wait_for(env.letters, lambda letters: len(letters) == 4, timeout=120, what="four letters")
    base = f"http://{daemon.address('console')}"

    with chromium() as browser:
        browser.get(base + "/")
        assert browser.find_elements(By.ID, "ready"), browser.page_source
        assert browser.find_element(By.ID, "ready").text == "ready"
        rows = browser.find_elements(By.CSS_SELECTOR, "#stages tbody tr")
        assert [r.find_element(By.TAG_NAME, "td").text for r in rows] == [
            "ingest", "download", "upload", "results",
        ]  # fmt: skip
        # The live feed updates the page in place (a second snapshot arrives over /live).
        first = browser.find_element(By.CSS_SELECTOR, "[data-live=at]").text
        until(browser, lambda b: b.find_element(By.CSS_SELECTOR, "[data-live=at]").text != first,
              "the overview's snapshot time to move on (the WebSocket feed)")  # fmt: skip
        until(browser, lambda b: b.find_element(By.ID, "dlq-letters").text == "4",
              "the DLQ's depth on the overview", timeout=60)  # fmt: skip
        screenshot(browser, tmp_path, "console-overview")

        browser.get(base + "/dlq")
        assert browser.find_element(By.ID, "total").text == "4"
        Select(browser.find_element(By.ID, "f-reason")).select_by_value("retries_exhausted")
        browser.find_element(By.ID, "apply").click()
        until(browser, lambda b: b.find_element(By.ID, "count").text == "3", "the filter")
        keys = {r.get_attribute("data-key") for r in browser.find_elements(
            By.CSS_SELECTOR, "#letters tbody tr")}  # fmt: skip
        assert keys == set(flaky)
        screenshot(browser, tmp_path, "console-dlq")

        # A letter in full: its five attempts, the origin's answers; no query string shown.
        browser.find_element(By.LINK_TEXT, "cons-0").click()
        until(browser, lambda b: b.find_element(By.ID, "letter-key").text == "cons-0", "letter")
        assert browser.find_element(By.ID, "reason").text == "retries_exhausted"
        assert len(browser.find_elements(By.CSS_SELECTOR, "#history tbody tr")) == 5
        assert "503" in browser.find_element(By.ID, "history").text
        assert "fail=5" not in browser.page_source  # query strings are secrets
        assert "?<redacted>" in browser.find_element(By.ID, "url").text
        browser.back()

        # Select one, dry run, confirm.
        until(browser, lambda b: b.find_element(By.ID, "count").text == "3", "the list again")
        browser.find_element(By.CSS_SELECTOR, "tr[data-key='cons-0'] input.pick").click()
        browser.find_element(By.ID, "replay-selected").click()
        until(browser, lambda b: b.find_element(By.ID, "dry-count").text == "1", "the dry run")
        assert "retries_exhausted: 1" in browser.find_element(By.ID, "dry-run").text
        assert len(env.letters()) == 4  # a dry run changes nothing
        browser.find_element(By.ID, "confirm").click()
        notice = until(browser, lambda b: b.find_elements(By.ID, "notice"), "the notice")[0]
        assert notice.text.startswith("replayed 1 letter(s)")
        assert browser.find_element(By.ID, "count").text == "2"  # the filter was kept
        assert not browser.find_elements(By.CSS_SELECTOR, "tr[data-key='cons-0']")

        # The file lands (the origin's sixth answer is the file) and the trace finds its row.
        sink_file = Path(env.data["sink"]["root"]) / "cons-0" / flaky["cons-0"]
        wait_until(sink_file.exists, timeout=60, what="the replayed file to land")
        browser.get(base + "/trace")
        browser.find_element(By.ID, "trace-id").send_keys("cons-0")
        browser.find_element(By.ID, "trace").click()

        def landed(b: Any) -> bool:
            b.refresh()  # the inventory row follows the file by a commit
            return bool(b.find_element(By.ID, "verdict").text.startswith("landed at"))

        until(browser, landed, "the trace to find the landed row", timeout=60)
        assert hashlib.sha256(sink_file.read_bytes()).hexdigest() in browser.page_source
        screenshot(browser, tmp_path, "console-trace")

        # The missing file's trace: its letter. Then purge it by a filter (a dry run first).
        browser.get(base + "/trace?id=cons-missing")
        assert browser.find_element(By.ID, "verdict").text.startswith("dead letter: not_found")
        browser.get(base + "/dlq")
        browser.find_element(By.ID, "f-q").send_keys("status/404")
        browser.find_element(By.ID, "apply").click()
        until(browser, lambda b: b.find_element(By.ID, "count").text == "1", "the text filter")
        browser.find_element(By.ID, "purge-matching").click()
        until(browser, lambda b: b.find_element(By.ID, "dry-count").text == "1", "the dry run")
        assert "without replaying them" in browser.page_source
        browser.find_element(By.ID, "confirm").click()
        notice = until(browser, lambda b: b.find_elements(By.ID, "notice"), "the notice")[0]
        assert notice.text == "purged 1 letter(s)"
        assert browser.find_element(By.ID, "count").text == "0"

    replayed, purged = (e for e in daemon.logs() if e.get("msg") == "console action")
    assert (replayed["action"], replayed["letters"], replayed["scope"]) == ("replay", 1, "selected")
    assert replayed["from"].startswith("127.0.0.1:")
    assert (purged["action"], purged["letters"], purged["scope"]) == ("purge", 1, "filter")
    assert purged["filter"] == {"q": "status/404"}
    assert {letter["key"] for letter in env.letters()} == {"cons-1", "cons-2"}
    counts = env.audit()[1]
    assert (counts["landed"], counts["dead_lettered"], counts["purged"]) == (1, 2, 1)


# -- health, over HTTP ---------------------------------------------------------------------------


@pytest.mark.slow
def test_readyz_says_503_with_the_reason_while_the_broker_is_down(
    kafka_env: DaemonEnv, kafka_broker: Any
) -> None:
    env = kafka_env
    base = f"http://{env.start().address('console')}"
    assert httpx.get(base + "/healthz").status_code == 200
    ready = httpx.get(base + "/readyz")
    assert (ready.status_code, ready.text) == (200, "ready\n")
    kafka_broker.stop()
    try:
        down = wait_for(lambda: httpx.get(base + "/readyz"), lambda r: r.status_code == 503,
                        timeout=60, what="/readyz to say the bus is down")  # fmt: skip
        assert "bus: unreachable" in down.text
        assert httpx.get(base + "/healthz").status_code == 200  # the process still answers
    finally:
        kafka_broker.start()
    wait_for(lambda: httpx.get(base + "/readyz").status_code, lambda code: code == 200,
             timeout=90, what="/readyz to recover with the broker")  # fmt: skip


# -- the token -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_bound_beyond_loopback_the_console_needs_its_token(daemon_env: DaemonEnv) -> None:
    env = daemon_env
    env.data["console"]["listen"] = "0.0.0.0:0"
    env.write()
    # Without a token the start is refused, with one line naming the key and the fix.
    refused = harness.DaemonProcess(env.config, env.root / "refused.log")
    refused.start(wait_ready=0)
    assert refused.wait(60) == 2
    assert "console.listen 0.0.0.0:" in refused.tail()
    assert "LAKEFERRY_CONSOLE_TOKEN" in refused.tail()
    assert "Traceback" not in refused.tail()

    token = "s3cret-" + uuid.uuid4().hex
    daemon = env.start(env={"LAKEFERRY_CONSOLE_TOKEN": token})
    base = f"http://127.0.0.1:{daemon.address('console').rpartition(':')[2]}"
    with httpx.Client(base_url=base, follow_redirects=False) as anon:
        assert anon.get("/healthz").status_code == 200  # load balancers carry no token
        assert anon.get("/readyz").status_code == 200
        assert anon.get("/").headers["location"] == "/login"
        write = anon.post("/dlq/act", data={"action": "purge", "all": "1"})
        assert write.status_code == 401
        assert anon.post("/login", data={"token": "wrong"}).status_code == 200  # the form again
        assert "lf_session" not in anon.cookies
    bearer = {"Authorization": f"Bearer {token}"}
    assert httpx.get(base + "/dlq", headers=bearer).status_code == 200
    dry = httpx.post(base + "/dlq/act", headers=bearer, data={"action": "purge", "all": "1"})
    assert (dry.status_code, "Dry run" in dry.text) == (200, True)
    with httpx.Client(base_url=base, follow_redirects=False) as browser:
        signed = browser.post("/login", data={"token": token})
        assert (signed.status_code, signed.headers["location"]) == (303, "/")
        page = browser.get("/dlq")
        assert page.status_code == 200
        # A signed-in browser's write still needs the form's CSRF field, and its own origin.
        assert browser.post("/dlq/act", data={"action": "purge", "all": "1"}).status_code == 403
        csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
        form = {"action": "purge", "all": "1", "csrf": csrf}
        other = browser.post("/dlq/act", data=form, headers={"Origin": "http://evil.example"})
        assert other.status_code == 403
        assert browser.post("/dlq/act", data=form).status_code == 200  # the dry run


# -- the parts -----------------------------------------------------------------------------------


def test_the_guard_signs_sessions_and_csrf_fields_with_its_own_secret(tmp_path: Path) -> None:
    guard = Guard("tok", loopback=False)
    assert not guard.open
    assert guard.signed_in({"authorization": "Bearer tok"}, {})
    assert not guard.signed_in({"authorization": "Bearer nope"}, {})
    assert guard.signed_in({}, {"lf_session": guard.session()})
    assert not guard.signed_in({}, {"lf_session": Guard("tok", loopback=False).session()})
    cookie = guard.new_csrf_cookie()
    assert guard.csrf_ok(cookie, guard.csrf_field(cookie))
    assert not guard.csrf_ok(cookie, guard.csrf_field(guard.new_csrf_cookie()))
    assert not guard.csrf_ok("", guard.csrf_field(""))
    assert Guard(None, loopback=True).open
    assert not Guard(None, loopback=False).signed_in({}, {})
    assert same_origin(None, "h:1")
    assert same_origin("http://h:1", "h:1")
    assert not same_origin("http://evil:1", "h:1")
    assert not same_origin("null", "h:1")
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("10.0.0.5")
    assert not is_loopback("console.example")
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "console-token").write_text("from-systemd\n")
    assert load_token({"CREDENTIALS_DIRECTORY": str(credentials)}) == "from-systemd"
    environ = {"LAKEFERRY_CONSOLE_TOKEN": "env", "CREDENTIALS_DIRECTORY": str(credentials)}
    assert load_token(environ) == "env"
    assert load_token({}) is None


def test_what_comes_from_outside_is_escaped_on_every_page() -> None:
    """Ids, URLs and error texts come from event producers and origins: markup in them is
    text on the page, never markup."""
    from lakeferry.console import letters as lt
    from lakeferry.console.app import templates
    from lakeferry.console.trace import Place, Trace

    now = dt.datetime.now(dt.UTC)
    hostile = "<script>alert(1)</script>"
    item = _letter(hostile, f"https://h.example/{hostile}?sig=x", f"HTTP 500 {hostile}", now)
    common = {"csrf": "c", "node": "n", "version": "v", "signed_in": False, "path": "/dlq"}
    env = templates()
    pages = [
        env.get_template("letters.html").render(
            **common, query=lt.Query(q=hostile), error=hostile, total=1, count=1,
            by_reason={hostile: 1}, oldest="1s", rows=[lt.row(item, now)], shown=500,
            reasons=[hostile], stages=["download"], notice=hostile,
        ),
        env.get_template("letter.html").render(**common, letter=lt.detail(item)),
        env.get_template("trace.html").render(
            **common, event_id=hostile,
            found=Trace(hostile, hostile, [Place("dead_letter", hostile, [(hostile, hostile)])]),
        ),
    ]  # fmt: skip
    for page in pages:
        assert hostile not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert "sig=x" not in page


def _letter(key: str, url: str, error: str, dead_at: dt.datetime) -> dlq.Letter:
    from lakeferry.bus.base import Record

    task = DownloadTask(event=Event(id=key, url=url), received_at=dead_at)
    letter = DeadLetter(reason="http_server_error", error=error, stage="download",
                        dead_at=dead_at, origin_topic="retry.40m", task=task)  # fmt: skip
    record = Record("downloads.dlq", 0, 0, key.encode(), b"", {}, 0)
    return dlq.Letter(record, letter)


def test_letters_filter_by_host_text_and_time_of_death() -> None:
    now = dt.datetime.now(dt.UTC)
    a = _letter("a", "https://Files.Example.com/x.bin?sig=SECRET", "HTTP 503", now)
    b = _letter("b", "http://other.example:8080/y.bin", "timed out", now - dt.timedelta(hours=2))

    def pick(**kw: Any) -> set[str]:
        return {x.key for x in dlq.select([a, b], dlq.LetterFilter(**kw))}

    assert pick(host="files.example.com") == {"a"}
    assert pick(host="files.example.com:443") == {"a"}
    assert pick(host="other.example:8080") == {"b"} == pick(host="OTHER.example")
    assert pick(host="example.com") == set()
    assert pick(text="503") == {"a"} == pick(text="x.BIN")
    assert pick(text="secret") == set()  # a query string is not searched (nor shown)
    assert pick(dead_by=now - dt.timedelta(hours=1)) == {"b"}


async def test_the_trace_finds_a_task_waiting_on_a_rung_with_its_due_time(tmp_path: Path) -> None:
    from lakeferry.bus.embedded import EmbeddedBus

    bus = await EmbeddedBus.open(tmp_path / "bus.sqlite", poll_interval=0.02)
    topics = SimpleNamespace(pending="p", backfill="b", cached="c", results="r", dlq="d")
    ladder = SimpleNamespace(topics=["retry.1m"])
    await bus.ensure_topics([TopicSpec(t, 2) for t in ("p", "b", "c", "r", "d", "retry.1m")])
    pipeline = SimpleNamespace(bus=bus, topics=topics, ladder=ladder,
                               group_for=lambda consumer: f"g.{consumer}")  # fmt: skip
    task = DownloadTask(event=Event(id="ev", url="https://h.example/f?sig=x"),
                        received_at=dt.datetime.now(dt.UTC), attempt=2)  # fmt: skip
    due = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=90)
    producer = bus.producer()
    await producer.send_many([
        OutgoingRecord("p", DOWNLOAD.encode(task), b"ev"),  # done with: below the commit
        OutgoingRecord("retry.1m", DOWNLOAD.encode(task), b"ev",
                       {DUE_HEADER: str(int(due.timestamp() * 1000)).encode()}),
        OutgoingRecord("retry.1m", DOWNLOAD.encode(task), b"other"),
    ])  # fmt: skip
    pending = [r async for r in bus.scan("p")]
    consumer = bus.consumer("g.download", ["p"])
    await consumer.commit({r.tp: r.offset + 1 for r in pending})
    await consumer.aclose()

    found = await Tracer(pipeline, None).trace("ev")  # type: ignore[arg-type]
    assert [place.kind for place in found.places] == ["waiting"]
    assert found.verdict == "waiting on retry.1m"
    fields = dict(found.places[0].fields)
    assert fields["attempts so far"] == "2"
    assert fields["due"].startswith(due.isoformat(timespec="seconds")[:16])
    assert "in 1m" in fields["due"] or "in 89s" in fields["due"] or "in 90s" in fields["due"]
    assert found.notes == ["the inventory is not open in this process: landed rows not looked at"]
    assert (await Tracer(pipeline, None).trace("nobody")).verdict.startswith("not found")  # type: ignore[arg-type]
    await bus.aclose()
