"""The accept loop: one thread reads every request head, so slow clients hold no thread.

Theory of operation
-------------------

A thread per connection from ``accept()`` on (Werkzeug's threaded server)
lets anyone who opens sockets and sends nothing, or one byte now and then,
hold a thread each: Werkzeug's request timeout applies to each ``recv``, not
to the request, so a trickle keeps a thread forever. :class:`Acceptor` gives a
connection a thread only once its request is in memory.

One thread (the server's ``coda-ws-http:PORT``) runs :meth:`Acceptor.serve_forever`:
a :mod:`selectors` loop over the listening socket, a wake-up socket, and every
accepted connection that has not yet sent

* its complete request head, up to the blank line (``\\r\\n\\r\\n``; a bare
  ``\\n\\n`` too, as :mod:`http.server` accepts it), and
* when the head declares ``Content-Length`` of at most ``max_body_size``
  bytes (and no ``Transfer-Encoding`` and no ``Expect``), that body.

Connections are non-blocking while they are here; every read takes what the
kernel holds (at most 64 KiB) and never waits.

Limits, each counted in :attr:`Acceptor.counters` (the server's
``get_stats()`` and ``/metrics`` show them):

``timeout`` (the server's ``handshake_timeout``)
    A **total** deadline from ``accept()`` for the head and the declared
    body, however the client spreads its bytes. At the deadline the
    connection is closed without an answer (``handshake_timeouts``; a
    browser's speculative preconnection that is never used ends here too).
``max_head_size`` (:data:`MAX_HEAD_SIZE`, 64 KiB)
    A longer head is answered ``431`` with the JSON error body the server
    uses elsewhere, then closed (``oversize_heads``).
``max_pending`` (:data:`MAX_PENDING`, 4 096)
    Connections held at once (including those lingering after a 431). A new
    connection beyond it closes the **oldest** one (``pending_overflows``):
    the oldest is the one most likely to be a slow attacker, and a healthy
    client that just connected still gets in, which refusing the newest
    would not allow (an attacker holding every slot would lock everyone
    out).
``max_buffered`` (:data:`MAX_BUFFERED`, 64 MiB)
    Bytes held for all pending connections together (heads and bodies:
    without it 4 096 connections could hold 4 096 x (64 KiB + ``max_body_size``)).
    Beyond it the oldest pending connections are closed, counted in
    ``pending_overflows`` too.

When a request is complete, the loop takes its socket out of the selector,
makes it blocking again and calls ``handoff(request)`` with a
:class:`PendingRequest`: the socket, the bytes read (head, body, and anything
the client sent after them) and the deadline. The server starts a request
thread there (registered before it starts) that runs Werkzeug's request
handler with :meth:`PendingRequest.make_rfile` as its ``rfile``: the bytes
already read first, then the socket, so Werkzeug parses the request as if it
had read it itself, and ``werkzeug.socket`` stays the real socket.

Requests the loop does not wait for (a chunked body, ``Expect:
100-continue``, a declared body larger than ``max_body_size``, headers it
cannot read unambiguously) are handed over once their head is complete; the
thread reads the rest through the same ``rfile``, which enforces the same
total deadline (at the deadline the body ends early, and Werkzeug answers
or drops the request as for a client that went away). The ``rfile`` never
reads past the end of the request the head declares: after a response
(always ``Connection: close``, as Werkzeug sends it) Werkzeug drains the
connection, and that drain gets the bytes the loop had already read, the rest
of a declared body it did not read (so that a client refused with 413 sees the
answer), and then end of file, whatever the client keeps sending: a client
that keeps its connection open, or trickles a next request into it, holds no
thread either.

Deadlines need no heap: every pending connection's deadline is its accept
time plus the same ``timeout``, so the order of arrival is the order of
deadlines; an :class:`~collections.OrderedDict` in arrival order gives the
nearest deadline (its first entry) and removal in O(1). The select timeout
is the time to that deadline: no polling. Connections lingering after a 431
(reading and discarding until the client closes, so that it reads the answer
instead of a reset) have their own ordered dict with the constant
:data:`LINGER_TIME`.

:meth:`Acceptor.close` (thread-safe, idempotent) writes one byte to the
wake-up socket: the loop returns at once, closing every pending and
lingering connection. The listening socket is not closed here; its owner
closes it after the loop has returned.

Thread-safety: only the loop's thread touches the selector, the sockets and
the ordered dicts. Other threads call :meth:`close`, read :attr:`pending`
(one ``len()``) and copy :attr:`counters` (``dict()`` of a small dict,
atomic under the GIL; only the loop writes it).
"""

