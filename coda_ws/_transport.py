"""The boundary around simple-websocket's and wsproto's internals (server and client).

simple-websocket's public API is ``receive()``/``send()``/``close()``, each
blocking and meant for one thread. coda_ws drives a connection from two
threads without letting either block on the other (see
:mod:`coda_ws.connection`), and for that it needs a few attributes the
library keeps but does not document: the list of complete messages its reader
thread appends to (``input_buffer``), the keepalive flag (``pong_received``),
the size of a message being received (``incoming_message_len``) and the
``connected`` flag. Every such use is in this module, nowhere else, so an
upgrade that changes them breaks one file, and
``tests/unit/test_boundaries.py`` names what changed. The version range is
pinned in ``setup.cfg`` (``simple-websocket>=1.0,<2``).
"""

import functools
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import simple_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    RejectConnection,
    RejectData,
    Request,
)

from .client_core import handshake_rejection

__all__ = ["REQUIRED_ATTRIBUTES", "ClientTransport", "ConnectionClosed", "HandshakeError", "ServerTransport"]

_MAX_REJECT_BODY = 64 * 1024

#: simple-websocket's exception for a connection that is already closed.
ConnectionClosed = simple_websocket.ConnectionClosed
#: simple-websocket's exception for a handshake that did not complete.
HandshakeError = simple_websocket.ConnectionError

#: The undocumented attributes of ``simple_websocket.Server`` this module uses.
REQUIRED_ATTRIBUTES = (
    "input_buffer",
    "pong_received",
    "incoming_message_len",
    "max_message_size",
    "connected",
    "close_reason",
    "thread",
    "subprotocol",
)

#: The close code simple-websocket records when the peer sent no close frame.
_NO_STATUS = 1005


class ServerTransport:
    """One accepted WebSocket connection: simple-websocket's ``Server`` made
    in a Flask view, and the few of its internals coda_ws reads.

    Creating it performs the handshake (writing the ``101`` response through
    ``environ["werkzeug.socket"]``) and starts the reader thread, named
    ``reader_name``, which appends complete messages for :meth:`take_messages`
    and sets ``wake`` whenever one arrives or the connection ends.

    Args:
        environ: the request's WSGI environ (its ``werkzeug.socket`` is the
            socket the transport reads and writes; pass a guarded one).
        subprotocols: the subprotocols the server may select.
        max_message_size: the largest client message in bytes (larger: the
            reader ends the connection; :attr:`message_too_big` tells).
        reader_name: the reader thread's name.
        wake: the ``threading.Event`` the reader sets.

    Raises:
        ConnectionError (or OSError): the handshake failed.
    """

    def __init__(
        self,
        environ: Mapping[str, Any],
        *,
        subprotocols: list[str],
        max_message_size: int,
        reader_name: str,
        wake: threading.Event,
    ) -> None:
        # daemon: Werkzeug's request threads are daemons too; the server joins
        # every reader it starts (Connection.end) before stop() returns.
        thread_class = functools.partial(threading.Thread, name=reader_name, daemon=True)
        self._ws = simple_websocket.Server(
            dict(environ),
            subprotocols=subprotocols,
            max_message_size=max_message_size,
            thread_class=thread_class,
            event_class=lambda: wake,
        )

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol selected in the handshake, or None."""
        subprotocol: str | None = self._ws.subprotocol
        return subprotocol

    @property
    def connected(self) -> bool:
        """False once the reader saw the connection end (or a close frame)."""
        return bool(self._ws.connected)

    def take_messages(self) -> list[str | bytes]:
        """The complete messages received since the last call, oldest first.

        Only the connection's writer thread calls this; the reader appends
        concurrently (list ``append`` and ``pop(0)`` are atomic)."""
        inbox = self._ws.input_buffer
        messages: list[str | bytes] = []
        while inbox:
            messages.append(inbox.pop(0))
        return messages

    def expect_pong(self) -> None:
        """Forget earlier pongs: :attr:`pong_received` turns True at the next one."""
        self._ws.pong_received = False

    @property
    def pong_received(self) -> bool:
        """True once a pong arrived since :meth:`expect_pong`."""
        return bool(self._ws.pong_received)

    @property
    def message_too_big(self) -> bool:
        """True when the reader ended because a message exceeded ``max_message_size``."""
        ws = self._ws
        return bool(ws.max_message_size) and ws.incoming_message_len > ws.max_message_size

    @property
    def peer_close_code(self) -> int | None:
        """The code of the close frame the peer sent, or None when it sent none."""
        code = self._ws.close_reason
        return None if code is None or code == _NO_STATUS else int(code)

    def close(self, code: int, reason: str) -> None:
        """Write a close frame (the reader ends when the peer answers).

        Raises:
            OSError or ConnectionClosed: the connection is gone already.
        """
        self._ws.close(code, reason)

    def mark_closed(self) -> None:
        """Tell the reader to stop at its next wake-up (the socket is being shut down)."""
        self._ws.connected = False

    def join_reader(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the reader thread; True when it ended."""
        thread = self._ws.thread
        thread.join(timeout)
        return not thread.is_alive()


