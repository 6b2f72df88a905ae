"""CodaWebSocketIntegration: the exact events a real client receives."""

import threading

import pytest

from coda_ws import EventBus, InvalidEventError
from coda_ws.integration import CodaWebSocketIntegration
from tests.conftest import TIMEOUT, connect, recv_json

ENVELOPE = ["version", "seq", "timestamp", "type", "session_id"]
SESSION = object()  # placeholder: "the integration's session id"

# (method, args, event type, expected fields in wire order, envelope session, high priority)
CASES = [
    ("stt_start", (), "stt_start", {"mode": "push_to_talk"}, SESSION, False),
    ("stt_start", ("continuous",), "stt_start", {"mode": "continuous"}, SESSION, False),
    ("stt_interim_result", ("Hello",), "stt_interim", {"text": "Hello", "confidence": 0.0}, SESSION, False),
    (
        "stt_interim_result",
        ("Hello Coda", 1),
        "stt_interim",
        {"text": "Hello Coda", "confidence": 1.0},
        SESSION,
        False,
    ),
    (
        "stt_final_result",
        ("Hello world", 0.95, 1500.0),
        "stt_result",
        {"text": "Hello world", "confidence": 0.95, "duration_ms": 1500.0, "language": None},
        SESSION,
        True,
    ),
    (
        "stt_final_result",
        ("Hola", 0.9, 1200, "es"),
        "stt_result",
        {"text": "Hola", "confidence": 0.9, "duration_ms": 1200.0, "language": "es"},
        SESSION,
        True,
    ),
    (
        "stt_error",
        ("Microphone not found",),
        "stt_error",
        {"error": "Microphone not found", "details": None},
        SESSION,
        True,
    ),
    (
        "stt_error",
        ("Mic busy", {"device": "hw:1"}),
        "stt_error",
        {"error": "Mic busy", "details": {"device": "hw:1"}},
        SESSION,
        True,
    ),
    (
        "llm_start",
        ("Hello world", "llama3"),
        "llm_start",
        {"prompt": "Hello world", "model": "llama3", "temperature": 0.7},
        SESSION,
        False,
    ),
    (
        "llm_start",
        ("Hi", "mistral", 1),
        "llm_start",
        {"prompt": "Hi", "model": "mistral", "temperature": 1.0},
        SESSION,
        False,
    ),
    (
        "llm_token",
        (" there", "Hi there"),
        "llm_token",
        {"token": " there", "cumulative_text": "Hi there"},
        SESSION,
        False,
    ),
    (
        "llm_result",
        ("Hi there!", 800.0, 15, 18.75),
        "llm_result",
        {"text": "Hi there!", "duration_ms": 800.0, "token_count": 15, "tokens_per_second": 18.75},
        SESSION,
        True,
    ),
    (
        "llm_error",
        ("Model timeout", {"timeout": 30}),
        "llm_error",
        {"error": "Model timeout", "details": {"timeout": 30}},
        SESSION,
        True,
    ),
    (
        "tts_start",
        ("Hi there!", "default", "elevenlabs"),
        "tts_start",
        {"text": "Hi there!", "voice_id": "default", "engine": "elevenlabs"},
        SESSION,
        False,
    ),
    (
        "tts_progress",
        (50,),
        "tts_progress",
        {"progress_percent": 50.0, "estimated_duration_ms": None},
        SESSION,
        False,
    ),
    (
        "tts_progress",
        (25.0, 2000),
        "tts_progress",
        {"progress_percent": 25.0, "estimated_duration_ms": 2000.0},
        SESSION,
        False,
    ),
    (
        "tts_result",
        (600.0, 1200.0, True),
        "tts_result",
        {"duration_ms": 600.0, "audio_duration_ms": 1200.0, "success": True},
        SESSION,
        True,
    ),
    (
        "tts_result",
        (600, 1200),
        "tts_result",
        {"duration_ms": 600.0, "audio_duration_ms": 1200.0, "success": True},
        SESSION,
        True,
    ),
    (
        "tts_error",
        ("Voice not available",),
        "tts_error",
        {"error": "Voice not available", "details": None},
        SESSION,
        True,
    ),
    ("tts_status", ("speaking",), "tts_status", {"status": "speaking"}, SESSION, False),
    (
        "memory_store",
        ("User likes tea", "preference", 0.8, "mem-1"),
        "memory_store",
        {
            "content_preview": "User likes tea",
            "memory_type": "preference",
            "importance": 0.8,
            "memory_id": "mem-1",
        },
        SESSION,
        True,
    ),
    (
        "memory_retrieve",
        ("drinks", 2, [0.9, 1]),
        "memory_retrieve",
        {"query": "drinks", "results_count": 2, "relevance_scores": [0.9, 1.0]},
        SESSION,
        False,
    ),
    (
        "tool_call",
        ("get_time", {"tz": "UTC"}, "call-1"),
        "tool_call",
        {"tool_name": "get_time", "parameters": {"tz": "UTC"}, "call_id": "call-1"},
        SESSION,
        False,
    ),
    (
        "tool_result",
        ("get_time", "call-1", "15:45:00", 50),
        "tool_result",
        {"tool_name": "get_time", "call_id": "call-1", "result": "15:45:00", "duration_ms": 50.0},
        SESSION,
        True,
    ),
    (
        "tool_result",
        ("search", "call-2", [{"hit": 1}, None], 12.5),
        "tool_result",
        {"tool_name": "search", "call_id": "call-2", "result": [{"hit": 1}, None], "duration_ms": 12.5},
        SESSION,
        True,
    ),
    (
        "tool_error",
        ("weather", "call-3", "API key missing"),
        "tool_error",
        {"tool_name": "weather", "call_id": "call-3", "error": "API key missing", "details": None},
        SESSION,
        True,
    ),
    ("conversation_start", ("conv-1",), "conversation_start", {"conversation_id": "conv-1"}, SESSION, True),
    (
        "conversation_turn",
        ("conv-1", 1, "What time is it?", "It is noon."),
        "conversation_turn",
        {
            "conversation_id": "conv-1",
            "turn_number": 1,
            "user_input": "What time is it?",
            "assistant_response": "It is noon.",
        },
        SESSION,
        True,
    ),
    (
        "conversation_end",
        ("conv-1", 3, 42),
        "conversation_end",
        {"conversation_id": "conv-1", "total_turns": 3, "duration_seconds": 42.0},
        SESSION,
        True,
    ),
    (
        "latency_trace",
        ("stt", "transcribe", 1500),
        "latency_trace",
        {"component": "stt", "operation": "transcribe", "duration_ms": 1500.0, "metadata": None},
        SESSION,
        False,
    ),
    (
        "latency_trace",
        ("llm", "generate", 12.5, {"tokens": 45}),
        "latency_trace",
        {"component": "llm", "operation": "generate", "duration_ms": 12.5, "metadata": {"tokens": 45}},
        SESSION,
        False,
    ),
    (
        "component_timing",
        ("memory", {"search": 75, "store": 200.5}),
        "component_timing",
        {"component": "memory", "timings": {"search": 75.0, "store": 200.5}},
        SESSION,
        False,
    ),
    (
        "system_error",
        ("warning", "High memory usage"),
        "system_error",
        {"level": "warning", "message": "High memory usage", "details": None},
        None,
        True,
    ),
    (
        "system_error",
        ("error", "Disk full", {"free_mb": 0}),
        "system_error",
        {"level": "error", "message": "Disk full", "details": {"free_mb": 0}},
        None,
        True,
    ),
]


