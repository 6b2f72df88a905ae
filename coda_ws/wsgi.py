"""A coda_ws server node for a WSGI server: ``coda_ws.wsgi:app`` under gunicorn.

Run a node with gunicorn's threaded worker (every WebSocket client holds one
thread for as long as it is connected)::

    CODA_WS_BACKPLANE=redis://127.0.0.1:6379/0 \\
        gunicorn -c python:coda_ws.gunicorn_conf coda_ws.wsgi:app

:mod:`coda_ws.gunicorn_conf` sets the ``gthread`` worker, the bind address
and the thread count from the environment, refuses a non-loopback bind
without tokens, and closes every client with 1001 when the worker stops.
The node serves the WebSocket stream and coda_ws's HTTP endpoints; it has no
event source of its own: the pipeline's processes emit into the backplane
(:class:`~coda_ws.backplane.RedisEmitter`).

Configuration: every option of :mod:`coda_ws.config` from its environment
variable, ``CODA_WS_<OPTION>`` (``CODA_WS_BACKPLANE``, ``CODA_WS_HISTORY_SIZE``,
``CODA_WS_ALLOWED_HOSTS``, ...; unset: the server's default), plus
``CODA_WS_TOKENS`` (tokens and scopes, see :mod:`coda_ws.auth`) and, read by
:mod:`coda_ws.gunicorn_conf`, ``CODA_WS_BIND``, ``CODA_WS_WORKERS``,
``CODA_WS_THREADS`` and ``CODA_WS_INSECURE``.

Without a backplane or journal, a node is an embedded server whose only
event source is ``POST /events``; with several workers each would be a
separate stream, so use one worker or a backplane.

The node is made on first use of :data:`app` (in the gunicorn worker, after
the fork), never at import: importing this module starts nothing.
"""

import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from . import config

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from .server import CodaWebSocketServer

__all__ = ["NodeApp", "check_exposure", "create_server", "node", "server_options", "shutdown"]

log = logging.getLogger("coda_ws.wsgi")


def server_options(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``CodaWebSocketServer`` keyword arguments the environment asks for
    (every ``CODA_WS_*`` variable of :mod:`coda_ws.config`, and
    ``CODA_WS_BIND`` for the address the node reports).

    Raises:
        ValueError: a variable that does not parse, naming it.
    """
    env = os.environ if env is None else env
    options = config.from_env(env)
    bind = env.get("CODA_WS_BIND", "").strip()
    if bind and not bind.startswith("unix:"):
        host, _, port = bind.rpartition(":")
        if host and port.isascii() and port.isdigit():
            options["host"], options["port"] = host.strip("[]"), int(port)  # for server.url only
    return options


def create_server(env: Mapping[str, str] | None = None) -> "CodaWebSocketServer":
    """A server node configured from the environment, not bound to a port.

    Its bus (and backplane reader, waiting up to two seconds for the first
    load of the shared stream) runs; the WSGI server in front of
    :class:`NodeApp` serves its routes.
    """
    from .server import CodaWebSocketServer

    server = CodaWebSocketServer(**server_options(env))
    server.bus.start()
    if server.backplane is not None and not server.backplane.start(ready_timeout=2.0):
        log.warning(
            "coda_ws node: Redis not reachable yet (%s); serving, and retrying in the background",
            server.backplane.ready()[1],
        )
    return server


class NodeApp:
    """The WSGI callable for a node: the server's Flask app, plus the one
    thing gunicorn needs told: after a WebSocket session the view returns,
    but the socket was the WebSocket's and is shut down, so no HTTP
    response may be written. Raising ``StopIteration`` is gunicorn's way to
    drop such a connection without a response (Werkzeug needs nothing)."""

    def __init__(self, server: "CodaWebSocketServer") -> None:
        self.server = server
        self._app: WSGIApplication = server.app

    def __call__(self, environ: "WSGIEnvironment", start_response: "StartResponse") -> Iterable[bytes]:
        if (
            "gunicorn.socket" in environ
            and not environ.get("wsgi.multithread")
            and environ.get("HTTP_UPGRADE", "").lower() == "websocket"
        ):
            return self._refuse_single_threaded(start_response)
        result = self._app(environ, start_response)
        if environ.get("coda_ws.socket_taken") and "gunicorn.socket" in environ:
            close = getattr(result, "close", None)
            if close is not None:
                close()
            raise StopIteration("WebSocket session over")
        return result

    _warned = False

    def _refuse_single_threaded(self, start_response: "StartResponse") -> Iterable[bytes]:
        """gunicorn's sync worker serves one request at a time: one WebSocket
        client would hold it for as long as it stays, and every other request
        (the dashboard, /metrics, other clients) would wait. Upgrades are
        refused with 501 naming the fix; plain HTTP requests are still served."""
        message = (
            "gunicorn's sync worker serves one request at a time, so a WebSocket client would block it: "
            "run the node with -c python:coda_ws.gunicorn_conf (or -k gthread --threads N)"
        )
        if not NodeApp._warned:
            NodeApp._warned = True
            log.error("refusing WebSocket clients: %s", message)
        body = json.dumps({"error": "single_threaded_worker", "message": message}).encode()
        start_response(
            "501 Not Implemented", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return [body]


_lock = threading.Lock()  # guards _node and _closed; held through shutdown()
_node: "CodaWebSocketServer | None" = None
_closed = False


def node() -> "CodaWebSocketServer":
    """This process's server node (made on first call; thread-safe)."""
    global _node
    with _lock:
        if _node is None:
            _node = create_server()
        return _node


def shutdown(timeout: float = 5.0) -> None:
    """Close every client with 1001, then flush and stop the node
    (``CodaWebSocketServer.close_stream``: the shutdown ``stop()`` does).

    Idempotent and thread-safe: a second call waits for the first to finish.
    Called by :mod:`coda_ws.gunicorn_conf` when the worker stops.
    """
    global _closed
    with _lock:
        server = _node
        if server is None or _closed:
            return
        _closed = True
        server.close_stream(timeout)
        log.info("coda_ws node stopped")


def check_exposure(addresses: Iterable[object], env: Mapping[str, str] | None = None) -> None:
    """Refuse non-loopback bind addresses without tokens (principle 9), as
    ``CodaWebSocketServer.start()`` does; ``CODA_WS_INSECURE=1`` accepts the
    risk. ``addresses``: gunicorn's ``cfg.address`` list.

    Raises:
        CodaWSError: naming the address (:func:`coda_ws.auth.check_exposure`).
    """
    from .auth import Authenticator
    from .auth import check_exposure as refuse_exposure

    env = os.environ if env is None else env
    authenticated = Authenticator(None, environ=env).enabled
    insecure = env.get("CODA_WS_INSECURE", "").strip().lower() in ("1", "true", "yes", "on")
    for address in addresses:
        if isinstance(address, tuple):
            refuse_exposure(str(address[0]), address[1], authenticated=authenticated, insecure=insecure)


def __getattr__(name: str) -> NodeApp:
    # ``coda_ws.wsgi:app``: made when gunicorn's worker looks it up, after the fork.
    if name in ("app", "application"):
        return NodeApp(node())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
