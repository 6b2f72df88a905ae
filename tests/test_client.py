"""CodaEventClient against real servers on 127.0.0.1: iteration and callbacks,
replay, filters, subscribe, ping, resume across restarts, gaps, close codes,
the queue policy, and a client cut off hundreds of times while events pour in."""

import base64
import contextlib
import hashlib
import json
import random
import socket
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from websockets.sync.server import serve as ws_serve

from coda_ws import framing
from coda_ws.client import ClientConnectionError, CodaEventClient, HandshakeRejected
from coda_ws.events import LLMTokenEvent, STTResultEvent, STTStartEvent

from .conftest import TIMEOUT, wait_for

#: Reconnect quickly in tests; the backoff itself is tested on its own.
FAST = {"backoff_initial": 0.001, "backoff_max": 0.02, "connect_timeout": TIMEOUT}


@contextlib.contextmanager
def open_client(url, **kwargs):
    """A CodaEventClient that is always closed, and whose threads are checked gone."""
    options = dict(FAST)
    options.update(kwargs)
    client = CodaEventClient(url, **options)
    try:
        yield client
    finally:
        assert client.close(TIMEOUT), "close() did not join the client's threads"
        assert not [t.name for t in threading.enumerate() if t.name.startswith("coda-ws-eventclient")]


