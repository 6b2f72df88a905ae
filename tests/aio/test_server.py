"""coda_ws.aio.CodaWebSocketServer through real sockets: where handlers run,
what waits and what never does, coroutines and threads emitting into one
ordered stream, wrapping a running server, and the import boundary (core
coda_ws imports no asyncio-only dependency)."""

import asyncio
import inspect
import json
import socket
import subprocess
import sys
import textwrap
import threading

import pytest
import websockets

from coda_ws import CodaWebSocketServer as SyncServer
from coda_ws.aio import CodaWebSocketServer

from ..conftest import TIMEOUT, connect, recv_json, wait_for
from ..rawws import RawClient
from .conftest import wait_until


async def recv_frame(ws, timeout=TIMEOUT):
    """The next text frame of a websockets asyncio client, decoded."""
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


# -- the API's shape -------------------------------------------------------------------


def test_awaitable_where_the_original_was_and_plain_elsewhere():
    """The original's coroutines are coroutine functions here, its plain methods plain,
    with the original's parameter names and defaults."""
    awaitable = {
        "start": [],
        "stop": [("timeout", 5.0)],
        "broadcast_event": [
            ("event_type", None),
            ("data", None),
            ("high_priority", False),
            ("session_id", None),
        ],
        "send_to_client": [("client_id", None), ("event_type", None), ("data", None), ("session_id", None)],
        "broadcast_system_info": [("info", None)],
        "broadcast_system_error": [("level", None), ("message", None), ("details", None)],
        "broadcast_system_metrics": [
            ("memory_mb", None),
            ("cpu_percent", None),
            ("gpu_vram_mb", None),
            ("uptime_seconds", 0),
        ],
        "wait_for_clients": [("min_clients", 1), ("timeout", 30.0)],
    }
    for name, params in awaitable.items():
        method = getattr(CodaWebSocketServer, name)
        assert inspect.iscoroutinefunction(method), name
        got = [
            (p.name, None if p.default is p.empty else p.default)
            for p in list(inspect.signature(method).parameters.values())[1:]
        ]
        assert got == params, name
    for name in (
        "add_connect_handler",
        "add_disconnect_handler",
        "add_message_handler",
        "get_stats",
        "get_connected_clients",
        "emit",
    ):
        assert not inspect.iscoroutinefunction(getattr(CodaWebSocketServer, name)), name
    assert inspect.isasyncgenfunction(inspect.unwrap(CodaWebSocketServer.run_context))
    defaults = {
        name: p.default
        for name, p in inspect.signature(CodaWebSocketServer).parameters.items()
        if p.default is not p.empty
    }
    assert defaults == {
        "host": "localhost",
        "port": 8765,
        "max_replay_events": 50,
        "ping_interval": 20,
        "ping_timeout": 10,
    }


def test_exports():
    """coda_ws.aio exports what its __all__ names (the client on first use), under the
    original's names, with the same event classes as coda_ws."""
    import coda_ws
    import coda_ws.aio
    import coda_ws.aio.events

    for name in coda_ws.aio.__all__:
        assert getattr(coda_ws.aio, name) is not None, name
    assert "AsyncCodaEventClient" in dir(coda_ws.aio)
    for name in ("EventType", "STTResultEvent", "create_event", "validate_event"):
        assert getattr(coda_ws.aio, name) is getattr(coda_ws, name) is getattr(coda_ws.aio.events, name)
    with pytest.raises(AttributeError):
        coda_ws.aio.NoSuchName  # noqa: B018


