"""The SQLite journal: restart with the same epoch and seq, resume across a
restart, history beyond the ring, retention, export, and a SIGKILLed server."""

import contextlib
import json
import signal
import sqlite3
import threading
import time

import pytest

from coda_ws import CodaWebSocketServer, EventBus, EventFilter, cli
from coda_ws.journal import Journal, read_journal
from coda_ws.wire import StampedEvent

from ._proc import CHILD_TIMEOUT, Child
from .conftest import TIMEOUT, connect, recv_json, wait_for


@contextlib.contextmanager
def open_v1(server, query=""):
    """A v1 client of ``server``; yields (ws, hello) and closes it."""
    with connect(f"{server.url}?v=1{'&' + query if query else ''}") as ws:
        hello = recv_json(ws)
        assert hello["type"] == "hello"
        yield ws, hello


def emit_tokens(server, count, start=0):
    for i in range(start, start + count):
        server.emit("llm_token", token=str(i), cumulative_text="", session_id="s1")


def journal_threads():
    return [t for t in threading.enumerate() if t.name == "coda-ws-journal"]


def test_restart_keeps_epoch_and_seq_and_clients_resume(server_factory, tmp_path):
    """10 000 events, stop, a new server on the same journal: same epoch, seq
    continues, and a client resumes from 5 000 with recovered: true and gets
    5 001..10 000, then live events."""
    path = tmp_path / "events.db"
    first = server_factory(journal=str(path))
    emit_tokens(first, 10_000)
    epoch = first.epoch
    first.stop()
    assert not journal_threads()

    second = server_factory(journal=str(path))
    assert second.epoch == epoch
    assert second.sequence_number == 10_000
    with open_v1(second, f"since=5000&epoch={epoch}") as (ws, hello):
        assert hello["epoch"] == epoch and hello["seq"] == 10_000
        assert recv_json(ws) == {
            "type": "resume",
            "recovered": True,
            "from": 5001,
            "to": 10_000,
            "count": 5000,
        }
        got = [recv_json(ws) for _ in range(5000)]
        assert [e["seq"] for e in got] == list(range(5001, 10_001))
        assert [e["token"] for e in got] == [str(i) for i in range(5000, 10_000)]
        assert second.emit("stt_start", mode="push_to_talk").seq == 10_001
        live = recv_json(ws)
        assert (live["seq"], live["type"]) == (10_001, "stt_start")


def test_replay_buffer_survives_a_restart(server_factory, tmp_path):
    """High-priority events come back in the replay frame after a restart,
    even when they are older than the history ring."""
    path = str(tmp_path / "events.db")
    first = server_factory(journal=path, history_size=50, client_queue_size=50)
    first.broadcast_system_info({"event": "startup"})
    emit_tokens(first, 200)
    first.stop()
    second = server_factory(journal=path, history_size=50, client_queue_size=50)
    with open_v1(second) as (ws, hello):
        assert hello["replay"] == 1
        replay = recv_json(ws)
        events = [(e["seq"], e["type"], e["data"]) for e in replay["events"]]
        assert events == [(1, "system_info", {"event": "startup"})]


def test_history_beyond_the_ring_comes_from_the_journal(server_factory, tmp_path):
    """bus.stored_history reaches back past history_size into the journal,
    filtered, limited, oldest first, before and after a restart."""
    path = str(tmp_path / "events.db")
    server = server_factory(journal=path, history_size=100, client_queue_size=100)
    for i in range(1000):
        server.emit("stt_result", text=str(i), confidence=1.0, duration_ms=1.0, session_id=f"s{i % 2}")
    assert server.bus.flush(TIMEOUT) and server.journal.flush(TIMEOUT)
    assert len(server.bus.history()) == 100
    for current in (server, None):
        if current is None:
            server.stop()
            current = server_factory(journal=path, history_size=100, client_queue_size=100)
        stored = current.bus.stored_history(0)
        assert [e.seq for e in stored] == list(range(1, 1001))
        assert json.loads(stored[0].data)["text"] == "0"
        some = current.bus.stored_history(850, limit=100)
        assert [e.seq for e in some] == list(range(851, 951))
        odd = current.bus.stored_history(0, EventFilter(["stt_*"], "s1"), limit=5)
        assert [e.seq for e in odd] == [2, 4, 6, 8, 10]
        assert current.bus.stored_history(0, EventFilter(["llm_*"])) == []


