"""Shared fixtures: real servers on 127.0.0.1 with ephemeral ports, real clients."""

import json
import threading
import time

import pytest
from websockets.sync.client import connect as ws_connect

from coda_ws import CodaWebSocketServer

#: One timeout unit for waits in tests (seconds).
TIMEOUT = 5.0


def connect(url, **kwargs):
    """A websockets (sync) client connected to ``url``; close it (or use ``with``)."""
    kwargs.setdefault("open_timeout", TIMEOUT)
    kwargs.setdefault("close_timeout", 2)
    kwargs.setdefault("max_size", None)
    return ws_connect(url, **kwargs)


def recv_json(ws, timeout=TIMEOUT):
    """The next text frame from ``ws``, decoded."""
    return json.loads(ws.recv(timeout=timeout))


def recv_until(ws, predicate, timeout=TIMEOUT):
    """Frames (decoded) up to and including the first one for which ``predicate`` is true."""
    deadline = time.monotonic() + timeout
    frames = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no matching frame within {timeout} s; got {frames[-5:]}")
        frame = recv_json(ws, remaining)
        frames.append(frame)
        if predicate(frame):
            return frames


def wait_for(condition, timeout=TIMEOUT, message="condition"):
    """Poll ``condition()`` until true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message() if callable(message) else message}")
        time.sleep(0.005)


@pytest.fixture
def server_factory():
    """Make started servers on 127.0.0.1:0; every one is stopped after the test."""
    servers = []

    def make(**kwargs):
        kwargs.setdefault("host", "127.0.0.1")
        kwargs.setdefault("port", 0)
        server = CodaWebSocketServer(**kwargs)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def server(server_factory):
    """A started server with default options."""
    return server_factory()


@pytest.fixture
def thread_baseline():
    """Names of the threads alive before the test (for leak checks)."""
    return {t.ident for t in threading.enumerate()}
