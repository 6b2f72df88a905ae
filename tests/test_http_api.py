"""The HTTP API through real sockets: /readyz, /stats, GET /events (pagination, filters,
redaction) and POST /events (delivery, every kind of bad input, scopes), also with a journal
and with a Redis backplane (up and unreachable)."""

import json

import pytest

from ._http import get, get_json, post_json, request
from .conftest import TIMEOUT, connect, recv_json, wait_for

TOKENS = {"admintoken": ["admin"], "reader": ["read"], "pub": ["publish"], "full": ["read:content"]}

STT = {"type": "stt_result", "text": "turn on the lights", "confidence": 0.9, "duration_ms": 120.0}


# -- /readyz ---------------------------------------------------------------------------


def test_readyz_is_ready_while_everything_runs(server):
    """A started server is ready: 200 with every check "ok"."""
    answer = get(server, "readyz")
    assert answer.status == 200
    assert answer.json() == {"status": "ready", "checks": {"dispatcher": "ok", "server": "ok"}}


def test_readyz_names_a_stopped_dispatcher_and_recovers(server):
    """A stopped dispatcher turns /readyz 503 naming it; the next emit restarts it and it is ready again."""
    assert server.bus.close(TIMEOUT)
    answer = get(server, "readyz")
    assert answer.status == 503
    body = answer.json()
    assert body["error"] == "not_ready" and body["status"] == "unavailable"
    assert body["message"].startswith("dispatcher: ")
    assert body["checks"]["dispatcher"] != "ok" and body["checks"]["server"] == "ok"
    server.emit("tts_status", status="back")
    wait_for(lambda: get(server, "readyz").status == 200, message="ready again")


class _FailingPart:
    """Stands in for a journal or backplane whose ready() reports a failure."""

    def __init__(self, reason):
        self.reason = reason

    def ready(self):
        return False, self.reason


def test_readyz_names_a_failing_journal_or_backplane(server):
    """A journal or backplane whose ready() fails is named with its reason in a 503."""
    try:
        server.journal = _FailingPart("database is locked")
        body = get(server, "readyz").json()
        assert body["message"] == "journal: database is locked"
        assert body["checks"] == {"dispatcher": "ok", "server": "ok", "journal": "database is locked"}
        server.journal = None
        server.backplane = _FailingPart("redis at 127.0.0.1:1 is unreachable")
        answer = get(server, "readyz")
        assert (
            answer.status == 503
            and answer.json()["message"] == "backplane: redis at 127.0.0.1:1 is unreachable"
        )
    finally:
        server.journal = server.backplane = None  # stop() must not close the stand-ins


# -- /stats ----------------------------------------------------------------------------


def test_stats_lists_each_client_with_its_details(server):
    """/stats is get_stats() plus one entry per client: id, address, user agent, filters, lag and more."""
    with connect(server.url + "?v=1&types=llm_*&session_id=s1", user_agent_header="test-agent/1") as client:
        hello = recv_json(client)
        recv_json(client)  # replay frame
        server.emit("llm_token", token="a", cumulative_text="a", session_id="s1")
        assert recv_json(client)["type"] == "llm_token"
        wait_for(lambda: get_json(server, "stats")["clients"][0]["sent"] == 1, message="sent counted")
        stats = get_json(server, "stats")
    assert set(server.get_stats()) <= set(stats)
    assert stats["current_connections"] == 1 and stats["events_emitted"] == 1
    (entry,) = stats["clients"]
    assert entry["id"] == hello["client_id"]
    assert entry["address"].startswith("127.0.0.1:")
    assert entry["user_agent"] == "test-agent/1"
    assert entry["filters"] == {"types": ["llm_*"], "session_id": "s1"}
    assert entry["protocol"] == 1
    assert (entry["lag"], entry["queue_depth"], entry["sent"], entry["dropped"]) == (0, 0, 1, 0)
    assert isinstance(entry["connected_since"], float)
    assert "last_pong_rtt" in entry


def test_stats_needs_admin_when_auth_is_on(server_factory):
    """With auth on, /stats answers 401 without a token, 403 without admin, 200 with it."""
    server = server_factory(auth=TOKENS)
    assert get(server, "stats").status == 401
    assert get(server, "stats", token="nonsense").status == 401
    assert get(server, "stats", token="reader").status == 403
    assert get(server, "stats", token="full").status == 403
    answer = get(server, "stats", token="admintoken")
    assert answer.status == 200 and answer.json()["clients"] == []


# -- GET /events -----------------------------------------------------------------------


def _seqs(events):
    return [event["seq"] for event in events]


