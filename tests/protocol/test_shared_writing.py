"""Two parties write to a client's socket: the dispatcher (``Connection.push``,
for new events while the client's writer sleeps) and the writer thread
(control frames, backlogs, the tail of a partial write, the close). These
tests check, through real sockets, what that must never change: every frame
arrives whole, events in stream order with no gap or duplicate, control
frames answered, nothing after the close frame."""

import contextlib
import json
import os
import socket
import struct
import sys
import threading
import time

import pytest

from coda_ws import _sendfast
from coda_ws.bus import SharedChunk
from coda_ws.connection import DIRECT_WRITE_BYTES, GuardedSocket

from ..conftest import TIMEOUT, connect, recv_json, wait_for
from ..rawws import RawClient


def shrink_send_buffer(conn, size=4096):
    """Give the server's end of a connection a small send buffer (a slow link):
    then a write of a few frames often fits only in part."""
    raw = socket.socket(fileno=os.dup(conn.sock.fileno()))
    try:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    finally:
        raw.close()


@pytest.fixture
def partial_writes(monkeypatch):
    """Counts try_send calls that left an unsent tail, to show a test reached that path."""
    counts = {"tails": 0, "calls": 0}
    original = GuardedSocket.try_send

    def counting(self, data):
        taken = original(self, data)
        counts["calls"] += 1
        counts["tails"] += bool(taken and self.has_unsent)
        return taken

    monkeypatch.setattr(GuardedSocket, "try_send", counting)
    return counts


