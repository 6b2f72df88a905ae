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

Configuration, from environment variables (unset: the server's default):

=================================  ==============================================
``CODA_WS_BACKPLANE``              ``redis://`` URL of the shared stream
``CODA_WS_BACKPLANE_PREFIX``       Redis key prefix (default ``coda_ws``)
``CODA_WS_JOURNAL``                SQLite journal file (one worker only; not
                                   with a backplane)
``CODA_WS_JOURNAL_MAX_EVENTS``     journal retention, events
``CODA_WS_JOURNAL_MAX_AGE``        journal retention, seconds
``CODA_WS_HISTORY_SIZE``           events kept for resume
``CODA_WS_MAX_REPLAY_EVENTS``      events in the replay frame
``CODA_WS_CLIENT_QUEUE_SIZE``      lossless events a client may fall behind
``CODA_WS_MAX_CLIENTS``            concurrent clients per worker
``CODA_WS_ALLOWED_ORIGINS``        comma-separated browser origins
``CODA_WS_ALLOWED_HOSTS``          comma-separated extra Host names (DNS
                                   rebinding defence; ``*``: any)
``CODA_WS_PING_INTERVAL``          seconds between keepalive pings
``CODA_WS_PING_TIMEOUT``           seconds to answer a ping
``CODA_WS_URL_PREFIX``             path prefix of every route (default none)
``CODA_WS_TOKENS``                 tokens and scopes (see :mod:`coda_ws.auth`)
=================================  ==============================================

Without a backplane or journal, a node is an embedded server whose only
event source is ``POST /events``; with several workers each would be a
separate stream, so use one worker or a backplane.

The node is made on first use of :data:`app` (in the gunicorn worker, after
the fork), never at import: importing this module starts nothing.
"""

import logging
import os
import threading

__all__ = ["create_server", "server_options", "node", "shutdown", "NodeApp", "check_exposure"]

log = logging.getLogger("coda_ws.wsgi")

_INT_OPTIONS = {
    "CODA_WS_JOURNAL_MAX_EVENTS": "journal_max_events",
    "CODA_WS_HISTORY_SIZE": "history_size",
    "CODA_WS_MAX_REPLAY_EVENTS": "max_replay_events",
    "CODA_WS_CLIENT_QUEUE_SIZE": "client_queue_size",
    "CODA_WS_MAX_CLIENTS": "max_clients",
}
_FLOAT_OPTIONS = {
    "CODA_WS_JOURNAL_MAX_AGE": "journal_max_age",
    "CODA_WS_PING_INTERVAL": "ping_interval",
    "CODA_WS_PING_TIMEOUT": "ping_timeout",
}
_TEXT_OPTIONS = {
    "CODA_WS_BACKPLANE": "backplane",
    "CODA_WS_BACKPLANE_PREFIX": "backplane_prefix",
    "CODA_WS_JOURNAL": "journal",
}


def _number(env, name, kind):
    text = env[name].strip()
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None


def server_options(env=None):
    """The ``CodaWebSocketServer`` keyword arguments the environment asks for.

    Raises:
        ValueError: a variable that does not parse, naming it.
    """
    env = os.environ if env is None else env
    options = {}
    for name, key in _TEXT_OPTIONS.items():
        if env.get(name, "").strip():
            options[key] = env[name].strip()
    for name, key in _INT_OPTIONS.items():
        if env.get(name, "").strip():
            options[key] = _number(env, name, int)
    for name, key in _FLOAT_OPTIONS.items():
        if env.get(name, "").strip():
            options[key] = _number(env, name, float)
    if env.get("CODA_WS_ALLOWED_ORIGINS", "").strip():
        options["allowed_origins"] = [o.strip() for o in env["CODA_WS_ALLOWED_ORIGINS"].split(",") if o.strip()]
    if "CODA_WS_URL_PREFIX" in env:
        options["url_prefix"] = env["CODA_WS_URL_PREFIX"].strip().rstrip("/")
    bind = env.get("CODA_WS_BIND", "").strip()
    if bind and not bind.startswith("unix:"):
        host, _, port = bind.rpartition(":")
        if host and port.isascii() and port.isdigit():
            options["host"], options["port"] = host.strip("[]"), int(port)  # for server.url only
    return options


def create_server(env=None):
    """A server node configured from the environment, not bound to a port.

    Its bus (and backplane reader, waiting up to two seconds for the first
    load of the shared stream) runs; the WSGI server in front of
    :class:`NodeApp` serves its routes.
    """
    from .server import CodaWebSocketServer

    server = CodaWebSocketServer(**server_options(env))
    server.bus.start()
    if server.backplane is not None and not server.backplane.start(ready_timeout=2.0):
        log.warning("coda_ws node: Redis not reachable yet (%s); serving, and retrying in the background",
                    server.backplane.ready()[1])
    return server


class NodeApp:
    """The WSGI callable for a node: the server's Flask app, plus the one
    thing gunicorn needs told: after a WebSocket session the view returns,
    but the socket was the WebSocket's and is shut down, so no HTTP
    response may be written. Raising ``StopIteration`` is gunicorn's way to
    drop such a connection without a response (Werkzeug needs nothing)."""

    def __init__(self, server):
        self.server = server
        self._app = server.app

    def __call__(self, environ, start_response):
        result = self._app(environ, start_response)
        if environ.get("coda_ws.socket_taken") and "gunicorn.socket" in environ:
            close = getattr(result, "close", None)
            if close is not None:
                close()
            raise StopIteration("WebSocket session over")
        return result


_lock = threading.Lock()  # guards _node and _closed; held through shutdown()
_node = None
_closed = False


def node():
    """This process's server node (made on first call; thread-safe)."""
    global _node
    with _lock:
        if _node is None:
            _node = create_server()
        return _node


def shutdown(timeout=5.0):
    """Close every client with 1001, then flush and stop the node.

    Idempotent and thread-safe: a second call waits for the first to finish.
    Called by :mod:`coda_ws.gunicorn_conf` when the worker stops.
    """
    global _closed
    with _lock:
        server = _node
        if server is None or _closed:
            return
        _closed = True
        if server.backplane is not None:
            server.backplane.flush(timeout / 5)
        server.bus.flush(timeout / 5)
        left = server.close_clients(timeout=timeout * 3 / 5)
        if left:
            log.warning("coda_ws node: %d clients still connected at shutdown", left)
        server.bus.close(timeout / 5)
        if server.journal is not None:
            server.journal.close(timeout / 5)
        if server.backplane is not None:
            server.backplane.close(timeout / 5)
        log.info("coda_ws node stopped")


def check_exposure(addresses, env=None):
    """Refuse non-loopback bind addresses without tokens (principle 9), as
    ``CodaWebSocketServer.start()`` does; ``CODA_WS_INSECURE=1`` accepts the
    risk. ``addresses``: gunicorn's ``cfg.address`` list.

    Raises:
        RuntimeError: naming the address.
    """
    from .auth import Authenticator, is_loopback_host

    env = os.environ if env is None else env
    if Authenticator(None).enabled or env.get("CODA_WS_INSECURE", "").strip() in ("1", "true", "yes"):
        return
    for address in addresses:
        if isinstance(address, tuple) and not is_loopback_host(str(address[0])):
            raise RuntimeError(
                f"refusing to serve {address[0]}:{address[1]} without authentication: set CODA_WS_TOKENS, "
                "bind to 127.0.0.1, or set CODA_WS_INSECURE=1 to accept the risk"
            )


def __getattr__(name):
    # ``coda_ws.wsgi:app``: made when gunicorn's worker looks it up, after the fork.
    if name in ("app", "application"):
        return NodeApp(node())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
