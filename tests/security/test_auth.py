"""Tokens, scopes, redaction, origins and exposure (docs/protocol.md sections 1, 7, 8)."""

import contextlib
import json
import logging

import pytest
from websockets.exceptions import InvalidStatus

from coda_ws import CodaWebSocketServer
from coda_ws.auth import Authenticator, OriginPolicy, parse_tokens
from coda_ws.errors import CodaWSError

from ..conftest import TIMEOUT, connect, recv_json
from ..rawws import RawClient

TOKENS = {
    "reader-token-0123456789": ["read"],
    "content-token-0123456789": ["read:content"],
    "publisher-token-0123456789": ["publish"],
    "admin-token-0123456789": ["admin"],
}
SPOKEN = "my bank password is hunter2"


@pytest.fixture
def secured(server_factory):
    return server_factory(auth=TOKENS)


def bearer(token):
    return {"additional_headers": {"Authorization": f"Bearer {token}"}}


@pytest.mark.parametrize(
    "headers, status, error",
    [
        ([], 401, "unauthorized"),
        ([("Authorization", "Bearer wrong-token")], 401, "unauthorized"),
        ([("Authorization", "Basic dXNlcjpwYXNz")], 401, "unauthorized"),
        ([("Authorization", "Bearer publisher-token-0123456789")], 403, "forbidden"),
        ([("Sec-WebSocket-Protocol", "coda-ws.v1, coda-ws.bearer.wrong")], 401, "unauthorized"),
    ],
)
def test_refusals_happen_before_the_upgrade(secured, headers, status, error):
    """Missing, unknown or insufficient tokens get plain HTTP 401/403 with a JSON body."""
    client = RawClient(secured.port, "/?v=1", headers=headers)
    assert client.status == status
    assert json.loads(client.body)["error"] == error
    client.close()
    assert secured.get_connected_clients() == []


def test_token_in_header_and_in_subprotocol(secured):
    """A token works as a Bearer header and as the coda-ws.bearer.TOKEN subprotocol, which is never echoed."""
    with connect(secured.url + "?v=1", **bearer("reader-token-0123456789")) as ws:
        assert recv_json(ws)["type"] == "hello"
    protocols = ["coda-ws.v1", "coda-ws.bearer.content-token-0123456789"]
    with connect(secured.url, subprotocols=protocols) as ws:
        assert ws.subprotocol == "coda-ws.v1"
        assert recv_json(ws)["type"] == "hello"


def test_token_in_query_string_is_refused(secured):
    """Tokens in URLs end up in logs: the query-string form is refused with a hint."""
    client = RawClient(secured.port, "/?token=reader-token-0123456789")
    assert client.status == 400 and "query string" in json.loads(client.body)["message"]
    client.close()


def test_tokens_never_appear_in_logs(server_factory, caplog):
    """No token, right or wrong, is written to any log record."""
    with caplog.at_level(logging.DEBUG):
        server = server_factory(auth=TOKENS)
        for headers in (
            [("Authorization", "Bearer wrong-secret-abcdef")],
            [("Authorization", "Bearer publisher-token-0123456789")],
            [("Sec-WebSocket-Protocol", "coda-ws.v1, coda-ws.bearer.reader-token-0123456789")],
        ):
            RawClient(server.port, "/", headers=headers).close()
        with connect(server.url, **bearer("content-token-0123456789")):
            pass
        server.stop()
    # Everything the server side logged (the websockets *client* logs its own headers at DEBUG).
    server_records = [r for r in caplog.records if r.name.startswith(("coda_ws", "werkzeug"))]
    text = " ".join(f"{r.getMessage()} {r.__dict__}" for r in server_records)
    assert "refused WebSocket" in text  # refusals are logged...
    for secret in ("wrong-secret-abcdef", *TOKENS):
        assert secret not in text  # ...without the token


def _emit_conversation(server, words):
    server.emit("stt_result", text=words, confidence=0.9, duration_ms=800.0, session_id="s")
    server.emit("llm_start", prompt=words, model="llama3", temperature=0.5, session_id="s")
    server.emit("tool_call", tool_name="bank", parameters={"query": words}, call_id="c1", session_id="s")
    server.emit("tts_status", status="speaking", session_id="s")


def test_read_only_reader_gets_redacted_events_everywhere(secured):
    """Live, replay and resume: content fields are null with redacted:true for a read-only token."""
    _emit_conversation(secured, SPOKEN)  # in history and (stt_result) in the replay buffer
    received = []
    with connect(secured.url + "?v=1", **bearer("reader-token-0123456789")) as ws:
        hello = recv_json(ws)
        replay = recv_json(ws)
        received.append(json.dumps(replay))
        [stt] = replay["events"]
        assert stt["text"] is None and stt["redacted"] is True and stt["confidence"] == 0.9
        _emit_conversation(secured, SPOKEN)
        live = [recv_json(ws) for _ in range(4)]
        received += [json.dumps(e) for e in live]
    assert [e.get("redacted") for e in live] == [True, True, True, None]  # tts_status has no content
    assert live[0]["text"] is None and live[1]["prompt"] is None and live[2]["parameters"] is None
    assert live[1]["model"] == "llama3" and live[2]["tool_name"] == "bank"
    with connect(f"{secured.url}?since=0&epoch={hello['epoch']}", **bearer("reader-token-0123456789")) as ws:
        assert recv_json(ws)["type"] == "hello"
        resume = recv_json(ws)
        assert resume["recovered"] and resume["count"] == 8
        resumed = [recv_json(ws) for _ in range(8)]
        received += [json.dumps(e) for e in resumed]
    assert all(e["redacted"] for e in resumed if e["type"] != "tts_status")
    assert not any("hunter2" in frame for frame in received)


