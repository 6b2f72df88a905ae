"""WebSocket frames built once and written many times (RFC 6455, server side).

Server-to-client frames are never masked, so the bytes of a frame are the same
for every recipient: coda_ws builds each event's frame once, in the
dispatcher, and every writer sends those very bytes.
"""

import struct

__all__ = ["OP_BINARY", "OP_CLOSE", "OP_PING", "OP_PONG", "OP_TEXT", "close_frame", "frame", "text_frame"]

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked frame carrying ``payload`` (bytes)."""
    first = 0x80 | opcode
    size = len(payload)
    if size < 126:
        return _SHORT.pack(first, size) + payload
    if size < 0x10000:
        return _MEDIUM.pack(first, 126, size) + payload
    return _LONG.pack(first, 127, size) + payload


def text_frame(payload: bytes | str) -> bytes:
    """A text frame; ``payload`` is UTF-8 bytes (or str, encoded here)."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    return frame(OP_TEXT, payload)


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame with a status code and a reason of at most 123 bytes."""
    data = reason.encode("utf-8")[:123]
    return frame(OP_CLOSE, struct.pack("!H", code) + data)