def test_retention_by_count_trims_and_resume_reports_too_old(server_factory, tmp_path):
    """journal_max_events keeps the newest N events; after a restart, older
    positions are answered with too_old and the oldest held seq."""
    path = str(tmp_path / "events.db")
    server = server_factory(journal=path, journal_max_events=100)
    emit_tokens(server, 1000)
    epoch = server.epoch
    assert server.bus.flush(TIMEOUT) and server.journal.flush(TIMEOUT)
    assert server.journal.count() == 100
    assert [json.loads(line)["seq"] for line in read_journal(path)] == list(range(901, 1001))
    server.stop()
    restarted = server_factory(journal=path, journal_max_events=100)
    assert restarted.epoch == epoch and restarted.sequence_number == 1000
    with open_v1(restarted, f"since=500&epoch={epoch}") as (ws, _):
        assert recv_json(ws) == {"type": "resume", "recovered": False, "reason": "too_old", "earliest": 901}
    with open_v1(restarted, f"since=950&epoch={epoch}") as (ws, _):
        assert recv_json(ws)["count"] == 50
        assert [recv_json(ws)["seq"] for _ in range(50)] == list(range(951, 1001))


def _wire(seq, timestamp, mode):
    return json.dumps(
        {
            "version": "1.0",
            "seq": seq,
            "timestamp": timestamp,
            "type": "stt_start",
            "session_id": None,
            "mode": mode,
        },
        separators=(",", ":"),
    ).encode()


class _Sequencer:
    """Stands in for a backplane: lets the test ingest events with chosen timestamps."""

    def publish(self, *args):
        raise AssertionError("nothing is emitted locally in this test")


def test_retention_by_age_drops_old_events(tmp_path):
    """journal_max_age drops events older than that many seconds, judged by
    their timestamps, at the next commit."""
    path = str(tmp_path / "events.db")
    bus = EventBus()
    journal = Journal(path, max_age=60)
    journal.attach(bus)
    bus.set_sequencer(_Sequencer())
    try:
        old, now = time.time() - 3600, time.time()
        bus.ingest(
            [StampedEvent(i, old, "stt_start", None, False, _wire(i, old, "old")) for i in range(1, 51)]
        )
        bus.ingest(
            [StampedEvent(i, now, "stt_start", None, False, _wire(i, now, "new")) for i in range(51, 61)]
        )
        assert journal.flush(TIMEOUT)
        assert journal.count() == 10
        assert [json.loads(line)["mode"] for line in read_journal(path)] == ["new"] * 10
        assert journal.stats()["trimmed"] == 50
    finally:
        bus.close()
        journal.close()


def test_single_client_events_are_not_journaled_and_resume_skips_them(server_factory, tmp_path):
    """send_to_client events take a seq but are not stored; after a restart
    their positions are holes that resume skips, with no overflow."""
    path = str(tmp_path / "events.db")
    server = server_factory(journal=path)
    with open_v1(server) as (ws, hello):
        recv_json(ws)  # replay
        emit_tokens(server, 3)
        assert server.send_to_client(hello["client_id"], "system_info", {"data": {"x": 1}})
        emit_tokens(server, 3, start=3)
        assert [recv_json(ws)["seq"] for _ in range(7)] == list(range(1, 8))
    epoch = server.epoch
    server.stop()
    restarted = server_factory(journal=path)
    assert restarted.sequence_number == 7
    assert [e.seq for e in restarted.bus.stored_history(0)] == [1, 2, 3, 5, 6, 7]
    with open_v1(restarted, f"since=0&epoch={epoch}") as (ws, _):
        assert recv_json(ws) == {"type": "resume", "recovered": True, "from": 1, "to": 7, "count": 6}
        assert [recv_json(ws)["seq"] for _ in range(6)] == [1, 2, 3, 5, 6, 7]
        assert restarted.emit("stt_start", mode="x").seq == 8
        assert recv_json(ws)["seq"] == 8


def test_stopped_and_restarted_server_keeps_journaling(server_factory, tmp_path):
    """stop() commits and joins the writer; the same server started again
    journals on, and the file holds everything."""
    path = str(tmp_path / "events.db")
    server = server_factory(journal=path)
    emit_tokens(server, 10)
    server.stop()
    assert not journal_threads()
    assert len(list(read_journal(path))) == 10
    server.start()
    emit_tokens(server, 10, start=10)
    server.stop()
    assert not journal_threads()
    assert [json.loads(line)["token"] for line in read_journal(path)] == [str(i) for i in range(20)]
    assert server.get_stats()["journal"]["events_written"] == 20


