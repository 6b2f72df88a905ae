"""AsyncCodaEventClient against real servers on 127.0.0.1: async iteration, replay,
filters, subscribe, ping, resume across a restarted server, gaps, close codes,
refusals, backoff, the queue policy, duplicates from a misbehaving server, and
a client cut off many times while coroutines and threads emit."""

import asyncio
import contextlib
import json
import logging
import random
import socket
import threading
from urllib.parse import parse_qs, urlsplit

import pytest
from websockets.sync.server import serve as ws_serve

from coda_ws.aio import AsyncCodaEventClient, ClientConnectionError, CodaWebSocketServer, HandshakeRejected
from coda_ws.events import LLMTokenEvent, STTResultEvent, STTStartEvent

from ..conftest import TIMEOUT
from .conftest import wait_until

#: Reconnect quickly in tests; the backoff itself is tested on its own.
FAST = {"backoff_initial": 0.001, "backoff_max": 0.02, "connect_timeout": TIMEOUT}


@contextlib.asynccontextmanager
async def open_client(url, **kwargs):
    """An AsyncCodaEventClient that is always closed, and whose task is checked gone."""
    options = dict(FAST)
    options.update(kwargs)
    client = AsyncCodaEventClient(url, **options)
    try:
        yield client
    finally:
        assert await client.close(TIMEOUT), "close() did not end the client's task"
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("coda-ws-eventclient")]


