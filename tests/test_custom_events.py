"""Event types of your own (register_event, @custom_event) end to end, over real
sockets: emit, a filtered v1 client, redaction for a read-only reader, /schema,
POST /events, the journal across a restart (registered again, or not), the
Redis backplane (a node that lacks the type refuses it, loudly), record/play,
the Python client; and the rules of registration (names, shadowing,
annotations, defaults, values). The built-in voice moments (vad_start,
vad_end, wake_word, barge_in) through the integration helpers."""

import asyncio
import contextlib
import io
import json
import logging
import math
import threading
from dataclasses import field
from typing import Any

import jsonschema
import pytest

import coda_ws
from coda_ws import (
    BaseEvent,
    CodaEventClient,
    CodaWebSocketIntegration,
    EventFilter,
    InvalidEventError,
    custom_event,
    register_event,
    registered_event_types,
)
from coda_ws.aio import CodaWebSocketIntegration as AsyncIntegration
from coda_ws.backplane import RedisEmitter
from coda_ws.tools import play, record

from ._http import get_json, post_json
from ._proc import CHILD_TIMEOUT, Child
from ._redis import REDIS_URL, unique_prefix
from .conftest import TIMEOUT, connect, recv_json, wait_for
from .custom_types import GuardrailEvent, RagLookupEvent

READER = "reader-token-0123456789"
CONTENT_READER = "content-token-0123456789"
PUBLISHER = "publisher-token-0123456789"
TOKENS = {READER: ["read"], CONTENT_READER: ["read:content"], PUBLISHER: ["publish"]}
SECRET = "where did I hide the spare key"


def bearer(token):
    return {"additional_headers": {"Authorization": f"Bearer {token}"}}


@contextlib.contextmanager
def open_v1(url, query="", **kwargs):
    """A v1 client; yields (ws, hello)."""
    with connect(f"{url}?v=1{'&' + query if query else ''}", **kwargs) as ws:
        hello = recv_json(ws)
        assert hello["type"] == "hello"
        yield ws, hello


def events_of(ws, count):
    """The next ``count`` event frames (control frames skipped)."""
    events = []
    while len(events) < count:
        frame = recv_json(ws)
        if "seq" in frame and "version" in frame:
            events.append(frame)
    return events


def emit_lookup(server, query=SECRET, session_id="s1", **overrides):
    fields = {"query": query, "hits": 3, "top_score": 1, "sources": ["a.md", "b.md"], **overrides}
    return server.emit("test_rag_lookup", session_id=session_id, **fields)


# -- emit, filters, the wire --------------------------------------------------------------


def test_custom_event_reaches_a_v1_client_filtered_on_it(server):
    """A v1 client with types=test_rag_* gets the custom events only, in the
    wire form of the built-in types: envelope first, fields in declaration
    order, an int given for a float field sent as a float, defaults filled."""
    with open_v1(server.url, "types=test_rag_*&replay=0") as (ws, _):
        server.emit("stt_result", text="hi", confidence=0.9, duration_ms=5.0)
        emitted = emit_lookup(server)
        server.emit("test_guardrail", verdict="pass", score=0.1)
        server.emit("test_rag_lookup", query="q2", hits=0)
        first, second = events_of(ws, 2)
    assert isinstance(emitted, RagLookupEvent) and emitted.top_score == 1.0
    assert list(first) == [
        "version",
        "seq",
        "timestamp",
        "type",
        "session_id",
        "query",
        "hits",
        "top_score",
        "sources",
    ]
    assert first == {**emitted.to_dict(), "timestamp": first["timestamp"]}
    assert (
        first["type"] == "test_rag_lookup"
        and first["top_score"] == 1.0
        and isinstance(first["top_score"], float)
    )
    assert second["query"] == "q2" and second["top_score"] is None and second["sources"] == []
    assert second["seq"] == first["seq"] + 2  # the guardrail event between them was filtered out


