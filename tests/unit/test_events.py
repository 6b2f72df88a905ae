"""Events: types, dataclasses, validation and coercion (no network)."""

import dataclasses
import json
import math

import pytest

import coda_ws
from coda_ws import events
from coda_ws.events import EVENT_CLASSES, EventType, create_event, validate_event

# One valid set of fields for every event type (ints given for float fields on
# purpose, to check coercion).
SAMPLE_FIELDS = {
    "system_info": {"data": {"event": "startup", "version": "2.0"}},
    "system_error": {"level": "error", "message": "disk full", "details": {"free": 0}},
    "system_metrics": {"memory_mb": 512, "cpu_percent": 12.5, "gpu_vram_mb": None, "uptime_seconds": 3},
    "stt_start": {"mode": "push_to_talk"},
    "stt_interim": {"text": "hel", "confidence": 0.5},
    "stt_result": {"text": "hello", "confidence": 1, "duration_ms": 1500, "language": "en"},
    "stt_error": {"error": "mic unplugged"},
    "llm_start": {"prompt": "hi", "model": "llama3", "temperature": 0.7},
    "llm_token": {"token": "Hi", "cumulative_text": "Hi"},
    "llm_result": {"text": "Hi there", "duration_ms": 800, "token_count": 15, "tokens_per_second": 18.75},
    "llm_error": {"error": "timeout", "details": None},
    "tts_start": {"text": "Hi there", "voice_id": "default", "engine": "elevenlabs"},
    "tts_progress": {"progress_percent": 50, "estimated_duration_ms": 1200},
    "tts_result": {"duration_ms": 600, "audio_duration_ms": 1200, "success": True},
    "tts_error": {"error": "engine down"},
    "tts_status": {"status": "speaking"},
    "memory_store": {
        "content_preview": "likes tea",
        "memory_type": "fact",
        "importance": 1,
        "memory_id": "m1",
    },
    "memory_retrieve": {"query": "tea", "results_count": 2, "relevance_scores": [1, 0.5]},
    "tool_call": {"tool_name": "weather", "parameters": {"city": "Oslo"}, "call_id": "c1"},
    "tool_result": {"tool_name": "weather", "call_id": "c1", "result": {"temp": -3}, "duration_ms": 40},
    "tool_error": {"tool_name": "weather", "call_id": "c1", "error": "no network"},
    "conversation_start": {"conversation_id": "conv1"},
    "conversation_turn": {
        "conversation_id": "conv1",
        "turn_number": 1,
        "user_input": "hi",
        "assistant_response": "hello",
    },
    "conversation_end": {"conversation_id": "conv1", "total_turns": 3, "duration_seconds": 42},
    "latency_trace": {"component": "llm", "operation": "generate", "duration_ms": 12, "metadata": {"k": 1}},
    "component_timing": {"component": "tts", "timings": {"synth": 10, "io": 2.5}},
    "component_status": {
        "component_type": "stt",
        "state": "ready",
        "initialization_order": 1,
        "dependencies": ["mic"],
    },
    "component_error": {"component_type": "tts", "error_message": "boom", "error_count": 2},
    "component_health": {"component_type": "llm", "health_status": {"ok": True}},
    "system_status": {
        "total_components": 5,
        "ready_components": 4,
        "failed_components": 1,
        "integration_health": "degraded",
        "components": {"stt": "ready"},
    },
    "integration_metrics": {
        "is_active": True,
        "websocket_server_available": True,
        "event_handlers_registered": False,
        "total_events_processed": 10,
    },
    # The voice moments coda_ws adds to the original's 31 types.
    "vad_start": {"confidence": 1},
    "vad_end": {"duration_ms": 820, "confidence": 0.9},
    "wake_word": {"word": "hey coda", "confidence": 0.97},
    "barge_in": {"interrupted": "tts", "played_ms": 1200},
}

#: The original Coda interface's types, whose wire format is unchanged.
ORIGINAL_TYPES = list(SAMPLE_FIELDS)[:31]

HIGH_PRIORITY = {
    "system_info",
    "system_error",
    "stt_result",
    "stt_error",
    "llm_result",
    "llm_error",
    "tts_result",
    "tts_error",
    "memory_store",
    "tool_result",
    "tool_error",
    "conversation_start",
    "conversation_turn",
    "conversation_end",
    "component_status",
    "component_error",
    "system_status",
    "wake_word",
    "barge_in",
}


