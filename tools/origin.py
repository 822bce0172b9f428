"""A real HTTP origin for tests and ``make demo``: deterministic files and scripted failures.

Every file's bytes are a pure function of its name and size, so a client knows the sha256 of
``/files/report.csv?size=1000000`` without downloading it (:func:`sha256_of`). The content is
64 KiB blocks: a pattern derived from the name by chained sha256, with the block number written
into each block's first 8 bytes, so a reordered or repeated block changes the checksum.

Routes (every ``size`` is in bytes):

- ``GET /files/<name>?size=N``: 200 with ``Content-Length``.
- ``GET /chunked/<name>?size=N``: 200, chunked transfer encoding (no ``Content-Length``).
- ``GET /missing/<name>``: 404.
- ``GET /status/<code>/<name>?retry_after=V``: that status code, with ``Retry-After: V`` if given.
- ``GET /flaky/<name>?size=N&fail=K``: 503 with ``Retry-After: 0`` for the first K requests of
  that name, then the file.
- ``GET /slow/<name>?size=N&delay=S&after=K``: sends the headers and the first K bytes
  (default 0), sleeps S seconds, then the rest.
- ``GET /truncated/<name>?size=N``: ``Content-Length: N`` but closes after N/2 bytes.
- ``GET /redirect/<hops>/<name>?size=N``: 302 to ``/redirect/<hops-1>/…``; at 0, to ``/files/…``.
- ``GET /goto?url=U``: 302 to any URL U (for redirect tests).
- ``GET /ranged/<name>?size=N&cut=K&cuts=C&validator=V&change=M&ranges=R``: a file that honours
  ``Range: bytes=a-``/``a-b`` (206 with ``Content-Range``; 416 when unsatisfiable) and
  ``If-Range``. Its first C requests (default 1) stop after K body bytes (default N/2) and
  close the connection. V is ``etag`` (default), ``last-modified`` or ``none`` (which
  validator the response carries). With ``change=M`` the content (and its validator) changes
  after M requests: it becomes the content of ``<name>#2``. ``ranges=0``: Range is ignored.
- ``GET /drip/<name>?size=N&chunk=B&every=S``: B bytes (default 100) every S seconds.
- ``GET /hang/<name>``: reads the request and answers nothing until the server closes (a
  stalled origin).
- ``GET /throttle/<name>?size=N&limit=K&retry_after=V&delay=S``: at most K ``/throttle``
  requests (default 4) are served at once; one beyond them gets 429 with ``Retry-After: V``
  (default 1) and is not counted as running. Each served one waits S seconds (default 0.05)
  before its body, so that concurrency shows.
- ``GET /counts``: JSON ``{path: number of requests}`` (paths without query strings).
- ``GET /concurrency``: JSON ``{route: {"now": …, "peak": …, "throttled": …}}`` for ``/hang``
  and ``/throttle`` (:meth:`Origin.concurrency`).

The server also counts body bytes sent per path (:meth:`Origin.bytes_sent`) and records the
``Range``/``If-Range`` headers of ``/ranged`` requests (:attr:`OriginServer.ranged_requests`).

Standard library only, so ``python tools/origin.py --port 8080`` runs on any machine. Tests import
it through ``tests/helpers/origin.py`` and run it in a thread (:func:`serve`).
"""

from __future__ import annotations

import argparse
import email.utils
import functools
import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

BLOCK_SIZE = 64 * 1024


