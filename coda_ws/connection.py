"""One WebSocket client's whole session: its socket, its reader, its single writer.

Theory of operation
-------------------

A :class:`Connection` is made by the server once the handshake is accepted
(see :mod:`coda_ws.handshake`) and owns everything that happens on the
connection afterwards: reading the client's frames, keepalive, writing the
stream, overflow, and the close. The server gives it its collaborators at
construction (a :class:`SessionHooks` for handlers and counters) and calls
:meth:`Connection.run` in the request thread; ``run`` returns when the
session is over, with the reason in :attr:`Connection.disconnect_reason`.

Each connection has two threads, and the dispatcher may write for it:

* the **reader**: simple-websocket's own thread (behind
  :class:`~coda_ws._transport.ServerTransport`). It parses incoming frames,
  answers protocol pings and close frames, and keeps complete messages for
  the writer; it sets the connection's ``wake`` event on every message and
  when the connection ends.
* the **writer**: the request thread that accepted the connection, running
  :meth:`Connection.run`. It handles incoming messages, takes new entries
  from the stream through the connection's
  :class:`~coda_ws.bus.Subscription`, and writes everything that is waiting
  (control frames and event frames) with one ``send``.
* the **dispatcher** (the bus's thread), through :meth:`Connection.push`:
  when it publishes new events and the writer is asleep with nothing else to
  do, it takes the new entries and writes them itself with one non-blocking
  send, so a client that keeps up costs no thread wake-up per event. Whatever
  it cannot finish at once (the socket's buffer is full, a control frame is
  waiting, a close was asked for) it leaves to the writer and wakes it.

Who may write is decided by the connection's **pen** (a lock): the writer
holds it whenever it is awake, and the dispatcher only ever *tries* to take
it. Whoever holds it is the only one reading from the subscription and
moving its cursor, so frames leave in stream order and the cursor has one
owner at a time (principle 4).

Every write to the socket, including the reader's pongs and close replies,
goes through :class:`GuardedSocket`, which serializes writers, keeps a frame
that a non-blocking send could only partly write until the rest is written
(no other bytes may come in between), and never blocks longer than the write
timeout: simple-websocket's ``send()`` takes no lock, and a client that stops
reading must not hold a thread forever.
"""

import collections
import json
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, cast

from . import framing
from ._fastjson import encode_json
from ._sendfast import DONTWAIT, can_send_directly, send_now
from ._transport import ConnectionClosed, ServerTransport
from .errors import WriteTimeout
from .filters import EventFilter
from .protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_POLICY,
    CLOSE_SERVICE_RESTART,
    CLOSE_TOO_BIG,
    CLOSE_TOO_SLOW,
)

if TYPE_CHECKING:
    from .bus import SharedChunk, Subscription

__all__ = [
    "CLOSE_TIMEOUT",
    "Connection",
    "ConnectionInfo",
    "GuardedSocket",
    "RateLimiter",
    "SessionHooks",
    "SessionSettings",
]

log = logging.getLogger("coda_ws.connection")

#: The most the dispatcher writes for one client at once (Connection.push).
#: More than that is pressure: the client's writer thread takes it, batching
#: with blocking sends (principle 6), and the dispatcher moves on. In calm a
#: client gets one or a few events per batch, far below this.
DIRECT_WRITE_BYTES = 16 * 1024

#: Seconds to wait for a client's close reply (and for its reader thread to
#: end). ``stop()`` forces stragglers off before its own timeout regardless.
CLOSE_TIMEOUT = 2.0

#: The stream's ``Subscription.stale`` when it moved to a new epoch under the reader.
_EPOCH_CHANGED = "epoch_changed"