def test_export_command_prints_json_lines(server_factory, tmp_path, capsys):
    """coda-ws export FILE --since N --types ... prints the stored events as JSON lines."""
    path = str(tmp_path / "events.db")
    server = server_factory(journal=path)
    for i in range(6):
        server.emit("stt_start", mode=str(i))
        server.emit("llm_token", token=str(i), cumulative_text="")
    server.stop()
    assert cli.main(["export", path, "--since", "4", "--types", "stt_*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [(e["seq"], e["mode"]) for e in map(json.loads, lines)] == [
        (5, "2"),
        (7, "3"),
        (9, "4"),
        (11, "5"),
    ]
    assert cli.main(["export", path, "--limit", "2"]) == 0
    assert [json.loads(line)["seq"] for line in capsys.readouterr().out.splitlines()] == [1, 2]
    assert cli.main(["export", str(tmp_path / "missing.db")]) == 1
    assert "missing.db" in capsys.readouterr().err


def test_journal_and_backplane_are_exclusive(tmp_path):
    """A server takes a journal or a backplane, not both."""
    with pytest.raises(ValueError, match="exclusive"):
        CodaWebSocketServer(journal=str(tmp_path / "x.db"), backplane="redis://127.0.0.1:6379/0")


_CRASH_CHILD = """
import sys, time
from coda_ws import CodaWebSocketServer
server = CodaWebSocketServer(host="127.0.0.1", port=0, journal=sys.argv[1])
server.start()
print("epoch", server.epoch, flush=True)
i = 0
while True:
    event = server.emit("llm_token", token=str(i), cumulative_text="")
    print("emitted", event.seq, repr(event.timestamp), flush=True)
    i += 1
    time.sleep(0.001)  # about a thousand events a second
"""


def test_sigkilled_server_loses_at_most_the_last_flush_interval(server_factory, tmp_path):
    """A server killed with SIGKILL while emitting: the journal holds every
    event emitted more than flush_interval (plus scheduling slack) before the
    kill; a new server keeps the epoch, continues above the seq reservation
    with the uncommitted positions recorded as a lost window, a client of a
    committed position resumes, and one inside the window is told it is lost."""
    path = str(tmp_path / "events.db")
    child = Child("-c", _CRASH_CHILD, path)
    try:
        old_epoch = child.wait_for_output(r"^epoch (\w+)").group(1)
        child.wait_for_output(r"^emitted 1500 ")
        killed_at = time.time()
        child.proc.send_signal(signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
    finally:
        child.kill()
    emitted = {}
    for line in child.stdout_lines:
        parts = line.split()
        if len(parts) == 3 and parts[0] == "emitted":
            emitted[int(parts[1])] = float(parts[2])
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    server = server_factory(journal=path)
    stored = server.bus.stored_history(0)
    committed = stored[-1].seq
    lost = [seq for seq in emitted if seq > committed]
    window = max((killed_at - emitted[seq] for seq in lost), default=0.0)
    # At most the last batch, which spans flush_interval (0.2 s); allow 0.5 s
    # of scheduling delay on a loaded machine.
    assert window <= 0.2 + 0.5, f"lost {len(lost)} events emitted up to {window:.3f} s before the kill"
    assert committed >= 1000
    assert [e.seq for e in stored] == list(range(1, committed + 1))
    tokens = [json.loads(e.data)["token"] for e in stored[-3:]]
    assert tokens == [str(s - 1) for s in range(committed - 2, committed + 1)]

    assert server.epoch == old_epoch  # seqs are never reused, so the epoch stays
    reserved = server.sequence_number
    assert reserved >= committed
    windows = server.get_stats()["journal"]["lost_windows"]
    assert windows == ([[committed + 1, reserved]] if reserved > committed else [])
    assert server.emit("stt_start", mode="after").seq == reserved + 1
    with open_v1(server, f"since={committed - 5}&epoch={old_epoch}") as (ws, _):
        assert recv_json(ws) == {
            "type": "resume",
            "recovered": True,
            "from": committed - 4,
            "to": reserved + 1,
            "count": 6,
        }
        assert [recv_json(ws)["seq"] for _ in range(6)] == [
            *range(committed - 4, committed + 1),
            reserved + 1,
        ]
    if reserved > committed:
        with open_v1(server, f"since={committed + 1}&epoch={old_epoch}") as (ws, _):
            frame = recv_json(ws)
            assert (frame["reason"], frame["lost"]) == ("lost", [committed + 1, reserved])
    wait_for(lambda: not server.get_connected_clients(), CHILD_TIMEOUT, "clients to go")


def test_serve_command_with_journal(tmp_path):
    """``coda-ws serve --journal FILE`` creates the journal, and a second run
    continues its epoch."""
    path = str(tmp_path / "events.db")
    epochs = []
    for _ in range(2):
        child = Child(
            "-m",
            "coda_ws",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--journal",
            path,
            "--journal-max-events",
            "1000",
        )
        try:
            url = child.ws_url()
            with connect(f"{url}?v=1", open_timeout=CHILD_TIMEOUT) as ws:
                epochs.append(recv_json(ws, CHILD_TIMEOUT)["epoch"])
            child.interrupt()
            assert child.wait() == 0, child.describe()
        finally:
            child.kill()
    assert epochs[0] == epochs[1]
