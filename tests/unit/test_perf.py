"""WebSocketPerfIntegration: the metrics thread, timings, summaries."""

import functools
import sys
import threading
import time
import types

import psutil
import pytest

from coda_ws import EventBus, InvalidEventError
from coda_ws.perf import WebSocketPerfIntegration
from tests.conftest import TIMEOUT, connect, recv_json, recv_until, wait_for


def _metrics_threads():
    return [t for t in threading.enumerate() if t.name == "coda-ws-metrics"]


def _frames_of_type(ws, event_type, count, timeout=TIMEOUT):
    frames = []
    deadline = time.monotonic() + timeout
    while len(frames) < count:
        frame = recv_json(ws, max(0.01, deadline - time.monotonic()))
        if frame.get("type") == event_type:
            frames.append(frame)
    return frames


@pytest.fixture
def perf_factory():
    """Make WebSocketPerfIntegrations; every one is stopped after the test."""
    made = []

    def make(server, **kwargs):
        perf = WebSocketPerfIntegration(server, **kwargs)
        made.append(perf)
        return perf

    yield make
    for perf in made:
        perf.stop()


# -- the metrics thread ---------------------------------------------------------------


def test_first_metrics_arrive_at_once_with_real_values(server, perf_factory):
    """start() emits system_metrics at once (long before the interval) with a
    real, positive CPU value (not psutil's first 0.0), this process's RSS in
    MB, no GPU, and the seconds since the process started."""
    perf = perf_factory(server, metrics_interval=30.0)
    with connect(server.url) as ws:
        started = time.monotonic()
        perf.start()
        (frame,) = _frames_of_type(ws, "system_metrics", 1)
        assert time.monotonic() - started < TIMEOUT  # the interval is 30 s
    assert list(frame)[5:] == ["memory_mb", "cpu_percent", "gpu_vram_mb", "uptime_seconds"]
    assert frame["session_id"] is None
    assert isinstance(frame["cpu_percent"], float) and frame["cpu_percent"] > 0.0
    rss_mb = psutil.Process().memory_info().rss / 1024 / 1024
    assert isinstance(frame["memory_mb"], float)
    assert 0.5 * rss_mb < frame["memory_mb"] < 2 * rss_mb
    assert frame["gpu_vram_mb"] is None  # no NVIDIA GPU (or nvidia-ml-py) on the test machines
    process_age = time.time() - psutil.Process().create_time()
    assert 0 < frame["uptime_seconds"] <= process_age + 1


def test_metrics_interval_is_honoured(server, perf_factory):
    """Reports come every metrics_interval seconds on average, within
    tolerance (reports are scheduled on a fixed grid, so one late report does
    not shift the ones after it)."""
    interval = 0.25
    perf = perf_factory(server, metrics_interval=interval)
    with connect(server.url) as ws:
        perf.start()
        frames = _frames_of_type(ws, "system_metrics", 6)
    stamps = [frame["timestamp"] for frame in frames]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert 0.8 * interval < (stamps[-1] - stamps[0]) / len(gaps) < 1.5 * interval, gaps
    assert max(gaps) < 3 * interval, gaps


def test_stop_joins_the_metrics_thread(server, perf_factory):
    """stop() ends and joins the named metrics thread at once (it waits on an
    event, not a sleep), is idempotent, and no report follows it."""
    perf = perf_factory(server, metrics_interval=60.0)
    perf.start()
    assert perf.running and len(_metrics_threads()) == 1
    started = time.monotonic()
    assert perf.stop() is True
    assert time.monotonic() - started < 2.0  # far below the 60 s interval
    assert not perf.running and _metrics_threads() == []
    assert perf.stop() is True
    server.bus.flush(TIMEOUT)
    last = server.sequence_number
    with connect(server.url + "?replay=0") as ws:
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.3)
    assert server.sequence_number == last