def test_subscribe_frame_and_python_client_filter_on_a_custom_type(server):
    """A subscribe frame naming the type exactly, and the Python client's
    filter: the custom type arrives as its registered class."""
    with open_v1(server.url, "replay=0") as (ws, _):
        ws.send(json.dumps({"type": "subscribe", "types": ["test_guardrail"]}))
        assert recv_json(ws)["types"] == ["test_guardrail"]
        with CodaEventClient(
            server.url, types=["test_guardrail"], replay=False, connect_timeout=TIMEOUT
        ) as client:
            assert client.wait_connected(TIMEOUT)
            emit_lookup(server)
            server.emit("test_guardrail", verdict="block", score=0.97, reasons=["pii"])
            [frame] = events_of(ws, 1)
            event = client.get(timeout=TIMEOUT)
    assert frame["type"] == "test_guardrail" and frame["reasons"] == ["pii"]
    assert isinstance(event, GuardrailEvent) and event.verdict == "block" and event.reasons == ["pii"]
    assert event.to_dict() == frame


def test_high_priority_custom_type_is_replayed(server):
    """high_priority=True keeps the type's events in the replay frame of a new client."""
    server.emit("test_guardrail", verdict="pass", score=0.2)
    emit_lookup(server)  # not high priority
    with connect(server.url) as ws:
        replay = recv_json(ws)
    assert replay["type"] == "replay" and [e["type"] for e in replay["events"]] == ["test_guardrail"]


# -- redaction ------------------------------------------------------------------------------


def test_read_only_reader_gets_the_custom_content_fields_redacted(server_factory):
    """Live, resume and GET /events: the type's content fields are null with
    redacted: true for a read token; a read:content token sees them."""
    server = server_factory(auth=TOKENS)
    with open_v1(server.url, "replay=0", **bearer(READER)) as (reader, hello):
        with open_v1(server.url, "replay=0", **bearer(CONTENT_READER)) as (content_reader, _):
            emit_lookup(server)
            server.emit("test_guardrail", verdict="pass", score=0.5)
            redacted, guardrail = events_of(reader, 2)
            full, _ = events_of(content_reader, 2)
    assert redacted["query"] is None and redacted["redacted"] is True
    assert redacted["hits"] == 3 and redacted["sources"] == ["a.md", "b.md"]
    assert "redacted" not in guardrail  # no content fields: the frame as emitted
    assert full["query"] == SECRET and "redacted" not in full
    with open_v1(server.url, f"since=0&epoch={hello['epoch']}", **bearer(READER)) as (ws, _):
        assert recv_json(ws)["recovered"] is True
        resumed = events_of(ws, 2)
    stored = get_json(server, "events?since=0&types=test_*", token=READER)
    for event in (resumed[0], stored[0]):
        assert event["type"] == "test_rag_lookup" and event["query"] is None and event["redacted"] is True
    assert SECRET not in json.dumps([resumed, stored])


# -- /schema and POST /events ---------------------------------------------------------------------


def test_schema_lists_the_custom_types_and_validates_their_events(server_factory):
    """/schema has a definition per registered type (fields, defaults,
    priority, content), and events as sent, redacted ones too, validate."""
    server = server_factory(auth=TOKENS)
    schema = get_json(server, "schema")
    definition = schema["$defs"]["test_rag_lookup"]
    assert {"$ref": "#/$defs/test_rag_lookup"} in schema["oneOf"]
    assert definition["required"] == [
        "version",
        "seq",
        "timestamp",
        "type",
        "session_id",
        "query",
        "hits",
        "top_score",
        "sources",
    ]
    assert definition["properties"]["hits"] == {"type": "integer"}
    assert definition["properties"]["top_score"] == {"type": ["number", "null"], "default": None}
    assert definition["x-content-fields"] == ["query"] and definition["x-high-priority"] is False
    assert schema["$defs"]["test_guardrail"]["x-high-priority"] is True
    validator = jsonschema.Draft202012Validator(schema)
    with open_v1(server.url, "replay=0", **bearer(READER)) as (reader, _):
        with open_v1(server.url, "replay=0", **bearer(CONTENT_READER)) as (content_reader, _):
            emit_lookup(server)
            server.emit("test_guardrail", verdict="pass", score=1)
            sent = events_of(reader, 2) + events_of(content_reader, 2)
    for event in sent:
        validator.validate(event)
    wrong = {**sent[2], "hits": "three"}
    assert not validator.is_valid(wrong)