async def take(client, count, timeout=TIMEOUT):
    """The next ``count`` events from ``client.get``, within one deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    events = []
    while len(events) < count:
        event = await client.get(timeout=max(0.0, deadline - loop.time()))
        if event is None:
            raise AssertionError(f"got {len(events)} of {count} events: {events[-3:]}")
        events.append(event)
    return events


def free_port():
    """A TCP port that was free a moment ago (for servers restarted on the same port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def token(i):
    return {"token": str(i), "cumulative_text": ""}


# -- reading ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_async_for_unpacks_replay_then_live_events(aio_server):
    """`async for` yields the replay frame's events one by one, as dataclasses, then
    live events in order; the client knows the stream's epoch and position."""
    aio_server.emit("stt_result", text="before", confidence=0.9, duration_ms=10.0, session_id="s1")
    aio_server.emit("llm_token", **token("not replayed"))  # low priority: not in the replay frame
    aio_server.emit("stt_result", text="again", confidence=0.8, duration_ms=12.0)
    async with AsyncCodaEventClient(aio_server.url, **FAST) as client:
        assert await client.wait_connected(TIMEOUT)
        assert client.epoch == aio_server.epoch and client.last_seq == 3 and client.connected
        for i in range(3):
            await aio_server.broadcast_event("llm_token", token(i))
        received = []
        async for event in client:
            received.append(event)
            if len(received) == 5:
                break
    assert client.closed and not client.connected
    assert [type(e) for e in received] == [STTResultEvent, STTResultEvent] + [LLMTokenEvent] * 3
    assert [e.seq for e in received] == [1, 3, 4, 5, 6]
    assert received[0].text == "before" and received[0].session_id == "s1"


@pytest.mark.asyncio
async def test_get_times_out_cancels_cleanly_and_close_ends_iteration(aio_server):
    """get(timeout) returns None when nothing comes; a cancelled get() loses no
    event; close() from another task ends an `async for` at once."""
    async with open_client(aio_server.url) as client:
        assert await client.wait_connected(TIMEOUT)
        assert await client.get(timeout=0.05) is None
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(client.get(), 0.02)
        aio_server.emit("llm_token", **token("kept"))
        assert (await take(client, 1))[0].token == "kept"

        async def iterate():
            return [event async for event in client]

        reader = asyncio.create_task(iterate())
        await asyncio.sleep(0.01)
        assert await client.close(TIMEOUT)
        assert await asyncio.wait_for(reader, TIMEOUT) == []
        assert await client.close() and await client.get(timeout=0) is None


@pytest.mark.asyncio
async def test_filters_types_globs_and_session(aio_server):
    """types globs and session_id filter live events and the replay frame alike."""
    aio_server.emit(
        "llm_result", text="old", duration_ms=1.0, token_count=1, tokens_per_second=1.0, session_id="b"
    )
    aio_server.emit(
        "llm_result", text="old-a", duration_ms=1.0, token_count=1, tokens_per_second=1.0, session_id="a"
    )
    async with open_client(aio_server.url, types="llm_*,stt_result", session_id="a") as client:
        assert await client.wait_connected(TIMEOUT)
        aio_server.emit("llm_token", **token("a"), session_id="a")
        aio_server.emit("llm_token", **token("b"), session_id="b")  # other session
        aio_server.emit("tts_status", status="speaking", session_id="a")  # other type
        aio_server.emit(
            "stt_result", text="no session", confidence=1.0, duration_ms=1.0
        )  # no session: passes
        events = await take(client, 3)
        assert [(e.type, e.session_id) for e in events] == [
            ("llm_result", "a"),
            ("llm_token", "a"),
            ("stt_result", None),
        ]
        assert await client.get(timeout=0.05) is None


@pytest.mark.asyncio
async def test_subscribe_and_ping_now_after_reconnect_and_while_connecting(aio_server):
    """subscribe() is acknowledged and applies at once and after a reconnect; one
    made while the first connection opens still applies; ping() gets a pong
    carrying the server's last seq."""
    async with open_client(aio_server.url, types=["llm_*"]) as client:
        assert await client.subscribe(types=["tts_*"]) is None  # not connected yet: nothing to acknowledge
        assert await client.wait_connected(TIMEOUT)
        pong = await client.ping(timeout=TIMEOUT)  # the server handles frames in order
        assert pong["type"] == "pong" and isinstance(pong["id"], int)
        aio_server.emit("llm_token", **token("old filter"))
        aio_server.emit("tts_status", status="new filter")
        assert [e.type for e in await take(client, 1)] == ["tts_status"]
        ack = await client.subscribe(types=["stt_*"], timeout=TIMEOUT)
        assert ack == {"type": "subscribed", "types": ["stt_*"], "session_id": None}
        aio_server.emit("tts_status", status="filtered out")
        aio_server.emit("stt_start", mode="push")
        assert [e.type for e in await take(client, 1)] == ["stt_start"]
        sessions = client.stats()["sessions"]
        assert client.reconnect()
        await wait_until(lambda before=sessions: client.stats()["sessions"] > before, message="the reconnect")
        aio_server.emit("llm_token", **token("still filtered out"))
        aio_server.emit("stt_start", mode="after reconnect")
        event = (await take(client, 1))[0]
        assert isinstance(event, STTStartEvent) and event.mode == "after reconnect"
        assert (await client.ping(timeout=TIMEOUT))["seq"] == aio_server.sequence_number
        with pytest.raises(ValueError):
            await client.subscribe(types=["bad pattern!"])


# -- reconnect, resume and gaps ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_resume_across_a_server_restart_misses_nothing(aio_server_factory):
    """The same server stopped and started again keeps its epoch: the client resumes
    after its last seq, without a gap or a duplicate, including what was emitted
    while the server was down."""
    port = free_port()
    server = await aio_server_factory(port=port)
    gaps = []
    async with open_client(server.url, on_gap=gaps.append) as client:
        assert await client.wait_connected(TIMEOUT)
        for i in range(5):
            server.emit("llm_token", **token(i))
        assert [e.seq for e in await take(client, 5)] == [1, 2, 3, 4, 5]
        await server.stop()
        for i in range(5, 10):
            await server.broadcast_event("llm_token", token(i))  # while the server is down
        await server.start()
        assert server.port == port
        for i in range(10, 12):
            server.emit("llm_token", **token(i))
        events = await take(client, 7)
        assert [e.seq for e in events] == list(range(6, 13))
        assert [e.token for e in events] == [str(i) for i in range(5, 12)]
        assert await client.get(timeout=0.05) is None
        assert client.recovered is True and client.epoch == server.epoch and client.last_seq == 12
        assert client.close_code == 1001 and gaps == []
        assert client.stats()["disconnects"] == {"1001": 1} and client.stats()["duplicates_dropped"] == 0


@pytest.mark.asyncio
async def test_a_new_server_on_the_same_port_is_a_gap(aio_server_factory):
    """A new server (new epoch) on the same port: a coroutine on_gap gets epoch_changed,
    in the reading task, before the new stream's events."""
    port = free_port()
    first = await aio_server_factory(port=port)
    gaps = []

    async def on_gap(frame):
        await asyncio.sleep(0)
        gaps.append((frame, asyncio.current_task()))

    async with open_client(first.url, on_gap=on_gap) as client:
        assert await client.wait_connected(TIMEOUT)
        for i in range(3):
            first.emit("llm_token", **token(i))
        assert [e.seq for e in await take(client, 3)] == [1, 2, 3]
        old_epoch = client.epoch
        await first.stop()
        second = await aio_server_factory(port=port)
        assert second.epoch != old_epoch
        second.emit("stt_result", text="new stream", confidence=1.0, duration_ms=1.0)  # seq 1 again
        events = await take(client, 1)
        assert len(gaps) == 1 and gaps[0][1] is asyncio.current_task()
        frame = gaps[0][0]
        assert (
            frame["type"] == "resume" and frame["recovered"] is False and frame["reason"] == "epoch_changed"
        )
        assert events[0].seq == 1 and events[0].text == "new stream"
        assert client.epoch == second.epoch and client.recovered is False
        second.emit("llm_token", **token("live"))
        assert (await take(client, 1))[0].seq == 2
        assert client.stats()["gaps"] == 1


@pytest.mark.asyncio
async def test_since_resumes_from_a_position_and_too_old_is_a_gap(aio_server_factory):
    """since= starts after a position of the server's stream; a position the history
    no longer holds is reported to on_gap as too_old, then the stream goes on."""
    server = await aio_server_factory(history_size=10)
    for i in range(20):
        server.emit("llm_token", **token(i))
    gaps = []
    async with open_client(server.url, since=15) as client:
        assert [e.seq for e in await take(client, 5)] == [16, 17, 18, 19, 20]
    async with open_client(server.url, since=2, on_gap=gaps.append, replay=False) as client:
        assert await client.wait_connected(TIMEOUT)
        server.emit("llm_token", **token("live"))
        assert [e.seq for e in await take(client, 1)] == [21]
        assert [g["reason"] for g in gaps] == ["too_old"]


@pytest.mark.asyncio
async def test_close_codes_decide_about_reconnecting(aio_server):
    """With reconnect=False a 1001 ends iteration cleanly; by default the client
    reconnects after 4008 and 1011; 1000 from the server ends the stream."""
    async with open_client(aio_server.url, reconnect=False) as client:
        assert await client.wait_connected(TIMEOUT)
        aio_server.clients[client.client_id].request_close(1001, "going away")
        assert [event async for event in client] == [] and client.close_code == 1001 and client.error is None
    async with open_client(aio_server.url) as client:
        assert await client.wait_connected(TIMEOUT)
        for code in (4008, 1011):
            sessions = client.stats()["sessions"]
            aio_server.clients[client.client_id].request_close(code, "test")
            await wait_until(
                lambda before=sessions: client.stats()["sessions"] > before,
                message=f"the reconnect after {code}",
            )
        assert client.stats()["disconnects"] == {"4008": 1, "1011": 1}
        aio_server.clients[client.client_id].request_close(1000, "done")
        assert [event async for event in client] == [] and client.close_code == 1000


@pytest.mark.asyncio
async def test_refusals_are_fatal_and_explained(aio_server_factory):
    """An HTTP refusal ends the client: get() raises HandshakeRejected with the
    status and the server's explanation (404; 401 without a token); a token is
    sent as a bearer header and a read-only one gets redacted events as dicts."""
    server = await aio_server_factory(
        auth={"reader-token-0123456789": ["read"], "content-token-0123456789": ["read:content"]}
    )
    server.emit("stt_result", text="secret words", confidence=0.9, duration_ms=1.0)
    async with open_client(server.url + "no/such/path", token="content-token-0123456789") as client:
        assert not await client.wait_connected(TIMEOUT)
        with pytest.raises(HandshakeRejected) as info:
            await client.get(timeout=TIMEOUT)
        assert info.value.status == 404 and client.stats()["connect_attempts"] == 1
    async with open_client(server.url) as client:
        with pytest.raises(HandshakeRejected) as info:
            await client.get(timeout=TIMEOUT)
        assert (
            info.value.status == 401 and info.value.code == "unauthorized" and "token" in info.value.message
        )
    async with open_client(server.url, token="content-token-0123456789") as client:
        event = (await take(client, 1))[0]
        assert isinstance(event, STTResultEvent) and event.text == "secret words"
    async with open_client(server.url, token="reader-token-0123456789") as client:
        event = (await take(client, 1))[0]
        assert event["redacted"] is True and event["text"] is None and event["confidence"] == 0.9


@pytest.mark.asyncio
async def test_backoff_grows_to_its_bound_and_max_retries_gives_up():
    """Against a closed port the client retries with growing delays, capped by
    backoff_max, then gives up after max_retries; retry_first_connect=False gives
    up at once."""
    port = free_port()
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with open_client(
        f"ws://127.0.0.1:{port}/",
        backoff_initial=0.02,
        backoff_factor=2.0,
        backoff_max=0.05,
        backoff_jitter=0.0,
        max_retries=3,
    ) as client:
        with pytest.raises(ClientConnectionError, match="gave up after 4 attempts"):
            await client.get(timeout=TIMEOUT)
        assert loop.time() - started >= 0.02 + 0.04 + 0.05  # the third delay is capped by backoff_max
        assert client.stats()["connect_attempts"] == 4
        assert isinstance(client.last_error, ConnectionRefusedError)
    async with open_client(f"ws://127.0.0.1:{port}/", retry_first_connect=False) as client:
        assert not await client.wait_connected(TIMEOUT)
        with pytest.raises(ClientConnectionError, match="cannot connect"):
            await client.get(timeout=TIMEOUT)


@pytest.mark.asyncio
async def test_a_server_that_never_answers_cannot_hang_the_client():
    """The handshake is bounded by connect_timeout, and close() aborts a handshake
    in progress at once."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts TCP (backlog), never answers
        url = f"ws://127.0.0.1:{silent.getsockname()[1]}/"
        async with open_client(url, connect_timeout=0.2, retry_first_connect=False) as client:
            with pytest.raises(ClientConnectionError, match="connect timeout"):
                await client.get(timeout=TIMEOUT)
        client = AsyncCodaEventClient(url, connect_timeout=60.0)
        await wait_until(lambda: client.stats()["connect_attempts"] == 1, message="a connection attempt")
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await client.close(TIMEOUT)
        assert loop.time() - started < 2.0  # not the 60 s of the connect timeout
        assert client.stats()["sessions"] == 0


def test_bad_arguments_raise_at_once_and_nothing_starts_outside_a_loop():
    """Malformed URLs, filters and options raise in the constructor, naming the value;
    a client made outside an event loop starts nothing until it is used in one."""
    for url, match in (
        ("http//nope", "ws://"),
        ("ftp://localhost/", "ws://"),
        ("ws://localhost:99999/", "(?i)port"),
    ):
        with pytest.raises(ValueError, match=match):
            AsyncCodaEventClient(url)
    with pytest.raises(ValueError):
        AsyncCodaEventClient("ws://localhost/", types=["no spaces allowed"])
    for option, value in (("max_queue", 0), ("backoff_initial", 0), ("backoff_jitter", 2), ("since", -1)):
        with pytest.raises(ValueError, match=option):
            AsyncCodaEventClient("ws://localhost/", **{option: value})
    with pytest.raises(TypeError, match="on_gap"):
        AsyncCodaEventClient("ws://localhost/", on_gap="not callable")
    client = AsyncCodaEventClient("ws://127.0.0.1:9/")
    assert not client.connected and client.stats()["connect_attempts"] == 0
    assert asyncio.run(client.close()) is True and client.closed


@pytest.mark.asyncio
async def test_full_queue_pauses_and_resumes_without_loss(aio_server):
    """When the application lags max_queue events behind, the client disconnects and
    resumes later: nothing lost, nothing twice."""
    async with open_client(aio_server.url, max_queue=10) as client:
        assert await client.wait_connected(TIMEOUT)
        for i in range(60):
            aio_server.emit("llm_token", **token(i))
        await wait_until(lambda: client.stats()["pauses"] >= 1, message="a pause")
        assert client.stats()["queued"] <= 10
        events = await take(client, 60)
        assert [e.seq for e in events] == list(range(1, 61))
        assert await client.get(timeout=0.05) is None
        assert client.stats()["duplicates_dropped"] == 0 and client.stats()["gaps"] == 0


@pytest.mark.asyncio
async def test_a_message_over_max_message_size_is_fatal(aio_server):
    """A server frame larger than max_message_size ends the client with an error saying so."""
    async with open_client(aio_server.url, max_message_size=4096) as client:
        assert await client.wait_connected(TIMEOUT)
        aio_server.emit("tool_result", tool_name="t", call_id="1", result="x" * 10_000, duration_ms=1.0)
        with pytest.raises(ClientConnectionError, match="max_message_size"):
            await client.get(timeout=TIMEOUT)


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


@pytest.mark.asyncio
async def test_resent_events_are_delivered_once():
    """Events a server sends twice (replay overlap, a resume that starts too early)
    reach the application once; the resume URL carries since, epoch, the
    application's query and the bearer token."""
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
            async with open_client(f"ws://127.0.0.1:{port}/stream?key=kept", token="sekret") as client:
                events = await take(client, 7)
                assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6, 7]
                assert await client.get(timeout=0.05) is None
                assert client.stats()["duplicates_dropped"] == 6 and client.last_seq == 7
        finally:
            fake.shutdown()
            await asyncio.to_thread(thread.join, TIMEOUT)
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


