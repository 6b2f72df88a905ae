"""AsyncCodaEventClient: the coda_ws stream for asyncio code, with reconnect and resume.

The asyncio twin of :class:`coda_ws.client.CodaEventClient`, with the same
guarantees and the same options, built on the ``websockets`` asyncio client
(``pip install 'coda-ws[aio]'``)::

    async with AsyncCodaEventClient("ws://localhost:8765", types="llm_*") as client:
        async for event in client:
            ...

Theory of operation
-------------------

A client owns one task, ``coda-ws-eventclient:NAME`` on the loop that first
uses it, and no thread. The task connects (bounded by ``connect_timeout``),
reads the frames of one connection, handles the control frames itself and
queues the events for the application; when the connection ends it decides,
from the close code, whether to reconnect, waits out the backoff (which
:meth:`AsyncCodaEventClient.close` ends at once) and reconnects with
``since=<last_seq>&epoch=<epoch>``. It is the only code that changes the
stream position (``last_seq``, ``epoch``). The application reads with
``async for`` or :meth:`~AsyncCodaEventClient.get`; ``on_gap`` runs in the
reading task.

Exactly once, in order
----------------------

Every event handed to the application has a higher ``seq`` than the one
before it in the same epoch: anything at or below the highest ``seq`` already
queued is dropped, whoever resends it (a resume overlapping a replay, a server
that repeats itself). Across a reconnect the client resumes after
``last_seq``, the position up to which it has everything it asked for; a
``recovered: false`` answer is reported to ``on_gap`` in stream order, before
the events that follow the gap.

The queue and its overflow policy
---------------------------------

Events wait for the application in a queue of at most ``max_queue`` events.
When it is full the client *pauses*: it closes the connection (code 1000),
waits until the application has drained the queue to half its size, and
reconnects with ``since`` (the event that did not fit was never accepted, so
it comes back). Memory stays bounded and nothing is lost while the server's
history still holds the position; if it does not, ``on_gap`` says so
(``too_old``). A ``replay`` frame is queued whole (the server bounds it).
Pauses are counted in ``stats()["pauses"]``. This is the synchronous
client's policy, kept so both behave alike (the server would otherwise close
a client that stops reading with 4008, and it would resume the same way).
"""

import asyncio
import collections
import contextlib
import inspect
import json
import logging
import ssl
from collections.abc import Callable
from typing import Any

try:
    from websockets.asyncio.client import connect as _ws_connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "coda_ws.aio.AsyncCodaEventClient needs the 'websockets' package, version 13 or newer "
        "(its asyncio client): pip install 'coda-ws[aio]'"
    ) from _exc

from .._version import __version__
from ..client_core import (
    FATAL_HTTP_STATUSES,
    ClientCore,
    Gap,
    Kind,
    Outcome,
    Session,
    handshake_rejection,
)
from ..errors import ClientConnectionError, HandshakeRejected
from ..events import encode_json
from ..filters import EventFilter, TypePatterns
from ..protocol import CLOSE_NORMAL, CLOSE_TOO_BIG, V1_SUBPROTOCOL

__all__ = ["AsyncCodaEventClient", "ClientConnectionError", "HandshakeRejected"]

log = logging.getLogger("coda_ws.aio.client")

_CLOSE_NORMAL = CLOSE_NORMAL
_CLOSE_TOO_BIG = CLOSE_TOO_BIG
#: websockets 15 added HTTP proxies, used by default; like the synchronous
#: client, this one connects directly.
_NO_PROXY = {"proxy": None} if "proxy" in inspect.signature(_ws_connect.__init__).parameters else {}
_TIMEOUTS = (asyncio.TimeoutError, TimeoutError)  # distinct classes before Python 3.11

OnGap = Callable[[dict[str, Any]], Any]


_TIMEOUT = object()
_END = object()