def _kinds(mapping):
    """Type names of a dict's values, recursively (tells 50 from 50.0)."""
    if isinstance(mapping, dict):
        return {key: _kinds(value) for key, value in mapping.items()}
    if isinstance(mapping, list):
        return [_kinds(value) for value in mapping]
    return type(mapping).__name__


def _in_replay(server, seq):
    assert server.bus.flush(TIMEOUT)
    return any(event["seq"] == seq for event in server.replay_buffer)


@pytest.mark.parametrize(
    "method, args, event_type, fields, session, high_priority",
    CASES,
    ids=[f"{case[0]}-{i}" for i, case in enumerate(CASES)],
)
def test_method_sends_exact_event(server, method, args, event_type, fields, session, high_priority):
    """Each helper sends exactly one event with the table's type, fields (in
    wire order, floats as floats), session id and high-priority flag."""
    integration = CodaWebSocketIntegration(server)
    with connect(server.url) as ws:
        returned = getattr(integration, method)(*args)
        frame = recv_json(ws)
    expected_session = integration.session_id if session is SESSION else None
    assert frame["type"] == event_type
    assert list(frame) == ENVELOPE + list(fields)
    assert frame == {
        "version": "1.0",
        "seq": returned.seq,
        "timestamp": returned.timestamp,
        "type": event_type,
        "session_id": expected_session,
        **fields,
    }
    assert _kinds({k: frame[k] for k in fields}) == _kinds(fields)
    assert isinstance(frame["timestamp"], float)
    assert _in_replay(server, returned.seq) is high_priority


