"""Every example runs standalone (``python examples/NAME.py``) and a real client
receives its events.

Each example runs as a child process on 127.0.0.1 with port 0, from a
directory outside the checkout, as a user would start it; the child is always
killed in a ``finally``.
"""

import importlib.util
import json
import threading
import time
import urllib.request

import pytest

from coda_ws import EventBus
from coda_ws.demo import run_demo, run_demo_conversation, run_demo_errors, run_demo_loop
from coda_ws.integration import CodaWebSocketIntegration
from coda_ws.perf import WebSocketPerfIntegration
from tests._proc import CHILD_TIMEOUT, ROOT, Child
from tests.conftest import TIMEOUT, connect, recv_json, recv_until, wait_for

EXAMPLES = ROOT / "examples"

#: The original demo's order (reference/original-coda.md), system_metrics aside.
DEMO_ORDER = (
    [
        "system_info:startup",
        "conversation_start",
        "stt_start",
        "stt_interim",
        "stt_interim",
        "stt_result",
        "memory_retrieve",
        "llm_start",
    ]
    + ["llm_token"] * 9
    + ["llm_result", "tool_call", "tool_result", "tts_start"]
    + ["tts_progress"] * 4
    + [
        "tts_result",
        "memory_store",
        "conversation_turn",
        "conversation_end",
        "stt_error",
        "llm_error",
        "tts_error",
        "tool_error",
        "system_error",
        "latency_trace",
        "latency_trace",
        "latency_trace",
        "component_timing",
        "system_info:performance_summary",
        "system_info:shutdown",
    ]
)


def _start(tmp_path, name, *args):
    return Child(EXAMPLES / name, "--host", "127.0.0.1", "--port", "0", *args, cwd=tmp_path)


def _connect(url):
    return connect(url, open_timeout=CHILD_TIMEOUT)


def _label(frame):
    if frame["type"] == "system_info":
        return f"system_info:{frame['data'].get('event')}"
    return frame["type"]


def _events_until_close(ws, timeout=CHILD_TIMEOUT):
    """Every event frame until the server closes the connection (1001 expected)."""
    frames = []
    while True:
        try:
            frame = recv_json(ws, timeout)
        except TimeoutError:
            raise AssertionError(f"no close within {timeout} s; last frames {frames[-3:]}") from None
        except Exception as exc:  # the websockets client raises ConnectionClosed subclasses
            if type(exc).__name__.startswith("ConnectionClosed"):
                return frames
            raise
        if frame["type"] == "replay":
            frames.extend(frame["events"])
        else:
            frames.append(frame)


def _get(url):
    with urllib.request.urlopen(url, timeout=CHILD_TIMEOUT) as response:
        return response.status, response.headers.get_content_type(), response.read().decode()


def test_example_files_are_runnable_scripts():
    """Each example has a module docstring, a main() and a __main__ guard."""
    names = sorted(path.name for path in EXAMPLES.glob("*.py"))
    assert {
        "basic_server.py",
        "integration.py",
        "performance.py",
        "websocket_demo.py",
        "flask_dashboard_app.py",
        "blocking_pipeline.py",
    } <= set(names)
    for name in names:
        source = (EXAMPLES / name).read_text()
        assert source.startswith('"""'), name
        assert "\ndef main(argv=None):" in source, name
        assert '\nif __name__ == "__main__":\n    sys.exit(main())' in source, name


def test_basic_server(tmp_path):
    """basic_server.py: a client gets the version announcement in its replay
    frame; Ctrl-C stops the server (close 1001) and the script exits 0."""
    child = _start(tmp_path, "basic_server.py")
    try:
        with _connect(child.ws_url()) as ws:
            frame = recv_json(ws, CHILD_TIMEOUT)
            assert frame["type"] == "replay"
            (event,) = frame["events"]
            assert event["type"] == "system_info" and event["data"] == {"version": "2.0.0"}
            child.interrupt()
            assert _events_until_close(ws) == []
            assert ws.close_code == 1001
        assert child.wait() == 0
    finally:
        child.kill()


