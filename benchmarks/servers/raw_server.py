"""Not a product: the suite's floor, a minimal RFC 6455 server.

What a server that does nothing but send costs: a listening socket on
127.0.0.1, one thread per connection that reads the HTTP upgrade, answers
``101 Switching Protocols`` with the ``Sec-WebSocket-Accept`` of RFC 6455
section 4.2.2, then only reads and discards what the client sends. ``emit()``
encodes the event once (the same C JSON encoder as the websockets peer),
builds its text frame once and calls ``send(frame)`` once per connected
client, on blocking sockets with ``TCP_NODELAY`` (as every peer has), from
the producer thread.

It has none of what makes a server usable: no validation, sequence or
history, no resume, no answer to pings or close frames (the load client
sends neither), no slow-client policy (a client that stops reading blocks
``emit()`` once its socket buffers fill), no origin or host checks. Its
numbers are the limit the others are measured against, not a competitor.

Run by benchmarks/run.py (peer ``raw``); see common.py for the control
protocol. Clients connect to ``ws://127.0.0.1:PORT/`` (any path).
"""

import base64
import hashlib
import itertools
import json
import logging
import os
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import EVENT_TYPE, SESSION_ID, event_fields, serve

log = logging.getLogger("bench.raw")

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3
_MAX_REQUEST_BYTES = 16 * 1024  # an upgrade request larger than this is refused
_HANDSHAKE_TIMEOUT = 10.0  # seconds to receive the whole upgrade request
_STOP_TIMEOUT = 10.0  # seconds stop() waits for the connection threads


def text_frame(payload):
    """One unmasked, unfragmented text frame (FIN + opcode 1) around ``payload``."""
    size = len(payload)
    if size < 126:
        return struct.pack("!BB", 0x81, size) + payload
    if size < 65536:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


def accept_value(key):
    """``Sec-WebSocket-Accept`` for the client's ``Sec-WebSocket-Key`` (bytes)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def _read_request(sock):
    """The upgrade request's head (bytes up to the blank line). OSError when
    the client closes first or sends more than _MAX_REQUEST_BYTES."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > _MAX_REQUEST_BYTES:
            raise OSError("upgrade request too large")
        chunk = sock.recv(4096)
        if not chunk:
            raise OSError("closed during the handshake")
        data += chunk
    return data.split(b"\r\n\r\n", 1)[0]


def _websocket_key(head):
    """The Sec-WebSocket-Key of a ``GET`` upgrade request, or None."""
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"GET "):
        return None
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if headers.get(b"upgrade", b"").lower() != b"websocket":
        return None
    return headers.get(b"sec-websocket-key") or None


class RawServer:
    """The floor server. ``emit`` is called from one thread only (the producer),
    so each socket has exactly one writer once its handshake is answered."""

    def __init__(self):
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self._dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
        self._stopping = threading.Event()
        # Guards _clients (rebinding, not mutation: emit() reads the tuple without
        # the lock, a snapshot that costs nothing per event) and _threads.
        self._lock = threading.Lock()
        self._clients = ()
        self._threads = set()
        self._acceptor = threading.Thread(target=self._accept_loop, name="raw-accept")

    @property
    def port(self):
        return self._listener.getsockname()[1]

    def client_count(self):
        return len(self._clients)

    def start(self):
        self._acceptor.start()
        return self.port

    def emit(self, event):
        """Encode ``event`` once, frame it once, one ``send`` per client."""
        frame = text_frame(self._dumps(event).encode())
        size = len(frame)
        for sock in self._clients:
            try:
                sent = sock.send(frame)
                if sent != size:  # a short write (its buffer was nearly full): finish it, blocking
                    sock.sendall(frame[sent:])
            except OSError:
                self._forget(sock)  # gone; its connection thread closes it

    def stop(self):
        """Stop accepting, end every connection and join every thread."""
        self._stopping.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
        except OSError:
            pass
        self._listener.close()
        deadline = time.monotonic() + _STOP_TIMEOUT
        self._acceptor.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            clients, threads = self._clients, list(self._threads)
        for sock in clients:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # its connection thread's recv() returns
            except OSError:
                pass
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t for t in threads if t.is_alive()]
        if alive:
            log.warning("%d connection thread(s) still running after %.0f s", len(alive), _STOP_TIMEOUT)

    def _forget(self, sock):
        with self._lock:
            self._clients = tuple(s for s in self._clients if s is not sock)

    def _accept_loop(self):
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return  # the listener is closed: stop() was called
            thread = threading.Thread(target=self._connection, args=(sock,), name="raw-connection")
            with self._lock:  # registered before it starts, so stop() always joins it
                self._threads.add(thread)
            thread.start()

    def _connection(self, sock):
        try:
            sock.settimeout(_HANDSHAKE_TIMEOUT)
            key = _websocket_key(_read_request(sock))
            if key is None:
                sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            sock.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept_value(key) + b"\r\n\r\n"
            )
            sock.settimeout(None)  # blocking from now on, for emit()'s send
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._stopping.is_set():
                    return
                self._clients += (sock,)
            while sock.recv(65536):  # client frames (the load client sends none) are discarded
                pass
        except OSError:
            pass  # the client went away, or stop() shut the socket down
        finally:
            self._forget(sock)
            sock.close()
            with self._lock:
                self._threads.discard(threading.current_thread())


def main():
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    server = RawServer()
    seq = itertools.count(1)

    def emit_one(i, emit_ns):
        server.emit(
            {
                "version": "1.0",
                "seq": next(seq),
                "timestamp": time.time(),
                "type": EVENT_TYPE,
                "session_id": SESSION_ID,
                **event_fields(i, emit_ns),
            }
        )

    serve("raw", server.start, emit_one, server.client_count, server.stop, {"version": "floor"})


if __name__ == "__main__":
    main()
