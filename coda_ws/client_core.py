"""What the two Python clients share: the threaded :class:`~coda_ws.client.CodaEventClient`
and the asyncio :class:`~coda_ws.aio.AsyncCodaEventClient`.

Both follow one stream position (the epoch, the last seq the application has
everything up to, the highest seq delivered) across reconnects, and differ only
in how they connect and wait (a thread on simple-websocket, a task on
websockets). :class:`ClientCore` holds what does not depend on that: the
constructor's checks, the position and its bookkeeping for ``hello``,
``resume``, ``replay`` and event frames, decoding, the backoff, and the request
target. A subclass creates its queue and starts its connection in
:meth:`ClientCore._setup`, and calls the ``_on_*`` methods from its one
connection thread or task (the only writer of the position).
"""

import collections
import json
import logging
import random
import re
import ssl
from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol, overload
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .errors import ClientConnectionError, HandshakeRejected, InvalidEventError
from .events import BaseEvent, encode_json, registered_event_types, validate_event
from .filters import EventFilter, TypePatterns
from .protocol import CLOSE_NORMAL

__all__ = [
    "CONTROL_TYPES",
    "FATAL_CLOSE_CODES",
    "FATAL_HTTP_STATUSES",
    "NO_STATUS",
    "RECONNECT_CLOSE_CODES",
    "ClientCore",
    "Gap",
    "Outcome",
    "Session",
    "check_seconds",
    "handshake_rejection",
    "parse_ws_url",
    "warn_at",
]

log = logging.getLogger("coda_ws.client")

#: Close codes after which the client reconnects (when ``reconnect=True``):
#: going away, internal error, service restart, try again later, too slow.
#: A connection that ends without a close frame (1005, 1006) reconnects too.
RECONNECT_CLOSE_CODES = frozenset({1001, 1011, 1012, 1013, 4008})
#: Close codes that a reconnect cannot fix: the stream ends with an error.
FATAL_CLOSE_CODES = frozenset({1002, 1003, 1007, 1008, 1009, 1010})
#: HTTP refusals of the handshake that end the client (bad request, bad
#: token, forbidden, no such endpoint); other statuses (503...) are retried.
FATAL_HTTP_STATUSES = frozenset({400, 401, 403, 404, 405, 426, 501})
#: Close codes that mean no close frame came (the connection just ended).
NO_STATUS = frozenset({1005, 1006})
#: The protocol's own frames (everything else with a ``type`` is an event).
CONTROL_TYPES = frozenset({"hello", "resume", "replay", "pong", "subscribed", "error"})


class Gap:
    """A ``recovered: false`` resume frame, kept in stream order in the queue."""

    __slots__ = ("frame",)

    def __init__(self, frame: dict[str, Any]) -> None:
        self.frame = frame


class Session:
    """What the connection thread (or task) knows about the current connection."""

    __slots__ = (
        "epoch_sent",
        "filter_version",
        "hello_epoch",
        "hello_seq",
        "resume_left",
        "resume_to",
        "since",
        "started",
    )

    def __init__(self, since: int | None, epoch_sent: str | None, filter_version: int) -> None:
        self.since = since
        self.epoch_sent = epoch_sent
        self.filter_version = filter_version
        self.hello_epoch: str | None = None
        self.hello_seq: int | None = None
        self.started = False  # hello (or, from a legacy server, a first frame) received
        self.resume_to: int | None = None  # while missed events of a recovered resume arrive
        self.resume_left = 0


#: How a connection ended, for the connection thread's (or task's) loop.
Kind = Literal["stopped", "paused", "retry", "end", "fatal"]


class Outcome:
    """How one connection ended: its :data:`Kind`, whether a session was open,
    the error (if any) and the close code."""

    __slots__ = ("close_code", "error", "established", "kind")

    def __init__(
        self,
        kind: Kind,
        established: bool = False,
        error: BaseException | None = None,
        close_code: int | None = None,
    ) -> None:
        self.kind = kind
        self.established = established
        self.error = error
        self.close_code = close_code


#: Consecutive failed connection attempts before a client warns (then again at 10, 20, 40...).
WARN_AFTER_FAILURES = 5


def warn_at(failures: int) -> bool:
    """True at 5, 10, 20, 40... consecutive failures: a warning a person sees, never a flood."""
    rounds, rest = divmod(failures, WARN_AFTER_FAILURES)
    return rest == 0 and rounds > 0 and rounds & (rounds - 1) == 0


