"""The JavaScript client (static/coda-ws-client.js) on its own, in the browser."""

import pytest

from coda_ws import CodaWebSocketServer

from ..conftest import TIMEOUT, wait_for
from .conftest import free_port
from .helpers import TcpProxy

#: Starts a client in the page; records events, gaps, states and closes in window.t.
START_CLIENT = """
async ({url, options}) => {
  const mod = await import("/static/coda-ws-client.js");
  const t = window.t = {events: [], gaps: [], states: [], controls: [], mod};
  t.client = new mod.CodaEventClient(url, {
    ...options,
    onEvent: (event, meta) => t.events.push({seq: event.seq, type: event.type, session_id: event.session_id,
                                              replayed: meta.replayed, resumed: meta.resumed}),
    onGap: (gap) => t.gaps.push(gap),
    onStatus: (status) => t.states.push(status.state),
    onControl: (frame) => t.controls.push(frame.type),
  });
  return mod.CodaEventClient === mod.default;
}
"""


def start_client(page, server, url=None, **options):
    """Open a same-origin page and start a client in it; wait until connected."""
    page.goto(server.http_url + "healthz")
    assert page.evaluate(START_CLIENT, {"url": url or server.url, "options": options})
    page.wait_for_function("() => window.t.client.state === 'connected'")


def events(page):
    return page.evaluate("() => window.t.events")


def wait_for_event_seq(page, seq, timeout_ms=5000):
    page.wait_for_function("seq => window.t.client.lastSeq >= seq", arg=seq, timeout=timeout_ms)


def test_exports_and_connects_on_construction(server, page):
    """The module exports CodaEventClient (named and default); constructing it
    connects with v1; the replay frame is unpacked into single events."""
    first = server.emit("system_info", data={"n": 1})
    second = server.emit("stt_result", session_id="s", text="hi", confidence=1.0, duration_ms=1.0)
    start_client(page, server)
    page.wait_for_function("() => window.t.events.length >= 2")
    got = events(page)
    assert [(e["seq"], e["replayed"]) for e in got] == [(first.seq, True), (second.seq, True)]
    controls = page.evaluate("() => window.t.controls")
    assert controls[:2] == ["hello", "replay"]
    status = page.evaluate("() => window.t.client.status")
    assert status["epoch"] == server.epoch and status["server"].startswith("coda-ws/")
    live = server.emit("llm_token", session_id="s", token="a", cumulative_text="a")
    wait_for_event_seq(page, live.seq)
    assert events(page)[-1] == {
        "seq": live.seq,
        "type": "llm_token",
        "session_id": "s",
        "replayed": False,
        "resumed": False,
    }
    rtt = page.evaluate("() => window.t.client.ping()")
    assert rtt["rtt"] >= 0 and rtt["seq"] == live.seq


def test_filters_types_and_session_then_subscribe(server, page):
    """types (globs) and sessionId filter on the server; subscribe() replaces them."""
    start_client(page, server, types=["llm_*", "stt_result"], sessionId="a", replay=False)
    server.emit("llm_token", session_id="a", token="1", cumulative_text="1")
    server.emit("llm_token", session_id="b", token="2", cumulative_text="2")  # other session
    server.emit("tts_start", session_id="a", text="x", voice_id="v", engine="e")  # other type
    server.emit(
        "stt_result", session_id=None, text="sys", confidence=1.0, duration_ms=1.0
    )  # no session: passes
    last = server.emit(
        "llm_result", session_id="a", text="1", duration_ms=1.0, token_count=1, tokens_per_second=1.0
    )
    wait_for_event_seq(page, last.seq)
    assert [(e["type"], e["session_id"]) for e in events(page)] == [
        ("llm_token", "a"),
        ("stt_result", None),
        ("llm_result", "a"),
    ]

    page.evaluate("() => window.t.client.subscribe({types: ['tts_*'], sessionId: null})")
    page.wait_for_function("() => window.t.controls.includes('subscribed')")
    server.emit("llm_token", session_id="a", token="3", cumulative_text="3")
    last = server.emit("tts_start", session_id="b", text="y", voice_id="v", engine="e")
    wait_for_event_seq(page, last.seq)
    assert [e["type"] for e in events(page)][-1:] == ["tts_start"]
    assert len(events(page)) == 4
    assert page.evaluate("() => window.t.client.filters") == {"types": ["tts_*"], "sessionId": None}


