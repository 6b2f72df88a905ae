"""Slow and oversize request heads hold no thread (issue 13): the accept loop reads every
request head and declared body itself, under a total deadline, and hands a request to a
thread only once it has arrived (coda_ws.acceptor). Real sockets on 127.0.0.1."""

import gc
import json
import resource
import socket
import threading
import time

import psutil
import pytest

from coda_ws import CodaWebSocketServer, acceptor

from .._http import get, scrape, value
from ..conftest import TIMEOUT, connect, recv_json, recv_until, wait_for

PARTIAL_HEAD = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\n"  # no blank line: never complete
MB = 1024 * 1024


def raw_connect(server, data=b"", timeout=TIMEOUT):
    """A plain TCP connection to ``server`` that has sent ``data``."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    if data:
        sock.sendall(data)
    return sock


def read_response(sock):
    """Everything the server sends until it closes: (status, headers dict, body bytes) of
    its final answer."""
    reply = b""
    try:
        while chunk := sock.recv(65536):
            reply += chunk
    except ConnectionResetError:
        pass
    head, _, body = reply.partition(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 100 "):  # interim answers (Werkzeug sends "100 Continue" twice)
        head, _, body = body.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)
    }
    return int(status_line.split()[1]), headers, body


def closed_by_server(sock):
    """True once the server has closed ``sock`` (end of file or reset); False if it is still open."""
    try:
        return sock.recv(4096) == b""
    except (TimeoutError, BlockingIOError):
        return False
    except ConnectionError:
        return True


def request_threads():
    """The server's request threads (named ``coda-ws-request:PORT`` while they run a request)."""
    return [t for t in threading.enumerate() if t.name.startswith("coda-ws-request:")]


def new_threads(before):
    return [t.name for t in set(threading.enumerate()) - before]


def trickle_until(sock, done, seconds, interval, byte=b"X"):
    """Send one byte every ``interval`` s (the socket's receive timeout paces it) until the
    server closes ``sock``, ``done()`` or ``seconds``; returns (elapsed, bytes sent, closed)."""
    started = time.monotonic()
    sent = 0
    sock.settimeout(interval)
    while time.monotonic() - started < seconds and not done():
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - started, sent, True
        except TimeoutError:
            pass
        except ConnectionError:
            return time.monotonic() - started, sent, True
        try:
            sock.send(byte)
            sent += 1
        except OSError:
            return time.monotonic() - started, sent, True
    return time.monotonic() - started, sent, False


