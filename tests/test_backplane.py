"""The Redis Streams backplane: one global order across emitter processes and
server nodes, resume on another node, and Redis going away and coming back.

Runs against the Redis on 127.0.0.1:6379 (CI provides it) under a unique key
prefix that is deleted afterwards; the outage tests start their own
redis-server on a free port and kill it.
"""

import contextlib
import json
import logging
import queue
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
import redis
from websockets.exceptions import ConnectionClosed

from coda_ws import EventBus, InvalidEventError
from coda_ws.backplane import RedisBackplane, RedisEmitter
from coda_ws.backplane.redis import stream_keys

from ._proc import CHILD_TIMEOUT, Child
from ._redis import REDIS_URL, delete_keys, read_events, unique_prefix
from .conftest import TIMEOUT, connect, recv_json, wait_for


@pytest.fixture
def prefix():
    """A key prefix of this test's own on the shared Redis; its keys are deleted afterwards."""
    with unique_prefix() as name:
        yield name


@pytest.fixture
def node_factory(server_factory, prefix):
    """Started server nodes on the shared Redis under this test's prefix."""

    def make(url=REDIS_URL, **kwargs):
        kwargs.setdefault("backplane", url)
        kwargs.setdefault("backplane_prefix", prefix)
        kwargs.setdefault("client_queue_size", 10_000)
        server = server_factory(**kwargs)
        wait_for(
            lambda: server.backplane.ready()[0], TIMEOUT, lambda: f"node ready: {server.backplane.ready()}"
        )
        return server

    return make


@contextlib.contextmanager
def open_v1(server, query=""):
    """A v1 client; yields (ws, hello) after reading hello (and replay, unless resuming)."""
    with connect(f"{server.url}?v=1{'&' + query if query else ''}") as ws:
        hello = recv_json(ws)
        assert hello["type"] == "hello"
        yield ws, hello


def readyz(server):
    """``GET /readyz``: the status code and the backplane's check."""
    try:
        with urllib.request.urlopen(server.http_url + "readyz", timeout=TIMEOUT) as reply:
            status, body = reply.status, reply.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    return status, json.loads(body)["checks"]["backplane"]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisProcess:
    """A redis-server of the test's own on a free port (killed in ``stop``)."""

    def __init__(self, directory, persistent=False):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = str(directory)
        self.persistent = persistent
        self.proc = None

    def start(self):
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        )
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *persistence,
                "--dir",
                self.directory,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            wait_for(lambda: self._pings(client), TIMEOUT, f"redis-server on port {self.port}")
        finally:
            client.close()

    @staticmethod
    def _pings(client):
        try:
            return client.ping()
        except redis.exceptions.ConnectionError:
            return False

    def stop(self):
        """SIGKILL: Redis vanishes without a goodbye, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(TIMEOUT)


@pytest.fixture
def own_redis(tmp_path):
    """Make RedisProcess objects; every one is killed after the test."""
    made = []

    def make(persistent=False):
        process = RedisProcess(tmp_path, persistent)
        made.append(process)
        return process

    yield make
    for process in made:
        process.stop()


_EMITTER_CHILD = """
import sys
from coda_ws.backplane import RedisEmitter
url, prefix, name, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
emitter = RedisEmitter(url, prefix)
for i in range(count):
    emitter.emit("llm_token", token=f"{name}:{i}", cumulative_text="", session_id=name)
