"""CodaWebSocketServer through real sockets: the original API, legacy protocol,
ordering, slow and vanished clients, shutdown, leaks, and mounting on Flask."""

import contextlib
import json
import logging
import os
import socket
import threading
import time
import urllib.request

import pytest
from flask import Flask
from websockets.exceptions import ConnectionClosed

from coda_ws import CodaWebSocketServer, EventBus
from coda_ws.events import EVENT_CLASSES

from ..conftest import TIMEOUT, connect, recv_json, wait_for
from ..rawws import RawClient
from .test_events import SAMPLE_FIELDS


def open_fds():
    return len(os.listdir("/proc/self/fd"))


# -- the original API ------------------------------------------------------------


def test_defaults_match_the_original():
    """Constructor defaults and attributes are the original's."""
    server = CodaWebSocketServer()
    assert (server.host, server.port, server.max_replay_events) == ("localhost", 8765, 50)
    assert (server.ping_interval, server.ping_timeout) == (20, 10)
    assert server.clients == {} and server.sequence_number == 0 and server.replay_buffer == []
    assert server.running is False and server.server is None
    assert server.on_connect_handlers == server.on_disconnect_handlers == server.on_message_handlers == []
    stats = server.get_stats()
    for key in (
        "total_connections",
        "current_connections",
        "events_sent",
        "errors",
        "replay_buffer_size",
        "running",
    ):
        assert key in stats
    assert server.stats["running"] is False


def test_start_stop_are_idempotent_and_port_zero_is_reported():
    """start() twice and stop() twice are harmless; port 0 becomes the bound port."""
    server = CodaWebSocketServer(host="127.0.0.1", port=0)
    server.start()
    server.start()
    try:
        assert server.running and server.port != 0
        assert server.url == f"ws://127.0.0.1:{server.port}/"
        with connect(server.url):
            pass
    finally:
        server.stop()
        server.stop()
    assert not server.running


