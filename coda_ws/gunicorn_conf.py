"""gunicorn settings for a coda_ws node: ``gunicorn -c python:coda_ws.gunicorn_conf coda_ws.wsgi:app``.

* ``gthread`` worker: one thread per connection, which a WebSocket client
  holds while it is connected, so ``threads`` bounds the clients per worker
  (``CODA_WS_THREADS``, default ``CODA_WS_MAX_CLIENTS`` + 16, or 272).
* ``CODA_WS_BIND`` (default ``127.0.0.1:8765``; port 0 picks a free one) and
  ``CODA_WS_WORKERS`` (default 1: several workers need a backplane, each
  worker then being a node of its own).
* A non-loopback bind without ``CODA_WS_TOKENS`` is refused (set
  ``CODA_WS_INSECURE=1`` to accept the risk), as ``coda-ws serve`` does.
* When a worker stops (SIGTERM from the arbiter, or Ctrl-C), every client
  gets a 1001 close so it reconnects (to another node) and resumes; then the
  node publishes its last events and joins its threads.
* Once listening, prints ``coda-ws node listening on ws://HOST:PORT/`` on
  standard output.

Any setting can still be overridden on the command line.
"""

import os
import signal
import socket
import threading
from types import FrameType
from typing import Any, Protocol

from coda_ws.wsgi import check_exposure

_max_clients = int(os.environ.get("CODA_WS_MAX_CLIENTS", "256") or 256)

bind = [os.environ.get("CODA_WS_BIND", "127.0.0.1:8765")]
workers = int(os.environ.get("CODA_WS_WORKERS", "1") or 1)
worker_class = "gthread"
threads = int(os.environ.get("CODA_WS_THREADS", "") or _max_clients + 16)
# A WebSocket request lasts as long as its client; the heartbeat that
# ``timeout`` watches runs in the worker's main thread, not in the request.
timeout = 30
graceful_timeout = 10
keepalive = 2
# A node needs no control socket, and several nodes on one host would share
# its default path (ignored by gunicorn versions without one).
control_socket_disable = True


# What these hooks use of gunicorn's objects (gunicorn ships no type information).
class _Config(Protocol):
    @property
    def address(self) -> list[Any]: ...  # (host, port) tuples, or unix socket paths


class _Listener(Protocol):
    @property
    def sock(self) -> socket.socket: ...


class _Arbiter(Protocol):
    @property
    def cfg(self) -> _Config: ...

    LISTENERS: list[_Listener]


def on_starting(arbiter: _Arbiter) -> None:
    """Refuse to expose the stream without tokens (principle 9), and refuse
    TLS in the worker (``--certfile``): coda_ws writes to its sockets' file
    descriptors directly and cannot encrypt; terminate TLS in a reverse proxy."""
    if getattr(arbiter.cfg, "certfile", None):
        raise RuntimeError(
            "coda_ws nodes do not terminate TLS (--certfile): put nginx, Caddy or another reverse proxy in "
            "front for wss:// and let it speak plain HTTP to the node on 127.0.0.1"
        )
    check_exposure(arbiter.cfg.address)


def when_ready(arbiter: _Arbiter) -> None:
    """Say where the node listens (tests and scripts read this line)."""
    for listener in arbiter.LISTENERS:
        address = listener.sock.getsockname()
        if isinstance(address, tuple):
            host = address[0] if ":" not in address[0] else f"[{address[0]}]"
            print(f"coda-ws node listening on ws://{host}:{address[1]}/", flush=True)


def post_worker_init(worker: object) -> None:
    """Make the node now, not on the first request, and close its clients
    with 1001 as soon as the worker is asked to stop gracefully, so gunicorn's
    graceful wait does not last as long as the clients stay."""
    from coda_ws import wsgi

    wsgi.node()
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: FrameType | None) -> None:
        if callable(previous):
            previous(signum, frame)  # gunicorn: stop accepting, finish what runs
        # daemon: gunicorn's own shutdown must not wait on it; worker_exit joins the shutdown.
        threading.Thread(target=wsgi.shutdown, name="coda-ws-shutdown", daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)


def worker_int(worker: object) -> None:
    """SIGINT or SIGQUIT: gunicorn exits right after this; close clients first."""
    from coda_ws import wsgi

    wsgi.shutdown(timeout=2.0)


def worker_exit(arbiter: _Arbiter, worker: object) -> None:
    """The worker is ending: finish the shutdown (waits for one in progress)."""
    from coda_ws import wsgi

    wsgi.shutdown()