def test_a_type_registered_while_serving_appears_in_the_schema(server):
    """/schema follows the registry: a type registered after the server started is listed."""
    assert "test_late_type" not in get_json(server, "schema")["$defs"]
    register_event("test_late_type", {"n": int})
    assert get_json(server, "schema")["$defs"]["test_late_type"]["properties"]["n"] == {"type": "integer"}


def test_post_events_publishes_a_custom_type(server):
    """POST /events takes a custom type like a built-in one: 202 with its seq;
    400 naming the type and the field for a bad value or a missing field."""
    with open_v1(server.url, "types=test_rag_lookup&replay=0") as (ws, _):
        answer = post_json(server, {"type": "test_rag_lookup", "query": "q", "hits": 2, "session_id": "s9"})
        assert answer.status == 202, answer
        [event] = events_of(ws, 1)
    assert event["seq"] == answer.json()["seq"] and event["session_id"] == "s9" and event["hits"] == 2
    bad = post_json(server, {"type": "test_rag_lookup", "query": "q", "hits": "two"})
    assert bad.status == 400 and bad.json()["field"] == "hits"
    assert "test_rag_lookup.hits must be an integer" in bad.json()["message"]
    missing = post_json(server, {"type": "test_rag_lookup", "query": "q"})
    assert missing.status == 400 and "missing required field 'hits'" in missing.json()["message"]
    unknown = post_json(server, {"type": "test_rag_lookups", "query": "q"})
    assert unknown.status == 400 and "did you mean 'test_rag_lookup'" in unknown.json()["message"]


# -- the journal ----------------------------------------------------------------------------------


def test_journal_restart_replays_a_registered_custom_type(server_factory, tmp_path):
    """Journaled custom events come back after a restart (the type registered
    again, as every process must): resume, replay and GET /events with a
    filter on the type; the Python client decodes them to their class."""
    path = str(tmp_path / "events.db")
    server = server_factory(journal=path)
    emit_lookup(server)
    server.emit("test_guardrail", verdict="pass", score=0.5)
    emit_lookup(server, query="second")
    epoch = server.epoch
    server.stop()
    restarted = server_factory(journal=path, port=server.port)
    assert restarted.epoch == epoch and restarted.get_stats()["unknown_types_served"] == 0
    with connect(restarted.url) as ws:
        assert [e["type"] for e in recv_json(ws)["events"]] == ["test_guardrail"]
    stored = get_json(restarted, "events?since=0&types=test_rag_*")
    assert [e["query"] for e in stored] == [SECRET, "second"]
    assert [e.type for e in restarted.journal.read(0, EventFilter("test_rag_*"))] == ["test_rag_lookup"] * 2
    with CodaEventClient(restarted.url, since=0, replay=False, connect_timeout=TIMEOUT) as client:
        got = [client.get(timeout=TIMEOUT) for _ in range(3)]
    assert [type(e) for e in got] == [RagLookupEvent, GuardrailEvent, RagLookupEvent]

    async def read_async():
        from coda_ws.aio import AsyncCodaEventClient

        async with AsyncCodaEventClient(
            restarted.url, since=0, replay=False, connect_timeout=TIMEOUT
        ) as client:
            return [await client.get(TIMEOUT) for _ in range(3)]

    assert asyncio.run(read_async()) == got  # the asyncio client decodes to the classes too


_JOURNAL_CHILD = """
import sys
from coda_ws import CodaWebSocketServer, register_event
register_event("test_journal_only", {"note": str, "level": int}, content=("note",), high_priority=True)
server = CodaWebSocketServer(host="127.0.0.1", port=0, journal=sys.argv[1])
server.start()
server.emit("stt_start", mode="vad")
server.emit("test_journal_only", note="kept in the journal", level=2, session_id="s1")
server.emit("stt_start", mode="vad")
server.stop()
print("done", server.epoch, flush=True)
"""


