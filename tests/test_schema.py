"""GET /schema: a draft 2020-12 JSON Schema generated from the event dataclasses that accepts
every event the demo sends (plain and redacted) and rejects corrupted ones."""

import copy

import jsonschema
import pytest

from coda_ws import CodaWebSocketIntegration, CodaWebSocketServer, WebSocketPerfIntegration
from coda_ws.demo import run_demo, run_demo_loop
from coda_ws.events import EVENT_CLASSES, EVENT_VERSION, PROTOCOL_VERSION, EventType, registered_event_types

from ._http import get, get_json
from .conftest import TIMEOUT, connect, recv_json
from .unit.test_events import SAMPLE_FIELDS


@pytest.fixture(scope="module")
def validator():
    """A validator for the schema a server serves (fetched once for the module)."""
    server = CodaWebSocketServer(host="127.0.0.1", port=0)
    with server.run_context():
        schema = get_json(server, "schema")
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_schema_document_shape(server):
    """protocol, schema_version, one definition per event type under $defs, and a root oneOf over them."""
    answer = get(server, "schema")
    assert answer.status == 200 and answer.headers["Content-Type"] == "application/json"
    schema = answer.json()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["protocol"] == PROTOCOL_VERSION and schema["schema_version"] == EVENT_VERSION
    # The built-in types first, then any a test module registered (test_custom_events.py).
    names = list(registered_event_types())
    assert names[: len(EventType)] == [t.value for t in EventType]
    assert sorted(schema["$defs"]) == sorted(names)
    assert sorted(ref["$ref"] for ref in schema["oneOf"]) == sorted(f"#/$defs/{name}" for name in names)
    for event_type, cls in EVENT_CLASSES.items():
        definition = schema["$defs"][event_type.value]
        assert definition["required"] == list(cls._wire_keys)  # generated from the dataclass
        assert definition["properties"]["type"] == {"const": event_type.value}
        assert definition["x-content-fields"] == list(cls.content_fields)


def test_every_demo_event_validates(server, validator):
    """Every event the demo sends (to a WebSocket client, and as GET /events stores it) validates."""
    with connect(server.url + "?v=1&replay=0") as client:
        recv_json(client)  # hello
        integration = CodaWebSocketIntegration(server)
        perf = WebSocketPerfIntegration(server, metrics_interval=60.0)
        assert run_demo(integration, perf, pace=0, connect_wait=0)
        assert (
            run_demo_loop(
                integration, WebSocketPerfIntegration(server, metrics_interval=60.0), pace=0, iterations=5
            )
            == 5
        )
        last = server.sequence_number
        events = []
        while not events or events[-1]["seq"] < last:
            events.append(recv_json(client, TIMEOUT))
    # A client that falls behind gets superseded state conflated, so GET /events checks all of them.
    stored = get_json(server, "events?limit=1000")
    assert [event["seq"] for event in stored] == list(range(1, last + 1))
    for event in events + stored:
        errors = [error.message for error in validator.iter_errors(event)]
        assert not errors, (event, errors)
    assert len({event["type"] for event in stored}) >= 20  # the demo covers most types


def test_every_type_validates_plain_and_redacted(server_factory):
    """One event of every type, plain (read:content) and redacted (read), from GET /events validates."""
    server = server_factory(auth={"reader": ["read"], "full": ["read:content"]})
    for type_name, fields in SAMPLE_FIELDS.items():
        server.emit(type_name, session_id="s1", **copy.deepcopy(fields))
    server.bus.flush(TIMEOUT)
    validator = jsonschema.Draft202012Validator(get_json(server, "schema"))
    for token in ("reader", "full"):
        events = get_json(server, "events?limit=1000", token=token)
        assert len(events) == len(SAMPLE_FIELDS)
        for event in events:
            errors = [error.message for error in validator.iter_errors(event)]
            assert not errors, (token, event, errors)
    redacted = get_json(server, "events?types=conversation_turn", token="reader")[0]
    assert redacted["redacted"] is True and redacted["user_input"] is None


GOOD = {
    "version": "1.0",
    "seq": 7,
    "timestamp": 1764288000.5,
    "type": "stt_result",
    "session_id": "s1",
    "text": "hello",
    "confidence": 0.9,
    "duration_ms": 150.0,
    "language": None,
}


@pytest.mark.parametrize(
    "change",
    [
        {"confidence": "high"},  # wrong kind
        {"duration_ms": None},  # null for a required number
        {"text": None},  # content removed without saying so
        {"text": 5},
        {"language": 3},
        {"type": "no_such_type"},
        {"version": "2.0"},
        {"seq": 0},
        {"seq": "7"},
        {"session_id": 5},
        {"colour": "red"},  # unknown key
        {"redacted": False},
    ],
    ids=lambda change: ",".join(f"{key}={value!r}" for key, value in change.items()),
)
def test_corrupted_events_are_rejected(validator, change):
    """A good event validates; the same event with one corruption does not."""
    assert validator.is_valid(GOOD)
    assert not validator.is_valid({**GOOD, **change})


@pytest.mark.parametrize("missing", ["text", "seq", "session_id", "language", "version"])
def test_events_missing_a_key_are_rejected(validator, missing):
    """Every wire key is required, the envelope's and optional fields' too (the wire always carries them)."""
    event = dict(GOOD)
    del event[missing]
    assert not validator.is_valid(event)


def test_nested_kinds_are_checked(validator):
    """List items and dict values are typed (relevance scores are numbers, timings are numbers)."""
    good = {
        "version": "1.0",
        "seq": 1,
        "timestamp": 1.0,
        "type": "memory_retrieve",
        "session_id": None,
        "query": "tea",
        "results_count": 1,
        "relevance_scores": [0.5],
    }
    assert validator.is_valid(good)
    assert not validator.is_valid({**good, "relevance_scores": ["high"]})
    timing = {
        "version": "1.0",
        "seq": 1,
        "timestamp": 1.0,
        "type": "component_timing",
        "session_id": None,
        "component": "tts",
        "timings": {"synth": 10.0},
    }
    assert validator.is_valid(timing)
    assert not validator.is_valid({**timing, "timings": {"synth": "slow"}})
