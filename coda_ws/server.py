"""CodaWebSocketServer: the event stream served over WebSocket from a Flask app.

The server composes four parts and owns their lifecycle:

* the :class:`~coda_ws.bus.EventBus`: the order of events (its dispatcher
  thread, ``coda-ws-dispatcher``, also writes new events to clients whose
  writer is asleep);
* the :class:`~coda_ws.handshake.Gate`: hosts, origins and tokens, checked
  before every request and upgrade;
* the :class:`~coda_ws.registry.ClientRegistry`: admitting, keeping,
  counting and closing the WebSocket clients, each one's session being its
  :class:`~coda_ws.connection.Connection` (its reader thread,
  ``coda-ws-reader:ID``, and its writer, the request thread renamed
  ``coda-ws-client:ID``);
* standalone, the :class:`~coda_ws.serving.HttpService`: the listening
  socket, the accept loop (``coda-ws-http:PORT``, reading every request head
  under a total deadline without a thread per connection) and one request
  thread per request (``coda-ws-request:PORT``).

Mounted (``app=my_app``), the routes go on the application's Flask app under
``url_prefix`` and the application's server serves them; :meth:`close_stream`
then does the shutdown :meth:`stop` would. The data flow, the threads and
their owners, and the lock order are in ``docs/architecture.md``.
"""

import contextlib
import logging
import os
import pathlib
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask

from . import config
from .acceptor import COUNTERS as ACCEPTOR_COUNTERS
from .auth import check_exposure
from .bus import EventBus
from .config import CONFIGURED, Configured
from .connection import Connection, SessionSettings
from .deadline import Deadline
from .event_methods import EventMethods
from .events import import_event_modules
from .handshake import Gate
from .http_api import register_http_api
from .metrics import ServerMetrics
from .persistence import Backplane, close_persistence, open_persistence
from .protocol import BEARER_SUBPROTOCOL_PREFIX, CLOSE_GOING_AWAY, V1_SUBPROTOCOL
from .registry import ClientRegistry, RegistryLimits
from .serving import HttpService, check_resolvable
from .stats import ServerStats, server_stats

if TYPE_CHECKING:
    from .journal import Journal

__all__ = [
    "BEARER_SUBPROTOCOL_PREFIX",
    "CONFIGURED",
    "V1_SUBPROTOCOL",
    "CodaWebSocketServer",
    "Configured",
    "ServerStats",
]

log = logging.getLogger("coda_ws.server")

_STATIC_DIR = pathlib.Path(__file__).parent / "static"


