"""The status web app (ASGI, Starlette): routes, access control and the page.

Every handler only reads what the bridge already holds (the status snapshot, the metrics
collector) or reads the history file in a worker thread; none calls the sidecar, none changes
anything, and each answers in well under a millisecond of Trio-thread time.

Access control. Without `[status] token` every request is answered (the config loader only
allows that on loopback, or with allow_anonymous). With a token, every request needs
`Authorization: Bearer <token>`, or the cookie a browser gets by opening `/?token=<token>` once:
the answer sets an HttpOnly, SameSite=Strict cookie holding an HMAC of the token (never the
token itself) and redirects to `/`, so the token leaves the address bar and the page's own
requests carry the cookie. Anything else gets 401. The page is served with a strict
Content-Security-Policy (its one inline script and style carry a per-response nonce), so text
from the network (an energy manager's brand, say) can never run as script.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import logging
import re
import secrets
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request, cookie_parser
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from eebus_bridge.activity import ACTIVITY_KINDS, Activity
from eebus_bridge.status.endpoint import HistoryAccess
from eebus_bridge.status.metrics import CONTENT_TYPE, BridgeMetrics
from eebus_bridge.status.snapshot import StatusSources, health_reasons, iso, status_snapshot

log = logging.getLogger("eebus_bridge.status")

COOKIE = "eebus_bridge_status"
HISTORY_MAX_ROWS = 10_000
"""Most activities one /api/history answer carries (the newest ones; `truncated` says so)."""


class HistoryUnavailable(RuntimeError):
    """The history file could not be read."""


class BadQuery(ValueError):
    """A query parameter that cannot be used; the message names it."""


_SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*(m|min|h|d|w)")
_UNITS = {"m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(value: str, now: datetime, name: str) -> datetime:
    """ "24h", "90m", "7d", "2w" (that long before now) or an ISO 8601 time (UTC if no zone)."""
    text = value.strip()
    span = _SPAN.fullmatch(text)
    if span:
        return now - timedelta(seconds=float(span.group(1)) * _UNITS[span.group(2)])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadQuery(
            f"{name}: expected a span like 24h, 7d, 90m or an ISO time, got {value!r}"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _kinds(value: str | None) -> list[str] | None:
    if value is None or value in ("", "all"):
        return None
    kinds = [kind.strip() for kind in value.split(",") if kind.strip()]
    unknown = [kind for kind in kinds if kind not in ACTIVITY_KINDS]
    if unknown:
        raise BadQuery(f"kind: unknown {', '.join(unknown)}; known: {', '.join(ACTIVITY_KINDS)}")
    return kinds


def activity_json(activity: Activity) -> dict[str, Any]:
    return {"kind": activity.kind, "time": iso(activity.time), "fields": activity.fields}


class TokenGate:
    """ASGI middleware: 401 unless the request carries the token (see the module docstring)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self._app = app
        self._token = token
        self._cookie = (
            None
            if token is None
            else hmac.new(token.encode(), b"eebus-bridge status cookie", hashlib.sha256).hexdigest()
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._token is None or self._cookie is None:
            await self._app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and _same(credentials.strip(), self._token):
            await self._app(scope, receive, send)
            return
        if _same(cookie_parser(headers.get("cookie", "")).get(COOKIE, ""), self._cookie):
            await self._app(scope, receive, send)
            return
        request = Request(scope)
        offered = request.query_params.get("token")
        response: Response
        if request.url.path == "/" and offered is not None and _same(offered, self._token):
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, self._cookie, httponly=True, samesite="strict", path="/")
        else:
            response = PlainTextResponse(
                "401 Unauthorized: send 'Authorization: Bearer <token>' ([status] token), "
                "or open /?token=<token> in a browser\n",
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="eebus-bridge"'},
            )
        await response(scope, receive, send)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _json(data: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status_code, headers=_NO_STORE)


def _page_template() -> str:
    return resources.files("eebus_bridge.status").joinpath("page.html").read_text("utf-8")


