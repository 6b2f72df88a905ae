"""A coda_ws node under gunicorn: ``gunicorn -c python:coda_ws.gunicorn_conf
coda_ws.wsgi:app`` (gthread worker, configured from environment variables)
serves WebSocket clients of the Redis backplane, resumes them, and closes
them with 1001 when it stops."""

import contextlib
import signal
import urllib.request

import pytest
from websockets.exceptions import ConnectionClosed

from coda_ws.backplane import RedisEmitter

from ._proc import CHILD_TIMEOUT, Child
from ._redis import REDIS_URL, read_events, unique_prefix
from .conftest import connect, recv_json


@pytest.fixture
def prefix():
    """A key prefix of this test's own on the shared Redis; its keys are deleted afterwards."""
    with unique_prefix() as name:
        yield name


@contextlib.contextmanager
def open_v1(url, query=""):
    """A v1 client of the node; yields (ws, hello)."""
    with connect(f"{url}?v=1{'&' + query if query else ''}", open_timeout=CHILD_TIMEOUT) as ws:
        hello = recv_json(ws, CHILD_TIMEOUT)
        assert hello["type"] == "hello"
        yield ws, hello


def test_gunicorn_node_serves_resumes_and_closes_with_1001(prefix, monkeypatch):
    """A gunicorn node streams what an emitter process publishes, resumes a
    client that was cut with recovered: true, answers /healthz and /readyz, and on
    SIGTERM closes its client with 1001 and exits 0."""
    monkeypatch.setenv("CODA_WS_BIND", "127.0.0.1:0")
    monkeypatch.setenv("CODA_WS_BACKPLANE", REDIS_URL)
    monkeypatch.setenv("CODA_WS_BACKPLANE_PREFIX", prefix)
    monkeypatch.setenv("CODA_WS_THREADS", "16")
    child = Child("-m", "gunicorn", "-c", "python:coda_ws.gunicorn_conf", "coda_ws.wsgi:app")
    emitter = RedisEmitter(REDIS_URL, prefix)
    try:
        url = child.wait_for_output(r"coda-ws node listening on (ws://\S+)").group(1)
        with open_v1(url) as (ws, hello):
            assert recv_json(ws)["type"] == "replay"
            epoch = hello["epoch"]
            for i in range(20):
                emitter.emit("stt_result", text=str(i), confidence=1.0, duration_ms=1.0)
            first = read_events(ws, 20, timeout=CHILD_TIMEOUT)
        for i in range(20, 40):
            emitter.emit("stt_result", text=str(i), confidence=1.0, duration_ms=1.0)
        assert emitter.flush(CHILD_TIMEOUT)
        last = first[-1]["seq"]
        with open_v1(url, f"since={last}&epoch={epoch}") as (ws, hello):
            assert hello["epoch"] == epoch
            resume = recv_json(ws, CHILD_TIMEOUT)
            assert resume["recovered"] is True and resume["from"] == last + 1
            # The node may not have read all 20 from Redis yet: those it has come as the
            # resume's `count`, the others live right after, with no gap either way.
            assert resume["count"] <= 20
            rest = read_events(ws, 20, timeout=CHILD_TIMEOUT)
            assert [e["text"] for e in first + rest] == [str(i) for i in range(40)]
            for probe in ("healthz", "readyz"):
                with urllib.request.urlopen(
                    url.replace("ws://", "http://") + probe, timeout=CHILD_TIMEOUT
                ) as reply:
                    assert reply.status == 200
            child.proc.send_signal(signal.SIGTERM)
            try:
                read_events(ws, 1, timeout=CHILD_TIMEOUT)
            except ConnectionClosed as closed:
                assert closed.rcvd is not None and closed.rcvd.code == 1001
            else:
                raise AssertionError("the node sent an event instead of closing")
        assert child.wait() == 0, child.describe()
    finally:
        emitter.close()
        child.kill()