def test_bind_failure_raises_oserror_naming_the_address():
    """A taken port raises OSError with the address (Werkzeug would sys.exit) and running stays False."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        server = CodaWebSocketServer(host="127.0.0.1", port=port)
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            server.start()
        assert server.running is False
    finally:
        blocker.close()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"port": -1}, "port"),
        ({"port": "80"}, "port"),
        ({"host": ""}, "host"),
        ({"ping_interval": -1}, "ping_interval"),
        ({"max_clients": 0}, "max_clients"),
        ({"url_prefix": "nope"}, "url_prefix"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    """Bad constructor arguments raise ValueError naming the argument."""
    with pytest.raises(ValueError, match=message):
        CodaWebSocketServer(**kwargs)


def test_unknown_option_is_a_type_error():
    """A misspelt option raises TypeError instead of being ignored."""
    with pytest.raises(TypeError):
        CodaWebSocketServer(histroy_size=5)


def test_run_context_and_with_statement(server_factory):
    """run_context() and `with server:` start and stop."""
    server = CodaWebSocketServer(host="127.0.0.1", port=0)
    with server.run_context():
        assert server.running
    assert not server.running
    with server:
        assert server.running
    assert not server.running


def test_sequence_and_replay_survive_stop_start():
    """A server stopped and started again keeps its sequence, replay buffer and epoch."""
    server = CodaWebSocketServer(host="127.0.0.1", port=0)
    server.start()
    server.broadcast_system_info({"a": 1})
    epoch = server.epoch
    server.stop()
    server.start()
    try:
        assert server.sequence_number == 1 and len(server.replay_buffer) == 1 and server.epoch == epoch
        with connect(server.url) as ws:
            assert recv_json(ws)["type"] == "replay"
    finally:
        server.stop()


# -- events end to end -----------------------------------------------------------


@pytest.mark.parametrize("type_name", sorted(SAMPLE_FIELDS))
def test_every_event_type_round_trips(server, type_name):
    """Each type, emitted by the server, reaches a real client with key order and float kinds intact."""
    with connect(server.url + "?replay=0") as ws:
        server.wait_for_clients(1, TIMEOUT)
        event = server.emit(type_name, session_id="sess", **SAMPLE_FIELDS[type_name])
        raw = ws.recv(timeout=TIMEOUT)
    received = json.loads(raw)
    assert raw == event.to_json()  # the exact bytes: same keys, same order, same number formats
    assert list(received)[:5] == ["version", "seq", "timestamp", "type", "session_id"]
    assert received["seq"] == event.seq and received["session_id"] == "sess"
    cls = EVENT_CLASSES[received["type"]]
    for f in cls.__dataclass_fields__.values():
        if f.type is float:
            assert isinstance(received[f.name], float), f.name


def test_broadcast_event_validates(server):
    """broadcast_event raises ValueError for an unknown type and TypeError for bad fields, consuming no seq."""
    with pytest.raises(ValueError, match="unknown event type"):
        server.broadcast_event("bogus", {})
    with pytest.raises(TypeError, match="stt_start.mode"):
        server.broadcast_event("stt_start", {"mode": 3})
    with pytest.raises(TypeError, match="data must be a dict"):
        server.broadcast_event("stt_start", "continuous")
    assert server.sequence_number == 0


def test_broadcast_helpers(server):
    """The three broadcast_system_* helpers send the documented events with the right priority."""
    with connect(server.url) as ws:
        server.wait_for_clients(1, TIMEOUT)
        server.broadcast_system_info({"version": "2"})
        server.broadcast_system_error("warning", "hot", {"temp": 90})
        server.broadcast_system_metrics(100, 5, uptime_seconds=7)
        got = [recv_json(ws) for _ in range(3)]
    assert got[0]["type"] == "system_info" and got[0]["data"] == {"version": "2"}
    assert got[1]["type"] == "system_error" and got[1]["details"] == {"temp": 90}
    assert got[2] == {
        **got[2],
        "type": "system_metrics",
        "memory_mb": 100.0,
        "cpu_percent": 5.0,
        "gpu_vram_mb": None,
        "uptime_seconds": 7.0,
    }
    assert [e["type"] for e in server.replay_buffer] == ["system_info", "system_error"]


# -- replay ------------------------------------------------------------------------


def test_replay_first_frame_has_priority_events_from_before_any_client(server_factory):
    """High-priority events emitted before anyone connects arrive as the first frame; others do not."""
    server = server_factory(max_replay_events=3)
    for i in range(5):
        server.emit("stt_result", text=f"t{i}", confidence=1.0, duration_ms=1.0)
        server.emit("llm_token", token="x", cumulative_text="x")
    with connect(server.url) as ws:
        first = recv_json(ws)
        assert first["type"] == "replay"
        assert [e["text"] for e in first["events"]] == ["t2", "t3", "t4"]
        assert [e["seq"] for e in first["events"]] == [5, 7, 9]
        server.emit("tts_status", status="live")
        assert recv_json(ws)["status"] == "live"


def test_no_replay_frame_when_buffer_empty(server):
    """A legacy client gets no replay frame when nothing is buffered: the first frame is live."""
    with connect(server.url) as ws:
        server.wait_for_clients(1, TIMEOUT)
        server.emit("tts_status", status="first")
        assert recv_json(ws)["type"] == "tts_status"


def test_replay_buffer_is_the_original_list(server):
    """replay_buffer can be appended to and reassigned, as the original's tests do."""
    server.replay_buffer.append({"type": "system_info", "seq": 0, "data": {"manual": True}})
    with connect(server.url) as ws:
        assert recv_json(ws)["events"][0]["data"] == {"manual": True}
    server.replay_buffer = []
    with connect(server.url) as ws:
        server.wait_for_clients(1, TIMEOUT)
        server.emit("tts_status", status="x")
        assert recv_json(ws)["type"] == "tts_status"


# -- ordering --------------------------------------------------------------------


def test_ordering_under_concurrency(server_factory):
    """8 threads emit 5 000 events each while 5 clients read: all get 40 000, seq +1 each, no duplicates."""
    server = server_factory(history_size=50_000, client_queue_size=45_000)
    stack = contextlib.ExitStack()
    clients = [stack.enter_context(connect(server.url)) for _ in range(5)]
    assert server.wait_for_clients(5, TIMEOUT)
    received = [[] for _ in clients]

    def read(i, ws):
        while len(received[i]) < 40_000:
            received[i].append(json.loads(ws.recv(timeout=30))["seq"])

    readers = [threading.Thread(target=read, args=(i, ws)) for i, ws in enumerate(clients)]
    for t in readers:
        t.start()

    def produce(n):
        for i in range(5000):
            server.emit("llm_token", token=f"{n}:{i}", cumulative_text="")

    producers = [threading.Thread(target=produce, args=(n,)) for n in range(8)]
    for t in producers:
        t.start()
    for t in producers + readers:
        t.join(60)
    stack.close()
    for seqs in received:
        assert seqs == list(range(1, 40_001))


# -- slow, vanished and misbehaving clients ---------------------------------------


def _big_event(server, i, size=16_384):
    server.emit("tool_result", tool_name="t", call_id=str(i), result="x" * size, duration_ms=1.0)


