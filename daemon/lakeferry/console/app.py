"""The console's pages and endpoints (a Starlette app, served in the daemon's own trio loop).

Routes:

- ``GET /healthz``, ``GET /readyz`` (:mod:`lakeferry.console.health`): open to anyone who can
  reach the port (load balancers carry no token); they say nothing secret.
- ``GET /``: the overview, rendered from the live feed's latest snapshot; ``/live`` pushes the
  same snapshots over a WebSocket and a small script updates the numbers in place.
- ``GET /dlq``: the current letters, filtered (reason, stage, host, age, text);
  ``GET /dlq/letter?key=…``: one letter in full; ``POST /dlq/act``: replay or purge a letter, a
  selection or a filter — first a dry run (how many, by reason) with a confirmation form,
  then, confirmed, the action, logged with what, how many and from which address.
- ``GET /trace?id=…``: where an event is or how it ended (:mod:`lakeferry.console.trace`).
- ``GET|POST /login``, ``POST /logout``: the token, where one is needed (:mod:`.auth`).

Every page is server-rendered (Jinja2, autoescaped); assets ship in the package; no page
shows a secret, a query string or a token.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import jinja2
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from lakeferry import __version__, dlq
from lakeferry.console import letters as lt
from lakeferry.console.auth import CSRF_COOKIE, CSRF_FIELD, SESSION_COOKIE, Guard, same_origin
from lakeferry.console.health import Readiness
from lakeferry.livefeed import age
from lakeferry.logs import get_logger
from lakeferry.messages import utcnow
from lakeferry.stages.catalog import STAGES

if TYPE_CHECKING:
    from lakeferry.console.trace import Tracer
    from lakeferry.livefeed import LiveFeed
    from lakeferry.pipeline import Pipeline

log = get_logger("console")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" on the
    # console's own form posts, which the CSRF check must refuse.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class ConsoleDeps:
    """What the pages read and act on."""

    pipeline: Pipeline
    feed: LiveFeed
    readiness: Readiness
    guard: Guard
    tracer: Tracer
    node: str


def templates() -> jinja2.Environment:
    """The pages' templates: autoescaped (ids, URLs and errors come from outside), strict."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("lakeferry.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def build_app(deps: ConsoleDeps) -> Starlette:
    pages = Pages(deps, templates())
    routes = [
        Route("/healthz", pages.healthz),
        Route("/readyz", pages.readyz),
        Route("/login", pages.login, methods=["GET", "POST"]),
        Route("/logout", pages.guarded(pages.logout), methods=["POST"]),
        Route("/", pages.guarded(pages.overview)),
        Route("/overview.json", pages.guarded(pages.overview_json)),
        Route("/dlq", pages.guarded(pages.letters)),
        Route("/dlq/letter", pages.guarded(pages.letter)),
        Route("/dlq/act", pages.guarded(pages.act), methods=["POST"]),
        Route("/trace", pages.guarded(pages.trace)),
        WebSocketRoute("/live", pages.live),
        Mount("/static", StaticFiles(packages=[("lakeferry.console", "static")]), name="static"),
    ]
    return Starlette(routes=routes)


