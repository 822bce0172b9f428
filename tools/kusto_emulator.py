"""An Azure Data Explorer (Kusto) emulator for tests: the v2 query endpoint over plain HTTP.

Good enough for the real ``azure-kusto-data`` 6.0.4 client (``KustoClient.execute`` and
``execute_streaming_query``) on a few small in-memory tables. It runs in a background thread of
the test process (``ThreadingHTTPServer``), so a test needs neither Docker nor a cluster::

    emulator = start(database="db1")        # or: python tools/kusto_emulator.py --port 8088
    emulator.create_table("Events", [("id", "string"), ("ts", "datetime")])
    emulator.append("Events", [{"id": "e1", "ts": datetime(2026, 1, 1, tzinfo=UTC)}])
    client = KustoClient(KustoConnectionStringBuilder.with_no_authentication(emulator.url))
    rows = client.execute("db1", "Events | where id > 'e0' | take 10").primary_results[0]
    emulator.throttle(2)                    # the next two queries answer 429
    emulator.stop()

Covered
-------
- ``POST /v2/rest/query`` with the client's JSON body (``db``, ``csl``; ``properties`` is
  ignored). The answer is the non-progressive v2 frame array: ``DataSetHeader``, a
  ``QueryProperties`` table, the ``PrimaryResult`` table, a ``QueryCompletionInformation`` table
  (one Info row, so ``errors_count`` is 0) and ``DataSetCompletion``; table fields are sent in
  the order the streaming parser needs (``Rows`` last).
- Queries: ``<Table>`` followed by any of ``| where <pred>``, ``| order by`` (also ``sort by``)
  ``<col> [asc|desc] [nulls first|last], ...``, ``| take N`` (also ``limit``) and
  ``| summarize [name =] max(<col>)``, applied in order as KQL does. A predicate is comparisons
  ``<col> <op> <literal>`` (``== != < <= > >=``) joined by ``and``/``or`` (``and`` binds tighter)
  and parentheses. Literals: ``datetime(...)`` (date, time, up to 7 fraction digits, optional
  ``Z``; all UTC), integers, ``long(N)``/``int(N)``/``real(X)``, reals, ``true``/``false``,
  strings in double or single quotes with backslash escapes.
- Semantics: datetimes are compared at 100 ns ticks and sent with 7 fraction digits; strings
  compare ordinally; a comparison with null is false except ``!=``; ``order by`` defaults to
  desc, nulls first on asc and last on desc; ``max`` of no rows (or only nulls) is null.
- Errors as Kusto sends them (HTTP 400, ``{"error": {...}}``): unknown database
  (``EntityNotFoundException``), unreadable query (``SyntaxException``, naming the part that could
  not be read), unknown table or column and type mismatches (``SemanticException``, message
  starting ``Semantic error:``). :meth:`Emulator.throttle` makes queries answer 429.
- Counters: :attr:`Emulator.requests` (throttled and failed ones included) and
  :attr:`Emulator.queries` (every ``csl`` received, in order).

Not covered
-----------
- Authentication (any or no ``Authorization`` header is accepted), TLS, gzip request bodies.
- Management commands (``/v1/rest/mgmt`` answers 400), ingestion, the v1 query endpoint,
  progressive frames (``TableHeader``/``TableFragment``), request properties (timeouts,
  ``notruncation``, query parameters), result truncation limits.
- All other KQL: ``project``, ``extend``, ``count``, other aggregates, functions, arithmetic,
  ``in``, ``has``/``contains``, ``between``, ``let``, comments, ``set`` statements, ``@"..."``
  verbatim strings, comparing or sorting ``dynamic`` columns, ``timespan``/``guid``/``decimal``.
- Nulls: a missing string is null here (Kusto stores an empty string), and ``!=`` with a null is
  true here (Kusto's null comparison is null, hence false in ``where``).
- HTTP keep-alive: every response closes its connection (HTTP/1.0), so a stopped emulator
  refuses the next request instead of answering it on an open connection.
"""

from __future__ import annotations

import argparse
import json
import operator
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

TYPES = ("string", "long", "int", "real", "bool", "datetime", "dynamic")
NUMERIC = ("long", "int", "real")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TICKS_PER_SECOND = 10_000_000
Cell = Any
"""A stored value: str, int, float, bool, datetime as int ticks since 1970, dynamic as JSON."""
Columns = list[tuple[str, str]]
Rows = list[list[Cell]]
Table = tuple[Columns, Rows]


