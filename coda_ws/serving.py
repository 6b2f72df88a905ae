"""The HTTP side of a standalone server: the listening socket, the accept loop,
and one request thread per request that has arrived.

:class:`HttpService` binds (raising ``OSError`` naming the address, never
Werkzeug's ``sys.exit``), builds Werkzeug's server for the app, and runs the
:class:`~coda_ws.acceptor.Acceptor` in its thread, ``coda-ws-http:PORT``,
which reads every request head (and declared body) under a total deadline
without a thread per connection. A request that has arrived gets a request
thread, ``coda-ws-request:PORT``, registered *before* it starts (so
:meth:`HttpService.close` can never miss one), running Werkzeug's handler on
the bytes already read; for a WebSocket client that thread becomes the
client's writer for as long as it is connected.

Threads are daemons because Werkzeug's are and a crashed host must still be
able to exit; :meth:`HttpService.close` joins every one of them, looping
until none remains.
"""

import contextlib
import functools
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from werkzeug.serving import (
    BaseWSGIServer,
    WSGIRequestHandler,
    get_sockaddr,
    make_server,
    select_address_family,
)

from .acceptor import Acceptor, PendingRequest
from .deadline import Deadline

__all__ = ["HttpService", "bind", "check_resolvable"]

#: What makes a request handler: ``handler(pending, address, server)``.
_HandlerFactory = Callable[[PendingRequest, Any, BaseWSGIServer], object]

log = logging.getLogger("coda_ws.server")
http_log = logging.getLogger("coda_ws.http")


class _QuietRequestHandler(WSGIRequestHandler):
    """Werkzeug's handler, logging to ``coda_ws.http`` at DEBUG instead of
    printing every request to stderr (library code does not configure logging)."""

    def log(self, type: str, message: str, *args: Any) -> None:
        level = logging.WARNING if type == "error" else logging.DEBUG
        if http_log.isEnabledFor(level):
            http_log.log(level, "%s %s", self.address_string(), message % args if args else message)


class _PrereadRequestHandler(_QuietRequestHandler):
    """The handler for a request the accept loop has read (:mod:`coda_ws.acceptor`).

    It is made with a :class:`~coda_ws.acceptor.PendingRequest` as its
    ``request``: the connection is its socket (so ``werkzeug.socket`` is the
    real socket) and ``rfile`` gives the bytes already read first, then the
    socket, never past the declared request nor after the request's deadline.
    """

    def setup(self) -> None:
        pending: PendingRequest = self.request  # made by HttpService._handle_request with one
        self.request = pending.sock
        super().setup()  # connection, its timeout, rfile and wfile
        self.rfile.close()  # nothing was read through it
        self.rfile = pending.make_rfile()