class GuardedSocket:
    """A socket wrapper that serializes writes and bounds how long one may block.

    ``recv`` passes through (only the reader thread calls it). ``send`` writes
    everything or raises: ``WriteTimeout`` when the peer accepts nothing for
    ``write_timeout`` seconds (None: wait as long as it takes), ``OSError``
    when the connection is gone. ``try_send`` never waits: it writes what the
    kernel takes at once and keeps the rest of a partly written message as the
    *unsent tail*, which the next ``send`` writes before
    anything else. ``close`` (called by simple-websocket when its reader ends)
    only marks the socket closed: the file descriptor belongs to Werkzeug,
    which closes it after the request; ``shutdown`` ends the connection for
    both threads at once.
    """

    def __init__(self, sock: socket.socket, write_timeout: float | None = None) -> None:
        self._sock = sock
        self._write_lock = threading.Lock()  # one writer at a time on this socket
        self._unsent: memoryview | None = None  # the rest of a message try_send could not finish
        self._held: list[bytes] | None = None  # writes kept by hold() until release(), else None
        self.write_timeout = write_timeout
        self.closed = False
        self.on_close: Callable[[], object] | None = (
            None  # called once the reader thread is done with the socket
        )
        self.write_calls = 0  # system calls that wrote data (batching is visible here)
        #: monotonic time since which a write has waited for the peer to read, else None
        self.blocked_since: float | None = None

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def raw(self) -> socket.socket:
        """The socket this wraps."""
        return self._sock

    def recv(self, size: int) -> bytes:
        return self._sock.recv(size)

    @property
    def has_unsent(self) -> bool:
        """True while part of a message written by :meth:`try_send` is waiting."""
        return self._unsent is not None

    def hold(self) -> None:
        """Keep every write from now on in memory until :meth:`release`
        (the server registers a client before its handshake response leaves)."""
        with self._write_lock:
            if self._held is None:
                self._held = []

    def release(self) -> None:
        """Write what :meth:`hold` kept, and write directly from now on.

        Raises:
            OSError: the connection is gone (``WriteTimeout``: it accepts nothing).
        """
        with self._write_lock:
            held, self._held = self._held, None
            if held:
                try:
                    self._send_all(b"".join(held))
                finally:
                    self.blocked_since = None

    def send(self, data: bytes) -> int:
        """Write the unsent tail, if any, then all of ``data``; returns
        ``len(data)`` (simple-websocket's contract). ``send(b"")`` flushes."""
        with self._write_lock:
            if self._held is not None:
                self._held.append(bytes(data))
                return len(data)
            try:
                if self._unsent is not None:
                    self._send_all(self._unsent)
                    self._unsent = None
                self._send_all(data)
            finally:
                self.blocked_since = None
        return len(data)

    sendall = send

    def try_send(self, data: bytes) -> bool:
        """Write ``data`` without ever waiting, or not at all.

        Returns True when the socket took responsibility for ``data``: all of
        it was written, or part of it and the rest is kept as the unsent tail
        (the caller must then see that someone calls ``send``, which writes
        it first; ``send(b"")`` writes just the tail). Returns
        False, having written nothing, when another thread is writing, a tail
        is already waiting, or the peer's buffers are full.

        Raises:
            OSError: the connection is gone.
        """
        if not self._write_lock.acquire(blocking=False):
            return False
        try:
            if self._unsent is not None or self._held is not None:
                return False
            sent = send_now(self._sock, data)
            if not sent:
                if self.blocked_since is None:
                    self.blocked_since = time.monotonic()
                return False
            self.write_calls += 1
            if sent < len(data):
                self._unsent = memoryview(data)[sent:]
                self.blocked_since = time.monotonic()
            return True
        finally:
            self._write_lock.release()

    def _send_all(self, data: bytes | memoryview) -> None:
        sock = self._sock
        view = memoryview(data)
        deadline: float | None = None
        while view:
            try:
                sent = sock.send(view, DONTWAIT)
            except BlockingIOError:
                sent = 0
            if sent:
                self.write_calls += 1
                view = view[sent:]
                deadline = None
                self.blocked_since = None
                continue
            if self.blocked_since is None:
                self.blocked_since = time.monotonic()
            # The peer's buffers are full: wait until it reads, at most write_timeout.
            now = time.monotonic()
            if deadline is None and self.write_timeout is not None:
                deadline = now + self.write_timeout
            remaining = None if deadline is None else deadline - now
            if remaining is not None and remaining <= 0:
                raise WriteTimeout(f"client accepted no data for {self.write_timeout} s")
            poller = select.poll()
            poller.register(sock, select.POLLOUT)
            events = poller.poll(None if remaining is None else max(1, int(remaining * 1000)))
            if events and events[0][1] & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                raise ConnectionResetError("connection closed while writing")

    def shutdown(self) -> None:
        """End the connection in both directions (wakes a blocked reader and writer)."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # already shut down or reset by the peer: nothing left to end
            pass

    def close(self) -> None:
        """Called by simple-websocket as the very last step of its reader thread."""
        self.closed = True
        if self.on_close is not None:
            # The reader may set its event *before* it marks the connection as
            # closed; this wake-up comes after, so the writer cannot miss the end.
            self.on_close()


class RateLimiter:
    """A token bucket: ``rate`` frames per second on average, ``burst`` at once.

    Used by one thread (the connection's writer); not thread-safe.
    """

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._stamp = time.monotonic()
        self.refused = 0  # frames refused since the client was last within its rate

    def allow(self) -> bool:
        """Take a token; False when the client is over its rate."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            self.refused = 0
            return True
        self.refused += 1
        return False


@dataclass(frozen=True)
class SessionSettings:
    """What the server decides for every session.

    Attributes:
        ping_interval: seconds between keepalive pings (None: off).
        ping_timeout: seconds a ping may stay unanswered (None: no limit).
        rate_limit: client frames per second on average (bursts of twice that).
    """

    ping_interval: float | None
    ping_timeout: float | None
    rate_limit: float


class SessionHooks(Protocol):
    """What a :class:`Connection` needs from its server (all thread-safe)."""

    def connected(self, conn: "Connection") -> None:
        """The writer starts: run the connect handlers."""

    def message(self, conn: "Connection", data: dict[str, Any]) -> None:
        """A JSON object the protocol does not handle itself: run the message handlers."""

    def count(self, name: str) -> None:
        """Count an event of the session (``invalid_messages``, ``rate_limited``)."""

    def last_seq(self) -> int:
        """The stream's last seq (for ``pong``)."""


class ConnectionInfo(TypedDict):
    """:meth:`Connection.info`: one client, as ``GET /stats`` lists it.

    ``lag``: events the stream head is ahead of the client; ``queue_depth``:
    frames its writer holds that its socket has not accepted yet;
    ``dropped``: state events conflated for it; ``connected_since``: Unix
    time; ``last_pong_rtt``: seconds, or None before the first keepalive answer.
    """

    id: str
    address: str
    user_agent: str
    protocol: int  # 1 for a v1 session, 0 for a legacy one
    scopes: list[str]
    filters: Mapping[str, Any]  # EventFilter.describe(): {"types": [...] or None, "session_id": ... or None}
    cursor: int
    lag: int
    queue_depth: int
    sent: int
    dropped: int
    connected_since: float
    last_pong_rtt: float | None


class _SessionOver(Exception):
    """Raised inside :meth:`Connection.run` to end the session.

    ``code``: send a close frame with ``code`` and ``reason`` and wait for
    the reply; None: the connection is gone already (``shutdown``: shut the
    socket down at once, for a write that failed; otherwise the reader is
    ending on its own and :meth:`Connection.end` lets it finish)."""

    def __init__(self, why: str, code: int | None = None, reason: str = "", shutdown: bool = False) -> None:
        super().__init__(why)
        self.why, self.code, self.reason, self.shutdown = why, code, reason, shutdown


class _Keepalive:
    """When to ping, and whether the last ping was answered in time."""

    __slots__ = ("interval", "next_ping", "sent", "timeout")

    def __init__(self, interval: float | None, timeout: float | None) -> None:
        self.interval = interval
        self.timeout = timeout
        self.next_ping = time.monotonic() + interval if interval else None
        self.sent: float | None = None  # monotonic time of the unanswered ping

    def check(self, conn: "Connection") -> float | None:
        """Ping when due; returns how long the writer may sleep (None: no
        limit). Raises _SessionOver when a ping went unanswered too long."""
        if self.next_ping is None:
            return None
        transport = conn.transport
        now = time.monotonic()
        if self.sent is not None and transport.pong_received:
            conn.last_rtt = now - self.sent  # an upper bound: seen at the writer's next wake-up
            self.sent = None
        if self.sent is not None and self.timeout and now - self.sent >= self.timeout:
            raise _SessionOver("keepalive_timeout", CLOSE_INTERNAL, "keepalive ping timeout")
        if now >= self.next_ping and (self.sent is None or not self.timeout):
            transport.expect_pong()
            self.sent = now
            self.next_ping = now + cast(float, self.interval)  # interval is set whenever next_ping is
            conn.post(framing.frame(framing.OP_PING, b"coda-ws"))
        if self.sent is not None and self.timeout:
            return self.sent + self.timeout - now  # no new ping while one is unanswered
        return self.next_ping - now


class Connection:
    """A connected client and its session.

    Attributes (read-only for users):
        id: the client id (a string).
        address: the peer address (``"host:port"``).
        peer: the peer's IP address (what ``max_clients_per_address`` counts).
        user_agent: the ``User-Agent`` header, or ``""``.
        connected_at: Unix time of the connection.
        v1: True for a v1 session (hello, resume, control replies).
        scopes: the scopes of its token (all of them without auth).
        subscription: its position in the stream and its filter.
        frames_sent, messages_received, errors: counters.
        last_rtt: seconds from a keepalive ping to its pong (an upper bound), or None.
        close_code: the close code sent or received, None while open or when none was.
        disconnect_reason: why the session ended (``client_closed``,
            ``too_slow``, ``server_shutdown``, ...), None while it runs.

    Thread safety: :meth:`post`, :meth:`request_close`, :meth:`push`,
    :meth:`info` and the attributes may be used from any thread; :meth:`run`
    and :meth:`end` belong to the connection's request thread.
    """

    def __init__(
        self,
        client_id: str,
        transport: ServerTransport,
        sock: GuardedSocket,
        subscription: "Subscription",
        *,
        address: str,
        peer: str,
        user_agent: str,
        v1: bool,
        scopes: frozenset[str],
        settings: SessionSettings,
        hooks: SessionHooks,
    ) -> None:
        self.id = client_id
        self.transport = transport
        self.sock = sock
        self.subscription = subscription
        self.address = address
        self.peer = peer
        self.user_agent = user_agent
        self.v1 = v1
        self.scopes = scopes
        self.redact = "read:content" not in scopes  # content fields go out as null
        self.settings = settings
        self.rate = RateLimiter(settings.rate_limit, burst=2 * settings.rate_limit)
        self.connected_at = time.time()
        self.frames_sent = 0  # event frames
        self.messages_received = 0
        self.errors = 0
        self.last_rtt: float | None = None
        self.close_code: int | None = None
        self.disconnect_reason: str | None = None
        self._hooks = hooks
        self._outbox: collections.deque[bytes] = collections.deque()  # control frames waiting for the writer
        self._closing: tuple[int, str, int] | None = None  # (code, reason, after) requested by another thread
        #: Held by whoever writes for this client: the writer thread while it
        #: is awake, the dispatcher during :meth:`push` (see the module doc).
        self.pen = threading.Lock()

    @property
    def wake(self) -> threading.Event:
        """The subscription's event, set whenever the writer has work."""
        wake: threading.Event = self.subscription.wake
        return wake

    # -- any thread -----------------------------------------------------------------

    def post(self, frame: bytes) -> None:
        """Queue a control frame for the writer (thread-safe)."""
        self._outbox.append(frame)
        self.wake.set()

    def post_json(self, value: Mapping[str, Any]) -> None:
        """Queue a control frame holding ``value`` as JSON (thread-safe)."""
        self.post(framing.text_frame(encode_json(value)))

    def request_close(self, code: int, reason: str, after: int = 0) -> None:
        """Ask the writer to close the connection with ``code`` (thread-safe),
        once every event up to seq ``after`` is written (0: at once)."""
        if self._closing is None:
            self._closing = (code, reason, after)
        self.wake.set()

    def push(self, shared: "SharedChunk | None" = None) -> None:
        """Write the events waiting for this client now, from the calling
        thread (the dispatcher, right after it published them), if that can
        be done without waiting; otherwise wake the writer. Never blocks.

        ``shared``: the chunk just published, joined once for every caught-up
        unfiltered client (see :class:`~coda_ws.bus.SharedChunk`). When this
        client is one of them its bytes are sent as they are, without reading
        the stream for it.

        :meth:`run` makes this the subscription's ``notify`` once the writer
        holds the pen, so nothing is written before the first frames (hello,
        replay) are out.
        """
        pen = self.pen
        if self._outbox or self._closing is not None or not pen.acquire(blocking=False):
            self.wake.set()  # the writer is awake, or has work only it can do
            return
        try:
            sub = self.subscription
            if shared is None or not sub.unfiltered or sub.cursor != shared.after or sub.overflowed:
                done = self._write_new_events()
            else:
                # The shared chunk, inline (this runs once per client per
                # event): its bytes are exactly what reading the stream would
                # return for this client. The head is the chunk's last seq
                # while the dispatcher notifies, so once it is taken nothing
                # is left but a possible unsent tail.
                sock = self.sock
                data = shared.redacted_data() if self.redact else shared.data
                if len(data) > DIRECT_WRITE_BYTES:
                    done = False
                else:
                    try:
                        done = sock.try_send(data)
                    except OSError:
                        done = False  # the writer's own send meets the error and ends the connection
                    if done:
                        count = shared.count
                        self.frames_sent += count
                        sub.delivered += count
                        sub.commit(shared.last)
                        done = not sock.has_unsent
        finally:
            pen.release()
        if not done:
            self.wake.set()

    @property
    def queue_depth(self) -> int:
        """Frames waiting in this client's writer: control frames queued plus
        the event frames taken from the stream and not yet accepted by the
        socket (a client that stops reading keeps it above 0). Its backlog in
        the stream is ``subscription.lag``. Safe to read from any thread."""
        return len(self._outbox) + int(self.subscription.in_flight)

    def info(self) -> ConnectionInfo:
        """A JSON-ready description (for ``/stats`` and ``get_stats``)."""
        sub = self.subscription
        return {
            "id": self.id,
            "address": self.address,
            "user_agent": self.user_agent,
            "protocol": 1 if self.v1 else 0,
            "scopes": sorted(self.scopes),
            "filters": sub.filter.describe(),
            "cursor": sub.cursor,
            "lag": sub.lag,
            "queue_depth": self.queue_depth,
            "sent": self.frames_sent,
            "dropped": sub.conflated,
            "connected_since": self.connected_at,
            "last_pong_rtt": self.last_rtt,
        }

    # -- the request thread ---------------------------------------------------------

    def run(self) -> None:
        """The writer: runs in the connection's request thread until the session ends.

        Each turn clears ``wake`` first, then looks at every source of work:
        the client's messages, the end of the connection, overflow,
        keepalive, control frames, new events, a close request. It holds the
        pen whenever it is awake and keeps it once it returns, so the
        dispatcher (:meth:`push`) writes for this client only while the
        writer sleeps, and never after the close frame.
        """
        self._hooks.connected(self)
        sub = self.subscription
        wake = self.wake
        self.pen.acquire()
        if can_send_directly(self.sock.raw):
            sub.notify = self.push
        keepalive = _Keepalive(self.settings.ping_interval, self.settings.ping_timeout)
        try:
            while True:
                wake.clear()
                self._read_messages()
                self._check_stream()
                sleep = keepalive.check(self)
                position = self._write_pending()
                closing = self._closing
                if closing is not None and position >= closing[2]:
                    # Everything the close request asked to deliver has been written.
                    raise _SessionOver(self.disconnect_reason or "", closing[0], closing[1])
                if sub.lag and not sub.overflowed:
                    continue  # more is waiting: write it now, without sleeping
                self.pen.release()  # asleep: the dispatcher may write for us
                wake.wait(sleep)
                self.pen.acquire()
        except _SessionOver as over:
            if over.why:
                self.disconnect_reason = self.disconnect_reason or over.why
            if over.code is not None:
                self._close(over.code, over.reason)
            elif over.shutdown:
                self.sock.shutdown()

    def end(self) -> None:
        """After :meth:`run`: stop the reader, shut the socket down, leave the stream."""
        transport = self.transport
        if not transport.connected:
            # The reader is ending on its own (client close): it marks the
            # connection closed *before* it writes its close reply, so let it finish.
            transport.join_reader(CLOSE_TIMEOUT)
        transport.mark_closed()
        self.sock.shutdown()  # wakes the reader; Werkzeug would otherwise keep reading this socket
        transport.join_reader(CLOSE_TIMEOUT)
        self.subscription.close()
        self.disconnect_reason = self.disconnect_reason or "connection_lost"

    def _read_messages(self) -> None:
        if self._closing is not None:
            return
        for message in self.transport.take_messages():
            self._handle_message(message)
            if self._closing is not None:
                return  # asked to close (rate limit): what follows is not read

    def _check_stream(self) -> None:
        """End the session when the client fell behind, the stream moved to a
        new epoch under it, or the reader saw the connection end."""
        sub = self.subscription
        if sub.overflowed:
            if sub.stale == _EPOCH_CHANGED:
                # Not the client's fault: its positions belong to a stream
                # that is gone. On reconnect, resume says epoch_changed.
                raise _SessionOver(
                    "epoch_changed", CLOSE_SERVICE_RESTART, "the stream's epoch changed: resume with since"
                )
            raise _SessionOver("too_slow", CLOSE_TOO_SLOW, "client too slow: resume with since")
        transport = self.transport
        if not transport.connected:
            if transport.message_too_big:
                self.close_code = CLOSE_TOO_BIG
                raise _SessionOver("message_too_big")
            code = transport.peer_close_code
            if code is None:  # no close frame: the socket just ended
                raise _SessionOver("connection_lost")
            self.close_code = code
            raise _SessionOver("client_closed")

    def _event_frames(self, entries: list[Any]) -> list[bytes]:
        if self.redact:
            return [entry.redacted_frame() for entry in entries]
        return [entry.frame for entry in entries]

    def _write_pending(self) -> int:
        """Write the control frames and the new events with one send (after
        the tail of what the dispatcher could only partly write); returns the
        stream position written up to."""
        sub = self.subscription
        sock = self.sock
        frames = self._take_outbox()
        position: int
        entries, position = sub.read()
        if entries:
            frames.extend(self._event_frames(entries))
        if frames or sock.has_unsent:
            try:
                sock.send(frames[0] if len(frames) == 1 else b"".join(frames))
            except WriteTimeout:
                raise _SessionOver("write_timeout", shutdown=True) from None
            except OSError:
                raise _SessionOver("connection_lost", shutdown=True) from None
            self.frames_sent += len(entries)
            sub.delivered += len(entries)
        sub.commit(position)
        return position

    def _write_new_events(self) -> bool:
        """The dispatcher's share of the writer's work, under the pen: True
        when nothing is left for the writer to do."""
        sub = self.subscription
        sock = self.sock
        if sub.overflowed or self._outbox or sock.has_unsent:
            return False
        entries, position = sub.read(max_bytes=DIRECT_WRITE_BYTES)
        if entries:
            frames = self._event_frames(entries)
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            taken = False
            if len(data) <= DIRECT_WRITE_BYTES:
                try:
                    taken = sock.try_send(data)
                except OSError:
                    pass  # the writer's own send meets the error and ends the connection
            if not taken:
                sub.commit(sub.cursor)  # nothing was written: the writer reads these again
                return False
            self.frames_sent += len(entries)
            sub.delivered += len(entries)
        sub.commit(position)
        return not sock.has_unsent and not sub.lag

    def _take_outbox(self) -> list[bytes]:
        frames: list[bytes] = []
        outbox = self._outbox
        while outbox:
            frames.append(outbox.popleft())
        return frames

    def _close(self, code: int, reason: str) -> None:
        """Send a close frame, wait briefly for the client's reply."""
        self.close_code = code
        if self.disconnect_reason is None:
            self.disconnect_reason = "server_shutdown" if code == CLOSE_GOING_AWAY else f"closed_{code}"
        try:
            # Frames already queued (a final error, a pong) go out before the close.
            pending = self._take_outbox()
            if pending:
                self.sock.send(b"".join(pending))
            self.transport.close(code, reason)
        except (OSError, ConnectionClosed):
            pass  # the client is already gone; nothing to tell it
        else:
            self.transport.join_reader(CLOSE_TIMEOUT)  # the reader ends when the client's close reply arrives

    # -- client frames (docs/protocol.md section 5) ----------------------------------

    def _handle_message(self, message: str | bytes) -> None:
        self.messages_received += 1
        if not self.rate.allow():
            self._hooks.count("rate_limited")
            if self.rate.refused == 1:  # say it once per episode, not once per frame
                self._reply_error(
                    f"too many messages: at most {self.settings.rate_limit:g} per second", code="rate_limited"
                )
            if self.rate.refused > self.rate.burst:
                self.disconnect_reason = "rate_limited"
                self.request_close(CLOSE_POLICY, "rate limit exceeded")
            return
        if not isinstance(message, str):
            self._reply_error("binary frames are not supported; send JSON text", code="bad_request")
            return
        try:
            data = json.loads(message)
        except (ValueError, RecursionError):
            self._reply_error("Invalid JSON format")
            return
        if not isinstance(data, dict):
            self._reply_error(f"expected a JSON object, got {type(data).__name__}", code="bad_request")
            return
        kind = data.get("type")
        if kind == "ping":
            try:
                self.post_json({"type": "pong", "seq": self._hooks.last_seq(), "id": data.get("id")})
            except (TypeError, ValueError):  # an id that is not JSON text (a lone surrogate)
                self._reply_error("ping id must be a JSON value", code="bad_request")
        elif kind == "subscribe":
            self._subscribe(data)
        else:
            self._hooks.message(self, data)

    def _subscribe(self, data: dict[str, Any]) -> None:
        try:
            event_filter = EventFilter(data.get("types"), data.get("session_id"))
        except (TypeError, ValueError) as exc:
            self._reply_error(f"invalid subscribe: {exc}", code="bad_request")
            return
        self.subscription.set_filter(event_filter)
        self.post_json({"type": "subscribed", **event_filter.describe()})

    def _reply_error(self, message: str, code: str | None = None) -> None:
        self.errors += 1
        self._hooks.count("invalid_messages")
        frame: dict[str, Any] = {"type": "error", "message": message, "timestamp": time.time()}
        if code is not None:
            frame["code"] = code
        self.post_json(frame)

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.address}>"
