"""coda_ws's HTTP API: readiness, metrics, stats, schema, stored events, publishing.

:func:`register_http_api` adds these routes to the server's blueprint (so
they sit under ``url_prefix`` when mounted), next to ``/healthz`` and
``/turns`` (docs/protocol.md sections 6 and 7):

==================  ========================  ==========================================
route               scope when auth is on     answer
==================  ========================  ==========================================
``GET /readyz``     none                      200 ready / 503 naming what is not
``GET /metrics``    ``admin``                 Prometheus text exposition
``GET /stats``      ``admin``                 ``get_stats()`` plus ``"clients"``
``GET /schema``     none                      JSON Schema of every event
``GET /events``     ``read``                  stored events, oldest first
``POST /events``    ``publish``               ``202 {"seq": N}``
==================  ========================  ==========================================

Without auth every route is open, except ``POST /events``, which then
accepts requests from loopback addresses only.

Errors are JSON, ``{"error": "<code>", "message": "<sentence>"}``, with a 4xx
status for anything the request got wrong (bad parameters, bodies, content
types, sizes); 400 answers to ``POST /events`` also carry ``"field"`` (the
offending field, or null). Nothing a client sends can cause a 500.

Every view is safe to run in many request threads at once: views read
snapshots of the server's state and call only thread-safe server and bus
methods; none holds a lock across I/O.
"""

import functools
import json
import logging
import pathlib
import ssl
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response, request
from werkzeug.datastructures import MultiDict
from werkzeug.routing import WebsocketMismatch

from .auth import ALL_SCOPES, bearer_token
from .errors import CodaWSError, EventTooLargeError, HandshakeRefused, InvalidEventError
from .events import EVENT_VERSION, encode_json, event_class, registry_version
from .filters import EventFilter
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .schema import event_schema
from .wire import Entry

if TYPE_CHECKING:
    from .server import CodaWebSocketServer

__all__ = [
    "DEFAULT_EVENTS_LIMIT",
    "DEFAULT_MAX_BODY_SIZE",
    "LOST_HEADER",
    "MAX_EVENTS_LIMIT",
    "PAGE_HEADERS",
    "register_http_api",
]

log = logging.getLogger("coda_ws.http_api")

#: Events ``GET /events`` returns when no ``limit`` is given.
DEFAULT_EVENTS_LIMIT = 100
#: Most events one ``GET /events`` returns; a larger ``limit`` is capped to it.
MAX_EVENTS_LIMIT = 1000
#: Default of the server's ``max_body_size`` (bytes): larger ``POST /events`` bodies get 413.
DEFAULT_MAX_BODY_SIZE = 1024 * 1024

_EVENTS_PARAMETERS = ("since", "types", "session_id", "limit")
_MAX_DIGITS = 18  # positions and limits beyond this are not numbers a client means
# Keys of a published event the server sets itself.
_SERVER_KEYS = ("seq", "timestamp", "redacted")
# Names emit() takes as its own arguments; they can never be event fields.
_NOT_FIELDS = ("self", "event_type", "high_priority")
_NO_STORE = {"Cache-Control": "no-store"}

#: Headers of the HTML pages (dashboard, debug). The pages load only their own
#: files (no inline script or style, no CDN) and open only the WebSocket to
#: their own host: CSP's 'self' covers same-host ws: and wss:, whatever the
#: path, so the pages work the same at the root and under a url_prefix. They
#: may not be framed (clickjacking) and send no Referer (the address may hold
#: a #token= fragment; browsers never send fragments, but no-referrer costs nothing).
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _nosniff(response: Response) -> Response:
    """Every answer of coda_ws's routes declares its type for good (no MIME sniffing)."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


#: The ``GET /events`` response header listing lost windows (``first-last,...``).
LOST_HEADER = "Coda-WS-Lost"


def _json(body: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    text = json.dumps(body, ensure_ascii=False, default=str)
    return Response(
        text, status=status, mimetype="application/json", headers={**_NO_STORE, **(headers or {})}
    )


def _error(status: int, code: str, message: str, **extra: object) -> Response:
    return _json({"error": code, "message": message, **extra}, status)


def _bad_field(message: str, field: str | None = None) -> Response:
    return _error(400, "bad_request", message, field=field)


def _json_kind(value: object) -> str:
    """The JSON name of a decoded value's type (for messages)."""
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if value is None:
        return "null"
    return type(value).__name__


