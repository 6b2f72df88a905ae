"""coda_ws.turns: the per-turn latency breakdown derived from event timestamps."""

import json

import pytest

from coda_ws.turns import COMPONENTS, MARKS, ROLLING_WINDOW, percentile, turn_breakdown

T0 = 1_700_000_000.0


def approx(expected):
    """Milliseconds from epoch-second timestamps near T0 are exact to about 0.0003 ms."""
    return pytest.approx(expected, abs=0.01)


class Stream:
    """Builds event dicts in wire form with increasing seq and given timestamps."""

    def __init__(self):
        self.events = []

    def add(self, kind, at, session_id="s1", **fields):
        event = {
            "version": "1.0",
            "seq": len(self.events) + 1,
            "timestamp": T0 + at,
            "type": kind,
            "session_id": session_id,
            **fields,
        }
        self.events.append(event)
        return event

    def voice_turn(self, start, session_id="s1", v2v=1.0, with_progress=True):
        """A full spoken turn starting at ``start`` seconds; first audio at ``start + v2v``."""
        self.add("stt_start", start - 2.0, session_id, mode="push_to_talk")
        self.add("stt_interim", start - 1.0, session_id, text="hel", confidence=0.5)
        self.add("stt_result", start, session_id, text="hello", confidence=0.9, duration_ms=300.0)
        self.add("llm_start", start + 0.1, session_id, prompt="hello", model="m", temperature=0.7)
        self.add("llm_token", start + 0.3, session_id, token="Hi", cumulative_text="Hi")
        self.add("llm_token", start + 0.4, session_id, token="!", cumulative_text="Hi!")
        self.add(
            "llm_result",
            start + 0.5,
            session_id,
            text="Hi!",
            duration_ms=400.0,
            token_count=2,
            tokens_per_second=5.0,
        )
        self.add("tts_start", start + 0.6, session_id, text="Hi!", voice_id="v", engine="e")
        if with_progress:
            self.add("tts_progress", start + v2v, session_id, progress_percent=25.0)
            self.add("tts_progress", start + v2v + 0.1, session_id, progress_percent=100.0)
        self.add(
            "tts_result",
            start + v2v + 0.2,
            session_id,
            duration_ms=500.0,
            audio_duration_ms=900.0,
            success=True,
        )
        self.add(
            "conversation_turn",
            start + v2v + 0.3,
            session_id,
            conversation_id="c",
            turn_number=1,
            user_input="hello",
            assistant_response="Hi!",
        )


def test_percentile_interpolates_linearly():
    """percentile() interpolates between closest ranks (NumPy's default) and is None when empty."""
    assert percentile([], 50) is None
    assert percentile([7.0], 95) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([4.0, 1.0, 3.0, 2.0], 100) == 4.0
    assert percentile([10.0, 20.0], 95) == approx(19.5)


def test_full_voice_turn_breakdown():
    """Every stage of a spoken turn is measured from the right pair of events."""
    stream = Stream()
    stream.voice_turn(10.0)
    result = turn_breakdown(stream.events, 20)
    assert result["count"] == 1
    (turn,) = result["turns"]
    assert turn["session_id"] == "s1"
    assert turn["status"] == "complete"
    assert turn["start_seq"] == 3  # the stt_result
    assert turn["end_seq"] == 11  # the tts_result
    assert turn["started_at"] == T0 + 10.0
    assert turn["ended_at"] == T0 + 11.2
    assert turn["stt_ms"] == 300.0
    assert turn["llm_ttft_ms"] == approx(200.0)
    assert turn["llm_total_ms"] == approx(400.0)
    assert turn["tts_ttfa_ms"] == approx(400.0)
    assert turn["tts_total_ms"] == approx(600.0)
    assert turn["voice_to_voice_ms"] == approx(1000.0)
    assert list(turn["marks"]) == list(MARKS)
    assert turn["marks"]["stt_result"] == 0.0
    assert turn["marks"]["llm_first_token"] == approx(300.0)
    assert turn["marks"]["tts_first_audio"] == approx(1000.0)
    assert turn["tool_calls"] == 0 and turn["tool_ms"] is None and turn["errors"] == 0
    assert result["p50"] == approx(1000.0)
    assert result["p95"] == approx(1000.0)
    assert set(result["components"]) == set(COMPONENTS)
    assert result["components"]["llm_ttft_ms"]["count"] == 1


