"""The dashboard on phones, half-screen windows and desktops, under its CSP, and accessible.

Each size gets a real server, two spoken turns and system metrics, then the
checks a person would make by looking: nothing scrolls sideways, every panel
heading shows, the connection panel's labels and values are whole, the
earlier turn is there to read, charts label their axes once each and inside
the canvas, legends show the latest values, the page runs under its
Content-Security-Policy, and axe-core (vendored, offline) finds no WCAG 2.1
A/AA violation. A screenshot of each size is saved under pytest's temporary
folder (the path is printed) for a person to look at.
"""

import pathlib
import re

import pytest
from flask import Flask
from playwright.sync_api import expect

from coda_ws.demo import DEMO_EXCHANGES, run_demo_conversation
from coda_ws.integration import CodaWebSocketIntegration

from .conftest import UI_TIMEOUT_MS, PageProbe
from .helpers import open_dashboard, wait_for_seq

#: The sizes the issue names: a phone, a half-screen desktop window, a desktop.
SIZES = {"phone": (390, 844), "half-screen": (960, 700), "desktop": (1280, 800)}

AXE = pathlib.Path(__file__).parent / "vendor" / "axe.min.js"

#: Collects Content-Security-Policy violations before any page script runs
#: (an init script is not subject to the page's CSP).
CSP_RECORDER = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));
"""

PANEL_HEADINGS = ["Connection", "Conversation", "Pipeline latency", "System", "Event log", "Clients"]


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    """A folder for the screenshots of this module (kept after the run; its path is printed)."""
    folder = tmp_path_factory.mktemp("dashboard-screenshots")
    yield folder
    print(f"\ndashboard screenshots: {folder}")


def new_page(browser, size, axe=False):
    """A page in a fresh context of ``size`` (width, height) that records CSP
    violations (and has axe-core loaded when ``axe``)."""
    width, height = size
    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(UI_TIMEOUT_MS)
    context.add_init_script(CSP_RECORDER)
    if axe:
        context.add_init_script(path=str(AXE))
    page = context.new_page()
    page.probe = PageProbe(page)
    return context, page


def play_turns(server, count=2):
    """``count`` scripted turns (a tool call each) and two system_metrics
    samples without GPU; returns the user's words of each turn."""
    integration = CodaWebSocketIntegration(server)
    server.broadcast_system_metrics(512.0, 12.5, None, 30)
    for index in range(count):
        assert run_demo_conversation(integration, pace=0.05, exchange=index)
    server.broadcast_system_metrics(530.0, 22.5, None, 35)
    return [DEMO_EXCHANGES[index].user_text for index in range(count)]


def horizontal_overflow(page):
    """How far the page is wider than the window, in CSS pixels (0: no sideways scrolling)."""
    return page.evaluate("""() => Math.max(document.documentElement.scrollWidth,
                                          document.body.scrollWidth) - window.innerWidth""")


#: True when the element is scrolled into view and no ancestor that clips its
#: overflow (a card with overflow: hidden, a scrolling list) cuts any of it off.
FULLY_SHOWN = """(el) => {
    // Scroll as a person can: the window and scrolling lists, not a card whose
    // overflow is hidden (scrollIntoView would scroll it too: put those back).
    const hidden = [];
    for (let a = el.parentElement; a; a = a.parentElement) {
        const o = getComputedStyle(a).overflowY;
        if (o === "hidden" || o === "clip") hidden.push([a, a.scrollTop, a.scrollLeft]);
    }
    el.scrollIntoView({block: "nearest"});
    for (const [a, top, left] of hidden) { a.scrollTop = top; a.scrollLeft = left; }
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) return `${el.textContent.slice(0, 30)}: empty box`;
    let box = {top: 0, left: 0, bottom: innerHeight, right: innerWidth};
    for (let a = el.parentElement; a; a = a.parentElement) {
        if (getComputedStyle(a).overflow === "visible") continue;
        const c = a.getBoundingClientRect();
        box = {top: Math.max(box.top, c.top), left: Math.max(box.left, c.left),
               bottom: Math.min(box.bottom, c.bottom), right: Math.min(box.right, c.right)};
    }
    const ok = r.top >= box.top - 1 && r.bottom <= box.bottom + 1
        && r.left >= box.left - 1 && r.right <= box.right + 1;
    const where = `${JSON.stringify([r.top, r.bottom])} outside ${JSON.stringify(box)}`;
    return ok ? true : `${el.textContent.slice(0, 30)}: ${where}`;
}"""


def assert_fully_shown(locator):
    """``locator``'s element, scrolled to, is whole on screen (not clipped by its card)."""
    expect(locator).to_be_visible()
    result = locator.evaluate(FULLY_SHOWN)
    assert result is True, result