class QueryError(Exception):
    """A query Kusto would refuse: ``kind`` is the exception type named in the error body."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.message = kind, message


def _syntax(message: str) -> QueryError:
    return QueryError("SyntaxException", f"Syntax error: {message}")


def _semantic(message: str) -> QueryError:
    return QueryError("SemanticException", f"Semantic error: {message}")


# -- values ----------------------------------------------------------------------------------

_DATETIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)(?:[T ](\d\d):(\d\d)(?::(\d\d)(?:\.(\d{1,7}))?)?)?Z?")
_PYTHON: dict[str, type | tuple[type, ...]] = {
    "string": str, "long": int, "int": int, "real": (int, float), "bool": bool,
    "datetime": datetime, "dynamic": object,
}  # fmt: skip


def to_ticks(value: datetime) -> int:
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * TICKS_PER_SECOND + delta.microseconds * 10


def ticks_text(ticks: int) -> str:
    """``2026-01-01T00:00:00.1234567Z``: what the service sends (and dateutil's isoparse reads)."""
    seconds, fraction = divmod(ticks, TICKS_PER_SECOND)
    whole = (EPOCH + timedelta(seconds=seconds)).replace(tzinfo=None)
    return f"{whole.isoformat(timespec='seconds')}.{fraction:07d}Z"


def _datetime_ticks(text: str) -> int:
    match = _DATETIME.fullmatch(text)
    try:
        assert match is not None
        y, mo, d, h, mi, s = (int(part or 0) for part in match.groups()[:6])
        value = datetime(y, mo, d, h, mi, s, tzinfo=UTC)
    except (AssertionError, ValueError):
        raise _syntax(f"cannot read the datetime 'datetime({text})'") from None
    return to_ticks(value) + int((match.group(7) or "").ljust(7, "0"))


def _cell(kind: str, value: object, where: str) -> Cell:
    """``value`` (from :meth:`Emulator.append`) as stored in a column of type ``kind``."""
    if value is None:
        return None
    stray_bool = isinstance(value, bool) and kind not in ("bool", "dynamic")
    naive = isinstance(value, datetime) and value.tzinfo is None
    if not isinstance(value, _PYTHON[kind]) or stray_bool or naive:
        raise ValueError(f"{where}: {value!r} is not a {kind} (datetimes must be aware)")
    if isinstance(value, datetime):
        return to_ticks(value)
    if kind == "dynamic":
        json.dumps(value)  # a TypeError now rather than in a response
    return float(value) if kind == "real" else value  # type: ignore[arg-type]


# -- the query language ----------------------------------------------------------------------


class Token(NamedTuple):
    kind: str  # datetime, typed, real, int, string, ident, op, punct, end
    text: str
    pos: int


_TOKEN = re.compile(
    r"""(?P<ws>\s+)
    |(?P<datetime>datetime\s*\([^()]*\))
    |(?P<typed>(?:long|int|real)\s*\([^()]*\))
    |(?P<real>-?(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|-?\d+[eE][+-]?\d+)
    |(?P<int>-?\d+)
    |(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<op>==|!=|<=|>=|<|>|=)
    |(?P<punct>[|(),])""",
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0"}
_COMPARE: dict[str, Callable[[Cell, Cell], bool]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt,
    "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}  # fmt: skip


def tokenize(csl: str) -> list[Token]:
    tokens, pos = [], 0
    while pos < len(csl):
        match = _TOKEN.match(csl, pos)
        if match is None:
            raise _syntax(f"unexpected {csl[pos : pos + 20]!r} at position {pos}")
        if match.lastgroup != "ws":
            tokens.append(Token(str(match.lastgroup), match.group(), pos))
        pos = match.end()
    return [*tokens, Token("end", "end of query", len(csl))]


class Comparison(NamedTuple):
    column: str
    op: str  # a key of _COMPARE
    kind: str  # of the literal: string, long, real, bool, datetime
    value: Cell


class Junction(NamedTuple):
    op: str  # "and" or "or"
    parts: tuple[Predicate, ...]


Predicate = Comparison | Junction


class SortKey(NamedTuple):
    column: str
    descending: bool
    nulls_first: bool


@dataclass(frozen=True)
class Step:
    """One ``| operator``: ``where`` (predicate), ``order`` (keys), ``take`` (count) or
    ``summarize`` (column, alias)."""

    name: str
    predicate: Predicate | None = None
    keys: tuple[SortKey, ...] = ()
    count: int = 0
    column: str = ""
    alias: str = ""


class Parser:
    """Recursive descent over :func:`tokenize`'s tokens: ``Table (| operator)*``."""

    def __init__(self, csl: str) -> None:
        self.tokens, self.index = tokenize(csl), 0

    def peek(self, offset: int = 0) -> Token:
        return self.tokens[min(self.index + offset, len(self.tokens) - 1)]

    def next(self) -> Token:
        token = self.peek()
        self.index += 1
        return token

    def accept(self, text: str) -> bool:
        if self.peek().kind in ("ident", "op", "punct") and self.peek().text == text:
            self.index += 1
            return True
        return False

    def expect(self, kind: str, what: str, text: str | None = None) -> Token:
        token = self.peek()
        if token.kind != kind or (text is not None and token.text != text):
            raise _syntax(f"expected {what} at position {token.pos}, found '{token.text}'")
        return self.next()

    def query(self) -> tuple[str, list[Step]]:
        table = self.expect("ident", "a table name").text
        steps = []
        while self.accept("|"):
            steps.append(self.step())
        self.expect("end", "'|' or the end of the query")
        return table, steps

    def step(self) -> Step:
        token = self.expect("ident", "an operator")
        if token.text == "where":
            return Step("where", predicate=self.disjunction())
        if token.text in ("order", "sort"):
            self.expect("ident", "'by'", "by")
            keys = [self.sort_key()]
            while self.accept(","):
                keys.append(self.sort_key())
            return Step("order", keys=tuple(keys))
        if token.text in ("take", "limit"):
            count = int(self.expect("int", "a row count").text)
            if count < 0:
                raise _syntax(f"'{token.text}' needs a count of 0 or more, not {count}")
            return Step("take", count=count)
        if token.text == "summarize":
            alias = self.next().text if self.peek(1).text == "=" else ""
            self.accept("=")
            self.expect("ident", "'max' (the only aggregate the emulator knows)", "max")
            self.expect("punct", "'('", "(")
            column = self.expect("ident", "a column name").text
            self.expect("punct", "')'", ")")
            return Step("summarize", column=column, alias=alias or f"max_{column}")
        raise _syntax(f"the emulator does not support '{token.text}' (position {token.pos})")

    def sort_key(self) -> SortKey:
        column = self.expect("ident", "a column name").text
        descending = not self.accept("asc")  # KQL sorts desc unless told asc
        if descending:
            self.accept("desc")
        nulls_first = not descending
        if self.accept("nulls"):
            nulls_first = self.expect("ident", "'first' or 'last'").text == "first"
        return SortKey(column, descending, nulls_first)

    def disjunction(self) -> Predicate:
        parts = [self.conjunction()]
        while self.accept("or"):
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else Junction("or", tuple(parts))

    def conjunction(self) -> Predicate:
        parts = [self.primary()]
        while self.accept("and"):
            parts.append(self.primary())
        return parts[0] if len(parts) == 1 else Junction("and", tuple(parts))

    def primary(self) -> Predicate:
        if self.accept("("):
            inner = self.disjunction()
            self.expect("punct", "')'", ")")
            return inner
        column = self.expect("ident", "a column name").text
        op = self.peek()
        if op.text not in _COMPARE:
            raise _syntax(f"expected == != < <= > or >= at position {op.pos}, found '{op.text}'")
        self.next()
        return Comparison(column, op.text, *self.literal())

    def literal(self) -> tuple[str, Cell]:
        token = self.next()
        inner = token.text[token.text.find("(") + 1 : -1].strip()
        try:
            if token.kind == "datetime":
                return "datetime", _datetime_ticks(inner)
            if token.kind == "typed":
                real = token.text.startswith("real")
                return ("real", float(inner)) if real else ("long", int(inner))
            if token.kind in ("int", "real"):
                kind = "long" if token.kind == "int" else "real"
                return kind, int(token.text) if kind == "long" else float(token.text)
        except ValueError:
            raise _syntax(f"cannot read '{token.text}' at position {token.pos}") from None
        if token.kind == "string":
            body = token.text[1:-1]
            return "string", re.sub(r"\\(.)", lambda m: _ESCAPES.get(m[1], m[1]), body)
        if token.kind == "ident" and token.text in ("true", "false"):
            return "bool", token.text == "true"
        raise _syntax(f"expected a literal at position {token.pos}, found '{token.text}'")


# -- running a query -------------------------------------------------------------------------


def _column(columns: Columns, name: str, step: str) -> tuple[int, str]:
    for index, (column, kind) in enumerate(columns):
        if column == name:
            if kind == "dynamic" and step != "where":
                raise _semantic(f"'{step}' operator: the emulator cannot use dynamic '{name}'")
            return index, kind
    raise _semantic(f"'{step}' operator: Failed to resolve scalar expression named '{name}'")


def _compile(predicate: Predicate, columns: Columns) -> Callable[[list[Cell]], bool]:
    if isinstance(predicate, Junction):
        parts = [_compile(part, columns) for part in predicate.parts]
        combine = all if predicate.op == "and" else any
        return lambda row: combine(part(row) for part in parts)
    index, kind = _column(columns, predicate.column, "where")
    if kind != predicate.kind and not (kind in NUMERIC and predicate.kind in NUMERIC):
        raise _semantic(
            f"Cannot compare values of types {kind} and {predicate.kind} "
            f"('{predicate.column} {predicate.op} ...'). Try adding explicit casts"
        )
    compare, value, op = _COMPARE[predicate.op], predicate.value, predicate.op
    return lambda row: op == "!=" if row[index] is None else compare(row[index], value)


def _sorted(rows: Rows, columns: Columns, keys: tuple[SortKey, ...]) -> Rows:
    rows = list(rows)
    for key in reversed(keys):  # stable sorts, least significant key first
        index, _ = _column(columns, key.column, "order")
        null_rank = 0 if key.nulls_first != key.descending else 2  # reverse=True flips it

        def sort_key(row: list[Cell], i: int = index, n: int = null_rank) -> tuple[int, Cell]:
            return (n, None) if row[i] is None else (1, row[i])

        rows.sort(key=sort_key, reverse=key.descending)
    return rows


def run(tables: dict[str, Table], csl: str) -> Table:
    """The columns and rows ``csl`` selects, or :class:`QueryError`."""
    name, steps = Parser(csl).query()
    if name not in tables:
        raise _semantic(f"Failed to resolve table or column expression named '{name}'")
    columns, rows = tables[name]
    for step in steps:
        if step.predicate is not None:
            matches = _compile(step.predicate, columns)
            rows = [row for row in rows if matches(row)]
        elif step.name == "order":
            rows = _sorted(rows, columns, step.keys)
        elif step.name == "take":
            rows = rows[: step.count]
        else:
            index, kind = _column(columns, step.column, "summarize")
            values = [row[index] for row in rows if row[index] is not None]
            columns, rows = [(step.alias, kind)], [[max(values) if values else None]]
    return columns, rows


# -- the response ----------------------------------------------------------------------------


def _wire(kind: str, value: Cell) -> Cell:
    return ticks_text(value) if kind == "datetime" and value is not None else value


def _table(
    table_id: int, kind: str, columns: Columns, rows: Rows, name: str = ""
) -> dict[str, Any]:
    # The streaming parser reads TableId, TableKind, TableName and Columns in any order, then
    # skips to Rows: Rows must come last.
    wire = [[_wire(t, v) for (_, t), v in zip(columns, row, strict=True)] for row in rows]
    return {
        "FrameType": "DataTable",
        "TableId": table_id,
        "TableKind": kind,
        "TableName": name or kind,
        "Columns": [{"ColumnName": c, "ColumnType": t} for c, t in columns],
        "Rows": wire,
    }


_PROPERTIES: Columns = [("TableId", "int"), ("Key", "string"), ("Value", "dynamic")]
_COMPLETION: Columns = [
    ("Timestamp", "datetime"), ("ClientRequestId", "string"), ("Level", "int"),
    ("LevelName", "string"), ("StatusCode", "int"), ("EventTypeName", "string"),
    ("Payload", "string"),
]  # fmt: skip


def frames(columns: Columns, rows: Rows) -> list[dict[str, Any]]:
    """The v2 response of a successful query, as the service sends it (non-progressive)."""
    done = '{"Count":1,"Text":"Query completed successfully"}'
    info = [to_ticks(datetime.now(UTC)), "", 4, "Info", 0, "QueryInfo", done]
    return [
        {"FrameType": "DataSetHeader", "IsProgressive": False, "Version": "v2.0"},
        _table(
            0, "QueryProperties", _PROPERTIES, [[1, "Visualization", {}]], "@ExtendedProperties"
        ),
        _table(1, "PrimaryResult", columns, rows),
        _table(2, "QueryCompletionInformation", _COMPLETION, [info]),
        {"FrameType": "DataSetCompletion", "HasErrors": False, "Cancelled": False},
    ]


def error_body(kind: str, message: str, code: str = "General_BadRequest") -> dict[str, Any]:
    return {"error": {
        "code": code, "message": "Request is invalid and cannot be executed.",
        "@type": f"Kusto.Data.Exceptions.{kind}", "@message": message, "@permanent": True,
    }}  # fmt: skip


# -- the server ------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: Emulator) -> None:
        self.emulator = emulator
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server  # protocol_version stays HTTP/1.0: one request per connection

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.partition("?")[0]
        if path == "/v2/rest/query":
            status, payload = self.server.emulator.answer(body)
        elif path == "/v1/rest/mgmt":
            message = "Management commands are not supported by the emulator"
            status, payload = 400, error_body("BadRequestException", message)
        else:
            status, payload = 404, error_body("NotFoundException", f"No route {path}", "NotFound")
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class Emulator:
    """A running emulator: one database of in-memory tables, served in a background thread."""

    def __init__(self, *, port: int = 0, database: str = "db") -> None:
        self.database = database
        self.queries: list[str] = []
        """Every ``csl`` received, in order (throttled and failed ones included)."""
        self._lock = threading.Lock()
        self._tables: dict[str, Table] = {}
        self._requests = self._throttled = 0
        self._server = _Server(("127.0.0.1", port), self)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread: threading.Thread | None = None

    @property
    def requests(self) -> int:
        """Query requests received, throttled and failed ones included."""
        with self._lock:
            return self._requests

    def create_table(self, name: str, columns: list[tuple[str, str]]) -> None:
        bad = [kind for _, kind in columns if kind not in TYPES]
        if bad or not columns:
            raise ValueError(f"table {name}: unknown column types {bad} (known: {TYPES})")
        with self._lock:
            if name in self._tables:
                raise ValueError(f"table {name} exists")
            self._tables[name] = (list(columns), [])

    def append(self, table: str, rows: list[dict[str, object]]) -> None:
        """Add ``rows`` (by column name; a missing key is null) to ``table``."""
        with self._lock:
            if table not in self._tables:
                raise ValueError(f"no table {table} (create_table first)")
            columns, stored = self._tables[table]
            new = []
            for row in rows:
                if unknown := set(row) - {name for name, _ in columns}:
                    raise ValueError(f"table {table} has no columns {sorted(unknown)}")
                new.append(
                    [_cell(kind, row.get(name), f"{table}.{name}") for name, kind in columns]
                )
            stored.extend(new)

    def throttle(self, count: int) -> None:
        """The next ``count`` query requests answer HTTP 429."""
        with self._lock:
            self._throttled = count

    def answer(self, body: bytes) -> tuple[int, object]:
        """(HTTP status, JSON body) for a ``/v2/rest/query`` request body."""
        csl: str | None
        try:
            request = json.loads(body)
            database, csl = str(request["db"]), str(request["csl"])
        except (ValueError, KeyError, TypeError):
            database, csl = "", None
        with self._lock:
            self._requests += 1
            throttled, self._throttled = self._throttled > 0, max(0, self._throttled - 1)
            if csl is not None:
                self.queries.append(csl)
        if csl is None:
            return 400, error_body("BadRequestException", "expected a JSON body with db and csl")
        if throttled:
            message = "The request was denied due to throttling (emulated)"
            return 429, error_body("ThrottlingException", message, "TooManyRequests")
        if database != self.database:
            message = f"Database '{database}' was not found (the emulator has '{self.database}')"
            return 400, error_body("EntityNotFoundException", message)
        try:
            with self._lock:
                columns, rows = run(self._tables, csl)
        except QueryError as error:
            return 400, error_body(error.kind, error.message)
        return 200, frames(columns, rows)

    def start(self) -> Emulator:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name="kusto-emulator", daemon=True,
        )  # fmt: skip
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()


def start(*, port: int = 0, database: str = "db") -> Emulator:
    """An emulator serving on 127.0.0.1 (``port`` 0: a free one), in a background thread."""
    return Emulator(port=port, database=database).start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=8088, help="0 picks a free port")
    parser.add_argument("--database", default="db")
    args = parser.parse_args(argv)
    emulator = start(port=args.port, database=args.database)
    print(emulator.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()


if __name__ == "__main__":
    main()