ok = emitter.flush(20)
stats = emitter.stats()
emitter.close()
print("done", ok, stats["published"], stats["dropped"], flush=True)
"""


def test_two_nodes_three_emitter_processes_identical_streams(node_factory, prefix):
    """Three emitter processes, two nodes on different ports, one client per
    node: both clients receive the same events, under the same seqs, in the
    same order, with nothing missing and each emitter's order kept."""
    node_a, node_b = node_factory(), node_factory()
    assert node_a.port != node_b.port and node_a.epoch == node_b.epoch
    per_emitter = 500
    with open_v1(node_a) as (ws_a, _), open_v1(node_b) as (ws_b, _):
        assert recv_json(ws_a)["type"] == recv_json(ws_b)["type"] == "replay"
        children = [
            Child("-c", _EMITTER_CHILD, REDIS_URL, prefix, name, per_emitter)
            for name in ("stt", "llm", "tts")
        ]
        try:
            for child in children:
                match = child.wait_for_output(r"^done (\w+) (\d+) (\d+)")
                assert match.groups() == ("True", str(per_emitter), "0"), child.describe()
                assert child.wait() == 0
        finally:
            for child in children:
                child.kill()
        total = 3 * per_emitter
        got_a = read_events(ws_a, total)
        got_b = read_events(ws_b, total)
    assert got_a == got_b
    first = got_a[0]["seq"]
    assert [e["seq"] for e in got_a] == list(range(first, first + total))
    for name in ("stt", "llm", "tts"):
        tokens = [e["token"] for e in got_a if e["session_id"] == name]
        assert tokens == [f"{name}:{i}" for i in range(per_emitter)]


def test_client_cut_on_one_node_resumes_on_another(node_factory, prefix):
    """A client of node A is cut off; events go on; it resumes on node B,
    started after the cut, with recovered: true and no gap or duplicate."""
    node_a = node_factory()
    emitter = RedisEmitter(REDIS_URL, prefix)
    try:
        with open_v1(node_a) as (ws, hello):
            recv_json(ws)  # replay
            epoch = hello["epoch"]
            for i in range(100):
                emitter.emit("stt_result", text=str(i), confidence=1.0, duration_ms=1.0)
            seen = read_events(ws, 60)
            ws.socket.shutdown(socket.SHUT_RDWR)  # cut, no close handshake
        last = seen[-1]["seq"]
        for i in range(100, 200):
            emitter.emit("stt_result", text=str(i), confidence=1.0, duration_ms=1.0)
        assert emitter.flush(TIMEOUT)
        node_b = node_factory()
        assert node_b.epoch == epoch and node_b.sequence_number == emitter.last_seq
        with open_v1(node_b, f"since={last}&epoch={epoch}") as (ws, hello):
            resume = recv_json(ws)
            assert resume == {
                "type": "resume",
                "recovered": True,
                "from": last + 1,
                "to": hello["seq"],
                "count": hello["seq"] - last,
            }
            rest = read_events(ws, resume["count"])
            node_b.emit("stt_result", text="live", confidence=1.0, duration_ms=1.0)
            rest += read_events(ws, 1)
        texts = [e["text"] for e in seen + rest]
        assert texts == [str(i) for i in range(200)] + ["live"]
        assert [e["seq"] for e in seen + rest] == list(range(seen[0]["seq"], seen[0]["seq"] + 201))
    finally:
        emitter.close()


def test_node_emit_goes_through_redis_to_every_node(node_factory):
    """emit() on a node returns seq 0 at once; the event reaches the clients
    of both nodes under the same global seq, and stop() flushes it first."""
    node_a, node_b = node_factory(), node_factory()
    with open_v1(node_b) as (ws, _):
        recv_json(ws)
        event = node_a.emit("tts_status", status="speaking")
        assert event.seq == 0
        got = read_events(ws, 1)[0]
        assert (got["type"], got["status"]) == ("tts_status", "speaking")
        assert node_a.bus.flush(TIMEOUT) and node_a.backplane.flush(TIMEOUT)
        assert node_a.bus.history()[-1].seq == got["seq"]


