"""The Kusto emulator (``tools/kusto_emulator.py``) against the real azure-kusto-data client.

The client is the judge: it parses the emulator's v2 frames (``execute`` and
``execute_streaming_query``), turns its error bodies into ``KustoApiError`` and its 429s into
``KustoThrottlingError``. The kusto source's tests build on this. No process is started: the
emulator is a thread of the test process.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from azure.kusto.data import KustoClient, KustoConnectionStringBuilder
from azure.kusto.data.exceptions import KustoApiError, KustoThrottlingError

from helpers.tools import load_tool

if TYPE_CHECKING:
    import kusto_emulator as emulator_tool  # tools/ is on mypy's path: the checker reads it
else:
    emulator_tool = load_tool("kusto_emulator")

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
COLUMNS = [("id", "string"), ("seq", "long"), ("ts", "datetime"), ("ok", "bool")]
ROWS: list[dict[str, object]] = [  # not in any order the queries ask for
    {"id": "e4", "seq": 4, "ts": T0 + HOUR, "ok": True},
    {"id": "e2", "seq": 2, "ts": T0, "ok": False},
    {"id": "e9"},  # every other column null
    {"id": "e6", "seq": 6, "ts": T0, "ok": False},
    {"id": "e1", "seq": 1, "ts": T0 - HOUR, "ok": True},
    {"id": "e7", "seq": 7, "ts": T0 + HOUR, "ok": False},
    {"id": "e3", "seq": 3, "ts": T0 + timedelta(seconds=1, microseconds=500_000), "ok": True},
    {"id": "e5", "seq": 5, "ts": T0, "ok": True},
]
T0_KQL = "datetime(2026-01-01T00:00:00.0000000Z)"


@pytest.fixture
def emulator() -> Iterator[emulator_tool.Emulator]:
    running = emulator_tool.start(database="db1")
    running.create_table("Events", COLUMNS)
    running.append("Events", ROWS)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def client(emulator: emulator_tool.Emulator) -> Iterator[KustoClient]:
    with KustoClient(KustoConnectionStringBuilder.with_no_authentication(emulator.url)) as kusto:
        yield kusto


def query(client: KustoClient, csl: str) -> list[dict[str, Any]]:
    return [row.to_dict() for row in client.execute("db1", csl).primary_results[0]]


def ids(client: KustoClient, csl: str) -> list[str]:
    return [row["id"] for row in query(client, csl)]


def api_error(client: KustoClient, csl: str, database: str = "db1") -> KustoApiError:
    with pytest.raises(KustoApiError) as caught:
        client.execute(database, csl)
    return caught.value


def test_bare_table_returns_every_row_with_python_types(client: KustoClient) -> None:
    result = client.execute("db1", "Events").primary_results[0]
    assert [(c.column_name, c.column_type) for c in result.columns] == COLUMNS
    rows = {row["id"]: row for row in (r.to_dict() for r in result)}
    assert sorted(rows) == sorted(str(row["id"]) for row in ROWS)
    assert rows["e3"] == {"id": "e3", "seq": 3, "ts": ROWS[6]["ts"], "ok": True}
    assert isinstance(rows["e3"]["ts"], datetime)
    assert rows["e3"]["ts"].utcoffset() == timedelta(0)
    assert rows["e9"] == {"id": "e9", "seq": None, "ts": None, "ok": None}


def test_the_sources_keyset_page(client: KustoClient) -> None:
    csl = (
        f'Events | where ts > {T0_KQL} or (ts == {T0_KQL} and id > "e5")'
        " | order by ts asc, id asc | take 3"
    )
    assert ids(client, csl) == ["e6", "e3", "e4"]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("seq > 5", ["e6", "e7"]),
        ("seq >= 5", ["e5", "e6", "e7"]),
        ('id == "e2"', ["e2"]),
        ("id=='e2'", ["e2"]),  # single quotes, no spaces
        ('id != "e2"', ["e1", "e3", "e4", "e5", "e6", "e7", "e9"]),
        ("seq <= long(2)", ["e1", "e2"]),
        ("seq < 2.5", ["e1", "e2"]),
        ("ok == true and seq > 3", ["e4", "e5"]),
        (f"ts == {T0_KQL}", ["e2", "e5", "e6"]),
        ("ts < datetime(2026-01-01)", ["e1"]),
        ("ts > datetime(2026-01-01 00:00:01.4999999)", ["e3", "e4", "e7"]),
        ("ts > datetime(2026-01-01T00:00:01.5000001Z)", ["e4", "e7"]),
        ("ts != datetime(2026-01-01T01:00:00Z)", ["e1", "e2", "e3", "e5", "e6", "e9"]),  # null
        ('id == "e1" or id == "e2" and seq > 2', ["e1"]),  # and binds tighter
        ('(id == "e1" or id == "e2") and seq > 1', ["e2"]),
        ('((id == "e1") or (seq > 6 and (ok == false)))', ["e1", "e7"]),
        (f'ts == {T0_KQL} | where id > "e2" | where seq < 6', ["e5"]),  # wheres are ANDed
    ],
)
def test_where(client: KustoClient, where: str, expected: list[str]) -> None:
    assert sorted(ids(client, f"Events | where {where}")) == expected


def test_order_by_two_columns(client: KustoClient) -> None:
    # asc puts nulls first, desc puts them last; ties keep to the second key
    asc = ["e9", "e1", "e2", "e5", "e6", "e3", "e4", "e7"]
    assert ids(client, "Events | order by ts asc, id asc") == asc
    desc = ["e4", "e7", "e3", "e2", "e5", "e6", "e1", "e9"]
    assert ids(client, "Events|order by ts desc,id asc") == desc
    assert ids(client, "Events | order by seq") == ["e7", "e6", "e5", "e4", "e3", "e2", "e1", "e9"]


def test_take_and_limit(client: KustoClient) -> None:
    assert ids(client, "Events | order by seq asc | take 3") == ["e9", "e1", "e2"]
    assert ids(client, "Events | where seq > 0 | order by seq asc | limit 2") == ["e1", "e2"]
    assert ids(client, "Events | take 0") == []


def test_summarize_max(client: KustoClient) -> None:
    assert query(client, "Events | summarize max(ts)") == [{"max_ts": T0 + HOUR}]
    assert query(client, "Events | where seq < 6 | summarize max(seq)") == [{"max_seq": 5}]
    assert query(client, "Events | where seq > 100 | summarize max(ts)") == [{"max_ts": None}]


def test_string_literal_with_escapes(emulator: emulator_tool.Emulator, client: KustoClient) -> None:
    emulator.append("Events", [{"id": 'say "hi" \\ bye', "seq": 10}])
    assert ids(client, r'Events | where id == "say \"hi\" \\ bye"') == ['say "hi" \\ bye']
    assert ids(client, r"Events | where id == 'say \"hi\" \\ bye'") == ['say "hi" \\ bye']


def test_throttle_then_serve(emulator: emulator_tool.Emulator, client: KustoClient) -> None:
    emulator.throttle(2)
    for _ in range(2):
        with pytest.raises(KustoThrottlingError):
            client.execute("db1", "Events | take 1")
    assert len(ids(client, "Events | take 1")) == 1
    assert emulator.requests == 3


def test_unknown_table_column_and_database_are_named(client: KustoClient) -> None:
    error = api_error(client, "Nope | take 1")
    assert "'Nope'" in str(error)
    assert error.is_semantic_error()
    assert "'nope'" in str(api_error(client, "Events | where nope == 1"))
    assert "'nope'" in str(api_error(client, "Events | order by nope asc"))
    assert "types string and long" in str(api_error(client, "Events | where id == 1"))
    error = api_error(client, "Events", database="db2")
    assert "'db2'" in str(error)
    assert error.get_api_error().type == "Kusto.Data.Exceptions.EntityNotFoundException"


@pytest.mark.parametrize(
    ("csl", "named"),
    [
        ("Events | project id", "'project'"),
        ("Events | where id = 'e1'", "found '='"),
        ("Events | where (id == 'e1'", "expected ')'"),
        ("Events | where ts > datetime(2026-13-01)", "datetime(2026-13-01)"),
        ("Events | take", "a row count"),
        ("Events | where id == 'e1' ;", "';'"),
    ],
)
def test_unreadable_query_names_the_part(client: KustoClient, csl: str, named: str) -> None:
    error = api_error(client, csl)
    assert str(error).startswith("Syntax error:")
    assert named in str(error)
    assert error.get_api_error().type == "Kusto.Data.Exceptions.SyntaxException"


def test_requests_and_queries_are_counted(
    emulator: emulator_tool.Emulator, client: KustoClient
) -> None:
    query(client, "Events | take 1")
    api_error(client, "Nope")
    assert emulator.requests == 2
    assert emulator.queries == ["Events | take 1", "Nope"]


def test_streaming_query(client: KustoClient) -> None:
    dataset = client.execute_streaming_query("db1", "Events | order by seq asc | take 2")
    table = next(dataset.iter_primary_results())
    assert [(row["id"], row["ts"]) for row in table] == [("e9", None), ("e1", T0 - HOUR)]


def test_append_checks_types(emulator: emulator_tool.Emulator) -> None:
    with pytest.raises(ValueError, match="aware"):
        emulator.append("Events", [{"id": "x", "ts": datetime(2026, 1, 1)}])
    with pytest.raises(ValueError, match="not a long"):
        emulator.append("Events", [{"id": "x", "seq": "1"}])
    with pytest.raises(ValueError, match="no columns"):
        emulator.append("Events", [{"id": "x", "extra": 1}])
    with pytest.raises(ValueError, match="unknown column types"):
        emulator.create_table("Other", [("x", "decimal")])
