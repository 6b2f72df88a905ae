"""EventBus on its own: order, replay, history, resume, overflow and conflation policies."""

import dataclasses
import json
import threading

import pytest

from coda_ws import EventBus, EventFilter, InvalidEventError
from coda_ws.bus import CONFLATE_BACKLOG

from .test_events import SAMPLE_FIELDS


@pytest.fixture
def bus():
    bus = EventBus()
    yield bus
    bus.close()


def drain(sub):
    """Everything the subscription can read now, committed, as decoded dicts."""
    out = []
    while True:
        entries, position = sub.read()
        sub.commit(position)
        if not entries:
            return out
        out.extend(json.loads(entry.data) for entry in entries)


def test_emit_stamps_consecutive_seqs_and_returns_the_event(bus):
    """emit() returns the event with seq 1, 2, 3... and a timestamp."""
    first = bus.emit("stt_start", mode="continuous")
    second = bus.emit("tts_status", status="idle", session_id="s")
    assert (first.seq, second.seq) == (1, 2)
    assert second.session_id == "s" and second.timestamp >= first.timestamp
    assert bus.last_seq == 2


@pytest.mark.parametrize("type_name", sorted(SAMPLE_FIELDS))
def test_returned_event_is_the_dataclass_the_wire_describes(bus, type_name):
    """emit() builds its return value without the dataclass __init__: it must
    equal the event built the ordinary way from what went on the wire, and
    stay frozen."""
    sub = bus.subscribe()
    event = bus.emit(type_name, session_id="s1", **SAMPLE_FIELDS[type_name])
    bus.flush()
    (entry,), position = sub.read()
    sub.commit(position)
    assert event == entry.event()
    assert event.to_dict() == entry.to_dict()
    assert repr(event) == repr(entry.event())
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.seq = 99


def test_failed_emit_consumes_no_seq(bus):
    """An invalid event raises in the caller and leaves no gap in the stream."""
    bus.emit("stt_start", mode="a")
    with pytest.raises(InvalidEventError):
        bus.emit("stt_start", mode=5)
    with pytest.raises(ValueError):
        bus.emit("not_a_type")
    assert bus.emit("stt_start", mode="b").seq == 2


def test_subscriber_reads_everything_after_subscribing_in_order(bus):
    """A subscription gets exactly the events emitted after it, in seq order."""
    bus.emit("stt_start", mode="before")
    sub = bus.subscribe()
    for i in range(100):
        bus.emit("llm_token", token=str(i), cumulative_text="")
    assert bus.flush(5)
    got = drain(sub)
    assert [e["seq"] for e in got] == list(range(2, 102))
    assert [e["token"] for e in got] == [str(i) for i in range(100)]


def test_wire_bytes_are_frozen_at_emit(bus):
    """Mutating a dict after emitting it does not change what readers get."""
    sub = bus.subscribe()
    details = {"step": 1}
    bus.emit("system_error", level="error", message="m", details=details)
    details["step"] = 2
    bus.flush(5)
    assert drain(sub)[0]["details"] == {"step": 1}


def test_replay_keeps_high_priority_events_without_any_reader(bus):
    """High-priority events go to the replay buffer whether or not anyone listens; it is trimmed."""
    small = EventBus(max_replay_events=3)
    try:
        for i in range(5):
            small.emit("stt_result", text=str(i), confidence=1.0, duration_ms=1.0)
            small.emit("llm_token", token="t", cumulative_text="t")  # not high priority
        small.flush(5)
        assert [e["text"] for e in small.replay] == ["2", "3", "4"]
        assert all(e["type"] == "stt_result" for e in small.replay)
    finally:
        small.close()


def test_high_priority_override(bus):
    """high_priority=True/False overrides the type's default."""
    bus.emit("llm_token", token="a", cumulative_text="a", high_priority=True)
    bus.emit("stt_result", text="x", confidence=1.0, duration_ms=1.0, high_priority=False)
    bus.flush(5)
    assert [e["type"] for e in bus.replay] == ["llm_token"]
    with pytest.raises(TypeError, match="high_priority"):
        bus.emit("llm_token", token="a", cumulative_text="a", high_priority="yes")


