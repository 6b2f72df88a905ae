"""coda_ws.aio's CodaWebSocketIntegration and WebSocketPerfIntegration: every
method of the original is awaitable (or plain, as it was) with the original's
parameters, emits exactly what the synchronous helper emits, and the
metrics thread and timers behave as documented."""

import asyncio
import inspect
import threading

import pytest

from coda_ws import EventBus
from coda_ws.aio import (
    CodaWebSocketIntegration,
    InvalidEventError,
    WebSocketPerfIntegration,
    track_async_operation,
    track_sync_operation,
)
from coda_ws.integration import CodaWebSocketIntegration as SyncIntegration
from coda_ws.perf import WebSocketPerfIntegration as SyncPerf

from ..conftest import TIMEOUT
from .conftest import wait_until

#: One call of every event method, with arguments as the original's callers pass them.
CALLS = [
    ("system_startup", ("2.0.0-alpha", {"stt": "whisper"})),
    ("system_shutdown", ()),
    ("system_error", ("warning", "GPU hot", {"temp": 90})),
    ("stt_start", ()),
    ("stt_start", ("continuous",)),
    ("stt_interim_result", ("Hello", 0.6)),
    ("stt_final_result", ("Hello world", 0.95, 1500.0)),
    ("stt_error", ("mic unplugged",)),
    ("llm_start", ("p" * 250, "llama3")),
    ("llm_token", ("Hi", "Hi")),
    ("llm_result", ("Hi there!", 800.0, 15, 18.75)),
    ("llm_error", ("timeout", {"after_s": 30})),
    ("tts_start", ("Hi there!", "default", "elevenlabs")),
    ("tts_progress", (50,)),
    ("tts_result", (600.0, 1200.0, True)),
    ("tts_error", ("quota",)),
    ("tts_status", ("speaking",)),
    ("memory_store", ("m" * 150, "fact", 0.8, "mem-1")),
    ("memory_retrieve", ("kitchen", 2, [0.9, 0.4])),
    ("tool_call", ("calendar", {"day": "monday"}, "call-1")),
    ("tool_result", ("calendar", "call-1", {"events": 2}, 12.5)),
    ("tool_error", ("calendar", "call-1", "offline")),
    ("conversation_start", ("conv-1",)),
    ("conversation_turn", ("conv-1", 1, "Hello", "Hi there!")),
    ("conversation_end", ("conv-1", 1, 42.0)),
    ("latency_trace", ("stt", "transcribe", 1500.0, {"model": "base"})),
    ("component_timing", ("llm", {"prompt": 12.0, "generate": 800.0})),
    # Beyond the original: the voice moments, and any type in the session.
    ("vad_start", ()),
    ("vad_start", (0.8,)),
    ("vad_end", (820.0, 0.9)),
    ("wake_word", ("hey coda", 0.97)),
    ("barge_in", ("tts", 1200.0)),
    ("emit", ("vad_start",)),
]


def _public(cls):
    return {name for name, value in vars(cls).items() if not name.startswith("_") and callable(value)}


def _parameters(function):
    return [(p.name, p.default) for p in inspect.signature(function).parameters.values()]


def test_every_event_method_is_awaitable_with_the_synchronous_parameters():
    """The integration's event methods are coroutine functions with the same
    parameters and defaults as the synchronous (and original) ones; new_session
    and get_session_id are plain."""
    sync_methods = _public(SyncIntegration)
    assert _public(CodaWebSocketIntegration) == sync_methods
    assert {name for name, _ in CALLS} == sync_methods - {"new_session", "get_session_id"}
    for name in sync_methods:
        method = getattr(CodaWebSocketIntegration, name)
        plain = name in ("new_session", "get_session_id")
        assert inspect.iscoroutinefunction(method) is not plain, name
        assert _parameters(method) == _parameters(getattr(SyncIntegration, name)), name