def csp_violations(page):
    return page.evaluate("window.__cspViolations")


def check_chart_axes(page, name):
    """Every drawn axis label of chart ``name`` is unique on its axis and inside the canvas."""
    layout = page.evaluate(f"window.codaDashboard.charts[{name!r}].layout()")
    assert sorted(axis["axis"] for axis in layout["axes"]) == ["x", "y"], (
        f"{name}: an axis has no ticks: {layout}"
    )
    for axis in layout["axes"]:
        texts = [label["text"] for label in axis["labels"]]
        assert texts, f"{name} {axis['axis']}: no labels"
        assert len(texts) == len(set(texts)), f"{name} {axis['axis']} axis repeats a label: {texts}"
        for label in axis["labels"]:
            assert label["left"] >= -0.5 and label["right"] <= layout["width"] + 0.5, (
                f"{name} {axis['axis']} label {label['text']!r} is clipped: {label} in width {layout['width']}"
            )
            if axis["axis"] == "y":
                assert label["top"] >= -0.5 and label["bottom"] <= layout["height"] + 0.5, (
                    f"{name} y label {label['text']!r} is clipped vertically: {label}"
                )


def run_axe(page):
    """axe-core's WCAG 2.1 A and AA violations on the page, as readable lines."""
    result = page.evaluate("""async () => {
        const tags = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"];
        const r = await axe.run(document, {runOnly: {type: "tag", values: tags}, resultTypes: ["violations"]});
        const node = (n) => n.target.join(" ")
            + (n.failureSummary ? ` [${n.failureSummary.split("\\n").slice(1).join("; ")}]` : "");
        return r.violations.map((v) =>
            `${v.id} (${v.impact}): ${v.help} -> ${v.nodes.slice(0, 5).map(node).join(" | ")}`);
    }""")
    return result


@pytest.mark.parametrize("size_name", list(SIZES))
def test_dashboard_layout_at_size(size_name, browser, server_factory, screenshots):
    """At a phone, a half-screen window and a desktop size, after two turns:
    the event log has not moved (two columns), no sideways scrolling, every panel heading visible, whole connection
    labels and values, the earlier turn readable in its scrolling list,
    tables inside their cards, chart axes without repeated or clipped labels
    and legends with the latest value, the GPU chart replaced by its one-line
    empty state, no console error and no CSP violation; then axe-core finds
    no WCAG 2.1 A/AA violation. The screenshot is saved for a person."""
    server = server_factory()
    size = SIZES[size_name]
    context, page = new_page(browser, size, axe=True)
    try:
        response = page.goto(server.http_url)
        assert "script-src 'self'" in response.headers["content-security-policy"]
        expect(page.locator("#status-pill")).to_have_attribute("data-state", "connected")
        log_top = "() => document.querySelector('#panel-log').getBoundingClientRect().top + scrollY"
        before = page.evaluate(log_top)
        said = play_turns(server)
        wait_for_seq(page, server.sequence_number)
        if size_name != "phone":
            # The first turns fill the latency panel's reserved places: the log below stays put.
            assert abs(page.evaluate(log_top) - before) <= 1, "the page jumped when the first turns came"
        # The first turn moved to the previous turns when the second started.
        previous = page.locator("#conv-previous > li")
        expect(previous).to_have_count(1)
        expect(page.locator("#lat-chart")).to_have_attribute("data-points", "2")

        assert horizontal_overflow(page) <= 0, f"the page scrolls sideways at {size}"

        for heading in PANEL_HEADINGS:
            assert_fully_shown(page.get_by_role("heading", name=heading, exact=True))

        # Connection: no label overlaps another, no value is cut ("c.", "2..").
        boxes = page.eval_on_selector_all(
            "#panel-connection .stats > div",
            """divs => divs.map(d => {
            const dt = d.querySelector('dt'), dd = d.querySelector('dd');
            const r = dt.getBoundingClientRect();
            return {label: dt.textContent, value: dd.textContent,
                    box: [r.left, r.top, r.right, r.bottom],
                    cut: dt.scrollWidth > dt.clientWidth + 1 || dd.scrollWidth > dd.clientWidth + 1};
        })""",
        )
        assert [b["label"] for b in boxes] == [
            "Status",
            "Server",
            "Epoch",
            "Last seq",
            "Events/s",
            "Reconnects",
        ]
        assert not [b for b in boxes if b["cut"]], boxes
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                l1, t1, r1, b1 = a["box"]
                l2, t2, r2, b2 = b["box"]
                assert r1 <= l2 or r2 <= l1 or b1 <= t2 or b2 <= t1, f"{a['label']} overlaps {b['label']}"
        expect(page.locator("#conn-server")).to_have_text(re.compile(r"^coda-ws/\d+\.\d+"))

        # The earlier turn: its words are in a list tall enough to show it, and visible.
        earlier = previous.first.locator(".prev-user")
        expect(earlier).to_have_text(said[0])
        assert_fully_shown(earlier)
        heights = page.eval_on_selector(
            "#conv-previous", "l => [l.clientHeight, l.firstElementChild.offsetHeight]"
        )
        assert heights[0] >= heights[1] > 0, f"previous turns list {heights[0]} px for a {heights[1]} px turn"

        # Tables scroll inside their card, never past it.
        for table in ("#lat-table", "#clients-table"):
            inside = page.eval_on_selector(
                table,
                """t => {
                const wrap = t.closest('.table-wrap'), card = t.closest('.panel');
                if (card.hidden) return true;
                const w = wrap.getBoundingClientRect(), c = card.getBoundingClientRect();
                return w.left >= c.left - 0.5 && w.right <= c.right + 0.5;
            }""",
            )
            assert inside, f"{table} sticks out of its card at {size}"

        # Charts: axes without repeats or clipping; legends show the latest values.
        for chart in ("latency", "cpu", "memory"):
            check_chart_axes(page, chart)
        legend = page.locator("#lat-chart .u-legend .u-value").all_inner_texts()
        assert legend and "–" not in legend and "" not in legend, legend
        assert legend[0] == "2"  # the latest turn's number
        # No GPU reported: one line instead of an empty chart.
        expect(page.locator("#sys-gpu-figure")).to_be_hidden()
        expect(page.get_by_text("GPU memory: none reported")).to_be_visible()

        path = screenshots / f"dashboard-{size_name}-{size[0]}x{size[1]}.png"
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000
        print(f"\nscreenshot: {path}")

        assert csp_violations(page) == []
        assert page.probe.problems() == []
        violations = run_axe(page)
        assert violations == [], "\n".join(violations)
    finally:
        context.close()