def test_importing_coda_ws_imports_no_asyncio_extra():
    """`import coda_ws` imports neither websockets nor coda_ws.aio; the server side of
    coda_ws.aio works without websockets, and the client names the extra it needs."""
    script = textwrap.dedent("""
        import sys
        import coda_ws
        assert "websockets" not in sys.modules and "coda_ws.aio" not in sys.modules, sorted(sys.modules)
        sys.modules["websockets"] = None  # as if the package were not installed
        from coda_ws.aio import CodaWebSocketServer, CodaWebSocketIntegration, WebSocketPerfIntegration
        try:
            from coda_ws.aio import AsyncCodaEventClient
        except ImportError as exc:
            print("ImportError:", exc)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "ImportError:" in result.stdout and "pip install 'coda-ws[aio]'" in result.stdout
    assert "websockets" in result.stdout


# -- lifecycle ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_async_with_run_context_and_restart_keep_the_stream():
    """`async with server` and run_context() start and stop; a restarted server keeps
    its sequence, replay buffer and epoch, and binds port 0 to a real port."""
    server = CodaWebSocketServer(host="127.0.0.1", port=0)
    async with server:
        assert server.running and server.port != 0
        await server.broadcast_system_info({"version": "2"})
        epoch = server.epoch
    assert not server.running and server.server is None
    async with server.run_context() as same:
        assert same is server and server.running
        assert server.sequence_number == 1 and server.epoch == epoch
        async with websockets.connect(server.url) as ws:
            replay = await recv_frame(ws)
        assert replay["type"] == "replay" and replay["events"][0]["data"] == {"version": "2"}
    assert not server.running
    await server.stop()  # idempotent


@pytest.mark.asyncio
async def test_a_failed_bind_raises_oserror_and_leaves_running_false():
    """start() on a taken port raises OSError naming the address; running stays False."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        server = CodaWebSocketServer(host="127.0.0.1", port=port)
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            await server.start()
        assert server.running is False


@pytest.mark.asyncio
async def test_stop_runs_off_the_loop_and_returns_after_disconnect_handlers(aio_server_factory):
    """While stop() closes the clients the loop keeps running: a coroutine disconnect
    handler runs on it and has finished when stop() returns; the client got 1001."""
    server = await aio_server_factory()
    finished = []

    async def on_disconnect(client_id):
        await asyncio.sleep(0.05)
        finished.append((client_id, threading.current_thread()))

    server.add_disconnect_handler(on_disconnect)
    async with websockets.connect(server.url) as ws:
        client_id = server.get_connected_clients()[0]
        await asyncio.wait_for(server.stop(), TIMEOUT)
        assert finished == [(client_id, threading.current_thread())]
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert ws.close_code == 1001


@pytest.mark.asyncio
async def test_wait_for_clients_wakes_on_connect_and_times_out(aio_server):
    """wait_for_clients() returns False after its timeout, True as soon as enough
    clients are connected, and a cancelled wait leaves later connects unharmed."""
    assert await aio_server.wait_for_clients(1, timeout=0.05) is False
    waiting = asyncio.create_task(aio_server.wait_for_clients(2, timeout=TIMEOUT))
    cancelled = asyncio.create_task(aio_server.wait_for_clients(5, timeout=TIMEOUT))
    await asyncio.sleep(0)  # both are waiting now
    cancelled.cancel()
    async with websockets.connect(aio_server.url):
        assert not waiting.done()
        async with websockets.connect(aio_server.url):
            assert await asyncio.wait_for(waiting, TIMEOUT) is True
            assert await aio_server.wait_for_clients(2, timeout=0) is True
    with pytest.raises(asyncio.CancelledError):
        await cancelled


# -- handlers ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_handlers_run_on_the_loop_one_at_a_time_in_order(aio_server):
    """Plain and coroutine handlers run on the loop's thread; one client's connect,
    message and disconnect handlers run one at a time and in order, even when
    they await; the handler lists hold what was registered."""
    calls, threads, running = [], set(), []

    def on_connect(client_id):
        threads.add(threading.current_thread())
        calls.append(("connect", client_id))

    async def on_message(client_id, data):
        running.append(client_id)
        assert len(running) == 1, "two message handlers of one client ran at once"
        threads.add(threading.current_thread())
        await asyncio.sleep(0.01)
        calls.append(("message", data["n"]))
        running.remove(client_id)

    async def on_disconnect(client_id):
        threads.add(threading.current_thread())
        calls.append(("disconnect", client_id))

    aio_server.add_connect_handler(on_connect)
    aio_server.add_message_handler(on_message)
    aio_server.add_disconnect_handler(on_disconnect)
    assert aio_server.on_message_handlers == [on_message]
    async with websockets.connect(aio_server.url) as ws:
        for n in range(5):
            await ws.send(json.dumps({"n": n}))
        await wait_until(lambda: len(calls) == 6, message=lambda: f"the handlers, got {calls}")
    await wait_until(lambda: len(calls) == 7, message="the disconnect handler")
    client_id = calls[0][1]
    assert calls == [("connect", client_id)] + [("message", n) for n in range(5)] + [
        ("disconnect", client_id)
    ]
    assert threads == {threading.current_thread()}
    assert aio_server.get_stats()["handler_errors"] == 0


@pytest.mark.asyncio
async def test_raising_handlers_are_logged_counted_and_isolated(aio_server, caplog):
    """A plain or coroutine handler that raises is logged with its traceback and
    counted in handler_errors; the handlers after it still run."""

    def broken_plain(client_id):
        raise RuntimeError("plain handler broke")

    async def broken_coroutine(client_id):
        await asyncio.sleep(0)
        raise RuntimeError("coroutine handler broke")

    reached = []
    for handler in (broken_plain, broken_coroutine, reached.append):
        aio_server.add_connect_handler(handler)
    async with websockets.connect(aio_server.url):
        await wait_until(lambda: reached, message="the handler after the broken ones")
    assert aio_server.get_stats()["handler_errors"] == 2
    failures = [r for r in caplog.records if r.name == "coda_ws.server" and "failed" in r.getMessage()]
    assert [("broken_plain" in r.getMessage(), "broken_coroutine" in r.getMessage()) for r in failures] == [
        (True, False),
        (False, True),
    ]
    assert "plain handler broke" in caplog.text and "coroutine handler broke" in caplog.text


def test_handlers_registered_outside_a_loop_run_on_the_loop_that_starts_the_server():
    """A server made and given handlers before any loop runs them on the loop
    whose coroutine called start()."""
    server = CodaWebSocketServer(host="127.0.0.1", port=0)
    seen = []

    async def on_connect(client_id):
        seen.append(asyncio.get_running_loop())

    server.add_connect_handler(on_connect)

    async def scenario():
        async with server.run_context():
            async with websockets.connect(server.url):
                await wait_until(lambda: seen, message="the connect handler")
            return asyncio.get_running_loop()

    assert seen == [asyncio.run(scenario())]


def test_a_handler_whose_loop_stopped_is_given_up_and_counted(server_factory):
    """A coroutine handler stuck on a loop that stops no longer holds its client:
    the server gives up on it, counts it, and serves the client; a handler due
    after its loop closed is not run, and is counted too."""
    sync = server_factory()
    server = CodaWebSocketServer.wrap(sync)
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, name="test-handler-loop")
    loop_thread.start()
    started = threading.Event()
    runs = []

    async def stuck(client_id):
        runs.append(client_id)
        started.set()
        await asyncio.Event().wait()  # never set

    async def register():
        server.add_connect_handler(stuck)

    try:
        asyncio.run_coroutine_threadsafe(register(), loop).result(TIMEOUT)
        with connect(sync.url + "?replay=0") as ws:
            assert started.wait(TIMEOUT)
            loop.call_soon_threadsafe(loop.stop)
            loop_thread.join(TIMEOUT)
            wait_for(
                lambda: sync.get_stats()["handler_errors"] == 1, message="the stuck handler to be given up"
            )
            sync.emit("tts_status", status="still served")
            assert recv_json(ws)["status"] == "still served"
    finally:
        if loop_thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            loop_thread.join(TIMEOUT)
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()
    with connect(sync.url):
        wait_for(lambda: sync.get_stats()["handler_errors"] == 2, message="the handler of a closed loop")
    assert len(runs) == 1  # the first connect only


