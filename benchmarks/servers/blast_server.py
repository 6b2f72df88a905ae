"""Not a peer: the load client's calibration target (``run.py --calibrate``).

A minimal WebSocket server that does as little as a server can: each event is
encoded and framed once into a shared list, and one thread per client writes
everything new with a single ``sendall``. Whatever rate the load client
reaches against it is the client's own ceiling, which must sit well above
every real peer's rate for the suite's numbers to mean anything.
"""

import base64
import hashlib
import json
import os
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import EVENT_TYPE, SESSION_ID, event_fields, serve

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455


def _frame(payload):
    size = len(payload)
    if size < 126:
        return struct.pack("!BB", 0x81, size) + payload
    return struct.pack("!BBH", 0x81, 126, size) + payload


def main():
    frames = []  # every event's frame, appended by emit (list.append is atomic)
    changed = threading.Condition()
    clients = []
    stopping = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    dumps = json.JSONEncoder(separators=(",", ":")).encode

    def writer(sock):
        cursor = len(frames)
        try:
            while not stopping.is_set():
                with changed:
                    while len(frames) == cursor and not stopping.is_set():
                        changed.wait(0.5)
                head = len(frames)
                sock.sendall(b"".join(frames[cursor:head]))
                cursor = head
        except OSError:
            pass
        finally:
            clients.remove(sock)
            sock.close()

    def handshake(sock):
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                raise OSError("closed during handshake")
            data += chunk
        key = next(
            line.split(b":", 1)[1].strip()
            for line in data.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        sock.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )

    def accept_loop():
        while not stopping.is_set():
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            try:
                handshake(sock)
            except (OSError, StopIteration):
                sock.close()
                continue
            clients.append(sock)
            threading.Thread(target=writer, args=(sock,), name="blast-writer", daemon=True).start()

    acceptor = threading.Thread(target=accept_loop, name="blast-accept", daemon=True)

    def start():
        acceptor.start()
        return listener.getsockname()[1]

    def emit_one(i, emit_ns):
        event = {
            "version": "1.0",
            "seq": i + 1,
            "timestamp": time.time(),
            "type": EVENT_TYPE,
            "session_id": SESSION_ID,
            **event_fields(i, emit_ns),
        }
        frames.append(_frame(dumps(event).encode()))
        with changed:
            changed.notify_all()

    def stop():
        stopping.set()
        listener.close()
        for sock in list(clients):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    serve("blast", start, emit_one, lambda: len(clients), stop)


if __name__ == "__main__":
    main()
