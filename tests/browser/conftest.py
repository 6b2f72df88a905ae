"""Browser tests: Playwright (sync API) driving Debian's Chromium.

No pytest-playwright plugin: the fixtures here launch ``/usr/bin/chromium``
once per session and give each test a fresh context and page that record
console errors, failed requests and HTTP error responses.

Install on Debian: ``apt-get install -y chromium`` and
``pip install playwright`` (no ``playwright install``: the system Chromium
is used). Without them these tests are skipped, except under CI (``CI`` set),
where a missing browser stack is an error.
"""

import os
import pathlib
import socket

import pytest

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    # Under CI nothing is skipped. The root conftest.py turns skips into failures, but a
    # skip raised while a conftest is imported never reaches its hooks: fail here.
    if os.environ.get("CI"):
        raise
    pytest.skip("playwright is not installed (pip install playwright)", allow_module_level=True)

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

if not os.path.exists(CHROMIUM):  # pragma: no cover - depends on the machine
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install -y chromium")
    pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)", allow_module_level=True)

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: Screenshots and other files CI keeps (git-ignored).
ARTIFACTS = ROOT / "test-artifacts"

#: Default timeout of Playwright waits and expectations, in milliseconds.
UI_TIMEOUT_MS = 5000
VIEWPORT = {"width": 1280, "height": 800}

expect.set_options(timeout=UI_TIMEOUT_MS)


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (for restart tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PageProbe:
    """What went wrong in a page: console errors, uncaught exceptions, failed
    requests and HTTP responses with an error status."""

    def __init__(self, page):
        self.console_errors = []
        self.page_errors = []
        self.failed_requests = []
        self.aborted_requests = []  # cancelled by the browser (a navigation), not failed
        self.error_responses = []
        self.requests = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("requestfailed", self._on_request_failed)
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("response", self._on_response)

    def _on_console(self, message):
        if message.type == "error":
            self.console_errors.append((message.text, message.location.get("url", "")))

    def _on_request_failed(self, request):
        # net::ERR_ABORTED is the browser cancelling the request itself (the
        # page navigated away while a fetch was in flight), not a failure of
        # the server or the page; every other failure (reset, refused, empty
        # answer) is a problem.
        if request.failure == "net::ERR_ABORTED":
            self.aborted_requests.append(request.url)
        else:
            self.failed_requests.append(f"{request.url} {request.failure}")

    def _on_response(self, response):
        if response.status >= 400:
            self.error_responses.append((response.status, response.url))

    def problems(self, allowed_status_urls=()):
        """Every problem seen, except HTTP errors (and the console lines that
        report them) for URLs ending with one of ``allowed_status_urls``."""

        def allowed(url):
            return any(url.split("?")[0].endswith(suffix) for suffix in allowed_status_urls)

        problems = [f"uncaught: {e}" for e in self.page_errors]
        problems += [f"request failed: {r}" for r in self.failed_requests]
        problems += [f"HTTP {status}: {url}" for status, url in self.error_responses if not allowed(url)]
        problems += [
            f"console: {text} ({url})"
            for text, url in self.console_errors
            if not (text.startswith("Failed to load resource") and allowed(url))
        ]
        return problems


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="package")
def browser():
    """One headless Chromium for the browser tests, closed after the last of them:
    Playwright's synchronous API keeps its event loop set as the running loop of
    the main thread while it is started, so any later test (or documentation
    block) calling ``asyncio.run()`` would fail with "cannot be called from a
    running event loop"."""
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def context(browser):
    """A fresh browser context (no shared storage) at 1280x800."""
    ctx = browser.new_context(viewport=VIEWPORT)
    ctx.set_default_timeout(UI_TIMEOUT_MS)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page(context, request):
    """A page in a fresh context; a screenshot goes to test-artifacts/failures/ when the test fails."""
    pg = context.new_page()
    pg.probe = PageProbe(pg)
    yield pg
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and not pg.is_closed():
        folder = ARTIFACTS / "failures"
        folder.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(folder / f"{request.node.name}.png"), full_page=True)


@pytest.fixture
def artifacts():
    """The test-artifacts/ folder (created)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
