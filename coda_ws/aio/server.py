"""The original's asyncio ``CodaWebSocketServer``, over coda_ws's thread-based server.

Theory of operation
-------------------

There is one server: :class:`coda_ws.server.CodaWebSocketServer` (Werkzeug
and simple-websocket in background threads, the :class:`~coda_ws.bus.EventBus`
owning the order). This class holds one (``server.sync``) and gives it the
original's asyncio API; it starts no event loop and no thread of its own.

* **Event methods** (``broadcast_*``, ``send_to_client``) are coroutines that
  call the synchronous ones directly: ``emit()`` validates, encodes and stamps
  in the caller and never waits for I/O or for clients, so it cannot block
  the loop. :meth:`CodaWebSocketServer.emit` is a plain method for the same
  reason, callable from coroutines and threads alike.
* **Blocking calls** (:meth:`~CodaWebSocketServer.start` binds and resolves
  the host name, :meth:`~CodaWebSocketServer.stop` closes clients and joins
  threads) run in the loop's default executor (:func:`asyncio.to_thread`), so
  the loop keeps running while they wait. :meth:`~CodaWebSocketServer.wait_for_clients`
  uses no thread: the server wakes the waiting coroutines when a client connects.
* **Handlers** registered with ``add_*_handler`` (or appended to the
  ``on_*_handlers`` lists, as the original allowed) run *on the event loop*
  that registered them (a handler registered outside a running loop runs on
  the loop that called :meth:`~CodaWebSocketServer.start`), as every handler
  of the original did: plain functions are called there, and the awaitable a
  coroutine function returns is awaited there. The server thread that raises
  the event (the client's writer thread) waits until the handler has finished,
  so a client's handlers run one at a time and in order (connect, each
  message, disconnect), and disconnect handlers have finished when
  :meth:`~CodaWebSocketServer.stop` returns. An exception is logged (logger
  ``coda_ws.server``, with its traceback) and counted in
  ``get_stats()["handler_errors"]``, and the next handler runs. If the loop
  is not running when a handler is due (it was stopped or closed, say after
  ``asyncio.run()`` returned), the handler is not run, and that is logged and
  counted the same way.
"""

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..events import BaseEvent, EventType
from ..server import CodaWebSocketServer as SyncCodaWebSocketServer
from ..server import ServerStats

__all__ = ["CodaWebSocketServer", "Handler"]

log = logging.getLogger("coda_ws.aio")
_server_log = logging.getLogger("coda_ws.server")  # handler failures are logged where the server logs its own
#: Tasks of coroutine handlers started on their own loop, held until done.
_RUNNING_HANDLERS: "set[asyncio.Future[Any]]" = set()

#: A connect/disconnect handler ``fn(client_id)`` or a message handler
#: ``fn(client_id, data)``: a plain function or a coroutine function.
Handler = Callable[..., Any]

#: Seconds between checks that the handler's loop still runs, while a server
#: thread waits for a handler to finish.
_LOOP_CHECK_INTERVAL = 0.5


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _invoke(handler: Handler, args: tuple[Any, ...]) -> None:
    result = handler(*args)
    if inspect.isawaitable(result):
        await result


class _OnLoop:
    """Runs one handler on its event loop for a server thread, and waits for it.

    Raises what the handler raised, or RuntimeError when there is no running
    loop to run it on (the caller logs and counts both).
    """

    __slots__ = ("handler", "loop")

    def __init__(self, handler: Handler, loop: asyncio.AbstractEventLoop | None) -> None:
        self.handler = handler
        self.loop = loop

    def __call__(self, *args: Any) -> None:
        loop = self.loop
        if loop is None:
            raise RuntimeError(
                f"no event loop to run handler {self.handler!r} on: register it from a coroutine, "
                "or start the server with `await server.start()`"
            )
        if loop.is_closed() or not loop.is_running():
            raise RuntimeError(f"handler {self.handler!r} not run: its event loop is not running")
        if _running_loop() is loop:
            # Only a synchronous call made on the loop's own thread gets here
            # (server threads never run on a loop): waiting would deadlock.
            result = self.handler(*args)
            if inspect.isawaitable(result):
                # Held until done (the loop keeps only a weak reference); its
                # failure goes to the loop's exception handler.
                task = asyncio.ensure_future(result, loop=loop)
                _RUNNING_HANDLERS.add(task)
                task.add_done_callback(_RUNNING_HANDLERS.discard)
            return
        future = asyncio.run_coroutine_threadsafe(_invoke(self.handler, args), loop)
        # Wait for the handler, but not for a loop that has stopped: a task
        # scheduled on a loop that no longer runs would never finish.
        while not future.done():
            concurrent.futures.wait([future], timeout=_LOOP_CHECK_INTERVAL)
            if not future.done() and (loop.is_closed() or not loop.is_running()):
                if not loop.is_closed():
                    future.cancel()
                raise RuntimeError(f"handler {self.handler!r} did not finish: its event loop stopped")
        future.result()  # raises what the handler raised