def test_perf_methods_are_awaitable_where_the_original_was():
    """WebSocketPerfIntegration: the original's coroutines are coroutine functions with
    the synchronous parameters; its plain methods stay plain."""
    awaitable = {
        "start",
        "stop",
        "track_operation",
        "track_component_timings",
        "broadcast_performance_summary",
    }
    plain = {"time_operation", "get_performance_summary", "increment_counter", "reset_metrics"}
    assert awaitable | plain <= _public(WebSocketPerfIntegration)
    for name in awaitable | plain:
        method = getattr(WebSocketPerfIntegration, name)
        assert inspect.iscoroutinefunction(method) is (name in awaitable), name
        if name != "start":
            assert _parameters(method) == _parameters(getattr(SyncPerf, name)), name
    assert _parameters(WebSocketPerfIntegration.__init__)[:3] == [
        ("self", inspect.Parameter.empty),
        ("server", inspect.Parameter.empty),
        ("metrics_interval", 5.0),
    ]


@pytest.mark.asyncio
async def test_each_event_method_emits_what_the_synchronous_one_does():
    """Awaiting each method emits the same event (type, fields, session, priority)
    as calling the synchronous helper with the same arguments."""
    buses = EventBus(max_replay_events=100), EventBus(max_replay_events=100)
    try:
        aio, sync = CodaWebSocketIntegration(buses[0]), SyncIntegration(buses[1])
        aio.session_id = sync.session_id
        for name, args in CALLS:
            got = (await getattr(aio, name)(*args)).to_dict()
            want = getattr(sync, name)(*args).to_dict()
            for event in (got, want):
                del event["timestamp"]
                if name == "system_shutdown":
                    del event["data"]["uptime_seconds"]
            assert got == want, name
        assert [e["seq"] for e in buses[0].replay] == [e["seq"] for e in buses[1].replay]
        assert aio.conversation_turn_count == 1
        old = aio.get_session_id()
        assert aio.new_session() == aio.session_id == aio.sync.session_id != old
        assert (await aio.stt_start()).session_id == aio.session_id
        with pytest.raises(InvalidEventError, match="stt_interim.confidence"):
            await aio.stt_interim_result("text", "high")
    finally:
        for bus in buses:
            bus.close()


@pytest.mark.asyncio
async def test_integration_over_an_aio_server_emits_into_its_stream(aio_server):
    """Given a coda_ws.aio server, the integration emits through the server underneath."""
    integration = CodaWebSocketIntegration(aio_server)
    assert integration.server is aio_server and integration.sync.server is aio_server.sync
    event = await integration.stt_final_result("Hello world", 0.95, 1500.0)
    assert aio_server.sequence_number == event.seq == 1
    assert aio_server.replay_buffer[-1]["text"] == "Hello world"


# -- performance --------------------------------------------------------------------------


def _history(bus, kind):
    return [entry.to_dict() for entry in bus.history() if entry.to_dict()["type"] == kind]


@pytest.mark.asyncio
async def test_metrics_thread_starts_at_once_and_stop_joins_it():
    """start() emits system_metrics at once from coda_ws's metrics thread; stop()
    joins it (off the loop) and is idempotent."""
    bus = EventBus()
    try:
        perf = WebSocketPerfIntegration(bus, metrics_interval=60.0)
        await perf.start()
        await perf.start()  # idempotent
        assert perf.running
        await wait_until(lambda: _history(bus, "system_metrics"), message="the first system_metrics")
        assert await perf.stop() is True and await perf.stop() is True
        assert not perf.running
        assert not [t for t in threading.enumerate() if t.name == "coda-ws-metrics"]
        assert len(_history(bus, "system_metrics")) == 1
    finally:
        bus.close()


@pytest.mark.asyncio
async def test_stopping_the_server_stops_the_metrics_thread(aio_server_factory):
    """With a coda_ws.aio server, stopping the server stops perf's metrics thread too."""
    server = await aio_server_factory()
    perf = WebSocketPerfIntegration(server, metrics_interval=60.0)
    await perf.start()
    assert perf.running
    await server.stop()
    assert not perf.running


