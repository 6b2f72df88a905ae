"""CodaWebSocketServer: the event stream served over WebSocket from a Flask app.

The server owns the network side; the :class:`~coda_ws.bus.EventBus` owns the
order of events. Standalone, the server makes its own Flask app and serves it
with Werkzeug's threaded server in a background thread; mounted
(``app=my_app``), it registers its routes on the application's app under
``url_prefix`` so the application's pages and the event stream share a port.

Threads (principle 7), all named and all joined by :meth:`stop`:

* ``coda-ws-http:PORT`` accepts connections;
* one Werkzeug request thread per connection, which for a WebSocket client is
  its writer (see :mod:`coda_ws.connection`), renamed ``coda-ws-client:ID``;
* one simple-websocket reader thread per client, ``coda-ws-reader:ID``;
* the bus dispatcher, ``coda-ws-dispatcher``, which also writes new events
  to clients whose writer is asleep (``Connection.push``).
"""

import contextlib
import functools
import json
import logging
import pathlib
import socket
import threading
import time
import uuid
import weakref

import simple_websocket
from flask import Blueprint, Flask, Response, request
from werkzeug.serving import WSGIRequestHandler, get_sockaddr, make_server, select_address_family

from . import __version__, framing
from .auth import Authenticator, OriginPolicy, bearer_token, is_loopback_host
from .bus import EventBus, redact_event
from .connection import DIRECT_WRITES, Connection, GuardedSocket, WriteTimeout
from .errors import CodaWSError
from .events import encode_json
from .filters import EventFilter
from .http_api import DEFAULT_MAX_BODY_SIZE, register_http_api
from .metrics import ABNORMAL_CLOSE, ServerMetrics

__all__ = ["CodaWebSocketServer", "V1_SUBPROTOCOL", "BEARER_SUBPROTOCOL_PREFIX"]

log = logging.getLogger("coda_ws.server")
http_log = logging.getLogger("coda_ws.http")

V1_SUBPROTOCOL = "coda-ws.v1"
BEARER_SUBPROTOCOL_PREFIX = "coda-ws.bearer."
SERVER_NAME = f"coda-ws/{__version__}"

# Close codes (PROTOCOL.md section 8).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TOO_SLOW = 4008

#: Seconds to wait for a client's close reply (and for its reader thread to end).
#: stop() forces stragglers off before its own timeout regardless.
CLOSE_TIMEOUT = 2.0

_STATIC_DIR = pathlib.Path(__file__).parent / "static"

#: Headers of the HTML pages (dashboard, debug). The pages load only their own
#: files (no inline script or style, no CDN) and open only the WebSocket to
#: their own host: CSP's 'self' covers same-host ws: and wss:, whatever the
#: path, so the pages work the same at the root and under a url_prefix. They
#: may not be framed (clickjacking) and send no Referer (the address may hold
#: a #token= fragment; browsers never send fragments, but no-referrer costs nothing).
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

_UNSET = object()


class _QuietRequestHandler(WSGIRequestHandler):
    """Werkzeug's handler, logging to ``coda_ws.http`` at DEBUG instead of
    printing every request to stderr (library code does not configure logging)."""

    def log(self, type, message, *args):  # noqa: A002 - Werkzeug's signature
        level = logging.WARNING if type == "error" else logging.DEBUG
        if http_log.isEnabledFor(level):
            http_log.log(level, "%s %s", self.address_string(), message % args if args else message)