@pytest.fixture
def fd_room():
    """Room for 1 000 connections at both ends: the soft open-files limit is raised
    toward the hard one for the test (and put back), skipping only when even the
    hard limit is too low (under CI a skip fails: conftest.py)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2500 if hard == resource.RLIM_INFINITY else min(2500, hard)
    if wanted < 2500:
        pytest.skip(f"ulimit -Hn is {hard}; 1 000 slow connections need about 2 100 file descriptors")
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- 1. a thousand slow handshakes ----------------------------------------------------------


def test_a_thousand_slow_handshakes_hold_no_thread(server_factory, fd_room):
    """1 000 connections with a partial request head (one in ten trickling a byte every
    0.2 s) cost fewer than 20 threads and under 20 MB; a healthy client connecting while
    they are all pending gets in and receives an emitted event."""
    server = server_factory(handshake_timeout=60)
    proc = psutil.Process()
    for _ in range(3):  # warm-up: imports and first allocations of a connection
        with connect(server.url + "?v=1&replay=0") as ws:
            assert recv_json(ws)["type"] == "hello"
    wait_for(lambda: not request_threads(), message="warm-up request threads gone")
    slow, trickling = [], []
    stop_trickle = threading.Event()

    def trickle():
        while not stop_trickle.wait(0.2):
            for sock in list(trickling):
                try:
                    sock.send(b"X")
                except OSError:
                    pass

    trickler = threading.Thread(target=trickle, name="test-trickle")
    trickler.start()  # before the baseline: it is the test's thread, not the server's
    gc.collect()
    base_threads, base_rss = proc.num_threads(), proc.memory_info().rss
    try:
        for i in range(1000):
            sock = raw_connect(server, PARTIAL_HEAD)
            slow.append(sock)
            if i % 10 == 0:
                trickling.append(sock)
        wait_for(
            lambda: server.get_stats()["pending_handshakes"] == 1000,
            timeout=4 * TIMEOUT,
            message=lambda: f"1000 pending, now {server.get_stats()['pending_handshakes']}",
        )
        threads = proc.num_threads() - base_threads
        rss = proc.memory_info().rss - base_rss
        assert threads < 20, f"{threads} threads more with 1000 slow handshakes"
        assert rss < 20 * MB, f"{rss / MB:.1f} MB more with 1000 slow handshakes"
        with connect(server.url + "?v=1&replay=0") as ws:
            assert recv_json(ws)["type"] == "hello"
            server.emit("tts_status", status="meanwhile")
            recv_until(ws, lambda frame: frame.get("status") == "meanwhile")
        stats = server.get_stats()
        assert stats["pending_handshakes"] == 1000 and stats["handshake_timeouts"] == 0  # all still there
    finally:
        stop_trickle.set()
        trickler.join()
        for sock in slow:
            sock.close()


# -- 2. the deadline is total ---------------------------------------------------------------


def test_the_deadline_is_total_not_per_read(server_factory):
    """A client sending one byte every 0.3 s is closed at handshake_timeout (1.5 s) after
    it connected, though no read ever waits 1.5 s; it did send bytes in between. Counted
    in get_stats() and /metrics."""
    server = server_factory(handshake_timeout=1.5)
    sock = raw_connect(server, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    try:
        elapsed, sent, closed = trickle_until(sock, lambda: False, seconds=3.0, interval=0.3)
        assert closed, f"still open after {elapsed:.1f} s and {sent} trickled bytes"
        assert sent >= 3  # it kept trickling until it was cut
        wait_for(lambda: server.get_stats()["handshake_timeouts"] == 1, message="the timeout counted")
    finally:
        sock.close()
    families = scrape(server)
    assert value(families, "coda_ws_handshake_timeouts", "_total") == 1
    assert value(families, "coda_ws_pending_handshakes") == 0


# -- 3. oversize heads --------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["many_headers", "endless_line"])
def test_oversize_head_gets_431_with_a_json_body(server_factory, shape):
    """A request head over 64 KiB (many ordinary headers, or one line that never ends) is
    answered 431 with the server's JSON error body, then closed; the server keeps serving."""
    server = server_factory()
    head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if shape == "many_headers":  # each header small: Werkzeug alone would take them all
        head += b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 1000) for i in range(80)) + b"\r\n"
    else:
        head += b"X-Endless: " + b"b" * (80 * 1024)
    sock = raw_connect(server)
    try:
        try:
            sock.sendall(head)
        except ConnectionError:
            pytest.fail("the server reset the connection instead of answering 431")
        sock.shutdown(socket.SHUT_WR)  # done sending: the server's lingering read ends at once
        status, headers, body = read_response(sock)
    finally:
        sock.close()
    assert status == 431
    assert headers["content-type"] == "application/json"
    error = json.loads(body)
    assert error["error"] == "headers_too_large" and "65536" in error["message"]
    assert server.get_stats()["oversize_heads"] == 1
    assert get(server, "/healthz").status == 200
    with connect(server.url + "?v=1&replay=0") as ws:
        assert recv_json(ws)["type"] == "hello"


# -- 4. slow bodies -------------------------------------------------------------------------