def test_a_stream_entry_the_node_cannot_read_does_not_kill_its_reader(node_factory, prefix, caplog):
    """An entry written to the shared stream by something other than coda_ws
    (no type, no timestamp, no payload): the node's reader logs it once,
    counts it, says why in ready(), and keeps trying; once the entry is gone
    it is ready again, its history intact."""
    node = node_factory()
    node.emit("tts_status", status="before")
    assert node.backplane.flush(TIMEOUT)
    wait_for(lambda: node.bus.head == 1, TIMEOUT, "the first event")
    stream = stream_keys(prefix)["stream"]
    client = redis.Redis.from_url(REDIS_URL)
    try:
        with caplog.at_level(logging.ERROR, logger="coda_ws.backplane"):
            client.xadd(stream, {"x": "not an event"}, id="2-0")
            wait_for(lambda: node.backplane.stats()["reader_errors"] >= 1, TIMEOUT, "the reader error")
            ready, why = node.backplane.ready()
            assert not ready and "cannot read the shared stream" in why, why
            assert node.backplane._thread is not None and node.backplane._thread.is_alive()
            client.xdel(stream, "2-0")
        errors = [r for r in caplog.records if "cannot read the shared stream" in r.getMessage()]
        assert len(errors) == 1, [r.getMessage() for r in caplog.records]
        wait_for(lambda: node.backplane.ready()[0], TIMEOUT, lambda: f"ready again: {node.backplane.ready()}")
        assert [json.loads(e.data)["status"] for e in node.bus.history()] == ["before"]
    finally:
        client.close()


def test_separate_prefixes_do_not_mix(node_factory, prefix):
    """Two assistants on one Redis, each with its own prefix, see only their own events."""
    other = f"{prefix}_other"
    try:
        mine, theirs = node_factory(), node_factory(backplane_prefix=other)
        assert mine.epoch != theirs.epoch
        with RedisEmitter(REDIS_URL, other) as emitter:
            emitter.emit("stt_start", mode="theirs")
        with RedisEmitter(REDIS_URL, prefix) as emitter:
            emitter.emit("stt_start", mode="mine")
        wait_for(lambda: mine.bus.head == 1 and theirs.bus.head == 1, TIMEOUT, "both streams")
        assert json.loads(mine.bus.history()[0].data)["mode"] == "mine"
        assert json.loads(theirs.bus.history()[0].data)["mode"] == "theirs"
    finally:
        delete_keys(REDIS_URL, other)


def test_emitter_validates_in_the_caller_and_never_blocks_without_redis():
    """With nothing listening on the port, a bad event still raises at once,
    good ones return at once (seq 0), and close() gives up within its timeout,
    counting what it could not publish."""
    emitter = RedisEmitter(f"redis://127.0.0.1:{free_port()}/0", "coda_ws_test_nowhere", buffer_size=10)
    try:
        with pytest.raises(InvalidEventError, match="confidence"):
            emitter.emit("stt_result", text="x", confidence="high", duration_ms=1.0)
        started = time.monotonic()
        for i in range(50):
            assert emitter.emit("stt_start", mode=str(i)).seq == 0
        assert time.monotonic() - started < 0.5
        wait_for(lambda: not emitter.ready()[0], TIMEOUT, "emitter to notice")
        assert "unreachable" in emitter.ready()[1]
    finally:
        started = time.monotonic()
        emitter.close(timeout=1.0)
        assert time.monotonic() - started < 2.0
    stats = emitter.stats()
    assert stats["published"] == 0 and stats["dropped"] == 50 and stats["buffered"] == 0


def test_keys_live_under_one_hash_tag(node_factory, prefix):
    """Every key the backplane writes is under {prefix}: (one Redis Cluster slot)."""
    node = node_factory()
    node.emit("stt_start", mode="x")
    assert node.backplane.flush(TIMEOUT)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = {key.decode() for key in client.scan_iter(match="*%s*" % prefix)}
    finally:
        client.close()
    names = stream_keys(prefix)
    assert {names["meta"], names["stream"]} <= keys
    assert all(key.startswith("{%s}:" % prefix) for key in keys)