def test_frames_stay_whole_with_partial_writes_and_control_frames(server_factory, partial_writes):
    """A reader with small buffers (a single send takes about 6 KB) gets, in
    rounds: one large event alone (its writer asleep, the dispatcher writes it
    and can only write part: the tail goes to the writer), then small events
    from two threads at once, while it sends application pings. Every frame
    parses, events come in seq order without gaps, every ping gets its pong."""
    server = server_factory(client_queue_size=5000)
    client = RawClient(server.port, "/?v=1&replay=0", rcvbuf=4096)
    hello = client.read_json()
    assert hello["type"] == "hello"
    assert server.wait_for_clients(1, TIMEOUT)
    shrink_send_buffer(next(iter(server.clients.values())))
    rounds, per_thread = 20, 14
    large = "x" * (DIRECT_WRITE_BYTES // 2)  # more than one send takes, less than the dispatcher's limit
    small_ones = threading.Barrier(3, timeout=TIMEOUT)

    def produce(name):
        for r in range(rounds):
            small_ones.wait()
            for i in range(per_thread):
                server.emit(
                    "llm_token", token=f"{name}{r}.{i}", cumulative_text="x" * (1 + (r * 31 + i) % 300)
                )

    producers = [threading.Thread(target=produce, args=(name,)) for name in "ab"]
    for thread in producers:
        thread.start()
    seqs, pongs, sent_pings = [], [], 0
    try:
        for r in range(rounds):
            server.emit("llm_token", token=f"large{r}", cumulative_text=large)
            server.bus.flush()  # dispatched on its own, before the small ones
            small_ones.wait()
            while len(seqs) < (r + 1) * (1 + 2 * per_thread):
                frame = client.read_json(timeout=TIMEOUT)
                if frame["type"] == "pong":
                    pongs.append(frame["id"])
                    continue
                assert frame["type"] == "llm_token", frame
                seqs.append(frame["seq"])
                if len(seqs) % 50 == 0:
                    client.send_text(json.dumps({"type": "ping", "id": sent_pings}))
                    sent_pings += 1
        while len(pongs) < sent_pings:
            frame = client.read_json(timeout=TIMEOUT)
            assert frame["type"] == "pong", frame
            pongs.append(frame["id"])
    finally:
        small_ones.abort()  # a failed read must not leave the producers waiting
        for thread in producers:
            thread.join(TIMEOUT)

    assert seqs == list(range(hello["seq"] + 1, hello["seq"] + 1 + rounds * (1 + 2 * per_thread)))
    assert pongs == list(range(sent_pings))
    # Most rounds' large event was written in part by the dispatcher (in a few
    # its writer was still awake from the previous round and wrote it instead).
    assert partial_writes["tails"] >= rounds // 2, f"too few unsent tails: {partial_writes}"
    client.close()


def test_new_clients_get_hello_and_replay_before_any_event_while_events_flow(server_factory):
    """Clients connecting while events are emitted at full speed: hello, then
    replay, then every event after hello's seq, consecutively."""
    server = server_factory()
    stop = threading.Event()

    def produce():
        i = 0
        while not stop.is_set():
            server.emit("tts_status", status=str(i))
            i += 1
            if i % 20 == 0:
                time.sleep(0.001)  # about 10 000 events/s: leave the clients some of the GIL

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        for _ in range(10):
            with connect(f"{server.url}?v=1") as ws:
                hello = recv_json(ws)
                assert hello["type"] == "hello"
                assert recv_json(ws)["type"] == "replay"
                expected = hello["seq"] + 1
                for _ in range(300):
                    frame = recv_json(ws)
                    assert frame["seq"] == expected, (frame, expected)
                    expected += 1
    finally:
        stop.set()
        producer.join(TIMEOUT)


def test_nothing_is_written_after_the_close_frame(server_factory):
    """stop() while events flow: the client gets events, then 1001, then the
    end of the stream; the dispatcher never writes after the writer closed."""
    server = server_factory()
    client = RawClient(server.port, "/?v=1&replay=0")
    assert client.read_json()["type"] == "hello"
    assert server.wait_for_clients(1, TIMEOUT)
    stop = threading.Event()

    def produce():
        while not stop.is_set():
            server.emit("tts_status", status="speaking")
            time.sleep(0)  # let the client read too

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        wait_for(lambda: server.sequence_number > 2000, message="events flowing")
        closer = threading.Thread(target=server.close_clients, kwargs={"timeout": TIMEOUT})
        closer.start()  # it waits for our close reply
        events, code = client.read_until_close(timeout=TIMEOUT)
        assert code == 1001
        assert events and all(event["type"] == "tts_status" for event in events)
        # The server ends the connection after the close handshake: only EOF may follow.
        client.send_close(1001)
        client.sock.settimeout(TIMEOUT)
        trailing = client._buffer
        while True:
            chunk = client.sock.recv(65536)
            if not chunk:
                break
            trailing += chunk
        assert trailing == b"", f"{len(trailing)} bytes after the close frame"
        closer.join(TIMEOUT)
        assert not server.clients
    finally:
        stop.set()
        producer.join(TIMEOUT)
        client.close()


def test_accepted_sockets_send_small_frames_at_once(server):
    """TCP_NODELAY: a small frame is not held back waiting for the client's
    ACK of the previous one (Nagle + delayed ACK: 40 ms on Linux)."""
    with connect(server.url):
        assert server.wait_for_clients(1, TIMEOUT)
        conn = next(iter(server.clients.values()))
        raw = socket.socket(fileno=os.dup(conn.sock.fileno()))  # our own handle on the server's end
        try:
            assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        finally:
            raw.close()


# -- GuardedSocket on its own (a socketpair) ------------------------------------


@pytest.fixture(params=["libc send, GIL held", "socket.send"])
def pair(request, monkeypatch):
    """(GuardedSocket over one end, its raw socket, the other end) with small
    buffers; try_send through libc's send (holding the GIL, the default where
    ctypes reaches libc) and through Python's socket.send (the fallback)."""
    if request.param == "socket.send":
        monkeypatch.setattr(_sendfast, "_send", None)
    elif sys.platform.startswith("linux"):
        assert _sendfast.USING_LIBC_SEND, "libc's send should be reachable through ctypes on Linux"
    left, right = socket.socketpair()
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    right.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    right.settimeout(TIMEOUT)
    yield GuardedSocket(left, write_timeout=TIMEOUT), left, right
    left.close()
    right.close()


def read_exactly(sock, size):
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "peer closed"
        data += chunk
    return data


def test_try_send_writes_everything_when_the_buffer_has_room(pair):
    guarded, _, peer = pair
    assert guarded.try_send(b"hello") is True
    assert not guarded.has_unsent and guarded.blocked_since is None
    assert read_exactly(peer, 5) == b"hello"


def test_try_send_keeps_the_tail_and_every_later_write_comes_after_it(pair):
    """A partly written frame is finished before anything else: a second
    try_send is refused, and send() (the reader thread's pong, the writer's
    frames) writes the tail first, so bytes of two frames never interleave."""
    guarded, _, peer = pair
    frame = (
        b"\x81\x7f" + struct.pack("!Q", 1 << 20) + bytes(range(256)) * 4096
    )  # 1 MiB: more than the buffers hold
    pong = b"\x8a\x00"
    assert guarded.try_send(frame) is True
    assert guarded.has_unsent and guarded.blocked_since is not None
    assert guarded.try_send(b"other") is False
    received = []
    reader = threading.Thread(target=lambda: received.append(read_exactly(peer, len(frame) + len(pong))))
    reader.start()
    guarded.send(pong)
    reader.join(TIMEOUT)
    assert received == [frame + pong]
    assert not guarded.has_unsent and guarded.blocked_since is None


def test_try_send_writes_nothing_when_the_peer_is_full(pair):
    guarded, raw, peer = pair
    raw.setblocking(False)
    filled = 0
    with pytest.raises(BlockingIOError):
        while True:
            filled += raw.send(b"x" * 4096)
    raw.setblocking(True)
    assert guarded.try_send(b"y" * 100) is False
    assert not guarded.has_unsent and guarded.blocked_since is not None
    assert read_exactly(peer, filled) == b"x" * filled  # not one byte of the refused message
    guarded.send(b"")  # no tail waiting: returns at once
    assert guarded.try_send(b"y") is True and read_exactly(peer, 1) == b"y"


def test_try_send_raises_when_the_peer_is_gone(pair):
    guarded, _, peer = pair
    peer.close()
    with pytest.raises(OSError):
        guarded.try_send(b"after the end")


def test_writing_the_tail_raises_when_the_peer_is_gone(pair):
    guarded, _, peer = pair
    assert guarded.try_send(b"z" * (1 << 20)) is True
    assert guarded.has_unsent
    peer.close()
    with pytest.raises(OSError):
        guarded.send(b"")  # writes the tail: the peer is gone


SHARED_TOKENS = {"content-token-0123456789": ["read:content"], "reader-token-0123456789": ["read"]}


def test_caught_up_unfiltered_clients_get_the_shared_chunk_and_the_others_their_own(
    server_factory, monkeypatch
):
    """The dispatcher joins a published chunk's frames once and sends those
    bytes to every caught-up unfiltered client (``SharedChunk``); read-only
    clients get the joined redacted frames, filtered clients read the stream
    for themselves. Through real sockets: every client gets exactly its
    events, in order, as the history holds them (redacted where it must)."""
    shared_writes = {"redacted": 0}
    original = SharedChunk.redacted_data

    def counting(self):
        shared_writes["redacted"] += 1  # only the shared path asks a chunk for its redacted bytes
        return original(self)

    monkeypatch.setattr(SharedChunk, "redacted_data", counting)
    server = server_factory(auth=SHARED_TOKENS)
    content, reader = (
        {"additional_headers": {"Authorization": f"Bearer {token}"}} for token in SHARED_TOKENS
    )
    with contextlib.ExitStack() as stack:
        clients = {
            name: stack.enter_context(connect(server.url + "?v=1&replay=0" + query, **headers))
            for name, query, headers in (
                ("content", "", content),
                ("content2", "", content),
                ("reader", "", reader),
                ("filtered", "&types=llm_*", content),
            )
        }
        for ws in clients.values():
            assert recv_json(ws)["type"] == "hello"
        assert server.wait_for_clients(len(clients), TIMEOUT)
        rounds = 30
        for r in range(rounds):
            # One to three events per round, each round dispatched on its own.
            server.emit("stt_result", text=f"secret {r}", confidence=0.9, duration_ms=1.0, session_id="s")
            if r % 3:
                server.emit("llm_token", token=f"t{r}", cumulative_text=f"secret text {r}", session_id="s")
            if r % 3 == 2:
                server.emit("tts_status", status="speaking", session_id="s")
            server.bus.flush()
        history = {entry.seq: entry for entry in server.bus.history()}
        expected = sorted(history)
        got = {name: [] for name in clients}
        for name, ws in clients.items():
            wanted = len(expected)
            if name == "filtered":
                wanted = sum(history[seq].type.startswith("llm_") for seq in expected)
            while len(got[name]) < wanted:
                got[name].append(recv_json(ws))
    for name in ("content", "content2"):
        assert got[name] == [history[seq].to_dict() for seq in expected]
    assert got["reader"] == [
        json.loads(history[seq].redacted_frame()[history[seq].offset :]) for seq in expected
    ]
    assert all(event["redacted"] for event in got["reader"] if event["type"] != "tts_status")
    assert not any("secret" in json.dumps(event) for event in got["reader"])
    assert got["filtered"] == [history[seq].to_dict() for seq in expected if history[seq].type == "llm_token"]
    # Most rounds found the read-only client's writer asleep and caught up: the shared path ran.
    assert shared_writes["redacted"] >= rounds // 2, shared_writes