def test_empty_dashboard_shows_one_line_states(browser, server_factory, screenshots):
    """A server with no events yet: the latency chart and the system charts
    give way to one-line empty states (no blank axes reading "1 ms 1 ms 1 ms
    0 ms"; the latency chart keeps its place, so the page does not jump when
    the first turn comes), at a desktop size and on a short window."""
    server = server_factory()
    for width, height in ((1280, 600), (360, 640)):
        context, page = new_page(browser, (width, height))
        try:
            open_dashboard(page, server.http_url)
            expect(page.locator("#lat-chart")).to_be_hidden()
            expect(page.get_by_text("No timed turns yet")).to_be_visible()
            expect(page.locator("#sys-charts")).to_be_hidden()
            expect(page.locator("#sys-empty")).to_be_visible()
            # Not only displayed: whole on screen, not clipped away by the conversation card.
            for text in ("Previous turns", "No previous turns yet.", "No events yet."):
                assert_fully_shown(page.get_by_text(text, exact=True))
            assert horizontal_overflow(page) <= 0
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(screenshots / f"dashboard-empty-{width}x{height}.png"), full_page=True)
            assert csp_violations(page) == []
            assert page.probe.problems() == []
        finally:
            context.close()


def test_first_sample_and_first_turn_are_drawn_with_axes(browser, server_factory):
    """One system_metrics sample and one timed turn: each chart draws its lone
    point (a line needs two) and labels both axes, without repeats or clipping."""
    server = server_factory()
    context, page = new_page(browser, SIZES["desktop"])
    try:
        open_dashboard(page, server.http_url)
        server.broadcast_system_metrics(512.0, 12.5, None, 30)
        assert run_demo_conversation(CodaWebSocketIntegration(server), pace=0.05, exchange=0)
        wait_for_seq(page, server.sequence_number)
        expect(page.locator("#lat-chart")).to_have_attribute("data-points", "1")
        for chart in ("latency", "cpu", "memory"):
            assert page.evaluate(f"""() => {{
                const u = window.codaDashboard.charts[{chart!r}].uplot;
                return u.data[0].length === 1 && u.series[1].points.show(u, 1, 0, 0);
            }}"""), f"{chart}: the lone sample is not drawn"
            check_chart_axes(page, chart)
        assert csp_violations(page) == []
    finally:
        context.close()


