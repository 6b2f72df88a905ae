"""docs/protocol.md v1 through real sockets: hello, resume, filters, subscribe, ping,
policies under pressure, batching, and handshake refusals."""

import contextlib
import json
import threading

import pytest

from ..conftest import TIMEOUT, connect, recv_json, wait_for
from ..rawws import RawClient


@contextlib.contextmanager
def open_v1(server, query=""):
    """Connect a v1 client; yields (ws, hello) and closes it."""
    with connect(f"{server.url}?v=1{'&' + query if query else ''}") as ws:
        hello = recv_json(ws)
        assert hello["type"] == "hello"
        yield ws, hello


def test_hello_then_replay_always(server):
    """A v1 session starts with hello (protocol, server, client id, epoch, seq, replay count), then replay."""
    server.emit("stt_result", text="a", confidence=1.0, duration_ms=1.0)
    server.emit("llm_token", token="t", cumulative_text="t")
    with open_v1(server) as (ws, hello):
        assert set(hello) == {"type", "protocol", "server", "client_id", "epoch", "seq", "replay"}
        assert hello["protocol"] == 1 and hello["server"].startswith("coda-ws/")
        assert hello["epoch"] == server.epoch and hello["seq"] == 2 and hello["replay"] == 1
        assert hello["client_id"] in server.get_connected_clients()
        replay = recv_json(ws)
        assert replay["type"] == "replay" and [e["seq"] for e in replay["events"]] == [1]
    with connect(server.url, subprotocols=["coda-ws.v1"]) as ws:
        assert ws.subprotocol == "coda-ws.v1"
        assert recv_json(ws)["type"] == "hello"


def test_v1_gets_an_empty_replay_frame(server):
    """Unlike legacy clients, v1 clients always get the replay frame, even empty; replay=0 skips it."""
    with open_v1(server) as (ws, hello):
        assert hello["replay"] == 0
        assert recv_json(ws) == {"type": "replay", "events": []}
    with open_v1(server, "replay=0") as (ws, _):
        server.emit("tts_status", status="live")
        assert recv_json(ws)["type"] == "tts_status"


def test_resume_recovers_exactly_the_missed_events(server):
    """since/epoch: resume frame with from/to/count, then exactly the missed events, then live."""
    for i in range(20):
        server.emit("llm_token", token=str(i), cumulative_text="")
    with open_v1(server, f"since=12&epoch={server.epoch}") as (ws, hello):
        assert hello["seq"] == 20
        assert recv_json(ws) == {"type": "resume", "recovered": True, "from": 13, "to": 20, "count": 8}
        assert [recv_json(ws)["seq"] for _ in range(8)] == list(range(13, 21))
        server.emit("llm_token", token="live", cumulative_text="")
        assert recv_json(ws)["seq"] == 21


@pytest.mark.parametrize("case", ["epoch_changed", "unknown_position", "too_old"])
def test_recovered_false_reasons_are_followed_by_replay(server_factory, case):
    """Each recovered:false reason is sent, with the oldest held seq, and the replay frame follows."""
    server = server_factory(history_size=10, client_queue_size=10)
    for i in range(30):
        server.emit("stt_result", text=str(i), confidence=1.0, duration_ms=1.0)
    query = {
        "epoch_changed": "since=25&epoch=not-this-one",
        "unknown_position": f"since=99&epoch={server.epoch}",
        "too_old": f"since=5&epoch={server.epoch}",
    }[case]
    with open_v1(server, query) as (ws, _):
        assert recv_json(ws) == {"type": "resume", "recovered": False, "reason": case, "earliest": 21}
        replay = recv_json(ws)
        assert replay["type"] == "replay" and replay["events"][-1]["seq"] == 30
        server.emit("tts_status", status="live")
        assert recv_json(ws)["seq"] == 31


def test_resume_across_the_seam_under_load(server_factory):
    """Events emitted while history is being replayed arrive after it: none missing, none duplicated."""
    server = server_factory(history_size=20_000, client_queue_size=20_000)
    for i in range(5000):
        server.emit("llm_token", token=str(i), cumulative_text="")
    go = threading.Event()

    def produce():
        go.wait()
        for _ in range(5000):
            server.emit("llm_token", token="live", cumulative_text="")

    producers = [threading.Thread(target=produce) for _ in range(2)]
    for t in producers:
        t.start()
    try:
        go.set()  # emitting at full speed while the client connects and replays history
        with open_v1(server, f"since=100&epoch={server.epoch}") as (ws, hello):
            resume = recv_json(ws)
            assert resume["recovered"] and resume["from"] == 101 and resume["to"] == hello["seq"]
            seqs = [recv_json(ws)["seq"] for _ in range(15_000 - 100)]
    finally:
        for t in producers:
            t.join()
    assert seqs == list(range(101, 15_001))