def test_content_reader_sees_the_text(secured):
    """A read:content token receives content fields as emitted, without the redacted key."""
    with connect(secured.url + "?replay=0", **bearer("content-token-0123456789")) as ws:
        secured.wait_for_clients(1, TIMEOUT)
        _emit_conversation(secured, SPOKEN)
        first = recv_json(ws)
    assert first["text"] == SPOKEN and "redacted" not in first


def test_redacted_variant_is_built_once_per_event(secured):
    """Many read-only readers share one redacted frame per event."""
    with contextlib.ExitStack() as stack:
        clients = [
            stack.enter_context(connect(secured.url + "?replay=0", **bearer("reader-token-0123456789")))
            for _ in range(3)
        ]
        secured.wait_for_clients(3, TIMEOUT)
        secured.emit("stt_result", text=SPOKEN, confidence=1.0, duration_ms=1.0)
        frames = [ws.recv(timeout=TIMEOUT) for ws in clients]
    assert len(set(frames)) == 1
    [entry] = secured.bus.history()
    assert entry.redacted_frame() is entry.redacted_frame()


def test_without_auth_every_client_sees_content(server):
    """With no tokens configured (localhost), clients are trusted with everything."""
    with connect(server.url) as ws:
        server.wait_for_clients(1, TIMEOUT)
        server.emit("stt_result", text=SPOKEN, confidence=1.0, duration_ms=1.0)
        assert recv_json(ws)["text"] == SPOKEN


def test_callable_auth(server_factory):
    """auth=callable maps tokens to scopes through an external identity system."""
    server = server_factory(auth=lambda token: ["read"] if token == "from-idp" else None)
    with connect(server.url, **bearer("from-idp")):
        pass
    assert RawClient(server.port, "/", headers=[("Authorization", "Bearer nope")]).status == 401


def test_tokens_from_the_environment(monkeypatch):
    """CODA_WS_TOKENS configures tokens too; malformed entries are named by position, never by token."""
    auth = Authenticator(environ={"CODA_WS_TOKENS": "abc=read def=read:content,publish"})
    assert auth.scopes_for("abc") == {"read"}
    assert auth.scopes_for("def") == {"read", "read:content", "publish"}
    assert auth.scopes_for("zzz") is None
    with pytest.raises(ValueError, match="entry 2") as info:
        parse_tokens("good=read secret-token-value=bogus")
    assert "secret-token-value" not in str(info.value)


@pytest.mark.parametrize(
    "auth, error",
    [({"t": ["root"]}, ValueError), ({"": ["read"]}, ValueError), (["t"], TypeError), ({"t": 5}, TypeError)],
)
def test_bad_auth_configuration_is_refused(auth, error):
    """Invalid token tables raise a clear error at construction."""
    with pytest.raises(error):
        CodaWebSocketServer(auth=auth)


def test_origin_policy_defaults_and_allowed_origins(server_factory):
    """Local pages and the server's own host pass; other sites are refused unless allowed."""
    policy = OriginPolicy(["https://dash.example.com"])
    assert policy.allows(None, "")
    assert policy.allows("http://localhost:5173", "")
    assert policy.allows("http://[::1]:8000", "")
    assert policy.allows("https://dash.example.com", "")
    assert policy.allows("http://myhost:8765", "myhost:8765")
    assert not policy.allows("http://myhost:9999", "myhost:8765")
    assert not policy.allows("https://evil.example", "127.0.0.1:8765")
    assert not policy.allows("null", "127.0.0.1:8765")
    assert OriginPolicy("*").allows("https://anything.example", "")
    with pytest.raises(ValueError, match="not an origin"):
        OriginPolicy(["dash.example.com"])
    server = server_factory(allowed_origins=["https://dash.example.com"])
    ok = RawClient(server.port, "/", headers=[("Origin", "https://dash.example.com")])
    bad = RawClient(server.port, "/", headers=[("Origin", "https://dash.example.com.evil.io")])
    assert (ok.status, bad.status) == (101, 403)
    ok.close()
    bad.close()


def test_non_loopback_bind_without_auth_refuses_to_start():
    """Binding 0.0.0.0 without tokens refuses to start, explaining how to configure them."""
    server = CodaWebSocketServer(host="0.0.0.0", port=0)
    with pytest.raises(CodaWSError, match="without authentication.*CODA_WS_TOKENS"):
        server.start()
    assert not server.running


def test_insecure_bind_starts_with_a_warning(caplog):
    """insecure=True overrides the refusal and logs a warning."""
    server = CodaWebSocketServer(host="0.0.0.0", port=0, insecure=True)
    with caplog.at_level(logging.WARNING, logger="coda_ws.server"):
        server.start()
    try:
        assert "without authentication" in caplog.text
        with connect(f"ws://127.0.0.1:{server.port}/"):
            pass
    finally:
        server.stop()


def test_non_loopback_bind_with_auth_starts():
    """With tokens configured, a non-loopback bind is allowed and serves clients
    that bring a token (and refuses those that do not)."""
    token = "t" * 20
    server = CodaWebSocketServer(host="0.0.0.0", port=0, auth={token: ["read"]})
    server.start()
    try:
        assert server.running
        with connect(
            f"ws://127.0.0.1:{server.port}/?v=1", additional_headers={"Authorization": f"Bearer {token}"}
        ) as ws:
            assert recv_json(ws)["type"] == "hello"
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{server.port}/")
        assert refused.value.response.status_code == 401
    finally:
        server.stop()
    assert not server.running