class _AsyncEventQueue:
    """A bounded FIFO of events (and gap markers), with an end; one event loop only.

    ``offer`` never waits: it refuses an event when ``maxsize`` events are
    waiting (the connection task then pauses). Gap markers and forced offers
    (replay frames) do not count against the bound. Items leave the queue
    only in :meth:`get` after its wait, so a cancelled ``get`` loses nothing.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.low_water = maxsize // 2
        self._items: collections.deque[Any] = collections.deque()
        self._events = 0  # items that count against maxsize
        self._ended = False
        self._error: BaseException | None = None
        self._waiters: list[asyncio.Future[None]] = []  # getters and space waiters, all woken on a change

    def __len__(self) -> int:
        return self._events

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self, timeout: float | None) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except _TIMEOUTS:
            pass
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def offer(self, item: Any, force: bool = False) -> bool:
        """Append ``item``; False (and nothing appended) when the queue is full."""
        if self._ended:
            return True  # nobody will read it: accepting keeps the producer simple
        counts = not isinstance(item, Gap)
        if counts and not force and self._events >= self.maxsize:
            return False
        self._items.append(item)
        if counts:
            self._events += 1
        self._wake()
        return True

    async def get(self, timeout: float | None) -> Any:
        """The next item, ``_TIMEOUT`` after ``timeout`` seconds (None: no
        limit), or ``_END`` once the queue has ended and is empty. Raises the
        error the queue ended with, after the items queued before it."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self._items:
                item = self._items.popleft()
                if not isinstance(item, Gap):
                    self._events -= 1
                    if self._events <= self.low_water:
                        self._wake()  # a paused connection may go on
                return item
            if self._ended:
                if self._error is not None:
                    raise self._error
                return _END
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return _TIMEOUT
            await self._wait(remaining)

    async def wait_for_space(self) -> bool:
        """Wait until at most ``low_water`` events wait; False if the queue ended first."""
        while not self._ended and self._events > self.low_water:
            await self._wait(None)
        return not self._ended

    def end(self, error: BaseException | None = None, discard: bool = False) -> None:
        """End the queue (idempotent: the first call decides). Readers get the
        queued items first unless ``discard``, then ``_END`` or ``error``."""
        if discard:
            self._items.clear()
            self._events = 0
        if not self._ended:
            self._ended = True
            self._error = error
        self._wake()