def test_filters_apply_to_replay_resume_and_live(server):
    """types globs and session_id give the exact subset, in order, whichever way events arrive."""

    def emit_mix(tag):
        server.emit(
            "llm_result", text=tag, duration_ms=1.0, token_count=1, tokens_per_second=1.0, session_id="a"
        )
        server.emit(
            "llm_result", text=tag, duration_ms=1.0, token_count=1, tokens_per_second=1.0, session_id="b"
        )
        server.emit("stt_result", text=tag, confidence=1.0, duration_ms=1.0, session_id="a")
        server.emit("llm_token", token=tag, cumulative_text=tag)  # no session: passes a session filter

    emit_mix("before")
    with open_v1(server, "types=llm_*&session_id=a") as (ws, _):
        replay = recv_json(ws)
        assert [(e["type"], e["session_id"]) for e in replay["events"]] == [("llm_result", "a")]
        emit_mix("live")
        got = [recv_json(ws) for _ in range(2)]
        assert [(e["type"], e.get("session_id")) for e in got] == [("llm_result", "a"), ("llm_token", None)]
    with open_v1(server, f"types=llm_*&session_id=a&since=0&epoch={server.epoch}") as (ws, _):
        resume = recv_json(ws)
        assert resume["count"] == 4
        got = [recv_json(ws) for _ in range(4)]
        assert [e["seq"] for e in got] == [1, 4, 5, 8]


def test_subscribe_frame_changes_filters(server):
    """A subscribe frame replaces the filters and is acknowledged; invalid ones get an error frame."""
    with open_v1(server, "replay=0") as (ws, _):
        ws.send(json.dumps({"type": "subscribe", "types": ["tts_*"], "session_id": "s"}))
        assert recv_json(ws) == {"type": "subscribed", "types": ["tts_*"], "session_id": "s"}
        server.emit("stt_start", mode="m", session_id="s")
        server.emit("tts_status", status="other", session_id="t")
        server.emit("tts_status", status="mine", session_id="s")
        assert recv_json(ws)["status"] == "mine"
        for bad in (
            {"type": "subscribe", "types": "tts_*;drop"},
            {"type": "subscribe", "types": [1]},
            {"type": "subscribe", "types": ["x"] * 1000},
            {"type": "subscribe", "session_id": 5},
        ):
            ws.send(json.dumps(bad))
            error = recv_json(ws)
            assert error["type"] == "error" and error["code"] == "bad_request"
        ws.send(json.dumps({"type": "subscribe"}))  # no filters: everything again
        assert recv_json(ws) == {"type": "subscribed", "types": None, "session_id": None}
        server.emit("stt_start", mode="all")
        assert recv_json(ws)["type"] == "stt_start"


def test_application_ping(server):
    """{"type": "ping"} is answered with pong carrying the last seq and the echoed id."""
    server.emit("tts_status", status="x")
    with open_v1(server, "replay=0") as (ws, _):
        ws.send(json.dumps({"type": "ping", "id": "abc"}))
        assert recv_json(ws) == {"type": "pong", "seq": 1, "id": "abc"}


def test_paused_client_gets_newest_metrics_and_is_not_closed_for_them(server_factory):
    """Metrics conflate for a client that stopped reading: it is not closed and ends with the newest value."""
    # The raw client answers no pings and reads nothing until the flood is over, which
    # can take long on a loaded machine: keepalive and write timeouts are not under test.
    server = server_factory(client_queue_size=16, history_size=500, ping_interval=None, ping_timeout=120)
    paused = RawClient(server.port, "/?v=1&replay=0", rcvbuf=4096)
    assert paused.read_json()["type"] == "hello"
    assert server.wait_for_clients(1, TIMEOUT)
    for i in range(20_000):  # 40 history rings' worth, ~3 MB: more than the socket buffers hold
        server.emit("system_metrics", memory_mb=float(i), cpu_percent=1.0, uptime_seconds=float(i))
    server.bus.flush(TIMEOUT)
    server.emit("tts_status", status="marker")
    seen = []
    while True:
        event = paused.read_json(timeout=TIMEOUT)
        seen.append(event)
        if event["type"] == "tts_status":
            break
    metrics = [e["memory_mb"] for e in seen if e["type"] == "system_metrics"]
    assert metrics[-1] == 19_999.0 and metrics == sorted(metrics)
    assert len(metrics) < 20_000  # older values were conflated...
    assert server.get_stats()["events_dropped"] == 20_000 - len(metrics)  # ...and counted
    assert server.get_stats()["overflows"] == 0 and server.get_stats()["current_connections"] == 1
    paused.close()


