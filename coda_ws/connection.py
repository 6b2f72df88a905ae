"""One WebSocket client: its socket, its single writer, and what it has sent us.

Theory of operation
-------------------

Each connection has two threads:

* the **reader**: simple-websocket's own thread. It parses incoming frames,
  answers protocol pings and close frames, and appends complete messages to
  ``ws.input_buffer``; coda_ws gives it the connection's ``wake`` event, so
  every message (and the end of the connection) wakes the writer.
* the **writer**: the Werkzeug thread that accepted the request. It handles
  incoming messages, takes new entries from the stream through the
  connection's :class:`~coda_ws.bus.Subscription`, and writes everything that
  is waiting (control frames and event frames) with one ``send``.

Every write to the socket, including the reader's pongs and close replies,
goes through :class:`GuardedSocket`, which serializes writers and never
blocks longer than the write timeout: simple-websocket's ``send()`` takes no
lock (principle 4), and a client that stops reading must not hold a thread
forever.
"""

import collections
import logging
import select
import socket
import threading
import time

__all__ = ["GuardedSocket", "WriteTimeout", "Connection", "RateLimiter"]

log = logging.getLogger("coda_ws.connection")

_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


class WriteTimeout(OSError):
    """A client accepted no data for longer than the write timeout."""


class GuardedSocket:
    """A socket wrapper that serializes writes and bounds how long one may block.

    ``recv`` passes through (only the reader thread calls it). ``send`` writes
    everything or raises: ``WriteTimeout`` when the peer accepts nothing for
    ``write_timeout`` seconds (None: wait as long as it takes), ``OSError``
    when the connection is gone. ``close`` (called by simple-websocket when
    its reader ends) only marks the socket closed: the file descriptor belongs
    to Werkzeug, which closes it after the request; ``shutdown`` ends the
    connection for both threads at once.
    """

    def __init__(self, sock, write_timeout=None):
        self._sock = sock
        self._write_lock = threading.Lock()  # one writer at a time on this socket
        self.write_timeout = write_timeout
        self.closed = False
        self.on_close = None  # called once the reader thread is done with the socket
        self.write_calls = 0  # system calls that wrote data (batching is visible here)
        #: monotonic time since which a write has waited for the peer to read, else None
        self.blocked_since = None

    def fileno(self):
        return self._sock.fileno()

    def recv(self, size):
        return self._sock.recv(size)

    def send(self, data):
        """Write all of ``data``; returns its length (simple-websocket's contract)."""
        with self._write_lock:
            try:
                self._send_all(data)
            finally:
                self.blocked_since = None
        return len(data)

    sendall = send

    def _send_all(self, data):
        sock = self._sock
        view = memoryview(data)
        deadline = None
        while view:
            try:
                sent = sock.send(view, _DONTWAIT)
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

    def shutdown(self):
        """End the connection in both directions (wakes a blocked reader and writer)."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # already shut down or reset by the peer: nothing left to end
            pass

    def close(self):
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

    def __init__(self, rate, burst):
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._stamp = time.monotonic()
        self.refused = 0  # frames refused since the client was last within its rate

    def allow(self):
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


class Connection:
    """A connected client, as the server sees it.

    Attributes (read-only for users):
        id: the client id (a string).
        address: the peer address (``"host:port"``).
        user_agent: the ``User-Agent`` header, or ``""``.
        connected_at: Unix time of the connection.
        v1: True for a v1 session (hello, resume, control replies).
        subscription: its position in the stream and its filter.
    """

    def __init__(self, client_id, ws, sock, subscription, address, user_agent, v1, scopes, rate_limit):
        self.id = client_id
        self.ws = ws
        self.sock = sock
        self.subscription = subscription
        self.address = address
        self.user_agent = user_agent
        self.v1 = v1
        self.scopes = scopes
        self.redact = "read:content" not in scopes  # content fields go out as null
        self.rate = RateLimiter(rate_limit, burst=2 * rate_limit)
        self.connected_at = time.time()
        self.frames_sent = 0  # event frames
        self.messages_received = 0
        self.errors = 0
        self.last_rtt = None
        self.close_code = None
        self.disconnect_reason = None
        self._outbox = collections.deque()  # control frames waiting for the writer
        self._closing = None  # (code, reason) requested by another thread

    @property
    def wake(self):
        return self.subscription.wake

    def post(self, frame):
        """Queue a control frame for the writer (thread-safe)."""
        self._outbox.append(frame)
        self.wake.set()

    def request_close(self, code, reason):
        """Ask the writer to close the connection with ``code`` (thread-safe)."""
        if self._closing is None:
            self._closing = (code, reason)
        self.wake.set()

    @property
    def queue_depth(self):
        """Frames waiting in this client's writer: control frames queued plus
        the event frames taken from the stream and not yet accepted by the
        socket (a client that stops reading keeps it above 0). Its backlog in
        the stream is ``subscription.lag``. Safe to read from any thread."""
        return len(self._outbox) + self.subscription.in_flight

    def take_outbox(self):
        frames = []
        outbox = self._outbox
        while outbox:
            frames.append(outbox.popleft())
        return frames

    def info(self):
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

    def __repr__(self):
        return f"<Connection {self.id} {self.address}>"