def test_integration_example(tmp_path):
    """integration.py: the README's six calls arrive in order, with the
    README's values, then the server stops and the script exits 0."""
    child = _start(tmp_path, "integration.py", "--wait-for-clients", "1")
    try:
        with _connect(child.ws_url()) as ws:
            frames = _events_until_close(ws)
        assert child.wait() == 0
    finally:
        child.kill()
    assert [f["type"] for f in frames] == [
        "stt_start",
        "stt_result",
        "llm_start",
        "llm_result",
        "tts_start",
        "tts_result",
    ]
    session = frames[0]["session_id"]
    assert session and all(f["session_id"] == session for f in frames)
    assert frames[0]["mode"] == "continuous"
    assert (frames[1]["text"], frames[1]["confidence"], frames[1]["duration_ms"]) == (
        "Hello world",
        0.95,
        1500.0,
    )
    assert (frames[2]["prompt"], frames[2]["model"], frames[2]["temperature"]) == (
        "Hello world",
        "llama3",
        0.7,
    )
    assert (frames[3]["token_count"], frames[3]["tokens_per_second"]) == (15, 18.75)
    assert (frames[4]["voice_id"], frames[4]["engine"]) == ("default", "elevenlabs")
    assert (frames[5]["duration_ms"], frames[5]["audio_duration_ms"], frames[5]["success"]) == (
        600.0,
        1200.0,
        True,
    )


def test_performance_example(tmp_path):
    """performance.py: system metrics, the timed and decorated operations, the
    manual trace and the summary arrive; the script exits 0."""
    child = _start(tmp_path, "performance.py", "--wait-for-clients", "1", "--pace", "0.01")
    try:
        with _connect(child.ws_url()) as ws:
            frames = _events_until_close(ws)
        assert child.wait() == 0
    finally:
        child.kill()
    assert frames[0]["type"] == "system_metrics"
    traces = [(f["component"], f["operation"]) for f in frames if f["type"] == "latency_trace"]
    assert traces == [("stt", "transcribe"), ("tts", "synthesize"), ("llm", "generate")]
    manual = [f for f in frames if f["type"] == "latency_trace"][-1]
    assert (manual["duration_ms"], manual["metadata"]) == (1200.0, {"tokens": 45})
    assert _label(frames[-1]) == "system_info:performance_summary"
    timings = frames[-1]["data"]["data"]["operation_timings"]
    assert sorted(timings) == ["llm.generate", "stt.transcribe", "tts.synthesize"]


def test_websocket_demo(tmp_path):
    """websocket_demo.py: the full original demo in its order (conversation,
    one error of each kind, performance section, startup and shutdown)."""
    child = _start(tmp_path, "websocket_demo.py", "--wait-for-clients", "1", "--pace", "0")
    try:
        with _connect(child.ws_url()) as ws:
            frames = _events_until_close(ws)
        assert child.wait() == 0
    finally:
        child.kill()
    assert [_label(f) for f in frames if f["type"] != "system_metrics"] == DEMO_ORDER
    assert any(f["type"] == "system_metrics" for f in frames)
    assert [f["seq"] for f in frames] == sorted({f["seq"] for f in frames})


def test_websocket_demo_loop(tmp_path):
    """websocket_demo.py --loop repeats the demo until Ctrl-C, then exits 0."""
    child = _start(tmp_path, "websocket_demo.py", "--loop", "--wait-for-clients", "1", "--pace", "0.01")
    try:
        with _connect(child.ws_url()) as ws:
            first = recv_until(ws, lambda f: _label(f) == "system_info:shutdown", CHILD_TIMEOUT)
            second = recv_until(ws, lambda f: f.get("type") == "conversation_start", CHILD_TIMEOUT)
            assert [_label(f) for f in second][-2:] == ["system_info:startup", "conversation_start"]
            first_session = next(f["session_id"] for f in first if f["type"] == "conversation_start")
            assert second[-1]["session_id"] != first_session  # each round is a new session
            child.interrupt()
            _events_until_close(ws)
            assert ws.close_code == 1001
        assert child.wait() == 0
    finally:
        child.kill()