class CodaWebSocketServer(EventMethods):
    """The Coda event stream over WebSocket (synchronous, thread-based).

    Args:
        host: interface to bind (default ``"localhost"``).
        port: TCP port; 0 picks a free one (read ``port`` or ``url`` after
            :meth:`start`).
        max_replay_events: high-priority events kept for the replay frame.
        ping_interval: seconds between keepalive pings (None or 0: off).
        ping_timeout: seconds a client may take to answer a ping; also how
            long a write may wait for a client that reads nothing.
        app: a Flask app to mount on (default: the server makes its own);
            its ``app.config["CODA_WS_*"]`` keys are read.
        bus: an existing :class:`EventBus` to serve (default: a new one).
        config_file: a TOML file of options (keys named after them).
        **options: every other option of :data:`coda_ws.config.OPTIONS`
            (limits, history, auth, hosts and origins, journal, backplane):
            listed with their defaults in the configuration reference
            (``docs/configuration.md``; ``coda-ws config`` prints the
            effective ones).

    An option left out (the positional ones included: their default is
    :data:`CONFIGURED`) is looked up in this order: its ``CODA_WS_*``
    environment variable, the Flask config, ``config_file``, the built-in
    default; :attr:`settings` holds every effective value and
    :attr:`setting_sources` where each came from.

    Raises:
        ValueError / TypeError: an option with a bad value, naming it.
        CodaWSError: a journal or backplane that cannot be opened.

    All public methods are thread-safe. Event methods (``emit``,
    ``broadcast_*``, ``send_to_client``) work whether or not the server is
    running and never block on clients.
    """

    def __init__(
        self,
        host: str | Configured = CONFIGURED,
        port: int | Configured = CONFIGURED,
        max_replay_events: int | Configured = CONFIGURED,
        ping_interval: float | Configured | None = CONFIGURED,
        ping_timeout: float | Configured | None = CONFIGURED,
        *,
        app: Flask | None = None,
        bus: EventBus | None = None,
        config_file: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> None:
        # Long: the public constructor settles every option, then builds the parts in the order they
        # depend on each other; each step is a line or two
        unknown = sorted(set(options) - config.OPTION_NAMES)
        if unknown:
            raise TypeError(
                f"CodaWebSocketServer() got an unknown option {unknown[0]!r}{config.suggestion(unknown[0])}"
            )
        if app is not None and not isinstance(app, Flask):
            raise TypeError(f"app must be a Flask application, got {type(app).__name__}")
        positional = {
            "host": host,
            "port": port,
            "max_replay_events": max_replay_events,
            "ping_interval": ping_interval,
            "ping_timeout": ping_timeout,
        }
        given = {name: value for name, value in positional.items() if value is not CONFIGURED}
        given.update(options)
        resolved = config.resolve(
            given,
            file=config.from_toml(config_file) if config_file is not None else None,
            flask=config.from_mapping(app.config, "app.config", prefixed=True) if app is not None else None,
        )
        settings = {name: setting.value for name, setting in resolved.items()}
        import_event_modules(settings["event_modules"])  # before a journal or backplane is read
        #: Every option's effective value (keyword > environment > Flask config > file > default).
        self.settings: dict[str, Any] = settings
        #: Where each came from: "keyword", "environment", "flask config", "file" or "default".
        self.setting_sources: dict[str, str] = {name: setting.source for name, setting in resolved.items()}
        self.host: str = settings["host"]
        self.port: int = settings["port"]
        self.ping_interval: float | None = settings["ping_interval"] or None
        self.ping_timeout: float | None = settings["ping_timeout"] or None
        prefix = settings["url_prefix"]
        self.url_prefix: str = (
            ("/coda-ws" if app is not None else "") if prefix is None else prefix.rstrip("/")
        )
        self.max_message_size: int = settings["max_message_size"]
        self.max_clients: int = settings["max_clients"]
        self.max_clients_per_address: int = settings["max_clients_per_address"]
        self.max_replay_bytes: int = settings["max_replay_bytes"]
        self.max_body_size: int = settings["max_body_size"]
        self.insecure: bool = settings["insecure"]
        self.rate_limit = float(settings["rate_limit"])
        self.handshake_timeout = float(settings["handshake_timeout"])
        self.gate = Gate(self.host, settings["allowed_hosts"], settings["allowed_origins"], settings["auth"])
        self.host_policy, self.origin_policy, self.authenticator = (
            self.gate.hosts,
            self.gate.origins,
            self.gate.authenticator,
        )
        self.allowed_hosts, self.allowed_origins = self.host_policy.names, self.origin_policy.allowed
        self.bus = (
            bus
            if bus is not None
            else EventBus(
                settings["max_replay_events"],
                settings["history_size"],
                settings["client_queue_size"],
                max_event_size=settings["max_event_size"],
            )
        )
        self._owns_bus = bus is None
        #: The journal (with ``journal=``) or the backplane (a
        #: :class:`~coda_ws.backplane.RedisBackplane` or alike, with ``backplane=``).
        self.journal: Journal | None
        self.backplane: Backplane | None
        self.journal, self.backplane = open_persistence(settings, self.bus)

        self.on_connect_handlers: list[Callable[[str], Any]] = []
        self.on_disconnect_handlers: list[Callable[[str], Any]] = []
        self.on_message_handlers: list[Callable[[str, dict[str, Any]], Any]] = []
        self.running = False
        self.server: HttpService | None = None  # the HTTP side while running standalone
        self.registry = ClientRegistry(
            self.bus,
            RegistryLimits(
                self.max_clients,
                self.max_clients_per_address,
                self.max_message_size,
                self.max_replay_bytes,
                self.ping_timeout,
            ),
            SessionSettings(self.ping_interval, self.ping_timeout, self.rate_limit),
            self._run_handlers,
        )
        # _lifecycle_lock serializes start(), stop() and close_stream().
        self._lifecycle_lock = threading.Lock()
        self._stopping = False  # handshakes get 503 while set
        self._acceptor_counts = dict.fromkeys(ACCEPTOR_COUNTERS, 0)  # kept across restarts
        self._stop_callbacks: list[Callable[[], Any]] = []
        self.metrics = ServerMetrics(self)  # /metrics; counts from here on (a bus listener)
        # static_folder=None: the blueprint serves /static (with its headers), standalone and mounted alike.
        self._app = app if app is not None else Flask("coda_ws", static_folder=None)
        self._mounted = app is not None
        self.init_app(self._app)

    # -- configuration --------------------------------------------------------

    def init_app(self, app: Flask) -> None:
        """Register coda_ws's routes on ``app`` under ``url_prefix``.

        For an application that runs its own server; the constructor calls
        it for the app it is given. State lives in ``app.extensions["coda_ws"]``.
        The server's options were settled when it was made: ``CODA_WS_*``
        keys of this app's config that disagree with them are logged as
        ignored (make the server with ``app=`` to have them read).
        """
        if app.extensions.get("coda_ws") not in (None, self):
            raise RuntimeError("this Flask app already has a coda_ws server; one per app")
        if app.extensions.get("coda_ws") is self:
            return
        if app is not self._app:
            ignored = sorted(
                name
                for name, value in config.from_mapping(app.config, "app.config", prefixed=True).items()
                if self.settings.get(name) != value
            )
            if ignored:
                log.warning(
                    "init_app: the server was made before this app; app.config keys ignored: %s "
                    "(pass app= to CodaWebSocketServer to read them)",
                    ", ".join("CODA_WS_" + name.upper() for name in ignored),
                )
        bp = Blueprint(
            "coda_ws",
            __name__,
            url_prefix=self.url_prefix or None,
            static_folder=str(_STATIC_DIR),
            static_url_path="/static",
        )
        # Every route: the pages, the HTTP API and the WebSocket upgrade, with
        # the Host and Origin checks before each request.
        register_http_api(
            bp, self, _STATIC_DIR, whole_app=app if app is self._app and not self._mounted else None
        )
        app.register_blueprint(bp)
        app.extensions["coda_ws"] = self

    @property
    def app(self) -> Flask:
        """The Flask app this server's routes live on."""
        return self._app

    @property
    def url(self) -> str:
        """The WebSocket URL clients connect to (``ws://host:port/prefix/ws``)."""
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return (
            f"ws://{host}:{self.port}{self.url_prefix}/ws" if self.url_prefix else f"ws://{host}:{self.port}/"
        )

    @property
    def http_url(self) -> str:
        """The HTTP base URL (dashboard and HTTP endpoints)."""
        base = self.url.replace("ws://", "http://", 1)
        return base[: -len("ws")] if self.url_prefix else base

    # -- the original's attributes --------------------------------------------

    @property
    def max_replay_events(self) -> int:
        """High-priority events kept for the replay frame (assignable, as in the original)."""
        value: int = self.bus.max_replay_events
        return value

    @max_replay_events.setter
    def max_replay_events(self, value: int) -> None:
        self.bus.max_replay_events = value

    @property
    def sequence_number(self) -> int:
        """The last seq stamped (0 before any event)."""
        seq: int = self.bus.last_seq
        return seq

    @property
    def replay_buffer(self) -> list[dict[str, Any]]:
        """The replay buffer: the bus's list of event dicts, oldest first (assignable)."""
        replay: list[dict[str, Any]] = self.bus.replay
        return replay

    @replay_buffer.setter
    def replay_buffer(self, events: list[dict[str, Any]]) -> None:
        self.bus.replay = events

    @property
    def clients(self) -> dict[str, Connection]:
        """A snapshot: client id -> :class:`~coda_ws.connection.Connection`."""
        return self.registry.snapshot()

    @property
    def stats(self) -> ServerStats:
        """Same as :meth:`get_stats`."""
        return self.get_stats()

    @property
    def epoch(self) -> str:
        """The stream's epoch (see the bus)."""
        epoch: str = self.bus.epoch
        return epoch

    @property
    def serving_state(self) -> str:
        """``"ok"``, or why the server takes no new clients now (for ``/readyz``).

        A server not started by :meth:`start` (mounted, or a gunicorn node) is
        ``"ok"`` while it is not shutting down: another server serves its routes."""
        if self._stopping:
            return "shutting down"
        service = self.server
        if service is not None and not service.accepting:
            return "the accept loop has ended"
        return "ok"

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        """Bind and serve in a background thread; returns once the port is bound.

        Idempotent.

        Raises:
            OSError: the address cannot be bound (naming it; ``running``
                stays False).
            CodaWSError: a non-loopback address without tokens (and not
                ``insecure``): see :func:`coda_ws.auth.check_exposure`.
        """
        with self._lifecycle_lock:
            if self.running:
                return
            check_resolvable(self.host, self.port)
            check_exposure(
                self.host, self.port, authenticated=self.authenticator.enabled, insecure=self.insecure
            )
            self.server = HttpService(
                self.host,
                self.port,
                self._app.wsgi_app,
                handshake_timeout=self.handshake_timeout,
                max_body_size=self.max_body_size,
                counters=self._acceptor_counts,
            )
            self.port = self.server.port
            self._stopping = False
            self.bus.start()
            if self.backplane is not None:
                self.backplane.start()  # waits briefly for the first load of the shared stream
            self.running = True
            log.info("coda_ws serving on %s (epoch %s)", self.url, self.bus.epoch)

    def stop(self, timeout: float = 5.0) -> None:
        """Close every client with 1001, stop serving, and join every thread.

        Idempotent; returns within ``timeout`` seconds even when clients are
        stalled (their sockets are shut down once the time is nearly up).
        History, replay buffer, sequence and epoch are kept for a later
        :meth:`start`.
        """
        with self._lifecycle_lock:
            if not self.running:
                return
            self.running = False
            service, self.server = self.server, None
            self._shutdown(timeout, service)
            log.info("coda_ws stopped")

    def close_stream(self, timeout: float = 5.0) -> None:
        """The shutdown :meth:`stop` does, for a server whose HTTP side someone
        else runs (mounted with ``app=``, or a gunicorn node): deliver what was
        emitted to clients that keep up, close every client with 1001, stop
        the dispatcher and close the journal or the backplane. Idempotent."""
        with self._lifecycle_lock:
            if not self._stopping:
                self._shutdown(timeout, None)

    def _shutdown(self, timeout: float, service: HttpService | None) -> None:
        """The one shutdown path (lifecycle lock held): flush, stop accepting,
        close clients, join request threads, run the stop callbacks, close
        the bus and the journal or backplane, all within ``timeout``."""
        deadline = Deadline(timeout)
        # Clients that keep up get everything emitted before the shutdown, then 1001.
        if self.backplane is not None:
            self.backplane.flush(timeout / 5)  # this node's events, through Redis and back
        self.bus.flush(timeout / 5)
        self._stopping = True  # handshakes from now on get 503
        if service is not None:
            service.stop_accepting(deadline)
        left = self.registry.close_all(CLOSE_GOING_AWAY, "server shutting down", deadline.left())
        if left:
            log.warning("%d client(s) still connected at shutdown", left)
        if service is not None:
            service.close(deadline, grace=deadline.earlier(timeout / 5))
        for callback in list(self._stop_callbacks):
            try:
                callback()
            except Exception:
                log.exception("stop callback %r failed", callback)
        if self._owns_bus:
            self.bus.close(deadline.left())
        close_persistence(self.journal, self.backplane, deadline.left(floor=0.5))

    def close_clients(
        self, code: int = CLOSE_GOING_AWAY, reason: str = "server shutting down", timeout: float = 5.0
    ) -> int:
        """Close every client with ``code`` and wait for their sessions to end.

        Each client first gets the events already dispatched, then the close
        frame; sockets of clients still connected when 4/5 of ``timeout``
        has passed are shut down. Thread-safe. Returns how many clients were
        still connected when ``timeout`` seconds had passed.
        """
        return self.registry.close_all(code, reason, timeout)

    def add_stop_callback(self, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` when the server stops (helpers stop their threads)."""
        self._stop_callbacks.append(callback)

    def remove_stop_callback(self, callback: Callable[[], Any]) -> None:
        """Forget a callback given to :meth:`add_stop_callback` (no error when unknown)."""
        with contextlib.suppress(ValueError):
            self._stop_callbacks.remove(callback)

    @contextlib.contextmanager
    def run_context(self) -> Iterator["CodaWebSocketServer"]:
        """Start on enter, stop on exit."""
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def __enter__(self) -> "CodaWebSocketServer":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def get_stats(self) -> ServerStats:
        """Counters: the original's keys plus drops, overflows, refusals and
        disconnects by reason (``docs/observability.md`` lists every key)."""
        service = self.server
        return server_stats(
            running=self.running,
            sequence_number=self.bus.last_seq,
            epoch=self.bus.epoch,
            clients=self.registry.stats(),
            bus=self.bus.stats(),
            acceptor=self._acceptor_counts,
            pending_handshakes=service.pending if service is not None else 0,
            journal=self.journal.stats() if self.journal is not None else None,
            backplane=self.backplane.stats() if self.backplane is not None else None,
        )