def test_turns_newest_first_with_limit_and_percentiles_over_returned_turns():
    """limit keeps the newest turns; p50/p95 cover only the returned ones."""
    stream = Stream()
    for i, v2v in enumerate([1.0, 2.0, 3.0, 4.0]):
        stream.voice_turn(10.0 * (i + 1), v2v=v2v)
    result = turn_breakdown(stream.events, 3)
    assert [t["voice_to_voice_ms"] for t in result["turns"]] == approx([4000.0, 3000.0, 2000.0])
    assert result["count"] == 3
    assert result["p50"] == approx(3000.0)
    assert result["p95"] == approx(3900.0)
    assert result["window"] == ROLLING_WINDOW


def test_rolling_percentiles_use_the_preceding_window():
    """Each turn's rolling p50/p95 covers the last ROLLING_WINDOW turns up to it, whatever the limit."""
    stream = Stream()
    values = [float(i + 1) for i in range(ROLLING_WINDOW + 5)]
    for i, v2v in enumerate(values):
        stream.voice_turn(100.0 * (i + 1), v2v=v2v)
    newest = turn_breakdown(stream.events, 1)["turns"][0]
    window = [v * 1000 for v in values[-ROLLING_WINDOW:]]
    assert newest["rolling_p50_ms"] == approx(percentile(window, 50))
    assert newest["rolling_p95_ms"] == approx(percentile(window, 95))
    oldest = turn_breakdown(stream.events, len(values))["turns"][-1]
    assert oldest["rolling_p50_ms"] == approx(1000.0)


def test_turn_without_stt_starts_at_llm_start_and_ends_at_conversation_turn():
    """A typed turn (no stt_result) starts at llm_start; conversation_turn ends it."""
    stream = Stream()
    stream.add("llm_start", 1.0, prompt="hi", model="m", temperature=0.7)
    stream.add("llm_token", 1.25, token="a", cumulative_text="a")
    stream.add("llm_result", 1.5, text="a", duration_ms=500.0, token_count=1, tokens_per_second=2.0)
    stream.add(
        "conversation_turn", 1.6, conversation_id="c", turn_number=1, user_input="hi", assistant_response="a"
    )
    (turn,) = turn_breakdown(stream.events, 5)["turns"]
    assert turn["status"] == "complete"
    assert turn["started_at"] == T0 + 1.0
    assert turn["stt_ms"] is None and turn["marks"]["stt_result"] is None
    assert turn["llm_ttft_ms"] == approx(250.0)
    assert turn["voice_to_voice_ms"] is None
    assert turn_breakdown(stream.events, 5)["p50"] is None


def test_sessions_are_tracked_separately():
    """Interleaved sessions each get their own turns."""
    stream = Stream()
    stream.add("stt_result", 1.0, "a", text="x", confidence=1.0, duration_ms=100.0)
    stream.add("stt_result", 1.1, "b", text="y", confidence=1.0, duration_ms=200.0)
    stream.add("llm_start", 1.2, "a", prompt="x", model="m", temperature=0.0)
    stream.add("llm_start", 1.5, "b", prompt="y", model="m", temperature=0.0)
    stream.add("tts_start", 1.6, "b", text="y", voice_id="v", engine="e")
    stream.add("tts_result", 2.1, "b", duration_ms=1.0, audio_duration_ms=1.0, success=True)
    result = turn_breakdown(stream.events, 10)
    by_session = {t["session_id"]: t for t in result["turns"]}
    assert [t["session_id"] for t in result["turns"]] == ["b", "a"]
    assert by_session["a"]["status"] == "in_progress"
    assert by_session["b"]["status"] == "complete"
    assert by_session["b"]["marks"]["llm_start"] == approx(400.0)
    # No tts_progress: first audio falls back to tts_result.
    assert by_session["b"]["voice_to_voice_ms"] == approx(1000.0)
    assert by_session["b"]["tts_ttfa_ms"] is None


