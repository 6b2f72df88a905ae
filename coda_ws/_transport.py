"""The boundary around simple-websocket's internals (server side).

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
import threading
from collections.abc import Mapping
from typing import Any

import simple_websocket

__all__ = ["ServerTransport", "ConnectionClosed", "REQUIRED_ATTRIBUTES"]

#: simple-websocket's exception for a connection that is already closed.
ConnectionClosed = simple_websocket.ConnectionClosed

#: The undocumented attributes of ``simple_websocket.Server`` this module uses.
REQUIRED_ATTRIBUTES = ("input_buffer", "pong_received", "incoming_message_len", "max_message_size",
                       "connected", "close_reason", "thread", "subprotocol")

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

    def __init__(self, environ: Mapping[str, Any], *, subprotocols: list[str], max_message_size: int,
                 reader_name: str, wake: threading.Event) -> None:
        # daemon: Werkzeug's request threads are daemons too; the server joins
        # every reader it starts (Connection.end) before stop() returns.
        thread_class = functools.partial(threading.Thread, name=reader_name, daemon=True)
        self._ws = simple_websocket.Server(
            dict(environ), subprotocols=subprotocols, max_message_size=max_message_size,
            thread_class=thread_class, event_class=lambda: wake,
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
