"""The browser's turn breakdown (static/dashboard/turns.js) matches coda_ws.turns exactly."""

import pytest

from coda_ws.integration import CodaWebSocketIntegration
from coda_ws.turns import turn_breakdown

from ..unit.test_turns import Stream
from .helpers import open_dashboard, wait_for_seq

JS_BREAKDOWN = """
async ({events, limits}) => {
  const {TurnTracker} = await import("/static/dashboard/turns.js");
  const tracker = new TurnTracker();
  for (const event of events) tracker.feed(event);
  return limits.map((limit) => tracker.breakdown(limit));
}
"""


def _tricky_events():
    stream = Stream()
    for i, v2v in enumerate([0.8, 1.7, 0.95, 2.4, 1.1]):
        stream.voice_turn(10.0 * (i + 1), session_id="a", v2v=v2v, with_progress=bool(i % 2))
    # Interleaved second session, a typed turn, an abandoned turn, tool loops and errors.
    stream.add("stt_result", 80.0, "b", text="one", confidence=1.0, duration_ms=123.4)
    stream.add("stt_result", 80.5, "b", text="two", confidence=1.0, duration_ms=234.5)
    stream.add("llm_start", 80.6, "c", prompt="typed", model="m", temperature=0.1)
    stream.add("llm_token", 80.65, "c", token="x", cumulative_text="x")
    stream.add("llm_start", 80.7, "b", prompt="two", model="m", temperature=0.1)
    stream.add("llm_result", 80.9, "b", text="t", duration_ms=1.0, token_count=1, tokens_per_second=1.0)
    stream.add("tool_call", 80.95, "b", tool_name="w", parameters={}, call_id="1")
    stream.add("tool_result", 81.2, "b", tool_name="w", call_id="1", result=[1, 2], duration_ms=250.25)
    stream.add("tool_error", 81.25, "b", tool_name="w", call_id="2", error="e")
    stream.add("llm_result", 81.4, "b", text="t2", duration_ms=1.0, token_count=1, tokens_per_second=1.0)
    stream.add("tts_start", 81.5, "b", text="t2", voice_id="v", engine="e")
    stream.add("llm_result", 81.55, "b", text="late", duration_ms=1.0, token_count=1, tokens_per_second=1.0)
    stream.add("tts_progress", 81.7, "b", progress_percent=10.0)
    stream.add(
        "conversation_turn",
        81.8,
        "c",
        conversation_id="c",
        turn_number=1,
        user_input="typed",
        assistant_response="x",
    )
    stream.add("tts_result", 82.0, "b", duration_ms=1.0, audio_duration_ms=1.0, success=True)
    stream.add("tts_progress", 82.1, None, progress_percent=5.0)  # no open turn: ignored
    stream.add("stt_result", 90.0, None, text="open", confidence=1.0, duration_ms=50.0)
    events = stream.events
    events.insert(3, {"type": "llm_start", "timestamp": True})  # malformed: skipped by both
    events.insert(5, {"type": "stt_result"})
    return events


@pytest.mark.parametrize("limits", [[1, 3, 20, 1000]])
def test_js_and_python_agree_on_the_same_events(server, page, limits):
    """Fed the same events, turns.js and turn_breakdown() return identical results."""
    events = _tricky_events()
    page.goto(server.http_url + "healthz")
    results = page.evaluate(JS_BREAKDOWN, {"events": events, "limits": limits})
    for limit, js in zip(limits, results):
        assert js == turn_breakdown(events, limit), f"limit={limit}"


def test_dashboard_tracker_matches_get_turns(server, page):
    """The breakdown the dashboard builds from live events equals GET /turns."""
    open_dashboard(page, server.http_url)
    first = CodaWebSocketIntegration(server)
    second = CodaWebSocketIntegration(server)
    for integration, text in ((first, "hello"), (second, "bonjour"), (first, "again")):
        integration.stt_start("push_to_talk")
        integration.stt_final_result(text, 0.9, 321.0)
        integration.llm_start(text, "llama3")
        integration.llm_token("Hi", "Hi")
        integration.llm_result("Hi", 10.0, 1, 100.0)
        integration.tts_start("Hi", "default", "piper")
        integration.tts_progress(50.0)
        integration.tts_result(5.0, 300.0, True)
    last = first.llm_start("typed, still open", "llama3")
    wait_for_seq(page, last.seq)
    answer = page.request.get(server.http_url + "turns?limit=50")
    assert answer.ok
    expected = answer.json()
    assert expected["count"] == 4
    assert page.evaluate("() => window.codaDashboard.tracker.breakdown(50)") == expected


def test_dashboard_loads_past_turns_from_get_turns(server, page):
    """Turns that ended before the page was opened come from GET /turns: the
    latency chart shows them at once, and live turns are added after them."""
    integration = CodaWebSocketIntegration(server)
    for text in ("one", "two"):
        integration.stt_final_result(text, 0.9, 200.0)
        integration.llm_start(text, "llama3")
        integration.tts_start("ok", "default", "piper")
        integration.tts_progress(20.0)
        integration.tts_result(5.0, 100.0, True)
    open_dashboard(page, server.http_url)
    page.wait_for_function("() => document.querySelector('#lat-chart').dataset.points === '2'")
    integration.stt_final_result("three", 0.9, 200.0)
    integration.llm_start("three", "llama3")
    last = integration.tts_result(5.0, 100.0, True)
    wait_for_seq(page, last.seq)
    page.wait_for_function("() => document.querySelector('#lat-chart').dataset.points === '3'")
    assert (
        page.evaluate("() => window.codaDashboard.tracker.breakdown(50)")
        == page.request.get(server.http_url + "turns?limit=50").json()
    )