def test_outage_with_redis_flushed(node_factory, own_redis):
    """Redis killed during emission and started again empty: emit() stays
    fast and never blocks, drops beyond the buffer are counted and announced
    by a system_error, /readyz's backplane check reports it, delivery resumes
    by itself, and the client (closed when the node reloads) gets
    recovered: false, reason: epoch_changed."""
    server_redis = own_redis()
    server_redis.start()
    backplane = RedisBackplane(server_redis.url, "coda_ws_outage", buffer_size=200)
    node = node_factory(server_redis.url, backplane=backplane)
    with open_v1(node) as (ws, hello):
        recv_json(ws)
        epoch = hello["epoch"]
        for i in range(50):
            node.emit("stt_start", mode=f"before:{i}")
        last = read_events(ws, 50)[-1]["seq"]

        assert readyz(node) == (200, "ok")
        server_redis.stop()
        wait_for(lambda: not backplane.ready()[0], TIMEOUT, "the node to notice")
        status, backplane_check = readyz(node)
        assert status == 503 and "unreachable" in backplane_check
        latencies = []
        for i in range(1000):
            started = time.perf_counter()
            node.emit("stt_start", mode=f"during:{i}")
            latencies.append(time.perf_counter() - started)
        latencies.sort()
        # Blocking on Redis would take seconds (connect and socket timeouts);
        # the bounds leave room for a loaded two-core machine.
        assert latencies[500] < 0.002 and latencies[-1] < 0.25, (
            f"emit p50 {latencies[500] * 1e3:.2f} ms, max {latencies[-1] * 1e3:.1f} ms"
        )
        stats = backplane.stats()
        assert stats["buffered"] <= 201 and stats["dropped"] >= 700
        assert stats["dropped"] + stats["buffered"] + stats["published"] >= 1050

        server_redis.start()  # empty: Redis lost the stream
        with pytest.raises(ConnectionClosed) as closed:
            read_events(ws, 10_000, timeout=CHILD_TIMEOUT)
        # Not "too slow" (4008): the stream it was reading is gone; resume tells it so.
        assert closed.value.rcvd.code == 1012
    wait_for(
        lambda: node.get_stats()["disconnects"].get("epoch_changed") == 1,
        TIMEOUT,
        lambda: f"the close counted as epoch_changed: {node.get_stats()['disconnects']}",
    )
    wait_for(
        lambda: backplane.ready()[0] and backplane.stats()["buffered"] == 0,
        CHILD_TIMEOUT,
        lambda: f"the backplane to recover: {backplane.ready()} {backplane.stats()}",
    )
    assert node.epoch != epoch and backplane.stats()["epoch_changes"] == 1
    assert readyz(node) == (200, "ok")
    with open_v1(node, f"since={last}&epoch={epoch}") as (ws, _):
        assert recv_json(ws) == {
            "type": "resume",
            "recovered": False,
            "reason": "epoch_changed",
            "earliest": node.bus.oldest_seq,
        }
        replay = recv_json(ws)["events"]
        notice = [e for e in replay if e["type"] == "system_error"]
        assert len(notice) == 1 and notice[0]["details"]["dropped"] == backplane.stats()["dropped"]
        node.emit("stt_start", mode="after")
        after = read_events(ws, 1)[0]
        assert after["mode"] == "after" and after["seq"] == node.sequence_number
    history = [json.loads(e.data) for e in node.bus.history()]
    during = [e["mode"] for e in history if e.get("mode", "").startswith("during:")]
    assert during == [f"during:{i}" for i in range(200)]  # the buffer's worth, in order


def test_outage_with_redis_keeping_the_stream(node_factory, own_redis):
    """Redis (with persistence) killed and restarted during emission: the
    epoch is kept, the connected client is not closed, and every event
    emitted during the outage (within the buffer) arrives, in order, no gap."""
    server_redis = own_redis(persistent=True)
    server_redis.start()
    node = node_factory(server_redis.url, backplane_prefix="coda_ws_keep")
    emitter = RedisEmitter(server_redis.url, "coda_ws_keep")
    try:
        with open_v1(node) as (ws, hello):
            recv_json(ws)
            for i in range(20):
                emitter.emit("stt_start", mode=str(i))
            before = read_events(ws, 20)
            server_redis.stop()
            wait_for(lambda: not node.backplane.ready()[0], TIMEOUT, "the node to notice")
            for i in range(20, 120):
                emitter.emit("stt_start", mode=str(i))
            server_redis.start()
            after = read_events(ws, 100, timeout=CHILD_TIMEOUT)
            assert node.epoch == hello["epoch"]
        got = before + after
        assert [e["mode"] for e in got] == [str(i) for i in range(120)]
        assert [e["seq"] for e in got] == list(range(got[0]["seq"], got[0]["seq"] + 120))
        assert emitter.stats()["dropped"] == 0
    finally:
        emitter.close()


