import datetime as dt

import pytest

from lakeferry.errors import PermanentError
from lakeferry.messages import Event
from lakeferry.paths import render_destination, safe_relative_path
from lakeferry.urls import redact_url

NOW = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)


@pytest.mark.parametrize("good", ["a.bin", "2026/11/28/x/a.bin", "naïve/ünïcode.txt", "a b/c"])
def test_safe_paths_pass(good: str) -> None:
    assert safe_relative_path(good) == good


@pytest.mark.parametrize(
    "bad",
    [
        "", "/etc/passwd", "../up", "a/../../b", "a//b", "./a", "C:/x", "c:evil", "a\\b",
        "a\x00b", "a\nb", "x/\u202egnp.exe", "zero\u200bwidth", "a/" + "x" * 256, "trailing./x",
        " lead", "a/" * 600 + "b",
    ],
)  # fmt: skip
def test_unsafe_paths_refused(bad: str) -> None:
    with pytest.raises(PermanentError) as info:
        safe_relative_path(bad)
    assert info.value.reason == "invalid_path"


def test_template_renders_fields() -> None:
    ev = Event(
        id="e1", url="https://h/dir/My%20File.bin?sig=1", metadata={"site": "n"}, created_at=NOW
    )
    assert (
        render_destination("{date:%Y/%m/%d}/{event.id}/{filename}", ev, NOW)
        == "2026/11/28/e1/My File.bin"
    )
    assert render_destination("{event.metadata[site]}/{id}", ev, NOW) == "n/e1"


def test_event_path_wins_and_is_checked() -> None:
    ev = Event(id="e1", url="https://h/f", path="custom/place.bin")
    assert render_destination("{filename}", ev, NOW) == "custom/place.bin"
    with pytest.raises(PermanentError):
        render_destination("{filename}", Event(id="e1", url="https://h/f", path="../x"), NOW)


@pytest.mark.parametrize(
    "template", ["{event.__class__}", "{event.metadata[missing]}", "{nope}", "{filename"]
)
def test_bad_templates_refused(template: str) -> None:
    ev = Event(id="e1", url="https://h/f")
    with pytest.raises(PermanentError):
        render_destination(template, ev, NOW)


def test_template_cannot_escape_root() -> None:
    ev = Event(id="../../etc", url="https://h/passwd")
    with pytest.raises(PermanentError):
        render_destination("{event.id}/{filename}", ev, NOW)


def test_redact_url_drops_secrets() -> None:
    assert (
        redact_url("https://user:pw@host:8443/p/f.bin?sig=abc#frag")
        == "https://host:8443/p/f.bin?<redacted>"
    )
    assert redact_url("http://h/f") == "http://h/f"