def test_resume_after_server_restart_without_duplicates(server, page):
    """Stopped and started again (same object: same epoch and history), the
    server is rejoined by itself: the client resumes with since and gets what
    it missed exactly once, in order, with no gap reported."""
    server.emit("system_info", data={"phase": "before connect"})  # replayed on connect
    start_client(page, server, minReconnectDelay=50, maxReconnectDelay=400)
    emitted = [
        server.emit("tool_call", session_id="s", tool_name="t", parameters={"i": i}, call_id=str(i)).seq
        for i in range(5)
    ]
    wait_for_event_seq(page, emitted[-1])
    server.stop()
    page.wait_for_function("() => window.t.client.state !== 'connected'")
    emitted += [
        server.emit(
            "tool_result", session_id="s", tool_name="t", call_id=str(i), result=i, duration_ms=1.0
        ).seq
        for i in range(5)
    ]
    server.start()
    page.wait_for_function("() => window.t.client.reconnects === 1 && window.t.client.state === 'connected'")
    wait_for_event_seq(page, emitted[-1])
    after = server.emit("tts_status", session_id="s", status="ready").seq
    wait_for_event_seq(page, after)
    got = events(page)
    seqs = [e["seq"] for e in got]
    assert seqs == [1] + emitted + [after]
    assert [e["resumed"] for e in got[6:11]] == [True] * 5
    assert page.evaluate("() => window.t.gaps") == []
    assert page.evaluate("() => window.t.controls").count("resume") == 1


def test_new_epoch_reports_a_gap(server_factory, page):
    """A new server on the same port (new epoch): the client reconnects, calls
    onGap with epoch_changed, then follows the new stream from its replay."""
    port = free_port()
    old = server_factory(port=port)
    start_client(page, old, minReconnectDelay=50, maxReconnectDelay=400)
    seen = old.emit("llm_token", session_id="s", token="a", cumulative_text="a").seq
    wait_for_event_seq(page, seen)
    old.stop()
    # Emitted before the new server serves, so that it reaches the client in the
    # replay frame: emitted after start(), it went live to a client that had
    # reconnected in between (its retries come every 50-400 ms).
    new = CodaWebSocketServer(host="127.0.0.1", port=port)
    replayed = new.emit("system_info", data={"event": "startup"})
    new.start()
    try:
        assert new.epoch != old.epoch
        page.wait_for_function("() => window.t.gaps.length === 1")
        gap = page.evaluate("() => window.t.gaps[0]")
        assert gap["reason"] == "epoch_changed"
        assert gap["previousEpoch"] == old.epoch and gap["epoch"] == new.epoch
        assert gap["lastSeq"] == seen
        page.wait_for_function("() => window.t.client.epoch === window.t.gaps[0].epoch")
        live = new.emit("llm_token", session_id="s", token="b", cumulative_text="b")
        page.wait_for_function("seq => window.t.events.some(e => e.seq === seq && !e.replayed)", arg=live.seq)
        got = events(page)
        # The new stream's seqs start again at 1: its replay is delivered, nothing twice.
        assert [(e["seq"], e["replayed"]) for e in got] == [
            (seen, False),
            (replayed.seq, True),
            (live.seq, False),
        ]
    finally:
        new.stop()


def test_resume_too_old_delivers_replay_without_repeats(server_factory, page):
    """Away longer than the history reaches (same epoch): onGap says too_old and
    the replay frame that follows is delivered without the events already seen."""
    server = server_factory(history_size=10, client_queue_size=5)
    seen = [
        server.emit("stt_result", session_id="s", text=str(i), confidence=1.0, duration_ms=1.0).seq
        for i in range(3)
    ]
    start_client(page, server, minReconnectDelay=50, maxReconnectDelay=400)
    wait_for_event_seq(page, seen[-1])  # from the replay frame
    server.stop()
    page.wait_for_function("() => window.t.client.state !== 'connected'")
    missed = [
        server.emit("stt_result", session_id="s", text=str(i), confidence=1.0, duration_ms=1.0).seq
        for i in range(20)
    ]
    server.start()
    page.wait_for_function("() => window.t.gaps.length === 1")
    assert page.evaluate("() => window.t.gaps[0].reason") == "too_old"
    wait_for_event_seq(page, missed[-1])
    got = events(page)
    assert [e["seq"] for e in got] == seen + missed
    assert all(e["replayed"] for e in got)


def test_lost_window_reports_a_gap_with_its_range(server_factory, page, tmp_path):
    """A journaled server that lost the events after seq 5 in a crash (the
    file says so) answers the client's resume from 10 with reason "lost":
    onGap gets the window, the epoch is kept, and new events follow."""
    import sqlite3

    path = str(tmp_path / "events.db")
    port = free_port()
    old = server_factory(port=port, journal=path)
    start_client(page, old, minReconnectDelay=50, maxReconnectDelay=400)
    seen = [old.emit("llm_token", session_id="s", token=str(i), cumulative_text="").seq for i in range(10)]
    wait_for_event_seq(page, seen[-1])
    old.stop()
    with sqlite3.connect(path) as conn:  # as a SIGKILL after seq 5 was committed leaves it
        conn.execute("DELETE FROM events WHERE seq > 5")
        conn.execute("UPDATE meta SET value = '5' WHERE key = 'last_seq'")
        conn.execute("UPDATE meta SET value = '0' WHERE key = 'clean'")
    conn.close()
    new = server_factory(port=port, journal=path)
    reserved = new.sequence_number
    assert new.epoch == old.epoch and reserved > 10
    page.wait_for_function("() => window.t.gaps.length === 1")
    gap = page.evaluate("() => window.t.gaps[0]")
    assert (gap["reason"], gap["lost"], gap["epoch"], gap["lastSeq"]) == (
        "lost",
        [6, reserved],
        new.epoch,
        10,
    )
    live = new.emit("llm_token", session_id="s", token="after", cumulative_text="").seq
    wait_for_event_seq(page, live)
    assert [e["seq"] for e in events(page)] == seen + [live]