import collections
import errno
import io
import json
import logging
import math
import select
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "COUNTERS",
    "LINGER_TIME",
    "MAX_BUFFERED",
    "MAX_HEAD_SIZE",
    "MAX_PENDING",
    "Acceptor",
    "PendingRequest",
]

log = logging.getLogger("coda_ws.server")

#: Largest request head in bytes (request line and headers, blank line included); larger: 431.
MAX_HEAD_SIZE = 64 * 1024
#: Connections that may wait for their request head at once; beyond it the oldest is closed.
MAX_PENDING = 4096
#: Bytes that pending connections may hold together; beyond it the oldest are closed.
MAX_BUFFERED = 64 * 1024 * 1024
#: Seconds a connection answered 431 may linger (its input read and discarded) before it is closed.
LINGER_TIME = 2.0
#: Names of the counters an :class:`Acceptor` keeps (see the module docstring).
COUNTERS = ("handshake_timeouts", "oversize_heads", "pending_overflows")

_RECV_SIZE = 64 * 1024
_ACCEPTS_PER_WAKE = 128  # the listen backlog: then the loop reads pending connections again
_ACCEPT_BACKOFF = 0.1  # seconds without accept() after the process ran out of file descriptors
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_LISTENER = object()
_WAKE = object()


def _json_response(status: int, reason: str, code: str, message: str) -> bytes:
    body = json.dumps({"error": code, "message": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")
    return head + body


class PendingRequest:
    """A connection whose request head (and declared body) has been read.

    Attributes:
        sock: the connection, blocking again.
        address: the client's address, as ``accept()`` returned it.
        data: every byte read from it so far (the head first).
        deadline: ``time.monotonic()`` by which the request must have arrived.
        limit: bytes the request occupies from the start of ``data`` (head
            plus declared body), or None when the head does not say
            (a chunked body): the ``rfile`` reads no further than this.
    """

    __slots__ = ("address", "data", "deadline", "limit", "sock")

    def __init__(
        self, sock: socket.socket, address: Any, data: bytes, deadline: float, limit: int | None
    ) -> None:
        self.sock, self.address, self.data, self.deadline, self.limit = sock, address, data, deadline, limit

    def make_rfile(self) -> io.BufferedReader:
        """A buffered reader giving ``data`` first, then the socket, until
        ``limit`` and ``deadline`` (see :class:`_PrereadStream`)."""
        return io.BufferedReader(_PrereadStream(self))


if hasattr(select, "poll"):

    def _wait_readable(sock: socket.socket, timeout: float) -> bool:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(math.ceil(timeout * 1000)))
else:  # pragma: no cover - Windows: select() takes any socket there

    def _wait_readable(sock: socket.socket, timeout: float) -> bool:
        return bool(select.select([sock], [], [], timeout)[0])


class _PrereadStream(io.RawIOBase):
    """The bytes the accept loop read, then the socket, with a total deadline.

    Reads past ``limit`` (the end of the declared request) return end of
    file at once; reads from the socket wait at most until ``deadline``,
    then return end of file (a body cut short, as when a client goes away).
    Closing it does not close the socket (its handler does).
    """

    def __init__(self, request: PendingRequest) -> None:
        super().__init__()
        self._sock = request.sock
        self._data = memoryview(request.data)
        self._position = 0  # bytes of the request given out so far
        self._deadline = request.deadline
        self._limit = request.limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: "WriteableBuffer") -> int:
        # One view for the copy and the recv (a buffer is not sliceable as such).
        with memoryview(buffer) as view:
            size = len(view)
            if self._position < len(self._data):
                n = min(size, len(self._data) - self._position)
                view[:n] = self._data[self._position : self._position + n]
                self._position += n
                return n
            if self._limit is not None:
                size = min(size, self._limit - self._position)
                if size <= 0:
                    return 0  # past the request: never wait for a next one
            remaining = self._deadline - time.monotonic()
            if remaining <= 0 or not _wait_readable(self._sock, remaining):
                return 0
            n = self._sock.recv_into(view[:size])
        self._position += n
        return n