class GatedSend:
    """Stands in for a publisher's ``_send``: each round trip to Redis is
    announced (:meth:`next_call`: how many items it carries) and waits for
    :meth:`allow`, as when the publisher thread is descheduled or Redis is
    slow; ``lose_replies`` makes the next round trips run in Redis, then
    fail as if the connection died before the reply arrived."""

    def __init__(self, publisher):
        self._send = publisher._send
        self._calls = queue.Queue()
        self._permits = threading.Semaphore(0)
        self._open = False
        self.lose_replies = 0

    def __call__(self, client, batches):
        self._calls.put(sum(n for _, _, n in batches))
        if not self._open and not self._permits.acquire(timeout=TIMEOUT):
            raise redis.exceptions.ConnectionError("the test never allowed this round trip")
        results = self._send(client, batches)
        if self.lose_replies:
            self.lose_replies -= 1
            raise redis.exceptions.ConnectionError("reply lost (test)")
        return results

    def next_call(self):
        return self._calls.get(timeout=TIMEOUT)

    def allow(self, count=1):
        self._permits.release(count)

    def open(self):
        self._open = True
        self._permits.release(1000)


def stream_events(prefix):
    """Every event of the shared Redis's stream under ``prefix``, oldest first."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return [json.loads(fields[b"d"]) for _, fields in client.xrange(stream_keys(prefix)["stream"])]
    finally:
        client.close()


def test_one_drop_notice_counts_every_drop_of_an_overflow(prefix, monkeypatch):
    """Events dropped while the events buffered ahead of the drop notice are
    not yet in Redis (their round trip held) are all counted by one notice,
    published after those events. Regression: the notice was taken with
    them, built with the drops so far, and the drops until Redis stamped it
    needed a second notice for the same overflow."""
    emitter = RedisEmitter(REDIS_URL, prefix, buffer_size=10)
    gate = GatedSend(emitter._publisher)
    monkeypatch.setattr(emitter._publisher, "_send", gate)
    try:
        emitter.emit("stt_start", mode="0")
        assert gate.next_call() == 1  # the thread holds event 0
        for i in range(1, 15):  # 9 buffered, then the buffer is full: 5 dropped
            emitter.emit("stt_start", mode=str(i))
        gate.allow()
        gate.next_call()  # the thread took the next items and holds them
        for i in range(15, 20):  # the buffer is still full: 5 more dropped
            emitter.emit("stt_start", mode=str(i))
        gate.open()
        assert emitter.flush(TIMEOUT)
    finally:
        gate.open()
        emitter.close()
    stats = emitter.stats()
    assert (stats["published"], stats["dropped"]) == (10, 10)
    events = stream_events(prefix)
    assert [e.get("mode", e["type"]) for e in events] == [str(i) for i in range(10)] + ["system_error"]
    assert events[-1]["details"]["dropped"] == 10


def test_drop_notice_retried_after_a_lost_reply(prefix, monkeypatch):
    """A batch with the drop notice that Redis added but whose reply was lost
    is retried unchanged, so the script recognizes it: the notice is in the
    stream once, with the count it was taken with, and a drop counted after
    it was taken (the buffer full again) gets the next notice: the notices
    add up to every drop."""
    emitter = RedisEmitter(REDIS_URL, prefix, buffer_size=5)
    gate = GatedSend(emitter._publisher)
    monkeypatch.setattr(emitter._publisher, "_send", gate)
    try:
        emitter.emit("stt_start", mode="0")
        assert gate.next_call() == 1
        for i in range(1, 8):  # 4 buffered, 3 dropped
            emitter.emit("stt_start", mode=str(i))
        gate.allow()
        assert gate.next_call() == 4  # events 1-4, ahead of the notice
        gate.allow()
        assert gate.next_call() == 1  # the notice, counting 3
        for i in range(8, 13):  # 4 buffered, 1 dropped: the buffer is full again
            emitter.emit("stt_start", mode=str(i))
        gate.lose_replies = 1
        gate.allow()
        assert gate.next_call() == 1  # the same notice again, after the lost reply
        gate.open()
        assert emitter.flush(TIMEOUT)
    finally:
        gate.open()
        emitter.close()
    stats = emitter.stats()
    assert (stats["published"], stats["dropped"]) == (9, 4)
    events = stream_events(prefix)
    got = [e.get("mode") or e["details"]["dropped"] for e in events]  # a notice: its count
    assert got == ["0", "1", "2", "3", "4", 3, "8", "9", "10", "11", 1]


def test_node_restart_continues_the_shared_stream(node_factory, prefix):
    """A node stopped and a new one started load epoch, seq, history and
    replay from Redis: the stream does not restart with the node."""
    first = node_factory()
    first.broadcast_system_info({"event": "startup"})
    for i in range(30):
        first.emit("llm_token", token=str(i), cumulative_text="")
    assert first.backplane.flush(TIMEOUT)
    epoch, head = first.epoch, first.bus.head
    first.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith("coda-ws-redis")]
    second = node_factory()
    assert (second.epoch, second.bus.head) == (epoch, head)
    assert [e.seq for e in second.bus.history()] == list(range(1, head + 1))
    assert [e["type"] for e in second.replay_buffer] == ["system_info"]
    stored = second.bus.stored_history(0, limit=5)
    assert [e.seq for e in stored] == [1, 2, 3, 4, 5]


def test_bus_with_backplane_needs_no_server(prefix):
    """A bare EventBus can follow the backplane too (attach, start, close)."""
    bus = EventBus()
    backplane = RedisBackplane(REDIS_URL, prefix)
    backplane.attach(bus)
    try:
        assert backplane.start()
        sub = bus.subscribe()
        bus.emit("stt_start", mode="bare")
        assert backplane.flush(TIMEOUT)
        entries, position = sub.read()
        assert [json.loads(e.data)["mode"] for e in entries] == ["bare"]
        sub.commit(position)
    finally:
        assert backplane.close()
        bus.close()


def test_flush_before_attach_has_nothing_to_wait_for(prefix):
    """flush() on a backplane not attached to a bus returns True (it used to fail on the missing bus)."""
    backplane = RedisBackplane(REDIS_URL, prefix)
    try:
        assert backplane.flush(TIMEOUT) is True
    finally:
        assert backplane.close()


def test_serve_command_with_backplane(prefix):
    """``coda-ws serve --backplane URL --backplane-prefix P`` serves the shared
    stream and stops cleanly on Ctrl-C."""
    child = Child(
        "-m",
        "coda_ws",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--backplane",
        REDIS_URL,
        "--backplane-prefix",
        prefix,
    )
    try:
        url = child.ws_url()
        with connect(f"{url}?v=1", open_timeout=CHILD_TIMEOUT) as ws:
            assert recv_json(ws, CHILD_TIMEOUT)["type"] == "hello"
            assert recv_json(ws, CHILD_TIMEOUT)["type"] == "replay"
            with RedisEmitter(REDIS_URL, prefix) as emitter:
                emitter.emit("stt_start", mode="from a worker")
            assert read_events(ws, 1, timeout=CHILD_TIMEOUT)[0]["mode"] == "from a worker"
        child.interrupt()
        assert child.wait() == 0, child.describe()
    finally:
        child.kill()