def test_a_trickled_post_body_is_cut_at_the_deadline_and_holds_no_thread(server_factory):
    """POST /events declaring a small body and trickling it one byte every 0.3 s: no thread
    runs for it meanwhile, it is closed at the deadline, and nothing is published."""
    server = server_factory(handshake_timeout=1.5)
    body = json.dumps({"type": "tts_status", "status": "slow body"}).encode()
    head = (
        f"POST /events HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    wait_for(lambda: not request_threads(), message="no request thread before")
    before = set(threading.enumerate())
    sock = raw_connect(server, head + body[:3])
    held = []

    def done():  # never true: records any thread the server started for this request
        held.extend(new_threads(before))
        return False

    try:
        elapsed, sent, closed = trickle_until(sock, done, seconds=3.0, interval=0.3, byte=b" ")
    finally:
        sock.close()
    assert closed and 3 <= sent < len(body), (elapsed, sent)
    assert held == [], f"threads ran for the pending request: {sorted(set(held))}"
    assert server.get_stats()["handshake_timeouts"] == 1
    assert server.bus.last_seq == 0


def test_a_body_sent_after_its_head_is_read_by_the_loop_then_served(server_factory):
    """The loop waits for a declared body that comes after its head (within the deadline)
    and hands the whole request over: 202 and the event is published."""
    server = server_factory()
    body = json.dumps({"type": "tts_status", "status": "late body"}).encode()
    head = (
        f"POST /events HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = raw_connect(server, head)
    try:
        wait_for(lambda: server.get_stats()["pending_handshakes"] == 1, message="head read, body awaited")
        assert not request_threads()
        sock.sendall(body)
        status, _, answer = read_response(sock)
    finally:
        sock.close()
    assert status == 202 and json.loads(answer) == {"seq": 1}


@pytest.mark.parametrize("framing", ["chunked", "expect_100"])
def test_bodies_the_loop_does_not_wait_for_are_read_by_the_thread(server_factory, framing):
    """A chunked body, and a body after ``Expect: 100-continue``, are handed to the request
    thread once the head is in, and read there as before: 202."""
    server = server_factory()
    body = json.dumps({"type": "tts_status", "status": framing}).encode()
    head = f"POST /events HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/json\r\n"
    sock = raw_connect(server)
    try:
        if framing == "chunked":
            sock.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
            sock.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        else:
            sock.sendall(f"{head}Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode())
            assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue\r\n")  # the handler read the head
            sock.sendall(body)
        status, _, answer = read_response(sock)
    finally:
        sock.close()
    assert status == 202 and json.loads(answer) == {"seq": 1}


# -- 5. stop() -------------------------------------------------------------------------------


def test_stop_with_a_thousand_pending_returns_promptly_and_leaves_no_thread(thread_baseline, fd_room):
    """stop() with 1 000 slow connections pending (and a WebSocket client) returns within its
    timeout, closes every pending connection and leaves no thread behind."""
    server = CodaWebSocketServer(host="127.0.0.1", port=0, handshake_timeout=60)
    server.start()
    slow = []
    try:
        slow = [raw_connect(server, PARTIAL_HEAD) for _ in range(1000)]
        wait_for(
            lambda: server.get_stats()["pending_handshakes"] == 1000,
            timeout=4 * TIMEOUT,
            message="1000 pending",
        )
        with connect(server.url + "?v=1&replay=0") as ws:
            assert recv_json(ws)["type"] == "hello"
            started = time.monotonic()
            server.stop(timeout=5.0)
            elapsed = time.monotonic() - started
        assert elapsed < 5.0
        left = [t.name for t in threading.enumerate() if t.ident not in thread_baseline]
        assert left == [], f"{len(left)} threads left behind: {left[:5]}"
        for sock in slow:
            assert closed_by_server(sock)
        assert server.get_stats()["pending_handshakes"] == 0
    finally:
        server.stop()
        for sock in slow:
            sock.close()


# -- 6. keep-alive ---------------------------------------------------------------------------


def test_keep_alive_connections_hold_no_thread(server_factory):
    """A client asking for keep-alive gets ``Connection: close`` and is closed at once; one
    that pipelines a next request and trickles it (one byte every 0.2 s) holds no thread
    either: threads return to baseline long before handshake_timeout (30 s)."""
    server = server_factory(handshake_timeout=30)
    request = (
        f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nConnection: keep-alive\r\n\r\n".encode()
    )
    wait_for(lambda: not request_threads(), message="no request thread before")
    before = set(threading.enumerate())

    idle = raw_connect(server, request)
    try:
        status, headers, _ = read_response(idle)  # returns once the server has closed it
    finally:
        idle.close()
    assert status == 200 and headers["connection"] == "close"

    pipelined = raw_connect(server, request + b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    try:
        assert pipelined.recv(4096).startswith(b"HTTP/1.1 200")
        trickle_until(pipelined, lambda: not new_threads(before), seconds=3.0, interval=0.2)
        wait_for(
            lambda: not new_threads(before),
            timeout=3.0,
            message=lambda: f"threads back to baseline, still {new_threads(before)}",
        )
    finally:
        pipelined.close()
    assert server.get_stats()["pending_handshakes"] == 0


# -- limits ----------------------------------------------------------------------------------


def test_beyond_max_pending_the_oldest_is_closed(server_factory, monkeypatch):
    """With MAX_PENDING connections waiting, a new one closes the oldest (counted in
    pending_overflows): a healthy client still gets in."""
    monkeypatch.setattr(acceptor, "MAX_PENDING", 8)
    server = server_factory()
    slow = []
    try:
        for _ in range(8):
            slow.append(raw_connect(server, PARTIAL_HEAD))
            wait_for(
                lambda: server.get_stats()["pending_handshakes"] == len(slow), message="accepted in order"
            )
        with connect(server.url + "?v=1&replay=0") as ws:
            assert recv_json(ws)["type"] == "hello"
        assert closed_by_server(slow[0])
        for sock in slow[1:]:
            sock.setblocking(False)
            assert not closed_by_server(sock)
        assert server.get_stats()["pending_overflows"] == 1
    finally:
        for sock in slow:
            sock.close()


def test_beyond_max_buffered_the_oldest_is_closed(server_factory, monkeypatch):
    """Pending requests together hold at most MAX_BUFFERED bytes: bodies that would exceed
    it close the oldest pending connections first (pending_overflows)."""
    monkeypatch.setattr(acceptor, "MAX_BUFFERED", 200_000)
    server = server_factory()
    head = (
        f"POST /events HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: 100000\r\n\r\n"
    ).encode()
    socks = []
    try:
        for _i in range(3):  # 3 x 80 KB read and waiting for the rest of their body
            socks.append(raw_connect(server, head + b" " * 80_000))
            wait_for(
                lambda: server.get_stats()["pending_overflows"] == max(0, len(socks) - 2),
                message="the oldest closed once over the budget",
            )
        assert closed_by_server(socks[0])
        for sock in socks[1:]:
            sock.setblocking(False)
            assert not closed_by_server(sock)
    finally:
        for sock in socks:
            sock.close()