class Pages:
    def __init__(self, deps: ConsoleDeps, env: jinja2.Environment) -> None:
        self.deps = deps
        self.env = env

    # -- plumbing ------------------------------------------------------------------------

    def guarded(self, handler: Handler) -> Handler:
        """Sign-in where needed; the CSRF check on every POST; the security headers."""
        guard = self.deps.guard

        async def wrapped(request: Request) -> Response:
            headers = request.headers
            if not guard.signed_in(headers, request.cookies):
                if request.method == "GET":
                    return self._headers(RedirectResponse("/login", status_code=303))
                return self._refuse(401, "sign in first: this console needs its token")
            if request.method == "POST" and not guard.bearer(headers):
                form = await request.form()
                field = str(form.get(CSRF_FIELD, ""))
                if not same_origin(headers.get("origin"), headers.get("host")):
                    return self._refuse(403, "refused: the request came from another site")
                if not guard.csrf_ok(request.cookies.get(CSRF_COOKIE, ""), field):
                    return self._refuse(
                        403, "refused: the form is stale or not from this console; reload the page"
                    )
            return self._headers(await handler(request))

        return wrapped

    def _headers(self, response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    def _refuse(self, status: int, text: str) -> Response:
        return self._headers(PlainTextResponse(text + "\n", status_code=status))

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        cookie = request.cookies.get(CSRF_COOKIE) or self.deps.guard.new_csrf_cookie()
        html = self.env.get_template(name).render(
            csrf=self.deps.guard.csrf_field(cookie),
            node=self.deps.node,
            version=__version__,
            signed_in=not self.deps.guard.open,
            path=request.url.path,
            **context,
        )
        response = HTMLResponse(html, status_code=status)
        if CSRF_COOKIE not in request.cookies:
            response.set_cookie(CSRF_COOKIE, cookie, httponly=True, samesite="strict")
        return response

    def _address(self, request: Request) -> str:
        client = request.client
        return f"{client.host}:{client.port}" if client is not None else "?"

    # -- health --------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(self, request: Request) -> Response:
        problems = self.deps.readiness.problems(self.deps.pipeline.metrics.registry)
        if problems:
            return PlainTextResponse("not ready\n" + "\n".join(problems) + "\n", status_code=503)
        return PlainTextResponse("ready\n")

    # -- sign-in -------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        guard = self.deps.guard
        if guard.open:
            return self._headers(RedirectResponse("/", status_code=303))
        error = ""
        if request.method == "POST":
            form = await request.form()
            if guard.token_matches(str(form.get("token", ""))):
                response = RedirectResponse("/", status_code=303)
                response.set_cookie(
                    SESSION_COOKIE, guard.session(), httponly=True, samesite="strict",
                    secure=request.url.scheme == "https",
                )  # fmt: skip
                log.info("console sign-in", extra={"from": self._address(request)})
                return self._headers(response)
            log.warning("console sign-in refused", extra={"from": self._address(request)})
            error = "That is not the console's token."
        return self._headers(self.render(request, "login.html", error=error))

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    # -- overview ------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        p = self.deps.pipeline
        problems = self.deps.readiness.problems(p.metrics.registry)
        nodes: list[dict[str, Any]] = []
        if p.config.fleet:  # several VMs on one cluster: each node as its heartbeats say
            from lakeferry import fleet

            try:
                status = await fleet.fleet_status(p.config, fleet.kafka_of(p.bus))
            except Exception as exc:
                log.warning("console: no fleet status", extra={"error": str(exc)})
            else:
                nodes = [node.as_json() for node in status]
        return self.render(
            request, "overview.html", snap=self.deps.feed.latest, problems=problems, nodes=nodes
        )

    async def overview_json(self, request: Request) -> Response:
        return Response(json.dumps(self.deps.feed.latest), media_type="application/json")

    async def live(self, websocket: WebSocket) -> None:
        """The live feed's snapshots, one a second (the page updates its numbers in place)."""
        if not self.deps.guard.signed_in(websocket.headers, websocket.cookies):
            await websocket.close(code=4401)
            return
        if not same_origin(websocket.headers.get("origin"), websocket.headers.get("host")):
            await websocket.close(code=4403)
            return
        await websocket.accept()
        try:
            while True:
                await websocket.send_text(json.dumps(self.deps.feed.latest))
                await self.deps.feed.tick()
        except (WebSocketDisconnect, trio.BrokenResourceError, trio.ClosedResourceError):
            return

    # -- dead letters --------------------------------------------------------------------

    async def _current(self) -> list[dlq.Letter]:
        p = self.deps.pipeline
        return await dlq.current_letters(p.bus, p.topics.dlq)

    async def letters(self, request: Request) -> Response:
        query = lt.Query.of(request.query_params)
        error = ""
        everything = await self._current()
        try:
            chosen = dlq.select(everything, query.letter_filter())
        except lt.FilterError as exc:
            error, chosen = str(exc), []
        now = utcnow()
        reasons = sorted({x.letter.reason for x in everything})
        oldest = ""
        if everything:
            oldest = age((now - everything[0].letter.dead_at).total_seconds())
        return self.render(
            request, "letters.html", query=query, error=error, total=len(everything),
            count=len(chosen), by_reason=lt.by_reason(chosen), oldest=oldest,
            rows=[lt.row(x, now) for x in reversed(chosen[-lt.SHOWN :])], shown=lt.SHOWN,
            reasons=reasons, stages=STAGES, notice=request.query_params.get("notice", ""),
        )  # fmt: skip

    async def letter(self, request: Request) -> Response:
        key = request.query_params.get("key", "")
        found = [x for x in await self._current() if x.key == key]
        if not found:
            return self.render(request, "gone.html", status=404, key=key)
        return self.render(request, "letter.html", letter=lt.detail(found[0]))

    async def act(self, request: Request) -> Response:
        form = await request.form()
        action = str(form.get("action", ""))
        if action not in ("replay", "purge"):
            return self._refuse(400, f"unknown action {action!r}: replay or purge")
        keys = frozenset(str(k) for k in form.getlist("key"))
        query = lt.Query.of({k: str(v) for k, v in form.items() if isinstance(v, str)})
        scope = "selected" if keys else "filter"
        if scope == "filter" and query.empty and form.get("all") != "1":
            return self._refuse(400, "name the letters: select some, or filter, or choose all")
        as_of_text = str(form.get("as_of", ""))
        try:
            as_of = dt.datetime.fromisoformat(as_of_text) if as_of_text else utcnow()
            flt = query.letter_filter(as_of=as_of)
        except (ValueError, lt.FilterError) as exc:
            return self._refuse(400, f"bad filter: {exc}")
        if keys:
            flt = dlq.LetterFilter(keys=keys, dead_by=as_of)
        chosen = dlq.select(await self._current(), flt)
        if form.get("confirm") != "1":
            return self.render(
                request, "confirm.html", action=action, keys=sorted(keys), query=query,
                count=len(chosen), by_reason=lt.by_reason(chosen), every=form.get("all") == "1",
                as_of=as_of.isoformat(), sample=[lt.row(x, utcnow()) for x in chosen[:20]],
            )  # fmt: skip
        p = self.deps.pipeline
        by = f"console {self._address(request)}"
        if action == "purge":
            done = await dlq.purge(p.bus, chosen, dlq_topic=p.topics.dlq, by=by)
        else:
            done = await dlq.replay(
                p.bus, chosen, dlq_topic=p.topics.dlq, pending_topic=p.topics.pending,
                intake_topic=p.topics.intake, by=by,
            )  # fmt: skip
        log.warning(
            "console action",
            extra={"action": action, "letters": done, "by_reason": lt.by_reason(chosen),
                   "scope": scope, "filter": dict(query.items()), "from": self._address(request)},
        )  # fmt: skip
        verb = "replayed" if action == "replay" else "purged"
        notice = f"{verb} {done} letter(s)" + (
            f" to {p.topics.pending}" if action == "replay" else ""
        )
        target = "/dlq?" + urlencode([*query.items(), ("notice", notice)])
        return RedirectResponse(target, status_code=303)

    # -- trace ---------------------------------------------------------------------------

    async def trace(self, request: Request) -> Response:
        event_id = request.query_params.get("id", "").strip()
        found = await self.deps.tracer.trace(event_id) if event_id else None
        return self.render(request, "trace.html", event_id=event_id, found=found)