def test_paused_client_does_not_stall_others_and_is_closed_with_4008(server_factory):
    """A client that stops reading: emit() and a healthy client carry on; it gets 4008 and can resume."""
    # Keepalive and write timeouts are not under test (the raw client answers no pings).
    server = server_factory(client_queue_size=16, history_size=2000, ping_interval=None, ping_timeout=120)
    paused = RawClient(server.port, "/?v=1", rcvbuf=4096)
    hello = paused.read_json()
    assert hello["type"] == "hello"
    paused.read_json()  # the (empty) replay frame
    count = 600  # ~10 MB: far more than the socket buffers hold
    with connect(server.url + "?replay=0") as healthy:
        assert server.wait_for_clients(2, TIMEOUT)
        got = []
        for i in range(count):
            _big_event(server, i)
            if i % 8 == 7:  # the healthy client keeps within its 16-event allowance
                while len(got) <= i:
                    got.append(json.loads(healthy.recv(timeout=TIMEOUT))["call_id"])
        # Every emit returned although the paused client read nothing, and the healthy one got all.
        assert got == [str(i) for i in range(count)]
        wait_for(lambda: server.get_stats()["overflows"] == 1, message="overflow")
    frames, code = paused.read_until_close(timeout=10)
    assert code == 4008
    last = frames[-1]["seq"]
    assert [f["seq"] for f in frames] == list(range(1, last + 1))  # what it got is gap-free
    paused.close()
    wait_for(lambda: server.get_stats()["disconnects"].get("too_slow") == 1, message="disconnect counted")
    # It reconnects with since and recovers everything it missed.
    with connect(f"{server.url}?since={last}&epoch={hello['epoch']}") as again:
        assert recv_json(again)["type"] == "hello"
        resume = recv_json(again)
        assert resume == {
            "type": "resume",
            "recovered": True,
            "from": last + 1,
            "to": count,
            "count": count - last,
        }
        seqs = [recv_json(again)["seq"] for _ in range(count - last)]
        assert seqs == list(range(last + 1, count + 1))


def test_paused_client_memory_stays_bounded(server_factory):
    """Memory is bounded by the history, not by what a stalled client has not read."""
    import psutil

    server = server_factory(client_queue_size=100, history_size=200)
    paused = RawClient(server.port, "/", rcvbuf=4096)
    assert server.wait_for_clients(1, TIMEOUT)
    process = psutil.Process()

    def emit_many(first, count):
        for i in range(first, first + count):
            _big_event(server, i, size=32_768)
        server.bus.flush(TIMEOUT)

    emit_many(0, 1000)  # warm up: history, replay and socket buffers are full from here on
    before = process.memory_info().rss
    emit_many(1000, 3000)  # another 96 MB: growth would show if anything kept it
    growth = process.memory_info().rss - before
    assert server.bus.stats()["history_events"] == 200
    # Unbounded, it would grow by the 96 MB emitted. Bounded, it still moves by
    # a few tens of MB: glibc keeps freed 32 KB blocks in per-thread arenas
    # (the emitting thread, the dispatcher and the writer allocate them), more
    # so on a loaded machine; 24 MB was exceeded once with nothing retained.
    assert growth < 40 * 2**20, f"RSS grew {growth / 2**20:.1f} MB"
    paused.close()


def test_vanished_client_is_cleaned_up_and_disconnect_runs_once(server):
    """A client whose socket just dies (no close frame) is removed; disconnect handlers run once."""
    calls = []
    server.add_disconnect_handler(calls.append)
    client = RawClient(server.port)
    assert server.wait_for_clients(1, TIMEOUT)
    client_id = server.get_connected_clients()[0]
    client.reset()
    wait_for(lambda: server.get_connected_clients() == [], message="cleanup")
    wait_for(lambda: calls == [client_id], message="disconnect handler")
    assert server.get_stats()["disconnects"] == {"connection_lost": 1}
    server.stop()
    assert calls == [client_id]  # not again on stop


def test_handlers_run_once_and_failures_are_isolated(server, caplog):
    """Connect/message/disconnect handlers run once each; a raising handler is logged, others still run."""
    events = []

    def broken(*args):
        raise RuntimeError("handler bug")

    server.add_connect_handler(broken)
    server.add_connect_handler(lambda cid: events.append(("connect", cid)))
    server.add_message_handler(broken)
    server.add_message_handler(lambda cid, data: events.append(("message", cid, data)))
    server.add_disconnect_handler(lambda cid: events.append(("disconnect", cid)))
    with caplog.at_level(logging.ERROR, logger="coda_ws.server"):
        with connect(server.url) as ws:
            ws.send(json.dumps({"type": "custom", "n": 1}))
            wait_for(lambda: any(e[0] == "message" for e in events), message="message handler")
        wait_for(lambda: any(e[0] == "disconnect" for e in events), message="disconnect handler")
    cid = events[0][1]
    assert events == [("connect", cid), ("message", cid, {"type": "custom", "n": 1}), ("disconnect", cid)]
    assert "handler bug" in caplog.text
    assert server.get_stats()["handler_errors"] == 2