# -- cut and reconnect --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_cut_many_times_while_coroutines_and_threads_emit(aio_server):
    """150 abrupt disconnections at random points while two threads and two coroutines
    emit: every seq arrives once, in order, and no gap is reported.

    Each cycle lets the emitters add a burst of events, then cuts the connection
    once the application has a random number of them: the client drops its
    socket, the server's socket is shut down, or the server closes with 4008,
    1011 or 1001.
    """
    cycles, burst = 150, 10
    rng = random.Random()
    gaps = []
    received = []
    release = [threading.Semaphore(0) for _ in range(2)]

    def thread_emitter(n):
        for cycle in range(cycles):
            if not release[n].acquire(timeout=TIMEOUT):
                return
            for i in range(burst):
                aio_server.sync.emit("llm_token", token=f"t{n}:{cycle}:{i}", cumulative_text="")

    async def coroutine_emitter(n, cycle):
        for i in range(burst):
            await aio_server.broadcast_event(
                "llm_token", {"token": f"c{n}:{cycle}:{i}", "cumulative_text": ""}
            )
            await asyncio.sleep(0)

    threads = [threading.Thread(target=thread_emitter, args=(n,), name=f"test-emitter-{n}") for n in range(2)]
    for thread in threads:
        thread.start()
    try:
        async with open_client(aio_server.url, on_gap=gaps.append) as client:
            assert await client.wait_connected(TIMEOUT)

            async def read(count):
                while len(received) < count:
                    event = await client.get(TIMEOUT)
                    assert event is not None, f"stalled at {len(received)} events"
                    received.append(event.seq)

            for cycle in range(cycles):
                base = len(received)
                for semaphore in release:
                    semaphore.release()
                emitting = asyncio.gather(*(coroutine_emitter(n, cycle) for n in range(2)))
                await read(base + rng.randint(0, 4 * burst))
                how = rng.choice(["client", "server-socket", 4008, 1011, 1001])
                if how == "client":
                    client.reconnect()
                else:
                    conn = aio_server.clients.get(client.client_id) if client.client_id else None
                    if conn is not None:
                        if how == "server-socket":
                            conn.sock.shutdown()
                        else:
                            conn.request_close(how, "test cut")
                await emitting
                await read(base + 4 * burst)
            await read(cycles * 4 * burst)
            assert await client.get(timeout=0.05) is None
    finally:
        for semaphore in release:
            semaphore.release()
        for thread in threads:
            await asyncio.to_thread(thread.join, TIMEOUT)
    assert received == list(range(1, cycles * 4 * burst + 1))
    assert gaps == []
    assert isinstance(aio_server, CodaWebSocketServer)