def test_backlog_is_written_in_few_system_calls(server_factory):
    """A client that is behind catches up with many frames per write; every frame still parses.

    The backlog is made deterministic by resuming from 0 after 3 000 events: a
    client that merely reads along as events are published is written event by
    event by the dispatcher (the socket buffers absorb it), which is not what
    this test is about."""
    server = server_factory(client_queue_size=5000)
    for i in range(3000):
        server.emit("llm_token", token=str(i), cumulative_text="x" * 100)
    assert server.bus.flush(TIMEOUT)
    slow = RawClient(server.port, f"/?since=0&epoch={server.epoch}", rcvbuf=4096)
    assert server.wait_for_clients(1, TIMEOUT)
    conn = next(iter(server.clients.values()))
    assert slow.read_json()["type"] == "hello"
    assert slow.read_json() == {"type": "resume", "recovered": True, "from": 1, "to": 3000, "count": 3000}
    got = [slow.read_json()["token"] for _ in range(3000)]
    assert got == [str(i) for i in range(3000)]
    wait_for(lambda: conn.frames_sent == 3000, message="all frames written")
    assert conn.sock.write_calls < 3000 / 5, f"{conn.sock.write_calls} writes for 3000 frames"
    slow.close()


def test_one_waiting_frame_is_written_at_once(server):
    """In calm, each event is written as soon as it is emitted (no batching timer)."""
    with connect(server.url) as ws:
        server.wait_for_clients(1, TIMEOUT)
        for i in range(20):
            sent = server.emit("tts_status", status=str(i))
            assert recv_json(ws)["seq"] == sent.seq  # received before the next emit


@pytest.mark.parametrize(
    "query, message",
    [
        ("v=2", "unsupported protocol version"),
        ("since=-1", "since must be"),
        ("since=abc", "since must be"),
        ("epoch=e", "epoch is only meaningful"),
        ("replay=2", "replay must be"),
        ("types=a%3Bb", "invalid types"),
    ],
)
def test_bad_parameters_are_refused_with_400_before_upgrade(server, query, message):
    """Malformed query parameters get HTTP 400 with a JSON body naming the problem."""
    client = RawClient(server.port, f"/?{query}")
    assert client.status == 400
    body = json.loads(client.body)
    assert body["error"] == "bad_request" and message in body["message"]
    client.close()
    assert server.get_stats()["rejected_handshakes"] == 1


def test_foreign_browser_origin_is_refused_with_403(server):
    """A page from another site cannot open the stream; local pages and non-browser clients can."""
    refused = RawClient(server.port, "/", headers=[("Origin", "https://evil.example")])
    assert refused.status == 403 and json.loads(refused.body)["error"] == "forbidden_origin"
    refused.close()
    for origin in ("http://localhost:3000", "http://127.0.0.1:8080", f"http://127.0.0.1:{server.port}"):
        allowed = RawClient(server.port, "/", headers=[("Origin", origin)])
        assert allowed.status == 101, origin
        allowed.close()


def test_client_limit_gives_503(server_factory):
    """Beyond max_clients the handshake is refused with 503; a slot frees up when a client leaves."""
    server = server_factory(max_clients=2)
    with connect(server.url), connect(server.url):
        extra = RawClient(server.port)
        assert extra.status == 503 and json.loads(extra.body)["error"] == "too_many_clients"
        extra.close()
    wait_for(lambda: server.get_stats()["current_connections"] == 0)
    with connect(server.url):
        pass


def test_wrong_path_and_plain_http(server):
    """Only / and /ws upgrade; a WebSocket request elsewhere fails without affecting the server."""
    stray = RawClient(server.port, "/nope")
    assert stray.status in (400, 404)
    stray.close()
    with connect(server.url + "ws") as ws:
        server.wait_for_clients(1, TIMEOUT)
        server.emit("tts_status", status="ok")
        assert recv_json(ws)["status"] == "ok"


def test_deflate_is_declined(server):
    """permessage-deflate offered by the client is not negotiated (events are framed once for all)."""
    with connect(server.url, compression="deflate") as ws:
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        server.wait_for_clients(1, TIMEOUT)
        server.emit("tts_status", status="plain")
        assert recv_json(ws)["status"] == "plain"


def test_stop_start_keeps_epoch_so_clients_resume(server_factory):
    """The same server object stopped and started keeps history and epoch: a client resumes recovered."""
    server = server_factory()
    for i in range(5):
        server.emit("llm_token", token=str(i), cumulative_text="")
    epoch = server.epoch
    server.stop()
    server.emit("llm_token", token="while stopped", cumulative_text="")
    server.start()
    with open_v1(server, f"since=3&epoch={epoch}") as (ws, hello):
        assert hello["epoch"] == epoch
        assert recv_json(ws) == {"type": "resume", "recovered": True, "from": 4, "to": 6, "count": 3}
        assert [recv_json(ws)["seq"] for _ in range(3)] == [4, 5, 6]