class CodaWebSocketServer:
    """The Coda event stream over WebSocket, with the original's asyncio API.

    Same arguments and defaults as the original (``host="localhost"``,
    ``port=8765``, ``max_replay_events=50``, ``ping_interval=20``,
    ``ping_timeout=10``); every keyword option of
    :class:`coda_ws.server.CodaWebSocketServer` (``history_size``, ``auth``,
    ``journal``, ``backplane``...) is accepted too. Port 0 picks a free port
    (read :attr:`port` after :meth:`start`).

    Awaitable, as in the original: :meth:`start`, :meth:`stop`,
    :meth:`run_context` (``async with``), :meth:`broadcast_event`,
    :meth:`send_to_client`, :meth:`broadcast_system_info`,
    :meth:`broadcast_system_error`, :meth:`broadcast_system_metrics`,
    :meth:`wait_for_clients`. Plain: the ``add_*_handler`` methods,
    :meth:`get_stats`, :meth:`get_connected_clients` and :meth:`emit`.

    The server itself is :attr:`sync`, a
    :class:`coda_ws.server.CodaWebSocketServer`: threaded code may emit into
    the same stream through it (or through :meth:`emit`), and its other
    options and methods are there. See the module notes for where handlers
    run. Every method may be called from any coroutine; the plain ones from
    any thread too. Nothing here blocks the event loop.

    Raises:
        ValueError, TypeError: bad arguments (as the synchronous server).
    """

    sync: SyncCodaWebSocketServer

    def __init__(
        self,
        host: str = "localhost",
        port: int = 8765,
        max_replay_events: int = 50,
        ping_interval: float | None = 20,
        ping_timeout: float | None = 10,
        **options: Any,
    ) -> None:
        self._attach(
            SyncCodaWebSocketServer(host, port, max_replay_events, ping_interval, ping_timeout, **options)
        )

    @classmethod
    def wrap(cls, server: SyncCodaWebSocketServer) -> "CodaWebSocketServer":
        """The asyncio API over an existing synchronous server (running or not).

        Threaded code keeps using ``server``; coroutines use the returned
        object. Both emit into the same stream.
        """
        if not isinstance(server, SyncCodaWebSocketServer):
            raise TypeError(f"server must be a coda_ws.CodaWebSocketServer, got {type(server).__name__}")
        self = cls.__new__(cls)
        self._attach(server)
        return self

    def _attach(self, server: SyncCodaWebSocketServer) -> None:
        self.sync = server
        self.on_connect_handlers: list[Handler] = []
        self.on_disconnect_handlers: list[Handler] = []
        self.on_message_handlers: list[Handler] = []
        # The loop handlers run on when they were registered outside one:
        # the one this object was made in, then the one that started it.
        self._loop = _running_loop()
        # _lock guards _handler_loops and _client_waiters (server threads read them).
        self._lock = threading.Lock()
        self._handler_loops: dict[int, tuple[Handler, asyncio.AbstractEventLoop]] = {}
        self._client_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()
        server.add_connect_handler(self._on_connect)
        server.add_disconnect_handler(self._on_disconnect)
        server.add_message_handler(self._on_message)

    # -- the original's attributes ---------------------------------------------

    @property
    def host(self) -> str:
        """The interface to bind (set in the constructor: the Host allow-list is built from it)."""
        return self.sync.host

    @property
    def port(self) -> int:
        """The TCP port (the bound one once started; assignable before :meth:`start`)."""
        return self.sync.port

    @port.setter
    def port(self, value: int) -> None:
        self.sync.port = value

    @property
    def ping_interval(self) -> float | None:
        """Seconds between keepalive pings (None: off); set in the constructor."""
        return self.sync.ping_interval

    @property
    def ping_timeout(self) -> float | None:
        """Seconds a client may take to answer a ping (None: no limit); set in the constructor."""
        return self.sync.ping_timeout

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self.sync.running

    @property
    def server(self) -> Any:
        """The Werkzeug server while running, else None (the original's ``websockets`` server)."""
        return self.sync.server

    @property
    def clients(self) -> dict[str, Any]:
        """A snapshot: client id -> :class:`~coda_ws.connection.Connection`."""
        return self.sync.clients

    @property
    def sequence_number(self) -> int:
        """The last seq stamped (0 before any event)."""
        return self.sync.sequence_number

    @property
    def replay_buffer(self) -> list[dict[str, Any]]:
        """The replay buffer: a list of event dicts, oldest first (assignable)."""
        return self.sync.replay_buffer

    @replay_buffer.setter
    def replay_buffer(self, events: list[dict[str, Any]]) -> None:
        self.sync.replay_buffer = events

    @property
    def max_replay_events(self) -> int:
        """High-priority events kept for the replay frame (assignable)."""
        return self.sync.max_replay_events

    @max_replay_events.setter
    def max_replay_events(self, value: int) -> None:
        self.sync.max_replay_events = value

    @property
    def stats(self) -> ServerStats:
        """Same as :meth:`get_stats` (a snapshot)."""
        return self.sync.get_stats()

    @property
    def url(self) -> str:
        """The WebSocket URL clients connect to."""
        return self.sync.url

    @property
    def http_url(self) -> str:
        """The HTTP base URL (dashboard and HTTP endpoints)."""
        return self.sync.http_url

    @property
    def epoch(self) -> str:
        """The stream's epoch (see docs/protocol.md, section 4)."""
        return self.sync.epoch

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        """Bind and serve (in background threads); returns once the port is bound.

        Idempotent. The binding runs in the loop's default executor. Handlers
        registered outside a running loop run on this coroutine's loop from now on.

        Raises:
            OSError: the address cannot be bound (``running`` stays False).
            CodaWSError: a non-loopback host without authentication (see the
                synchronous server).
        """
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.sync.start)

    async def stop(self, timeout: float = 5.0) -> None:
        """Close every client with 1001, stop serving and join the server's threads.

        Idempotent; returns within about ``timeout`` seconds, in the loop's
        default executor (the loop keeps running: disconnect handlers run on
        it meanwhile). History, replay buffer, sequence and epoch are kept
        for a later :meth:`start`.
        """
        await asyncio.to_thread(self.sync.stop, timeout)

    @contextlib.asynccontextmanager
    async def run_context(self) -> AsyncIterator["CodaWebSocketServer"]:
        """``async with server.run_context():`` starts on enter, stops on exit."""
        await self.start()
        try:
            yield self
        finally:
            await self.stop()

    async def __aenter__(self) -> "CodaWebSocketServer":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.stop()

    # -- events -------------------------------------------------------------------

    def emit(
        self,
        event_type: EventType | str,
        *,
        session_id: str | None = None,
        high_priority: bool | None = None,
        **fields: Any,
    ) -> BaseEvent:
        """Emit an event (see :meth:`coda_ws.bus.EventBus.emit`). Plain, not a coroutine.

        Thread-safe and non-blocking: callable from coroutines and threads.
        Returns the event; raises ``InvalidEventError`` (a ``TypeError`` and a
        ``ValueError``) naming the bad field, and then emits nothing.
        """
        return self.sync.emit(event_type, session_id=session_id, high_priority=high_priority, **fields)

    async def broadcast_event(
        self,
        event_type: EventType | str,
        data: dict[str, Any],
        high_priority: bool = False,
        session_id: str | None = None,
    ) -> BaseEvent:
        """Emit an event whose fields are ``data``; returns it. Never waits for clients.

        Stamped and kept (in replay when ``high_priority``) even when no
        client is connected or the server is not running.

        Raises:
            ValueError: an unknown event type (``InvalidEventError``).
            TypeError: ``data`` is not a dict, or a field is missing, unknown or
                of the wrong kind.
        """
        return self.sync.broadcast_event(event_type, data, high_priority, session_id)

    async def send_to_client(
        self, client_id: str, event_type: EventType | str, data: dict[str, Any], session_id: str | None = None
    ) -> bool:
        """Send an event to one client only (never replayed or resumed).

        Returns False when no such client is connected. Raises as
        :meth:`broadcast_event`.
        """
        return self.sync.send_to_client(client_id, event_type, data, session_id)

    async def broadcast_system_info(self, info: dict[str, Any]) -> BaseEvent:
        """``system_info`` with ``data=info``, high priority."""
        return self.sync.broadcast_system_info(info)

    async def broadcast_system_error(
        self, level: str, message: str, details: dict[str, Any] | None = None
    ) -> BaseEvent:
        """``system_error``, high priority."""
        return self.sync.broadcast_system_error(level, message, details)

    async def broadcast_system_metrics(
        self,
        memory_mb: float,
        cpu_percent: float,
        gpu_vram_mb: float | None = None,
        uptime_seconds: float = 0,
    ) -> BaseEvent:
        """``system_metrics``, not high priority."""
        return self.sync.broadcast_system_metrics(memory_mb, cpu_percent, gpu_vram_mb, uptime_seconds)

    # -- handlers -------------------------------------------------------------------

    def add_connect_handler(self, handler: Handler) -> None:
        """Call ``handler(client_id)`` on the event loop once a client has connected.

        ``handler`` may be a coroutine function: it is awaited. See the module
        notes for the loop, ordering and errors.
        """
        self._register(self.on_connect_handlers, handler)

    def add_disconnect_handler(self, handler: Handler) -> None:
        """Call ``handler(client_id)`` on the event loop once a client has disconnected."""
        self._register(self.on_disconnect_handlers, handler)

    def add_message_handler(self, handler: Handler) -> None:
        """Call ``handler(client_id, data)`` on the event loop for every JSON object a
        client sends (except the protocol's own ``subscribe`` and ``ping``).

        While it runs, that client's events wait (its writer thread waits for
        the handler, as for a synchronous handler); other clients are not affected.
        """
        self._register(self.on_message_handlers, handler)

    def _register(self, handlers: list[Handler], handler: Handler) -> None:
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}")
        loop = _running_loop()
        with self._lock:
            if loop is not None:
                self._handler_loops[id(handler)] = (handler, loop)
            else:
                self._handler_loops.pop(id(handler), None)
        handlers.append(handler)

    def _loop_for(self, handler: Handler) -> asyncio.AbstractEventLoop | None:
        with self._lock:
            entry = self._handler_loops.get(id(handler))
        if entry is not None and entry[0] is handler and not entry[1].is_closed():
            return entry[1]
        return self._loop

    def _run_handlers(self, handlers: list[Handler], *args: Any) -> None:
        """In a server thread: run ``handlers`` (a snapshot) on their loops, in
        order; what one raises is logged and counted as the server does for its own."""
        for handler in list(handlers):
            try:
                _OnLoop(handler, self._loop_for(handler))(*args)
            except Exception:
                self.sync.registry.count("handler_errors")
                _server_log.exception("handler %r failed", handler)

    def _on_connect(self, client_id: str) -> None:
        self._wake_client_waiters()
        self._run_handlers(self.on_connect_handlers, client_id)

    def _on_disconnect(self, client_id: str) -> None:
        self._run_handlers(self.on_disconnect_handlers, client_id)

    def _on_message(self, client_id: str, data: dict[str, Any]) -> None:
        self._run_handlers(self.on_message_handlers, client_id, data)

    # -- queries --------------------------------------------------------------------

    def get_stats(self) -> ServerStats:
        """Counters: the original's keys (``total_connections``,
        ``current_connections``, ``events_sent``, ``errors``,
        ``replay_buffer_size``, ``running``) and coda_ws's own."""
        return self.sync.get_stats()

    def get_connected_clients(self) -> list[str]:
        """Ids of the connected clients."""
        return self.sync.get_connected_clients()

    async def wait_for_clients(self, min_clients: int = 1, timeout: float = 30.0) -> bool:
        """Wait until at least ``min_clients`` are connected; False after ``timeout`` seconds.

        Uses no thread: a connecting client wakes the waiting coroutines.
        Cancelling it leaves nothing behind.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.sync.get_connected_clients()) < min_clients:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            waiter: asyncio.Future[None] = loop.create_future()
            entry = (loop, waiter)
            with self._lock:
                self._client_waiters.add(entry)
            try:
                # Registered first, then counted again: a client that connected
                # in between has either been counted or will wake the waiter.
                if len(self.sync.get_connected_clients()) >= min_clients:
                    return True
                await asyncio.wait_for(waiter, remaining)
            except asyncio.TimeoutError:
                pass  # counted once more by the loop condition, then False
            finally:
                with self._lock:
                    self._client_waiters.discard(entry)
        return True

    def _wake_client_waiters(self) -> None:
        with self._lock:
            waiters = list(self._client_waiters)
        for loop, waiter in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits there
                loop.call_soon_threadsafe(_set_if_pending, waiter)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<coda_ws.aio.CodaWebSocketServer {self.host}:{self.port} {state}>"


def _set_if_pending(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)