# -- emitting ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_coroutines_and_threads_emit_into_one_ordered_stream(aio_server):
    """Four coroutines (awaiting the integration) and four threads (the synchronous
    server) emit 250 events each at once: two clients get all 2 000, seq 1..2000
    without a gap or a duplicate, each emitter's events in its own order; and an
    emit from a thread that a coroutine awaited lands between the coroutine's
    events before and after it."""
    from coda_ws.aio import AsyncCodaEventClient, CodaWebSocketIntegration

    per_emitter, emitters = 250, 4
    total = 2 * emitters * per_emitter
    integration = CodaWebSocketIntegration(aio_server)
    async with (
        websockets.connect(aio_server.url + "?replay=0", max_size=None) as raw,
        AsyncCodaEventClient(aio_server.url, backoff_initial=0.01) as client,
    ):
        assert await client.wait_connected(TIMEOUT)
        assert await aio_server.wait_for_clients(2, TIMEOUT)

        async def read_raw():  # as the events come: an unread client would be closed with 4008
            return [await recv_frame(raw) for _ in range(total + 3)]

        raw_reader = asyncio.create_task(read_raw())
        start = threading.Barrier(emitters + 1, timeout=TIMEOUT)

        def thread_emitter(n):
            start.wait()
            for i in range(per_emitter):
                aio_server.sync.emit("llm_token", token=f"thread{n}:{i}", cumulative_text="")

        async def coroutine_emitter(n):
            for i in range(per_emitter):
                await integration.llm_token(f"aio{n}:{i}", "")
                if i % 10 == 9:
                    await asyncio.sleep(0)  # let the other coroutines and the clients in

        threads = [
            threading.Thread(target=thread_emitter, args=(n,), name=f"test-emitter-{n}")
            for n in range(emitters)
        ]
        for thread in threads:
            thread.start()
        start.wait()
        await asyncio.gather(*(coroutine_emitter(n) for n in range(emitters)))
        await asyncio.to_thread(lambda: [thread.join(TIMEOUT) for thread in threads])

        # A causal chain across the boundary: coroutine, then a thread, then the coroutine.
        before = await integration.tts_status("before")
        middle = await asyncio.to_thread(aio_server.sync.emit, "tts_status", status="thread")
        after = await integration.tts_status("after")
        assert before.seq < middle.seq < after.seq == total + 3

        raw_frames = await raw_reader
        events = []
        while len(events) < total + 3:
            event = await client.get(TIMEOUT)
            assert event is not None, f"got {len(events)} events"
            events.append(event.to_dict())
    for frames in (raw_frames, events):
        assert [f["seq"] for f in frames] == list(range(1, total + 4))
        tokens = [f["token"] for f in frames[:total]]
        for source in [f"thread{n}" for n in range(emitters)] + [f"aio{n}" for n in range(emitters)]:
            own = [t for t in tokens if t.split(":")[0] == source]
            assert own == [f"{source}:{i}" for i in range(per_emitter)]
        assert [f["status"] for f in frames[total:]] == ["before", "thread", "after"]