def test_short_window_keeps_previous_turns(browser, server_factory, screenshots):
    """In a short half-screen window (720x600, one column) and a short desktop
    window (1280x600), a long current turn never squeezes the previous turns
    away: the earlier turn stays readable and its list scrolls."""
    long_answer = " ".join(["A long answer that goes on."] * 60)
    for width, height in ((720, 600), (1280, 600)):
        server = server_factory()  # a fresh stream each: the replay would bring the other's turns
        integration = CodaWebSocketIntegration(server)
        context, page = new_page(browser, (width, height))
        try:
            open_dashboard(page, server.http_url)
            for index in range(4):
                integration.stt_start("push_to_talk")
                integration.stt_final_result(f"question number {index}", 0.9, 100.0)
                integration.llm_start(f"question number {index}", "llama3")
                integration.llm_result(long_answer, 100.0, 300, 30.0)
                last = integration.tts_result(100.0, 1000.0, True)
            wait_for_seq(page, last.seq)
            expect(page.locator("#conv-previous > li")).to_have_count(3)
            first = page.locator("#conv-previous > li .prev-user").first
            expect(first).to_have_text("question number 2")
            assert_fully_shown(first)
            height_px = page.eval_on_selector("#conv-previous", "l => l.clientHeight")
            assert height_px >= 140, f"previous turns squeezed to {height_px} px at {width}x{height}"
            assert_fully_shown(page.locator("#conv-previous > li .prev-user").last)  # the list scrolls to it
            assert horizontal_overflow(page) <= 0
            page.screenshot(path=str(screenshots / f"dashboard-short-{width}x{height}.png"))
        finally:
            context.close()


def test_keyboard_focus_is_visible(browser, server_factory):
    """Tabbing through the dashboard reaches the skip link, the debug link,
    the log's controls and a log row, each with a visible focus outline."""
    server = server_factory()
    server.emit("system_info", data={"event": "startup", "version": "1.0"})
    context, page = new_page(browser, SIZES["desktop"])
    try:
        open_dashboard(page, server.http_url)
        expect(page.locator("#log-rows > .log-row")).to_have_count(1)
        seen = []
        for _ in range(40):
            page.keyboard.press("Tab")
            focused = page.evaluate("""() => {
                const e = document.activeElement, s = getComputedStyle(e);
                return {id: e.id, cls: e.className, tag: e.tagName, text: (e.textContent || '').trim().slice(0, 20),
                        outline: s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 1};
            }""")
            seen.append(focused)
        tags = {(f["tag"], f["id"] or f["cls"]) for f in seen}
        assert ("A", "skip-link") in tags
        assert ("A", "debug-link") in tags
        assert ("INPUT", "log-search") in tags
        assert any(f["tag"] == "SUMMARY" for f in seen), seen
        hidden = [f for f in seen if not f["outline"] and f["tag"] != "BODY"]
        assert hidden == [], f"focus without a visible outline: {hidden}"
    finally:
        context.close()


def test_mounted_dashboard_works_under_its_csp(browser, server_factory):
    """Mounted on an application's app under /coda-ws/, the page still gets
    its security headers, connects its WebSocket (connect-src 'self' covers
    ws: to the same host) and shows events, with no CSP violation; the
    application's own pages keep their own headers."""
    app = Flask("host_application")

    @app.route("/")
    def home():
        return "the application's own page"

    server = server_factory(app=app)
    context, page = new_page(browser, SIZES["phone"])
    try:
        response = page.goto(server.http_url)
        headers = response.headers
        assert "connect-src 'self'" in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        expect(page.locator("#status-pill")).to_have_attribute("data-state", "connected")
        event = server.emit(
            "stt_result", session_id="s", text="hello from the app", confidence=0.9, duration_ms=10.0
        )
        wait_for_seq(page, event.seq)
        expect(page.locator("#log-rows .log-summary").first).to_have_text("“hello from the app”")
        assert horizontal_overflow(page) <= 0
        assert csp_violations(page) == []
        assert page.probe.problems() == []
        home = page.goto(server.http_url.replace("/coda-ws/", "/"))
        assert "content-security-policy" not in home.headers
    finally:
        context.close()


def test_debug_page_on_a_phone(browser, server_factory, screenshots):
    """The debug page at 390x844: one column, no sideways scrolling, its
    headings visible, no CSP violation and no axe-core WCAG A/AA violation."""
    server = server_factory()
    server.emit("llm_token", session_id="s", token="x" * 300, cumulative_text="x" * 300)
    context, page = new_page(browser, SIZES["phone"], axe=True)
    try:
        page.goto(server.http_url + "debug")
        expect(page.locator("#status-pill")).to_have_attribute("data-state", "connected")
        for heading in ("Live tail", "Emit a test event"):
            assert_fully_shown(page.get_by_role("heading", name=heading, exact=True))
        assert horizontal_overflow(page) <= 0
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(screenshots / "debug-phone-390x844.png"), full_page=True)
        assert csp_violations(page) == []
        assert page.probe.problems() == []
        violations = run_axe(page)
        assert violations == [], "\n".join(violations)
    finally:
        context.close()