def _frame_payload(frame: bytes) -> bytes:
    """The payload of a server frame built by :mod:`coda_ws.framing` (unmasked)."""
    size = frame[1] & 0x7F
    return frame[2 + (2 if size == 126 else 8 if size == 127 else 0) :]


@functools.lru_cache(maxsize=1)
def _schema_bytes(version: int) -> bytes:
    """``GET /schema``'s body for the registry as of ``version`` (types registered later appear)."""
    return json.dumps(event_schema(), ensure_ascii=False).encode("utf-8")


class _BadParameter(Exception):
    pass


def _single(args: "MultiDict[str, str]", name: str, default: str | None = None) -> str | None:
    values = args.getlist(name)
    if not values:
        return default
    if len(values) > 1:
        raise _BadParameter(f"{name} is given {len(values)} times; give it once")
    return values[0]


def _integer(args: "MultiDict[str, str]", name: str, default: int, minimum: int, maximum_text: str) -> int:
    text = _single(args, name)
    if text is None:
        return default
    if not text.isdigit() or not text.isascii() or len(text) > _MAX_DIGITS or int(text) < minimum:
        raise _BadParameter(f"{name} must be an integer from {minimum} to {maximum_text}, got {text!r}")
    return int(text)


def register_http_api(
    bp: Blueprint, server: "CodaWebSocketServer", static_dir: pathlib.Path, whole_app: Flask | None = None
) -> None:
    """Add every route of coda_ws to ``bp`` (a Flask blueprint) for ``server``:
    the Host and Origin checks before each request, the WebSocket upgrade at
    ``/`` and ``/ws``, the pages and the HTTP API.

    Called once per app by ``CodaWebSocketServer.init_app``. The views read
    ``server.bus``, ``server.metrics``, ``server.get_stats()``,
    ``server.clients``, ``server.gate``, ``server.registry`` and, when they
    exist, ``server.journal`` / ``server.backplane`` (their ``ready()``); the
    pages come from ``static_dir``. With ``whole_app`` (a standalone server's
    own app), requests that match no route are checked too.
    """
    api = _HttpApi(server)
    bp.before_request(api.check_request)
    bp.after_request(_nosniff)  # static files and JSON answers too: never sniffed as HTML
    if whole_app is not None:
        whole_app.before_request(lambda: None if request.blueprint == bp.name else api.check_request())
        # A standalone server owns its app: a wrong path gets a JSON line naming the right ones
        # (an application's app keeps its own 404 page when coda_ws is mounted on it).
        whole_app.register_error_handler(404, api.not_found)
        whole_app.register_error_handler(WebsocketMismatch, api.not_found)
    bp.add_url_rule("/", "websocket", api.websocket, websocket=True)
    bp.add_url_rule("/ws", "websocket_ws", api.websocket, websocket=True)
    bp.add_url_rule("/ws", "websocket_page", api.upgrade_required)  # a plain GET (a browser's address bar)
    if bp.url_prefix:
        bp.add_url_rule("", "websocket_bare", api.websocket, websocket=True)
    bp.add_url_rule("/", "index", _page_view(static_dir, "index.html"))
    bp.add_url_rule("/debug", "debug", _page_view(static_dir, "debug.html"))
    bp.add_url_rule("/healthz", "healthz", api.healthz)
    bp.add_url_rule("/turns", "turns", api.turns)
    bp.add_url_rule("/readyz", "readyz", api.readyz, methods=["GET"])
    bp.add_url_rule("/metrics", "metrics", api.metrics, methods=["GET"])
    bp.add_url_rule("/stats", "stats", api.stats, methods=["GET"])
    bp.add_url_rule("/schema", "schema", api.schema, methods=["GET"])
    bp.add_url_rule("/events", "events", api.get_events, methods=["GET"])
    bp.add_url_rule("/events", "publish_event", api.post_event, methods=["POST"])