def test_start_is_idempotent_and_restartable(server, perf_factory):
    """start() twice runs one thread; after stop(), start() reports again."""
    perf = perf_factory(server, metrics_interval=60.0)
    with connect(server.url) as ws:
        perf.start()
        perf.start()
        assert len(_metrics_threads()) == 1
        _frames_of_type(ws, "system_metrics", 1)
        perf.stop()
        perf.start()
        _frames_of_type(ws, "system_metrics", 1)
    perf.stop()
    assert _metrics_threads() == []


def test_stopping_the_server_stops_the_metrics_thread(server_factory, perf_factory):
    """The metrics thread registers with the server: server.stop() ends it."""
    server = server_factory()
    perf = perf_factory(server, metrics_interval=60.0)
    perf.start()
    assert perf.running
    server.stop()
    assert not perf.running
    assert _metrics_threads() == []


def test_stop_unregisters_from_the_server(server_factory):
    """After perf.stop(), stopping the server does not call it again: the
    stop callback was removed."""
    calls = []

    class CountingPerf(WebSocketPerfIntegration):
        def stop(self, timeout=5.0):
            calls.append(timeout)
            return super().stop(timeout)

    server = server_factory()
    perf = CountingPerf(server, metrics_interval=60.0)
    perf.start()
    perf.stop()
    assert len(calls) == 1
    server.stop()
    assert len(calls) == 1
    assert _metrics_threads() == []


def test_runs_on_a_bare_event_bus(perf_factory):
    """With a bare EventBus (no add_stop_callback) the thread still reports
    and stop() joins it."""
    bus = EventBus()
    try:
        perf = perf_factory(bus, metrics_interval=60.0)
        perf.start()
        wait_for(lambda: bus.last_seq >= 1, message="first system_metrics")
        assert perf.stop()
        assert bus.flush(TIMEOUT)
        assert [entry.type for entry in bus.history()] == ["system_metrics"]
        assert _metrics_threads() == []
    finally:
        bus.close()


def test_a_failing_report_does_not_end_the_thread(server, perf_factory, monkeypatch, caplog):
    """An exception while collecting is logged and the next report still comes."""
    perf = perf_factory(server, metrics_interval=0.1)
    real_memory_info = psutil.Process.memory_info
    failures = []

    @functools.wraps(real_memory_info)  # keeps psutil's oneshot() cache hooks
    def flaky_memory_info(process):
        if not failures:
            failures.append(1)
            raise psutil.AccessDenied()
        return real_memory_info(process)

    monkeypatch.setattr(psutil.Process, "memory_info", flaky_memory_info)
    with connect(server.url) as ws:
        perf.start()
        _frames_of_type(ws, "system_metrics", 1)
    assert failures and "system metrics report failed" in caplog.text


@pytest.mark.parametrize("interval", [0, -1, float("nan"), "5", True])
def test_rejects_bad_intervals(interval):
    """metrics_interval must be a positive number of seconds."""
    with pytest.raises(ValueError, match="metrics_interval"):
        WebSocketPerfIntegration(EventBus(), metrics_interval=interval)


def test_rejects_an_object_without_emit():
    """The emitter needs an emit() method."""
    with pytest.raises(TypeError, match="emit"):
        WebSocketPerfIntegration(object())


# -- GPU memory ---------------------------------------------------------------------


class _FakeNVMLError(Exception):
    pass


def _fake_pynvml(used_bytes=(), fail_init=False, fail_query=False):
    module = types.ModuleType("pynvml")
    module.NVMLError = _FakeNVMLError
    module.calls = []

    def init():
        module.calls.append("init")
        if fail_init:
            raise _FakeNVMLError("Driver Not Loaded")

    def query(handle):
        if fail_query:
            raise _FakeNVMLError("GPU is lost")
        return types.SimpleNamespace(used=used_bytes[handle], total=16 << 30, free=0)

    module.nvmlInit = init
    module.nvmlShutdown = lambda: module.calls.append("shutdown")
    module.nvmlDeviceGetCount = lambda: len(used_bytes)
    module.nvmlDeviceGetHandleByIndex = lambda index: index
    module.nvmlDeviceGetMemoryInfo = query
    return module