@functools.lru_cache(maxsize=256)
def _pattern(name: str) -> bytes:
    """BLOCK_SIZE bytes derived from ``name`` by chaining sha256 digests."""
    digest = hashlib.sha256(name.encode()).digest()
    parts = []
    for _ in range(BLOCK_SIZE // len(digest)):
        digest = hashlib.sha256(digest).digest()
        parts.append(digest)
    return b"".join(parts)


def blocks(name: str, size: int) -> Iterator[bytes]:
    """The content of ``name`` at ``size`` bytes, as blocks of at most BLOCK_SIZE bytes."""
    pattern = _pattern(name)
    tail = pattern[8:]
    index = 0
    remaining = size
    while remaining > 0:
        block = index.to_bytes(8, "big") + tail
        if remaining < BLOCK_SIZE:
            block = block[:remaining]
        remaining -= len(block)
        index += 1
        yield block


def content(name: str, size: int) -> bytes:
    """The whole content of ``name`` at ``size`` bytes (use :func:`blocks` for large sizes)."""
    return b"".join(blocks(name, size))


@functools.lru_cache(maxsize=1024)
def sha256_of(name: str, size: int) -> str:
    """Lowercase hex sha256 of ``content(name, size)``, computed without holding it in memory."""
    h = hashlib.sha256()
    for block in blocks(name, size):
        h.update(block)
    return h.hexdigest()


class OriginServer(ThreadingHTTPServer):
    """The server, with the request counters and the flaky-route state its handlers share."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # a burst of connections (libcurl opens them all at once) waits
    # in the backlog; with socketserver's 5, the rest had their handshake retried a second later

    def __init__(self, address: tuple[str, int], *, verbose: bool = False) -> None:
        super().__init__(address, OriginHandler)
        self.verbose = verbose
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.flaky_seen: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.ranged_seen: Counter[str] = Counter()
        self.ranged_requests: list[tuple[str, str | None, str | None]] = []
        """(path, Range header, If-Range header) of every /ranged request."""
        self.running: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.throttled: Counter[str] = Counter()
        self.closing = threading.Event()
        """Set when the server closes: /hang requests end (with no response)."""

    def concurrency(self) -> dict[str, dict[str, int]]:
        with self.lock:
            return {
                route: {"now": self.running[route], "peak": self.peak[route],
                        "throttled": self.throttled[route]}
                for route in ("hang", "throttle")
            }  # fmt: skip

    def server_close(self) -> None:
        self.closing.set()
        super().server_close()

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients hang up mid-body on purpose (size limits, cancellation): not worth a traceback.
        if self.verbose:
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class OriginHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and chunked responses
    server: OriginServer

    def log_message(self, format: str, *args: object) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    # -- routing ----------------------------------------------------------------------------

    def _route(self, *, head: bool) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        segments = [s for s in parts.path.split("/") if s]
        with self.server.lock:
            self.server.counts[parts.path] += 1
        try:
            size = int(query.get("size", "0"))
        except ValueError:
            self._empty(HTTPStatus.BAD_REQUEST)
            return
        route = segments[0] if segments else ""
        name = unquote("/".join(segments[1:]))
        if route == "counts":
            with self.server.lock:
                body = json.dumps(dict(self.server.counts)).encode()
            self._send(HTTPStatus.OK, body, "application/json", head=head)
        elif route == "concurrency":
            body = json.dumps(self.server.concurrency()).encode()
            self._send(HTTPStatus.OK, body, "application/json", head=head)
        elif route == "files" and name:
            self._file(name, size, head=head)
        elif route == "hang" and name:
            with self._running("hang"):
                self.server.closing.wait()
            self.close_connection = True
        elif route == "throttle" and name:
            self._throttle(name, size, query, head=head)
        elif route == "chunked" and name:
            self._chunked(name, size, head=head)
        elif route == "missing":
            self._empty(HTTPStatus.NOT_FOUND)
        elif route == "status" and len(segments) >= 2 and segments[1].isdigit():
            headers = {}
            if "retry_after" in query:
                headers["Retry-After"] = query["retry_after"]
            self._empty(int(segments[1]), headers)
        elif route == "flaky" and name:
            with self.server.lock:
                self.server.flaky_seen[name] += 1
                seen = self.server.flaky_seen[name]
            if seen <= int(query.get("fail", "1")):
                self._empty(HTTPStatus.SERVICE_UNAVAILABLE, {"Retry-After": "0"})
            else:
                self._file(name, size, head=head)
        elif route == "slow" and name:
            delay = float(query.get("delay", "1"))
            self._file(name, size, head=head, delay=delay, delay_after=int(query.get("after", "0")))
        elif route == "truncated" and name:
            self._file(name, size, head=head, stop_after=size // 2)
        elif route == "redirect" and len(segments) >= 3 and segments[1].isdigit():
            hops = int(segments[1])
            rest = "/".join(segments[2:])
            target = f"/redirect/{hops - 1}/{rest}" if hops > 1 else f"/files/{rest}"
            if parts.query:
                target += "?" + parts.query
            self._empty(HTTPStatus.FOUND, {"Location": target})  # path is still percent-encoded
        elif route == "goto" and "url" in query:
            self._empty(HTTPStatus.FOUND, {"Location": query["url"]})
        elif route == "ranged" and name:
            self._ranged(parts.path, name, size, query, head=head)
        elif route == "drip" and name:
            self._drip(parts.path, name, size, query, head=head)
        else:
            self._empty(HTTPStatus.NOT_FOUND)

    @contextmanager
    def _running(self, route: str) -> Iterator[None]:
        """Count this request as running on ``route`` while the block runs."""
        server = self.server
        with server.lock:
            server.running[route] += 1
            server.peak[route] = max(server.peak[route], server.running[route])
        try:
            yield
        finally:
            with server.lock:
                server.running[route] -= 1

    def _throttle(self, name: str, size: int, query: dict[str, str], *, head: bool) -> None:
        limit = int(query.get("limit", "4"))
        server = self.server
        with server.lock:
            over = server.running["throttle"] >= limit
            if over:
                server.throttled["throttle"] += 1
            else:
                server.running["throttle"] += 1
                server.peak["throttle"] = max(server.peak["throttle"], server.running["throttle"])
        if over:
            retry_after = query.get("retry_after", "1")
            self._empty(HTTPStatus.TOO_MANY_REQUESTS, {"Retry-After": retry_after})
            return
        try:
            time.sleep(float(query.get("delay", "0.05")))
            self._file(name, size, head=head)
        finally:
            with server.lock:
                server.running["throttle"] -= 1

    # -- responses --------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        # Counted before the write: the client can read the last block and ask for the count
        # before this thread runs again (a loaded CI run saw 60,000 of 210,000 bytes so).
        path = urlsplit(self.path).path
        with self.server.lock:
            self.server.bytes[path] += len(data)
        try:
            self.wfile.write(data)
        except OSError:
            with self.server.lock:
                self.server.bytes[path] -= len(data)
            raise

    def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send(self, status: int, body: bytes, content_type: str, *, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _file(
        self,
        name: str,
        size: int,
        *,
        head: bool,
        delay: float = 0.0,
        delay_after: int = 0,
        stop_after: int | None = None,
    ) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if head:
            return
        self.wfile.flush()
        sent = 0
        for block in blocks(name, size):
            if delay and sent + len(block) > delay_after:
                self._write(block[: delay_after - sent])
                self.wfile.flush()
                time.sleep(delay)
                block = block[delay_after - sent :]
                sent = delay_after
                delay = 0.0
            if stop_after is not None and sent + len(block) > stop_after:
                self._write(block[: stop_after - sent])
                self.wfile.flush()
                self.close_connection = True
                return
            self._write(block)
            sent += len(block)
        if delay:  # an empty body, or one shorter than ``after``
            self.wfile.flush()
            time.sleep(delay)

    def _ranged(
        self, path: str, name: str, size: int, query: dict[str, str], *, head: bool
    ) -> None:
        requested = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        with self.server.lock:
            self.server.ranged_seen[name] += 1
            seen = self.server.ranged_seen[name]
            self.server.ranged_requests.append((path, requested, if_range))
        change = int(query.get("change", "0"))
        version = 2 if change and seen > change else 1
        content_name = name if version == 1 else f"{name}#2"
        kind = query.get("validator", "etag")
        headers = {"Content-Type": "application/octet-stream"}
        validator = None
        if kind == "etag":
            validator = headers["ETag"] = f'"{sha256_of(content_name, size)[:16]}"'
        elif kind == "last-modified":
            modified = email.utils.formatdate(1_700_000_000 + version * 86_400, usegmt=True)
            validator = headers["Last-Modified"] = modified
        if query.get("ranges", "1") != "0":
            headers["Accept-Ranges"] = "bytes"
        cut = int(query.get("cut", str(size // 2)))
        stop_after = cut if seen <= int(query.get("cuts", "1")) else None
        start, end = 0, size - 1
        status = HTTPStatus.OK
        wanted = _byte_range(requested) if headers.get("Accept-Ranges") else None
        if wanted is not None and (if_range is None or if_range == validator):
            first, last = wanted
            if first >= size:
                self._empty(
                    HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, {"Content-Range": f"bytes */{size}"}
                )
                return
            start, end = first, size - 1 if last is None else min(last, size - 1)
            status = HTTPStatus.PARTIAL_CONTENT
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(end - start + 1 if size else 0))
        self.end_headers()
        if head:
            return
        self.wfile.flush()
        data = content(content_name, size)[start : end + 1]  # tests use small files here
        if stop_after is not None and stop_after < len(data):
            self._write(data[:stop_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self._write(data)

    def _drip(self, path: str, name: str, size: int, query: dict[str, str], *, head: bool) -> None:
        chunk = int(query.get("chunk", "100"))
        every = float(query.get("every", "1"))
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if head:
            return
        data = content(name, size)
        for at in range(0, size, chunk):
            self._write(data[at : at + chunk])
            self.wfile.flush()
            if at + chunk < size:
                time.sleep(every)

    def _chunked(self, name: str, size: int, *, head: bool) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if head:
            return
        for block in blocks(name, size):
            self.wfile.write(f"{len(block):x}\r\n".encode() + block + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")


def _byte_range(header: str | None) -> tuple[int, int | None] | None:
    """(first, last or None) of a single ``bytes=a-`` / ``bytes=a-b`` range; None otherwise."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[len("bytes=") :].strip().partition("-")
    if not first.isdigit() or (last and not last.isdigit()):
        return None
    if last and int(last) < int(first):
        return None
    return int(first), int(last) if last else None


@dataclass
class Origin:
    """A running origin, as tests see it."""

    server: OriginServer
    url: str
    """Base URL without a trailing slash, e.g. ``http://127.0.0.1:41234``."""

    def file_url(self, name: str, size: int, route: str = "files", **query: object) -> str:
        params = "&".join(f"{k}={v}" for k, v in {"size": size, **query}.items())
        return f"{self.url}/{route}/{quote(name)}?{params}"

    def counts(self) -> dict[str, int]:
        with self.server.lock:
            return dict(self.server.counts)

    def count(self, path: str) -> int:
        with self.server.lock:
            return self.server.counts[path]

    def bytes_sent(self, path: str) -> int:
        """Body bytes the origin wrote for ``path`` (without query string), all requests."""
        with self.server.lock:
            return self.server.bytes[path]

    def concurrency(self) -> dict[str, dict[str, int]]:
        """Per route (``hang``, ``throttle``): requests running ``now``, their ``peak``, and
        how many were ``throttled`` (429)."""
        return self.server.concurrency()

    def ranged_requests(self, path: str) -> list[tuple[str | None, str | None]]:
        """(Range, If-Range) of each ``/ranged`` request for ``path``, in order."""
        with self.server.lock:
            return [(r, i) for p, r, i in self.server.ranged_requests if p == path]


@contextmanager
def serve(host: str = "127.0.0.1", port: int = 0, *, verbose: bool = False) -> Iterator[Origin]:
    """Run an origin in a background thread for the duration of the ``with`` block."""
    server = OriginServer((host, port), verbose=verbose)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="origin", daemon=True
    )
    thread.start()
    bound_host, bound_port = server.server_address[:2]
    try:
        yield Origin(server=server, url=f"http://{bound_host!s}:{bound_port}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    server = OriginServer((args.host, args.port), verbose=args.verbose)
    host, port = server.server_address[:2]
    print(f"http://{host!s}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