def test_invalid_frames_get_error_frames_and_the_connection_keeps_working(server):
    """Invalid JSON, non-object JSON and binary frames are answered; the client still gets events."""
    with connect(server.url) as ws:
        server.wait_for_clients(1, TIMEOUT)
        ws.send("{not json")
        error = recv_json(ws)
        assert error["type"] == "error" and error["message"] == "Invalid JSON format"
        assert isinstance(error["timestamp"], float) and "code" not in error
        ws.send("[1, 2]")
        error = recv_json(ws)
        assert (error["type"], error["code"]) == ("error", "bad_request") and "got list" in error["message"]
        ws.send(b"\x00\x01")
        assert recv_json(ws)["code"] == "bad_request"
        ws.send("9" * 5000)  # a number too long for Python's int parser
        assert recv_json(ws)["message"] == "Invalid JSON format"
        ws.send("[" * 60_000)  # nesting deep enough to exhaust recursion, under the size limit
        assert recv_json(ws)["message"] == "Invalid JSON format"
        server.emit("tts_status", status="still here")
        assert recv_json(ws)["status"] == "still here"
    stats = server.get_stats()
    assert stats["invalid_messages"] == 5 and stats["errors"] == 5


def test_oversize_frame_is_closed_with_1009(server_factory):
    """A client frame over max_message_size closes that client with 1009; others are unaffected."""
    server = server_factory(max_message_size=1024)
    with connect(server.url) as other, connect(server.url) as big:
        server.wait_for_clients(2, TIMEOUT)
        big.send("x" * 2000)
        with pytest.raises(ConnectionClosed) as info:
            big.recv(timeout=TIMEOUT)
        assert info.value.rcvd.code == 1009
        server.emit("tts_status", status="ok")
        assert recv_json(other)["status"] == "ok"
    wait_for(lambda: server.get_stats()["disconnects"].get("message_too_big") == 1, message="1009 counted")


def test_send_to_client(server):
    """send_to_client reaches one client only, returns False for unknown ids, and skips replay."""
    with connect(server.url) as a, connect(server.url) as b:
        server.wait_for_clients(2, TIMEOUT)
        target = server.get_connected_clients()[0]
        assert server.send_to_client(
            target, "stt_result", {"text": "only you", "confidence": 1.0, "duration_ms": 1.0}
        )
        assert not server.send_to_client("nobody", "tts_status", {"status": "x"})
        server.emit("tts_status", status="all")
        frames = {}
        for ws in (a, b):
            first = recv_json(ws)
            frames.setdefault(first["type"], []).append(first)
            if first["type"] == "stt_result":
                assert recv_json(ws)["status"] == "all"
        assert len(frames["stt_result"]) == 1 and len(frames["tts_status"]) == 1
    assert server.replay_buffer == []


def test_wait_for_clients(server):
    """wait_for_clients returns True once enough clients are connected and False on timeout."""
    assert server.wait_for_clients(1, 0.05) is False
    with connect(server.url), connect(server.url):
        assert server.wait_for_clients(2, TIMEOUT) is True
        assert len(server.get_connected_clients()) == 2
        assert server.get_stats()["current_connections"] == 2


def test_keepalive_closes_a_client_that_never_answers_pings(server_factory):
    """With ping_interval/ping_timeout, a client that does not answer protocol pings is dropped."""
    server = server_factory(ping_interval=0.2, ping_timeout=0.3)
    silent = RawClient(server.port)  # never answers pings
    with connect(server.url) as polite:  # the websockets client answers pings by itself
        assert server.wait_for_clients(2, TIMEOUT)
        opcode, _ = silent.read_frame()
        assert opcode == 0x9  # a ping
        wait_for(lambda: server.get_stats()["disconnects"].get("keepalive_timeout") == 1, message="timeout")
        assert server.get_stats()["current_connections"] == 1
        server.emit("tts_status", status="alive")
        assert recv_json(polite)["status"] == "alive"
    silent.close()


# -- shutdown and leaks -------------------------------------------------------------