def test_events_pages_with_since_and_limit(server):
    """since and limit page through the history oldest first; the last page is empty."""
    for i in range(25):
        server.emit("tts_status", status=str(i))
    server.bus.flush(TIMEOUT)
    assert _seqs(get_json(server, "events?limit=10")) == list(range(1, 11))
    assert _seqs(get_json(server, "events?since=10&limit=10")) == list(range(11, 21))
    last = get_json(server, "events?since=20&limit=10")
    assert _seqs(last) == [21, 22, 23, 24, 25] and last[-1]["status"] == "24"
    assert get_json(server, "events?since=25") == []
    assert get_json(server, "events?since=1000") == []
    assert _seqs(get_json(server, "events")) == list(range(1, 26))  # since=0: from the oldest held


def test_events_default_and_capped_limit(server):
    """Without limit 100 events come back; a limit above 1000 is capped to 1000."""
    for _i in range(1200):
        server.emit("tts_status", status="x")
    server.bus.flush(TIMEOUT)
    assert _seqs(get_json(server, "events")) == list(range(1, 101))
    assert _seqs(get_json(server, "events?limit=5000")) == list(range(1, 1001))


def test_events_start_at_the_oldest_held(server_factory):
    """since=0 on a history that has wrapped starts at the oldest event still held."""
    server = server_factory(history_size=10, client_queue_size=5)
    for i in range(30):
        server.emit("tts_status", status=str(i))
    server.bus.flush(TIMEOUT)
    assert _seqs(get_json(server, "events?since=0")) == list(range(21, 31))


def test_events_filters_by_type_and_session(server):
    """types (names and globs) and session_id filter like a WebSocket client's; other clients' events never show."""
    server.emit("llm_start", prompt="p", model="m", temperature=0.5, session_id="s1")
    server.emit("llm_token", token="t", cumulative_text="t", session_id="s2")
    server.emit("tts_status", status="ready")  # no session
    server.emit("stt_start", mode="ptt", session_id="s1")
    server.bus.flush(TIMEOUT)
    assert [e["type"] for e in get_json(server, "events?types=llm_*")] == ["llm_start", "llm_token"]
    assert [e["type"] for e in get_json(server, "events?types=llm_start,stt_start")] == [
        "llm_start",
        "stt_start",
    ]
    assert [e["type"] for e in get_json(server, "events?session_id=s1")] == [
        "llm_start",
        "tts_status",
        "stt_start",
    ]
    assert [e["type"] for e in get_json(server, "events?types=llm_*&session_id=s2")] == ["llm_token"]
    with connect(server.url + "?v=1") as client:
        client_id = recv_json(client)["client_id"]
        assert server.send_to_client(client_id, "tts_status", {"status": "just for you"})
        server.bus.flush(TIMEOUT)
    assert [e["status"] for e in get_json(server, "events?types=tts_status")] == ["ready"]


def test_events_are_redacted_without_read_content(server_factory):
    """A read token gets content fields as null with "redacted": true; read:content gets them; scopes enforced."""
    server = server_factory(auth=TOKENS)
    server.emit("stt_result", text="my bank PIN is 1234", confidence=0.9, duration_ms=5.0, session_id="s1")
    server.emit("tts_status", status="speaking")
    server.bus.flush(TIMEOUT)
    redacted, plain = get_json(server, "events", token="reader")
    assert redacted["text"] is None and redacted["redacted"] is True and redacted["confidence"] == 0.9
    assert plain == {
        "version": "1.0",
        "seq": 2,
        "timestamp": plain["timestamp"],
        "type": "tts_status",
        "session_id": None,
        "status": "speaking",
    }  # no content fields: sent as it is
    full, _ = get_json(server, "events", token="full")
    assert full["text"] == "my bank PIN is 1234" and "redacted" not in full
    assert get(server, "events").status == 401
    assert get(server, "events", token="admintoken").status == 403
    assert get(server, "events", token="pub").status == 403


@pytest.mark.parametrize(
    "query, words",
    [
        ("since=-1", "since"),
        ("since=abc", "since"),
        ("since=1.5", "since"),
        ("since=9999999999999999999999", "since"),
        ("limit=0", "limit"),
        ("limit=ten", "limit"),
        ("limit=99999999999999999999999", "limit"),
        ("since=1&since=2", "since is given 2 times"),
        ("types=bad%20pattern", "invalid types"),
        ("types=" + ",".join(f"t{i}" for i in range(65)), "too many type patterns"),
        ("type=llm_start", "unknown query parameter 'type'"),
        ("token=abc", "unknown query parameter 'token'"),
    ],
)
def test_events_bad_parameters_get_400_naming_them(server, query, words):
    """Each malformed query parameter gets a 400 whose message names it."""
    answer = get(server, "events?" + query)
    assert answer.status == 400, answer
    body = answer.json()
    assert body["error"] == "bad_request" and words in body["message"]


# -- POST /events ----------------------------------------------------------------------


