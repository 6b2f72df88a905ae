"""Cross-site WebSocket hijacking and browser tokens, in a real browser.

Pages are served by a second local HTTP server; Chromium resolves the made-up
hosts ``evil.test`` and ``good.test`` to 127.0.0.1, so the pages have
non-local origins while all traffic stays on this machine.
"""

import http.server
import json
import threading

import pytest

from .conftest import CHROMIUM, LAUNCH_ARGS

PAGE = b"""<!doctype html><title>probe</title><script>
const params = new URLSearchParams(location.search);
window.result = new Promise((resolve) => {
  const ws = new WebSocket(params.get("ws"), JSON.parse(params.get("protocols") || "[]"));
  ws.onmessage = (e) => { resolve({state: "open", first: JSON.parse(e.data), protocol: ws.protocol}); ws.close(); };
  ws.onclose = (e) => resolve({state: "closed", code: e.code});
});
</script>"""


class _PageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def page_server():
    """A second HTTP server (another origin) serving the probe page."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
    thread = threading.Thread(target=httpd.serve_forever, name="test-page-server")
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture(scope="module")
def browser_with_hosts(browser):
    """A second Chromium (same Playwright instance as the session's) that
    resolves evil.test and good.test to 127.0.0.1."""
    rules = "--host-resolver-rules=MAP evil.test 127.0.0.1,MAP good.test 127.0.0.1"
    instance = browser.browser_type.launch(executable_path=CHROMIUM, args=[*LAUNCH_ARGS, rules])
    try:
        yield instance
    finally:
        instance.close()


def probe(browser, page_url, ws_url, protocols=()):
    """Open the probe page and return what its WebSocket saw."""
    context = browser.new_context()
    try:
        page = context.new_page()
        query = f"?ws={ws_url}&protocols={json.dumps(list(protocols))}"
        page.goto(page_url + query)
        return page.evaluate("window.result")
    finally:
        context.close()


def test_page_from_another_site_cannot_read_the_stream(browser_with_hosts, page_server, server_factory):
    """A page on a foreign origin is refused by the server (403 before the upgrade)."""
    server = server_factory()
    server.emit("stt_result", text="private words", confidence=1.0, duration_ms=1.0)
    result = probe(browser_with_hosts, f"http://evil.test:{page_server}/", server.url + "?v=1")
    assert result["state"] == "closed"
    assert server.get_stats()["rejected_handshakes"] == 1  # the server refused it, not the browser
    assert server.get_stats()["total_connections"] == 0


def test_page_on_an_allowed_origin_can(browser_with_hosts, page_server, server_factory):
    """allowed_origins lets a named site in; a local page is allowed by default."""
    server = server_factory(allowed_origins=[f"http://good.test:{page_server}"])
    result = probe(browser_with_hosts, f"http://good.test:{page_server}/", server.url + "?v=1")
    assert result["state"] == "open" and result["first"]["type"] == "hello"
    local = probe(browser_with_hosts, f"http://127.0.0.1:{page_server}/", server.url + "?v=1")
    assert local["state"] == "open"
    assert server.get_stats()["rejected_handshakes"] == 0


def test_browser_token_via_subprotocol(browser_with_hosts, page_server, server_factory):
    """A browser sends its token as the coda-ws.bearer.TOKEN subprotocol; coda-ws.v1 is selected."""
    server = server_factory(auth={"browser-token-abcdefgh": ["read"]})
    page_url = f"http://127.0.0.1:{page_server}/"
    good = probe(
        browser_with_hosts, page_url, server.url, ["coda-ws.v1", "coda-ws.bearer.browser-token-abcdefgh"]
    )
    assert good["state"] == "open" and good["protocol"] == "coda-ws.v1" and good["first"]["type"] == "hello"
    bad = probe(browser_with_hosts, page_url, server.url, ["coda-ws.v1", "coda-ws.bearer.wrong-token"])
    missing = probe(browser_with_hosts, page_url, server.url, ["coda-ws.v1"])
    assert bad["state"] == missing["state"] == "closed"
    assert server.get_stats()["rejected_handshakes"] == 2
