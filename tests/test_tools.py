"""The stream tools (tail, record, play) as functions and as ``coda-ws`` subcommands,
against real servers on 127.0.0.1."""

import contextlib
import io
import json
import threading
import time

import pytest

from coda_ws.cli import build_parser, main
from coda_ws.client import CodaEventClient
from coda_ws.tools import ToolError, format_event, play, read_recording, record, tail

from .conftest import TIMEOUT, wait_for


@contextlib.contextmanager
def in_thread(target, *args, **kwargs):
    """Run ``target`` in a thread; yields a dict that gets ``result`` or ``error``; joined on exit."""
    outcome = {}

    def run():
        try:
            outcome["result"] = target(*args, **kwargs)
        except BaseException as exc:  # handed to the test, which asserts on it
            outcome["error"] = exc

    # A daemon, so a tool that never returns (the test has failed then) cannot hang the interpreter.
    thread = threading.Thread(target=run, name=f"test-{getattr(target, '__name__', 'tool')}", daemon=True)
    thread.start()
    try:
        yield outcome
    finally:
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "the tool did not return"


def result_of(outcome):
    """The tool's return value, re-raising what it raised."""
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def emit_sample(server):
    """A short, varied stream: several types, sessions, nested fields. Returns (type, session, fields) tuples."""
    sample = [
        (
            "stt_result",
            "s1",
            {"text": "what's the weather", "confidence": 0.93, "duration_ms": 812.5, "language": "en"},
        ),
        ("llm_start", "s1", {"prompt": "what's the weather", "model": "llama3", "temperature": 0.7}),
        ("llm_token", "s1", {"token": "Sunny", "cumulative_text": "Sunny"}),
        (
            "tool_call",
            "s1",
            {"tool_name": "weather", "parameters": {"city": "Paris", "days": [1, 2]}, "call_id": "c1"},
        ),
        (
            "system_metrics",
            None,
            {"memory_mb": 512.0, "cpu_percent": 12.5, "gpu_vram_mb": None, "uptime_seconds": 3.0},
        ),
        ("system_info", None, {"data": {"note": "ünïcode ✓", "nested": {"a": [1, 2.5]}}}),
        (
            "llm_result",
            "s2",
            {"text": "Sunny, 21°C", "duration_ms": 950.0, "token_count": 5, "tokens_per_second": 5.3},
        ),
    ]
    for type_name, session_id, fields in sample:
        server.emit(type_name, session_id=session_id, **fields)
    return sample


def as_triples(events):
    """(type, session_id, fields) of wire dicts or event objects."""
    triples = []
    for event in events:
        data = event if isinstance(event, dict) else event.to_dict()
        fields = {
            k: v for k, v in data.items() if k not in ("version", "seq", "timestamp", "type", "session_id")
        }
        triples.append((data["type"], data["session_id"], fields))
    return triples


# -- tail -----------------------------------------------------------------------------


def test_tail_json_prints_one_event_per_line(server):
    """tail --json prints the replay and live events as JSON lines, wire form, in order, then stops at count."""
    server.emit("stt_result", text="replayed", confidence=1.0, duration_ms=1.0)
    out = io.StringIO()
    with in_thread(tail, server.url, json_output=True, out=out, count=8) as outcome:
        assert server.wait_for_clients(1, TIMEOUT)
        sample = emit_sample(server)
    assert result_of(outcome) == 8
    lines = out.getvalue().splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["seq"] for e in events] == list(range(1, 9))
    assert list(events[1]) == [
        "version",
        "seq",
        "timestamp",
        "type",
        "session_id",
        "text",
        "confidence",
        "duration_ms",
        "language",
    ]
    assert as_triples(events[1:]) == [(t, s, f) for t, s, f in sample]


def test_tail_readable_lines_filters_and_stop_event(server):
    """Without --json, one plain line per event (no colour when not a terminal); filters apply; stop_event ends it."""
    out, err = io.StringIO(), io.StringIO()
    stop = threading.Event()
    with in_thread(
        tail, server.url, types=["llm_*"], session_id="s1", out=out, err=err, stop_event=stop
    ) as outcome:
        try:
            assert server.wait_for_clients(1, TIMEOUT)
            emit_sample(server)
            wait_for(lambda: out.getvalue().count("\n") >= 2, message="two lines of output")
        finally:
            stop.set()
    assert result_of(outcome) == 2
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "\033" not in out.getvalue()
    assert " llm_start " in lines[0] and "[s1]" in lines[0] and 'model="llama3"' in lines[0]
    assert " llm_token " in lines[1] and 'token="Sunny"' in lines[1]