def test_journal_restart_without_the_type_serves_it_as_stored(server_factory, tmp_path, caplog):
    """A journal holding a type this process never registered: the server
    starts, keeps the position, serves the event as it was stored (a dict
    for the Python client, every field null for a read-only reader), and
    counts and logs it. Nothing is dropped, nothing crashes."""
    assert "test_journal_only" not in registered_event_types()
    path = str(tmp_path / "events.db")
    with Child("-c", _JOURNAL_CHILD, path) as child:
        epoch = child.wait_for_output(r"^done (\w+)").group(1)
        assert child.wait() == 0, child.describe()
    caplog.set_level(logging.WARNING, logger="coda_ws.bus")
    server = server_factory(journal=path, auth=TOKENS)
    assert server.epoch == epoch and server.sequence_number == 3
    assert server.get_stats()["unknown_types_served"] == 1
    assert any(
        "'test_journal_only'" in r.getMessage() and "served as stored" in r.getMessage()
        for r in caplog.records
    )
    with open_v1(server.url, f"since=0&epoch={epoch}", **bearer(CONTENT_READER)) as (ws, _):
        assert recv_json(ws)["count"] == 3
        full = events_of(ws, 3)
    assert [e["type"] for e in full] == ["stt_start", "test_journal_only", "stt_start"]
    assert full[1]["note"] == "kept in the journal" and full[1]["level"] == 2 and "redacted" not in full[1]
    with open_v1(server.url, f"since=0&epoch={epoch}", **bearer(READER)) as (ws, _):
        recv_json(ws)
        redacted = events_of(ws, 3)[1]
    assert redacted["note"] is None and redacted["level"] is None and redacted["redacted"] is True
    assert redacted["session_id"] == "s1" and redacted["seq"] == 2
    with connect(server.url, **bearer(READER)) as ws:  # high priority: in the replay buffer, redacted too
        [replayed] = recv_json(ws)["events"]
    assert replayed["type"] == "test_journal_only" and replayed["note"] is None
    assert [
        e["seq"] for e in get_json(server, "events?since=0&types=test_journal_*", token=CONTENT_READER)
    ] == [2]
    assert [e.seq for e in server.journal.read(0, EventFilter("*_only"))] == [2]
    with CodaEventClient(
        server.url, since=0, replay=False, token=CONTENT_READER, connect_timeout=TIMEOUT
    ) as client:
        got = [client.get(timeout=TIMEOUT) for _ in range(3)]
    assert isinstance(got[0], coda_ws.STTStartEvent) and isinstance(got[2], coda_ws.STTStartEvent)
    assert got[1] == full[1]  # a dict: the client does not know the type either

    async def read_async():
        from coda_ws.aio import AsyncCodaEventClient

        async with AsyncCodaEventClient(
            server.url, since=0, replay=False, token=CONTENT_READER, connect_timeout=TIMEOUT
        ) as client:
            return [await client.get(TIMEOUT) for _ in range(3)]

    assert asyncio.run(read_async()) == got  # the asyncio client decodes alike


# -- the Redis backplane --------------------------------------------------------------------------


_BACKPLANE_CHILD = """
import sys
from coda_ws import register_event
from coda_ws.backplane import RedisEmitter
register_event("test_remote_only", {"value": int})
emitter = RedisEmitter(sys.argv[1], sys.argv[2])
emitter.emit("stt_start", mode="one")
emitter.emit("test_remote_only", value=7)
emitter.emit("stt_start", mode="two")
print("done", emitter.flush(20), flush=True)
emitter.close()
"""


