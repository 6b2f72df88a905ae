"""CodaEventClient: a Python client for the coda_ws stream, with reconnect and resume.

Theory of operation
-------------------

A client owns up to three threads, all named after it and all joined by
:meth:`CodaEventClient.close`:

* ``coda-ws-eventclient:NAME``, the **connection thread**. It connects (bounded by
  ``connect_timeout``), reads the frames of one connection, handles the control
  frames itself and queues the events for the application. When the
  connection ends it decides, from the close code, whether to reconnect; it
  waits out the backoff on an ``Event`` (so :meth:`~CodaEventClient.close`
  ends the wait at once) and reconnects with ``since=<last_seq>&epoch=<epoch>``.
  It is the only thread that changes the stream position (``last_seq``,
  ``epoch``) and the only one that writes frames of its own to the socket.
* ``coda-ws-eventclient-reader:NAME``, simple-websocket's reader thread for the
  current connection. It parses frames, answers the server's pings and wakes
  the connection thread. Every write, its pongs included, goes through one
  lock, so frames never interleave on the wire (PROTOCOL principle 4).
* ``coda-ws-eventclient-callback:NAME``, only in callback mode
  (:meth:`CodaEventClient.on_event`): takes events from the queue and calls
  the callbacks.

Exactly once, in order
----------------------

Every event the client hands to the application has a higher ``seq`` than the
one before it in the same epoch: anything at or below the highest ``seq``
already queued is dropped, whoever resends it (a resume overlapping a replay,
a server that repeats itself). Across a reconnect the client resumes after
``last_seq``, the position up to which it has everything it asked for; a
``recovered: false`` answer is reported to ``on_gap`` in stream order, before
the events that follow the gap.

The queue and its overflow policy
---------------------------------

Events wait for the application in a queue of at most ``max_queue`` events.
simple-websocket keeps reading whatever the application does, into a list
without a bound, so blocking the connection thread would only move the
backlog there. Instead, when the queue is full the client *pauses*: it closes
the connection (code 1000), waits until the application has drained the
queue to half its size, and reconnects with ``since`` (the event that did not
fit was never accepted, so it comes back). Memory stays bounded and nothing is
lost as long as the server's history still holds the position; if it does
not, ``on_gap`` says so (``too_old``). With ``resume=False`` the events sent
during a pause are lost, as with any other disconnection. The pause is the
client's own flow control, so it reconnects with ``reconnect=False`` too. A
``replay`` frame is queued whole (the server bounds it with
``max_replay_events``). Pauses are counted in ``stats()["pauses"]``.
"""

import collections
import enum
import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, Final, TypedDict, TypeVar, cast, overload

from wsproto.utilities import ProtocolError

from ._transport import ClientTransport, ConnectionClosed, HandshakeError
from ._version import __version__
from .client_core import (
    CONTROL_TYPES,
    FATAL_HTTP_STATUSES,
    NO_STATUS,
    RECONNECT_CLOSE_CODES,
    ClientCore,
    Gap,
    Kind,
    Outcome,
    Session,
)
from .deadline import Deadline
from .errors import ClientConnectionError, HandshakeRejected
from .events import BaseEvent, encode_json
from .filters import EventFilter, TypePatterns
from .protocol import V1_SUBPROTOCOL

__all__ = [
    "RECONNECT_CLOSE_CODES",
    "ClientConnectionError",
    "ClientStats",
    "CodaEventClient",
    "HandshakeRejected",
]

log = logging.getLogger("coda_ws.client")


_CLOSE_NORMAL = 1000

#: What the application gets: the event's dataclass, or a dict for an event
#: of an unknown type, a redacted one, or one that fails validation.
_Delivered = BaseEvent | dict[str, Any]
#: A callback given to :meth:`CodaEventClient.on_event` (returned as it is).
_Callback = TypeVar("_Callback", bound=Callable[[BaseEvent | dict[str, Any]], object])
#: Types to filter on: names and globs, as a list (or set, or tuple) or a comma-separated string.
_Types = TypePatterns | None