def test_tail_since_starts_with_the_missed_events(server, capsys):
    """tail --since N prints the events after position N first (no replay frame), as the CLI does."""
    for i in range(5):
        server.emit("llm_token", token=str(i), cumulative_text="")
    assert main(["tail", server.url, "--since", "2", "--json", "--count", "3"]) == 0
    assert [json.loads(line)["seq"] for line in capsys.readouterr().out.splitlines()] == [3, 4, 5]


def test_format_event_colours_and_shortens():
    """format_event: time, #seq, type, session, fields; long values shortened, colour codes, width respected."""
    event = {
        "version": "1.0",
        "seq": 7,
        "timestamp": 0.0,
        "type": "system_error",
        "session_id": None,
        "level": "error",
        "message": "x" * 500,
        "details": None,
    }
    plain = format_event(event)
    assert "#7 system_error" in plain and "details" not in plain and "…" in plain and len(plain) < 140
    coloured = format_event(event, color=True, width=60)
    assert "\033[31m" in coloured  # errors in red
    assert len(plain[:60]) == len(format_event(event, width=60))


def test_tail_reports_bad_urls_and_unreachable_servers(capsys):
    """Bad URL: exit 2; nothing listening: exit 1; both with a clear message on stderr."""
    assert main(["tail", "localhost:8765"]) == 2
    assert "ws://" in capsys.readouterr().err
    with pytest.raises(ToolError, match="cannot connect to ws://127.0.0.1:9/"):
        tail("ws://127.0.0.1:9/", out=io.StringIO())
    assert main(["tail", "ws://127.0.0.1:9/", "--connect-timeout", "2"]) == 1
    assert "coda-ws tail: error: cannot connect" in capsys.readouterr().err


# -- record and play ----------------------------------------------------------------------


def test_record_then_play_reproduces_the_stream(server_factory, tmp_path):
    """record writes one JSON event per line with its original timestamp; play re-emits the same events in order."""
    source = server_factory()
    path = tmp_path / "session.jsonl"
    with in_thread(record, source.url, str(path), count=7) as outcome:
        assert source.wait_for_clients(1, TIMEOUT)
        sample = emit_sample(source)
    assert result_of(outcome) == 7
    recorded = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    originals = [entry.to_dict() for entry in source.bus.history()]
    assert recorded == originals  # seq, timestamp and fields as emitted
    assert [data for _, data in read_recording(str(path))] == recorded

    target = server_factory()
    with CodaEventClient(target.url, replay=False, connect_timeout=TIMEOUT) as watcher:
        assert watcher.wait_connected(TIMEOUT)
        assert play(str(path), speed=1000.0, server=target, err=io.StringIO()) == 7
        played = [watcher.get(timeout=TIMEOUT) for _ in range(7)]
    assert None not in played
    assert as_triples(played) == [(t, s, f) for t, s, f in sample]
    assert target.running  # a server passed in is left running


