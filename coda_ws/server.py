"""CodaWebSocketServer: the event stream served over WebSocket from a Flask app.

The server owns the network side; the :class:`~coda_ws.bus.EventBus` owns the
order of events. Standalone, the server makes its own Flask app and serves it
with Werkzeug's threaded server in a background thread; mounted
(``app=my_app``), it registers its routes on the application's app under
``url_prefix`` so the application's pages and the event stream share a port.

Threads (principle 7), all named and all joined by :meth:`stop`:

* ``coda-ws-http:PORT`` accepts connections and reads every request head (and
  declared body) without a thread per connection, under a total deadline
  (``handshake_timeout``; see :mod:`coda_ws.acceptor`);
* one request thread per complete request, ``coda-ws-request:PORT``,
  registered before it starts, running Werkzeug's request handler; for a
  WebSocket client it is its writer (see :mod:`coda_ws.connection`), renamed
  ``coda-ws-client:ID``;
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
import ssl
import threading
import time
import uuid

from flask import Blueprint, Flask, Response, request
from werkzeug.serving import (
    WSGIRequestHandler,
    get_sockaddr,
    make_server,
    select_address_family,
)

from . import framing
from ._transport import ServerTransport
from .acceptor import COUNTERS as ACCEPTOR_COUNTERS
from .acceptor import Acceptor
from .auth import is_loopback_host
from .bus import EventBus, redact_event
from .connection import Connection, GuardedSocket, SessionSettings
from .errors import CodaWSError, HandshakeRefused
from .events import DEFAULT_MAX_EVENT_SIZE, encode_json
from .handshake import Gate
from .http_api import DEFAULT_MAX_BODY_SIZE, register_http_api
from .metrics import ServerMetrics
from .protocol import (
    BEARER_SUBPROTOCOL_PREFIX,
    CLOSE_ABNORMAL,
    CLOSE_GOING_AWAY,
    PROTOCOL_VERSION,
    SERVER_NAME,
    V1_SUBPROTOCOL,
)

__all__ = ["CodaWebSocketServer", "V1_SUBPROTOCOL", "BEARER_SUBPROTOCOL_PREFIX"]

log = logging.getLogger("coda_ws.server")
http_log = logging.getLogger("coda_ws.http")

#: Default ``max_replay_bytes``: well under every shipped client's frame limit
#: (the Python client's 16 MiB, browsers' far larger).
DEFAULT_MAX_REPLAY_BYTES = 4 * 1024 * 1024
#: Default ``max_clients_per_address``.
DEFAULT_MAX_CLIENTS_PER_ADDRESS = 64

_STATIC_DIR = pathlib.Path(__file__).parent / "static"
_UNSET = object()


class _QuietRequestHandler(WSGIRequestHandler):
    """Werkzeug's handler, logging to ``coda_ws.http`` at DEBUG instead of
    printing every request to stderr (library code does not configure logging)."""

    def log(self, type, message, *args):  # noqa: A002 - Werkzeug's signature
        level = logging.WARNING if type == "error" else logging.DEBUG
        if http_log.isEnabledFor(level):
            http_log.log(level, "%s %s", self.address_string(), message % args if args else message)


class _PrereadRequestHandler(_QuietRequestHandler):
    """The handler for a request the accept loop has read (:mod:`coda_ws.acceptor`).

    It is made with a :class:`~coda_ws.acceptor.PendingRequest` as its
    ``request``: the connection is its socket (so ``werkzeug.socket`` is the
    real socket) and ``rfile`` gives the bytes already read first, then the
    socket, never past the declared request nor after the request's deadline.
    """

    def setup(self):
        pending = self.request
        self.request = pending.sock
        super().setup()  # connection, its timeout, rfile and wfile
        self.rfile.close()  # nothing was read through it
        self.rfile = pending.make_rfile()


def _tune_socket(sock):
    """Socket options for an accepted WebSocket connection.

    ``TCP_NODELAY``: a frame goes out when it is written. With Nagle's
    algorithm a small write that follows another one not yet acknowledged
    waits for the ACK, which the client's delayed-ACK timer can hold back
    40 ms: the p99 latency of every steady-rate benchmark was that timer.
    """
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _json_error(status, code, message):
    body = json.dumps({"error": code, "message": message})
    return Response(body, status=status, mimetype="application/json")


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
            it is closed with 4008 (default 1024, or ``history_size`` when
            that is smaller).
        max_event_size: largest encoded event in bytes (default 1 MiB;
            larger: ``emit()`` raises ``EventTooLargeError``, a 413 over HTTP).
        max_replay_bytes: largest replay frame in bytes (default 4 MiB): the
            newest high-priority events that fit are sent, and the frame
            says how many older ones were left out (``"omitted"``).
        max_message_size: largest client frame in bytes (default 64 KiB;
            larger: close 1009).
        max_clients: concurrent clients (default 256; beyond: HTTP 503).
        max_clients_per_address: concurrent clients (and handshakes in
            progress) from one peer IP address (default 64; beyond: HTTP
            503), so one process cannot hold every slot.
        allowed_origins: browser origins allowed besides the local defaults
            (``"*"`` allows every origin; ``"null"``, pages opened from a
            file, only when listed, with a logged warning).
        allowed_hosts: ``Host`` headers answered besides the local defaults
            (localhost, loopback IPs, the bound address; see
            :class:`~coda_ws.auth.HostPolicy`), against DNS rebinding;
            ``"*"`` turns the check off. Hosts in the ``CODA_WS_ALLOWED_HOSTS``
            environment variable (comma-separated) are added.
        auth: ``None`` (no tokens), ``{token: scopes}`` or a callable
            ``token -> scopes or None`` (see :mod:`coda_ws.auth`); tokens in
            the ``CODA_WS_TOKENS`` environment variable are added.
        insecure: allow binding a non-loopback address without auth (logged
            as a warning); refused otherwise.
        rate_limit: client frames per second a client may send on average
            (default 20, bursts of ``2 * rate_limit``); excess frames get an
            ``error`` frame with code ``rate_limited``, and a client that keeps
            going is closed with 1008.
        handshake_timeout: seconds from accept by which a client must have
            sent its HTTP request head and any body it declares (default 10;
            a total deadline, not per read; then the connection is closed).
            Until then the request holds no thread (see :mod:`coda_ws.acceptor`).
        bus: an existing :class:`EventBus` to serve (default: a new one).
        journal: a SQLite file keeping the stream across restarts and
            crashes (see :mod:`coda_ws.journal`: same epoch, seqs never
            reused, clients resume), or a :class:`coda_ws.journal.Journal`
            not yet attached (for its other options); None (default) keeps
            the stream in memory only.
        journal_max_events, journal_max_age: the journal's retention, in
            events and in seconds (None: no limit); only with a file path.
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
        client_queue_size=None,
        max_event_size=DEFAULT_MAX_EVENT_SIZE,
        max_replay_bytes=DEFAULT_MAX_REPLAY_BYTES,
        max_message_size=64 * 1024,
        max_clients=256,
        max_clients_per_address=DEFAULT_MAX_CLIENTS_PER_ADDRESS,
        allowed_origins=None,
        allowed_hosts=None,
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
        for name, value in (("max_message_size", max_message_size), ("max_clients", max_clients),
                            ("max_clients_per_address", max_clients_per_address),
                            ("max_replay_bytes", max_replay_bytes)):
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
        self.max_clients_per_address = max_clients_per_address
        self.max_replay_bytes = max_replay_bytes
        self.url_prefix = url_prefix.rstrip("/")
        self.gate = Gate(host, allowed_hosts, allowed_origins, auth)  # hosts, origins, tokens
        self.host_policy = self.gate.hosts
        self.allowed_hosts = self.host_policy.names
        self.origin_policy = self.gate.origins
        self.allowed_origins = self.origin_policy.allowed
        self.authenticator = self.gate.authenticator
        self.insecure = bool(insecure)
        self.rate_limit = float(rate_limit)
        self.handshake_timeout = float(handshake_timeout)
        if not isinstance(max_body_size, int) or isinstance(max_body_size, bool) or max_body_size < 1:
            raise ValueError(f"max_body_size must be a positive integer (bytes), got {max_body_size!r}")
        self.max_body_size = max_body_size
        self.bus = bus if bus is not None else EventBus(
            max_replay_events, history_size, client_queue_size, max_event_size=max_event_size
        )
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
        self._per_address = {}  # peer IP -> clients and handshakes in progress from it
        self._totals = {"total_connections": 0, "events_sent": 0, "errors": 0, "invalid_messages": 0,
                        "handler_errors": 0, "rejected_handshakes": 0, "rate_limited": 0}
        self._rejected_requests = {"host": 0, "origin": 0}
        self._disconnects = {}
        self._disconnect_codes = {}  # close code as a string ("1006": no close frame) -> count
        self._resumes = {}  # "recovered" or the reason it was not -> count
        # _threads_lock guards _request_threads: request thread -> its socket, added
        # before the thread starts (stop() cannot miss one), removed as it ends.
        self._threads_lock = threading.Lock()
        self._request_threads = {}
        self._acceptor = None  # the accept loop while running
        self._acceptor_counts = dict.fromkeys(ACCEPTOR_COUNTERS, 0)  # kept across restarts
        self._lifecycle_lock = threading.Lock()
        self._stopping = False
        self._serve_thread = None
        self._stop_callbacks = []

        self._session_settings = SessionSettings(self.ping_interval, self.ping_timeout, self.rate_limit)
        self._hooks = _Hooks(self)
        self.metrics = ServerMetrics(self)  # /metrics; counts from here on (a bus listener)
        self._app = app if app is not None else Flask("coda_ws")
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
        bp.before_request(self._check_request)
        if app is self._app and not self._mounted:
            # Standalone, the whole app is ours: requests that match no
            # route (404s) are checked too.
            app.before_request(lambda: None if request.blueprint == "coda_ws" else self._check_request())
        bp.add_url_rule("/", "websocket", self._websocket_view, websocket=True)
        bp.add_url_rule("/ws", "websocket_ws", self._websocket_view, websocket=True)
        bp.add_url_rule("/", "index", self._page_view("index.html"))
        bp.add_url_rule("/debug", "debug", self._page_view("debug.html"))
        bp.add_url_rule("/healthz", "healthz", self._healthz_view)
        bp.add_url_rule("/turns", "turns", self._turns_view)
        register_http_api(bp, self)  # /readyz /metrics /stats /schema /events
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
        """High-priority events kept for the replay frame (assignable, as in the original)."""
        return self.bus.max_replay_events

    @max_replay_events.setter
    def max_replay_events(self, value):
        self.bus.max_replay_events = value

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
            handler = httpd.RequestHandlerClass  # make_server set its protocol_version
            self._acceptor = Acceptor(
                httpd.socket, functools.partial(self._start_request, httpd, handler),
                timeout=self.handshake_timeout, max_body_size=self.max_body_size, counters=self._acceptor_counts,
            )
            thread = threading.Thread(
                target=self._serve, args=(self._acceptor,), name=f"coda-ws-http:{self.port}", daemon=True
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
        """Werkzeug's request handler for requests the accept loop has read.

        A class per start: ``make_server`` sets its ``protocol_version``.
        ``timeout`` is the socket's timeout in the request thread (each write
        of a response); reads are bounded by the request's deadline instead.
        """
        return type("CodaRequestHandler", (_PrereadRequestHandler,), {"timeout": self.handshake_timeout})

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

    def _serve(self, acceptor):
        """The accept loop's thread (``coda-ws-http:PORT``): accepts connections and
        reads their request heads until :meth:`stop` closes the acceptor (at once,
        no poll interval)."""
        try:
            acceptor.serve_forever()
        except Exception:
            log.exception("the accept loop on port %s failed: no new connection is accepted", self.port)

    def _start_request(self, httpd, handler, pending):
        """The acceptor's handoff (accept loop's thread): a request thread for a
        request that has arrived, registered before it starts."""
        thread = threading.Thread(
            target=self._handle_request, args=(httpd, handler, pending),
            name=f"coda-ws-request:{self.port}", daemon=True,
        )
        with self._threads_lock:
            self._request_threads[thread] = pending.sock
        try:
            thread.start()
        except BaseException:
            with self._threads_lock:
                del self._request_threads[thread]
            raise  # the acceptor closes the connection

    def _handle_request(self, httpd, handler, pending):
        """A request thread: Werkzeug's handler on ``pending``, then the socket is closed."""
        try:
            handler(pending, pending.address, httpd)
        except Exception:
            log.exception("request from %s failed", pending.address)
        finally:
            httpd.shutdown_request(pending.sock)  # FIN, then close
            with self._threads_lock:
                self._request_threads.pop(threading.current_thread(), None)

    def _wsgi(self, environ, start_response):
        return self._app.wsgi_app(environ, start_response)

    def _join_request_threads(self, deadline, grace):
        """Join every request thread, looping until none remains (stop()).

        No thread is added once the accept loop has ended. Sockets of the
        threads still running at ``grace`` are shut down (a plain request still
        reading its body or writing its response), which ends them.
        """
        forced = False
        while True:
            with self._threads_lock:
                threads = dict(self._request_threads)
            if not threads:
                return
            now = time.monotonic()
            if now >= deadline:
                log.warning("%d request thread(s) still running after stop()'s timeout", len(threads))
                return
            if not forced and now >= grace:
                forced = True
                for sock in threads.values():
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
            for thread in threads:
                thread.join(max(0.0, (deadline if forced else grace) - time.monotonic()))

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
            acceptor, self._acceptor = self._acceptor, None
            acceptor.close()  # wakes the accept loop at once; it closes every pending connection
            self._serve_thread.join(max(0.0, deadline - time.monotonic()))
            self.close_clients(CLOSE_GOING_AWAY, "server shutting down", max(0.0, deadline - time.monotonic()))
            # Every request thread (WebSocket writers end once their client is
            # gone, plain requests end quickly).
            self._join_request_threads(deadline, grace=deadline - timeout / 5)
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

            if isinstance(journal, Journal):
                if max_events is not None or max_age is not None:
                    raise ValueError("journal_max_events and journal_max_age apply to a journal path; give them "
                                     "to the Journal object instead")
                self.journal = journal
            else:
                self.journal = Journal(journal, max_events=max_events, max_age=max_age,
                                       flush_interval=flush_interval)
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
            rejected_requests = dict(self._rejected_requests)
        bus = self.bus.stats()
        acceptor = self._acceptor
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
            "epoch_changes": bus["epoch_changes"],
            "dispatch_errors": bus["dispatch_errors"],
            "history_events": bus["history_events"],
            "invalid_messages": totals["invalid_messages"],
            "handler_errors": totals["handler_errors"],
            "rejected_handshakes": totals["rejected_handshakes"],
            "rejected_requests": rejected_requests,
            "rate_limited": totals["rate_limited"],
            **dict(self._acceptor_counts),  # handshake_timeouts, oversize_heads, pending_overflows
            "pending_handshakes": acceptor.pending if acceptor is not None else 0,
            "disconnects": disconnects,
            "disconnect_codes": disconnect_codes,
            "resumes": resumes,
            **({"journal": self.journal.stats()} if self.journal is not None else {}),
            **({"backplane": self.backplane.stats()} if self.backplane is not None else {}),
        }

    # -- HTTP views -------------------------------------------------------------------

    def _check_request(self):
        """Runs before every request to coda_ws's routes, HTTP and upgrade
        alike (standalone: before every request): the Host allow-list, then
        the origin policy for requests from browser pages (see
        :meth:`Gate.check_request <coda_ws.handshake.Gate.check_request>`).
        Returns the refusal (421 or 403, JSON), or None to go on."""
        try:
            self.gate.check_request(request.environ)
        except HandshakeRefused as refused:
            upgrade = request.environ.get("HTTP_UPGRADE", "").lower() == "websocket"
            with self._clients_lock:
                self._rejected_requests[refused.reason] += 1
                if upgrade:
                    self._totals["rejected_handshakes"] += 1
            log.info("refused %s %s from %s: %s", request.method, request.path, request.remote_addr, refused.message)
            return _json_error(refused.status, refused.code, refused.message)
        return None

    def http_auth(self, scope):
        """For HTTP views: None when the request may use ``scope``, else the
        401/403 JSON response to return. Without auth, ``publish`` is allowed
        from loopback only and everything else is allowed."""
        try:
            self.gate.http_scope(request.environ, scope)
        except HandshakeRefused as refused:
            return _json_error(refused.status, refused.code, refused.message)
        return None

    def _page_view(self, name):
        """A view serving one of the package's HTML pages (dashboard, debug)."""

        def view():
            path = _STATIC_DIR / name
            if not path.is_file():
                return _json_error(404, "not_found", f"{name} is not installed")
            response = Response(path.read_bytes(), mimetype="text/html")
            response.headers["Cache-Control"] = "no-cache"
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
        if not limit.isascii() or not limit.isdigit() or len(limit) > 4 or not 1 <= int(limit) <= 1000:
            return _json_error(400, "bad_request", f"limit must be an integer from 1 to 1000, got {limit!r}")
        events = [entry.to_dict() for entry in self.bus.history()]
        return Response(encode_json(turn_breakdown(events, int(limit))), mimetype="application/json")

    # -- WebSocket ------------------------------------------------------------------

    # -- WebSocket ------------------------------------------------------------------

    def _websocket_view(self):
        """The upgrade: refusals as plain HTTP first, then the client's whole
        session in this request thread (:meth:`Connection.run`)."""
        environ = request.environ
        peer = environ.get("REMOTE_ADDR") or "?"
        raw_sock = environ.get("werkzeug.socket") or environ.get("gunicorn.socket")  # gunicorn: coda_ws.wsgi
        try:
            if raw_sock is None or isinstance(raw_sock, ssl.SSLSocket):
                raise HandshakeRefused(
                    501, "not_implemented",
                    "coda_ws serves WebSocket over plain HTTP only (Werkzeug or gunicorn, no TLS in the process): "
                    "terminate TLS in a reverse proxy",
                )
            if self._stopping:
                raise HandshakeRefused(503, "unavailable", "the server is shutting down")
            upgrade = self.gate.upgrade(environ, request.args)
            self._reserve_slot(peer)
        except HandshakeRefused as refused:
            with self._clients_lock:
                self._totals["rejected_handshakes"] += 1
            log.info("refused WebSocket from %s: %s %s", peer, refused.status, refused.message)
            return _json_error(refused.status, refused.code, refused.message)
        environ["coda_ws.socket_taken"] = True  # no HTTP response may follow on this socket
        raw_sock.settimeout(None)  # the handshake deadline is over; the reader blocks as long as the client lives
        _tune_socket(raw_sock)
        sock = GuardedSocket(raw_sock, write_timeout=self.ping_timeout)
        try:
            conn = self._accept(environ, peer, sock, upgrade)
        except Exception as exc:
            with self._clients_lock:
                self._reserved -= 1
                self._release_address_locked(peer)
            log.warning("WebSocket handshake with %s failed: %s", peer, exc)
            with contextlib.suppress(OSError):
                sock.release()  # simple-websocket's refusal, if it wrote one
            sock.shutdown()
            return Response(status=400)
        try:
            conn.run()
        except Exception:
            log.exception("client %s: writer failed", conn.id)
            conn.disconnect_reason = conn.disconnect_reason or "internal_error"
        finally:
            conn.end()
            self._unregister(conn)
        return Response(status=200)

    def _accept(self, environ, peer, sock, upgrade):
        """Subscribe, perform the handshake, queue the first frames and
        register the client, then let its handshake response out."""
        client_id = str(uuid.uuid4())
        threading.current_thread().name = f"coda-ws-client:{client_id[:8]}"
        subscription = self.bus.subscribe(
            types=upgrade.event_filter, since=upgrade.since, epoch=upgrade.epoch, reader_id=client_id
        )
        sock.on_close = subscription.wake.set
        # "Too slow" (4008) means the client does not read, not that its writer
        # thread was not scheduled while a burst was emitted.
        subscription.blocked = lambda: sock.blocked_since is not None
        handshake_environ = dict(environ)
        handshake_environ["werkzeug.socket"] = sock
        # Decline permessage-deflate: compressing per connection costs 2.4-3.9x
        # the CPU per message (docs/architecture.md), and events are small.
        handshake_environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
        # Hold the handshake response until the client is registered: a client
        # whose connect() returned is in server.clients (as in the original).
        sock.hold()
        try:
            transport = ServerTransport(
                handshake_environ, subprotocols=[V1_SUBPROTOCOL], max_message_size=self.max_message_size,
                reader_name=f"coda-ws-reader:{client_id[:8]}", wake=subscription.wake,
            )
        except BaseException:
            subscription.close()
            raise
        address = f"{environ.get('REMOTE_ADDR', '?')}:{environ.get('REMOTE_PORT', '?')}"
        conn = Connection(
            client_id, transport, sock, subscription, address=address, peer=peer,
            user_agent=environ.get("HTTP_USER_AGENT", ""), v1=upgrade.v1, scopes=upgrade.scopes,
            settings=self._session_settings, hooks=self._hooks,
        )
        self._post_initial_frames(conn, upgrade)
        with self._clients_lock:
            self._reserved -= 1
            self._clients[client_id] = conn
            self._totals["total_connections"] += 1
            resume = subscription.resume
            if resume is not None:
                result = "recovered" if resume.recovered else resume.reason
                self._resumes[result] = self._resumes.get(result, 0) + 1
            self._clients_changed.notify_all()
        try:
            sock.release()  # the handshake response: the client may now see it is connected
        except OSError:
            pass  # the client is gone already: its reader ends, and so does the session
        log.info("client %s connected from %s (%s)", client_id, address, "v1" if conn.v1 else "legacy",
                 extra={"client_id": client_id, "address": address, "protocol": 1 if conn.v1 else 0,
                        "user_agent": conn.user_agent})
        return conn

    def _post_initial_frames(self, conn, upgrade):
        """hello (v1), the resume answer (v1, when asked), the replay frame."""
        sub = conn.subscription
        replay = sub.replay
        if conn.redact:
            replay = [event for event in map(redact_event, replay) if event is not None]
        replay_frame = None
        included = 0
        if sub.resume is None or not sub.resume.recovered:
            if upgrade.replay and (conn.v1 or replay):
                payload, included = self.bus.replay_frame_json(replay, self.max_replay_bytes)
                replay_frame = framing.text_frame(payload)
        if conn.v1:
            conn.post_json({
                "type": "hello", "protocol": PROTOCOL_VERSION, "server": SERVER_NAME, "client_id": conn.id,
                "epoch": sub.epoch, "seq": sub.start_seq, "replay": included,
            })
            if sub.resume is not None:
                conn.post_json(sub.resume.frame_dict())
        if replay_frame is not None:
            conn.post(replay_frame)

    def _reserve_slot(self, address):
        """Count a handshake in progress against ``max_clients`` and against
        ``max_clients_per_address`` for the peer ``address`` (an IP); raises
        HandshakeRefused 503 when either is reached. Registering the client
        keeps the slot until :meth:`_unregister`; a failed handshake gives it back."""
        with self._clients_lock:
            if len(self._clients) + self._reserved >= self.max_clients:
                raise HandshakeRefused(503, "too_many_clients", f"client limit reached ({self.max_clients})")
            held = self._per_address.get(address, 0)
            if held >= self.max_clients_per_address:
                raise HandshakeRefused(
                    503, "too_many_clients",
                    f"client limit per address reached ({self.max_clients_per_address} from {address})",
                )
            self._per_address[address] = held + 1
            self._reserved += 1

    def _release_address_locked(self, address):
        left = self._per_address.get(address, 0) - 1
        if left > 0:
            self._per_address[address] = left
        else:
            self._per_address.pop(address, None)

    def _unregister(self, conn):
        """The session is over: count it, forget the client, run the disconnect handlers."""
        reason = conn.disconnect_reason or "connection_lost"
        code = CLOSE_ABNORMAL if conn.close_code is None else conn.close_code
        with self._clients_lock:
            if self._clients.pop(conn.id, None) is not None:
                self._release_address_locked(conn.peer)
            self._totals["events_sent"] += conn.frames_sent
            self._totals["errors"] += conn.errors
            self._disconnects[reason] = self._disconnects.get(reason, 0) + 1
            self._disconnect_codes[str(code)] = self._disconnect_codes.get(str(code), 0) + 1
            self._clients_changed.notify_all()
        log.info("client %s disconnected from %s (%s, close code %s)", conn.id, conn.address, reason, code,
                 extra={"client_id": conn.id, "address": conn.address, "close_code": code, "reason": reason})
        self._run_handlers(self.on_disconnect_handlers, conn.id)


class _Hooks:
    """What each :class:`~coda_ws.connection.Connection` needs from its
    server (:class:`~coda_ws.connection.SessionHooks`), without handing it the
    server itself."""

    __slots__ = ("_server",)

    def __init__(self, server):
        self._server = server

    def connected(self, conn):
        self._server._run_handlers(self._server.on_connect_handlers, conn.id)

    def message(self, conn, data):
        self._server._run_handlers(self._server.on_message_handlers, conn.id, data)

    def count(self, name):
        server = self._server
        with server._clients_lock:
            server._totals[name] += 1

    def last_seq(self):
        return self._server.bus.last_seq