def test_every_reference_type_exists_with_a_class():
    """EventType lists the original's 31 types, in their order, then the 4
    voice moments, and each has a registered dataclass."""
    assert [t.value for t in EventType] == list(SAMPLE_FIELDS)
    assert len(ORIGINAL_TYPES) == 31 and ORIGINAL_TYPES[-1] == "integration_metrics"
    assert set(EVENT_CLASSES) == set(EventType)


def test_event_type_is_a_str_enum():
    """EventType members compare equal to their string values."""
    assert EventType.STT_RESULT == "stt_result"
    assert isinstance(EventType.STT_RESULT, str)
    assert str(EventType.LLM_TOKEN) == "llm_token"


@pytest.mark.parametrize("type_name", sorted(SAMPLE_FIELDS))
def test_wire_key_order_and_kinds(type_name):
    """to_dict/to_json: envelope first, then the fields in declaration order; floats stay floats."""
    event = create_event(type_name, 7, session_id="s1", **SAMPLE_FIELDS[type_name])
    wire = json.loads(event.to_json())
    keys = list(wire)
    assert keys[:5] == ["version", "seq", "timestamp", "type", "session_id"]
    declared = [f.name for f in dataclasses.fields(type(event))][5:]
    assert keys[5:] == declared
    assert wire["version"] == "1.0" and wire["seq"] == 7 and wire["type"] == type_name
    assert isinstance(wire["timestamp"], float)
    hints = {f.name: f.type for f in dataclasses.fields(type(event))}
    for name in declared:
        if hints[name] is float:
            assert isinstance(wire[name], float), name
            assert f'"{name}":{float(wire[name])!r}' in event.to_json()  # 50 is sent as 50.0
        if hints[name] is int:
            assert type(wire[name]) is int, name