def _tune_socket(sock):
    """Socket options for an accepted WebSocket connection.

    ``TCP_NODELAY``: a frame goes out when it is written. With Nagle's
    algorithm a small write that follows another one not yet acknowledged
    waits for the ACK, which the client's delayed-ACK timer can hold back
    40 ms: the p99 latency of every steady-rate benchmark was that timer.
    """
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _nosniff(response):
    """Every answer of coda_ws's routes declares its type for good (no MIME sniffing)."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


def _json_error(status, code, message):
    body = json.dumps({"error": code, "message": message})
    return Response(body, status=status, mimetype="application/json")


class _HandshakeError(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class CodaWebSocketServer:
    """The Coda event stream over WebSocket (synchronous, thread-based).

    Args:
        host: interface to bind (default ``"localhost"``).
        port: TCP port; 0 picks a free one (read ``port`` or ``url`` after
            :meth:`start`).
        max_replay_events: high-priority events kept for the replay frame.
        ping_interval: seconds between keepalive pings (None or 0: off).
        ping_timeout: seconds a client may take to answer a ping; also how
            long a write may wait for a client that reads nothing.

    Keyword options:
        app: a Flask app to mount on (default: the server makes its own).
        url_prefix: where the routes go on ``app`` (default ``"/coda-ws"``;
            standalone: ``""``).
        history_size: events kept for resume (default 10 000).
        client_queue_size: lossless events a client may fall behind before
            it is closed with 4008 (default 1024).
        max_message_size: largest client frame in bytes (default 64 KiB;
            larger: close 1009).
        max_clients: concurrent clients (default 256; beyond: HTTP 503).
        allowed_origins: browser origins allowed besides the local defaults
            (``"*"`` allows every origin).
        auth: ``None`` (no tokens), ``{token: scopes}`` or a callable
            ``token -> scopes or None`` (see :mod:`coda_ws.auth`); tokens in
            the ``CODA_WS_TOKENS`` environment variable are added.
        insecure: allow binding a non-loopback address without auth (logged
            as a warning); refused otherwise.
        rate_limit: client frames per second a client may send on average
            (default 20, bursts of ``2 * rate_limit``); excess frames get an
            ``error`` frame with code ``rate_limited``, and a client that keeps
            going is closed with 1008.
        handshake_timeout: seconds a client may take to send its HTTP request
            (default 10): slow handshakes cannot hold threads.
        bus: an existing :class:`EventBus` to serve (default: a new one).
        journal: a SQLite file keeping the stream across restarts (see
            :mod:`coda_ws.journal`: same epoch, seq continues, clients resume);
            None (default) keeps it in memory only.
        journal_max_events, journal_max_age: the journal's retention, in
            events and in seconds (None: no limit).
        journal_flush_interval: seconds an event may wait before it is
            committed (default 0.2): what a process crash can lose at most.
        backplane: a ``redis://`` URL (or a backplane object): share one
            ordered stream with other processes and hosts through Redis
            Streams (see :mod:`coda_ws.backplane.redis`). ``emit()`` then
            returns events with seq 0 (Redis stamps the seq). Exclusive
            with ``journal``.
        backplane_prefix: the Redis key prefix (default ``"coda_ws"``), so
            several assistants can share one Redis.
        max_body_size: largest ``POST /events`` body in bytes (default
            1 MiB; larger: HTTP 413).

    All public methods are thread-safe. Event methods (``emit``,
    ``broadcast_*``, ``send_to_client``) work whether or not the server is
    running and never block on clients.
    """

    def __init__(
        self,
        host="localhost",
        port=8765,
        max_replay_events=50,
        ping_interval=20,
        ping_timeout=10,
        *,
        app=None,
        url_prefix=_UNSET,
        history_size=10_000,
        client_queue_size=1024,
        max_message_size=64 * 1024,
        max_clients=256,
        allowed_origins=None,
        auth=None,
        insecure=False,
        rate_limit=20,
        handshake_timeout=10.0,
        bus=None,
        journal=None,
        journal_max_events=None,
        journal_max_age=None,
        journal_flush_interval=0.2,
        backplane=None,
        backplane_prefix="coda_ws",
        max_body_size=DEFAULT_MAX_BODY_SIZE,
    ):
        if not isinstance(host, str) or not host:
            raise ValueError(f"host must be a non-empty string, got {host!r}")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an integer from 0 to 65535, got {port!r}")
        for name, value in (("ping_interval", ping_interval), ("ping_timeout", ping_timeout)):
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0):
                raise ValueError(f"{name} must be a non-negative number of seconds or None, got {value!r}")
        for name, value in (("rate_limit", rate_limit), ("handshake_timeout", handshake_timeout)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name, value in (("max_message_size", max_message_size), ("max_clients", max_clients)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if app is not None and not isinstance(app, Flask):
            raise TypeError(f"app must be a Flask application, got {type(app).__name__}")
        if url_prefix is _UNSET:
            url_prefix = "/coda-ws" if app is not None else ""
        if not isinstance(url_prefix, str) or (url_prefix and not url_prefix.startswith("/")):
            raise ValueError(f"url_prefix must be '' or a path starting with '/', got {url_prefix!r}")
        self.host = host
        self.port = port
        self.ping_interval = ping_interval or None
        self.ping_timeout = ping_timeout or None
        self.max_message_size = max_message_size
        self.max_clients = max_clients
        self.url_prefix = url_prefix.rstrip("/")
        self.origin_policy = OriginPolicy(allowed_origins)
        self.allowed_origins = self.origin_policy.allowed
        self.authenticator = Authenticator(auth)
        self.insecure = bool(insecure)
        self.rate_limit = float(rate_limit)
        self.handshake_timeout = float(handshake_timeout)
        if not isinstance(max_body_size, int) or isinstance(max_body_size, bool) or max_body_size < 1:
            raise ValueError(f"max_body_size must be a positive integer (bytes), got {max_body_size!r}")
        self.max_body_size = max_body_size
        self.bus = bus if bus is not None else EventBus(max_replay_events, history_size, client_queue_size)
        self._owns_bus = bus is None
        self.journal = None  # a coda_ws.journal.Journal with journal=
        self.backplane = None  # a coda_ws.backplane.RedisBackplane with backplane=
        self._attach_persistence(journal, journal_max_events, journal_max_age, journal_flush_interval,
                                 backplane, backplane_prefix)

        self.on_connect_handlers = []
        self.on_disconnect_handlers = []
        self.on_message_handlers = []
        self.running = False
        self.server = None  # the Werkzeug server while running

        # _clients_lock guards _clients, _reserved and the counters below.
        self._clients_lock = threading.Lock()
        self._clients_changed = threading.Condition(self._clients_lock)
        self._clients = {}
        self._reserved = 0  # handshakes in progress, counted against max_clients
        self._totals = {"total_connections": 0, "events_sent": 0, "errors": 0, "invalid_messages": 0,
                        "handler_errors": 0, "rejected_handshakes": 0, "rate_limited": 0}
        self._disconnects = {}
        self._disconnect_codes = {}  # close code as a string ("1006": no close frame) -> count
        self._resumes = {}  # "recovered" or the reason it was not -> count
        self._request_threads = weakref.WeakSet()  # every thread that ran a request
        self._lifecycle_lock = threading.Lock()
        self._stopping = False
        self._serve_thread = None
        self._stop_callbacks = []

        self.metrics = ServerMetrics(self)  # /metrics; counts from here on (a bus listener)
        # static_folder=None: the blueprint serves /static (with its headers), standalone and mounted alike.
        self._app = app if app is not None else Flask("coda_ws", static_folder=None)
        self._mounted = app is not None
        self.init_app(self._app)

    # -- configuration --------------------------------------------------------

    def init_app(self, app):
        """Register coda_ws's routes on ``app`` under ``url_prefix``.

        For an application that runs its own server; the constructor calls
        it for the app it is given. State lives in ``app.extensions["coda_ws"]``.
        """
        if app.extensions.get("coda_ws") not in (None, self):
            raise RuntimeError("this Flask app already has a coda_ws server; one per app")
        if app.extensions.get("coda_ws") is self:
            return
        bp = Blueprint(
            "coda_ws", __name__, url_prefix=self.url_prefix or None,
            static_folder=str(_STATIC_DIR), static_url_path="/static",
        )
        bp.add_url_rule("/", "websocket", self._websocket_view, websocket=True)
        bp.add_url_rule("/ws", "websocket_ws", self._websocket_view, websocket=True)
        bp.add_url_rule("/", "index", self._page_view("index.html"))
        bp.add_url_rule("/debug", "debug", self._page_view("debug.html"))
        bp.add_url_rule("/healthz", "healthz", self._healthz_view)
        bp.add_url_rule("/turns", "turns", self._turns_view)
        register_http_api(bp, self)  # /readyz /metrics /stats /schema /events
        bp.after_request(_nosniff)  # static files and JSON answers too: never sniffed as HTML
        if self.url_prefix:
            bp.add_url_rule("", "websocket_bare", self._websocket_view, websocket=True)
        app.register_blueprint(bp)
        app.extensions["coda_ws"] = self

    @property
    def app(self):
        """The Flask app this server's routes live on."""
        return self._app

    @property
    def url(self):
        """The WebSocket URL clients connect to (``ws://host:port/prefix/ws``)."""
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"ws://{host}:{self.port}{self.url_prefix}/ws" if self.url_prefix else f"ws://{host}:{self.port}/"

    @property
    def http_url(self):
        """The HTTP base URL (dashboard and HTTP endpoints)."""
        base = self.url.replace("ws://", "http://", 1)
        return base[: -len("ws")] if self.url_prefix else base

    # -- the original's attributes --------------------------------------------

    @property
    def max_replay_events(self):
        return self.bus.max_replay_events

    @property
    def sequence_number(self):
        """The last seq stamped (0 before any event)."""
        return self.bus.last_seq

    @property
    def replay_buffer(self):
        """The replay buffer: the bus's list of event dicts, oldest first."""
        return self.bus.replay

    @replay_buffer.setter
    def replay_buffer(self, events):
        self.bus.replay = events

    @property
    def clients(self):
        """A snapshot: client id -> :class:`~coda_ws.connection.Connection`."""
        with self._clients_lock:
            return dict(self._clients)

    @property
    def stats(self):
        """Same as :meth:`get_stats`."""
        return self.get_stats()

    @property
    def epoch(self):
        return self.bus.epoch

    # -- lifecycle --------------------------------------------------------------

    def start(self):
        """Bind and serve in a background thread; returns once the port is bound.

        Idempotent. Raises ``OSError`` naming the address when it cannot bind
        (``running`` stays False).
        """
        with self._lifecycle_lock:
            if self.running:
                return
            self._check_exposure()
            listener = self._bind()
            try:
                httpd = make_server(
                    self.host, self.port, self._wsgi, threaded=True,
                    request_handler=self._request_handler(), fd=listener.fileno(),
                )
            finally:
                listener.close()  # Werkzeug serves a duplicate of it
            self.port = httpd.port
            self.server = httpd
            self._stopping = False
            self.bus.start()
            if self.backplane is not None:
                self.backplane.start()  # waits briefly for the first load of the shared stream
            thread = threading.Thread(
                target=self._serve, args=(httpd,), name=f"coda-ws-http:{self.port}", daemon=True
            )
            self._serve_thread = thread
            self.running = True
            thread.start()
            log.info("coda_ws serving on %s (epoch %s)", self.url, self.bus.epoch)

    def _check_exposure(self):
        """Refuse to serve a non-loopback address without tokens (principle 9)."""
        if is_loopback_host(self.host) or self.authenticator.enabled:
            return
        if not self.insecure:
            raise CodaWSError(
                f"refusing to serve {self.host}:{self.port} without authentication: anyone who can reach it "
                "could read what the user says. Configure tokens (auth={'TOKEN': ['read']}, the CODA_WS_TOKENS "
                "environment variable, or `coda-ws serve --token-file FILE`; `coda-ws token new` makes one), "
                "bind to localhost, or pass insecure=True to accept the risk."
            )
        log.warning("serving %s:%s without authentication (insecure=True): every client can read every event",
                    self.host, self.port)

    def _request_handler(self):
        """Werkzeug's request handler with a deadline for reading requests (slowloris)."""
        return type("CodaRequestHandler", (_QuietRequestHandler,), {"timeout": self.handshake_timeout})

    def _bind(self):
        family = select_address_family(self.host, self.port)
        try:
            address = get_sockaddr(self.host, self.port, family)
            listener = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from exc
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(address)
            listener.listen(128)
        except OSError as exc:
            listener.close()
            raise OSError(exc.errno, f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from exc
        return listener

    def _serve(self, httpd):
        # Our own accept loop instead of serve_forever(): stop() wakes it at
        # once by shutting the listening socket down, without a poll interval.
        while not self._stopping:
            httpd.handle_request()

    def _wsgi(self, environ, start_response):
        self._request_threads.add(threading.current_thread())
        return self._app.wsgi_app(environ, start_response)

    def stop(self, timeout=5.0):
        """Close every client with 1001, stop serving, and join every thread.

        Idempotent; returns within ``timeout`` seconds even when clients are
        stalled (their sockets are shut down once the time is nearly up).
        History, replay buffer, sequence and epoch are kept for a later
        :meth:`start`.
        """
        with self._lifecycle_lock:
            if not self.running:
                return
            deadline = time.monotonic() + timeout
            # Clients that keep up get everything emitted before stop(), then 1001.
            if self.backplane is not None:
                self.backplane.flush(timeout / 5)  # this node's events, through Redis and back
            self.bus.flush(timeout / 5)
            self.running = False
            self._stopping = True  # handshakes from now on get 503
            httpd, self.server = self.server, None
            try:
                httpd.socket.shutdown(socket.SHUT_RDWR)  # wakes the accept loop at once
            except OSError:
                pass
            self._serve_thread.join(max(0.0, deadline - time.monotonic()))
            self.close_clients(CLOSE_GOING_AWAY, "server shutting down", max(0.0, deadline - time.monotonic()))
            # Werkzeug does not wait for its request threads: join them (WebSocket
            # writers end once their client is gone, plain requests end quickly).
            for thread in list(self._request_threads):
                thread.join(max(0.0, deadline - time.monotonic()))
            httpd.server_close()
            for callback in list(self._stop_callbacks):
                try:
                    callback()
                except Exception:
                    log.exception("stop callback %r failed", callback)
            if self._owns_bus:
                self.bus.close(max(0.0, deadline - time.monotonic()))
            self._close_persistence(max(0.5, deadline - time.monotonic()))
            log.info("coda_ws stopped")

    def _attach_persistence(self, journal, max_events, max_age, flush_interval, backplane, prefix):
        """Open the journal or the backplane (issue 8) and plug it into the bus."""
        if journal is not None and backplane is not None:
            raise ValueError("journal and backplane are exclusive: with a backplane, Redis holds the stream")
        if journal is not None:
            from .journal import Journal

            self.journal = Journal(journal, max_events=max_events, max_age=max_age, flush_interval=flush_interval)
            self.journal.attach(self.bus)
        elif backplane is not None:
            from .backplane import open_backplane

            self.backplane = open_backplane(backplane, prefix)
            self.backplane.attach(self.bus)

    def _close_persistence(self, timeout):
        """After the bus's last dispatch: commit the journal, or publish this
        node's last events and stop following the backplane."""
        if self.journal is not None:
            self.journal.close(timeout)
        if self.backplane is not None:
            self.backplane.close(timeout)

    def close_clients(self, code=CLOSE_GOING_AWAY, reason="server shutting down", timeout=5.0):
        """Close every client with ``code`` and wait for their handlers to end.

        For a server whose HTTP side someone else runs (mounted with ``app=``,
        or under gunicorn through :mod:`coda_ws.wsgi`); :meth:`stop` does this
        itself. Each client first gets the events already dispatched, then
        the close frame; sockets of clients still connected when 4/5 of
        ``timeout`` has passed are shut down. Thread-safe. Returns how many
        clients were still connected when ``timeout`` seconds had passed.
        """
        deadline = time.monotonic() + timeout
        with self._clients_lock:
            connections = list(self._clients.values())
        head = self.bus.head  # what each client gets before its close frame
        for conn in connections:
            conn.request_close(code, reason, after=head)
        grace = deadline - timeout / 5  # healthy clients answer the close frame well before
        with self._clients_changed:
            self._clients_changed.wait_for(lambda: not self._clients, max(0.0, grace - time.monotonic()))
            stragglers = list(self._clients.values())
        for conn in stragglers:
            conn.sock.shutdown()
        with self._clients_changed:
            self._clients_changed.wait_for(lambda: not self._clients, max(0.0, deadline - time.monotonic()))
            return len(self._clients)

    def add_stop_callback(self, callback):
        """Call ``callback()`` when the server stops (helpers stop their threads)."""
        self._stop_callbacks.append(callback)

    def remove_stop_callback(self, callback):
        with contextlib.suppress(ValueError):
            self._stop_callbacks.remove(callback)

    @contextlib.contextmanager
    def run_context(self):
        """Start on enter, stop on exit."""
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self.stop()

    # -- events -------------------------------------------------------------------

    def emit(self, event_type, *, session_id=None, high_priority=None, **fields):
        """Emit an event to every client (see :meth:`EventBus.emit`)."""
        return self.bus.emit(event_type, session_id=session_id, high_priority=high_priority, **fields)

    def broadcast_event(self, event_type, data, high_priority=False, session_id=None):
        """The original's broadcast: ``data`` holds the fields.

        Raises ``ValueError``/``TypeError`` (InvalidEventError) for an unknown
        type or bad fields. Returns the event.
        """
        if not isinstance(data, dict):
            raise TypeError(f"data must be a dict of event fields, got {type(data).__name__}")
        return self.bus.emit(event_type, session_id=session_id, high_priority=high_priority, **data)

    def send_to_client(self, client_id, event_type, data, session_id=None):
        """Send an event to one client only (never replayed or resumed).

        Returns False when no such client is connected.
        """
        if not isinstance(data, dict):
            raise TypeError(f"data must be a dict of event fields, got {type(data).__name__}")
        with self._clients_lock:
            known = client_id in self._clients
        if not known:
            return False
        self.bus.send_to(client_id, event_type, session_id=session_id, **data)
        return True

    def broadcast_system_info(self, info):
        """``system_info`` with ``data=info``, high priority."""
        return self.broadcast_event("system_info", {"data": info}, high_priority=True)

    def broadcast_system_error(self, level, message, details=None):
        """``system_error``, high priority."""
        return self.broadcast_event(
            "system_error", {"level": level, "message": message, "details": details}, high_priority=True
        )

    def broadcast_system_metrics(self, memory_mb, cpu_percent, gpu_vram_mb=None, uptime_seconds=0):
        """``system_metrics``, not high priority."""
        return self.broadcast_event(
            "system_metrics",
            {"memory_mb": memory_mb, "cpu_percent": cpu_percent, "gpu_vram_mb": gpu_vram_mb,
             "uptime_seconds": uptime_seconds},
        )

    # -- handlers -----------------------------------------------------------------

    def add_connect_handler(self, handler):
        """Call ``handler(client_id)`` once when a client connects."""
        self.on_connect_handlers.append(handler)

    def add_disconnect_handler(self, handler):
        """Call ``handler(client_id)`` once when a client disconnects."""
        self.on_disconnect_handlers.append(handler)

    def add_message_handler(self, handler):
        """Call ``handler(client_id, data)`` for every JSON object a client sends
        (except the protocol's own ``subscribe`` and ``ping``). Handlers run in
        that client's writer thread: a slow handler delays only that client."""
        self.on_message_handlers.append(handler)

    def _run_handlers(self, handlers, *args):
        for handler in list(handlers):
            try:
                handler(*args)
            except Exception:
                with self._clients_lock:
                    self._totals["handler_errors"] += 1
                log.exception("handler %r failed", handler)

    # -- queries --------------------------------------------------------------------

    def get_connected_clients(self):
        """Ids of the connected clients."""
        with self._clients_lock:
            return list(self._clients)

    def wait_for_clients(self, min_clients=1, timeout=30.0):
        """Block until at least ``min_clients`` are connected; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._clients_changed:
            while len(self._clients) < min_clients:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._clients_changed.wait(remaining)
        return True

    def get_stats(self):
        """Counters: the original's keys plus drops, overflows and disconnects by reason."""
        with self._clients_lock:
            totals = dict(self._totals)
            connections = list(self._clients.values())
            disconnects = dict(self._disconnects)
            disconnect_codes = dict(self._disconnect_codes)
            resumes = dict(self._resumes)
        bus = self.bus.stats()
        return {
            "total_connections": totals["total_connections"],
            "current_connections": len(connections),
            "events_sent": totals["events_sent"] + sum(c.frames_sent for c in connections),
            "errors": totals["errors"] + sum(c.errors for c in connections),
            "replay_buffer_size": bus["replay_buffer_size"],
            "running": self.running,
            "sequence_number": self.bus.last_seq,
            "epoch": self.bus.epoch,
            "events_emitted": bus["events_emitted"],
            "events_dropped": bus["events_conflated"],
            "overflows": bus["overflows"],
            "history_events": bus["history_events"],
            "invalid_messages": totals["invalid_messages"],
            "handler_errors": totals["handler_errors"],
            "rejected_handshakes": totals["rejected_handshakes"],
            "rate_limited": totals["rate_limited"],
            "disconnects": disconnects,
            "disconnect_codes": disconnect_codes,
            "resumes": resumes,
            **({"journal": self.journal.stats()} if self.journal is not None else {}),
            **({"backplane": self.backplane.stats()} if self.backplane is not None else {}),
        }

    # -- HTTP views -------------------------------------------------------------------

    def _page_view(self, name):
        """A view serving one of the package's HTML pages (dashboard, debug)."""

        def view():
            path = _STATIC_DIR / name
            if not path.is_file():
                return _json_error(404, "not_found", f"{name} is not installed")
            response = Response(path.read_bytes(), mimetype="text/html")
            response.headers.update(_PAGE_HEADERS)
            return response

        view.__name__ = f"page_{name.split('.')[0]}"
        return view

    def _healthz_view(self):
        return Response('{"status":"ok"}', mimetype="application/json")

    def _turns_view(self):
        from .turns import turn_breakdown

        denied = self.http_auth("read")
        if denied is not None:
            return denied
        limit = request.args.get("limit", "20")
        if not limit.isdigit() or not 1 <= int(limit) <= 1000:
            return _json_error(400, "bad_request", f"limit must be an integer from 1 to 1000, got {limit!r}")
        events = [entry.to_dict() for entry in self.bus.history()]
        return Response(encode_json(turn_breakdown(events, int(limit))), mimetype="application/json")

    # -- WebSocket ------------------------------------------------------------------

    def _check_handshake(self, environ):
        """Everything that can refuse a client, before the upgrade.

        Returns the parsed options; raises _HandshakeError."""
        if self._stopping:
            raise _HandshakeError(503, "unavailable", "the server is shutting down")
        if environ.get("HTTP_SEC_WEBSOCKET_VERSION") != "13" or not environ.get("HTTP_SEC_WEBSOCKET_KEY"):
            raise _HandshakeError(400, "bad_request", "not a WebSocket version 13 handshake")
        if not self.origin_policy.allows(environ.get("HTTP_ORIGIN"), environ.get("HTTP_HOST", "")):
            raise _HandshakeError(403, "forbidden_origin", f"origin {environ.get('HTTP_ORIGIN')!r} is not allowed")
        args = request.args
        if "token" in args or "access_token" in args:
            raise _HandshakeError(
                400, "bad_request",
                "tokens are not accepted in the query string; send 'Authorization: Bearer TOKEN' "
                "or the subprotocol coda-ws.bearer.TOKEN",
            )
        scopes = self._scopes(environ)
        if "read" not in scopes:
            raise _HandshakeError(403, "forbidden", "this token does not have the 'read' scope")
        offered = [p.strip() for p in environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL", "").split(",") if p.strip()]
        v1 = V1_SUBPROTOCOL in offered
        version = args.get("v")
        if version is not None:
            if version not in ("0", "1"):
                raise _HandshakeError(400, "bad_request", f"unsupported protocol version v={version!r} (use v=1)")
            v1 = v1 or version == "1"
        try:
            event_filter = EventFilter(args.get("types"), args.get("session_id") or None)
        except (TypeError, ValueError) as exc:
            raise _HandshakeError(400, "bad_request", f"invalid types or session_id: {exc}") from None
        since = args.get("since")
        if since is not None:
            if not since.isdigit() or len(since) > 18:
                raise _HandshakeError(400, "bad_request", f"since must be a non-negative integer, got {since!r}")
            since = int(since)
            v1 = True
        epoch = args.get("epoch") or None
        if epoch is not None and since is None:
            raise _HandshakeError(400, "bad_request", "epoch is only meaningful with since")
        replay = args.get("replay", "1")
        if replay not in ("0", "1"):
            raise _HandshakeError(400, "bad_request", f"replay must be 0 or 1, got {replay!r}")
        return {"v1": v1, "filter": event_filter, "since": since, "epoch": epoch, "replay": replay == "1",
                "scopes": scopes}

    def _scopes(self, environ):
        """The scopes of the request's token; raises _HandshakeError 401 when auth is on and the
        token is missing or unknown. Never logs the token."""
        if not self.authenticator.enabled:
            return self.authenticator.scopes_for(None)
        token = bearer_token(environ)
        if token is None:
            raise _HandshakeError(401, "unauthorized", "a token is required: 'Authorization: Bearer TOKEN'")
        scopes = self.authenticator.scopes_for(token)
        if scopes is None:
            raise _HandshakeError(401, "unauthorized", "unknown or invalid token")
        return scopes

    def http_auth(self, scope):
        """For HTTP views: None when the request may use ``scope``, else the
        401/403 JSON response to return. Without auth, ``publish`` is allowed
        from loopback only and everything else is allowed."""
        if not self.authenticator.enabled:
            if scope == "publish" and not is_loopback_host(request.remote_addr or ""):
                return _json_error(403, "forbidden", "publishing is only allowed from loopback when auth is off")
            return None
        try:
            scopes = self._scopes(request.environ)
        except _HandshakeError as exc:
            return _json_error(exc.status, exc.code, exc.message)
        if scope not in scopes:
            return _json_error(403, "forbidden", f"this token does not have the {scope!r} scope")
        return None

    def _reserve_slot(self):
        with self._clients_lock:
            if len(self._clients) + self._reserved >= self.max_clients:
                raise _HandshakeError(503, "too_many_clients", f"client limit reached ({self.max_clients})")
            self._reserved += 1

    def _websocket_view(self):
        environ = request.environ
        try:
            options = self._check_handshake(environ)
            self._reserve_slot()
        except _HandshakeError as exc:
            with self._clients_lock:
                self._totals["rejected_handshakes"] += 1
            log.info("refused WebSocket from %s: %s %s", request.remote_addr, exc.status, exc.message)
            return _json_error(exc.status, exc.code, exc.message)
        client_id = str(uuid.uuid4())
        raw_sock = environ.get("werkzeug.socket") or environ["gunicorn.socket"]  # gunicorn: coda_ws.wsgi
        environ["coda_ws.socket_taken"] = True  # no HTTP response may follow on this socket
        raw_sock.settimeout(None)  # the handshake deadline is over; the reader blocks as long as the client lives
        _tune_socket(raw_sock)
        sock = GuardedSocket(raw_sock, write_timeout=self.ping_timeout)
        conn = None
        try:
            conn = self._accept(environ, client_id, sock, options)
        except Exception as exc:
            with self._clients_lock:
                self._reserved -= 1
            log.warning("WebSocket handshake with %s failed: %s", request.remote_addr, exc)
            sock.shutdown()
            return Response(status=400)
        try:
            self._serve_client(conn)
        except Exception:
            log.exception("client %s: writer failed", client_id)
            conn.disconnect_reason = conn.disconnect_reason or "internal_error"
        finally:
            self._finish(conn)
        return Response(status=200)

    def _accept(self, environ, client_id, sock, options):
        threading.current_thread().name = f"coda-ws-client:{client_id[:8]}"
        subscription = self.bus.subscribe(
            types=options["filter"], since=options["since"], epoch=options["epoch"], reader_id=client_id
        )
        sock.on_close = subscription.wake.set
        # "Too slow" (4008) means the client does not read, not that its writer
        # thread was not scheduled while a burst was emitted.
        subscription.blocked = lambda: sock.blocked_since is not None
        handshake_environ = dict(environ)
        handshake_environ["werkzeug.socket"] = sock
        # Decline permessage-deflate: compressing per connection costs 2.4-3.9x
        # the CPU per message (DESIGN.md, traps), and events are small.
        handshake_environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
        try:
            ws = simple_websocket.Server(
                handshake_environ,
                subprotocols=[V1_SUBPROTOCOL],
                max_message_size=self.max_message_size,
                thread_class=functools.partial(threading.Thread, name=f"coda-ws-reader:{client_id[:8]}", daemon=True),
                event_class=lambda: subscription.wake,
            )
        except BaseException:
            subscription.close()
            raise
        address = f"{environ.get('REMOTE_ADDR', '?')}:{environ.get('REMOTE_PORT', '?')}"
        conn = Connection(client_id, ws, sock, subscription, address, environ.get("HTTP_USER_AGENT", ""),
                          options["v1"], options["scopes"], self.rate_limit)
        self._post_initial_frames(conn, options)
        with self._clients_lock:
            self._reserved -= 1
            self._clients[client_id] = conn
            self._totals["total_connections"] += 1
            resume = subscription.resume
            if resume is not None:
                result = "recovered" if resume.recovered else resume.reason
                self._resumes[result] = self._resumes.get(result, 0) + 1
            self._clients_changed.notify_all()
        log.info("client %s connected from %s (%s)", client_id, address, "v1" if conn.v1 else "legacy",
                 extra={"client_id": client_id, "address": address, "protocol": 1 if conn.v1 else 0,
                        "user_agent": conn.user_agent})
        return conn

    def _post_initial_frames(self, conn, options):
        sub = conn.subscription
        replay = sub.replay
        if conn.redact:
            replay = [event for event in map(redact_event, replay) if event is not None]
        replay_frame = None
        if sub.resume is None or not sub.resume.recovered:
            if options["replay"] and (conn.v1 or replay):
                replay_frame = framing.text_frame(self.bus.replay_frame_json(replay))
        if conn.v1:
            hello = {
                "type": "hello", "protocol": 1, "server": SERVER_NAME, "client_id": conn.id,
                "epoch": sub.epoch, "seq": sub.start_seq,
                "replay": len(replay) if replay_frame is not None else 0,
            }
            conn.post(framing.text_frame(encode_json(hello)))
            if sub.resume is not None:
                conn.post(framing.text_frame(encode_json(sub.resume.frame_dict())))
        if replay_frame is not None:
            conn.post(replay_frame)

    def _serve_client(self, conn):
        """The writer loop: runs in the connection's request thread until it ends.

        It holds ``conn.pen`` whenever it is awake and keeps it once it
        returns, so the dispatcher (``conn.push``) writes for this client only
        while the writer sleeps, and never after the close frame.
        """
        self._run_handlers(self.on_connect_handlers, conn.id)
        ws, sock, sub, wake = conn.ws, conn.sock, conn.subscription, conn.wake
        conn.pen.acquire()
        if DIRECT_WRITES:
            sub.notify = conn.push
        ping_interval, ping_timeout = self.ping_interval, self.ping_timeout
        next_ping = time.monotonic() + ping_interval if ping_interval else None
        ping_sent = None
        while True:
            wake.clear()  # clear first, then look at every source of work
            inbox = ws.input_buffer
            while inbox and conn._closing is None:
                self._handle_message(conn, inbox.pop(0))
            if sub.overflowed:
                conn.disconnect_reason = "too_slow"
                self._close(conn, CLOSE_TOO_SLOW, "client too slow: resume with since")
                return
            if not ws.connected:
                self._note_reader_end(conn)
                return
            timeout = None
            if next_ping is not None:
                now = time.monotonic()
                if ping_sent is not None and ws.pong_received:
                    conn.last_rtt = now - ping_sent  # an upper bound: seen at the writer's next wake-up
                    ping_sent = None
                if ping_sent is not None and ping_timeout and now - ping_sent >= ping_timeout:
                    conn.disconnect_reason = "keepalive_timeout"
                    self._close(conn, CLOSE_INTERNAL, "keepalive ping timeout")
                    return
                if now >= next_ping and (ping_sent is None or not ping_timeout):
                    ws.pong_received = False
                    ping_sent = now
                    next_ping = now + ping_interval
                    conn.post(framing.frame(framing.OP_PING, b"coda-ws"))
                if ping_sent is not None and ping_timeout:
                    timeout = ping_sent + ping_timeout - now  # no new ping while one is unanswered
                else:
                    timeout = next_ping - now
            frames = conn.take_outbox()
            entries, position = sub.read()
            if entries:
                if conn.redact:
                    frames.extend(entry.redacted_frame() for entry in entries)
                else:
                    frames.extend(entry.frame for entry in entries)
            if frames or sock.has_unsent:
                try:
                    # First the tail of what the dispatcher could only partly write.
                    sock.send(frames[0] if len(frames) == 1 else b"".join(frames))
                except WriteTimeout:
                    conn.disconnect_reason = "write_timeout"
                    sock.shutdown()
                    return
                except OSError:
                    conn.disconnect_reason = conn.disconnect_reason or "connection_lost"
                    sock.shutdown()
                    return
                conn.frames_sent += len(entries)
                sub.delivered += len(entries)
            sub.commit(position)
            closing = conn._closing
            if closing is not None and position >= closing[2]:
                # Everything the close request asked to deliver has been written.
                self._close(conn, closing[0], closing[1])
                return
            if position < self.bus.head and not sub.overflowed:
                continue  # more is waiting: write it now, without sleeping
            conn.pen.release()  # asleep: the dispatcher may write for us
            wake.wait(timeout)
            conn.pen.acquire()

    def _close(self, conn, code, reason):
        """Send a close frame, wait briefly for the client's reply, end the connection."""
        conn.close_code = code
        if conn.disconnect_reason is None:
            conn.disconnect_reason = {CLOSE_GOING_AWAY: "server_shutdown"}.get(code, f"closed_{code}")
        try:
            # Frames already queued (a final error, a pong) go out before the close.
            pending = conn.take_outbox()
            if pending:
                conn.sock.send(b"".join(pending))
            conn.ws.close(code, reason)
        except (OSError, simple_websocket.ConnectionClosed):
            pass  # the client is already gone; nothing to tell it
        else:
            conn.ws.thread.join(CLOSE_TIMEOUT)  # the reader ends when the client's close reply arrives

    def _note_reader_end(self, conn):
        ws = conn.ws
        if ws.max_message_size and ws.incoming_message_len > ws.max_message_size:
            conn.disconnect_reason, conn.close_code = "message_too_big", CLOSE_TOO_BIG
        elif ws.close_reason == 1005 or ws.close_reason is None:  # no close frame: the socket just ended
            conn.disconnect_reason = "connection_lost"
        else:
            conn.disconnect_reason, conn.close_code = "client_closed", int(ws.close_reason)

    def _finish(self, conn):
        reader = conn.ws.thread
        if not conn.ws.connected:
            # The reader is ending on its own (client close): it marks the
            # connection closed *before* it writes its close reply, so let it finish.
            reader.join(CLOSE_TIMEOUT)
        conn.ws.connected = False
        conn.sock.shutdown()  # wakes the reader; Werkzeug would otherwise keep reading this socket
        reader.join(CLOSE_TIMEOUT)
        conn.subscription.close()
        reason = conn.disconnect_reason or "connection_lost"
        with self._clients_lock:
            self._clients.pop(conn.id, None)
            self._totals["events_sent"] += conn.frames_sent
            self._totals["errors"] += conn.errors
            self._disconnects[reason] = self._disconnects.get(reason, 0) + 1
            code = ABNORMAL_CLOSE if conn.close_code is None else str(conn.close_code)
            self._disconnect_codes[code] = self._disconnect_codes.get(code, 0) + 1
            self._clients_changed.notify_all()
        log.info("client %s disconnected from %s (%s, close code %s)", conn.id, conn.address, reason, code,
                 extra={"client_id": conn.id, "address": conn.address, "close_code": int(code), "reason": reason})
        self._run_handlers(self.on_disconnect_handlers, conn.id)

    def _handle_message(self, conn, message):
        conn.messages_received += 1
        if not conn.rate.allow():
            with self._clients_lock:
                self._totals["rate_limited"] += 1
            if conn.rate.refused == 1:  # say it once per episode, not once per frame
                self._reply_error(conn, f"too many messages: at most {self.rate_limit:g} per second",
                                  code="rate_limited")
            if conn.rate.refused > conn.rate.burst:
                conn.disconnect_reason = "rate_limited"
                conn.request_close(CLOSE_POLICY, "rate limit exceeded")
            return
        if not isinstance(message, str):
            self._reply_error(conn, "binary frames are not supported; send JSON text", code="bad_request")
            return
        try:
            data = json.loads(message)
        except (ValueError, RecursionError):
            self._reply_error(conn, "Invalid JSON format")
            return
        if not isinstance(data, dict):
            self._reply_error(conn, f"expected a JSON object, got {type(data).__name__}", code="bad_request")
            return
        kind = data.get("type")
        if kind == "ping":
            reply = {"type": "pong", "seq": self.bus.last_seq, "id": data.get("id")}
            try:
                conn.post(framing.text_frame(encode_json(reply)))
            except (TypeError, ValueError):
                self._reply_error(conn, "ping id must be a JSON value", code="bad_request")
        elif kind == "subscribe":
            self._subscribe(conn, data)
        else:
            self._run_handlers(self.on_message_handlers, conn.id, data)

    def _subscribe(self, conn, data):
        types = data.get("types")
        session_id = data.get("session_id")
        try:
            event_filter = EventFilter(types, session_id)
        except (TypeError, ValueError) as exc:
            self._reply_error(conn, f"invalid subscribe: {exc}", code="bad_request")
            return
        conn.subscription.set_filter(event_filter)
        conn.post(framing.text_frame(encode_json({"type": "subscribed", **event_filter.describe()})))

    def _reply_error(self, conn, message, code=None):
        conn.errors += 1
        with self._clients_lock:
            self._totals["invalid_messages"] += 1
        frame = {"type": "error", "message": message, "timestamp": time.time()}
        if code is not None:
            frame["code"] = code
        conn.post(framing.text_frame(encode_json(frame)))