class AsyncCodaEventClient(ClientCore):
    """A v1 client for the coda_ws event stream, for asyncio, with reconnect and resume.

    Read the events with ``async for event in client`` or ``await
    client.get(timeout)``. The client starts connecting when it is made
    inside a running event loop, otherwise on first use (``async with``,
    iteration, :meth:`get`, :meth:`wait_connected`), and belongs to that loop
    from then on. Close it with :meth:`close` (or ``async with``).

    Events come as the dataclasses of :mod:`coda_ws.events` (``to_dict()``
    gives the wire form); events of an unknown type, redacted events and
    events that fail validation come as plain dicts. Control frames
    (``hello``, ``resume``, ``replay``, ``pong``, ``subscribed``, ``error``) are
    handled by the client; a ``replay`` frame is unpacked into its events.

    Guarantees and policies are those of :class:`coda_ws.client.CodaEventClient`
    (see the module notes): every event at most once, in ``seq`` order;
    reconnect with exponential backoff and jitter; resume after ``last_seq``
    of ``epoch``; ``on_gap(frame)`` (a function or a coroutine function) for
    ``recovered: false``, in the reading task just before the events that
    follow the gap; a bounded queue that pauses the connection instead of
    growing. Close codes: 1001, 1011, 1012, 1013 and 4008, or a connection
    that ends without a close frame, reconnect (``reconnect=True``); 1000 from
    the server ends the stream once the queued events are consumed; 1002,
    1003, 1007, 1008, 1009 and 1010 end it with :class:`ClientConnectionError`.
    An HTTP refusal of the handshake (400, 401, 403, 404...) ends it with
    :class:`HandshakeRejected`; 503 and network errors are retried.

    Args: as :class:`coda_ws.client.CodaEventClient`: ``url``, ``types``,
    ``session_id``, ``token``, ``resume``, ``reconnect``, ``on_gap``, and the
    keyword options ``since``, ``replay``, ``max_queue``, ``connect_timeout``
    (TCP, TLS and handshake), ``close_timeout``, ``backoff_initial``,
    ``backoff_max``, ``backoff_factor``, ``backoff_jitter``, ``max_retries``,
    ``retry_first_connect``, ``ping_interval`` (keepalive: a pong must come
    back within one interval, or the client reconnects; None: off),
    ``max_message_size`` (bytes, None: no limit), ``name``, ``ssl_context``.
    All durations are in seconds. Like the synchronous client it connects
    directly (no HTTP proxy) and offers no compression.

    Raises:
        ValueError, TypeError: a malformed URL, filter or option (at once).

    Not thread-safe: use it from the event loop it belongs to.
    """

    _queue: "_AsyncEventQueue"
    _log = log

    def _setup(self, max_queue: int) -> None:
        self._queue = _AsyncEventQueue(max_queue)
        self._error: BaseException | None = None
        self._last_error: BaseException | None = None
        self._ws: Any = None  # the open connection (websockets ClientConnection)
        self._pongs: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._changed: asyncio.Future[None] | None = None  # resolved when state changes (see _notify)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None  # set by close(); ends backoff waits
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # started on first use, inside a loop
        self._ensure_started()

    # -- life cycle -------------------------------------------------------------

    def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._stop = asyncio.Event()
            if not self._closing:
                self._task = loop.create_task(self._run(), name=f"coda-ws-eventclient:{self.name}")
        elif self._loop is not loop:
            raise RuntimeError("this AsyncCodaEventClient belongs to another event loop")

    def _notify(self) -> None:
        """Wake every coroutine waiting for a change of state."""
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)

    async def _wait_change(self, deadline: float | None) -> bool:
        """Wait for the next change of state; False once ``deadline`` (loop time) passed."""
        loop = asyncio.get_running_loop()
        remaining = None if deadline is None else deadline - loop.time()
        if remaining is not None and remaining <= 0:
            return False
        if self._changed is None:
            self._changed = loop.create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._changed), remaining)
        except _TIMEOUTS:
            return False
        return True

    async def __aenter__(self) -> "AsyncCodaEventClient":
        self._ensure_started()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def close(self, timeout: float = 5.0) -> bool:
        """Close the connection (code 1000), stop reconnecting and end the connection task.

        Idempotent; ends iteration at once (events still queued are
        discarded). Waits at most ``timeout`` seconds; returns True when the
        client's task has ended.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._closing = True
        if self._stop is not None:
            self._stop.set()
        self._queue.end(discard=True)
        self._notify()
        task = self._task
        if task is None or task.done():
            return True
        if task is asyncio.current_task():
            return False
        ws = self._ws
        if ws is not None:
            try:
                # Politely: the server answers, the reading task sees the end.
                await asyncio.wait_for(ws.close(_CLOSE_NORMAL), max(0.0, deadline - loop.time()))
            except _TIMEOUTS:
                pass
            except Exception as exc:  # already gone: the task notices either way
                log.debug("%s: close frame not sent: %s", self.name, exc)
        else:
            task.cancel()  # connecting, or waiting between attempts
        await asyncio.wait({task}, timeout=max(0.0, deadline - loop.time()))
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=max(0.0, min(self.close_timeout, deadline - loop.time())))
        if not task.done():
            log.warning("%s: close() timed out with the connection task still running", self.name)
        return task.done()

    # -- public state -----------------------------------------------------------

    @property
    def error(self) -> BaseException | None:
        """The error the stream ended with, or None."""
        return self._error

    @property
    def last_error(self) -> BaseException | None:
        """The last connection error (even one that was retried), or None."""
        return self._last_error

    def stats(self) -> dict[str, Any]:
        """Counters (a snapshot dict): ``connect_attempts``, ``sessions``,
        ``events``, ``duplicates_dropped``, ``invalid_events``,
        ``invalid_frames``, ``gaps``, ``pauses``, ``server_errors``,
        ``disconnects`` (by reason) and ``queued``."""
        counters = dict(self._counters)
        result: dict[str, Any] = {
            key: counters.get(key, 0)
            for key in (
                "connect_attempts",
                "sessions",
                "events",
                "duplicates_dropped",
                "invalid_events",
                "invalid_frames",
                "gaps",
                "pauses",
                "server_errors",
            )
        }
        result["disconnects"] = {
            k[len("disconnect:") :]: v for k, v in counters.items() if k.startswith("disconnect:")
        }
        result["queued"] = len(self._queue)
        return result

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until a session is open; True then, False after ``timeout``
        seconds or as soon as the client has ended."""
        self._ensure_started()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._connected:
            if self._finished or self._closing:
                return False
            if not await self._wait_change(deadline):
                return self._connected
        return True

    # -- reading ------------------------------------------------------------------

    async def get(self, timeout: float | None = None) -> Any:
        """The next event, waiting up to ``timeout`` seconds (None: no limit).

        Returns None on timeout and once the stream has ended (check
        :attr:`closed`). Raises :class:`ClientConnectionError` (or
        :class:`HandshakeRejected`) when the stream ended with an error, after
        the events received before it. Calls (and awaits) ``on_gap`` for a gap
        in the stream first. Cancelling it loses no event.
        """
        self._ensure_started()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            item = await self._queue.get(remaining)
            if isinstance(item, Gap):
                await self._call_on_gap(item.frame)
                continue
            return None if item is _TIMEOUT or item is _END else item

    async def _call_on_gap(self, frame: dict[str, Any]) -> None:
        if self.on_gap is None:
            log.warning(
                "%s: events were missed (%s); pass on_gap= to handle it", self.name, frame.get("reason")
            )
            return
        try:
            result = self.on_gap(frame)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("%s: on_gap callback %r failed", self.name, self.on_gap)

    def __aiter__(self) -> "AsyncCodaEventClient":
        return self

    async def __anext__(self) -> Any:
        event = await self.get()
        if event is None:
            raise StopAsyncIteration
        return event

    # -- requests to the server -----------------------------------------------------

    async def subscribe(
        self, types: TypePatterns | None = None, session_id: str | None = None, timeout: float | None = None
    ) -> dict[str, Any] | None:
        """Replace the client's filters (the server answers ``subscribed``).

        The new filters apply to the current connection from the server's
        next read on, and to every later connection. Returns at once (None)
        unless ``timeout`` is given: then waits up to that many seconds for
        the acknowledgement and returns it (a dict), or None.

        Raises:
            ValueError, TypeError: a malformed filter.
        """
        event_filter = EventFilter(types, session_id)
        frame = self._subscribe_frame(event_filter.types, session_id)
        self._types, self._session_id = event_filter.types, session_id
        self._filter_version += 1
        ws = self._ws if self._connected else None
        if ws is None:
            return None  # the next connection's URL carries the filters
        target = self._subscribed_acks + 1
        try:
            await ws.send(frame)
        except ConnectionClosed:
            return None  # the next connection's URL carries them
        if timeout is None:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._subscribed_acks < target:
            if not self._connected or not await self._wait_change(deadline):
                return None
        return self._last_subscribed

    async def ping(self, timeout: float | None = None) -> int | dict[str, Any] | None:
        """Send an application-level ping; the server answers with ``pong``.

        Without ``timeout``, returns the ping's id at once (None when not
        connected). With ``timeout``, waits up to that many seconds and
        returns the ``pong`` frame (a dict with the server's last ``seq``), or None.
        """
        ws = self._ws if self._connected else None
        if ws is None:
            return None
        self._ping_id += 1
        ping_id = self._ping_id
        pong: asyncio.Future[dict[str, Any]] | None = None
        if timeout is not None:
            pong = asyncio.get_running_loop().create_future()
            self._pongs[ping_id] = pong
        try:
            try:
                await ws.send(encode_json({"type": "ping", "id": ping_id}))
            except ConnectionClosed:
                return None
            if pong is None:
                return ping_id
            try:
                return await asyncio.wait_for(pong, timeout)
            except _TIMEOUTS:
                return None
        finally:
            self._pongs.pop(ping_id, None)

    def reconnect(self) -> bool:
        """Drop the current connection at once, as a network failure would.

        The client reconnects and resumes as after any lost connection (with
        ``reconnect=False``, the stream ends). Returns False when no
        connection was open.
        """
        ws = self._ws
        if ws is None:
            return False
        ws.transport.abort()
        return True

    # -- the connection task ---------------------------------------------------------

    async def _run(self) -> None:
        # Long: the reconnect loop (connect, session, classify the ending, back off) shares its
        # counters between those steps
        failures = 0  # consecutive attempts that did not open a session (for max_retries)
        retries = 0  # delays waited since the last session opened (for the backoff)
        attempts = 0
        delay: float | None = None
        try:
            while not self._closing:
                if delay is not None and await self._stopped_within(delay):
                    break
                attempts += 1
                outcome = await self._connection()
                if outcome.close_code is not None:
                    self._close_code = outcome.close_code
                if outcome.error is not None:
                    self._last_error = outcome.error
                if outcome.kind == "stopped":
                    break
                if outcome.kind == "paused":
                    if not await self._queue.wait_for_space():
                        break
                    delay = None
                    continue
                if outcome.kind == "end":
                    self._finish(None)
                    break
                if outcome.kind == "fatal":
                    self._finish(outcome.error)
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
        except asyncio.CancelledError:
            if not self._closing:
                raise  # cancelled by someone else than close(): let it be seen
        except Exception as exc:  # a bug here must not leave the application waiting forever
            log.exception("%s: the connection task failed", self.name)
            self._finish(ClientConnectionError(f"internal error in the client: {exc!r}"))
        finally:
            self._finished = True
            self._connected = False
            self._queue.end()
            self._notify()

    async def _stopped_within(self, delay: float) -> bool:
        """Wait ``delay`` seconds; True at once when the client is closed."""
        assert self._stop is not None
        try:
            await asyncio.wait_for(self._stop.wait(), delay)
        except _TIMEOUTS:
            return False
        return True

    def _finish(self, error: BaseException | None) -> None:
        self._error = error
        self._queue.end(error=error)

    def _uri(self, since: int | None, epoch: str | None) -> tuple[str, int]:
        """The URI for the next connection, and the version of the filters it carries."""
        target = self._target(since, epoch, self._types, self._session_id)
        host = f"[{self._host}]" if ":" in self._host else self._host
        scheme = "wss" if self._secure else "ws"
        return f"{scheme}://{host}:{self._port}{target}", self._filter_version

    async def _connection(self) -> Outcome:
        """One connection, from connect to close."""
        since, epoch = self._resume_point()
        uri, filter_version = self._uri(since, epoch)
        self._counters["connect_attempts"] += 1
        headers = [("Authorization", f"Bearer {self._token}")] if self._token is not None else []
        options: dict[str, Any] = dict(
            subprotocols=[V1_SUBPROTOCOL],
            additional_headers=headers,
            user_agent_header=f"coda-ws-client/{__version__} (python; asyncio)",
            compression=None,
            open_timeout=self.connect_timeout,
            close_timeout=self.close_timeout,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_interval,
            max_size=self.max_message_size,
            **_NO_PROXY,
        )
        if self._secure and self._ssl_context is not None:
            options["ssl"] = self._ssl_context
        try:
            ws = await _ws_connect(uri, **options)
        except InvalidStatus as exc:
            response = exc.response
            rejected = handshake_rejection(response.status_code, response.body or b"")
            kind: Kind = "fatal" if rejected.status in FATAL_HTTP_STATUSES else "retry"
            # INFO either way, as the threaded client: a fatal refusal reaches the application.
            log.info("%s: %s", self.name, rejected)
            return Outcome(kind, error=rejected)
        except (
            ssl.SSLCertVerificationError,
            UnicodeError,
        ) as exc:  # a bad certificate or host name stays bad
            error = ClientConnectionError(f"cannot connect to {self.url}: {exc}")
            log.error("%s: %s", self.name, error)
            return Outcome("fatal", error=error)
        except _TIMEOUTS:
            return Outcome(
                "retry",
                error=TimeoutError(
                    f"no WebSocket connection within the connect timeout ({self.connect_timeout:g} s)"
                ),
            )
        except (OSError, InvalidHandshake, EOFError) as exc:
            return Outcome("retry", error=exc)
        self._ws = ws
        session = Session(since, None, filter_version)
        outcome: Outcome | None = None
        try:
            outcome = await self._read(ws, session)
        finally:
            await self._end_connection(ws, outcome)
        return outcome

    async def _read(self, ws: Any, session: Session) -> Outcome:
        """Handle the frames of one connection until it ends, pauses or stops."""
        while True:
            if self._closing:
                return Outcome("stopped", session.started, close_code=_CLOSE_NORMAL)
            try:
                message = await ws.recv()
            except ConnectionClosed as exc:
                if self._closing:
                    return Outcome("stopped", session.started, close_code=_CLOSE_NORMAL)
                return self._closed_outcome(exc, session)
            if not await self._handle_message(ws, session, message):
                return Outcome("paused", session.started, close_code=_CLOSE_NORMAL)

    def _closed_outcome(self, exc: ConnectionClosed, session: Session) -> Outcome:
        sent = exc.sent
        if sent is not None and sent.code == _CLOSE_TOO_BIG:
            error = ClientConnectionError(
                f"the server sent a message larger than max_message_size ({self.max_message_size} bytes)"
            )
            return Outcome("fatal", session.started, error, close_code=_CLOSE_TOO_BIG)
        rcvd = exc.rcvd
        code = int(rcvd.code) if rcvd is not None else 1006
        reason = rcvd.reason if rcvd is not None else ""
        return self._close_outcome(code, reason, session)

    async def _end_connection(self, ws: Any, outcome: Outcome | None) -> None:
        """Close the connection politely when we end it; let go of it."""
        try:
            if outcome is not None and outcome.kind in ("stopped", "paused"):
                self._counters["pauses" if outcome.kind == "paused" else "disconnect:client_closed"] += 1
            await _close_draining(ws)
        except Exception as exc:  # the connection is already gone: nothing to tell it
            log.debug("%s: close: %s", self.name, exc)
        finally:
            if ws.transport is not None:
                ws.transport.abort()  # a no-op once closed; ends it if close() was cut short
            self._ws = None
            was_connected, self._connected = self._connected, False
            self._notify()
            if was_connected:
                log.info("%s: disconnected (%s)", self.name, outcome.kind if outcome else "error")

    # -- frames ---------------------------------------------------------------------

    async def _handle_message(self, ws: Any, session: Session, message: str | bytes) -> bool:
        """Handle one frame; False when the queue is full (the caller pauses)."""
        if not isinstance(message, str):
            self._counters["invalid_frames"] += 1
            log.warning("%s: ignoring a binary frame of %d bytes", self.name, len(message))
            return True
        try:
            data = json.loads(message)
        except (ValueError, RecursionError) as exc:
            self._counters["invalid_frames"] += 1
            log.warning("%s: ignoring a frame that is not JSON (%s): %.200s", self.name, exc, message)
            return True
        if not isinstance(data, dict):
            self._counters["invalid_frames"] += 1
            log.warning("%s: ignoring a frame that is not a JSON object: %.200s", self.name, message)
            return True
        kind = data.get("type")
        if not session.started and kind != "hello":
            log.info("%s: the server sent no hello (a legacy server?): resume is not available", self.name)
            await self._session_started(ws, session)
        if kind == "hello":
            await self._on_hello(ws, session, data)
        elif kind == "resume":
            self._on_resume(session, data)
        elif kind == "replay":
            self._on_replay(session, data)
        elif kind == "pong":
            ping_id = data.get("id")
            pong = self._pongs.get(ping_id) if type(ping_id) is int else None
            if pong is not None and not pong.done():
                pong.set_result(data)
        elif kind == "subscribed":
            self._subscribed_acks += 1
            self._last_subscribed = data
            self._notify()
        elif kind == "error":
            self._counters["server_errors"] += 1
            log.warning(
                "%s: the server reports an error: %s (%s)", self.name, data.get("message"), data.get("code")
            )
        else:
            return self._accept_event(session, data)
        return True

    async def _session_started(self, ws: Any, session: Session) -> None:
        session.started = True
        self._connected = True
        self._counters["sessions"] += 1
        self._notify()
        if self._filter_version != session.filter_version:
            # subscribe() was called after this connection's URI was made and
            # before it opened: send the filters it did not carry.
            try:
                await ws.send(self._subscribe_frame(self._types, self._session_id))
            except ConnectionClosed:
                pass  # the reading loop sees the end next

    async def _on_hello(self, ws: Any, session: Session, frame: dict[str, Any]) -> None:
        self._read_hello(session, frame)
        if not session.started:
            await self._session_started(ws, session)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "connected" if self._connected else "connecting"
        return f"<AsyncCodaEventClient {self.url} {state} epoch={self._epoch} last_seq={self._last_seq}>"


async def _close_draining(ws: Any) -> None:
    """Close ``ws`` with 1000, reading (and dropping) what the server still sends.

    websockets stops reading the socket while ``max_queue`` messages wait
    unread, so a connection ended with unread events (a pause, a close)
    would not see the server's close reply until ``close_timeout`` ran out.
    Nothing read here was accepted: after a pause it comes back on resume.
    """

    async def drain() -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.recv()

    drainer = asyncio.ensure_future(drain())
    try:
        await ws.close(_CLOSE_NORMAL)  # waits close_timeout at most; a no-op once closed
    finally:
        drainer.cancel()
        await asyncio.wait({drainer})