def test_backplane_node_refuses_an_unknown_type_loudly(server_factory, caplog):
    """An emitter process that registered a type this node lacks: the node
    refuses the event (no reader receives it, the stream's order and seqs are
    kept), logs an error naming the type and counts it; a registered custom
    type goes through; an emitter refuses an unknown type at emit()."""
    with unique_prefix() as prefix:
        caplog.set_level(logging.ERROR, logger="coda_ws.bus")
        node = server_factory(backplane=REDIS_URL, backplane_prefix=prefix)
        wait_for(lambda: node.backplane.ready()[0], TIMEOUT, "the node to be ready")
        with open_v1(node.url, "replay=0") as (ws, _):
            with Child("-c", _BACKPLANE_CHILD, REDIS_URL, prefix) as child:
                assert child.wait_for_output(r"^done (\w+)").group(1) == "True", child.describe()
                assert child.wait() == 0
            first, second = events_of(ws, 2)
            assert (first["mode"], second["mode"]) == ("one", "two")
            assert second["seq"] == first["seq"] + 2  # the refused event kept its position
            wait_for(lambda: node.get_stats()["unknown_types_refused"] == 1, TIMEOUT, "the refusal count")
            errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
            assert any("refused event" in m and "'test_remote_only'" in m for m in errors), errors
            with RedisEmitter(REDIS_URL, prefix) as emitter:
                with pytest.raises(InvalidEventError, match="unknown event type 'test_remote_only'"):
                    emitter.emit("test_remote_only", value=1)
                sent = emitter.emit("test_rag_lookup", query="q", hits=1)
                assert isinstance(sent, RagLookupEvent)
                assert emitter.flush(TIMEOUT)
            [event] = events_of(ws, 1)
        assert event["type"] == "test_rag_lookup" and event["seq"] == second["seq"] + 1
        with pytest.raises(InvalidEventError, match="unknown event type"):
            node.emit("test_remote_only", value=1)
        stored = get_json(node, "events?since=0")
        assert [e["seq"] for e in stored] == [first["seq"], second["seq"], event["seq"]]


# -- record and play -------------------------------------------------------------------------------


def test_record_and_play_custom_types(server_factory, tmp_path):
    """record writes custom events like any other; play re-emits them; a
    Python client receives them as their classes."""
    source = server_factory()
    path = tmp_path / "custom.jsonl"
    outcome = {}
    thread = threading.Thread(
        target=lambda: outcome.update(n=record(source.url, str(path), count=3, err=io.StringIO()))
    )
    thread.start()
    try:
        assert source.wait_for_clients(1, TIMEOUT)
        emit_lookup(source)
        source.emit("test_guardrail", verdict="warn", score=0.6, reasons=["tone"])
        source.emit("wake_word", word="hey coda", confidence=0.9)
    finally:
        thread.join(TIMEOUT)
    assert outcome == {"n": 3}
    recorded = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [e["type"] for e in recorded] == ["test_rag_lookup", "test_guardrail", "wake_word"]
    target = server_factory()
    with CodaEventClient(target.url, replay=False, connect_timeout=TIMEOUT) as watcher:
        assert watcher.wait_connected(TIMEOUT)
        assert play(str(path), speed=1000.0, server=target, err=io.StringIO()) == 3
        played = [watcher.get(timeout=TIMEOUT) for _ in range(3)]
    assert [type(e) for e in played] == [RagLookupEvent, GuardrailEvent, coda_ws.WakeWordEvent]
    assert played[0].query == SECRET and played[1].reasons == ["tone"]


def test_play_command_needs_the_module_that_registers_the_type(tmp_path):
    """coda-ws play in a process that does not know a recorded type says so,
    naming the line and --import; with --import it plays."""
    path = tmp_path / "custom.jsonl"
    event = RagLookupEvent(seq=1, timestamp=1.0, query="q", hits=1)
    path.write_text(json.dumps(event.to_dict()) + "\n", encoding="utf-8")
    base = ["-m", "coda_ws", "play", str(path), "--port", "0", "--speed", "1000", "--exit"]
    with Child(*base) as child:
        assert child.wait() == 1
        err = "".join(child.stderr_lines)
    assert f"{path}:1: cannot be played back: unknown event type 'test_rag_lookup'" in err
    assert "--import MODULE" in err
    with Child(*base, "--import", "tests.custom_types") as child:
        assert child.wait(CHILD_TIMEOUT) == 0, child.describe()
    with Child(*base, "--import", "tests.no_such_module") as child:
        assert child.wait() == 2
        assert "cannot import event module 'tests.no_such_module'" in "".join(child.stderr_lines)


_SERVE_CHILD_CHECK = """
import os
os.environ["CODA_WS_EVENT_MODULES"] = "tests.custom_types"
from coda_ws import CodaWebSocketServer, registered_event_types
server = CodaWebSocketServer(host="127.0.0.1", port=0)
print("known", "test_rag_lookup" in registered_event_types(), server.settings["event_modules"], flush=True)
"""