class ClientStats(TypedDict):
    """:meth:`CodaEventClient.stats`: the client's counters (a snapshot)."""

    connect_attempts: int
    sessions: int
    events: int
    duplicates_dropped: int
    invalid_events: int
    invalid_frames: int
    gaps: int
    pauses: int
    server_errors: int
    callback_errors: int
    disconnects: dict[str, int]  # reason ("connection_lost", "client_closed" or a close code) -> count
    queued: int  # events waiting for the application


# ----------------------------------------------------------------------------
# The queue between the connection thread and the application.
# ----------------------------------------------------------------------------


class _Signal(enum.Enum):
    """What :meth:`_EventQueue.get` returns instead of an item."""

    TIMEOUT = "timeout"
    END = "end"


_TIMEOUT: Final = _Signal.TIMEOUT
_END: Final = _Signal.END

#: An item of the queue: an event for the application, or a gap marker.
_Item = Gap | BaseEvent | dict[str, Any]


class _EventQueue:
    """A bounded FIFO of events (and gap markers), with an end.

    ``offer`` never blocks: it refuses an event when ``maxsize`` events are
    waiting (the producer then pauses the connection). Gap markers and forced
    offers (replay frames) do not count against the bound. Thread-safe.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.low_water = maxsize // 2
        self._items: collections.deque[_Item] = collections.deque()
        self._events = 0  # items that count against maxsize
        # _cond guards every attribute below and _items/_events above.
        self._cond = threading.Condition(threading.Lock())
        self._ended = False
        self._error: ClientConnectionError | None = None
        self._space_waiters = 0

    def __len__(self) -> int:
        return self._events

    def offer(self, item: _Item, force: bool = False) -> bool:
        """Append ``item``; False (and nothing appended) when the queue is full."""
        with self._cond:
            if self._ended:
                return True  # nobody will read it: accepting keeps the producer simple
            counts = not isinstance(item, Gap)
            if counts and not force and self._events >= self.maxsize:
                return False
            self._items.append(item)
            if counts:
                self._events += 1
            self._cond.notify()
            return True

    def get(self, timeout: float | None) -> _Item | _Signal:
        """The next item, ``_TIMEOUT`` after ``timeout`` seconds (None: no
        limit), or ``_END`` once the queue has ended and is empty. Raises the
        error the queue ended with, after the items queued before it."""
        deadline = Deadline(timeout)
        with self._cond:
            while True:
                if self._items:
                    item = self._items.popleft()
                    if not isinstance(item, Gap):
                        self._events -= 1
                        if self._space_waiters and self._events <= self.low_water:
                            self._cond.notify_all()
                    return item
                if self._ended:
                    if self._error is not None:
                        raise self._error
                    return _END
                remaining = deadline.remaining()
                if deadline.expired:
                    return _TIMEOUT
                self._cond.wait(remaining)

    def wait_for_space(self) -> bool:
        """Block until at most ``low_water`` events wait; False if the queue ended first."""
        with self._cond:
            self._space_waiters += 1
            try:
                while not self._ended and self._events > self.low_water:
                    self._cond.wait()
            finally:
                self._space_waiters -= 1
            return not self._ended

    def end(self, error: ClientConnectionError | None = None, discard: bool = False) -> None:
        """End the queue (idempotent: the first call decides). Readers get the
        queued items first unless ``discard``, then ``_END`` or ``error``."""
        with self._cond:
            if discard:
                self._items.clear()
                self._events = 0
            if not self._ended:
                self._ended = True
                self._error = error
            self._cond.notify_all()

    @property
    def ended(self) -> bool:
        return self._ended


# ----------------------------------------------------------------------------
# The client.
# ----------------------------------------------------------------------------


class CodaEventClient(ClientCore):
    """A v1 client for the coda_ws event stream, with reconnect and resume.

    Connects at once, in a background thread, and keeps the stream going until
    :meth:`close`. Read the events either by iterating (``for event in
    client``, blocking), with :meth:`get` (blocking, with a timeout), or by
    registering callbacks with :meth:`on_event`, which run in a thread of the
    client. Use one of these per client: the callback thread and a reader
    would split the stream between them.

    Events come as the dataclasses of :mod:`coda_ws.events`
    (``event.to_dict()`` gives the wire form). Events of a type this version
    does not know, redacted events (content fields set to null), and events
    that fail validation (logged on ``coda_ws.client``) come as plain dicts.
    Control frames (``hello``, ``resume``, ``replay``, ``pong``, ``subscribed``,
    ``error``) are handled by the client; a ``replay`` frame is unpacked into
    its events.

    Every event is delivered at most once, in ``seq`` order (see the module
    notes). After a disconnection the client reconnects with exponential
    backoff and jitter and resumes after ``last_seq``; when the server cannot
    recover the position it calls ``on_gap(frame)`` with the ``resume`` frame
    (``reason``: ``epoch_changed``, ``too_old``, ``unknown_position`` or
    ``lost``, the last with ``"lost": [first, last]``, the seqs a crashed
    journaled server could not keep), in the thread that consumes events,
    just before the events that follow the gap.

    Close codes: 1001, 1011, 1012, 1013 and 4008, or a connection that ends
    without a close frame, reconnect (``reconnect=True``). 1000 from the server
    ends the stream once the queued events are consumed; 1002, 1003, 1007,
    1008, 1009 and 1010 end it with :class:`ClientConnectionError`. An HTTP
    refusal of the handshake (400, 401, 403, 404...) ends it with
    :class:`HandshakeRejected`; 503 and network errors are retried.

    Args:
        url: ``ws://host:port/path`` (``wss://``, and ``http(s)://`` for the same
            address, work too). Query parameters of the URL are kept.
        types: event types or globs to receive (a list, or a comma-separated
            string); None for all.
        session_id: only events of this session (and those of no session).
        token: sent as ``Authorization: Bearer TOKEN``.
        resume: reconnect with ``since``/``epoch`` (True) or afresh (False).
        reconnect: reconnect after a lost connection (see close codes above).
        on_gap: ``callable(frame_dict)`` for ``recovered: false``.
        since: start by resuming after this position of the server's stream
            (default: start at the live head, after the replay frame).
        replay: ask for the replay frame (recent high-priority events) on a
            fresh start and after a gap.
        max_queue: events that may wait for the application (default 10 000);
            see "The queue and its overflow policy" in the module notes.
        connect_timeout: seconds for the TCP connect and the handshake.
        close_timeout: seconds :meth:`close` waits for the server to answer
            the close frame before cutting the connection.
        backoff_initial: seconds before the first reconnect attempt.
        backoff_max: upper bound of the delay between attempts, in seconds.
        backoff_factor: the delay grows by this factor after every failed attempt.
        backoff_jitter: fraction of the delay chosen at random (0: none, 1:
            anywhere from 0 to the delay), so many clients do not reconnect
            in lockstep.
        max_retries: consecutive failed attempts before giving up with
            :class:`ClientConnectionError` (None: never give up).
        retry_first_connect: when False, a failure of the very first attempt
            ends the client at once (command-line tools use this to report a
            wrong address instead of waiting).
        ping_interval: seconds between the client's keepalive pings, which
            detect a server that vanished without closing: a pong must come
            back within one interval, or the client reconnects (None: off).
        max_message_size: largest frame accepted from the server, in bytes.
        name: names the client's threads (default ``host:port``).
        ssl_context: for ``wss://`` URLs (default: the system's defaults).

    Raises:
        ValueError, TypeError: a malformed URL, filter or option.

    Thread safety: every public method may be called from any thread. The
    position attributes (``last_seq``, ``epoch``, ``recovered``) are written by
    the connection thread only; reading them from another thread gives a
    recent value.
    """

    _queue: "_EventQueue"

    def _setup(self, max_queue: int) -> None:
        self._queue = _EventQueue(max_queue)
        self._stop = threading.Event()  # set by close(); ends backoff waits
        # _lock guards everything below; _changed is notified when
        # connected/finished, pongs or subscribe acknowledgements change.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._error: ClientConnectionError | None = None
        self._last_error: BaseException | None = None
        self._raw: socket.socket | None = None  # the socket of the connection being made or used
        self._ws: ClientTransport | None = None  # the open WebSocket, once the handshake is done
        self._wake: threading.Event | None = None  # the current connection's wake-up event
        self._outbox: collections.deque[str] = collections.deque()  # frames for the connection thread to send
        self._pongs: dict[int, dict[str, Any] | None] = {}  # ping id -> pong frame (None while awaited)
        self._callbacks: list[Callable[[_Delivered], object]] = []
        self._callback_thread: threading.Thread | None = None

        # daemon: a script that forgets close() can still exit; close() joins it.
        self._thread = threading.Thread(
            target=self._run, name=f"coda-ws-eventclient:{self.name}", daemon=True
        )
        self._thread.start()

    # -- configuration ----------------------------------------------------------

    def _next_target(self, since: int | None, epoch: str | None) -> tuple[str, int]:
        """The request target for the next connection, and the version of the filters it carries."""
        with self._lock:
            types, session_id, version = self._types, self._session_id, self._filter_version
        return self._target(since, epoch, types, session_id), version

    # -- public state -----------------------------------------------------------

    @property
    def error(self) -> ClientConnectionError | None:
        """The error the stream ended with (:class:`HandshakeRejected` for a
        refused handshake), or None."""
        return self._error

    @property
    def last_error(self) -> BaseException | None:
        """The last connection error (even one that was retried), or None."""
        return self._last_error

    def stats(self) -> ClientStats:
        """Counters (a snapshot dict): ``connect_attempts``, ``sessions``,
        ``events``, ``duplicates_dropped``, ``invalid_events``,
        ``invalid_frames``, ``gaps``, ``pauses``, ``server_errors``,
        ``callback_errors``, ``disconnects`` (by reason) and ``queued``."""
        with self._lock:
            counters = dict(self._counters)
        disconnects = {k[len("disconnect:") :]: v for k, v in counters.items() if k.startswith("disconnect:")}
        count = counters.get
        return ClientStats(
            connect_attempts=count("connect_attempts", 0),
            sessions=count("sessions", 0),
            events=count("events", 0),
            duplicates_dropped=count("duplicates_dropped", 0),
            invalid_events=count("invalid_events", 0),
            invalid_frames=count("invalid_frames", 0),
            gaps=count("gaps", 0),
            pauses=count("pauses", 0),
            server_errors=count("server_errors", 0),
            callback_errors=count("callback_errors", 0),
            disconnects=disconnects,
            queued=len(self._queue),
        )

    def _count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[name] += amount

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Block until a session is open; True then, False after ``timeout``
        seconds or as soon as the client has ended (``stats()["sessions"]``
        tells whether a session was open before that)."""
        deadline = Deadline(timeout)
        with self._changed:
            while not self._connected:
                if self._finished or self._closing:
                    return False
                remaining = deadline.remaining()
                if deadline.expired:
                    return False
                self._changed.wait(remaining)
            return True

    # -- reading ------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> BaseEvent | dict[str, Any] | None:
        """The next event, blocking up to ``timeout`` seconds (None: no limit).

        Returns None on timeout and once the stream has ended (check
        :attr:`closed`). Raises :class:`ClientConnectionError` (or
        :class:`HandshakeRejected`) when the stream ended with an error, after
        the events received before it. Calls ``on_gap`` for a gap in the
        stream, in this thread. Thread-safe: concurrent callers each get
        different events.

        Raises:
            RuntimeError: callbacks are registered with :meth:`on_event`.
        """
        if self._callbacks:
            raise RuntimeError(
                "this client delivers its events to on_event callbacks; do not also call get()"
            )
        item = self._next(timeout)
        return None if item is _TIMEOUT or item is _END else item

    def _next(self, timeout: float | None) -> _Delivered | _Signal:
        deadline = Deadline(timeout)
        while True:
            remaining = deadline.remaining()
            item = self._queue.get(remaining)
            if not isinstance(item, Gap):
                return item
            self._call_on_gap(item.frame)

    def _call_on_gap(self, frame: dict[str, Any]) -> None:
        if self.on_gap is None:
            log.warning(
                "%s: events were missed (%s); pass on_gap= to handle it", self.name, frame.get("reason")
            )
            return
        try:
            self.on_gap(frame)
        except Exception:
            log.exception("%s: on_gap callback %r failed", self.name, self.on_gap)

    def __iter__(self) -> "CodaEventClient":
        return self

    def __next__(self) -> BaseEvent | dict[str, Any]:
        event = self.get()
        if event is None:
            raise StopIteration
        return event

    def on_event(self, callback: _Callback) -> _Callback:
        """Call ``callback(event)`` for every event, in a thread of the client.

        Callbacks run one after another in the order registered, in the
        thread ``coda-ws-eventclient-callback:NAME`` (started by the first call,
        joined by :meth:`close`). An exception is logged with its traceback,
        counted in ``stats()["callback_errors"]``, and does not stop delivery.
        A slow callback holds up the stream for this client only (the queue
        policy applies). Returns ``callback``, so this works as a decorator.
        """
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        with self._lock:
            if self._closing:
                raise RuntimeError("the client is closed")
            self._callbacks = self._callbacks + [callback]
            start = self._callback_thread is None
            if start:
                # daemon, as the connection thread; close() joins it.
                self._callback_thread = callback_thread = threading.Thread(
                    target=self._run_callbacks, name=f"coda-ws-eventclient-callback:{self.name}", daemon=True
                )
        if start:
            callback_thread.start()
        return callback

    def _run_callbacks(self) -> None:
        while True:
            try:
                item = self._next(None)
            except ClientConnectionError as exc:
                log.error("%s: the event stream ended: %s", self.name, exc)
                return
            if isinstance(item, _Signal):  # _END (without a timeout there is no _TIMEOUT)
                return
            for callback in self._callbacks:
                try:
                    callback(item)
                except Exception:
                    self._count("callback_errors")
                    log.exception("%s: event callback %r failed", self.name, callback)

    # -- requests to the server -----------------------------------------------------

    def subscribe(
        self, types: _Types = None, session_id: str | None = None, timeout: float | None = None
    ) -> dict[str, Any] | None:
        """Replace the client's filters (the server answers ``subscribed``).

        The new filters apply to the current connection from the server's next
        read on, and to every later connection. Non-blocking unless
        ``timeout`` is given: then waits up to that many seconds for the
        server's acknowledgement and returns it (a dict), or None.

        Raises:
            ValueError, TypeError: a malformed filter.
        """
        event_filter = EventFilter(types, session_id)
        frame = self._subscribe_frame(event_filter.types, session_id)
        with self._lock:
            self._types, self._session_id = event_filter.types, session_id
            self._filter_version += 1
            target = self._subscribed_acks + 1
            wake = self._wake if self._connected else None
            if wake is not None:
                self._outbox.append(frame)
        if wake is None:
            return None
        wake.set()
        if timeout is None:
            return None
        deadline = Deadline(timeout)
        with self._changed:
            while self._subscribed_acks < target:
                remaining = deadline.left()
                if deadline.expired or not self._connected:
                    return None
                self._changed.wait(remaining)
            return self._last_subscribed

    @overload
    def ping(self, timeout: None = None) -> int | None: ...
    @overload
    def ping(self, timeout: float) -> dict[str, Any] | None: ...
    def ping(self, timeout: float | None = None) -> int | dict[str, Any] | None:
        """Send an application-level ping; the server answers with ``pong``.

        Without ``timeout``, returns the ping's id at once (None when not
        connected). With ``timeout``, waits up to that many seconds and
        returns the ``pong`` frame (a dict with the server's last ``seq``), or
        None.
        """
        with self._lock:
            wake = self._wake if self._connected else None
            if wake is None:
                return None
            self._ping_id += 1
            ping_id = self._ping_id
            if timeout is not None:
                self._pongs[ping_id] = None
            self._outbox.append(encode_json({"type": "ping", "id": ping_id}))
        wake.set()
        if timeout is None:
            return ping_id
        deadline = Deadline(timeout)
        with self._changed:
            try:
                while self._pongs.get(ping_id) is None:
                    remaining = deadline.left()
                    if deadline.expired:
                        return None
                    self._changed.wait(remaining)
                return self._pongs[ping_id]
            finally:
                self._pongs.pop(ping_id, None)

    def reconnect(self) -> bool:
        """Drop the current connection at once, as a network failure would.

        The client reconnects and resumes as after any lost connection (with
        ``reconnect=False``, the stream ends). Returns False when no
        connection was open or being made. Thread-safe.
        """
        with self._lock:
            raw = self._raw
        if raw is None:
            return False
        try:
            raw.shutdown(socket.SHUT_RDWR)
        except OSError:  # not connected yet or already gone: the connection thread notices either way
            return False
        return True

    # -- closing ------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> bool:
        """Close the connection (code 1000), stop reconnecting, join every thread.

        Idempotent; ends iteration at once (events still queued are
        discarded). Waits at most ``timeout`` seconds; returns True when every
        thread of the client has ended. May be called from a callback.
        """
        deadline = Deadline(timeout)
        with self._lock:
            self._closing = True
            wake, ws, raw = self._wake, self._ws, self._raw
            callback_thread = self._callback_thread
            self._changed.notify_all()
        self._stop.set()
        self._queue.end(discard=True)
        if wake is not None:
            wake.set()
        if ws is None and raw is not None:
            self._shutdown(raw)  # a handshake in progress: abort it
        current = threading.current_thread()
        if self._thread is not current:
            self._thread.join(deadline.left())
            if self._thread.is_alive():
                with self._lock:
                    raw = self._raw
                if raw is not None:
                    self._shutdown(raw)
                self._thread.join(deadline.left())
        if callback_thread is not None and callback_thread is not current:
            callback_thread.join(deadline.left())
        alive = [
            t for t in (self._thread, callback_thread) if t is not None and t is not current and t.is_alive()
        ]
        if alive:
            log.warning(
                "%s: close() timed out with threads still running: %s",
                self.name,
                ", ".join(t.name for t in alive),
            )
        return not alive

    @staticmethod
    def _shutdown(raw: socket.socket) -> None:
        try:
            raw.shutdown(socket.SHUT_RDWR)
        except OSError:  # not connected, or already shut down: nothing left to end
            return

    def __enter__(self) -> "CodaEventClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "connected" if self._connected else "connecting"
        return f"<CodaEventClient {self.url} {state} epoch={self._epoch} last_seq={self._last_seq}>"

    # -- the connection thread ---------------------------------------------------------

    def _run(self) -> None:
        # Long: the reconnect loop (connect, session, classify the ending, back off) shares its
        # counters between those steps
        failures = 0  # consecutive attempts that did not open a session (for max_retries)
        retries = 0  # delays waited since the last session opened (for the backoff)
        attempts = 0
        delay: float | None = None
        try:
            while not self._stop.is_set():
                if delay is not None and self._stop.wait(delay):
                    break
                attempts += 1
                outcome = self._connection()
                if outcome.close_code is not None:
                    self._close_code = outcome.close_code
                if outcome.error is not None:
                    with self._lock:
                        self._last_error = outcome.error
                if outcome.kind == "stopped":
                    break
                if outcome.kind == "paused":
                    if not self._queue.wait_for_space():
                        break
                    delay = None
                    continue
                if outcome.kind == "end":
                    self._finish(None)
                    break
                if outcome.kind == "fatal":
                    # Always a ClientConnectionError already (a refusal, a bad close code): passed on as it is.
                    self._finish(self._connection_error(outcome.error))
                    break
                # "retry"
                if outcome.established:
                    failures = retries = 0
                else:
                    failures += 1
                if not self.auto_reconnect:
                    self._finish(None if outcome.established else self._connection_error(outcome.error))
                    break
                if attempts == 1 and not outcome.established and not self.retry_first_connect:
                    self._finish(self._connection_error(outcome.error))
                    break
                if self.max_retries is not None and failures > self.max_retries:
                    self._finish(self._connection_error(outcome.error, f"gave up after {failures} attempts"))
                    break
                delay = self._backoff(retries)
                retries += 1
                self._log_retry(failures, outcome.error, delay)
        except Exception as exc:  # a bug here must not leave the application waiting forever
            log.exception("%s: the connection thread failed", self.name)
            self._finish(ClientConnectionError(f"internal error in the client: {exc!r}"))
        finally:
            with self._lock:
                self._finished = True
                self._connected = False
                self._changed.notify_all()
            self._queue.end()

    def _finish(self, error: ClientConnectionError | None) -> None:
        with self._lock:
            self._error = error
        self._queue.end(error=error)

    def _connection(self) -> Outcome:
        """One connection, from connect to close. Returns an Outcome."""
        since, epoch = self._resume_point()
        target, filter_version = self._next_target(since, epoch)
        wake = threading.Event()
        with self._lock:
            if self._closing:
                return Outcome("stopped")
            self._wake = wake
            self._outbox.clear()  # meant for the previous connection; the URL carries the filters
            self._counters["connect_attempts"] += 1
        headers = [("User-Agent", f"coda-ws-client/{__version__} (python)")]
        if self._token is not None:
            headers.append(("Authorization", f"Bearer {self._token}"))
        try:
            ws = ClientTransport(
                self._host,
                self._port,
                target,
                secure=self._secure,
                subprotocols=[V1_SUBPROTOCOL],
                headers=headers,
                timeout=self.connect_timeout,
                on_socket=self._on_socket,
                on_reader_done=wake.set,
                reader_name=f"coda-ws-eventclient-reader:{self.name}",
                wake=wake,
                ping_interval=self.ping_interval,
                max_message_size=self.max_message_size,
                ssl_context=self._ssl_context,
            )
        except HandshakeRejected as exc:
            self._forget_socket()
            kind: Kind = "fatal" if exc.status in FATAL_HTTP_STATUSES else "retry"
            # A fatal refusal reaches the application (raised by iteration, logged by the callback
            # thread): logging it here as an error too would say it twice.
            log.info("%s: %s", self.name, exc)
            return Outcome("stopped" if self._stop.is_set() else kind, error=exc)
        except (
            ssl.SSLCertVerificationError,
            UnicodeError,
        ) as exc:  # a bad certificate or host name stays bad
            self._forget_socket()
            error = ClientConnectionError(f"cannot connect to {self.url}: {exc}")
            log.error("%s: %s", self.name, error)
            return Outcome("stopped" if self._stop.is_set() else "fatal", error=error)
        except (OSError, HandshakeError, ProtocolError) as exc:
            self._forget_socket()
            return Outcome("stopped" if self._stop.is_set() else "retry", error=exc)
        with self._lock:
            self._ws = ws
        session = Session(since, epoch, filter_version)
        outcome: Outcome | None = None
        try:
            outcome = self._read(ws, wake, session)
        finally:
            self._end_connection(ws, outcome, session)
        return outcome

    def _on_socket(self, raw: socket.socket) -> None:
        with self._lock:
            if self._closing:
                raise ConnectionAbortedError("the client was closed")
            self._raw = raw

    def _forget_socket(self) -> None:
        with self._lock:
            self._raw = None

    def _read(self, ws: ClientTransport, wake: threading.Event, session: Session) -> Outcome:
        """Handle the frames of one connection until it ends, pauses or stops."""
        while True:
            wake.clear()  # clear first, then look at every source of work
            if self._stop.is_set():
                return Outcome("stopped", session.started, close_code=_CLOSE_NORMAL)
            if not self._send_outbox(ws):
                # The connection is broken: make sure the reader ends too; its
                # end (and the close code, if any) is handled below.
                self._shutdown(ws.raw_socket)
            connected = ws.connected  # read first: what the reader appended before it ended is taken below
            for message in ws.take_messages():
                if not self._handle_message(session, message):
                    return Outcome("paused", session.started, close_code=_CLOSE_NORMAL)
            if not connected:
                for message in ws.take_messages():  # appended just before the reader ended
                    if not self._handle_message(session, message):
                        return Outcome("paused", session.started, close_code=_CLOSE_NORMAL)
                return self._closed_outcome(ws, session)
            wake.wait()

    def _send_outbox(self, ws: ClientTransport) -> bool:
        while True:
            with self._lock:
                if not self._outbox:
                    return True
                frame = self._outbox.popleft()
            try:
                ws.send(frame)
            except (OSError, ConnectionClosed, ProtocolError) as exc:
                log.debug("%s: could not send a frame: %s", self.name, exc)
                return False

    def _closed_outcome(self, ws: ClientTransport, session: Session) -> Outcome:
        if ws.message_too_big(self.max_message_size):
            error = ClientConnectionError(
                f"the server sent a message larger than max_message_size ({self.max_message_size} bytes)"
            )
            return Outcome("fatal", session.started, error, close_code=1009)
        code, reason = ws.peer_close()
        return self._close_outcome(code, reason, session)

    def _end_connection(self, ws: ClientTransport, outcome: Outcome | None, session: Session) -> None:
        """Close the WebSocket politely when we end it, cut it, join its reader."""
        if outcome is not None and outcome.kind in ("stopped", "paused"):
            self._count("pauses" if outcome.kind == "paused" else "disconnect:client_closed")
            self._send_close(ws, _CLOSE_NORMAL)
            ws.join_reader(self.close_timeout)  # the server answers and ends the connection
        elif ws.remote_closing():
            # Answer the server's close frame with its code (1005 may not be sent: say 1000).
            code = ws.peer_close()[0]
            self._send_close(ws, _CLOSE_NORMAL if code in NO_STATUS else code)
        self._shutdown(ws.raw_socket)
        if not ws.join_reader(
            self.close_timeout + 1.0
        ):  # cannot happen after shutdown unless the OS misbehaves
            log.warning("%s: the reader thread did not end after shutdown", self.name)
        else:
            ws.raw_socket.close()
        with self._lock:
            self._ws = self._raw = None
            self._wake = None
            was_connected, self._connected = self._connected, False
            self._outbox.clear()
            self._changed.notify_all()
        if was_connected:
            log.info("%s: disconnected (%s)", self.name, outcome.kind if outcome else "error")

    def _send_close(self, ws: ClientTransport, code: int) -> None:
        try:
            ws.send_close(code)
        except (OSError, ProtocolError) as exc:  # the connection is already gone: nothing to tell it
            log.debug("%s: could not send the close frame: %s", self.name, exc)

    # -- frames ---------------------------------------------------------------------

    def _handle_message(self, session: Session, message: str | bytes) -> bool:
        """Handle one frame; False when the queue is full (the caller pauses)."""
        if not isinstance(message, str):
            self._count("invalid_frames")
            log.warning("%s: ignoring a binary frame of %d bytes", self.name, len(message))
            return True
        try:
            data = json.loads(message)
        except (ValueError, RecursionError) as exc:
            self._count("invalid_frames")
            log.warning("%s: ignoring a frame that is not JSON (%s): %.200s", self.name, exc, message)
            return True
        if not isinstance(data, dict):
            self._count("invalid_frames")
            log.warning("%s: ignoring a frame that is not a JSON object: %.200s", self.name, message)
            return True
        kind = data.get("type")
        if not session.started and kind != "hello":
            log.info("%s: the server sent no hello (a legacy server?): resume is not available", self.name)
            self._session_started(session)
        if kind in CONTROL_TYPES:
            getattr(self, f"_on_{kind}")(session, data)
            return True
        return self._accept_event(session, data)

    def _session_started(self, session: Session) -> None:
        session.started = True
        with self._lock:
            self._connected = True
            self._counters["sessions"] += 1
            if self._filter_version != session.filter_version:
                # subscribe() was called after this connection's URL was made
                # and before it opened: send the filters it did not carry.
                self._outbox.append(self._subscribe_frame(self._types, self._session_id))
                cast(threading.Event, self._wake).set()  # set: a connection is being read
            self._changed.notify_all()

    def _on_hello(self, session: Session, frame: dict[str, Any]) -> None:
        self._read_hello(session, frame)
        if not session.started:
            self._session_started(session)

    def _on_pong(self, session: Session, frame: dict[str, Any]) -> None:
        ping_id = frame.get("id")
        if type(ping_id) is not int:  # not an answer to our ping (ours are ints); a list would not even hash
            return
        with self._lock:
            if ping_id in self._pongs:
                self._pongs[ping_id] = frame
                self._changed.notify_all()

    def _on_subscribed(self, session: Session, frame: dict[str, Any]) -> None:
        with self._lock:
            self._subscribed_acks += 1
            self._last_subscribed = frame
            self._changed.notify_all()