def test_system_startup_event(server):
    """system_startup: system_info carrying startup data and the session id in
    ``data``, a null envelope session, kept in the replay buffer."""
    integration = CodaWebSocketIntegration(server)
    config = {"voice": {"stt": "whisper"}, "tools": {"count": 5}}
    with connect(server.url) as ws:
        event = integration.system_startup("2.0.0-alpha", config)
        frame = recv_json(ws)
    assert frame["type"] == "system_info"
    assert frame["session_id"] is None
    assert frame["data"] == {
        "event": "startup",
        "version": "2.0.0-alpha",
        "config": config,
        "session_id": integration.session_id,
    }
    assert _in_replay(server, event.seq)


def test_system_shutdown_event(server):
    """system_shutdown: system_info with the uptime (a float, seconds since
    the integration was made) and the session id; null envelope session."""
    integration = CodaWebSocketIntegration(server)
    with connect(server.url) as ws:
        event = integration.system_shutdown()
        frame = recv_json(ws)
    assert frame["type"] == "system_info" and frame["session_id"] is None
    data = frame["data"]
    assert list(data) == ["event", "uptime_seconds", "session_id"]
    assert data["event"] == "shutdown" and data["session_id"] == integration.session_id
    assert isinstance(data["uptime_seconds"], float) and 0 <= data["uptime_seconds"] < 60
    assert _in_replay(server, event.seq)


@pytest.mark.parametrize("length, sent", [(199, 199), (200, 200), (201, 203), (1000, 203)])
def test_llm_start_truncates_long_prompts(server, length, sent):
    """A prompt over 200 characters is sent as its first 200 plus "..."."""
    integration = CodaWebSocketIntegration(server)
    prompt = "".join(chr(ord("a") + i % 26) for i in range(length))
    with connect(server.url) as ws:
        integration.llm_start(prompt, "llama3")
        frame = recv_json(ws)
    assert len(frame["prompt"]) == sent
    if length > 200:
        assert frame["prompt"] == prompt[:200] + "..."
    else:
        assert frame["prompt"] == prompt


@pytest.mark.parametrize("length, sent", [(100, 100), (101, 103), (500, 103)])
def test_memory_store_truncates_long_content(server, length, sent):
    """Memory content over 100 characters is sent as its first 100 plus "..."."""
    integration = CodaWebSocketIntegration(server)
    content = "x" * (length - 1) + "!"
    with connect(server.url) as ws:
        integration.memory_store(content, "fact", 0.5, "mem-9")
        frame = recv_json(ws)
    assert len(frame["content_preview"]) == sent
    assert frame["content_preview"] == (content if length <= 100 else content[:100] + "...")


def test_replay_frame_holds_only_high_priority_events(server):
    """A client connecting after a turn gets exactly the high-priority events
    in its replay frame, oldest first."""
    integration = CodaWebSocketIntegration(server)
    integration.stt_start()
    integration.stt_final_result("Hello world", 0.95, 1500.0)
    integration.llm_token("Hi", "Hi")
    integration.llm_result("Hi there!", 800.0, 15, 18.75)
    integration.tts_progress(50.0)
    integration.tts_result(600.0, 1200.0)
    server.bus.flush(TIMEOUT)
    with connect(server.url) as ws:
        frame = recv_json(ws)
    assert frame["type"] == "replay"
    assert [event["type"] for event in frame["events"]] == ["stt_result", "llm_result", "tts_result"]