@pytest.mark.asyncio
async def test_emitting_from_the_loop_never_waits_for_a_stalled_client(aio_server_factory):
    """A client that reads nothing cannot hold up a coroutine that emits: 600 large
    events go out, a healthy client gets every one, and the stalled one is closed
    with 4008 (then can resume)."""
    from coda_ws.aio import AsyncCodaEventClient

    server = await aio_server_factory(
        client_queue_size=16, history_size=2000, ping_interval=None, ping_timeout=120
    )
    stalled = await asyncio.to_thread(RawClient, server.port, "/?v=1", rcvbuf=4096)
    try:
        async with AsyncCodaEventClient(server.url, replay=False, backoff_initial=0.01) as healthy:
            assert await healthy.wait_connected(TIMEOUT)
            assert await server.wait_for_clients(2, TIMEOUT)
            got = []
            for i in range(600):
                await server.broadcast_event(
                    "tool_result",
                    {"tool_name": "t", "call_id": str(i), "result": "x" * 16_384, "duration_ms": 1.0},
                )
                if i % 8 == 7:  # the healthy client keeps within its 16-event allowance
                    while len(got) <= i:
                        event = await healthy.get(TIMEOUT)
                        assert event is not None, f"got {len(got)} events"
                        got.append(event.call_id)
            assert got == [str(i) for i in range(600)]
            await wait_until(
                lambda: server.get_stats()["overflows"] >= 1, message="the stalled client's overflow"
            )
        # Reading at last, it finds what fitted in its allowance, then the close frame.
        frames, code = await asyncio.to_thread(stalled.read_until_close, 10.0)
        assert code == 4008 and frames[0]["type"] == "hello"
    finally:
        await asyncio.to_thread(stalled.close)
    await wait_until(lambda: server.get_stats()["disconnects"].get("too_slow") == 1, message="4008 counted")


@pytest.mark.asyncio
async def test_send_to_client_reaches_one_client_only(aio_server):
    """send_to_client() is awaitable, reaches only that client, and is False for an unknown id."""
    async with websockets.connect(aio_server.url) as first, websockets.connect(aio_server.url) as second:
        first_id, _second_id = aio_server.get_connected_clients()
        assert await aio_server.send_to_client(first_id, "tts_status", {"status": "only you"}) is True
        assert await aio_server.send_to_client("no-such-client", "tts_status", {"status": "x"}) is False
        await aio_server.broadcast_event("tts_status", {"status": "everyone"})
        assert (await recv_frame(first))["status"] == "only you"
        assert (await recv_frame(first))["status"] == "everyone"
        assert (await recv_frame(second))["status"] == "everyone"
    assert aio_server.replay_buffer == []


def test_wrap_gives_threads_and_coroutines_one_server(server_factory):
    """wrap() puts the asyncio API over a running synchronous server: both emit into
    one stream, and the asyncio side's handlers run on its loop."""
    sync = server_factory()
    with pytest.raises(TypeError, match="coda_ws.CodaWebSocketServer"):
        CodaWebSocketServer.wrap(object())

    async def scenario():
        server = CodaWebSocketServer.wrap(sync)
        assert server.running and server.port == sync.port and server.url == sync.url
        connected = []
        server.add_connect_handler(connected.append)
        async with websockets.connect(server.url + "?replay=0") as ws:
            await wait_until(lambda: connected, message="the connect handler")
            await server.broadcast_event("tts_status", {"status": "from a coroutine"})
            await asyncio.to_thread(sync.emit, "tts_status", status="from a thread")
            frames = [await recv_frame(ws), await recv_frame(ws)]
        assert [f["status"] for f in frames] == ["from a coroutine", "from a thread"]
        assert len(connected) == 1

    asyncio.run(scenario())
    assert isinstance(sync, SyncServer) and sync.running