def test_stop_with_twenty_clients_one_stalled(server_factory):
    """stop() returns within its timeout with a stalled client; healthy ones get 1001; no thread is left."""
    before = threading.active_count()
    server = CodaWebSocketServer(host="127.0.0.1", port=0, client_queue_size=10_000)
    server.start()
    healthy = [RawClient(server.port) for _ in range(19)]
    stalled = RawClient(server.port, rcvbuf=4096)
    assert server.wait_for_clients(20, TIMEOUT)
    results = {}
    readers = [
        threading.Thread(target=lambda c=c: results.__setitem__(c, c.read_until_close(timeout=15)))
        for c in healthy
    ]
    for reader in readers:
        reader.start()
    for i in range(300):  # fills the stalled client's buffers; healthy ones read it all
        _big_event(server, i)
    started = time.monotonic()
    server.stop(timeout=3.0)
    elapsed = time.monotonic() - started
    assert elapsed < 3.5
    for reader in readers:
        reader.join(15)
    for client in healthy:
        frames, code = results[client]
        assert code == 1001 and [f["seq"] for f in frames] == list(range(1, 301))
        client.close()
    stalled.close()
    wait_for(lambda: threading.active_count() == before, message=f"threads back to {before}")


def test_connect_disconnect_cycles_leak_nothing():
    """200 connect/disconnect cycles leave no thread and no file descriptor behind."""
    before = set(threading.enumerate())
    server = CodaWebSocketServer(host="127.0.0.1", port=0)
    server.start()
    try:
        server_threads = {"coda-ws-dispatcher", f"coda-ws-http:{server.port}"}

        def extra_threads():
            return sorted(t.name for t in set(threading.enumerate()) - before)

        fds = open_fds()
        for i in range(200):
            client = RawClient(server.port)
            if i % 2:
                client.send_close()
                assert client.read_until_close() == ([], 1000)
                client.close()
            else:
                client.reset()
        wait_for(lambda: server.get_stats()["total_connections"] == 200, message="all 200 registered")
        wait_for(lambda: server.get_stats()["current_connections"] == 0, message="all disconnected")
        wait_for(
            lambda: set(extra_threads()) == server_threads, message=lambda: f"threads: {extra_threads()}"
        )
        wait_for(lambda: open_fds() == fds, message=lambda: f"fds back to {fds}, now {open_fds()}")
        assert server.get_stats()["disconnects"] == {"client_closed": 100, "connection_lost": 100}
    finally:
        server.stop()


# -- mounting -------------------------------------------------------------------------


def test_mounted_on_an_existing_flask_app():
    """An application's own route and the WebSocket under /coda-ws share one port."""
    app = Flask("my_app")

    @app.route("/")
    def home():
        return "my own home page"

    server = CodaWebSocketServer(host="127.0.0.1", port=0, app=app)
    assert app.extensions["coda_ws"] is server
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert urllib.request.urlopen(base + "/", timeout=TIMEOUT).read() == b"my own home page"
        assert server.url == f"ws://127.0.0.1:{server.port}/coda-ws/ws"
        with connect(server.url) as ws, connect(f"ws://127.0.0.1:{server.port}/coda-ws") as ws2:
            server.wait_for_clients(2, TIMEOUT)
            server.emit("tts_status", status="mounted")
            assert recv_json(ws)["status"] == "mounted"
            assert recv_json(ws2)["status"] == "mounted"
        health = urllib.request.urlopen(base + "/coda-ws/healthz", timeout=TIMEOUT).read()
        assert json.loads(health) == {"status": "ok"}
    finally:
        server.stop()


def test_init_app_for_an_application_that_serves_itself():
    """init_app registers the routes on another app; a second server on the same app is refused."""
    app = Flask("served_elsewhere")
    server = CodaWebSocketServer(host="127.0.0.1", port=0)
    server.init_app(app)
    assert app.extensions["coda_ws"] is server
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    assert {"/ws", "/"} <= rules
    with pytest.raises(RuntimeError, match="already has a coda_ws server"):
        CodaWebSocketServer(app=app)


def test_shared_bus_between_servers():
    """A server can serve an existing EventBus; emitting on the bus reaches its clients."""
    bus = EventBus()
    server = CodaWebSocketServer(host="127.0.0.1", port=0, bus=bus)
    with server:
        with connect(server.url) as ws:
            server.wait_for_clients(1, TIMEOUT)
            bus.emit("tts_status", status="from the bus")
            assert recv_json(ws)["status"] == "from the bus"
    assert bus.emit("tts_status", status="bus outlives the server").seq == 2
    bus.close()