@pytest.mark.asyncio
async def test_a_foreign_html_refusal_is_reduced_to_its_words():
    """A proxy's HTML error page reaches the user as one line of text, not markup,
    as with the threaded client (both read refusals with client_core.handshake_rejection)."""
    listener = socket.create_server(("127.0.0.1", 0))
    page = b"<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"

    def answer():
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: "
                + str(len(page)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + page
            )

    thread = threading.Thread(target=answer, name="test-html-refusal")
    thread.start()
    try:
        async with AsyncCodaEventClient(f"ws://127.0.0.1:{listener.getsockname()[1]}/") as client:
            with pytest.raises(HandshakeRejected) as ended:
                async for _ in client:
                    pass
        assert ended.value.status == 404
        assert "502 Bad Gateway Bad Gateway" in str(ended.value) and "<" not in str(ended.value)
    finally:
        thread.join(TIMEOUT)
        listener.close()


@pytest.mark.asyncio
async def test_the_client_warns_after_repeated_failed_connects(caplog):
    """As the threaded client: a warning at 5 and 10 failures in a row, on the asyncio client's logger."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    with caplog.at_level(logging.WARNING, logger="coda_ws.aio.client"):
        async with AsyncCodaEventClient(
            f"ws://127.0.0.1:{port}/",
            backoff_initial=0.001,
            backoff_max=0.001,
            backoff_jitter=0,
            max_retries=12,
            connect_timeout=1,
        ) as client:
            with pytest.raises(ClientConnectionError, match="gave up after 13 attempts"):
                async for _ in client:
                    pass
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "coda_ws.aio.client"
    ]
    assert [message.split(" connection attempts")[0].rsplit(" ", 1)[1] for message in warnings] == ["5", "10"]
    assert all(f"Is the server running at ws://127.0.0.1:{port}/?" in message for message in warnings)
