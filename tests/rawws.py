"""A deliberately minimal WebSocket client over a raw socket, for tests that need
control no library gives: a client that stops reading, a small receive buffer,
forged headers, fragmented or malformed frames, abrupt resets."""

import base64
import json
import os
import socket
import struct
import time

__all__ = ["RawClient", "masked_frame"]


def masked_frame(opcode, payload, fin=True, rsv=0, mask=None):
    """A client frame (clients must mask) with ``payload`` bytes (random mask by default)."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", first, 0x80 | size)
    elif size < 0x10000:
        header = struct.pack("!BBH", first, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, size)
    mask = os.urandom(4) if mask is None else mask
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


class RawClient:
    """One WebSocket connection on a plain socket.

    Args:
        port: the server's port on 127.0.0.1.
        path: request target, with query string.
        headers: extra request headers (name, value) pairs.
        rcvbuf: SO_RCVBUF to set before connecting (a small one makes a
            client that stops reading fill up quickly).
        host: the Host header (default ``127.0.0.1:PORT``).
        source: the local address to connect from (e.g. ``127.0.0.2``, another
            loopback address, to look like another peer).
    """

    def __init__(self, port, path="/", headers=(), rcvbuf=None, timeout=5.0, host=None, source=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source is not None:
            self.sock.bind((source, 0))
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host or f'127.0.0.1:{port}'}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        lines += [f"{name}: {value}" for name, value in headers]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self._buffer = b""
        head = self._read_until(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {}
        for line in header_lines:
            if ":" in line:
                name, value = line.split(":", 1)
                self.headers[name.strip().lower()] = value.strip()
        self.body = b""
        if self.status != 101:
            length = int(self.headers.get("content-length", "0"))
            while len(self._buffer) < length:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self._buffer += chunk
            self.body = self._buffer[:length]

    def _read_until(self, marker):
        while marker not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed during handshake")
            self._buffer += chunk
        head, self._buffer = self._buffer.split(marker, 1)
        return head

    def _read_exact(self, size, deadline):
        while len(self._buffer) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no complete frame in time")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("connection closed")
            self._buffer += chunk
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def read_frame(self, timeout=5.0):
        """The next frame as ``(opcode, payload bytes)``."""
        deadline = time.monotonic() + timeout
        first, second = self._read_exact(2, deadline)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", self._read_exact(2, deadline))
        elif size == 127:
            (size,) = struct.unpack("!Q", self._read_exact(8, deadline))
        if second & 0x80:
            raise AssertionError("server frames must not be masked")
        return first & 0x0F, self._read_exact(size, deadline)

    def read_json(self, timeout=5.0):
        """The next text frame, decoded (fails on any other frame)."""
        opcode, payload = self.read_frame(timeout)
        if opcode != 0x1:
            raise AssertionError(f"expected a text frame, got opcode {opcode} {payload[:40]!r}")
        return json.loads(payload)

    def read_until_close(self, timeout=5.0):
        """Read frames until a close frame; returns (decoded text frames, close code)."""
        texts = []
        deadline = time.monotonic() + timeout
        while True:
            opcode, payload = self.read_frame(max(0.0, deadline - time.monotonic()))
            if opcode == 0x1:
                texts.append(json.loads(payload))
            elif opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                return texts, code

    def send(self, opcode, payload, **kwargs):
        self.sock.sendall(masked_frame(opcode, payload, **kwargs))

    def send_text(self, text):
        self.send(0x1, text)

    def send_close(self, code=1000):
        self.send(0x8, struct.pack("!H", code))

    def reset(self):
        """Drop the connection with a TCP reset (no close frame)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self):
        self.sock.close()