def test_frozen_dataclasses_from_dataclasses_json():
    """Events are frozen and round-trip through dataclasses-json's from_dict."""
    event = create_event("stt_result", 3, text="hi", confidence=0.5, duration_ms=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.text = "changed"
    assert events.STTResultEvent.from_dict(event.to_dict()) == event


def test_enum_and_string_types_are_equivalent():
    """create_event accepts the enum or its value."""
    a = create_event(EventType.TTS_STATUS, status="idle")
    b = create_event("tts_status", status="idle")
    assert type(a) is type(b) is events.TTSStatusEvent


def test_int_for_float_is_coerced():
    """50 given for a float field is stored and sent as 50.0."""
    event = create_event("tts_progress", progress_percent=50)
    assert event.progress_percent == 50.0 and isinstance(event.progress_percent, float)
    assert '"progress_percent":50.0' in event.to_json()


def test_list_and_dict_members_are_coerced():
    """Lists of floats and dicts of floats coerce their members too."""
    event = create_event("memory_retrieve", query="q", results_count=1, relevance_scores=[1, 2])
    assert event.relevance_scores == [1.0, 2.0] and all(isinstance(v, float) for v in event.relevance_scores)
    timing = create_event("component_timing", component="c", timings={"a": 1})
    assert isinstance(timing.timings["a"], float)


@pytest.mark.parametrize(
    "type_name, fields, field_name",
    [
        ("stt_result", {"text": 5, "confidence": 1.0, "duration_ms": 1.0}, "text"),
        (
            "llm_result",
            {"text": "x", "duration_ms": 1.0, "token_count": 1.5, "tokens_per_second": 1.0},
            "token_count",
        ),
        (
            "llm_result",
            {"text": "x", "duration_ms": 1.0, "token_count": True, "tokens_per_second": 1.0},
            "token_count",
        ),
        ("tts_result", {"duration_ms": 1.0, "audio_duration_ms": 1.0, "success": 1}, "success"),
        ("tts_progress", {"progress_percent": "50"}, "progress_percent"),
        ("tts_progress", {"progress_percent": True}, "progress_percent"),
        ("tool_call", {"tool_name": "t", "parameters": [1], "call_id": "c"}, "parameters"),
        (
            "memory_retrieve",
            {"query": "q", "results_count": 1, "relevance_scores": ["a"]},
            "relevance_scores",
        ),
        ("component_status", {"component_type": "c", "state": "s", "dependencies": [1]}, "dependencies"),
    ],
)
def test_wrong_kind_raises_type_error_naming_field(type_name, fields, field_name):
    """A value of the wrong kind raises TypeError (and ValueError) naming type and field."""
    with pytest.raises(TypeError) as info:
        create_event(type_name, **fields)
    assert isinstance(info.value, ValueError)
    assert f"{type_name}.{field_name}" in str(info.value)
    assert info.value.field == field_name


def test_missing_field_raises_naming_it():
    """A missing required field is named in the error."""
    with pytest.raises(TypeError, match=r"stt_result is missing required field 'duration_ms'"):
        create_event("stt_result", text="x", confidence=1.0)


def test_unknown_field_raises_naming_it():
    """An unknown keyword raises TypeError naming the field and listing the real ones."""
    with pytest.raises(TypeError, match=r"llm_token got unknown field 'tokn'.*token, cumulative_text"):
        create_event("llm_token", tokn="a", cumulative_text="a")


def test_system_info_extra_keys_go_into_data():
    """system_info keeps the original's behaviour: unknown keywords land in data."""
    event = create_event("system_info", data={"a": 1}, b=2)
    assert event.data == {"a": 1, "b": 2}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused(bad):
    """NaN and infinities never reach the wire."""
    with pytest.raises(ValueError, match="system_metrics.cpu_percent"):
        create_event("system_metrics", memory_mb=1.0, cpu_percent=bad, uptime_seconds=1.0)


def test_nan_inside_a_dict_is_refused_naming_the_field():
    """A NaN nested in a free-form dict is caught at encoding, naming the field."""
    with pytest.raises(ValueError, match="latency_trace.metadata"):
        create_event("latency_trace", component="c", operation="o", duration_ms=1.0, metadata={"x": math.nan})


def test_unencodable_value_is_refused_naming_the_field():
    """Objects that are not JSON raise, naming the field."""
    with pytest.raises(TypeError, match="tool_result.result cannot be encoded"):
        create_event("tool_result", tool_name="t", call_id="c", result=object(), duration_ms=1.0)


def test_unknown_type_raises_value_error():
    """An unknown event type raises ValueError listing the known ones."""
    with pytest.raises(ValueError, match="unknown event type 'nope'.*stt_result"):
        create_event("nope")


def test_bad_session_id_raises():
    """session_id must be a string or None."""
    with pytest.raises(TypeError, match="session_id"):
        create_event("tts_status", session_id=5, status="x")


def test_validate_event_accepts_wire_dicts():
    """validate_event turns a wire dict into the event object, coercing."""
    wire = create_event("stt_result", 9, session_id="s", text="a", confidence=1, duration_ms=2).to_dict()
    event = validate_event(wire)
    assert event.seq == 9 and event.session_id == "s" and event.confidence == 1.0


@pytest.mark.parametrize(
    "data, message",
    [
        ({}, "missing required field 'type'"),
        ([], "must be a JSON object"),
        ({"type": "zzz"}, "unknown event type"),
        ({"type": "stt_start"}, "missing required field 'mode'"),
        ({"type": "stt_start", "mode": 1}, "stt_start.mode must be a string"),
        ({"type": "stt_start", "mode": "m", "version": "2.0"}, "version"),
    ],
)
def test_validate_event_errors_are_value_errors(data, message):
    """validate_event raises ValueError with a message naming the problem."""
    with pytest.raises(ValueError, match=message):
        validate_event(data)


def test_default_priorities_match_the_reference():
    """The HP column of the reference decides what the replay buffer keeps by default."""
    for event_type, cls in EVENT_CLASSES.items():
        assert cls.high_priority == (event_type.value in HIGH_PRIORITY), event_type


def test_content_fields_match_the_reference():
    """Content fields (redacted for read-only readers) are exactly the reference's list."""
    content = {(t.value, f) for t, cls in EVENT_CLASSES.items() for f in cls.content_fields}
    assert content == {
        ("stt_interim", "text"),
        ("stt_result", "text"),
        ("llm_start", "prompt"),
        ("llm_token", "token"),
        ("llm_token", "cumulative_text"),
        ("llm_result", "text"),
        ("tts_start", "text"),
        ("memory_store", "content_preview"),
        ("memory_retrieve", "query"),
        ("tool_call", "parameters"),
        ("tool_result", "result"),
        ("conversation_turn", "user_input"),
        ("conversation_turn", "assistant_response"),
    }


def test_public_exports():
    """coda_ws exports what __all__ names, including every event class."""
    for name in coda_ws.__all__:
        assert hasattr(coda_ws, name), name
    for cls in EVENT_CLASSES.values():
        assert getattr(coda_ws, cls.__name__) is cls


def test_an_unknown_type_name_of_any_length_gets_a_short_error():
    """A name longer than any type may be is shown cut short, with no suggestion
    (difflib over a megabyte took hundreds of milliseconds, echoed back whole)."""
    with pytest.raises(ValueError) as caught:  # InvalidEventError is a ValueError
        create_event("x" * 1_000_000)
    assert len(str(caught.value)) < 2_000 and "did you mean" not in str(caught.value)
    assert caught.value.event_type is None