def test_play_keeps_the_timing_scaled_by_speed(tmp_path):
    """Events 4 s apart in the recording are re-emitted 0.5 s apart at speed 8, by play's own server."""
    path = tmp_path / "timed.jsonl"
    lines = [
        {"type": "tts_status", "status": "a", "timestamp": 100.0},
        {"type": "tts_status", "status": "b", "timestamp": 104.0, "session_id": "s"},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    watchers = []

    def on_ready(server):
        watcher = CodaEventClient(server.url, replay=False, connect_timeout=TIMEOUT)
        watchers.append(watcher)
        assert watcher.wait_connected(TIMEOUT)

    started = time.monotonic()
    assert play(str(path), speed=8.0, host="127.0.0.1", port=0, on_ready=on_ready, err=io.StringIO()) == 2
    assert time.monotonic() - started >= 0.5
    watcher = watchers[0]
    try:
        events = [watcher.get(timeout=TIMEOUT) for _ in range(2)]
    finally:
        watcher.close()
    assert [(e.status, e.session_id) for e in events] == [("a", None), ("b", "s")]
    gap = events[1].timestamp - events[0].timestamp  # stamped by the server as play emitted them
    assert 0.49 <= gap < 2.0  # 4 s / 8; far from the unscaled 4 s even on a loaded machine


def test_play_loops_until_stopped(tmp_path):
    """--loop starts over after the last event; setting stop_event ends playback and stops play's server."""
    path = tmp_path / "loop.jsonl"
    path.write_text('{"type": "stt_start", "mode": "push", "timestamp": 5.0}\n', encoding="utf-8")
    stop = threading.Event()
    servers = []
    with in_thread(
        play,
        str(path),
        speed=50.0,
        host="127.0.0.1",
        port=0,
        loop=True,
        stop_event=stop,
        on_ready=servers.append,
        err=io.StringIO(),
    ) as outcome:
        try:
            wait_for(lambda: servers and servers[0].sequence_number >= 3, message="three passes")
        finally:
            stop.set()
    assert result_of(outcome) >= 3
    assert not servers[0].running


def test_play_rejects_bad_files_naming_the_line(tmp_path, capsys):
    """Missing file, malformed JSON, a non-object, an invalid event: a clear error naming the line, exit code 1."""
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(ToolError, match="no such file"):
        play(str(missing), port=0, err=io.StringIO())
    cases = {
        '{"type": "stt_start", "mode": "x"}\n\n{"type": oops}\n': r":3: malformed JSON",
        '{"type": "stt_start", "mode": "x"}\n[1, 2]\n': r":2: expected a JSON object",
        '{"type": "stt_result", "text": 5}\n': r":1: cannot be played back: .*stt_result.text",
        '{"type": "no_such_type"}\n': r":1: cannot be played back: unknown event type",
        "\n\n": "holds no events",
    }
    for text, pattern in cases.items():
        path = tmp_path / "bad.jsonl"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ToolError, match=pattern):
            play(str(path), port=0, err=io.StringIO())
    path.write_text('{"type": "stt_start", "mode": "x"}\n{"type": "stt_start", "mode": \n', encoding="utf-8")
    assert main(["play", str(path), "--port", "0"]) == 1
    assert f"{path}:2: malformed JSON" in capsys.readouterr().err
    assert main(["play", str(missing), "--port", "0"]) == 1
    assert "no such file" in capsys.readouterr().err


def test_record_stops_after_a_duration_and_never_truncates_on_failure(server, tmp_path):
    """--duration ends a recording; a recording that cannot connect leaves an existing file alone (exit 1)."""
    path = tmp_path / "timed.jsonl"
    started = time.monotonic()
    assert record(server.url, str(path), duration=0.2, err=io.StringIO()) == 0
    assert 0.2 <= time.monotonic() - started < TIMEOUT and path.read_text() == ""
    path.write_text("precious\n")
    assert main(["record", "ws://127.0.0.1:9/", str(path)]) == 1
    assert path.read_text() == "precious\n"
    with pytest.raises(ToolError, match="cannot write"):
        record(server.url, str(tmp_path / "no-such-dir" / "x.jsonl"), count=1)


def test_cli_record_subcommand(server, tmp_path, capsys):
    """``coda-ws record URL FILE --count N --types ...`` records the filtered stream and reports the count."""
    path = tmp_path / "cli.jsonl"
    with in_thread(main, ["record", server.url, str(path), "--count", "2", "--types", "llm_*"]) as outcome:
        assert server.wait_for_clients(1, TIMEOUT)
        emit_sample(server)
    assert result_of(outcome) == 0
    assert [json.loads(line)["type"] for line in path.read_text().splitlines()] == ["llm_start", "llm_token"]
    assert "recorded 2 events" in capsys.readouterr().err


def test_subcommands_are_registered():
    """add_tool_commands registers tail, record and play with a func returning an exit code."""
    parser = build_parser()
    args = parser.parse_args(
        ["tail", "ws://x/", "--types", "llm_*,stt_*", "--session", "s", "--since", "5", "--json"]
    )
    assert callable(args.func) and args.json and args.since == 5 and args.session == "s"
    args = parser.parse_args(["record", "ws://x/", "out.jsonl", "--count", "3", "--duration", "1.5"])
    assert (args.file, args.count, args.duration) == ("out.jsonl", 3, 1.5)
    args = parser.parse_args(["play", "in.jsonl", "--speed", "2", "--port", "0", "--loop"])
    assert (args.speed, args.port, args.loop) == (2.0, 0, True)
    with pytest.raises(SystemExit):
        parser.parse_args(["play", "in.jsonl", "--speed", "0"])