@pytest.mark.asyncio
async def test_time_operation_async_with_errors_cancellation_and_decorators():
    """time_operation times `async with` blocks (also when they raise or are
    cancelled, naming the exception), coroutine functions call by call, plain
    blocks and functions; the timings reach the summary in milliseconds."""
    bus = EventBus()
    try:
        perf = WebSocketPerfIntegration(bus)
        async with perf.time_operation("stt", "transcribe", {"model": "base"}) as timer:
            await asyncio.sleep(0.02)
        assert timer.duration_ms >= 20.0
        with pytest.raises(KeyError):
            async with perf.time_operation("llm", "generate"):
                raise KeyError("boom")

        async def never_ends():
            async with perf.time_operation("tts", "synthesize"):
                await asyncio.Event().wait()

        task = asyncio.create_task(never_ends())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        @perf.time_operation("tools", "lookup")
        async def lookup(delay):
            await asyncio.sleep(delay)
            return delay

        @track_async_operation(perf, "tools", "fetch")
        async def fetch():
            return "fetched"

        @track_sync_operation(perf, "tools", "parse")
        def parse(text):
            return text.upper()

        assert await asyncio.gather(lookup(0.05), lookup(0.01)) == [0.05, 0.01]
        assert await fetch() == "fetched" and parse("x") == "X"
        assert await asyncio.to_thread(parse, "y") == "Y"  # no running loop in that thread
        with perf.time_operation("memory", "store"):
            pass
        assert await asyncio.to_thread(bus.flush, TIMEOUT)  # history is written by the bus's dispatcher
        traces = [(e["component"], e["operation"], e["metadata"]) for e in _history(bus, "latency_trace")]
        assert traces[:3] == [
            ("stt", "transcribe", {"model": "base"}),
            ("llm", "generate", {"error": "KeyError"}),
            ("tts", "synthesize", {"error": "CancelledError"}),
        ]
        lookups = sorted(
            e["duration_ms"] for e in _history(bus, "latency_trace") if e["operation"] == "lookup"
        )
        assert len(lookups) == 2 and lookups[0] >= 10.0 and lookups[1] >= 50.0
        timings = perf.get_performance_summary()["operation_timings"]
        assert {key: value["count"] for key, value in timings.items()} == {
            "stt.transcribe": 1,
            "llm.generate": 1,
            "tts.synthesize": 1,
            "tools.lookup": 2,
            "tools.fetch": 1,
            "tools.parse": 2,
            "memory.store": 1,
        }
    finally:
        bus.close()


@pytest.mark.asyncio
async def test_tracking_counters_summary_and_reset():
    """track_operation and track_component_timings emit and record; a bad argument
    raises and records nothing; counters, the summary broadcast and reset work."""
    bus = EventBus()
    try:
        perf = WebSocketPerfIntegration(bus)
        trace = await perf.track_operation("llm", "generate", 1200.0, {"tokens": 45})
        assert (trace.type, trace.duration_ms, trace.metadata) == ("latency_trace", 1200.0, {"tokens": 45})
        timing = await perf.track_component_timings("tts", {"synthesize": 600.0, "encode": 5})
        assert timing.timings == {"synthesize": 600.0, "encode": 5.0}
        with pytest.raises(InvalidEventError):
            await perf.track_operation("llm", "generate", "slow")
        assert perf.increment_counter("turns") == 1 and perf.increment_counter("turns", 2) == 3
        summary = perf.get_performance_summary()
        assert set(summary) == {"system_metrics", "operation_timings", "counters", "server_stats"}
        assert sorted(summary["operation_timings"]) == ["llm.generate", "tts.encode", "tts.synthesize"]
        assert summary["counters"] == {"turns": 3}
        event = await perf.broadcast_performance_summary()
        assert event.data["event"] == "performance_summary" and bus.replay[-1]["seq"] == event.seq
        perf.reset_metrics()
        assert perf.get_performance_summary()["operation_timings"] == {}
        assert perf.get_performance_summary()["counters"] == {}
    finally:
        bus.close()


def test_helpers_need_no_running_loop_to_be_made():
    """The helpers can be made outside any event loop (at import time, say)."""
    bus = EventBus()
    try:
        integration = CodaWebSocketIntegration(bus)
        perf = WebSocketPerfIntegration(bus, metrics_interval=1.0)
        assert asyncio.run(integration.tts_status("ready")).seq == 1
        assert perf.metrics_interval == 1.0 and not perf.running
        assert bus.flush(TIMEOUT)
    finally:
        bus.close()