def test_subscription_snapshot_matches_position(bus):
    """start_seq and replay describe the stream up to subscribe(); nothing is both replayed and delivered."""
    bus.emit("stt_result", text="a", confidence=1.0, duration_ms=1.0)
    sub = bus.subscribe()
    bus.emit("stt_result", text="b", confidence=1.0, duration_ms=1.0)
    bus.flush(5)
    assert sub.start_seq == 1
    assert [e["text"] for e in sub.replay] == ["a"]
    assert [e["text"] for e in drain(sub)] == ["b"]


def test_filters_apply_to_live_and_replay(bus):
    """types globs and session_id filter live delivery and the replay snapshot alike."""
    bus.emit("llm_result", text="r", duration_ms=1.0, token_count=1, tokens_per_second=1.0, session_id="a")
    bus.emit("stt_result", text="s", confidence=1.0, duration_ms=1.0, session_id="a")
    sub = bus.subscribe(types=["llm_*"], session_id="a")
    assert [e["type"] for e in sub.replay] == ["llm_result"]
    bus.emit("llm_token", token="1", cumulative_text="1", session_id="a")
    bus.emit("llm_token", token="2", cumulative_text="2", session_id="b")
    bus.emit("llm_token", token="3", cumulative_text="3")  # no session: matches every session filter
    bus.emit("stt_start", mode="m", session_id="a")
    bus.flush(5)
    assert [e["token"] for e in drain(sub)] == ["1", "3"]


def test_send_to_reaches_only_its_target_and_skips_replay(bus):
    """send_to() takes a seq, reaches one reader, and never enters replay or resume."""
    one = bus.subscribe(reader_id="one")
    two = bus.subscribe(reader_id="two")
    bus.send_to("one", "stt_result", text="private", confidence=1.0, duration_ms=1.0)
    bus.emit("tts_status", status="public")
    bus.flush(5)
    assert [e["seq"] for e in drain(one)] == [1, 2]
    assert [e["seq"] for e in drain(two)] == [2]
    assert bus.replay == []
    late = bus.subscribe(since=0)
    assert late.resume.recovered and late.resume.count == 1
    assert [e["seq"] for e in drain(late)] == [2]


def test_resume_recovers_missed_events(bus):
    """since=N replays N+1..head from history, then continues live, no gap and no duplicate."""
    for i in range(10):
        bus.emit("llm_token", token=str(i), cumulative_text="")
    sub = bus.subscribe(since=4, epoch=bus.epoch)
    assert sub.resume.recovered
    assert (sub.resume.first, sub.resume.last, sub.resume.count) == (5, 10, 6)
    bus.emit("llm_token", token="live", cumulative_text="")
    bus.flush(5)
    assert [e["seq"] for e in drain(sub)] == list(range(5, 12))


@pytest.mark.parametrize(
    "since, epoch, reason",
    [(3, "other-epoch", "epoch_changed"), (99, None, "unknown_position"), (1, None, "too_old")],
)
def test_resume_failures_say_why(since, epoch, reason):
    """Each recovered:false reason is produced with the oldest seq still held."""
    bus = EventBus(history_size=5, client_queue_size=5)
    try:
        for _ in range(10):
            bus.emit("tts_status", status="x")
        sub = bus.subscribe(since=since, epoch=epoch)
        assert not sub.resume.recovered
        assert sub.resume.reason == reason
        assert sub.resume.earliest == 6
        assert sub.resume.frame_dict() == {
            "type": "resume",
            "recovered": False,
            "reason": reason,
            "earliest": 6,
        }
    finally:
        bus.close()