def check_resolvable(host: str, port: int) -> None:
    """Make sure ``host`` names an address this machine can bind.

    Checked before anything else about the address, so that a misspelt
    ``--host`` is reported as what it is, not as an exposure refusal.

    Raises:
        OSError: naming the host and the resolver's reason.
    """
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(
            exc.errno,
            f"cannot resolve the host to bind, {host!r}: {exc.strerror or exc} "
            "(use an IP address such as 127.0.0.1 or 0.0.0.0, or a name this machine "
            "resolves)",
        ) from exc


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``.

    Raises:
        OSError: naming the address (Werkzeug's own binding would call
            ``sys.exit(1)`` when the port is taken).
    """
    family = select_address_family(host, port)
    try:
        address = get_sockaddr(host, port, family)
        listener = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(128)
    except OSError as exc:
        listener.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return listener


class HttpService:
    """Serves one WSGI app on ``host:port`` until :meth:`close`.

    Args:
        host, port: where to listen (port 0: any free one; :attr:`port` tells).
        app: the WSGI callable.
        handshake_timeout: seconds from accept by which a request's head and
            declared body must have arrived; also the socket timeout of each
            write of a response.
        max_body_size: the largest body the accept loop reads ahead.
        counters: the acceptor's counters (kept by the caller across restarts).

    Raises:
        OSError: the address cannot be bound.

    Thread safety: :meth:`close` may be called from any thread, once.
    """

    def __init__(
        self,
        host: str,
        port: int,
        app: Callable[..., Any],
        *,
        handshake_timeout: float,
        max_body_size: int,
        counters: dict[str, int],
    ) -> None:
        listener = bind(host, port)
        handler = type("CodaRequestHandler", (_PrereadRequestHandler,), {"timeout": handshake_timeout})
        try:
            self._httpd: BaseWSGIServer = make_server(
                host, port, app, threaded=True, request_handler=handler, fd=listener.fileno()
            )
        finally:
            listener.close()  # Werkzeug serves a duplicate of it
        self.port: int = self._httpd.port
        # _threads_lock guards _request_threads: request thread -> its socket,
        # added before the thread starts, removed as it ends.
        self._threads_lock = threading.Lock()
        self._request_threads: dict[threading.Thread, socket.socket] = {}
        handler_class = self._httpd.RequestHandlerClass  # make_server set its protocol_version
        self._acceptor = Acceptor(
            self._httpd.socket,
            functools.partial(self._start_request, handler_class),
            timeout=handshake_timeout,
            max_body_size=max_body_size,
            counters=counters,
        )
        # daemon: see the module docstring; close() joins it.
        self._thread = threading.Thread(target=self._serve, name=f"coda-ws-http:{self.port}", daemon=True)
        self._thread.start()

    @property
    def accepting(self) -> bool:
        """True while the accept loop runs."""
        return self._thread.is_alive()

    @property
    def pending(self) -> int:
        """Connections whose request has not arrived yet (they hold no thread)."""
        return self._acceptor.pending

    def _serve(self) -> None:
        try:
            self._acceptor.serve_forever()
        except Exception:
            log.exception("the accept loop on port %s failed: no new connection is accepted", self.port)

    def _start_request(self, handler: _HandlerFactory, pending: PendingRequest) -> None:
        """The acceptor's handoff (accept loop's thread): a request thread for a
        request that has arrived, registered before it starts."""
        thread = threading.Thread(
            target=self._handle_request,
            args=(handler, pending),
            name=f"coda-ws-request:{self.port}",
            daemon=True,
        )  # daemon: see the module doc
        with self._threads_lock:
            self._request_threads[thread] = pending.sock
        try:
            thread.start()
        except BaseException:
            with self._threads_lock:
                del self._request_threads[thread]
            raise  # the acceptor closes the connection

    def _handle_request(self, handler: _HandlerFactory, pending: PendingRequest) -> None:
        """A request thread: Werkzeug's handler on ``pending``, then the socket is closed."""
        try:
            handler(pending, pending.address, self._httpd)
        except Exception:
            log.exception("request from %s failed", pending.address)
        finally:
            self._httpd.shutdown_request(pending.sock)  # FIN, then close
            with self._threads_lock:
                self._request_threads.pop(threading.current_thread(), None)

    def stop_accepting(self, deadline: Deadline) -> None:
        """Stop the accept loop (at once: no poll interval) and close every
        connection whose request has not arrived; running requests go on."""
        self._acceptor.close()
        self._thread.join(deadline.remaining())

    def close(self, deadline: Deadline, grace: Deadline) -> None:
        """Join every request thread, looping until none remains, then close
        the listening socket. Sockets of threads still running when ``grace``
        expires are shut down (a plain request still reading its body or
        writing its response), which ends them. Call :meth:`stop_accepting` first."""
        forced = False
        while True:
            with self._threads_lock:
                threads = dict(self._request_threads)
            if not threads:
                break
            if deadline.expired:
                log.warning("%d request thread(s) still running after stop()'s timeout", len(threads))
                break
            if not forced and grace.expired:
                forced = True
                for sock in threads.values():
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
            for thread in threads:
                thread.join((deadline if forced else grace).remaining())
        self._httpd.server_close()

    def __repr__(self) -> str:
        return f"<HttpService port={self.port}>"
