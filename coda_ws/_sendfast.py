"""Non-blocking sends that keep the GIL: the dispatcher's write to a client.

The one place coda_ws calls into libc through ctypes. Python's ``socket.send``
releases the GIL around the system call. For the dispatcher's non-blocking
sends of a few hundred bytes that is all cost: while any other Python thread
is busy (a pipeline thread computing), each release hands it the GIL, and the
dispatcher gets it back only when that thread's switch interval (5 ms) runs
out. With 100 clients that made one event's fan-out take up to half a second
(benchmarks/README.md, "GIL convoy"). A non-blocking send never waits, so
holding the GIL through it is safe; it also means no other thread can close
the socket between reading its file descriptor and the call.

Fallbacks, each slower but correct:

* no ``MSG_DONTWAIT`` on this platform: :data:`DIRECT_WRITES` is False and
  the dispatcher never writes for a client (writer threads do everything);
* no libc symbols reachable through ctypes (or a libc ``send`` that does not
  behave, checked once at import on a socket pair): ``socket.send`` with
  ``MSG_DONTWAIT``;
* a TLS socket (``ssl.SSLSocket``, gunicorn ``--certfile``): writing its file
  descriptor directly would bypass the encryption, so :func:`can_send_directly`
  is False for it and nothing here ever writes to it.

``tests/unit/test_boundaries.py`` fails with a message naming this module when
the fast path is lost.
"""

import ctypes
import errno
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any

__all__ = ["DIRECT_WRITES", "DONTWAIT", "USING_LIBC_SEND", "can_send_directly", "send_now"]

#: ``MSG_DONTWAIT``, or 0 where the platform has none.
DONTWAIT: int = getattr(socket, "MSG_DONTWAIT", 0)
_NOSIGNAL: int = getattr(socket, "MSG_NOSIGNAL", 0)
#: Whether the dispatcher may write for clients at all: only where a send can
#: be made non-blocking per call (MSG_DONTWAIT); elsewhere writers do it all.
DIRECT_WRITES = bool(DONTWAIT)
_FLAGS = DONTWAIT | _NOSIGNAL
_WOULD_BLOCK = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR}
_size_t = ctypes.c_size_t

#: ``c_size_t`` arguments by length, built once: making one costs about as
#: much as the rest of the ctypes call (0.6 µs of a 2.6 µs send measured
#: here), and the dispatcher sends the same lengths to every client. ctypes
#: passes them by value and nothing mutates them, so threads share them.
#: Bounded: lengths past :data:`_MAX_SIZES` distinct ones are built per call.
_sizes: dict[int, Any] = {}
_MAX_SIZES = 4096


def _libc_send() -> Callable[..., Any] | None:
    """libc's ``send(fd, buffer, length, flags)``, called without releasing
    the GIL, or None where it cannot be reached or does not behave."""
    if not DONTWAIT:
        return None
    try:
        function = ctypes.PyDLL(None, use_errno=True).send
    except (OSError, AttributeError):  # no libc symbols in this process (Windows)
        return None
    # No argtypes: converting through them cost 0.4 µs a call. Callers pass the
    # fd and flags as ints, the buffer as bytes, and the length as c_size_t.
    function.restype = ctypes.c_ssize_t
    try:
        left, right = socket.socketpair()
    except OSError:
        return function
    with left, right:
        if (
            function(left.fileno(), b"probe", _size_t(5), DONTWAIT | _NOSIGNAL) != 5
            or right.recv(8) != b"probe"
        ):
            return None
    return function


_send: Callable[..., Any] | None = _libc_send()

#: True when :func:`send_now` calls libc's ``send`` holding the GIL.
USING_LIBC_SEND = _send is not None


def can_send_directly(sock: socket.socket) -> bool:
    """Whether :func:`send_now` may write to ``sock`` (never to a TLS socket)."""
    return DIRECT_WRITES and not isinstance(sock, ssl.SSLSocket)


def send_now(sock: socket.socket, data: bytes) -> int:
    """One non-blocking send of ``data`` (bytes, not a memoryview).

    Returns how many bytes were written (0 when the peer's buffers are full).

    Raises:
        OSError: the connection is gone.
    """
    if _send is None:
        try:
            return sock.send(data, DONTWAIT)
        except BlockingIOError:
            return 0
    length = len(data)
    size = _sizes.get(length)
    if size is None:
        size = _size_t(length)
        if len(_sizes) >= _MAX_SIZES:
            _sizes.clear()  # keep the lengths sent now, not only the first ones ever seen
        _sizes[length] = size
    sent: int = _send(sock.fileno(), data, size, _FLAGS)
    if sent >= 0:
        return sent
    code = ctypes.get_errno()
    if code in _WOULD_BLOCK:
        return 0
    raise OSError(code, os.strerror(code))