class EventQueue(Protocol):
    """What :class:`ClientCore` needs of a client's queue."""

    def offer(self, item: "Gap | BaseEvent | dict[str, Any]", force: bool = False) -> bool: ...

    def __len__(self) -> int: ...


@overload
def check_seconds(
    name: str, value: float, allow_none: Literal[False] = ..., allow_zero: bool = ...
) -> float: ...
@overload
def check_seconds(
    name: str, value: float | None, allow_none: bool, allow_zero: bool = ...
) -> float | None: ...
def check_seconds(
    name: str, value: object, allow_none: bool = False, allow_zero: bool = False
) -> float | None:
    """``value`` as a float number of seconds (None when allowed), or a ValueError naming ``name``."""
    if value is None and allow_none:
        return None
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or value != value
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        raise ValueError(
            f"{name} must be a {'non-negative' if allow_zero else 'positive'} number of seconds,"
            f" got {value!r}"
        )
    return float(value)


def handshake_rejection(status: int, body: bytes | bytearray) -> HandshakeRejected:
    """A refused handshake as the server explained it: its JSON ``error`` and
    ``message``, else the start of the body (an HTML error page, a proxy's or
    another server's, reduced to its words)."""
    code: str | None = None
    message: str | None = None
    text = bytes(body[: 64 * 1024]).decode("utf-8", "replace").strip()
    try:
        data = json.loads(text) if text else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        code = data.get("error") if isinstance(data.get("error"), str) else None
        message = data.get("message") if isinstance(data.get("message"), str) else None
    elif text:
        if text.startswith("<"):
            text = " ".join(re.sub(r"<[^>]*>", " ", text).split())
        message = text[:200]
    return HandshakeRejected(status, code, message)