def test_new_stt_result_abandons_open_turn_and_stray_events_are_ignored():
    """A second stt_result abandons the open turn; events outside any turn change nothing."""
    stream = Stream()
    stream.add("tts_progress", 0.5, progress_percent=10.0)  # no open turn: ignored
    stream.add("llm_token", 0.6, token="x", cumulative_text="x")  # ignored too
    stream.add("stt_result", 1.0, text="one", confidence=1.0, duration_ms=1.0)
    stream.add("stt_result", 2.0, text="two", confidence=1.0, duration_ms=2.0)
    stream.add("tts_result", 3.0, duration_ms=1.0, audio_duration_ms=1.0, success=True)
    turns = turn_breakdown(stream.events, 10)["turns"]
    assert [t["status"] for t in turns] == ["complete", "abandoned"]
    assert turns[0]["stt_ms"] == 2.0
    assert turns[1]["ended_at"] is None


def test_tool_calls_errors_and_multiple_llm_rounds():
    """Tool time is summed; with two LLM rounds llm_total runs to the last result before TTS."""
    stream = Stream()
    stream.add("stt_result", 1.0, text="q", confidence=1.0, duration_ms=1.0)
    stream.add("llm_start", 1.1, prompt="q", model="m", temperature=0.0)
    stream.add("llm_token", 1.2, token="t", cumulative_text="t")
    stream.add("llm_result", 1.3, text="t", duration_ms=1.0, token_count=1, tokens_per_second=1.0)
    stream.add("tool_call", 1.35, tool_name="w", parameters={}, call_id="1")
    stream.add("tool_result", 1.5, tool_name="w", call_id="1", result=1, duration_ms=120.0)
    stream.add("tool_error", 1.55, tool_name="w", call_id="2", error="boom")
    stream.add("llm_start", 1.6, prompt="q2", model="m", temperature=0.0)
    stream.add("llm_result", 1.9, text="a", duration_ms=1.0, token_count=1, tokens_per_second=1.0)
    stream.add("tts_start", 2.0, text="a", voice_id="v", engine="e")
    stream.add("llm_result", 2.05, text="late", duration_ms=1.0, token_count=1, tokens_per_second=1.0)
    stream.add("tts_progress", 2.2, progress_percent=50.0)
    stream.add("tts_result", 2.4, duration_ms=1.0, audio_duration_ms=1.0, success=True)
    (turn,) = turn_breakdown(stream.events, 1)["turns"]
    assert turn["tool_calls"] == 1
    assert turn["tool_ms"] == 120.0
    assert turn["errors"] == 1
    assert turn["llm_ttft_ms"] == approx(100.0)
    assert turn["llm_total_ms"] == approx(800.0)
    assert turn["voice_to_voice_ms"] == approx(1200.0)


def test_malformed_events_are_skipped():
    """Dicts without a type or a numeric timestamp, and non-dicts, are skipped."""
    events = [
        None,
        {"type": "stt_result"},
        {"timestamp": 1.0},
        {"type": "stt_result", "timestamp": "x"},
        {"type": "llm_start", "timestamp": True},
    ]
    assert turn_breakdown(events, 5)["turns"] == []


def test_result_is_json_ready():
    """The result encodes as strict JSON (no NaN) and has the documented keys."""
    stream = Stream()
    stream.voice_turn(5.0)
    stream.add("stt_result", 20.0, text="open", confidence=1.0, duration_ms=1.0)
    result = turn_breakdown(stream.events, 5)
    json.dumps(result, allow_nan=False)
    assert set(result) == {"turns", "count", "window", "p50", "p95", "p99", "components"}
    assert set(result["turns"][0]) == {
        "session_id",
        "start_seq",
        "end_seq",
        "started_at",
        "ended_at",
        "status",
        "stt_ms",
        "llm_ttft_ms",
        "llm_total_ms",
        "tts_ttfa_ms",
        "tts_total_ms",
        "voice_to_voice_ms",
        "tool_calls",
        "tool_ms",
        "errors",
        "marks",
        "rolling_p50_ms",
        "rolling_p95_ms",
    }


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, "3"])
def test_bad_limit_raises(limit):
    """limit must be a positive integer."""
    with pytest.raises(ValueError, match="limit"):
        turn_breakdown([], limit)