class Collector:
    """Events gathered by another thread, with waits that wake on arrival."""

    def __init__(self):
        self.items = []
        self._cond = threading.Condition()

    def add(self, item):
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def wait_count(self, count, timeout=TIMEOUT):
        """Block until at least ``count`` items arrived; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.items) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"got {len(self.items)} of {count} items within {timeout} s")
                self._cond.wait(remaining)
            return list(self.items)

    def __len__(self):
        return len(self.items)


def take(client, count, timeout=TIMEOUT):
    """The next ``count`` events from ``client.get``, within one deadline."""
    deadline = time.monotonic() + timeout
    events = []
    while len(events) < count:
        remaining = deadline - time.monotonic()
        event = client.get(timeout=max(0.0, remaining))
        if event is None:
            raise AssertionError(f"got {len(events)} of {count} events: {events[-3:]}")
        events.append(event)
    return events


def free_port():
    """A TCP port that was free a moment ago (for servers restarted on the same port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def token(i, **extra):
    return dict(token=str(i), cumulative_text="", **extra)


# -- reading --------------------------------------------------------------------------


def test_iterator_unpacks_replay_then_live_events(server):
    """Iteration yields the replay frame's events one by one, as dataclasses, then live events in order."""
    server.emit("stt_result", text="before", confidence=0.9, duration_ms=10.0, session_id="s1")  # replayed
    server.emit("llm_token", **token("not replayed"))  # low priority: not in the replay frame
    server.emit("stt_result", text="again", confidence=0.8, duration_ms=12.0)
    with open_client(server.url) as client:
        assert client.wait_connected(TIMEOUT)
        assert client.epoch == server.epoch and client.last_seq == 3
        for i in range(3):
            server.emit("llm_token", **token(i))
        received = []
        for event in client:
            received.append(event)
            if len(received) == 5:
                break
    assert [type(e) for e in received] == [STTResultEvent, STTResultEvent] + [LLMTokenEvent] * 3
    assert [e.seq for e in received] == [1, 3, 4, 5, 6]
    assert received[0].text == "before" and received[0].session_id == "s1"
    assert received[0].to_dict()["type"] == "stt_result"


def test_callback_mode_delivers_in_a_named_thread(server):
    """on_event callbacks get every event in order in the client's callback thread; a raising callback is isolated."""
    seen = Collector()
    threads = set()

    def failing(event):
        raise RuntimeError("a broken callback")

    with open_client(server.url) as client:
        client.on_event(failing)
        client.on_event(lambda event: (threads.add(threading.current_thread().name), seen.add(event.seq)))
        assert client.wait_connected(TIMEOUT)
        for i in range(20):
            server.emit("llm_token", **token(i))
        assert seen.wait_count(20) == list(range(1, 21))
        assert client.stats()["callback_errors"] == 20
        with pytest.raises(RuntimeError):
            client.get(timeout=0)  # callbacks own the stream
    assert threads == {f"coda-ws-eventclient-callback:{client.name}"}


def test_get_times_out_with_none_and_close_ends_iteration(server):
    """get(timeout) returns None when nothing comes; close() from another thread ends a blocked iteration."""
    with open_client(server.url) as client:
        assert client.wait_connected(TIMEOUT)
        started = time.monotonic()
        assert client.get(timeout=0.05) is None
        assert time.monotonic() - started >= 0.05
        done = threading.Event()
        result = []

        def iterate():
            result.extend(client)  # blocks until close()
            done.set()

        reader = threading.Thread(target=iterate, name="test-iterate")
        reader.start()
        client.close()
        assert done.wait(TIMEOUT)
        reader.join(TIMEOUT)
        assert result == [] and client.closed
        client.close()  # idempotent
        assert client.get(timeout=0) is None


def test_filters_types_globs_and_session(server):
    """types globs and session_id filter live events and the replay frame alike."""
    server.emit(
        "llm_result", text="old", duration_ms=1.0, token_count=1, tokens_per_second=1.0, session_id="b"
    )
    server.emit(
        "llm_result", text="old-a", duration_ms=1.0, token_count=1, tokens_per_second=1.0, session_id="a"
    )
    with open_client(server.url, types="llm_*,stt_result", session_id="a") as client:
        assert client.wait_connected(TIMEOUT)
        server.emit("llm_token", **token("a"), session_id="a")
        server.emit("llm_token", **token("b"), session_id="b")  # other session
        server.emit("tts_status", status="speaking", session_id="a")  # other type
        server.emit("stt_result", text="no session", confidence=1.0, duration_ms=1.0)  # no session: passes
        events = take(client, 3)
        assert [(e.type, e.session_id) for e in events] == [
            ("llm_result", "a"),
            ("llm_token", "a"),
            ("stt_result", None),
        ]
        assert client.get(timeout=0.05) is None


def test_subscribe_replaces_filters_now_and_after_reconnect(server):
    """subscribe() is acknowledged, applies at once, and is carried over to the next connection."""
    with open_client(server.url, types=["llm_*"]) as client:
        assert client.wait_connected(TIMEOUT)
        ack = client.subscribe(types=["stt_*"], timeout=TIMEOUT)
        assert ack == {"type": "subscribed", "types": ["stt_*"], "session_id": None}
        server.emit("llm_token", **token("filtered out"))
        server.emit("stt_start", mode="push")
        assert [e.type for e in take(client, 1)] == ["stt_start"]
        sessions = client.stats()["sessions"]
        assert client.reconnect()
        wait_for(lambda before=sessions: client.stats()["sessions"] > before, message="reconnect")
        server.emit("llm_token", **token("still filtered out"))
        server.emit("stt_start", mode="after reconnect")
        event = take(client, 1)[0]
        assert isinstance(event, STTStartEvent) and event.mode == "after reconnect"
        with pytest.raises(ValueError):
            client.subscribe(types=["bad pattern!"])


def test_subscribe_while_connecting_is_not_lost(server):
    """A subscribe() that races with the first connection still applies (by URL or by a frame at hello)."""
    with open_client(server.url, types=["llm_*"]) as client:
        assert client.subscribe(types=["tts_*"]) is None  # not connected yet: nothing to acknowledge
        assert client.wait_connected(TIMEOUT)
        assert client.ping(timeout=TIMEOUT) is not None  # the server handles frames in order
        server.emit("llm_token", **token("old filter"))
        server.emit("tts_status", status="new filter")
        assert [e.type for e in take(client, 1)] == ["tts_status"]
        assert client.get(timeout=0.05) is None


def test_ping_gets_a_pong_with_the_stream_position(server):
    """ping(timeout) returns the server's pong, which carries the last seq."""
    with open_client(server.url) as client:
        assert client.wait_connected(TIMEOUT)
        server.emit("llm_token", **token(1))
        server.bus.flush()
        pong = client.ping(timeout=TIMEOUT)
        assert pong["type"] == "pong" and pong["seq"] == 1 and isinstance(pong["id"], int)


def test_invalid_and_unknown_events_come_as_dicts(server):
    """An event that fails validation or has an unknown type is logged and delivered as a dict; the client goes on."""
    server.emit("llm_token", **token(1))  # seq 1 and 2: low priority, so not replayed
    server.emit("llm_token", **token(2))
    server.bus.flush()
    # The replay buffer is a plain list that code may append to: smuggle in what emit() would refuse.
    invalid = {
        "version": "1.0",
        "seq": 1,
        "timestamp": 1.0,
        "type": "stt_result",
        "session_id": None,
        "text": 42,
    }
    unknown = {
        "version": "1.0",
        "seq": 2,
        "timestamp": 1.0,
        "type": "from_the_future",
        "session_id": None,
        "x": 1,
    }
    server.replay_buffer.append(dict(invalid))
    server.replay_buffer.append(dict(unknown))
    with open_client(server.url) as client:
        assert take(client, 2) == [invalid, unknown]
        server.emit("llm_token", **token("valid"))
        event = take(client, 1)[0]
        assert isinstance(event, LLMTokenEvent) and event.seq == 3 and event.token == "valid"
        assert client.stats()["invalid_events"] == 1 and client.stats()["duplicates_dropped"] == 0


# -- reconnect and resume ----------------------------------------------------------------


def test_resume_across_a_server_restart_misses_nothing(server_factory):
    """The same server object stopped and started again keeps its epoch: the client resumes without gap or duplicate."""
    port = free_port()
    server = server_factory(host="127.0.0.1", port=port)
    gaps = []
    with open_client(server.url, on_gap=gaps.append) as client:
        assert client.wait_connected(TIMEOUT)
        for i in range(5):
            server.emit("llm_token", **token(i))
        assert [e.seq for e in take(client, 5)] == [1, 2, 3, 4, 5]
        server.stop()
        for i in range(5, 10):
            server.emit("llm_token", **token(i))  # while the server is down
        server.start()
        assert server.port == port
        for i in range(10, 12):
            server.emit("llm_token", **token(i))
        events = take(client, 7)
        assert [e.seq for e in events] == list(range(6, 13))
        assert [e.token for e in events] == [str(i) for i in range(5, 12)]
        assert client.get(timeout=0.05) is None
        assert client.recovered is True and client.epoch == server.epoch and client.last_seq == 12
        assert client.close_code == 1001 and gaps == []
        assert client.stats()["disconnects"] == {"1001": 1}


def test_new_server_on_the_same_port_is_a_gap(server_factory):
    """A new server object (new epoch) on the same port: on_gap gets epoch_changed, then the new stream follows."""
    port = free_port()
    first = server_factory(host="127.0.0.1", port=port)
    gaps = []
    with open_client(first.url, on_gap=gaps.append) as client:
        assert client.wait_connected(TIMEOUT)
        for i in range(3):
            first.emit("llm_token", **token(i))
        assert [e.seq for e in take(client, 3)] == [1, 2, 3]
        old_epoch = client.epoch
        first.stop()
        second = server_factory(host="127.0.0.1", port=port)
        assert second.epoch != old_epoch
        second.emit("stt_result", text="new stream", confidence=1.0, duration_ms=1.0)  # seq 1 again
        events = take(client, 1)  # on_gap runs in this thread, just before
        assert len(gaps) == 1 and gaps[0]["type"] == "resume"
        assert gaps[0]["recovered"] is False and gaps[0]["reason"] == "epoch_changed"
        assert events[0].seq == 1 and events[0].text == "new stream"
        assert client.epoch == second.epoch and client.recovered is False
        second.emit("llm_token", **token("live"))
        assert take(client, 1)[0].seq == 2
        assert client.stats()["gaps"] == 1


def test_close_codes_decide_about_reconnecting(server):
    """With reconnect=False a 1001 ends iteration cleanly; with the default it reconnects after 4008 and 1011."""
    with open_client(server.url, reconnect=False) as client:
        assert client.wait_connected(TIMEOUT)
        server.clients[client.client_id].request_close(1001, "going away")
        assert list(client) == [] and client.close_code == 1001 and client.error is None
    with open_client(server.url) as client:
        assert client.wait_connected(TIMEOUT)
        for code in (4008, 1011):
            sessions = client.stats()["sessions"]
            server.clients[client.client_id].request_close(code, "test")
            wait_for(
                lambda before=sessions: client.stats()["sessions"] > before, message=f"reconnect after {code}"
            )
        assert client.stats()["disconnects"] == {"4008": 1, "1011": 1}


def test_refused_handshake_is_fatal_and_explained(server):
    """An HTTP refusal (404 here) ends the client: get() raises HandshakeRejected with the status."""
    with open_client(server.url + "no/such/path") as client:
        assert not client.wait_connected(TIMEOUT)
        with pytest.raises(HandshakeRejected) as info:
            client.get(timeout=TIMEOUT)
        assert info.value.status == 404 and "404" in str(info.value)
        assert client.stats()["connect_attempts"] == 1


def test_tokens_scopes_and_refusals(server_factory):
    """With auth on: no token ends the client with the server's 401 explanation; a token is sent as a bearer
    header; a read-only token gets redacted events, delivered as dicts without complaint."""
    secured = server_factory(
        auth={"reader-token-0123456789": ["read"], "content-token-0123456789": ["read:content"]}
    )
    secured.emit("stt_result", text="secret words", confidence=0.9, duration_ms=1.0)
    with open_client(secured.url) as client:
        with pytest.raises(HandshakeRejected) as info:
            client.get(timeout=TIMEOUT)
        assert (
            info.value.status == 401 and info.value.code == "unauthorized" and "token" in info.value.message
        )
    with open_client(secured.url, token="content-token-0123456789") as client:
        event = take(client, 1)[0]
        assert isinstance(event, STTResultEvent) and event.text == "secret words"
    with open_client(secured.url, token="reader-token-0123456789") as client:
        event = take(client, 1)[0]
        assert event["redacted"] is True and event["text"] is None and event["confidence"] == 0.9
        assert client.stats()["invalid_events"] == 0


def test_backoff_is_bounded_and_max_retries_gives_up():
    """Against a closed port the client retries with growing delays, then gives up after max_retries."""
    port = free_port()
    started = time.monotonic()
    with open_client(
        f"ws://127.0.0.1:{port}/",
        backoff_initial=0.02,
        backoff_factor=2.0,
        backoff_max=0.05,
        backoff_jitter=0.0,
        max_retries=3,
    ) as client:
        with pytest.raises(ClientConnectionError, match="gave up after 4 attempts"):
            client.get(timeout=TIMEOUT)
        elapsed = time.monotonic() - started
        assert client.stats()["connect_attempts"] == 4
        assert elapsed >= 0.02 + 0.04 + 0.05  # the third delay is capped by backoff_max
        assert isinstance(client.last_error, ConnectionRefusedError)
    with open_client(f"ws://127.0.0.1:{port}/", retry_first_connect=False) as client:
        assert not client.wait_connected(TIMEOUT)
        with pytest.raises(ClientConnectionError, match="Connection refused"):
            client.get(timeout=TIMEOUT)


def test_a_server_that_never_answers_cannot_hang_the_client():
    """The handshake is bounded by connect_timeout, and close() aborts a handshake in progress at once."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts TCP (backlog), never answers
        url = f"ws://127.0.0.1:{silent.getsockname()[1]}/"
        with open_client(url, connect_timeout=0.2, retry_first_connect=False) as client:
            with pytest.raises(ClientConnectionError, match="no WebSocket handshake answer"):
                client.get(timeout=TIMEOUT)
        client = CodaEventClient(url, connect_timeout=60.0)
        wait_for(lambda: client.stats()["connect_attempts"] == 1, message="a connection attempt")
        started = time.monotonic()
        assert client.close(TIMEOUT)
        assert time.monotonic() - started < 2.0  # not the 60 s of the connect timeout
        assert not client.connected and client.stats()["sessions"] == 0


def test_bad_arguments_raise_at_once():
    """Malformed URLs, filters and options raise ValueError/TypeError in the constructor, naming the value."""
    with pytest.raises(ValueError, match="ws://"):
        CodaEventClient("http//nope")
    with pytest.raises(ValueError, match="ws://"):
        CodaEventClient("ftp://localhost/")
    with pytest.raises(ValueError, match="(?i)port"):
        CodaEventClient("ws://localhost:99999/")
    with pytest.raises(ValueError):
        CodaEventClient("ws://localhost/", types=["no spaces allowed"])
    with pytest.raises(ValueError, match="max_queue"):
        CodaEventClient("ws://localhost/", max_queue=0)
    with pytest.raises(ValueError, match="backoff_initial"):
        CodaEventClient("ws://localhost/", backoff_initial=0)
    assert not [t for t in threading.enumerate() if t.name.startswith("coda-ws-eventclient")]


def test_full_queue_pauses_and_resumes_without_loss(server):
    """When the application lags max_queue events behind, the client disconnects and resumes later: nothing lost."""
    with open_client(server.url, max_queue=10) as client:
        assert client.wait_connected(TIMEOUT)
        for i in range(60):
            server.emit("llm_token", **token(i))
        wait_for(lambda: client.stats()["pauses"] >= 1, message="a pause")
        assert client.stats()["queued"] <= 10
        events = take(client, 60)
        assert [e.seq for e in events] == list(range(1, 61))
        assert client.get(timeout=0.05) is None
        assert client.stats()["duplicates_dropped"] == 0 and client.stats()["gaps"] == 0


def test_close_leaves_no_thread_behind(server):
    """close() joins the connection, reader and callback threads; nothing the client started survives it."""
    server.emit("stt_start", mode="x")
    before = set(threading.enumerate())
    client = CodaEventClient(server.url, **FAST)
    client.on_event(lambda event: None)
    assert client.wait_connected(TIMEOUT)
    names = {t.name for t in set(threading.enumerate()) - before}
    assert {
        f"coda-ws-eventclient:{client.name}",
        f"coda-ws-eventclient-reader:{client.name}",
        f"coda-ws-eventclient-callback:{client.name}",
    } <= names
    assert client.close(TIMEOUT)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("coda-ws-eventclient")]
    # The server's side of the connection ends on its own a moment later.
    wait_for(
        lambda: not (set(threading.enumerate()) - before), message="the server's connection threads to end"
    )


# -- frames the server does not normally send ------------------------------------------------


def _event(seq, mode="m"):
    return {
        "version": "1.0",
        "seq": seq,
        "timestamp": 1000.0 + seq,
        "type": "stt_start",
        "session_id": None,
        "mode": mode,
    }


def test_resent_events_are_delivered_once():
    """Events the server sends twice (replay overlap, a resume that starts too early) reach the application once."""
    requests = []

    def handler(ws):
        headers = ws.request.headers
        requests.append(
            (ws.request.path, headers.get("Authorization"), headers.get("Sec-WebSocket-Protocol"))
        )
        query = parse_qs(urlsplit(ws.request.path).query)
        if "since" not in query:
            frames = [
                {"type": "hello", "protocol": 1, "epoch": "E1", "seq": 2, "client_id": "c1", "replay": 2},
                {"type": "replay", "events": [_event(1), _event(2)]},
                _event(2),
                _event(3),
                _event(3),
                _event(1),
                _event(4),
            ]
            for frame in frames:
                ws.send(json.dumps(frame))
            ws.close(1011, "bye")
            return
        frames = [
            {"type": "hello", "protocol": 1, "epoch": "E1", "seq": 6, "client_id": "c2", "replay": 0},
            {"type": "resume", "recovered": True, "from": 5, "to": 6, "count": 2},
            _event(3),
            _event(4),
            _event(5),
            _event(6),
            _event(5),
            _event(7),
        ]
        for frame in frames:
            ws.send(json.dumps(frame))
        for _ in ws:  # until the client closes
            pass

    with ws_serve(handler, "127.0.0.1", 0, subprotocols=["coda-ws.v1"]) as fake:
        thread = threading.Thread(target=fake.serve_forever, name="test-fake-server")
        thread.start()
        try:
            port = fake.socket.getsockname()[1]
            with open_client(f"ws://127.0.0.1:{port}/stream?key=kept", token="sekret") as client:
                events = take(client, 7)
                assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6, 7]
                assert client.get(timeout=0.05) is None
                assert client.stats()["duplicates_dropped"] == 6 and client.last_seq == 7
        finally:
            fake.shutdown()
            thread.join(TIMEOUT)
    assert len(requests) == 2, requests
    first, second = requests
    assert first[1:] == second[1:] == ("Bearer sekret", "coda-ws.v1")
    assert parse_qs(urlsplit(first[0]).query) == {"key": ["kept"], "v": ["1"]}
    assert parse_qs(urlsplit(second[0]).query) == {
        "key": ["kept"],
        "v": ["1"],
        "since": ["4"],
        "epoch": ["E1"],
    }


def test_control_frames_of_any_shape_from_a_server_cost_nothing():
    """A server whose pong ids are lists, objects, strings or missing, and whose
    control frames carry fields of the wrong kind, does not break the session:
    the events around them arrive, the client stays connected, and a real ping
    still gets its pong."""
    hostile = [
        {"type": "pong", "id": [1]},
        {"type": "pong", "id": {"a": 1}},
        {"type": "pong", "id": "1"},
        {"type": "pong"},
        {"type": "subscribed", "types": 5},
        {"type": "error", "code": [], "message": {"x": 1}},
    ]

    def handler(ws):
        ws.send(
            json.dumps(
                {"type": "hello", "protocol": 1, "epoch": "E", "seq": 0, "client_id": "c", "replay": 0}
            )
        )
        ws.send(json.dumps(_event(1, "before")))
        for frame in hostile:
            ws.send(json.dumps(frame))
        ws.send(json.dumps(_event(2, "after")))
        for message in ws:  # answer real pings, until the client closes
            data = json.loads(message)
            if data.get("type") == "ping":
                ws.send(json.dumps({"type": "pong", "id": data["id"], "seq": 2}))

    with ws_serve(handler, "127.0.0.1", 0, subprotocols=["coda-ws.v1"]) as fake:
        thread = threading.Thread(target=fake.serve_forever, name="test-fake-server")
        thread.start()
        try:
            port = fake.socket.getsockname()[1]
            with open_client(f"ws://127.0.0.1:{port}/", reconnect=False) as client:
                assert [e.mode for e in take(client, 2)] == ["before", "after"]
                pong = client.ping(timeout=TIMEOUT)
                assert pong is not None and pong["seq"] == 2
                assert client.stats()["sessions"] == 1
        finally:
            fake.shutdown()
            thread.join(TIMEOUT)


@pytest.mark.parametrize("then_close", [False, True], ids=["then-quiet", "then-close"])
def test_frames_bundled_with_the_handshake_answer_are_not_held_back(then_close):
    """Frames that arrive in the same TCP segment as the 101 answer are handled at once, even a close frame.

    simple-websocket's own Client leaves such frames in wsproto's buffer until
    more data arrives (a server that then stays quiet would leave the client
    waiting for its hello), and refuses a connection whose close frame came
    with the answer (losing the events before it).
    """
    listener = socket.create_server(("127.0.0.1", 0))
    release = threading.Event()

    def answer():
        conn, _ = listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            key = next(
                line.split(b":", 1)[1].strip()
                for line in request.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key")
            )
            accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            frames = b""
            for frame in (
                {"type": "hello", "protocol": 1, "epoch": "E", "seq": 1, "client_id": "c", "replay": 1},
                {"type": "replay", "events": [_event(1, "bundled")]},
                _event(2, "live"),
            ):
                frames += framing.text_frame(json.dumps(frame))
            if then_close:
                frames += framing.close_frame(1000, "done")
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Protocol: coda-ws.v1\r\nSec-WebSocket-Accept: "
                + accept
                + b"\r\n\r\n"
                + frames
            )
            release.wait(TIMEOUT)  # then stay quiet until the test is done

    thread = threading.Thread(target=answer, name="test-raw-server")
    thread.start()
    try:
        with open_client(f"ws://127.0.0.1:{listener.getsockname()[1]}/", reconnect=False) as client:
            events = take(client, 2)
            assert [(type(e), e.mode) for e in events] == [
                (STTStartEvent, "bundled"),
                (STTStartEvent, "live"),
            ]
            release.set()  # the fake server hangs up: the stream ends either way
            assert list(client) == []
            assert client.close_code == (1000 if then_close else 1005)
    finally:
        release.set()
        thread.join(TIMEOUT)
        listener.close()


# -- kill and reconnect ------------------------------------------------------------------------


def test_cut_hundreds_of_times_while_four_threads_emit(server):
    """200 abrupt disconnections at random points while 4 threads emit flat out: every seq arrives once, in order.

    Each cycle releases the four emitters for a burst of events, then cuts the
    connection once the application has received a random number of them:
    a client-side socket shutdown, a server-side one, or a server close with
    4008, 1011 or 1001; sometimes a second cut hits the reconnection itself.
    At most 8 000 events, within the default history of 10 000. On a machine
    so loaded that 200 cycles would take more than 10 s, it stops cycling
    then (after at least 50 cycles) to keep the test's time bounded.
    """
    cycles, minimum_cycles, burst, emitters = 200, 50, 10, 4
    rng = random.Random()
    gaps = []
    received = Collector()
    barrier = threading.Barrier(emitters + 1, timeout=TIMEOUT)

    def emit(n):
        try:
            for cycle in range(cycles):
                barrier.wait()
                for i in range(burst):
                    server.emit("llm_token", token=f"{n}:{cycle}:{i}", cumulative_text="")
        except threading.BrokenBarrierError:
            return  # no more cycles

    with open_client(server.url, on_gap=gaps.append) as client:
        client.on_event(lambda event: received.add(event.seq))
        assert client.wait_connected(TIMEOUT)
        threads = [
            threading.Thread(target=emit, args=(n,), name=f"test-emitter-{n}") for n in range(emitters)
        ]
        for thread in threads:
            thread.start()
        time_limit = time.monotonic() + 10.0
        done = 0
        try:
            for cycle in range(cycles):
                if cycle >= minimum_cycles and time.monotonic() > time_limit:
                    break
                sessions = client.stats()["sessions"]
                base = len(received)
                barrier.wait()
                received.wait_count(base + rng.randint(0, burst * emitters))
                how = rng.choice(["client", "server-socket", 4008, 1011, 1001])
                if how == "client":
                    assert client.reconnect()
                else:
                    for conn in server.clients.values():
                        if how == "server-socket":
                            conn.sock.shutdown()
                        else:
                            conn.request_close(how, "test")
                if rng.random() < 0.2:
                    client.reconnect()  # may hit the next connection mid-handshake, or nothing
                wait_for(
                    lambda before=sessions: client.stats()["sessions"] > before,
                    message=f"reconnect in cycle {cycle}",
                )
                done += 1
        finally:
            barrier.abort()  # emitters waiting for another cycle end
            for thread in threads:
                thread.join(TIMEOUT)
        total = server.sequence_number
        assert total == done * burst * emitters
        seqs = received.wait_count(total, timeout=2 * TIMEOUT)
        assert seqs == list(range(1, total + 1))
        assert gaps == [] and client.stats()["gaps"] == 0
        assert client.stats()["sessions"] >= done + 1