class _Connection:
    """One accepted connection in the loop (loop thread only)."""

    __slots__ = ("address", "buffer", "deadline", "head_end", "limit", "scanned", "sock")

    def __init__(self, sock: socket.socket, address: Any, deadline: float) -> None:
        self.sock = sock
        self.address = address
        self.deadline = deadline
        self.buffer: bytearray | None = bytearray()  # None once handed over, dropped, or lingering
        self.scanned = 0  # the head's end was not found before this offset
        self.head_end: int | None = None  # offset just after the blank line, once found
        self.limit: int | None = None  # head plus declared body, once the head is read and the body awaited


def _find_head_end(buffer: bytearray, start: int) -> int:
    """Offset just after the first blank line (``\\r\\n`` or ``\\n``) at or after ``start``, or -1."""
    ends = [i + len(sep) for sep in (b"\n\r\n", b"\n\n") if (i := buffer.find(sep, start)) >= 0]
    return min(ends) if ends else -1


def _declared_length(head: bytes) -> tuple[int | None, bool]:
    """``(limit, wait)`` for a complete request head.

    ``limit``: the request's length in bytes from the head's start (head plus
    declared body), or None when the head does not say it unambiguously (a
    chunked body, several different lengths, a folded header). ``wait``: the
    body is a plain ``Content-Length`` one that the loop may wait for (not
    after ``Expect: 100-continue``: the client waits for the handler's
    ``100 Continue`` first). The caller compares the size with ``max_body_size``.
    """
    lengths: list[bytes] = []
    chunked = expect = False
    for line in head.split(b"\n")[1:]:
        if line[:1] in (b" ", b"\t"):
            return None, False  # an obsolete folded header: let Werkzeug read it
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        name = name.strip().lower()
        if name == b"transfer-encoding":
            chunked = True
        elif name == b"expect":
            expect = True
        elif name == b"content-length":
            lengths.append(value.strip())
    if chunked:
        return None, False
    if not lengths:
        return len(head), False
    if len(set(lengths)) != 1 or not lengths[0].isdigit():  # bytes.isdigit(): ASCII digits only
        return None, False
    return len(head) + int(lengths[0]), not expect


