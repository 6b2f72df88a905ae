"""A server that requires tokens, opened in a browser without one (or with a wrong one).

Browsers hide the HTTP status of a refused WebSocket handshake, so the page
asks the server over HTTP why (static/dashboard/access.js): on a 401 or 403 it
stops retrying and shows the token prompt; a token entered there is kept in
sessionStorage and the address's fragment (never the query string, never a
cookie) and opens the stream.
"""

import pytest
from playwright.sync_api import expect

from .conftest import UI_TIMEOUT_MS, PageProbe
from .helpers import wait_for_seq

READER = "reader-Token_1"  # read and read:content
PUBLISHER = "publisher-only"  # publish, no read
TOKENS = {READER: ["read", "read:content"], PUBLISHER: ["publish"]}

#: The refusals the page meets and the browser logs: the handshake and the
#: probe without a valid token, and /stats (admin only) for the reader token.
REFUSALS = ("/ws", "/events", "/stats")


@pytest.fixture
def auth_server(server_factory):
    """A server that requires tokens."""
    return server_factory(auth=TOKENS)


def websockets_opened(page):
    """Record the page's WebSocket attempts (a list that fills as they happen)."""
    opened = []
    page.on("websocket", lambda ws: opened.append(ws.url))
    return opened


def stop_retrying(page):
    """Wait until the page's client has stopped for good, then return its attempt count."""
    page.wait_for_function("() => window.codaDashboard.client.state === 'closed'")
    return page.evaluate("window.codaDashboard.client.status.attempt")


def test_prompt_then_stream_after_a_valid_token(auth_server, page, context):
    """Opened without a token: the page stops after the first refused attempt
    and says in the page that the server needs a token (status announced as
    "token needed"); a wrong token is refused with a message; the valid token
    opens the stream, is kept in sessionStorage and the fragment, never in a
    URL's query or a cookie, and a reload of the bare address reconnects
    with it."""
    opened = websockets_opened(page)
    page.goto(auth_server.http_url)
    prompt = page.locator("#auth-prompt")
    expect(prompt).to_be_visible()
    expect(page.get_by_role("heading", name="This server needs a token")).to_be_visible()
    expect(page.locator("#auth-text")).to_contain_text("requires a token")
    expect(page.get_by_role("status")).to_contain_text("token needed")
    expect(page.locator("#conn-status")).to_have_text("token needed")
    expect(page.locator("#auth-token")).to_be_focused()
    assert stop_retrying(page) == 1
    assert len(opened) == 1

    page.fill("#auth-token", "not-the-token")
    page.press("#auth-token", "Enter")
    expect(page.locator("#auth-text")).to_contain_text("refused this token")
    expect(page.locator("#auth-text")).to_contain_text("unknown or invalid token")
    expect(page.locator("#status-pill")).to_have_text("token refused")
    assert stop_retrying(page) == 1
    assert len(opened) == 2
    assert page.evaluate("location.hash") == ""  # a refused token is not kept

    page.fill("#auth-token", f"  {READER} ")  # pasted with spaces around it
    page.click("#auth-connect")
    expect(page.locator("#status-pill")).to_have_attribute("data-state", "connected")
    expect(prompt).to_be_hidden()
    event = auth_server.emit(
        "stt_result", session_id="s", text="the stream is open", confidence=0.9, duration_ms=10.0
    )
    wait_for_seq(page, event.seq)
    expect(page.locator("#conv-current [data-kind=final]")).to_have_text("the stream is open")
    expect(page.locator("#log-rows .log-summary").first).to_have_text("“the stream is open”")
    assert len(opened) == 3

    assert page.evaluate("location.hash") == f"#token={READER}"
    stored = page.evaluate("Object.entries(sessionStorage)")
    assert [value for _, value in stored] == [READER]
    assert context.cookies() == []
    assert not [url for url in page.probe.requests if READER in url.split("#")[0]], page.probe.requests
    assert page.eval_on_selector("#debug-link", "a => a.pathname + a.hash") == f"/debug#token={READER}"

    # The same tab, the bare address: the token comes back from sessionStorage.
    page.goto(auth_server.http_url)
    expect(page.locator("#status-pill")).to_have_attribute("data-state", "connected")
    expect(prompt).to_be_hidden()
    assert page.evaluate("location.hash") == f"#token={READER}"
    # Nothing went wrong but the two refused attempts, which the browser logs.
    problems = page.probe.problems(allowed_status_urls=REFUSALS)
    refused = [p for p in problems if p.startswith("console: WebSocket connection to") and "/ws?v=1" in p]
    assert len(refused) == 2 and len(problems) == 2, problems