def test_published_event_reaches_a_client_with_the_next_seq(server):
    """POST /events answers 202 with the seq; a connected client receives that very event."""
    server.emit("tts_status", status="before")
    with connect(server.url + "?v=1&replay=0") as client:
        hello = recv_json(client)
        answer = post_json(server, {**STT, "session_id": "s9"})
        assert answer.status == 202
        assert answer.json() == {"seq": hello["seq"] + 1}
        event = recv_json(client)
    assert event["seq"] == hello["seq"] + 1
    assert {
        key: event[key] for key in ("type", "session_id", "text", "confidence", "duration_ms", "language")
    } == {
        "type": "stt_result",
        "session_id": "s9",
        "text": "turn on the lights",
        "confidence": 0.9,
        "duration_ms": 120.0,
        "language": None,
    }


def test_publish_coerces_like_emit_and_accepts_version(server):
    """Ints for float fields become floats; "version": "1.0" is accepted; system_info extras go into data."""
    answer = post_json(
        server,
        {
            "type": "system_metrics",
            "version": "1.0",
            "memory_mb": 512,
            "cpu_percent": 3,
            "uptime_seconds": 10,
        },
    )
    assert answer.status == 202
    answer = post_json(server, {"type": "system_info", "component": "debug page"})
    assert answer.status == 202
    server.bus.flush(TIMEOUT)
    metrics, info = get_json(server, "events")
    assert metrics["memory_mb"] == 512.0 and isinstance(metrics["memory_mb"], float)
    assert info["data"] == {"component": "debug page"}


_DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    "body, field, words",
    [
        (b"", None, "empty"),
        (b"   ", None, "empty"),
        (b"{not json", None, "not valid JSON"),
        (b'{"type": "tts_status", "status": "a"', None, "not valid JSON"),
        (b"\xff\xfe{}", None, "not UTF-8"),
        (_DEEP, None, "nested too deeply"),
        (b"[1, 2]", None, "got an array"),
        (b'"stt_result"', None, "got a string"),
        (b"42", None, "got a number"),
        (b"null", None, "got null"),
        (b"{}", "type", "no 'type'"),
        (b'{"type": 7}', "type", "'type' must be a string"),
        (b'{"type": "no_such_type"}', "type", "unknown event type 'no_such_type'"),
        (b'{"type": "tts_status"}', "status", "missing required field 'status'"),
        (b'{"type": "tts_status", "status": "a", "colour": "red"}', "colour", "unknown field 'colour'"),
        (
            b'{"type": "stt_result", "text": "a", "confidence": "high", "duration_ms": 1}',
            "confidence",
            "number",
        ),
        (b'{"type": "stt_result", "text": "a", "confidence": NaN, "duration_ms": 1}', "confidence", "finite"),
        (
            b'{"type": "llm_result", "text": "a", "duration_ms": 1, "token_count": 1.5, "tokens_per_second": 1}',
            "token_count",
            "integer",
        ),
        (b'{"type": "tts_status", "status": "a", "session_id": 5}', "session_id", "session_id"),
        (b'{"type": "tts_status", "status": "a", "seq": 5}', "seq", "set by the server"),
        (b'{"type": "tts_status", "status": "a", "timestamp": 5}', "timestamp", "set by the server"),
        (b'{"type": "tts_status", "status": "a", "redacted": true}', "redacted", "set by the server"),
        (b'{"type": "tts_status", "status": "a", "version": "2.0"}', "version", "'version' must be '1.0'"),
        (b'{"type": "tts_status", "status": "a", "high_priority": true}', "high_priority", "not a field"),
        (b'{"type": "system_info", "self": 1}', "self", "not a field"),
        (b'{"type": "system_info", "event_type": "x"}', "event_type", "not a field"),
    ],
)
def test_publish_bad_bodies_get_400_naming_the_problem(server, body, field, words):
    """Every kind of invalid body gets a 400 whose message names the problem (and "field" the field)."""
    answer = post_json(server, body)
    assert answer.status == 400, answer
    reply = answer.json()
    assert reply["error"] == "bad_request"
    assert words in reply["message"], reply
    assert reply["field"] == field
    assert server.sequence_number == 0  # nothing was published


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
def test_publish_needs_a_json_content_type(server, content_type):
    """A body that is not declared as JSON (a form post from a web page) gets 415."""
    answer = post_json(server, json.dumps(STT).encode(), content_type=content_type)
    assert answer.status == 415, answer
    assert "application/json" in answer.json()["message"]
    assert server.sequence_number == 0


