"""GET /metrics through real sockets: the Prometheus exposition parses, counters match what
the test emitted and delivered, gauges follow live state exactly through client churn, and
drops, disconnects and resumes are counted by label."""

import json
import threading

import pytest
from flask import Flask

from ._http import get, samples, scrape, value
from .conftest import TIMEOUT, connect, recv_json, wait_for
from .rawws import RawClient


def _counted(server, name, suffix="_total", **labels):
    return value(scrape(server), name, suffix, **labels)


def test_exposition_parses_and_counters_match_emitted_and_delivered(server):
    """Every family parses; emitted-by-type, delivered and both histograms count exactly what happened."""
    with connect(server.url + "?replay=0") as client:
        assert server.wait_for_clients(1, TIMEOUT)
        for i in range(30):
            server.emit("stt_result", text=f"t{i}", confidence=0.9, duration_ms=1.0, session_id="s1")
        for i in range(12):
            server.emit("tts_status", status=f"s{i}")
        received = [recv_json(client) for _ in range(42)]
        assert [event["seq"] for event in received] == list(range(1, 43))

        wait_for(lambda: _counted(server, "coda_ws_events_delivered") == 42, message="42 delivered")
        families = scrape(server)
    assert samples(families, "coda_ws_events_emitted", "_total") == {
        (("type", "stt_result"),): 30.0,
        (("type", "tts_status"),): 12.0,
    }
    assert value(families, "coda_ws_events_delivered", "_total") == 42
    assert value(families, "coda_ws_emit_duration_seconds", "_count") == 42
    assert value(families, "coda_ws_emit_duration_seconds", "_bucket", le="+Inf") == 42
    assert value(families, "coda_ws_dispatch_lag_seconds", "_count") == 42
    assert value(families, "coda_ws_last_seq") == 42
    assert value(families, "coda_ws_history_events") == 42
    assert value(families, "coda_ws_replay_buffer_events") == 30  # stt_result is high priority
    assert value(families, "coda_ws_clients") == 1
    assert value(families, "coda_ws_connections", "_total") == 1
    # The process collectors are there, in this server's own registry.
    assert "process_cpu_seconds" in families and "python_info" in families


def test_a_failed_emit_is_not_counted(server):
    """An emit that raises takes no seq and adds nothing to emitted or to the duration histogram."""
    server.emit("tts_status", status="ok")
    with pytest.raises(TypeError):
        server.emit("tts_status", status=3)
    server.bus.flush(TIMEOUT)
    wait_for(lambda: _counted(server, "coda_ws_events_emitted", type="tts_status") == 1, message="1 emitted")
    families = scrape(server)
    assert value(families, "coda_ws_emit_duration_seconds", "_count") == 1
    assert value(families, "coda_ws_events_emitted", "_total", type="tts_status") == 1


def test_clients_gauge_is_exact_after_100_connects_and_disconnects(server):
    """After 100 connects and 97 disconnects (close frames and resets) the gauges show exactly 3 clients."""
    kept = []
    for i in range(100):
        client = RawClient(server.port)
        if i >= 97:
            kept.append(client)
        elif i % 2 == 0:
            client.send_close(1000)
            assert client.read_until_close() == ([], 1000)
            client.close()
        else:
            client.reset()
    wait_for(lambda: server.get_stats()["total_connections"] == 100, message="100 registered")
    wait_for(lambda: server.get_stats()["current_connections"] == 3, message="3 left")
    families = scrape(server)
    assert value(families, "coda_ws_clients") == 3
    assert len(samples(families, "coda_ws_client_queue_depth")) == 3
    assert len(samples(families, "coda_ws_client_lag_events")) == 3
    assert value(families, "coda_ws_connections", "_total") == 100
    assert samples(families, "coda_ws_disconnects", "_total") == {
        (("code", "1000"),): 49,
        (("code", "1006"),): 48,
    }

    for client in kept:
        client.send_close(1000)
        client.read_until_close()
        client.close()
    wait_for(lambda: server.get_stats()["current_connections"] == 0, message="all gone")
    families = scrape(server)
    assert value(families, "coda_ws_clients") == 0
    assert samples(families, "coda_ws_client_queue_depth") == {}
    assert samples(families, "coda_ws_client_lag_events") == {}
    assert value(families, "coda_ws_disconnects", "_total", code="1000") == 52


def test_paused_client_lag_and_queue_depth_rise_and_go_when_it_is_closed(server_factory):
    """A client that stops reading shows a growing lag and a non-empty writer queue; closed, it is gone."""
    # ping_timeout also bounds a blocked write: long enough that the paused client stays while we look.
    server = server_factory(history_size=2000, client_queue_size=1000, ping_timeout=60)
    paused = RawClient(server.port, "/", rcvbuf=4096)
    with connect(server.url + "?replay=0") as healthy:
        assert server.wait_for_clients(2, TIMEOUT)
        paused_id = next(cid for cid, conn in server.clients.items() if conn.user_agent == "")
        for i in range(600):  # ~10 MB: far more than the socket buffers hold
            server.emit("tool_result", tool_name="t", call_id=str(i), result="x" * 16_384, duration_ms=1.0)
            if i % 50 == 49:
                for _ in range(50):
                    healthy.recv(timeout=TIMEOUT)

        def paused_state():
            families = scrape(server)
            return (
                value(families, "coda_ws_client_lag_events", client=paused_id),
                value(families, "coda_ws_client_queue_depth", client=paused_id),
            )

        wait_for(
            lambda: paused_state()[0] > 100 and paused_state()[1] > 0,
            message=lambda: f"lag and queue depth up, got {paused_state()}",
        )
        healthy_id = next(cid for cid in server.clients if cid != paused_id)
        wait_for(
            lambda: value(scrape(server), "coda_ws_client_lag_events", client=healthy_id) == 0,
            message="the healthy client is not behind",
        )
        assert server.clients[paused_id].info()["lag"] > 100  # /stats tells the same story

        paused.reset()
        wait_for(lambda: paused_id not in server.clients, message="paused client removed")
        families = scrape(server)
        assert value(families, "coda_ws_clients") == 1
        assert set(samples(families, "coda_ws_client_lag_events")) == {(("client", healthy_id),)}
        assert sum(samples(families, "coda_ws_client_lag_events").values()) == 0
        assert sum(samples(families, "coda_ws_client_queue_depth").values()) == 0