def test_token_without_read_scope_is_refused_with_the_reason(auth_server, page):
    """A token the server knows but that may not read (403) stops the page
    too, and the prompt names the missing scope."""
    page.goto(auth_server.http_url + f"#token={PUBLISHER}")
    expect(page.locator("#auth-prompt")).to_be_visible()
    expect(page.locator("#auth-prompt")).to_have_attribute("data-reason", "forbidden")
    expect(page.locator("#auth-text")).to_contain_text("'read' scope")
    expect(page.locator("#status-pill")).to_have_text("token refused")
    assert stop_retrying(page) == 1
    assert page.evaluate("location.hash") == ""
    assert page.evaluate("sessionStorage.length") == 0


def test_prompt_refuses_text_that_cannot_be_a_token(auth_server, page):
    """Text with spaces or other characters a WebSocket subprotocol cannot
    carry is refused in the page, before anything is sent."""
    opened = websockets_opened(page)
    page.goto(auth_server.http_url)
    expect(page.locator("#auth-prompt")).to_be_visible()
    stop_retrying(page)
    page.fill("#auth-token", "two words")
    page.press("#auth-token", "Enter")
    expect(page.locator("#auth-text")).to_contain_text("That is not a token")
    expect(page.locator("#auth-token")).to_have_attribute("aria-invalid", "true")
    assert len(opened) == 1


def test_debug_page_asks_for_a_token_too(auth_server, page):
    """The debug page on a server with tokens shows the same prompt, and the
    token entered there opens its live tail."""
    page.goto(auth_server.http_url + "debug")
    expect(page.locator("#auth-prompt")).to_be_visible()
    expect(page.locator("#status-pill")).to_have_text("token needed")
    page.fill("#auth-token", READER)
    page.press("#auth-token", "Enter")
    expect(page.locator("#status-pill")).to_have_attribute("data-state", "connected")
    expect(page.locator("#tail > li").first).to_contain_text('"type":"hello"')
    assert page.eval_on_selector("#dashboard-link", "a => a.pathname + a.hash") == f"/#token={READER}"


def test_unreachable_server_keeps_retrying_without_a_prompt(browser, server_factory):
    """When the server is down (no answer at all, not a refusal), the page
    keeps retrying with its backoff and shows no token prompt; it connects
    once the server is back."""
    from .conftest import free_port

    port = free_port()
    server = server_factory(port=port)
    context = browser.new_context()
    context.set_default_timeout(UI_TIMEOUT_MS)
    try:
        page = context.new_page()
        page.probe = PageProbe(page)
        page.goto(server.http_url)
        expect(page.locator("#status-pill")).to_have_attribute("data-state", "connected")
        server.stop()
        page.wait_for_function("() => window.codaDashboard.client.status.attempt >= 2")
        expect(page.locator("#auth-prompt")).to_be_hidden()
        assert page.evaluate("window.codaDashboard.client.state") == "reconnecting"
        server.start()
        expect(page.locator("#status-pill")).to_have_attribute("data-state", "connected", timeout=15000)
        expect(page.locator("#auth-prompt")).to_be_hidden()
    finally:
        context.close()