def test_flask_dashboard_app(tmp_path):
    """flask_dashboard_app.py: the application's own pages and the event
    stream share one port; a blocking view's events reach the client."""
    child = _start(tmp_path, "flask_dashboard_app.py", "--pace", "0.01")
    try:
        url = child.ws_url()
        assert url.endswith("/coda-ws/ws")
        base = url.replace("ws://", "http://").replace("/coda-ws/ws", "/")
        status, kind, body = _get(base)
        assert status == 200 and kind == "text/html" and "Kitchen assistant" in body
        with _connect(url) as ws:
            status, kind, body = _get(base + "ask?q=What+time+is+it")
            assert status == 200 and kind == "application/json"
            answer = json.loads(body)
            frames = recv_until(ws, lambda f: f.get("type") == "conversation_turn", CHILD_TIMEOUT)
            status, _, body = _get(base + "status")
            assert json.loads(body)["turns"] == 1 and json.loads(body)["clients"] == 1
            assert _get(base + "coda-ws/healthz")[0] == 200
            child.interrupt()
            _events_until_close(ws)
            assert ws.close_code == 1001
        assert child.wait() == 0
    finally:
        child.kill()
    types = [f["type"] for f in frames]
    assert types[0] == "conversation_start"
    stages = [("stt_result", "llm_start"), ("llm_result", "tts_start"), ("tts_result", "conversation_turn")]
    for earlier, later in stages:
        assert types.index(earlier) < types.index(later)
    assert frames[types.index("stt_result")]["text"] == "What time is it"
    assert frames[-1]["assistant_response"] == answer["answer"]
    assert frames[-1]["session_id"] == answer["session_id"]


def test_blocking_pipeline(tmp_path):
    """blocking_pipeline.py: three worker threads emit into one ordered
    stream; every utterance goes STT -> LLM -> TTS -> turn, and the summary
    counts every stage."""
    child = _start(tmp_path, "blocking_pipeline.py", "--wait-for-clients", "1", "--pace", "0.01")
    try:
        with _connect(child.ws_url()) as ws:
            frames = _events_until_close(ws)
        assert child.wait() == 0
    finally:
        child.kill()
    assert [f["seq"] for f in frames] == sorted({f["seq"] for f in frames})
    results = {
        kind: [f for f in frames if f["type"] == kind]
        for kind in ("stt_result", "llm_result", "tts_result", "conversation_turn")
    }
    assert all(len(found) == 3 for found in results.values()), {k: len(v) for k, v in results.items()}
    for i in range(3):
        seqs = [
            results[kind][i]["seq"]
            for kind in ("stt_result", "llm_result", "tts_result", "conversation_turn")
        ]
        assert seqs == sorted(seqs)
        assert results["conversation_turn"][i]["user_input"] == results["stt_result"][i]["text"]
    assert [f["turn_number"] for f in results["conversation_turn"]] == [1, 2, 3]
    end = [f for f in frames if f["type"] == "conversation_end"]
    assert len(end) == 1 and end[0]["total_turns"] == 3
    summary = [f for f in frames if _label(f) == "system_info:performance_summary"][-1]["data"]["data"]
    assert {key: value["count"] for key, value in summary["operation_timings"].items()} == {
        "stt.transcribe": 3,
        "llm.generate": 3,
        "tts.synthesize": 3,
    }


