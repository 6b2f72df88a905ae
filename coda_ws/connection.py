"""One WebSocket client: its socket, its single writer, and what it has sent us.

Theory of operation
-------------------

Each connection has two threads, and the dispatcher may write for it:

* the **reader**: simple-websocket's own thread. It parses incoming frames,
  answers protocol pings and close frames, and appends complete messages to
  ``ws.input_buffer``; coda_ws gives it the connection's ``wake`` event, so
  every message (and the end of the connection) wakes the writer.
* the **writer**: the Werkzeug thread that accepted the request. It handles
  incoming messages, takes new entries from the stream through the
  connection's :class:`~coda_ws.bus.Subscription`, and writes everything that
  is waiting (control frames and event frames) with one ``send``.
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
import ctypes
import errno
import logging
import os
import select
import socket
import threading
import time

__all__ = ["GuardedSocket", "WriteTimeout", "Connection", "RateLimiter"]

log = logging.getLogger("coda_ws.connection")

_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
#: The most the dispatcher writes for one client at once (Connection.push).
#: More than that is pressure: the client's writer thread takes it, batching
#: with blocking sends (principle 6), and the dispatcher moves on. In calm a
#: client gets one or a few events per batch, far below this.
DIRECT_WRITE_BYTES = 16 * 1024
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
#: Whether the dispatcher may write for clients at all: only where a send can
#: be made non-blocking per call (MSG_DONTWAIT); elsewhere writers do it all.
DIRECT_WRITES = bool(_DONTWAIT)


def _send_holding_the_gil():
    """libc's ``send(fd, buffer, length, flags)``, called without releasing
    the GIL, or None where ctypes cannot reach it.

    Python's ``socket.send`` releases the GIL around the system call. For the
    dispatcher's non-blocking sends of a few hundred bytes that is all cost:
    while any other Python thread is busy (a pipeline thread computing), each
    release hands it the GIL, and the dispatcher gets it back only when that
    thread's switch interval (5 ms) runs out. With 100 clients that made one
    event's fan-out take up to half a second (benchmarks/README.md, "GIL
    convoy"). A non-blocking send never waits, so holding the GIL through it
    is safe; it also means no other thread can close the socket in between
    reading its file descriptor and the call.
    """
    try:
        function = ctypes.PyDLL(None, use_errno=True).send
    except (OSError, AttributeError):  # no libc symbols in this process (Windows)
        return None
    # No argtypes: converting through them cost 0.4 µs a call. Callers pass the
    # fd and flags as ints, the buffer as bytes, and the length as c_size_t.
    function.restype = ctypes.c_ssize_t
    return function


_libc_send = _send_holding_the_gil() if _DONTWAIT else None
_WOULD_BLOCK = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR}
_size_t = ctypes.c_size_t


def _send_now(sock, data):
    """One non-blocking send of ``data`` (bytes, not a memoryview): how many
    bytes were written (0 when the peer's buffers are full). Raises OSError
    when the connection is gone."""
    if _libc_send is None:
        try:
            return sock.send(data, _DONTWAIT)
        except BlockingIOError:
            return 0
    sent = _libc_send(sock.fileno(), data, _size_t(len(data)), _DONTWAIT | _NOSIGNAL)
    if sent >= 0:
        return sent
    code = ctypes.get_errno()
    if code in _WOULD_BLOCK:
        return 0
    raise OSError(code, os.strerror(code))


class WriteTimeout(OSError):
    """A client accepted no data for longer than the write timeout."""


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

    def __init__(self, sock, write_timeout=None):
        self._sock = sock
        self._write_lock = threading.Lock()  # one writer at a time on this socket
        self._unsent = None  # memoryview: the rest of a message try_send could not finish
        self._held = None  # a list of writes kept by hold() until release(), else None
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

    @property
    def has_unsent(self):
        """True while part of a message written by :meth:`try_send` is waiting."""
        return self._unsent is not None

    def hold(self):
        """Keep every write from now on in memory until :meth:`release`
        (the server registers a client before its handshake response leaves)."""
        with self._write_lock:
            if self._held is None:
                self._held = []

    def release(self):
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

    def send(self, data):
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

    def try_send(self, data):
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
            sent = _send_now(self._sock, data)
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
        self.peer = None  # the peer's IP address (per-address limit), set by the server
        self._outbox = collections.deque()  # control frames waiting for the writer
        self._closing = None  # (code, reason, after) requested by another thread
        #: Held by whoever writes for this client: the writer thread while it
        #: is awake, the dispatcher during :meth:`push` (see the module doc).
        self.pen = threading.Lock()

    @property
    def wake(self):
        return self.subscription.wake

    def post(self, frame):
        """Queue a control frame for the writer (thread-safe)."""
        self._outbox.append(frame)
        self.wake.set()

    def push(self):
        """Write the events waiting for this client now, from the calling
        thread (the dispatcher, right after it published them), if that can
        be done without waiting; otherwise wake the writer. Never blocks.

        The server makes this the subscription's ``notify`` once the writer
        runs and holds the pen, so nothing is written before the handshake
        and the first frames (hello, replay) are out.
        """
        pen = self.pen
        if self._outbox or self._closing is not None or not pen.acquire(blocking=False):
            self.wake.set()  # the writer is awake, or has work only it can do
            return
        try:
            done = self._write_new_events()
        finally:
            pen.release()
        if not done:
            self.wake.set()

    def _write_new_events(self):
        """The dispatcher's share of the writer's loop, under the pen: True
        when nothing is left for the writer to do."""
        sub = self.subscription
        sock = self.sock
        if sub.overflowed or self._outbox or sock.has_unsent:
            return False
        entries, position = sub.read(max_bytes=DIRECT_WRITE_BYTES)
        if entries:
            if self.redact:
                frames = [entry.redacted_frame() for entry in entries]
            else:
                frames = [entry.frame for entry in entries]
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
        return not sock.has_unsent and sub.lag == 0

    def request_close(self, code, reason, after=0):
        """Ask the writer to close the connection with ``code`` (thread-safe),
        once every event up to seq ``after`` is written (0: at once)."""
        if self._closing is None:
            self._closing = (code, reason, after)
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