def test_the_event_modules_option_imports_the_types_everywhere_a_server_is_configured(tmp_path):
    """event_modules (CODA_WS_EVENT_MODULES, --event-module, a TOML key) imports
    the modules that register the types before a journal or a backplane is
    read: a node run by coda-ws serve or gunicorn knows the types."""
    with Child("-c", _SERVE_CHILD_CHECK) as env_child:
        assert env_child.wait_for_output(r"^known (\w+) (.*)").groups() == ("True", "['tests.custom_types']")
    path = tmp_path / "events.db"
    serve = ["-m", "coda_ws", "serve", "--host", "127.0.0.1", "--port", "0", "--journal", str(path)]
    with Child(*serve, "--event-module", "tests.custom_types") as child:
        url = child.ws_url()
        server_url = url.replace("ws://", "http://").rstrip("/") + "/"

        class _At:  # what tests._http needs of a server
            http_url = server_url

        answer = post_json(_At, {"type": "test_rag_lookup", "query": "q", "hits": 1})
        assert answer.status == 202, answer
        child.interrupt()
        assert child.wait() == 0
    with Child(*serve, "--event-module", "tests.no_such_module") as child:
        assert child.wait() == 1
        assert "cannot import event module 'tests.no_such_module'" in "".join(child.stderr_lines)


# -- the built-in voice moments ------------------------------------------------------------------


def test_voice_moments_through_the_integration_helpers(server):
    """vad_start, vad_end, wake_word and barge_in: one helper each, in the
    integration's session; wake_word and barge_in are high priority."""
    integration = CodaWebSocketIntegration(server)
    with open_v1(server.url, "types=vad_*,wake_word,barge_in&replay=0") as (ws, _):
        integration.wake_word("hey coda", 0.97)
        integration.vad_start(0.8)
        integration.vad_end(1840, 0.75)
        integration.barge_in("tts", played_ms=1200)
        integration.emit("test_rag_lookup", query="q", hits=0)  # any type, in the session
        got = events_of(ws, 4)
    assert [e["type"] for e in got] == ["wake_word", "vad_start", "vad_end", "barge_in"]
    assert {e["session_id"] for e in got} == {integration.session_id}
    assert got[2]["duration_ms"] == 1840.0 and (got[3]["interrupted"], got[3]["played_ms"]) == ("tts", 1200.0)
    assert server.bus.history()[-1].type == "test_rag_lookup"
    replayed = [e["type"] for e in server.replay_buffer]
    assert replayed == ["wake_word", "barge_in"]


def test_voice_moments_through_the_asyncio_integration(server):
    """coda_ws.aio's integration awaits the same helpers."""
    integration = AsyncIntegration(server)

    async def run():
        return [
            await integration.vad_start(),
            await integration.vad_end(500.0),
            await integration.wake_word("computer", 0.5),
            await integration.barge_in("llm"),
            await integration.emit("test_guardrail", verdict="pass", score=0.0),
        ]

    events = asyncio.run(run())
    assert [e.type for e in events] == ["vad_start", "vad_end", "wake_word", "barge_in", "test_guardrail"]
    assert events[0].confidence is None and events[3].played_ms is None
    assert all(e.session_id == integration.session_id for e in events)


# -- the rules of registration ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["Rag", "rag-lookup", "rag lookup", "_rag", "rag_", "rag__lookup", "9rag", "", "r" * 65, "ragé", "rag\n"],
)
def test_bad_type_names_are_refused(name):
    with pytest.raises(ValueError, match="invalid event type name"):
        register_event(name, {"value": int})


@pytest.mark.parametrize("name", ["hello", "resume", "replay", "pong", "subscribed", "error"])
def test_protocol_frame_names_are_reserved(name):
    with pytest.raises(ValueError, match="name of a protocol frame"):
        register_event(name, {"value": int})