def _script_safe_json(data: Any) -> str:
    """JSON that cannot end the <script> element it sits in."""
    text = json.dumps(data, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def make_status_app(
    sources: StatusSources,
    *,
    token: str | None,
    history: HistoryAccess | None,
    wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ASGIApp:
    """The ASGI app serving /, /api/status, /api/history, /timeline.svg, /metrics, /healthz."""
    metrics = BridgeMetrics(sources)
    template = _page_template()
    device = sources.config.device
    device_text = html.escape(f"{device.brand} {device.model} · {device.serial_number}")

    async def page(request: Request) -> Response:
        nonce = secrets.token_urlsafe(16)
        body = (
            template.replace("{{nonce}}", nonce)
            .replace("{{device}}", device_text)
            .replace("{{initial}}", _script_safe_json(status_snapshot(sources)))
        )
        policy = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'"
        )
        headers = {**_NO_STORE, "Content-Security-Policy": policy, "Referrer-Policy": "no-referrer"}
        return Response(body, media_type="text/html; charset=utf-8", headers=headers)

    async def api_status(request: Request) -> Response:
        return _json(status_snapshot(sources))

    async def healthz(request: Request) -> Response:
        reasons = health_reasons(sources, sources.monotonic())
        if reasons:
            return PlainTextResponse(
                "unhealthy\n" + "".join(f"{reason}\n" for reason in reasons),
                status_code=503,
                headers=_NO_STORE,
            )
        return PlainTextResponse("ok\n", headers=_NO_STORE)

    async def metrics_text(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE, headers=_NO_STORE)

    def span(request: Request) -> tuple[datetime, datetime]:
        now = wall_clock()
        params = request.query_params
        since = parse_time(params.get("since", "24h"), now, "since")
        until = parse_time(params["until"], now, "until") if "until" in params else now
        if since >= until:
            raise BadQuery("since must be before until")
        return since, until

    async def read(
        since: datetime, until: datetime, kinds: Collection[str] | None, *, context: bool = False
    ) -> list[Activity]:
        """The history in a worker thread (SQLite reads block); context: what was in force
        at `since` comes first (for the chart)."""
        assert history is not None
        try:
            activities: list[Activity] = await trio.to_thread.run_sync(
                lambda: history.read(history.path, since, until, kinds, context=context)
            )
        except Exception as exc:  # a broken or unreadable file: say so, never crash the app
            log.warning("cannot read the history %s: %s", history.path, exc)
            raise HistoryUnavailable(f"cannot read the history: {exc}") from None
        return activities

    async def api_history(request: Request) -> Response:
        if history is None:
            return _json({"error": "the history is switched off ([history] enabled)"}, 404)
        try:
            since, until = span(request)
            kinds = _kinds(request.query_params.get("kind"))
        except BadQuery as exc:
            return _json({"error": str(exc)}, 400)
        try:
            activities = await read(since, until, kinds)
        except HistoryUnavailable as exc:
            return _json({"error": str(exc)}, 503)
        shown: Sequence[Activity] = activities[-HISTORY_MAX_ROWS:]
        return _json(
            {
                "since": iso(since),
                "until": iso(until),
                "count": len(shown),
                "truncated": len(shown) < len(activities),
                "activities": [activity_json(activity) for activity in shown],
            }
        )

    async def timeline(request: Request) -> Response:
        if history is None:
            return PlainTextResponse("the history is switched off\n", status_code=404)
        try:
            since, until = span(request)
        except BadQuery as exc:
            return PlainTextResponse(f"{exc}\n", status_code=400)
        try:
            activities = await read(since, until, None, context=True)
        except HistoryUnavailable as exc:
            return PlainTextResponse(f"{exc}\n", status_code=503)
        svg = history.timeline_svg(activities, since, until, width=1100, height=300)
        return Response(svg, media_type="image/svg+xml", headers=_NO_STORE)

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/api/status", api_status),
            Route("/api/history", api_history),
            Route("/timeline.svg", timeline),
            Route("/metrics", metrics_text),
            Route("/healthz", healthz),
        ]
    )
    return TokenGate(app, token)