def test_conflated_state_is_counted_as_dropped_by_type_and_reason(server):
    """State a slow reader skips (newer state waiting) shows under dropped{type, reason="conflated"}."""
    reader = server.bus.subscribe()
    for i in range(200):
        server.emit("system_metrics", memory_mb=float(i), cpu_percent=1.0, uptime_seconds=1.0)
    server.bus.flush(TIMEOUT)
    entries, position = reader.read()
    reader.commit(position)
    assert [json.loads(e.data)["memory_mb"] for e in entries] == [199.0]  # only the latest
    families = scrape(server)
    assert samples(families, "coda_ws_events_dropped", "_total") == {
        (("reason", "conflated"), ("type", "system_metrics")): 199,
    }
    reader.close()  # a closed reader's drops stay counted
    assert (
        value(scrape(server), "coda_ws_events_dropped", "_total", type="system_metrics", reason="conflated")
        == 199
    )
    assert server.get_stats()["events_dropped"] == 199


def test_resumes_are_counted_by_result(server):
    """Resume requests are counted as recovered or by the reason they were not."""
    server.emit("tts_status", status="a")
    with connect(server.url + "?v=1") as client:
        epoch = recv_json(client)["epoch"]
    with connect(f"{server.url}?since=0&epoch={epoch}"):
        pass
    with connect(f"{server.url}?since=0&epoch=someotherepoch"):
        pass
    with connect(f"{server.url}?since=99&epoch={epoch}"):
        pass
    wait_for(lambda: sum(server.get_stats()["resumes"].values()) == 3, message="3 resumes")
    assert samples(scrape(server), "coda_ws_resumes", "_total") == {
        (("result", "recovered"),): 1,
        (("result", "epoch_changed"),): 1,
        (("result", "unknown_position"),): 1,
    }


def test_scrapes_while_emitting_stay_valid(server):
    """Scrapes running next to emit() in other threads always parse, and nothing is lost."""
    stop = threading.Event()
    errors = []
    scrapes = []

    def scraper():
        while not stop.is_set():
            try:
                scrapes.append(value(scrape(server), "coda_ws_events_emitted", "_total", type="tts_status"))
            except Exception as exc:  # reported to the test thread below
                errors.append(exc)
                return

    thread = threading.Thread(target=scraper, name="test-scraper")
    thread.start()
    try:
        for _i in range(3000):
            server.emit("tts_status", status="x")
        wait_for(lambda: len(scrapes) >= 3, message="a few scrapes")
    finally:
        stop.set()
        thread.join(TIMEOUT)
    assert not errors
    assert scrapes == sorted(scrapes)  # a counter never goes back
    wait_for(lambda: _counted(server, "coda_ws_events_emitted", type="tts_status") == 3000, message="3000")


def test_each_server_has_its_own_registry(server_factory):
    """Two servers in one process report their own events, not each other's."""
    one, two = server_factory(), server_factory()
    for _ in range(3):
        one.emit("tts_status", status="one")
    for _ in range(5):
        two.emit("tts_status", status="two")
    wait_for(lambda: _counted(one, "coda_ws_events_emitted", type="tts_status") == 3, message="3 on one")
    wait_for(lambda: _counted(two, "coda_ws_events_emitted", type="tts_status") == 5, message="5 on two")


def test_metrics_need_admin_when_auth_is_on(server_factory):
    """With auth on, /metrics answers 401 without a token, 403 without admin, 200 with it."""
    server = server_factory(auth={"admintoken": ["admin"], "reader": ["read"]})
    assert get(server, "metrics").status == 401
    assert get(server, "metrics", token="reader").status == 403
    assert get(server, "metrics", token="admintoken").status == 200
    assert value(scrape(server, token="admintoken"), "coda_ws_clients") == 0


def test_mounted_server_serves_metrics_under_its_prefix(server_factory):
    """Mounted on an application's app, /metrics sits under url_prefix."""
    server = server_factory(app=Flask("host_app"))
    assert server.http_url.endswith("/coda-ws/")  # the helpers' paths are relative to it
    assert get(server, "metrics").status == 200
    assert get(server, "readyz").status == 200


def test_batches_of_one_are_counted_like_larger_ones(server):
    """Events dispatched one per batch (each flushed before the next, the usual
    case at steady rates) and in one burst are counted alike, by type."""
    for i in range(5):
        server.emit("tts_status", status=f"s{i}")
        server.bus.flush()
    for i in range(7):
        server.emit("stt_result", text=f"t{i}", confidence=0.9, duration_ms=1.0, session_id="s1")
    server.bus.flush()
    families = scrape(server)
    assert samples(families, "coda_ws_events_emitted", "_total") == {
        (("type", "stt_result"),): 7.0,
        (("type", "tts_status"),): 5.0,
    }
    assert value(families, "coda_ws_dispatch_lag_seconds", "_count") == 12
