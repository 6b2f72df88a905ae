"""The dashboard survives a server restart while the page is open."""

from playwright.sync_api import expect

from .conftest import free_port
from .helpers import log_seqs, open_dashboard, wait_for_seq


def _emit_batch(server, count, label):
    return [
        server.emit(
            "tool_call", session_id="s1", tool_name=label, parameters={"i": i}, call_id=f"{label}-{i}"
        ).seq
        for i in range(count)
    ]


def test_same_epoch_reconnect_shows_no_gap_and_no_duplicates(server, page):
    """The same server object stopped and started on its port keeps its epoch
    and history: the page reconnects by itself, resumes, shows every event
    exactly once and no not-recovered notice."""
    first = _emit_batch(server, 5, "before")  # replayed? no: tool_call is not high priority
    open_dashboard(page, server.http_url)
    live = _emit_batch(server, 5, "live")
    wait_for_seq(page, live[-1])
    server.stop()
    expect(page.locator("#status-pill")).not_to_have_attribute("data-state", "connected")
    missed = _emit_batch(server, 5, "missed")  # emitted while the server is down
    server.start()
    expect(page.locator("#status-pill")).to_have_attribute("data-state", "connected")
    expect(page.locator("#conn-reconnects")).to_have_text("1")
    after = _emit_batch(server, 2, "after")
    wait_for_seq(page, after[-1])
    expect(page.locator("#gap-notice")).to_be_hidden()
    expect(page.locator("#conn-epoch")).to_have_attribute("data-epoch", server.epoch)
    seqs = log_seqs(page)
    assert seqs == sorted(live + missed + after, reverse=True)
    assert not set(first) & set(seqs)


def test_new_epoch_reconnect_shows_not_recovered_notice(server_factory, page):
    """A new server object on the same port has a new epoch: the page
    reconnects, shows the not-recovered notice and follows the new stream."""
    port = free_port()
    old = server_factory(port=port)
    open_dashboard(page, old.http_url)
    seen = _emit_batch(old, 3, "old")
    wait_for_seq(page, seen[-1])
    expect(page.locator("#gap-notice")).to_be_hidden()
    old.stop()
    expect(page.locator("#status-pill")).not_to_have_attribute("data-state", "connected")
    new = server_factory(port=port)
    startup = new.emit("system_info", data={"event": "startup"})
    notice = page.locator("#gap-notice")
    expect(notice).to_be_visible()
    expect(notice).to_have_attribute("data-reason", "epoch_changed")
    expect(notice).to_contain_text("new epoch")
    expect(page.locator("#conn-epoch")).to_have_attribute("data-epoch", new.epoch)
    expect(page.locator("#status-pill")).to_have_attribute("data-state", "connected")
    live = new.emit("llm_token", session_id="s1", token="x", cumulative_text="x")
    expect(page.locator(f"#log-rows > .log-row[data-type=llm_token][data-seq='{live.seq}']")).to_have_count(1)
    # The new stream's replayed startup event shows once, next to the old stream's rows.
    expect(
        page.locator(f"#log-rows > .log-row[data-type=system_info][data-seq='{startup.seq}']")
    ).to_have_count(1)
    page.click("#gap-dismiss")
    expect(notice).to_be_hidden()