def test_slow_reader_overflows_on_lossless_events_only():
    """A reader that falls more than client_queue_size lossless events behind is marked overflowed."""
    bus = EventBus(client_queue_size=10, history_size=1000)
    try:
        sub = bus.subscribe()
        for _ in range(10):
            bus.emit("llm_token", token="t", cumulative_text="t")
        bus.flush(5)
        assert sub.overflowed is None
        bus.emit("llm_token", token="t", cumulative_text="t")
        bus.flush(5)
        assert sub.overflowed is not None
        assert sub.read() == ([], sub.cursor)
        assert bus.stats()["overflows"] == 1
    finally:
        bus.close()


def test_conflatable_state_never_overflows_and_newest_wins():
    """A stalled reader flooded with metrics is not overflowed; it then gets the newest value."""
    bus = EventBus(client_queue_size=10, history_size=100)
    try:
        sub = bus.subscribe()
        for i in range(500):  # five times the whole history
            bus.emit("system_metrics", memory_mb=float(i), cpu_percent=1.0, uptime_seconds=1.0)
        bus.flush(5)
        assert sub.overflowed is None
        got = drain(sub)
        assert got[-1]["memory_mb"] == 499.0
        assert len(got) < 100  # older states were conflated...
        assert sub.conflated == 500 - len(got)  # ...and counted
        assert sub.overflowed is None
    finally:
        bus.close()


def test_state_is_not_conflated_for_a_reader_keeping_up(bus):
    """Below the backlog threshold every state update is delivered (e.g. TTS 25/50/75/100)."""
    sub = bus.subscribe()
    for p in (25, 50, 75, 100):
        bus.emit("tts_progress", progress_percent=p, session_id="s")
    bus.flush(5)
    assert [e["progress_percent"] for e in drain(sub)] == [25.0, 50.0, 75.0, 100.0]
    assert CONFLATE_BACKLOG > 4


def test_conflation_is_per_session():
    """tts_progress of two sessions is conflated separately: each keeps its newest."""
    bus = EventBus()
    try:
        sub = bus.subscribe()
        for i in range(200):
            bus.emit("tts_progress", progress_percent=float(i), session_id="a" if i % 2 else "b")
        bus.flush(5)
        got = drain(sub)
        last = {}
        for event in got:
            last[event["session_id"]] = event["progress_percent"]
        assert last == {"a": 199.0, "b": 198.0}
    finally:
        bus.close()


def test_subscribe_filter_change(bus):
    """set_filter applies from the next read on."""
    sub = bus.subscribe(types=["stt_*"])
    bus.emit("stt_start", mode="m")
    bus.flush(5)
    assert [e["type"] for e in drain(sub)] == ["stt_start"]
    sub.set_filter(EventFilter(["tts_*"]))
    bus.emit("stt_start", mode="m")
    bus.emit("tts_status", status="s")
    bus.flush(5)
    assert [e["type"] for e in drain(sub)] == ["tts_status"]


def test_concurrent_emitters_get_unique_ordered_seqs():
    """8 threads emitting at once: every seq once, and the stream is in seq order."""
    bus = EventBus(client_queue_size=10_000)
    sub = bus.subscribe()

    def produce(n):
        for i in range(1000):
            bus.emit("llm_token", token=f"{n}-{i}", cumulative_text="")

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bus.flush(5)
    got = []
    while True:
        entries, position = sub.read()
        sub.commit(position)
        if not entries:
            break
        got.extend(e.seq for e in entries)
    assert got == list(range(1, 8001))
    bus.close()


def test_listener_errors_are_isolated(bus, caplog):
    """A failing listener is logged and counted; dispatching goes on."""
    seen = []
    bus.add_listener(lambda entries: 1 / 0)
    bus.add_listener(lambda entries: seen.extend(e.seq for e in entries))
    bus.emit("tts_status", status="a")
    bus.emit("tts_status", status="b")
    bus.flush(5)
    assert seen == [1, 2]
    assert bus.stats()["listener_errors"] >= 1
    assert "bus listener" in caplog.text