@pytest.mark.parametrize(
    "name",
    [
        "basic_server.py",
        "integration.py",
        "performance.py",
        "websocket_demo.py",
        "flask_dashboard_app.py",
        "blocking_pipeline.py",
    ],
)
def test_examples_show_help(name, capsys):
    """Every example imports cleanly (no side effects at import) and its
    main() documents --port (default 8765) in --help."""
    spec = importlib.util.spec_from_file_location(f"example_{name[:-3]}", EXAMPLES / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--port" in text and "8765" in text
    assert module.__doc__.splitlines()[0] in " ".join(text.split())


# -- the shared demo script (coda_ws.demo), behind websocket_demo.py and coda-ws demo --


@pytest.fixture
def bus():
    """A bare EventBus, closed after the test."""
    bus = EventBus(max_replay_events=500)
    yield bus
    bus.close()


def _types(bus):
    assert bus.flush(TIMEOUT)
    return [_label(entry.to_dict()) for entry in bus.history()]


def test_demo_conversation_order(bus):
    """run_demo_conversation at pace 0 emits the original demo's conversation,
    every event in the integration's session."""

    integration = CodaWebSocketIntegration(bus)
    assert run_demo_conversation(integration, pace=0, conversation_id="c-1") is True
    conversation = DEMO_ORDER[1 : DEMO_ORDER.index("stt_error")]
    assert _types(bus) == conversation
    entries = [entry.to_dict() for entry in bus.history()]
    assert {entry["session_id"] for entry in entries} == {integration.session_id}
    assert entries[-1]["conversation_id"] == "c-1" and entries[-1]["total_turns"] == 1
    tokens = [entry for entry in entries if entry["type"] == "llm_token"]
    assert tokens[-1]["cumulative_text"] == "".join(t["token"] for t in tokens)
    assert integration.conversation_turn_count == 1


def test_demo_conversation_with_perf_tracks_each_stage(bus):
    """With a perf integration, each stage's timing follows its result event."""

    perf = WebSocketPerfIntegration(bus)
    assert run_demo_conversation(CodaWebSocketIntegration(bus), perf, pace=0, exchange=1)
    types = _types(bus)
    for result in ("stt_result", "llm_result", "tool_result", "tts_result"):
        assert types[types.index(result) + 1] == "latency_trace"
    timings = perf.get_performance_summary()["operation_timings"]
    assert sorted(timings) == ["llm.generate", "stt.transcribe", "tools.calendar_lookup", "tts.synthesize"]


def test_demo_stops_promptly_when_asked(bus):
    """Setting stop_event ends a realistically paced run at its next pause:
    the run returns at once instead of finishing the conversation."""

    stop_event = threading.Event()
    result = []
    worker = threading.Thread(
        target=lambda: result.append(
            run_demo_loop(CodaWebSocketIntegration(bus), pace=1.0, stop_event=stop_event)
        ),
        name="demo-under-test",
    )
    worker.start()
    try:
        wait_for(lambda: bus.last_seq >= 2, message="the demo to start")
    finally:
        stop_event.set()
        started = time.monotonic()
        worker.join(TIMEOUT)
    assert not worker.is_alive() and time.monotonic() - started < 1.0
    assert result == [0]
    assert "conversation_end" not in _types(bus)


def test_demo_stop_event_already_set_emits_nothing(bus):
    """A run asked to stop before it starts emits nothing and returns False."""

    stopped = threading.Event()
    stopped.set()
    integration = CodaWebSocketIntegration(bus)
    assert run_demo_conversation(integration, pace=0, stop_event=stopped) is False
    assert run_demo_errors(integration, pace=1.0, stop_event=stopped) is False
    assert run_demo(integration, pace=0, stop_event=stopped) is False
    assert bus.last_seq == 0


def test_demo_loop_iterations_errors_and_summaries(bus):
    """run_demo_loop plays the requested number of conversations, one error
    after every third, a memory timing per conversation and a summary every fifth."""

    perf = WebSocketPerfIntegration(bus)
    assert run_demo_loop(CodaWebSocketIntegration(bus), perf, pace=0, iterations=6) == 6
    types = _types(bus)
    assert types.count("conversation_end") == 6
    assert types.count("component_timing") == 6
    assert [t for t in types if t.endswith("_error")] == ["stt_error", "llm_error"]
    assert types.count("system_info:performance_summary") == 1
    assert perf.get_performance_summary()["counters"]["conversations"] == 6


@pytest.mark.parametrize("pace", [-1, float("nan"), "fast"])
def test_demo_rejects_bad_pace(bus, pace):
    """pace must be a non-negative number."""

    with pytest.raises(ValueError, match="pace"):
        run_demo_conversation(CodaWebSocketIntegration(bus), pace=pace)