def test_publish_oversize_body_gets_413(server_factory):
    """A body over max_body_size gets 413 whether or not it declares its length; the limit itself is fine."""
    server = server_factory(max_body_size=1024)
    big = {**STT, "text": "x" * 2000}
    answer = post_json(server, big)
    assert answer.status == 413 and "1024" in answer.json()["message"]
    fits = {"type": "tts_status", "status": ""}
    fits["status"] = "x" * (1024 - len(json.dumps(fits)))
    assert len(json.dumps(fits)) == 1024
    assert post_json(server, fits).status == 202
    chunked = request(
        server,
        "events",
        "POST",
        iter([json.dumps(big).encode()]),
        {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    )
    assert chunked.status == 413
    assert server.sequence_number == 1


def test_max_body_size_option_is_checked():
    """max_body_size must be a positive integer."""
    from coda_ws import CodaWebSocketServer

    for bad in (0, -1, 1.5, "1", True):
        with pytest.raises(ValueError, match="max_body_size"):
            CodaWebSocketServer(max_body_size=bad)


def test_publish_needs_the_publish_scope_when_auth_is_on(server_factory):
    """With auth on only a token with "publish" may publish."""
    server = server_factory(auth=TOKENS)
    assert post_json(server, STT).status == 401
    assert post_json(server, STT, token="nonsense").status == 401
    for token in ("reader", "full", "admintoken"):
        answer = post_json(server, STT, token=token)
        assert answer.status == 403 and "publish" in answer.json()["message"]
    assert post_json(server, STT, token="pub").json() == {"seq": 1}


def test_publish_without_auth_is_loopback_only(server):
    """Without auth a request from a non-loopback address is refused; from loopback it is accepted."""
    client = server.app.test_client()
    remote = client.post("/events", json=STT, environ_base={"REMOTE_ADDR": "192.0.2.10"})
    assert remote.status_code == 403 and "loopback" in remote.get_json()["message"]
    local = client.post("/events", json=STT, environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert local.status_code == 202 and local.get_json() == {"seq": 1}


def test_publish_from_a_foreign_web_page_is_refused(server):
    """A browser page from a foreign origin cannot publish, even to a server without auth."""
    answer = post_json(server, STT, headers={"Origin": "https://evil.example"})
    assert answer.status == 403 and answer.json()["error"] == "forbidden_origin"
    assert post_json(server, STT, headers={"Origin": "http://localhost:3000"}).status == 202


def test_publish_with_an_external_sequencer_answers_queued(server_factory):
    """With a backplane (seq stamped by Redis) the answer is 202 {"seq": null, "queued": true}."""
    published = []

    class Sequencer:
        def publish(self, *args):
            published.append(args)

    server = server_factory()
    server.bus.set_sequencer(Sequencer())
    answer = post_json(server, STT)
    assert answer.status == 202 and answer.json() == {"seq": None, "queued": True}
    assert published[0][1] == "stt_result"


# -- with a Redis backplane -----------------------------------------------------------


def test_readyz_and_publish_with_a_working_backplane(server_factory):
    """With Redis up, /readyz checks the backplane too and POST /events answers queued (Redis stamps the seq)."""
    from ._redis import REDIS_URL, unique_prefix  # redis is a dev dependency: never skipped

    with unique_prefix() as prefix:
        server = server_factory(backplane=REDIS_URL, backplane_prefix=prefix)
        wait_for(lambda: get(server, "readyz").status == 200, message=lambda: get(server, "readyz"))
        assert get_json(server, "readyz")["checks"] == {"dispatcher": "ok", "server": "ok", "backplane": "ok"}
        with connect(server.url + "?replay=0") as client:
            assert server.wait_for_clients(1, TIMEOUT)
            answer = post_json(server, STT)
            assert answer.status == 202 and answer.json() == {"seq": None, "queued": True}
            event = recv_json(client)
        assert event["type"] == "stt_result" and event["seq"] >= 1
        server.stop()


def test_readyz_names_an_unreachable_redis(server_factory):
    """With Redis unreachable, /readyz answers 503 naming the backplane and why."""
    server = server_factory(backplane="redis://127.0.0.1:1/0")
    answer = get(server, "readyz")
    assert answer.status == 503
    body = answer.json()
    assert body["message"].startswith("backplane: ") and "127.0.0.1:1" in body["message"]
    assert body["checks"]["dispatcher"] == "ok" and body["checks"]["server"] == "ok"


def test_events_reach_back_into_the_journal(server_factory, tmp_path):
    """With a journal, GET /events returns events older than the history ring too, in one ordered page."""
    server = server_factory(journal=str(tmp_path / "events.db"), history_size=10, client_queue_size=5)
    for i in range(30):
        server.emit("tts_status", status=str(i))
    server.bus.flush(TIMEOUT)
    wait_for(
        lambda: _seqs(get_json(server, "events?since=0&limit=100")) == list(range(1, 31)),
        message=lambda: f"all 30, got {_seqs(get_json(server, 'events?since=0&limit=100'))}",
    )
    assert _seqs(get_json(server, "events?since=5&limit=10")) == list(range(6, 16))
    assert get_json(server, "readyz")["checks"]["journal"] == "ok"