def test_close_drains_and_joins_and_bus_stays_usable():
    """close() dispatches what was emitted, stops the thread; a later emit starts a new one."""
    bus = EventBus()
    for _ in range(100):
        bus.emit("tts_status", status="x")
    assert bus.close(5)
    assert bus.head == 100 and not bus.running
    assert not any(t.name == "coda-ws-dispatcher" for t in threading.enumerate())
    bus.emit("tts_status", status="y")
    assert bus.flush(5) and bus.head == 101
    assert bus.close(5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"history_size": 0}, "history_size"),
        ({"client_queue_size": 20, "history_size": 10}, "cannot exceed"),
        ({"max_replay_events": -1}, "max_replay_events"),
        ({"epoch": ""}, "epoch"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    """Out-of-range sizes raise ValueError naming the option."""
    with pytest.raises(ValueError, match=message):
        EventBus(**kwargs)


def test_reader_behind_but_not_blocked_is_not_overflowed():
    """A reader whose transport still accepts data (its writer just was not scheduled
    during a burst) is not "too slow": it keeps everything, up to the history's limit."""
    bus = EventBus(client_queue_size=10, history_size=1000)
    try:
        socket_full = [False]
        sub = bus.subscribe()
        sub.blocked = lambda: socket_full[0]
        for i in range(100):  # ten times the allowance
            bus.emit("llm_token", token=str(i), cumulative_text="")
        bus.flush(5)
        assert sub.overflowed is None
        assert [e["token"] for e in drain(sub)] == [str(i) for i in range(100)]
        socket_full[0] = True  # now the client stops reading: the allowance applies
        for _ in range(11):
            bus.emit("llm_token", token="x", cumulative_text="")
        bus.flush(5)
        assert sub.overflowed is not None
    finally:
        bus.close()


def test_reader_is_overflowed_before_it_would_lose_history():
    """Even when not blocked, a reader about to lose lossless events from the history is overflowed
    (then it resumes, or learns it cannot): no lossless event is dropped silently."""
    bus = EventBus(client_queue_size=10, history_size=100)
    try:
        sub = bus.subscribe()
        sub.blocked = lambda: False
        for i in range(95):
            bus.emit("llm_token", token=str(i), cumulative_text="")
        bus.flush(5)
        assert sub.overflowed is not None
        assert bus.stats()["overflows"] == 1
    finally:
        bus.close()


def test_restore_keeps_no_replay_record_for_an_event_of_unknown_type():
    """restore() without a replay list leaves a high-priority event of an unknown type out of the replay
    buffer also when it is older than the ring (it used to put None there, sent as a null event)."""
    from coda_ws.wire import StampedEvent

    def stamped(seq, type_name, high_priority, fields=b""):
        payload = b'{"version":"1.0","seq":%d,"timestamp":1.0,"type":"%s","session_id":null%s}' % (
            seq,
            type_name.encode(),
            fields,
        )
        return StampedEvent(seq, 1.0, type_name, None, high_priority, payload)

    bus = EventBus(history_size=2, client_queue_size=1)
    try:
        bus.restore(
            "e1",
            3,
            [
                stamped(1, "no_such_type", True),
                stamped(2, "tts_status", False, b',"status":"a"'),
                stamped(3, "tts_status", False, b',"status":"b"'),
            ],
        )
        assert bus.replay == []
        assert EventBus.replay_frame_json(bus.replay) == (b'{"type":"replay","events":[]}', 0)
        assert bus.subscribe(types=["stt_*"]).replay == []
    finally:
        bus.close()


def test_every_emit_wakes_the_dispatcher_without_flush():
    """The dispatcher's doorbell loses no wake-up: threads emitting at once,
    some after pauses (the dispatcher asleep), get every event published
    without anyone calling flush() (which rings the bell itself)."""
    bus = EventBus(history_size=50_000, client_queue_size=10_000)  # the reader reads at the end
    sub = bus.subscribe()
    published = threading.Event()
    total = 4 * 500
    bus.add_listener(lambda entries: published.set() if entries[-1].seq == total else None)
    start = threading.Barrier(4)

    def produce(k):
        start.wait()
        for i in range(500):
            bus.emit("tts_status", status=f"{k}.{i}")
            if i % 50 == k:
                threading.Event().wait(0.001)  # let the dispatcher fall asleep

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert published.wait(10), f"head stuck at {bus.stats()['events_dispatched']} of {total}"
        assert [event["seq"] for event in drain(sub)] == list(range(1, total + 1))
    finally:
        bus.close()


def test_doorbell_rings_once_per_wait_and_never_blocks_the_ringer():
    """Rings before a wait wake it once; rings while it is rung do nothing;
    a ring after the wait returned wakes the next one."""
    from coda_ws.bus import _Doorbell

    bell = _Doorbell()
    bell.wait()  # a new bell starts rung
    assert not bell.rung
    bell.ring()
    bell.ring()  # already rung: nothing to release
    bell.wait()
    woke = threading.Event()

    def owner():
        bell.wait()
        woke.set()

    thread = threading.Thread(target=owner)
    thread.start()
    assert not woke.wait(0.05)  # nobody rang since the last wait
    bell.ring()
    assert woke.wait(5)
    thread.join(5)


def test_a_dispatcher_started_after_close_takes_its_own_rings():
    """close() then emit(): the new dispatcher publishes (the old one's bell is not shared)."""
    bus = EventBus()
    sub = bus.subscribe()
    bus.emit("tts_status", status="a")
    assert bus.close()
    published = threading.Event()
    bus.add_listener(lambda entries: published.set())
    bus.emit("tts_status", status="b")
    try:
        assert published.wait(5)
        assert [event["status"] for event in drain(sub)] == ["a", "b"]
    finally:
        bus.close()


def test_emit_lookups_kept_from_earlier_calls_stay_exact(monkeypatch):
    """emit() keeps resolved type names and session ids' JSON from earlier
    calls (coda_ws.wire): every event still carries its own session id past
    the bound, bad session ids and unknown types still raise every time, and
    str subclasses take the checked path."""
    from coda_ws import wire

    monkeypatch.setattr(wire, "_SESSIONS", {})
    monkeypatch.setattr(wire, "_MAX_SESSIONS", 5)
    bus = EventBus(history_size=100)
    try:
        sessions = [f's{i % 8}\u00e9"' for i in range(20)]
        for session in sessions:
            bus.emit("tts_status", status="x", session_id=session)

        class Tagged(str):
            pass

        bus.emit("tts_status", status="y", session_id=Tagged("tagged"))
        for _ in range(2):
            with pytest.raises(InvalidEventError, match="session_id"):
                bus.emit("tts_status", status="z", session_id="\ud800")
            with pytest.raises(InvalidEventError, match="unknown event type"):
                bus.emit("tts_statuz", status="z")
        bus.flush(5)
        events = [entry.to_dict() for entry in bus.history()]
    finally:
        bus.close()
    assert [event["session_id"] for event in events] == sessions + ["tagged"]
    assert len(wire._SESSIONS) <= 5 and "\ud800" not in wire._SESSIONS
    assert "tts_statuz" not in wire._CLASSES


def test_emit_durations_are_all_counted_and_their_queue_stays_short():
    """The dispatcher folds emit() durations into their histogram only once a
    few hundred wait; a snapshot folds the rest itself, so none is missed."""
    from coda_ws.bus import _DRAIN_AT

    bus = EventBus()
    try:
        for i in range(3):
            bus.emit("tts_status", status=str(i))
            bus.flush()
        assert bus.emit_durations.snapshot().count == 3
        for i in range(5 * _DRAIN_AT):
            bus.emit("tts_status", status=str(i))
            bus.flush()
            assert len(bus.emit_durations.pending) <= _DRAIN_AT
        assert bus.emit_durations.snapshot().count == 3 + 5 * _DRAIN_AT
    finally:
        bus.close()