@pytest.mark.parametrize("name", ["stt_result", "system_info", "vad_start", "barge_in"])
def test_built_in_types_cannot_be_shadowed(name):
    with pytest.raises(ValueError, match="is a built-in event type"):
        register_event(name, {"value": int})
    with pytest.raises(ValueError, match="is a built-in event type"):

        @custom_event(name)
        class Shadow(BaseEvent):
            value: int


def test_a_custom_type_may_subclass_a_built_in_event_class():
    """Inheriting a built-in class's fields makes a type of your own, not a built-in one."""

    @custom_event("test_stt_result_plus")
    class SttResultPlus(coda_ws.STTResultEvent):
        speaker: str = "unknown"

    assert not SttResultPlus.builtin and coda_ws.STTResultEvent.builtin
    event = coda_ws.create_event("test_stt_result_plus", text="hi", confidence=1, duration_ms=2)
    assert event.to_dict()["type"] == "test_stt_result_plus" and event.speaker == "unknown"
    assert custom_event("test_stt_result_plus")(SttResultPlus) is SttResultPlus


def test_registering_the_same_definition_again_is_idempotent():
    """The identical definition returns the class registered first, whether
    given to register_event or to the decorator; a different one raises,
    saying both."""
    again = register_event(
        "test_rag_lookup",
        {"query": str, "hits": int, "top_score": float | None, "sources": list[str]},
        defaults={"top_score": None, "sources": []},
        content=("query",),
    )
    assert again is RagLookupEvent

    @custom_event("test_rag_lookup", content=("query",))
    class SameShape(BaseEvent):
        query: str
        hits: int
        top_score: float | None = None
        sources: list[str] = field(default_factory=list)

    assert SameShape is RagLookupEvent
    assert custom_event("test_guardrail", high_priority=True)(GuardrailEvent) is GuardrailEvent
    for different in (
        {"fields": {"query": str, "hits": float}},
        {
            "fields": {"query": str, "hits": int, "top_score": float | None, "sources": list[str]}
        },  # no defaults
        {"fields": {"query": str}, "content": ("query",)},
    ):
        with pytest.raises(ValueError, match="already registered with a different definition"):
            register_event("test_rag_lookup", **different)
    with pytest.raises(ValueError, match="different definition"):
        register_event(
            "test_rag_lookup",
            {"query": str, "hits": int, "top_score": float | None, "sources": list[str]},
            defaults={"top_score": None, "sources": []},
            content=("query",),
            high_priority=True,
        )


@pytest.mark.parametrize(
    "annotation, message",
    [
        (set[int], "unsupported field annotation"),
        (tuple[int, int], "unsupported field annotation"),
        (int | str, "unsupported field annotation"),
        (int | str | None, "unsupported field annotation"),
        (dict[int, str], "dict keys must be str"),
        (list, "unsupported field annotation"),
        (bytes, "unsupported field annotation"),
        (list[set[int]], "unsupported field annotation"),
        ("int", "unsupported field annotation"),
        ([int], "unsupported field annotation"),
    ],
)
def test_unsupported_annotations_are_refused_naming_the_field(annotation, message):
    with pytest.raises(TypeError, match=f"test_bad_annotation.value: {message}"):
        register_event("test_bad_annotation", {"value": annotation})
    assert "test_bad_annotation" not in registered_event_types()


def test_every_supported_annotation_validates_like_a_built_in():
    """The annotations the built-in types use, nested, coerce and refuse the same way."""
    cls = register_event(
        "test_all_kinds",
        {
            "s": str,
            "i": int,
            "f": float,
            "b": bool,
            "anything": Any,
            "maybe": float | None,
            "items": list[int],
            "table": dict[str, float],
            "loose": dict[str, Any],
            "nested": list[dict[str, list[str]]],
        },
        defaults={"maybe": None, "anything": None},
    )
    event = coda_ws.create_event(
        "test_all_kinds",
        s="x",
        i=1,
        f=2,
        b=False,
        items=[1],
        table={"a": 1},
        loose={"k": [1]},
        nested=[{"a": ["b"]}],
    )
    assert isinstance(event, cls) and event.f == 2.0 and event.table == {"a": 1.0}
    bad_values = {
        "s": 1,
        "i": 1.5,
        "f": "2",
        "b": 1,
        "items": [1, "2"],
        "table": {"a": "x"},
        "nested": [{"a": [1]}],
        "maybe": math.nan,
    }
    good = {"s": "x", "i": 1, "f": 2.0, "b": True, "items": [], "table": {}, "loose": {}, "nested": []}
    for name, value in bad_values.items():
        with pytest.raises(InvalidEventError) as raised:
            coda_ws.create_event("test_all_kinds", **{**good, name: value})
        assert raised.value.event_type == "test_all_kinds" and raised.value.field == name
        assert str(raised.value).startswith(f"test_all_kinds.{name}")


