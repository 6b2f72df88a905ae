"""The asyncio examples (``examples/aio/``) run standalone and a real client receives
their events: the original README's three examples in their asyncio form, and
the pipecat-style voice pipeline.

Each runs as a child process on 127.0.0.1 with port 0, from a directory outside
the checkout, as a user would start it; the child is always killed in a
``finally``.
"""

import importlib.util

import pytest

from .._proc import CHILD_TIMEOUT, ROOT, Child
from ..conftest import connect, recv_json

EXAMPLES = ROOT / "examples" / "aio"
NAMES = ["basic_server.py", "integration.py", "performance.py", "voice_pipeline.py"]


def _start(tmp_path, name, *args):
    return Child(EXAMPLES / name, "--host", "127.0.0.1", "--port", "0", *args, cwd=tmp_path)


def _load(name):
    spec = importlib.util.spec_from_file_location(f"aio_example_{name[:-3]}", EXAMPLES / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _label(frame):
    if frame["type"] == "system_info":
        return f"system_info:{frame['data'].get('event')}"
    return frame["type"]


def _events_until_close(ws, timeout=CHILD_TIMEOUT):
    """Every event frame (replay frames unpacked) until the server closes the connection."""
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
        frames.extend(frame["events"] if frame["type"] == "replay" else [frame])


def _run_to_the_end(tmp_path, name, *args):
    """Start the example, read every event until it stops, check it exited 0."""
    child = _start(tmp_path, name, *args)
    try:
        with connect(child.ws_url(), open_timeout=CHILD_TIMEOUT) as ws:
            frames = _events_until_close(ws)
            assert ws.close_code == 1001
        assert child.wait() == 0
    finally:
        child.kill()
    assert [f["seq"] for f in frames] == sorted({f["seq"] for f in frames})
    return frames


def test_example_files_are_runnable_asyncio_scripts():
    """Each asyncio example has a module docstring, a main() and a __main__ guard,
    and uses coda_ws.aio."""
    assert sorted(path.name for path in EXAMPLES.glob("*.py")) == sorted(NAMES)
    for name in NAMES:
        source = (EXAMPLES / name).read_text()
        assert source.startswith('"""'), name
        assert "\ndef main(argv=None):" in source, name
        assert '\nif __name__ == "__main__":\n    sys.exit(main())' in source, name
        assert "from coda_ws.aio import " in source and "asyncio.run(" in source, name


@pytest.mark.parametrize("name", NAMES)
def test_examples_show_help(name, capsys):
    """Every asyncio example imports cleanly (no side effects at import) and its
    main() documents --port (default 8765) in --help."""
    module = _load(name)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--port" in text and "8765" in text
    assert module.__doc__.splitlines()[0] in " ".join(text.split())


def test_basic_server(tmp_path):
    """basic_server.py: a client gets the version announcement in its replay frame;
    Ctrl-C cancels the main task, run_context() stops the server (close 1001) and
    the script exits 0."""
    child = _start(tmp_path, "basic_server.py")
    try:
        with connect(child.ws_url(), open_timeout=CHILD_TIMEOUT) as ws:
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
    """integration.py: the README's six awaited calls arrive in order, with the
    README's values, then the server stops and the script exits 0."""
    frames = _run_to_the_end(tmp_path, "integration.py", "--wait-for-clients", "1")
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
    """performance.py: system metrics, the `async with` block, the decorated
    coroutine, the manual trace and the summary arrive; the script exits 0."""
    frames = _run_to_the_end(tmp_path, "performance.py", "--wait-for-clients", "1", "--pace", "0.01")
    assert frames[0]["type"] == "system_metrics"
    traces = [f for f in frames if f["type"] == "latency_trace"]
    assert [(f["component"], f["operation"]) for f in traces] == [
        ("stt", "transcribe"),
        ("tts", "synthesize"),
        ("llm", "generate"),
    ]
    assert traces[0]["duration_ms"] >= 15.0  # asyncio.sleep(1.5 * 0.01)
    assert traces[1]["metadata"] == {"voice": "default"}
    assert (traces[2]["duration_ms"], traces[2]["metadata"]) == (1200.0, {"tokens": 45})
    assert _label(frames[-1]) == "system_info:performance_summary"
    timings = frames[-1]["data"]["data"]["operation_timings"]
    assert sorted(timings) == ["llm.generate", "stt.transcribe", "tts.synthesize"]


def test_voice_pipeline(tmp_path):
    """voice_pipeline.py: each utterance's frames through STT, LLM and TTS become
    its events in pipeline order (STT, then LLM, then TTS, then the turn, each
    result followed by its timing); turns carry what was heard and said; the
    metrics thread's system_metrics share the stream; the summary counts every stage."""
    utterances = _load("voice_pipeline.py").UTTERANCES
    frames = _run_to_the_end(tmp_path, "voice_pipeline.py", "--wait-for-clients", "1", "--pace", "0.01")
    assert any(f["type"] == "system_metrics" for f in frames)
    events = [f for f in frames if f["type"] != "system_metrics"]
    expected = ["conversation_start"]
    for text in utterances:
        interims = len(range(2, len(text.split()), 2))
        expected += (
            ["stt_start"]
            + ["stt_interim"] * interims
            + ["stt_result", "latency_trace", "llm_start"]
            + ["llm_token"] * 7
            + ["llm_result", "latency_trace", "tts_start"]
            + ["tts_progress"] * 4
            + ["tts_result", "latency_trace", "conversation_turn"]
        )
    expected += ["conversation_end", "system_info:performance_summary"]
    assert [_label(f) for f in events] == expected
    session = events[0]["session_id"]
    in_session = [f for f in events if f["type"].startswith(("stt", "llm", "tts", "conversation"))]
    assert session and all(f["session_id"] == session for f in in_session)
    by_type = {}
    for frame in events:
        by_type.setdefault(frame["type"], []).append(frame)
    turns = by_type["conversation_turn"]
    assert [t["turn_number"] for t in turns] == [1, 2, 3]
    assert [t["user_input"] for t in turns] == [r["text"] for r in by_type["stt_result"]] == list(utterances)
    assert [t["assistant_response"] for t in turns] == [r["text"] for r in by_type["llm_result"]]
    assert by_type["llm_token"][6]["cumulative_text"] == by_type["llm_result"][0]["text"]
    assert [p["progress_percent"] for p in by_type["tts_progress"][:4]] == [25.0, 50.0, 75.0, 100.0]
    assert by_type["conversation_end"][0]["total_turns"] == 3
    summary = events[-1]["data"]["data"]["operation_timings"]
    assert {key: value["count"] for key, value in summary.items()} == {
        "stt.transcribe": 3,
        "llm.generate": 3,
        "tts.synthesize": 3,
    }
