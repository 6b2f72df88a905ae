"""The dashboard's event log with event types of your own and the built-in
voice moments: a generic summary in words for a type the page has no
presentation for, the presentations of vad_start, vad_end, wake_word and
barge_in, redaction of a custom type's content, and no console errors."""

import json

from playwright.sync_api import expect

from ..custom_types import RagLookupEvent  # registers the tests' own types
from .helpers import open_dashboard, wait_for_seq

STATS_PROBE = ("/stats",)  # the clients panel asks once and may get 404 without admin


def _summaries(page):
    """{type: summary text} of the log's rows (newest wins)."""
    rows = page.eval_on_selector_all(
        "#log-rows > .log-row",
        "rows => rows.map(r => [r.dataset.type, r.querySelector('.log-summary').textContent,"
        " r.querySelector('.log-type').className])",
    )
    return {kind: (text, classes) for kind, text, classes in reversed(rows)}


def test_log_shows_custom_types_generically_and_the_voice_moments(server, page):
    assert RagLookupEvent.type_name == "test_rag_lookup"
    open_dashboard(page, server.http_url)
    server.emit("wake_word", word="hey coda", confidence=0.97, session_id="s")
    server.emit("vad_start", confidence=0.8, session_id="s")
    server.emit("vad_end", duration_ms=1840, session_id="s")
    server.emit("barge_in", interrupted="tts", played_ms=1200, session_id="s")
    server.emit(
        "test_rag_lookup", query="opening hours", hits=3, top_score=0.82, sources=["faq.md"], session_id="s"
    )
    last = server.emit("test_guardrail", verdict="pass", score=0.1)
    wait_for_seq(page, last.seq)
    expect(page.locator("#log-rows > .log-row")).to_have_count(6)
    summaries = _summaries(page)
    assert summaries["wake_word"][0] == "wake word “hey coda” · 97%"
    assert summaries["vad_start"][0] == "speech started · 80%"
    assert summaries["vad_end"][0] == "speech ended after 1.84 s"
    assert summaries["barge_in"][0] == "user interrupted tts · after 1.20 s of audio"
    assert (
        summaries["test_rag_lookup"][0]
        == 'query “opening hours” · hits 3 · top score 0.82 · sources ["faq.md"]'
    )
    assert summaries["test_guardrail"][0] == "verdict “pass” · score 0.10 · reasons []"
    assert "cat-voice" in summaries["barge_in"][1] and "cat-other" in summaries["test_rag_lookup"][1]
    # The row expands to the event's JSON like any other.
    row = page.locator("#log-rows > .log-row[data-type=test_rag_lookup]")
    row.locator("summary").click()
    expect(row.locator("pre.log-json")).to_contain_text('"hits": 3')
    # A type filter on the custom type.
    page.fill("#log-types", "test_*")
    expect(page.locator("#log-rows > .log-row")).to_have_count(2)
    assert page.probe.problems(allowed_status_urls=STATS_PROBE) == []


def test_custom_content_is_redacted_for_a_read_only_page(server_factory, page):
    server = server_factory(auth={"reader-token": ["read"]})
    open_dashboard(page, server.http_url + "#token=reader-token")
    event = server.emit("test_rag_lookup", query="my secret question", hits=2, session_id="s")
    wait_for_seq(page, event.seq)
    summary = page.locator("#log-rows > .log-row .log-summary").first
    expect(summary).to_contain_text("[content redacted]")
    expect(summary).to_contain_text("hits: 2")
    assert "my secret question" not in page.content()
    assert page.probe.problems(allowed_status_urls=STATS_PROBE) == []


def test_debug_page_publishes_a_registered_custom_type(server, page):
    """The debug page's form lists the server's registered types (from /schema),
    with a sample of their fields, and publishes them through POST /events."""
    page.goto(server.http_url + "debug")
    expect(page.locator("#status-pill")).to_have_attribute("data-state", "connected")
    expect(page.locator("#emit-type option[value=test_rag_lookup]")).to_have_count(1)
    page.select_option("#emit-type", "test_rag_lookup")
    sample = json.loads(page.input_value("#emit-fields"))
    assert sample == {"query": "", "hits": 0, "top_score": None, "sources": []}
    page.fill("#emit-fields", json.dumps({**sample, "query": "from the debug page", "hits": 4}))
    page.click("#emit-send")
    expect(page.locator("#emit-answer")).to_have_attribute("data-ok", "true")
    expect(page.locator("#tail > li[data-kind=event]").last).to_contain_text('"type":"test_rag_lookup"')
    [entry] = [e for e in server.bus.history() if e.type == "test_rag_lookup"]
    assert entry.to_dict()["query"] == "from the debug page" and entry.to_dict()["hits"] == 4
    assert page.probe.problems() == []


def test_js_client_delivers_custom_types_with_a_filter_and_replay(server, page):
    """The JavaScript client knows no list of types: a custom type arrives like
    any other, through a types= filter on it and in the replay frame (high priority)."""
    replayed = server.emit("test_guardrail", verdict="pass", score=0.3)
    page.goto(server.http_url + "healthz")
    page.evaluate(
        """async (url) => {
          const mod = await import("/static/coda-ws-client.js");
          window.got = [];
          window.client = new mod.CodaEventClient(url, {
            types: ["test_*"],
            onEvent: (event, meta) => window.got.push({...event, replayed: meta.replayed}),
          });
        }""",
        server.url,
    )
    page.wait_for_function("() => window.client.state === 'connected'")
    server.emit("stt_start", mode="vad")
    live = server.emit("test_rag_lookup", query="q", hits=1, session_id="s")
    page.wait_for_function("seq => window.client.lastSeq >= seq", arg=live.seq)
    got = page.evaluate("() => window.got")
    assert [(e["seq"], e["type"], e["replayed"]) for e in got] == [
        (replayed.seq, "test_guardrail", True),
        (live.seq, "test_rag_lookup", False),
    ]
    assert got[1]["hits"] == 1 and got[1]["sources"] == []
    assert page.probe.problems(allowed_status_urls=("/favicon.ico",)) == []  # asked for by the JSON page