def parse_ws_url(url: str) -> tuple[str, int, str, list[tuple[str, str]], bool]:
    """Split a ``ws://`` or ``wss://`` URL into host, port, path, query pairs and
    whether it is secure; a ValueError names what is wrong with it."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"url must be a ws:// or wss:// URL, got {url!r}")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"malformed URL {url!r}: {exc}") from None
    scheme = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}.get(parts.scheme.lower())
    if scheme is None:
        raise ValueError(f"url must start with ws:// or wss://, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"url has no host: {url!r}")
    if parts.fragment:
        raise ValueError(f"url must not have a #fragment: {url!r}")
    secure = scheme == "wss"
    own = {"v", "types", "session_id", "since", "epoch", "replay"}
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in own]
    return parts.hostname, port or (443 if secure else 80), parts.path or "/", query, secure


class ClientCore:
    """The part of a client that does not depend on how it connects (see the
    module docstring). Its constructor is the clients' constructor: the
    subclass's docstring documents the arguments."""

    _queue: EventQueue
    #: The logger of the client's own module (``coda_ws.client``, ``coda_ws.aio.client``).
    _log: logging.Logger = logging.getLogger("coda_ws.client")
    _counters: "collections.Counter[str]"

    def __init__(
        self,
        url: str,
        types: TypePatterns | None = None,
        session_id: str | None = None,
        token: str | None = None,
        resume: bool = True,
        reconnect: bool = True,
        on_gap: Callable[[dict[str, Any]], object] | None = None,
        *,
        since: int | None = None,
        replay: bool = True,
        max_queue: int = 10_000,
        connect_timeout: float = 10.0,
        close_timeout: float = 1.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        backoff_factor: float = 2.0,
        backoff_jitter: float = 0.5,
        max_retries: int | None = None,
        retry_first_connect: bool = True,
        ping_interval: float | None = 20.0,
        max_message_size: int | None = 16 * 1024 * 1024,
        name: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        # Long: one check per constructor argument, each with its own message; the arguments are the
        # public API of both clients.
        self.url = url
        self._host, self._port, self._path, self._query, self._secure = parse_ws_url(url)
        event_filter = EventFilter(types, session_id)  # raises TypeError/ValueError early
        if token is not None and (not isinstance(token, str) or not token or any(c in token for c in "\r\n")):
            raise ValueError("token must be a non-empty string without line breaks")
        if on_gap is not None and not callable(on_gap):
            raise TypeError(f"on_gap must be callable, got {type(on_gap).__name__}")
        if since is not None and (not isinstance(since, int) or isinstance(since, bool) or since < 0):
            raise ValueError(f"since must be a non-negative integer, got {since!r}")
        if not isinstance(max_queue, int) or isinstance(max_queue, bool) or max_queue < 2:
            raise ValueError(f"max_queue must be an integer of at least 2, got {max_queue!r}")
        if max_retries is not None and (
            not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0
        ):
            raise ValueError(f"max_retries must be a non-negative integer or None, got {max_retries!r}")
        if (
            not isinstance(backoff_factor, (int, float))
            or isinstance(backoff_factor, bool)
            or not (1 <= backoff_factor <= 100)
        ):
            raise ValueError(f"backoff_factor must be a number from 1 to 100, got {backoff_factor!r}")
        if (
            not isinstance(backoff_jitter, (int, float))
            or isinstance(backoff_jitter, bool)
            or not (0 <= backoff_jitter <= 1)
        ):
            raise ValueError(f"backoff_jitter must be a number from 0 to 1, got {backoff_jitter!r}")
        if max_message_size is not None and (
            not isinstance(max_message_size, int)
            or isinstance(max_message_size, bool)
            or max_message_size < 1024
        ):
            raise ValueError(
                f"max_message_size must be at least 1024 bytes or None, got {max_message_size!r}"
            )
        self.connect_timeout: float = check_seconds("connect_timeout", connect_timeout)
        self.close_timeout: float = check_seconds("close_timeout", close_timeout, allow_zero=True)
        self.backoff_initial: float = check_seconds("backoff_initial", backoff_initial)
        self.backoff_max: float = check_seconds("backoff_max", backoff_max)
        if self.backoff_max < self.backoff_initial:
            raise ValueError(
                f"backoff_max ({backoff_max!r}) must not be less than backoff_initial ({backoff_initial!r})"
            )
        self.backoff_factor = float(backoff_factor)
        self.backoff_jitter = float(backoff_jitter)
        self.ping_interval: float | None = (
            check_seconds("ping_interval", ping_interval, allow_none=True) or None
        )
        self.resume = bool(resume)
        self.auto_reconnect = bool(reconnect)
        self.replay = bool(replay)
        self.max_retries = max_retries
        self.retry_first_connect = bool(retry_first_connect)
        self.max_message_size = max_message_size
        self.on_gap = on_gap
        self.name = name or f"{self._host}:{self._port}"
        self._token = token
        self._ssl_context = ssl_context

        # The position: written by the connection thread (or task) only.
        self._epoch: str | None = None
        self._last_seq = since if since is not None else 0
        self._start_since = since
        self._delivered_max = 0  # highest seq queued for the application in this epoch
        self._recovered: bool | None = None
        self._client_id: str | None = None
        self._close_code: int | None = None

        self._types: tuple[str, ...] | None = event_filter.types
        self._session_id = session_id
        self._filter_version = 0  # bumped by subscribe(); a connection knows which version its URL carries
        self._closing = False
        self._connected = False
        self._finished = False
        self._ping_id = 0
        self._subscribed_acks = 0
        self._last_subscribed: dict[str, Any] | None = None
        self._counters = collections.Counter()
        self._setup(max_queue)

    def _setup(self, max_queue: int) -> None:
        """Create the queue (of ``max_queue`` events) and whatever the
        connection needs, and start it (or arrange for it to start)."""
        raise NotImplementedError

    # -- public state -----------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The stream position the client has everything up to (and resumes after)."""
        return self._last_seq

    @property
    def epoch(self) -> str | None:
        """The epoch of the stream ``last_seq`` belongs to (None before the first hello)."""
        return self._epoch

    @property
    def recovered(self) -> bool | None:
        """The outcome of the last resume: True, False, or None (no resume yet)."""
        return self._recovered

    @property
    def client_id(self) -> str | None:
        """The id the server gave the current (or last) connection."""
        return self._client_id

    @property
    def connected(self) -> bool:
        """True while a session is open (hello received)."""
        return self._connected

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called or the stream has ended for good."""
        return self._closing or self._finished

    @property
    def close_code(self) -> int | None:
        """The close code of the last connection that ended (None before)."""
        return self._close_code

    # -- the connection's plan ----------------------------------------------------

    def _count(self, name: str, amount: int = 1) -> None:
        self._counters[name] += amount

    def _backoff(self, retries: int) -> float:
        """Seconds to wait before the next attempt: ``backoff_initial`` times
        ``backoff_factor`` to the power of the retries since the last session,
        at most ``backoff_max``, minus a random part of up to ``backoff_jitter``."""
        base = min(self.backoff_max, self.backoff_initial * self.backoff_factor ** min(retries, 64))
        return base * (1.0 - self.backoff_jitter * random.random())

    def _resume_point(self) -> tuple[int | None, str | None]:
        """``since`` and ``epoch`` for the next connection (None, None: a fresh start)."""
        if self.resume and self._epoch is not None:
            return self._last_seq, self._epoch
        if self._start_since is not None and self._epoch is None:
            return self._start_since, None
        return None, None

    def _connection_error(
        self, error: BaseException | None, prefix: str | None = None
    ) -> ClientConnectionError:
        """``error`` as the ClientConnectionError the stream ends with."""
        if isinstance(error, ClientConnectionError):
            return error
        exc = ClientConnectionError(f"{prefix or 'cannot connect'} to {self.url}: {error}")
        exc.__cause__ = error
        return exc

    def _close_outcome(self, code: int, reason: str, session: Session) -> Outcome:
        """What the server's close (``code``, ``reason``; 1005/1006 for none) means for the loop."""
        self._count(f"disconnect:{'connection_lost' if code in NO_STATUS else code}")
        if code in NO_STATUS:
            return Outcome("retry", session.started, ConnectionResetError("connection lost"), close_code=code)
        error = ClientConnectionError(
            f"the server closed the connection with code {code}" + (f" ({reason})" if reason else "")
        )
        if code == CLOSE_NORMAL:
            return Outcome("end", session.started, close_code=code)
        if code in FATAL_CLOSE_CODES:
            # INFO: the application gets this error from the stream itself.
            self._log.info("%s: %s", self.name, error)
            return Outcome("fatal", session.started, error, close_code=code)
        return Outcome("retry", session.started, error, close_code=code)

    def _log_retry(self, failures: int, error: BaseException | None, delay: float) -> None:
        """Say that the client reconnects in ``delay`` seconds; warn at 5, 10, 20... failures in a row."""
        if warn_at(failures):
            self._log.warning(
                "%s: %d connection attempts in a row failed (last: %s); still retrying, every "
                "%.0f s at most. Is the server running at %s?",
                self.name,
                failures,
                error,
                self.backoff_max,
                self.url,
            )
        self._log.info("%s: connection lost or refused (%s); reconnecting in %.3f s", self.name, error, delay)

    def _target(
        self,
        since: int | None,
        epoch: str | None,
        types: tuple[str, ...] | None,
        session_id: str | None,
    ) -> str:
        """The request target (path and query) for a connection with these filters."""
        query = list(self._query) + [("v", "1")]
        if types is not None:
            query.append(("types", ",".join(types)))
        if session_id is not None:
            query.append(("session_id", session_id))
        if since is not None:
            query.append(("since", str(since)))
            if epoch is not None:
                query.append(("epoch", epoch))
        if not self.replay:
            query.append(("replay", "0"))
        return urlunsplit(("", "", self._path, urlencode(query), ""))

    @staticmethod
    def _subscribe_frame(types: Iterable[str] | None, session_id: str | None) -> str:
        return encode_json(
            {
                "type": "subscribe",
                "types": list(types) if types is not None else None,
                "session_id": session_id,
            }
        )

    # -- the position, frame by frame ---------------------------------------------

    def _read_hello(self, session: Session, frame: dict[str, Any]) -> None:
        """Note the hello's epoch, seq and client id; a fresh start follows the hello's position."""
        epoch, seq = frame.get("epoch"), frame.get("seq")
        if not isinstance(epoch, str) or type(seq) is not int:
            self._log.warning("%s: malformed hello frame: %.200s", self.name, frame)
            epoch, seq = None, None
        session.hello_epoch, session.hello_seq = epoch, seq
        client_id = frame.get("client_id")
        self._client_id = client_id if isinstance(client_id, str) else None
        if session.since is None and epoch is not None:
            self._move_to(epoch, seq)  # a fresh start: live events follow hello.seq
        self._log.debug("%s: hello from %s (epoch %s, seq %s)", self.name, frame.get("server"), epoch, seq)

    def _move_to(self, epoch: str, seq: int | None) -> None:
        """Follow ``epoch`` from position ``seq`` on (positions of another epoch start over)."""
        if epoch != self._epoch:
            self._delivered_max = 0
            self._last_seq = 0
            self._epoch = epoch
        if seq is not None and seq > self._last_seq:
            self._last_seq = seq

    def _on_resume(self, session: Session, frame: dict[str, Any]) -> None:
        if frame.get("recovered") is True:
            self._recovered = True
            if session.hello_epoch is not None:
                self._epoch = session.hello_epoch
            to, count = frame.get("to"), frame.get("count")
            if type(to) is int and type(count) is int:
                session.resume_to, session.resume_left = to, count
                if count <= 0:
                    self._finish_resume(session)
            self._log.debug("%s: resumed: %s", self.name, frame)
            return
        self._recovered = False
        self._count("gaps")
        reason = frame.get("reason")
        self._log.info(
            "%s: could not resume after %s (%s): the state is stale", self.name, session.since, reason
        )
        if reason == "unknown_position" and session.hello_epoch == self._epoch:
            self._epoch = None  # the positions we hold mean nothing to this server
        if session.hello_epoch is not None:
            self._move_to(session.hello_epoch, session.hello_seq)
        self._queue.offer(Gap(dict(frame)))

    def _finish_resume(self, session: Session) -> None:
        if session.resume_to is not None and session.resume_to > self._last_seq:
            self._last_seq = session.resume_to
        session.resume_to = None

    def _on_replay(self, session: Session, frame: dict[str, Any]) -> None:
        events = frame.get("events")
        if not isinstance(events, list):
            self._count("invalid_frames")
            self._log.warning("%s: malformed replay frame: %.200s", self.name, frame)
            return
        for data in events:
            if not isinstance(data, dict):
                self._count("invalid_events")
                self._log.warning("%s: ignoring a replay item that is not an object: %.200r", self.name, data)
                continue
            seq = data.get("seq")
            if type(seq) is int:
                if seq <= self._delivered_max:
                    self._count("duplicates_dropped")
                    continue
                self._delivered_max = seq
            self._count("events")
            self._queue.offer(self._decode(data), force=True)

    def _on_error(self, session: Session, frame: dict[str, Any]) -> None:
        self._count("server_errors")
        self._log.warning(
            "%s: the server reports an error: %s (%s)", self.name, frame.get("message"), frame.get("code")
        )

    def _accept_event(self, session: Session, data: dict[str, Any]) -> bool:
        """Queue an event frame unless it is a duplicate; False when the queue
        is full (the event was not accepted: the connection pauses)."""
        seq = data.get("seq")
        if type(seq) is not int:
            self._count("invalid_events")
            self._log.warning(
                "%s: event without an integer seq, delivered as received: %.200s", self.name, data
            )
            self._queue.offer(dict(data), force=True)
            return True
        if session.resume_to is not None and seq > session.resume_to:
            self._finish_resume(session)
        if seq <= self._delivered_max:
            self._count("duplicates_dropped")
            return True
        if not self._queue.offer(self._decode(data)):
            self._log.info(
                "%s: %d events wait for the application: pausing the stream", self.name, len(self._queue)
            )
            return False
        self._delivered_max = seq
        if seq > self._last_seq:
            self._last_seq = seq
        self._count("events")
        if session.resume_to is not None:
            session.resume_left -= 1
            if session.resume_left <= 0:
                self._finish_resume(session)
        return True

    def _decode(self, data: dict[str, Any]) -> BaseEvent | dict[str, Any]:
        """The event object for a wire dict, or the dict when it cannot be one
        (a type not registered in this process, a redacted event, an invalid one)."""
        type_name = data.get("type")
        if not isinstance(type_name, str) or type_name not in registered_event_types():
            self._log.debug(
                "%s: event of type %r, not registered here, delivered as a dict", self.name, type_name
            )
            return data
        if data.get("redacted") is True:
            return data  # content fields are null: a dict, not a (valid) event object
        try:
            event: BaseEvent = validate_event(data)
            return event
        except InvalidEventError as exc:
            self._count("invalid_events")
            self._log.warning(
                "%s: invalid %s event (seq %s) delivered as a dict: %s",
                self.name,
                type_name,
                data.get("seq"),
                exc,
            )
            return data