class Acceptor:
    """Accepts connections and reads their request heads in one thread.

    Args:
        listener: a listening socket (made non-blocking here; not closed here).
        handoff: ``handoff(request)``, called in the loop's thread with a
            :class:`PendingRequest` once a request has arrived; it must not
            block (start a thread). If it raises, the connection is closed.
        timeout: seconds from accept by which the head and the declared body
            must have arrived (total, not per read).
        max_body_size: largest declared body (bytes) the loop waits for;
            larger ones are handed over once the head is in.
        max_head_size, max_pending, max_buffered: see the module docstring.
        counters: a dict to count in (the server keeps one across restarts);
            a new one by default. Only the loop writes it.

    See the module docstring for the theory of operation.
    """

    def __init__(
        self,
        listener: socket.socket,
        handoff: Callable[[PendingRequest], object],
        *,
        timeout: float,
        max_body_size: int,
        max_head_size: int | None = None,
        max_pending: int | None = None,
        max_buffered: int | None = None,
        counters: dict[str, int] | None = None,
    ) -> None:
        self._listener = listener
        self._handoff = handoff
        self._timeout = float(timeout)
        self._max_body_size = max_body_size
        self._max_head_size = MAX_HEAD_SIZE if max_head_size is None else max_head_size
        self._max_pending = MAX_PENDING if max_pending is None else max_pending
        self._max_buffered = MAX_BUFFERED if max_buffered is None else max_buffered
        self.counters = counters if counters is not None else {}
        for name in COUNTERS:
            self.counters.setdefault(name, 0)
        # Made here, not in the loop's thread: every file descriptor exists once start() returns.
        self._selector = selectors.DefaultSelector()
        # Loop thread only: pending and lingering connections by fd, oldest (nearest deadline) first.
        self._pending: collections.OrderedDict[int, _Connection] = collections.OrderedDict()
        self._lingering: collections.OrderedDict[int, _Connection] = collections.OrderedDict()
        self._buffered = 0  # bytes held in the pending connections' buffers
        self._accept_paused_until: float | None = None
        self._closing = False
        self._watcher: socket.socket
        self._notifier: socket.socket | None
        self._watcher, self._notifier = socket.socketpair()
        self._notify_lock = threading.Lock()  # guards _notifier: close() from several threads at once
        self._too_large = _json_response(
            431,
            "Request Header Fields Too Large",
            "headers_too_large",
            f"the request head is larger than {self._max_head_size} bytes",
        )

    @property
    def pending(self) -> int:
        """Connections waiting for their request head now (lingering ones included)."""
        return len(self._pending) + len(self._lingering)

    def close(self) -> None:
        """Make :meth:`serve_forever` close every pending connection and return, at once.

        Thread-safe and idempotent; does not wait (join the loop's thread for that).
        """
        self._closing = True
        with self._notify_lock:
            if self._notifier is not None:
                try:
                    self._notifier.send(b"x")
                except OSError:
                    pass  # the loop has ended already
                self._notifier.close()
                self._notifier = None

    def serve_forever(self) -> None:
        """Run the loop until :meth:`close`; closes every pending connection on the way out."""
        selector = self._selector
        try:
            self._listener.setblocking(False)
            selector.register(self._listener, selectors.EVENT_READ, _LISTENER)
            selector.register(self._watcher, selectors.EVENT_READ, _WAKE)
            while not self._closing:
                for key, _ in selector.select(self._select_timeout()):
                    if key.data is _LISTENER:
                        self._accept()
                    elif key.data is not _WAKE:  # the wake-up byte: _closing ends the loop
                        conn = key.data
                        try:
                            self._read(conn)
                        except Exception:  # a bug must cost one connection, not the accept loop
                            log.exception("reading the request of %s failed; closing it", _peer(conn))
                            self._drop(conn)
                self._expire()
        finally:
            for table in (self._pending, self._lingering):
                for conn in list(table.values()):
                    self._drop(conn)
            self._buffered = 0
            selector.close()
            self._watcher.close()

    # -- the loop's steps -------------------------------------------------------------

    def _select_timeout(self) -> float | None:
        """Seconds to the nearest deadline (or to accepting again); None: nothing to wait for."""
        deadlines = [table[next(iter(table))].deadline for table in (self._pending, self._lingering) if table]
        if self._accept_paused_until is not None:
            deadlines.append(self._accept_paused_until)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _expire(self) -> None:
        now = time.monotonic()
        while self._pending:
            conn = self._pending[next(iter(self._pending))]
            if conn.deadline > now:
                break
            self.counters["handshake_timeouts"] += 1
            log.debug("closed %s: no complete request within %g s", _peer(conn), self._timeout)
            self._drop(conn)
        while self._lingering:
            conn = self._lingering[next(iter(self._lingering))]
            if conn.deadline > now:
                break
            self._drop(conn)
        if self._accept_paused_until is not None and self._accept_paused_until <= now:
            self._accept_paused_until = None
            self._selector.register(self._listener, selectors.EVENT_READ, _LISTENER)

    def _accept(self) -> None:
        for _ in range(_ACCEPTS_PER_WAKE):
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                # The backlog stays readable: without a pause this loop would spin.
                log.warning("accept() failed (%s); pausing accept for %g s", exc, _ACCEPT_BACKOFF)
                self._selector.unregister(self._listener)
                self._accept_paused_until = time.monotonic() + _ACCEPT_BACKOFF
                return
            sock.setblocking(False)
            while self.pending >= self._max_pending:
                oldest = self._lingering or self._pending
                victim = oldest[next(iter(oldest))]
                if oldest is self._pending:
                    self.counters["pending_overflows"] += 1
                    log.debug(
                        "closed %s: %d connections waiting for their request (max)",
                        _peer(victim),
                        self._max_pending,
                    )
                self._drop(victim)
            conn = _Connection(sock, address, time.monotonic() + self._timeout)
            self._pending[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: _Connection) -> None:
        if conn.sock.fileno() == -1:
            return  # closed earlier in this batch of events (its fd may be another connection's now)
        try:
            data = conn.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)  # reset by the client
            return
        if not data:
            self._drop(conn)  # the client went away before its request was complete
            return
        if conn.buffer is None:
            return  # lingering after a 431: read and discard
        conn.buffer += data
        self._buffered += len(data)
        if self._buffered > self._max_buffered:
            self._shed(conn)
            if conn.buffer is None:
                return
        if conn.head_end is None:
            end = _find_head_end(conn.buffer, conn.scanned)
            if end < 0:
                if len(conn.buffer) > self._max_head_size:
                    self._refuse_oversize(conn)
                else:
                    conn.scanned = max(0, len(conn.buffer) - 2)
                return
            if end > self._max_head_size:
                self._refuse_oversize(conn)
                return
            conn.head_end = end
            limit, wait = _declared_length(bytes(conn.buffer[:end]))
            conn.limit = limit
            if not wait or limit is None or limit - end > self._max_body_size:  # wait: limit is a number
                self._hand_over(conn)
                return
        limit = conn.limit  # a number here: the head is in and its declared body awaited
        if limit is not None and len(conn.buffer) >= limit:
            self._hand_over(conn)

    def _shed(self, current: _Connection) -> None:
        """Over ``max_buffered``: close the oldest pending connections until under it."""
        while self._buffered > self._max_buffered and self._pending:
            victim = self._pending[next(iter(self._pending))]
            self.counters["pending_overflows"] += 1
            log.debug(
                "closed %s: pending requests hold more than %d bytes", _peer(victim), self._max_buffered
            )
            self._drop(victim)
            if victim is current:
                return

    def _refuse_oversize(self, conn: _Connection) -> None:
        self.counters["oversize_heads"] += 1
        log.info("refused %s: request head larger than %d bytes (431)", _peer(conn), self._max_head_size)
        self._forget(conn)
        conn.buffer = None
        try:
            conn.sock.send(self._too_large)  # a fresh socket's send buffer takes it whole
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close_socket(conn)
            return
        # Linger: read and discard until the client closes, so that it reads the
        # answer; closing with unread input would send it a reset instead.
        conn.deadline = time.monotonic() + LINGER_TIME
        self._lingering[conn.sock.fileno()] = conn
        self._selector.register(conn.sock, selectors.EVENT_READ, conn)

    def _hand_over(self, conn: _Connection) -> None:
        self._forget(conn)
        # A pending connection (the caller's): its buffer is not None.
        data, conn.buffer = bytes(cast(bytearray, conn.buffer)), None
        try:
            conn.sock.setblocking(True)
            self._handoff(PendingRequest(conn.sock, conn.address, data, conn.deadline, conn.limit))
        except Exception:
            log.exception("could not hand the request of %s to a thread; closing it", _peer(conn))
            self._close_socket(conn)

    # -- bookkeeping -----------------------------------------------------------------

    def _forget(self, conn: _Connection) -> None:
        """Take ``conn`` out of the selector and the tables (its socket stays open)."""
        fd = conn.sock.fileno()
        table = self._pending if conn.buffer is not None else self._lingering
        table.pop(fd, None)
        if conn.buffer is not None:
            self._buffered -= len(conn.buffer)
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass

    def _drop(self, conn: _Connection) -> None:
        self._forget(conn)
        conn.buffer = None
        self._close_socket(conn)

    @staticmethod
    def _close_socket(conn: _Connection) -> None:
        try:
            conn.sock.close()
        except OSError:
            pass


def _peer(conn: _Connection) -> str:
    address = conn.address
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)