def test_gpu_memory_in_mb_when_nvml_reports_devices(monkeypatch):
    """With nvidia-ml-py present, gpu_vram_mb is the memory in use on the
    visible GPUs, in MB; stop() shuts NVML down."""
    fake = _fake_pynvml(used_bytes=(512 * 1024 * 1024, 256 * 1024 * 1024))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    bus = EventBus()
    try:
        perf = WebSocketPerfIntegration(bus, metrics_interval=60.0)
        assert perf.collect_metrics()["gpu_vram_mb"] == 768.0
        perf.start()
        perf.stop()
        assert bus.flush(TIMEOUT)
        assert bus.history()[0].to_dict()["gpu_vram_mb"] == 768.0
        assert fake.calls[0] == "init" and fake.calls[-1] == "shutdown"
    finally:
        bus.close()


@pytest.mark.parametrize(
    "fake",
    [
        None,  # nvidia-ml-py not installed: importing pynvml fails
        _fake_pynvml(fail_init=True),  # no driver
        _fake_pynvml(used_bytes=(1,), fail_query=True),  # an NVML error while reading
        _fake_pynvml(used_bytes=()),  # no device
    ],
    ids=["not-installed", "init-error", "query-error", "no-device"],
)
def test_gpu_memory_is_null_without_a_usable_gpu(monkeypatch, fake):
    """Without nvidia-ml-py, without a driver or device, or on an NVML error,
    gpu_vram_mb is None and nothing raises."""
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    perf = WebSocketPerfIntegration(EventBus(), metrics_interval=60.0)
    metrics = perf.collect_metrics()
    assert metrics["gpu_vram_mb"] is None
    assert metrics["memory_mb"] > 0
    perf.stop()


# -- timings ---------------------------------------------------------------------------


def test_time_operation_as_context_manager(server):
    """The with block is timed with perf_counter and reported as a
    latency_trace in milliseconds, with its metadata."""
    perf = WebSocketPerfIntegration(server)
    with connect(server.url) as ws:
        with perf.time_operation("stt", "transcribe", {"model": "whisper"}) as timer:
            threading.Event().wait(0.05)
        frame = recv_json(ws)
    assert frame["type"] == "latency_trace"
    assert (frame["component"], frame["operation"], frame["metadata"]) == (
        "stt",
        "transcribe",
        {"model": "whisper"},
    )
    assert (
        isinstance(frame["duration_ms"], float) and 50.0 <= frame["duration_ms"] < 10_000.0
    )  # ms, not s or us
    assert frame["duration_ms"] == timer.duration_ms
    assert perf.get_performance_summary()["operation_timings"]["stt.transcribe"]["count"] == 1


def test_time_operation_reports_and_reraises_on_error(server):
    """When the block raises, the duration is still reported (metadata names
    the exception) and the exception propagates unchanged."""
    perf = WebSocketPerfIntegration(server)
    with connect(server.url) as ws:
        with pytest.raises(KeyError, match="missing"):
            with perf.time_operation("memory", "lookup", {"query": "tea"}):
                raise KeyError("missing")
        frame = recv_json(ws)
    assert frame["type"] == "latency_trace"
    assert frame["metadata"] == {"query": "tea", "error": "KeyError"}
    assert frame["duration_ms"] >= 0.0
    assert perf.get_performance_summary()["operation_timings"]["memory.lookup"]["count"] == 1