class _ClientSocket:
    """The client's socket, as simple-websocket sees it.

    ``send`` holds a lock, so the reader thread's pongs and the connection
    thread's frames never interleave. ``close`` (simple-websocket calls it as
    the very last step of its reader thread) does not close the file
    descriptor: the connection thread closes it after joining the reader, so
    the number cannot be reused while a thread still reads from it. It wakes
    the connection thread instead, after the reader has marked the
    connection closed, so the end of a connection is never missed.
    """

    def __init__(self, sock: socket.socket, on_reader_done: Callable[[], object]) -> None:
        self._sock = sock
        self._write_lock = threading.Lock()  # one writer at a time on the socket
        self._on_reader_done = on_reader_done

    def fileno(self) -> int:
        return self._sock.fileno()

    def recv(self, size: int) -> bytes:
        return self._sock.recv(size)

    def send(self, data: bytes) -> int:
        with self._write_lock:
            self._sock.sendall(data)
        return len(data)

    sendall = send

    def close(self) -> None:
        self._on_reader_done()


class ClientTransport(simple_websocket.Client):  # type: ignore[misc]  # simple-websocket ships no type information
    """simple-websocket's client, connected and handshaken within a deadline.

    Built on ``simple_websocket.Client`` (its reader thread, ``receive`` and
    frame handling), but ``Client.connect`` is not used, for four reasons
    found here (simple-websocket 1.1):

    * it connects and reads the handshake answer without any timeout, so a
      server that accepts TCP and never answers hangs the caller for good,
      and ``close()`` cannot interrupt it;
    * frames that arrive in the same read as the ``101`` answer stay in
      wsproto's buffer until more data comes (so the ``hello`` frame could
      wait until the next event);
    * when the server's close frame comes in that same read, it raises
      ``ConnectionError`` and the events before the close are lost;
    * a refusal only gives the status code, not the server's explanation.

    Here the TCP connect is bounded by ``timeout``, the socket is handed to
    ``on_socket`` before the handshake (so the owner can shut it down), the
    handshake shares the same deadline, frames bundled with the answer are
    processed at once (a bundled close frame included), and a refusal raises
    :class:`~coda_ws.errors.HandshakeRejected` with the server's JSON explanation.

    The client's connection thread reads the rest of simple-websocket's state
    through the methods below, never through its attributes.
    """

    # simple-websocket's attributes used here (set by its Base.__init__ and reader thread).
    ws: WSConnection
    sock: _ClientSocket
    thread: threading.Thread
    connected: bool
    subprotocol: str | None
    receive_bytes: int
    input_buffer: list[str | bytes]
    incoming_message_len: int
    close_reason: int | None
    close_message: str | None

    def __init__(
        self,
        host: str,
        port: int,
        target: str,
        *,
        secure: bool,
        subprotocols: Iterable[str],
        headers: Iterable[tuple[str, str]],
        timeout: float,
        on_socket: Callable[[socket.socket], object],
        on_reader_done: Callable[[], object],
        reader_name: str,
        wake: threading.Event,
        ping_interval: float | None,
        max_message_size: int | None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        # Long: the client's connect and handshake over simple-websocket's internals, step by step,
        # in the one module allowed to touch them
        self.host = host
        self.port = port
        self.path = target
        self.subprotocols = list(subprotocols)
        self._extra_headers = list(headers)
        self._deadline = time.monotonic() + timeout
        self._host_header = f"[{host}]" if ":" in host else host
        if port != (443 if secure else 80):
            self._host_header += f":{port}"
        try:
            raw = socket.create_connection((host, port), timeout=timeout)
        except TimeoutError:
            raise TimeoutError(f"no TCP connection within the connect timeout ({timeout:g} s)") from None
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if secure:
                context = ssl_context or ssl.create_default_context()
                raw = context.wrap_socket(raw, server_hostname=host)
            self.raw_socket = raw
            self.accepted = False
            on_socket(raw)
            thread_class = functools.partial(threading.Thread, name=reader_name, daemon=True)
            try:
                # Base.__init__ (skipping Client.__init__, which would connect
                # again without a timeout) runs handshake() and starts the reader.
                simple_websocket.ws.Base.__init__(
                    self,
                    _ClientSocket(raw, on_reader_done),
                    connection_type=ConnectionType.CLIENT,
                    receive_bytes=65536,
                    ping_interval=ping_interval,
                    max_message_size=max_message_size,
                    thread_class=thread_class,
                    event_class=lambda: wake,
                )
            except simple_websocket.ConnectionError:
                if not self.accepted:
                    raise
                # The server accepted and closed in the same breath: its frames
                # and its close frame came with the 101 answer. Base refuses a
                # connection that is already closed; keep what the server sent
                # and stand in for the reader, which would only report the end.
                self.thread = thread_class(target=self.sock.close)
                self.thread.start()
        except BaseException:
            raw.close()
            raise

    def take_messages(self) -> list[str | bytes]:
        """The complete messages received since the last call, oldest first."""
        inbox = self.input_buffer
        messages: list[str | bytes] = []
        while inbox:
            messages.append(inbox.pop(0))
        return messages

    def message_too_big(self, limit: int | None) -> bool:
        """True when the reader ended on a message larger than ``limit`` bytes."""
        if not limit:
            return False
        return self.incoming_message_len > limit

    def peer_close(self) -> tuple[int, str]:
        """``(code, reason)`` of the close frame the server sent (code 1005 when it sent none)."""
        code = int(self.close_reason) if self.close_reason is not None else 1005
        return code, self.close_message or ""

    def remote_closing(self) -> bool:
        """True when the server sent a close frame that was not answered yet."""
        return self.ws.state == ConnectionState.REMOTE_CLOSING

    def send_close(self, code: int) -> None:
        """Answer or start the closing handshake with ``code`` (nothing when it is over already).

        Raises:
            OSError or ProtocolError: the connection is gone.
        """
        if self.ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            self.sock.send(self.ws.send(CloseConnection(code=int(code))))

    def join_reader(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the reader thread; True when it ended."""
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def handshake(self) -> None:
        # As bytes, as wsproto declares them (h11 would encode str headers as ASCII the same way).
        headers = [(name.encode("ascii"), value.encode("ascii")) for name, value in self._extra_headers]
        request = Request(
            host=self._host_header, target=self.path, subprotocols=self.subprotocols, extra_headers=headers
        )
        self.sock.send(self.ws.send(request))
        raw = self.raw_socket
        rejection: RejectConnection | None = None
        body = bytearray()
        while True:
            remaining = self._deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                raw.settimeout(remaining)
                data = self.sock.recv(self.receive_bytes)
            except TimeoutError:
                raise TimeoutError("no WebSocket handshake answer within the connect timeout") from None
            if not data:
                if rejection is not None:
                    raise handshake_rejection(rejection.status_code, body)
                raise ConnectionResetError("the server closed the connection during the WebSocket handshake")
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    raw.settimeout(None)  # from now on the reader thread blocks in recv
                    self.subprotocol = event.subprotocol
                    self.accepted = self.connected = True
                    # Frames that came in the same read as the answer: handle
                    # them now, or they would wait for the next read.
                    self.connected = self._handle_events()
                    return
                if isinstance(event, RejectConnection):
                    rejection = event
                    if not event.has_body:
                        raise handshake_rejection(rejection.status_code, body)
                elif isinstance(event, RejectData):
                    if len(body) < _MAX_REJECT_BODY:
                        body += event.data[: _MAX_REJECT_BODY - len(body)]
                    if event.body_finished:
                        # wsproto sends RejectData only after RejectConnection.
                        raise handshake_rejection(cast(RejectConnection, rejection).status_code, body)