def test_session_lifecycle(server):
    """new_session() makes a fresh uuid4 id, resets the turn count, and the
    following events carry it; get_session_id() returns the current one."""
    integration = CodaWebSocketIntegration(server)
    first = integration.get_session_id()
    assert len(first) == 36 and first.count("-") == 4
    integration.conversation_turn("c", 1, "a", "b")
    integration.conversation_turn("c", 2, "a", "b")
    assert integration.conversation_turn_count == 2
    with connect(server.url + "?replay=0") as ws:
        second = integration.new_session()
        assert second != first and integration.get_session_id() == second == integration.session_id
        assert integration.conversation_turn_count == 0
        integration.stt_start()
        assert recv_json(ws)["session_id"] == second


def test_start_time_is_construction_time():
    """start_time is the Unix time at which the integration was made."""
    import time

    before = time.time()
    integration = CodaWebSocketIntegration(EventBus())
    assert before <= integration.start_time <= time.time()


def test_turn_count_is_exact_across_threads():
    """conversation_turn from 8 threads at once counts every turn."""
    bus = EventBus()
    integration = CodaWebSocketIntegration(bus)
    barrier = threading.Barrier(8)

    def turns():
        barrier.wait()
        for n in range(100):
            integration.conversation_turn("conv", n, "q", "a")

    threads = [threading.Thread(target=turns, name=f"turns-{i}") for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert integration.conversation_turn_count == 800
    assert bus.flush(TIMEOUT)
    assert len(bus.history(event_filter=None)) == 800
    bus.close()


def test_works_on_a_bare_event_bus():
    """With a bare EventBus the helpers emit into it (no server needed), with
    the same fields and priorities."""
    bus = EventBus()
    try:
        integration = CodaWebSocketIntegration(bus)
        integration.stt_final_result("Hello world", 0.95, 1500.0)
        integration.llm_token("Hi", "Hi")
        assert bus.flush(TIMEOUT)
        entries = bus.history()
        assert [e.type for e in entries] == ["stt_result", "llm_token"]
        assert entries[0].to_dict()["duration_ms"] == 1500.0
        assert entries[0].session_id == integration.session_id
        assert [event["type"] for event in bus.replay] == ["stt_result"]
    finally:
        bus.close()


def test_accepts_any_emitter_and_registers_nothing():
    """Any object with a compatible emit() works; the integration calls
    nothing else on it (a bare emitter has no add_stop_callback)."""

    class Recorder:
        def __init__(self):
            self.calls = []

        def emit(self, event_type, *, session_id=None, high_priority=None, **fields):
            self.calls.append((event_type, session_id, high_priority, fields))
            return len(self.calls)

    recorder = Recorder()
    integration = CodaWebSocketIntegration(recorder)
    assert integration.tts_status("idle") == 1
    assert integration.system_error("info", "ok") == 2
    assert recorder.calls == [
        ("tts_status", integration.session_id, False, {"status": "idle"}),
        ("system_error", None, True, {"level": "info", "message": "ok", "details": None}),
    ]


def test_rejects_an_object_without_emit():
    """The constructor needs an emit() method and says so."""
    with pytest.raises(TypeError, match="emit"):
        CodaWebSocketIntegration(object())


def test_invalid_arguments_raise_and_emit_nothing(server):
    """A value of the wrong kind raises InvalidEventError (a TypeError and a
    ValueError) naming the field, and consumes no sequence number."""
    integration = CodaWebSocketIntegration(server)
    before = server.sequence_number
    with pytest.raises(InvalidEventError, match="token_count"):
        integration.llm_result("x", 1.0, 1.5, 2.0)
    with pytest.raises(TypeError, match="confidence"):
        integration.stt_final_result("x", "high", 1.0)
    with pytest.raises(ValueError, match="duration_ms"):
        integration.tts_result(float("nan"), 1.0)
    with pytest.raises(InvalidEventError, match="prompt"):
        integration.llm_start(None, "llama3")
    assert server.sequence_number == before