def _page_view(static_dir: pathlib.Path, name: str) -> Callable[[], Response]:
    """A view serving one of the package's HTML pages (dashboard, debug)."""

    def view() -> Response:
        path = static_dir / name
        if not path.is_file():
            return _error(404, "not_found", f"{name} is not installed")
        response = Response(path.read_bytes(), mimetype="text/html")
        response.headers.update(PAGE_HEADERS)
        return response

    view.__name__ = f"page_{name.split('.')[0]}"
    return view


class _HttpApi:
    """The views, bound to one server."""

    def __init__(self, server: "CodaWebSocketServer") -> None:
        self.server = server

    # -- before every request, and the upgrade ------------------------------------

    def check_request(self) -> Response | None:
        """Runs before every request to coda_ws's routes, HTTP and upgrade
        alike: the Host allow-list, then the origin policy for requests from
        browser pages (see :meth:`Gate.check_request
        <coda_ws.handshake.Gate.check_request>`). Returns the refusal (421 or
        403, JSON), or None to go on."""
        try:
            self.server.gate.check_request(request.environ)
        except HandshakeRefused as refused:
            upgrade = request.environ.get("HTTP_UPGRADE", "").lower() == "websocket"
            self.server.registry.count_refusal(refused, upgrade)
            log.info(
                "refused %s %s from %s: %s",
                request.method,
                request.path,
                request.remote_addr,
                refused.message,
            )
            return _error(refused.status, refused.code, refused.message)
        return None

    def http_auth(self, scope: str) -> Response | None:
        """None when the request may use ``scope``, else the 401/403 JSON
        response to return. Without auth, ``publish`` is allowed from
        loopback only and everything else is allowed."""
        try:
            self.server.gate.http_scope(request.environ, scope)
        except HandshakeRefused as refused:
            return _error(refused.status, refused.code, refused.message)
        return None

    def websocket(self) -> Response:
        """The upgrade: refusals as plain HTTP first, then the client's whole
        session in this request thread (see :class:`~coda_ws.registry.ClientRegistry`)."""
        server = self.server
        environ = request.environ
        peer = environ.get("REMOTE_ADDR") or "?"
        raw_sock = environ.get("werkzeug.socket") or environ.get("gunicorn.socket")  # gunicorn: coda_ws.wsgi
        try:
            if raw_sock is None or isinstance(raw_sock, ssl.SSLSocket):
                raise HandshakeRefused(
                    501,
                    "not_implemented",
                    "coda_ws serves WebSocket over plain HTTP only (Werkzeug or gunicorn, no TLS in the process): "
                    "terminate TLS in a reverse proxy",
                )
            if server.serving_state == "shutting down":
                raise HandshakeRefused(503, "unavailable", "the server is shutting down")
            upgrade = server.gate.upgrade(environ, request.args)
            served = server.registry.serve(environ, raw_sock, peer, upgrade)
        except HandshakeRefused as refused:
            server.registry.count("rejected_handshakes")
            log.info("refused WebSocket from %s: %s %s", peer, refused.status, refused.message)
            return _error(refused.status, refused.code, refused.message)
        return Response(status=200 if served else 400)

    def _routes(self) -> str:
        prefix = self.server.url_prefix
        ws_url = self.server.url.rstrip("/") if prefix else self.server.url + "ws"
        return (
            f"the dashboard is at {prefix or ''}/, the WebSocket endpoint at {prefix or ''}/ws ({ws_url}; "
            f"try `coda-ws tail {ws_url}`); HTTP: "
            + ", ".join(
                f"{prefix}{path}"
                for path in (
                    "/events",
                    "/stats",
                    "/metrics",
                    "/schema",
                    "/healthz",
                    "/readyz",
                    "/turns",
                    "/debug",
                )
            )
        )

    def upgrade_required(self) -> Response:
        """A plain ``GET /ws``: 426, naming what to connect with instead."""
        response = _error(
            426,
            "upgrade_required",
            f"{request.path} is a WebSocket endpoint: connect with a WebSocket client; {self._routes()}",
        )
        response.headers["Upgrade"] = "websocket"
        return response

    def not_found(self, error: Exception) -> Response:
        """No route (or an upgrade to a page, or a page through an upgrade):
        one JSON line naming the routes there are."""
        kind = "a WebSocket upgrade" if isinstance(error, WebsocketMismatch) else "a request"
        return _error(404, "not_found", f"nothing answers {kind} to {request.path} here: {self._routes()}")

    # -- pages and probes -----------------------------------------------------------

    def healthz(self) -> Response:
        """``GET /healthz``: 200 while the process serves. No auth (a probe)."""
        return Response('{"status":"ok"}', mimetype="application/json")

    def turns(self) -> Response:
        """``GET /turns?limit=N`` (``read`` when auth is on): the per-turn latency
        breakdown of the conversation turns in the history, newest first
        (see :mod:`coda_ws.turns`); ``limit`` from 1 to 1000 (default 20)."""
        from .turns import turn_breakdown

        denied = self.http_auth("read")
        if denied is not None:
            return denied
        try:
            limit = _integer(request.args, "limit", 20, 1, "1000")
        except _BadParameter as exc:
            return _error(400, "bad_request", str(exc))
        if limit > 1000:
            return _error(400, "bad_request", f"limit must be an integer from 1 to 1000, got {limit}")
        events = [entry.to_dict() for entry in self.server.bus.history()]
        return Response(encode_json(turn_breakdown(events, limit)), mimetype="application/json")

    # -- health ---------------------------------------------------------------------

    def readyz(self) -> Response:
        """``GET /readyz``: can this process take clients and events now?

        200 ``{"status": "ready", "checks": {...}}`` when every part is up;
        503 ``{"status": "unavailable", "error": "not_ready", "message":
        "<part>: <reason>; ...", "checks": {...}}`` otherwise. ``checks`` maps
        each part (``dispatcher``, ``server``, and ``journal`` / ``backplane``
        when configured) to ``"ok"`` or why it is not. No auth (a probe).
        """
        server = self.server
        checks = {"dispatcher": "ok" if server.bus.running else "the dispatcher thread is not running"}
        checks["server"] = self._server_state()
        for name in ("journal", "backplane"):
            part = getattr(server, name, None)
            ready = getattr(part, "ready", None)
            if ready is None:
                continue
            try:
                ok, reason = ready()
            except Exception as exc:  # a readiness probe reports failures, it does not fail
                log.warning("%s readiness check failed", name, exc_info=True)
                ok, reason = False, f"{type(exc).__name__}: {exc}"
            checks[name] = "ok" if ok else str(reason or "not ready")
        failing = [f"{name}: {state}" for name, state in checks.items() if state != "ok"]
        if failing:
            return _json(
                {
                    "status": "unavailable",
                    "error": "not_ready",
                    "message": "; ".join(failing),
                    "checks": checks,
                },
                503,
            )
        return _json({"status": "ready", "checks": checks})

    def _server_state(self) -> str:
        # Not started by us, yet this request was answered: the application's
        # own server (a mounted app, gunicorn through coda_ws.wsgi) serves it.
        return self.server.serving_state

    # -- admin --------------------------------------------------------------------------

    def metrics(self) -> Response:
        """``GET /metrics``: Prometheus text exposition (``admin`` when auth is on).

        Built from live state at each scrape (see :mod:`coda_ws.metrics`); a
        scrape takes no lock that ``emit()`` takes.
        """
        denied = self.http_auth("admin")
        if denied is not None:
            return denied
        return Response(
            self.server.metrics.exposition(), content_type=METRICS_CONTENT_TYPE, headers=_NO_STORE
        )

    def stats(self) -> Response:
        """``GET /stats`` (``admin`` when auth is on): ``get_stats()`` plus ``"clients"``.

        ``clients`` is a list, oldest connection first, of one object per
        connected client (``Connection.info()``)::

            {"id": "...", "address": "127.0.0.1:50412", "user_agent": "...",
             "protocol": 1, "scopes": [...], "filters": {"types": null, "session_id": null},
             "cursor": 41, "lag": 1, "queue_depth": 0, "sent": 40, "dropped": 0,
             "connected_since": 1764288000.12, "last_pong_rtt": 0.0004}

        ``lag``: events the stream head is ahead of the client;
        ``queue_depth``: frames its writer holds that its socket has not
        accepted yet; ``dropped``: state events conflated for it;
        ``connected_since``: Unix time; ``last_pong_rtt``: seconds, or null
        before the first keepalive answer.
        """
        denied = self.http_auth("admin")
        if denied is not None:
            return denied
        stats = self.server.get_stats()
        connections = sorted(self.server.clients.values(), key=lambda conn: conn.connected_at)
        body: dict[str, Any] = {**stats, "clients": [conn.info() for conn in connections]}
        return _json(body)

    # -- schema -------------------------------------------------------------------------

    def schema(self) -> Response:
        """``GET /schema``: the JSON Schema of every event (see :mod:`coda_ws.schema`). No auth."""
        return Response(
            _schema_bytes(registry_version()),
            mimetype="application/json",
            headers={"Cache-Control": "no-cache"},
        )

    # -- events -------------------------------------------------------------------------

    def _request_scopes(self) -> frozenset[str]:
        authenticator = self.server.authenticator
        if not authenticator.enabled:
            return ALL_SCOPES
        return authenticator.scopes_for(bearer_token(request.environ)) or frozenset()

    def get_events(self) -> Response:
        """``GET /events?since=&types=&session_id=&limit=`` (``read`` when auth is on).

        A bare JSON array of stored events, oldest first: those with ``seq >
        since`` (default 0: from the oldest held) that pass ``types`` (names
        or globs, comma-separated) and ``session_id`` (that session plus
        events of no session), at most ``limit`` (default 100; larger than
        1000 is capped to 1000). Events come from the history ring and, for
        older positions, from the journal or backplane when one is
        configured. Events sent to a single client are never included. For a
        token without ``read:content`` the content fields are null and
        ``"redacted": true`` is added. Page with ``since=<seq of the last
        event received>`` until the array is empty. When positions the page
        covers were lost (a crash, or a journal that could not write them),
        the ``Coda-WS-Lost`` header lists them as ``first-last`` ranges,
        comma-separated.
        """
        # Long: the docstring is the endpoint's contract; the code is about 50 lines
        denied = self.http_auth("read")
        if denied is not None:
            return denied
        args = request.args
        unknown = sorted(set(args) - set(_EVENTS_PARAMETERS))
        if unknown:
            return _error(
                400,
                "bad_request",
                f"unknown query parameter {unknown[0]!r} (known: {', '.join(_EVENTS_PARAMETERS)})",
            )
        try:
            since = _integer(args, "since", 0, 0, "10^18")
            limit = _integer(
                args, "limit", DEFAULT_EVENTS_LIMIT, 1, f"10^18 (above {MAX_EVENTS_LIMIT}: capped)"
            )
            types = _single(args, "types")
            session_id = _single(args, "session_id") or None
        except _BadParameter as exc:
            return _error(400, "bad_request", str(exc))
        try:
            event_filter = EventFilter(types, session_id) if types or session_id else None
        except (TypeError, ValueError) as exc:
            return _error(400, "bad_request", f"invalid types or session_id: {exc}")
        limit = min(limit, MAX_EVENTS_LIMIT)
        bus = self.server.bus
        read = getattr(
            bus, "stored_history", bus.history
        )  # reaches into a journal or backplane when there is one
        try:
            entries = read(since, event_filter, limit)
        except Exception:  # the archive is I/O (SQLite, Redis): report it, do not crash the request
            log.warning("reading stored events failed", exc_info=True)
            return _error(503, "unavailable", "stored events could not be read; see the server log")
        redact = "read:content" not in self._request_scopes()
        parts: list[bytes] = []
        for entry in entries:
            if not isinstance(entry, Entry):
                continue  # a position without a deliverable event
            parts.append(_frame_payload(entry.redacted_frame()) if redact else entry.data)
        body = b"[" + b",".join(parts) + b"]"
        headers = dict(_NO_STORE)
        lost_windows = getattr(bus, "lost_windows", None)
        if lost_windows is not None:
            # A full page covers positions up to its last event; a short one, the rest of the stream.
            windows = lost_windows(since, entries[-1].seq if entries and len(entries) >= limit else None)
            if windows:
                headers[LOST_HEADER] = ",".join(f"{first}-{last}" for first, last in windows)
        return Response(body, mimetype="application/json", headers=headers)

    def post_event(self) -> Response:
        """``POST /events``: publish one event (``publish`` scope when auth is
        on; from loopback only when it is off).

        Body: one JSON object, ``Content-Type: application/json``, at most
        the server's ``max_body_size`` bytes::

            {"type": "stt_result", "session_id": "s1", "text": "hi", "confidence": 0.9, "duration_ms": 120.0}

        ``type`` is required; ``session_id`` is optional; every other key is
        a field of that type (validated exactly like ``emit()``). ``seq``,
        ``timestamp`` and ``redacted`` are set by the server and refused;
        ``version``, when present, must be ``"1.0"``.

        Answers:
            202 ``{"seq": N}`` once the event is stamped (it reaches clients
                a moment later); with a backplane, where Redis stamps the seq,
                ``{"seq": null, "queued": true}``.
            400 ``{"error": "bad_request", "message": ..., "field": name or null}``
                for a body that is not JSON, not an object, or not a valid event.
            403 a browser page from an origin the server does not allow.
            413 a body larger than ``max_body_size``, or an event whose
                encoded size is over the server's ``max_event_size``.
            415 a Content-Type other than ``application/json``.
        """
        # Long: the docstring is the endpoint's contract; the code is the checks of that contract in
        # the order its answers are documented
        server = self.server
        denied = self.http_auth("publish")
        if denied is not None:
            return denied
        if request.mimetype != "application/json":
            got = request.headers.get("Content-Type") or "none"
            return _error(
                415,
                "unsupported_media_type",
                f"send the event as JSON with 'Content-Type: application/json' (got {got!r})",
            )
        limit = server.max_body_size
        too_large = _error(413, "payload_too_large", f"the body is larger than {limit} bytes (max_body_size)")
        length = request.content_length
        if length is not None and length > limit:
            return too_large
        raw = request.stream.read(limit + 1)
        if len(raw) > limit:
            return too_large
        if not raw.strip():
            return _bad_field("the body is empty: send one event as a JSON object")
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            return _bad_field(f"the body is not UTF-8 text: {exc}")
        except ValueError as exc:
            return _bad_field(f"the body is not valid JSON: {exc}")
        except RecursionError:
            return _bad_field("the body is not valid JSON: nested too deeply")
        if not isinstance(data, dict):
            return _bad_field(f"the body must be a JSON object with a 'type', got {_json_kind(data)}")
        fields = dict(data)
        event_type = fields.pop("type", None)
        if event_type is None:
            return _bad_field("the event has no 'type'", "type")
        if not isinstance(event_type, str):
            return _bad_field(f"'type' must be a string, got {_json_kind(event_type)}", "type")
        version = fields.pop("version", EVENT_VERSION)
        if version != EVENT_VERSION:
            return _bad_field(f"'version' must be {EVENT_VERSION!r} when given, got {version!r}", "version")
        for key in _SERVER_KEYS:
            if key in fields:
                return _bad_field(f"'{key}' is set by the server; leave it out", key)
        for key in _NOT_FIELDS:
            if key in fields:
                return _bad_field(f"'{key}' is not a field of {event_type!r}", key)
        try:
            event_class(event_type)
        except InvalidEventError as exc:
            return _bad_field(str(exc), "type")
        session_id = fields.pop("session_id", None)
        try:
            event = server.emit(event_type, session_id=session_id, **fields)
        except EventTooLargeError as exc:
            return _error(413, "payload_too_large", str(exc))
        except InvalidEventError as exc:
            return _bad_field(str(exc), exc.field)
        except CodaWSError as exc:
            log.warning("POST /events: could not publish: %s", exc)
            return _error(503, "unavailable", f"the event could not be published: {exc}")
        log.debug("published %s seq %s from %s", event_type, event.seq, request.remote_addr)
        if event.seq == 0:  # an external sequencer (Redis) stamps it
            return _json({"seq": None, "queued": True}, 202)
        return _json({"seq": event.seq}, 202)