def test_application_ping_replaces_a_dead_connection(server, page):
    """A connection that silently stops passing data (black-holed by a proxy)
    is noticed by the application ping; the client reconnects and resumes
    without losing or repeating an event. The token travels as a subprotocol."""
    proxy = TcpProxy(server.port)
    try:
        url = f"ws://127.0.0.1:{proxy.port}/ws"
        start_client(
            page,
            server,
            url=url,
            token="s3cret",
            pingInterval=200,
            pingTimeout=300,
            minReconnectDelay=50,
            maxReconnectDelay=200,
        )
        first = server.emit("llm_token", session_id="s", token="a", cumulative_text="a").seq
        wait_for_event_seq(page, first)
        proxy.freeze()
        missed = [
            server.emit("llm_token", session_id="s", token=str(i), cumulative_text=str(i)).seq
            for i in range(3)
        ]
        page.wait_for_function(
            "() => window.t.client.reconnects >= 1 && window.t.client.state === 'connected'", timeout=5000
        )
        wait_for_event_seq(page, missed[-1])
        assert [e["seq"] for e in events(page)] == [first] + missed
        close = page.evaluate("() => window.t.client.status.lastClose")
        assert close == {"code": 4000, "reason": "ping timeout"}
        assert page.evaluate("() => window.t.gaps") == []
        head = proxy.handshakes[0]
        request_line = head.split("\r\n")[0]
        assert request_line.startswith("GET /ws?v=1 ") and "s3cret" not in request_line
        assert "sec-websocket-protocol: coda-ws.v1, coda-ws.bearer.s3cret" in head.lower()
        assert "since=" in proxy.handshakes[-1].split("\r\n")[0]
    finally:
        proxy.close()


def test_close_stops_reconnecting(server, page):
    """close() ends the session for good: state closed, the server sees the
    client leave, and no new connection comes (several backoff delays later)."""
    start_client(page, server, minReconnectDelay=50, maxReconnectDelay=100)
    assert server.wait_for_clients(1, timeout=TIMEOUT)
    page.evaluate("() => window.t.client.close()")
    assert page.evaluate("() => window.t.client.state") == "closed"
    wait_for(lambda: server.get_connected_clients() == [], message="the client to leave")
    assert not server.wait_for_clients(1, timeout=0.5)
    assert page.evaluate("() => window.t.client.reconnects") == 0


@pytest.mark.parametrize("bad", ["with space", "semi;colon", "ünï"])
def test_token_that_cannot_be_a_subprotocol_is_refused(server, page, bad):
    """A token with characters a subprotocol cannot carry raises a TypeError at once."""
    page.goto(server.http_url + "healthz")
    message = page.evaluate(
        """async (token) => {
            const {CodaEventClient} = await import("/static/coda-ws-client.js");
            try {
                new CodaEventClient("/ws", {token});
                return "no error";
            } catch (e) {
                return e.name + ": " + e.message;
            }
        }""",
        bad,
    )
    assert message.startswith("TypeError") and "subprotocol" in message


def test_before_reconnect_hook_decides_whether_to_retry(server_factory, page):
    """beforeReconnect is asked before each retry with the status (here
    handshakeFailed: the server refused the token); the retry waits for its
    answer, true retries and false closes the client for good."""
    server = server_factory(auth={"good-token": ["read"]})
    page.goto(server.http_url + "healthz")
    page.evaluate(
        """async (url) => {
      const mod = await import("/static/coda-ws-client.js");
      const t = window.t = {asked: [], states: []};
      t.client = new mod.CodaEventClient(url, {
        token: "bad-token", minReconnectDelay: 20, maxReconnectDelay: 40,
        onStatus: (status) => t.states.push(status.state),
        beforeReconnect: (status) => {
          t.asked.push({handshakeFailed: status.handshakeFailed, attempt: status.attempt});
          // Answer later than the backoff delay: the retry must wait for it.
          return new Promise((resolve) => setTimeout(() => resolve(t.asked.length < 3), 100));
        },
      });
    }""",
        server.url,
    )
    page.wait_for_function("() => window.t.client.state === 'closed'")
    asked = page.evaluate("() => window.t.asked")
    assert asked == [{"handshakeFailed": True, "attempt": n} for n in (1, 2, 3)]
    assert page.evaluate("() => window.t.states").count("connected") == 0
    assert server.get_stats()["rejected_handshakes"] == 3  # no attempt after the hook said no