def test_time_operation_as_decorator(server):
    """As a decorator, every call is timed and reported; the function keeps
    its name and return value; a raising call is reported and re-raised."""
    perf = WebSocketPerfIntegration(server)

    @perf.time_operation("llm", "generate")
    def generate(prompt, *, fail=False):
        """Docstring kept."""
        if fail:
            raise RuntimeError("model crashed")
        return prompt.upper()

    assert generate.__name__ == "generate" and generate.__doc__ == "Docstring kept."
    with connect(server.url) as ws:
        assert generate("hi") == "HI"
        assert generate("yo") == "YO"
        with pytest.raises(RuntimeError, match="model crashed"):
            generate("x", fail=True)
        frames = [recv_json(ws) for _ in range(3)]
    assert [f["type"] for f in frames] == ["latency_trace"] * 3
    assert [f["metadata"] for f in frames] == [None, None, {"error": "RuntimeError"}]
    assert perf.get_performance_summary()["operation_timings"]["llm.generate"]["count"] == 3


def test_concurrent_timing_gives_exact_counts():
    """8 threads timing the same operation at once, through the context
    manager and the decorator: every timing is counted and emitted."""
    bus = EventBus()
    perf = WebSocketPerfIntegration(bus)
    barrier = threading.Barrier(8)

    @perf.time_operation("tts", "synthesize")
    def synthesize():
        return None

    def work():
        barrier.wait()
        for _ in range(100):
            with perf.time_operation("tts", "synthesize"):
                pass
            synthesize()
            perf.increment_counter("calls")

    threads = [threading.Thread(target=work, name=f"timer-{i}") for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    try:
        summary = perf.get_performance_summary()
        assert summary["operation_timings"]["tts.synthesize"]["count"] == 1600
        assert summary["counters"] == {"calls": 800}
        assert bus.flush(TIMEOUT)
        assert len(bus.history()) == 1600
    finally:
        bus.close()


def test_track_operation_emits_and_records_milliseconds(server):
    """track_operation emits latency_trace and records the value as given, in
    milliseconds (1200.0 stays 1200.0, an int becomes a float)."""
    perf = WebSocketPerfIntegration(server)
    with connect(server.url) as ws:
        event = perf.track_operation("llm", "generate", 1200, {"tokens": 45})
        frame = recv_json(ws)
    assert frame == {
        "version": "1.0",
        "seq": event.seq,
        "timestamp": event.timestamp,
        "type": "latency_trace",
        "session_id": None,
        "component": "llm",
        "operation": "generate",
        "duration_ms": 1200.0,
        "metadata": {"tokens": 45},
    }
    assert isinstance(frame["duration_ms"], float)
    stats = perf.get_performance_summary()["operation_timings"]["llm.generate"]
    assert stats["mean_ms"] == stats["max_ms"] == stats["p50_ms"] == stats["last_ms"] == 1200.0


def test_track_component_timings_emits_and_records(server):
    """track_component_timings emits component_timing (floats) and records each
    operation under "component.operation" in milliseconds."""
    perf = WebSocketPerfIntegration(server)
    with connect(server.url) as ws:
        perf.track_component_timings("memory", {"encode": 150, "search": 75.5})
        frame = recv_json(ws)
    assert frame["type"] == "component_timing" and frame["session_id"] is None
    assert frame["component"] == "memory"
    assert frame["timings"] == {"encode": 150.0, "search": 75.5}
    assert all(isinstance(value, float) for value in frame["timings"].values())
    timings = perf.get_performance_summary()["operation_timings"]
    assert timings["memory.encode"]["mean_ms"] == 150.0
    assert timings["memory.search"]["max_ms"] == 75.5


def test_invalid_timings_raise_and_record_nothing():
    """A bad value raises InvalidEventError naming the field and is not recorded."""
    bus = EventBus()
    perf = WebSocketPerfIntegration(bus)
    try:
        with pytest.raises(InvalidEventError, match="duration_ms"):
            perf.track_operation("llm", "generate", "slow")
        with pytest.raises(InvalidEventError, match="timings"):
            perf.track_component_timings("memory", {"search": "fast"})
        assert perf.get_performance_summary()["operation_timings"] == {}
    finally:
        bus.close()


def test_summary_statistics():
    """count, mean, p50, p95, p99 and max (ms), interpolated between ranks."""
    bus = EventBus()
    perf = WebSocketPerfIntegration(bus)
    try:
        for ms in range(100, 0, -1):  # 1..100 ms, in reverse order
            perf.track_operation("stt", "transcribe", ms)
        stats = perf.get_performance_summary()["operation_timings"]["stt.transcribe"]
        assert stats["count"] == 100 and stats["window"] == 100
        assert stats["mean_ms"] == 50.5
        assert stats["min_ms"] == 1.0 and stats["max_ms"] == 100.0
        assert stats["p50_ms"] == pytest.approx(50.5)
        assert stats["p95_ms"] == pytest.approx(95.05)
        assert stats["p99_ms"] == pytest.approx(99.01)
        assert stats["last_ms"] == 1.0 and stats["total_ms"] == 5050.0
    finally:
        bus.close()


def test_statistics_use_a_bounded_window():
    """Percentiles cover the last ``window`` timings; the count covers all."""
    bus = EventBus()
    perf = WebSocketPerfIntegration(bus, window=10)
    try:
        for ms in range(1, 21):
            perf.track_operation("llm", "generate", ms)
        stats = perf.get_performance_summary()["operation_timings"]["llm.generate"]
        assert stats["count"] == 20 and stats["window"] == 10
        assert stats["min_ms"] == 11.0 and stats["max_ms"] == 20.0 and stats["mean_ms"] == 15.5
    finally:
        bus.close()


def test_counters_and_reset():
    """increment_counter adds and returns the new value; reset_metrics clears
    counters and timings."""
    bus = EventBus()
    perf = WebSocketPerfIntegration(bus)
    try:
        assert perf.increment_counter("turns") == 1
        assert perf.increment_counter("turns", 4) == 5
        perf.track_operation("stt", "transcribe", 10.0)
        summary = perf.get_performance_summary()
        assert summary["counters"] == {"turns": 5}
        assert list(summary["operation_timings"]) == ["stt.transcribe"]
        perf.reset_metrics()
        summary = perf.get_performance_summary()
        assert summary["counters"] == {} and summary["operation_timings"] == {}
        with pytest.raises(TypeError):
            perf.increment_counter("turns", 1.5)
    finally:
        bus.close()


def test_summary_contents(server):
    """The summary holds system metrics, timings, counters and the server's stats."""
    perf = WebSocketPerfIntegration(server)
    perf.increment_counter("errors", 2)
    summary = perf.get_performance_summary()
    assert list(summary) == ["system_metrics", "operation_timings", "counters", "server_stats"]
    assert set(summary["system_metrics"]) == {"memory_mb", "cpu_percent", "gpu_vram_mb", "uptime_seconds"}
    assert summary["counters"] == {"errors": 2}
    assert summary["server_stats"]["running"] is True
    assert "total_connections" in summary["server_stats"]


def test_broadcast_performance_summary(server):
    """broadcast_performance_summary sends system_info with
    data={"event": "performance_summary", "data": summary}, high priority."""
    perf = WebSocketPerfIntegration(server)
    perf.track_operation("tts", "synthesize", 800.0)
    with connect(server.url) as ws:
        assert server.wait_for_clients(1, TIMEOUT)  # registered once its handshake is done
        event = perf.broadcast_performance_summary()
        frame = recv_until(ws, lambda f: f.get("type") == "system_info")[-1]
    assert frame["session_id"] is None
    assert frame["data"]["event"] == "performance_summary"
    summary = frame["data"]["data"]
    assert summary["operation_timings"]["tts.synthesize"]["p95_ms"] == 800.0
    assert summary["server_stats"]["current_connections"] == 1
    server.bus.flush(TIMEOUT)
    assert any(e["seq"] == event.seq for e in server.replay_buffer)