def test_bad_values_at_emit_name_the_type_and_the_field(server):
    """emit() of a custom type fails in the caller exactly as for a built-in
    one, and takes no seq."""
    before = server.sequence_number
    cases = [
        ({"query": "q", "hits": True}, "hits", "test_rag_lookup.hits must be an integer"),
        ({"query": None, "hits": 1}, "query", "test_rag_lookup.query must be a string"),
        ({"query": "q", "hits": 1, "top_score": math.inf}, "top_score", "must be a finite number"),
        ({"query": "q", "hits": 1, "sources": "a.md"}, "sources", "test_rag_lookup.sources must be a list"),
        ({"query": "q"}, "hits", "test_rag_lookup is missing required field 'hits'"),
        ({"query": "q", "hits": 1, "extra": 1}, "extra", "test_rag_lookup got unknown field 'extra'"),
        ({"query": "\ud800", "hits": 1}, "query", "cannot be encoded"),
    ]
    for fields, name, message in cases:
        with pytest.raises(InvalidEventError, match=message) as raised:
            server.emit("test_rag_lookup", **fields)
        assert (raised.value.event_type, raised.value.field) == ("test_rag_lookup", name)
    assert server.sequence_number == before


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"seq": int}, "'seq' cannot be a field name"),
        ({"type": str}, "'type' cannot be a field name"),
        ({"redacted": bool}, "'redacted' cannot be a field name"),
        ({"high_priority": bool}, "'high_priority' cannot be a field name"),
        ({"to_dict": int}, "'to_dict' cannot be a field name"),
        ({"_private": int}, "invalid field name"),
        ({"class": int}, "invalid field name"),
        ({"naïve": int}, "invalid field name"),
        ({"value\n": int}, "invalid field name"),
    ],
)
def test_bad_field_names_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        register_event("test_bad_field", fields)


def test_bad_defaults_content_and_flags_are_refused():
    with pytest.raises(TypeError, match=r"test_bad_default.n: bad default 'x'"):
        register_event("test_bad_default", {"n": int}, defaults={"n": "x"})
    with pytest.raises(TypeError, match="default for unknown field 'm'"):
        register_event("test_bad_default", {"n": int}, defaults={"m": 1})
    with pytest.raises(TypeError, match="unknown content fields"):
        register_event("test_bad_default", {"n": int}, content=("text",))
    with pytest.raises(TypeError, match="content must be a tuple"):
        register_event("test_bad_default", {"n": int}, content="n")
    with pytest.raises(TypeError, match="high_priority must be True or False"):
        register_event("test_bad_default", {"n": int}, high_priority=1)
    with pytest.raises(TypeError, match="decorates a subclass of coda_ws.BaseEvent"):
        custom_event("test_bad_default")(dict)
    assert "test_bad_default" not in registered_event_types()


def test_decorated_class_is_a_frozen_keyword_only_event():
    """@custom_event makes the class a frozen, keyword-only dataclass whose
    float default is sent as a float, like the built-in events."""

    @custom_event("test_audio_level", conflatable=True)
    class AudioLevelEvent(BaseEvent):
        rms: float
        peak: float = 0

    event = coda_ws.create_event("test_audio_level", rms=1)
    assert isinstance(event, AudioLevelEvent) and event.peak == 0.0 and isinstance(event.peak, float)
    assert AudioLevelEvent.conflatable and AudioLevelEvent.type_name == "test_audio_level"
    assert json.loads(event.to_json())["peak"] == 0.0
    with pytest.raises(AttributeError):
        event.rms = 2.0  # type: ignore[misc]
