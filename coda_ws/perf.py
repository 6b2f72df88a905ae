"""WebSocketPerfIntegration: process metrics and operation timings as events.

Two jobs, both thread-safe:

* A **metrics thread** (``coda-ws-metrics``) emits ``system_metrics`` at once
  when started and then every ``metrics_interval`` seconds: process RSS in
  MB, process CPU percent, GPU memory in MB (``null`` without an NVIDIA GPU
  or without the optional ``nvidia-ml-py`` package) and the seconds since
  the process started. It waits on an event between reports, so
  :meth:`WebSocketPerfIntegration.stop` ends it at once and joins it; when
  the emitter is a server, stopping the server stops it too.
* **Timings**: :meth:`~WebSocketPerfIntegration.time_operation` (a context
  manager and a decorator), :meth:`~WebSocketPerfIntegration.track_operation`
  and :meth:`~WebSocketPerfIntegration.track_component_timings` emit
  ``latency_trace`` / ``component_timing`` and record every duration, in
  milliseconds, for :meth:`~WebSocketPerfIntegration.get_performance_summary`
  (count, mean, p50, p95, p99, max over a bounded window per operation).

CPU percent: psutil's first ``cpu_percent()`` of a process is a meaningless
0.0 and asking for a real one blocks for an interval. Here every report is
the process's CPU time (user + system) over the wall time since the previous
report (at least 0.1 s: shorter spans are clock-tick noise); the first one
measures from the process's start, so it is the average since the process
began, a real value, without blocking. 100 means one core fully busy (like
``top``); a multi-threaded process can exceed it.
"""

import collections
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, ParamSpec, TypedDict, TypeVar

import psutil

from .checks import integer, is_integer, number
from .events import BaseEvent
from .integration import Emitter

__all__ = [
    "DEFAULT_WINDOW",
    "OperationSummary",
    "OperationTimer",
    "PerformanceSummary",
    "SystemMetrics",
    "WebSocketPerfIntegration",
]

log = logging.getLogger("coda_ws.perf")

#: Timings kept per operation for the percentiles (the oldest are dropped).
DEFAULT_WINDOW = 1000

_MB = 1024.0 * 1024.0
#: CPU percent is measured over at least this many seconds (shorter spans are noise).
_MIN_CPU_WINDOW = 0.1

_P = ParamSpec("_P")
_R = TypeVar("_R")


class SystemMetrics(TypedDict):
    """The fields of a ``system_metrics`` event (:meth:`WebSocketPerfIntegration.collect_metrics`)."""

    memory_mb: float
    cpu_percent: float
    gpu_vram_mb: float | None
    uptime_seconds: float


class OperationSummary(TypedDict):
    """The timings of one operation, in milliseconds (see
    :meth:`WebSocketPerfIntegration.get_performance_summary`)."""

    count: int
    total_ms: float
    last_ms: float
    mean_ms: float
    min_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    window: int


class PerformanceSummary(TypedDict):
    """:meth:`WebSocketPerfIntegration.get_performance_summary`."""

    system_metrics: SystemMetrics
    operation_timings: dict[str, OperationSummary]
    counters: dict[str, int]
    server_stats: Mapping[str, Any]


class _ProcessSampler:
    """Reads this process's RSS, CPU and uptime, and the GPU's memory.

    Not thread-safe on its own: its owner serializes :meth:`sample`.
    """

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._created = self._process.create_time()  # Unix time the process started
        # CPU baselines as (cpu seconds, monotonic time). The first is the
        # process's start (CPU time 0), so the first sample is the average
        # since then instead of psutil's meaningless 0.0. The previous
        # baseline is kept for samples that come too soon after the last one.
        started = time.monotonic() - max(0.0, time.time() - self._created)
        self._baseline = (0.0, started)
        self._previous_baseline: tuple[float, float] | None = None
        # the pynvml module (untyped) once initialized, False when unavailable
        self._nvml: Any = None

    def sample(self) -> SystemMetrics:
        """A dict with the ``system_metrics`` fields."""
        with self._process.oneshot():
            rss = self._process.memory_info().rss
            times = self._process.cpu_times()
        now = time.monotonic()
        cpu = times.user + times.system
        base_cpu, base_time = self._baseline
        if now - base_time < _MIN_CPU_WINDOW and self._previous_baseline is not None:
            # CPU time advances in clock ticks: over a few milliseconds the
            # ratio is noise. Measure over a longer span instead.
            base_cpu, base_time = self._previous_baseline
        elapsed = now - base_time
        cpu_percent = max(0.0, (cpu - base_cpu) / elapsed * 100.0) if elapsed > 0 else 0.0
        if now - self._baseline[1] >= _MIN_CPU_WINDOW:
            self._previous_baseline, self._baseline = self._baseline, (cpu, now)
        return {
            "memory_mb": rss / _MB,
            "cpu_percent": cpu_percent,
            "gpu_vram_mb": self._gpu_memory_mb(),
            "uptime_seconds": max(0.0, time.time() - self._created),
        }

    def _gpu_memory_mb(self) -> float | None:
        """Memory in use on the visible NVIDIA GPUs in MB, or None.

        Uses ``pynvml`` (the ``nvidia-ml-py`` package, extra ``gpu``) when it
        is installed; without it, without a driver or a device, or on any
        NVML error the answer is None, never an exception.
        """
        if self._nvml is False:
            return None
        if self._nvml is None:
            try:
                # Optional (extra "gpu"), and untyped when installed: either error may apply.
                import pynvml  # type: ignore[import-not-found, import-untyped, unused-ignore]
            except ImportError:
                self._nvml = False
                return None
            try:
                pynvml.nvmlInit()
            except Exception as exc:  # NVMLError subclasses: no driver, no library, no permission
                log.info("GPU metrics unavailable: %s", exc)
                self._nvml = False
                return None
            self._nvml = pynvml
        nvml = self._nvml
        try:
            count = nvml.nvmlDeviceGetCount()
            if count < 1:
                return None
            used: float = 0
            for index in range(count):
                used += nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(index)).used
        except Exception as exc:  # an NVML error on one reading: report "unknown", keep going
            log.debug("GPU memory reading failed: %s", exc)
            return None
        return used / _MB

    def close(self) -> None:
        """Release NVML if it was initialized (idempotent)."""
        nvml, self._nvml = self._nvml, None
        if nvml:
            try:
                nvml.nvmlShutdown()
            except Exception as exc:  # nothing to undo: NVML was already gone
                log.debug("nvmlShutdown failed: %s", exc)


class _OperationStats:
    """Timings of one operation: an exact count and total, and a bounded window."""

    __slots__ = ("count", "last_ms", "total_ms", "window")

    def __init__(self, window: int) -> None:
        self.count = 0
        self.total_ms = 0.0
        self.last_ms = 0.0
        self.window: collections.deque[float] = collections.deque(maxlen=window)

    def add(self, duration_ms: float) -> None:
        self.count += 1
        self.total_ms += duration_ms
        self.last_ms = duration_ms
        self.window.append(duration_ms)

    def summary(self) -> OperationSummary:
        ordered = sorted(self.window)
        return {
            "count": self.count,
            "total_ms": self.total_ms,
            "last_ms": self.last_ms,
            "mean_ms": math.fsum(ordered) / len(ordered),
            "min_ms": ordered[0],
            "p50_ms": _percentile(ordered, 50),
            "p95_ms": _percentile(ordered, 95),
            "p99_ms": _percentile(ordered, 99),
            "max_ms": ordered[-1],
            "window": len(ordered),
        }


def _percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of a non-empty sorted list, interpolating
    linearly between the closest ranks (numpy's default method)."""
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class OperationTimer:
    """Times a block or a function and reports it through ``track_operation``.

    Made by :meth:`WebSocketPerfIntegration.time_operation`. As a context
    manager it measures the ``with`` block; as a decorator, every call of the
    function (each call gets its own measurement, so a decorated function may
    run in many threads at once). Durations come from
    :func:`time.perf_counter`. When the block raises, the duration is still
    reported, with ``metadata`` extended by ``"error": "<exception class>"``,
    and the exception propagates.

    One instance used as a context manager times one block at a time; use a
    fresh ``time_operation(...)`` per ``with``.
    """

    __slots__ = ("_perf", "_start", "component", "duration_ms", "metadata", "operation")

    def __init__(
        self,
        perf: "WebSocketPerfIntegration",
        component: str,
        operation: str,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._perf = perf
        self.component = component
        self.operation = operation
        self.metadata = metadata
        self._start: float | None = None
        #: The last measured duration in milliseconds (None before the first).
        self.duration_ms: float | None = None

    def __enter__(self) -> "OperationTimer":
        self._start = time.perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        start = self._start
        assert start is not None  # set by __enter__
        self.duration_ms = duration_ms = (time.perf_counter() - start) * 1000.0
        self._report(duration_ms, exc_type)
        return False  # never swallow the block's exception

    def __call__(self, func: Callable[_P, _R]) -> Callable[_P, _R]:
        component, operation, metadata = self.component, self.operation, self.metadata
        perf = self._perf

        @functools.wraps(func)
        def timed(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            with OperationTimer(perf, component, operation, metadata):
                return func(*args, **kwargs)

        return timed

    def _report(self, duration_ms: float, exc_type: type[BaseException] | None) -> None:
        metadata = self.metadata
        if exc_type is not None:
            metadata = {**(metadata or {}), "error": exc_type.__name__}
        try:
            self._perf.track_operation(self.component, self.operation, duration_ms, metadata)
        except Exception:
            if exc_type is None:
                raise  # a bad component name or metadata: the caller should know
            # The block's own exception matters more than a failed report of it.
            log.exception("could not report the timing of %s.%s", self.component, self.operation)


class WebSocketPerfIntegration:
    """Process metrics and operation timings, emitted as events.

    Args:
        server: anything with a compatible ``emit()``. When it also has
            ``add_stop_callback`` (a server), :meth:`start` registers
            :meth:`stop` there, so stopping the server stops the metrics
            thread; nothing is registered on emitters without it.
        metrics_interval: seconds between ``system_metrics`` reports.
        window: timings kept per operation for the percentiles.

    All methods are thread-safe. ``track_*`` and ``time_operation`` emit in
    the caller's thread and never block on clients.
    """

    def __init__(
        self, server: Emitter, metrics_interval: float = 5.0, *, window: int = DEFAULT_WINDOW
    ) -> None:
        if not callable(getattr(server, "emit", None)):
            raise TypeError(f"server must have an emit() method, got {type(server).__name__}")
        number("metrics_interval", metrics_interval, positive=True, unit="seconds")
        integer("window", window, 1)
        self.server = server
        self.metrics_interval = float(metrics_interval)
        self.window = window
        # _lock guards _timings, _counters and _last_metrics; never held while emitting.
        self._lock = threading.Lock()
        self._timings: dict[str, _OperationStats] = {}
        self._counters: collections.Counter[str] = collections.Counter()
        self._last_metrics: SystemMetrics | None = None
        # _sampler_lock serializes sampling (CPU baseline, NVML handle).
        self._sampler_lock = threading.Lock()
        self._sampler = _ProcessSampler()
        # _state_lock guards _thread and _stop_event (start/stop from any thread).
        self._state_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop_event: threading.Event | None = None

    # -- metrics thread --------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the metrics thread runs."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> None:
        """Start the metrics thread: a ``system_metrics`` event now, then one
        every ``metrics_interval`` seconds. Idempotent; returns at once."""
        with self._state_lock:
            if self._thread is not None:
                return
            stop_event = threading.Event()
            # daemon: a monitor never stopped must not keep the process alive;
            # stop() (and the server's stop, through a stop callback) joins it.
            thread = threading.Thread(
                target=self._run, args=(stop_event,), name="coda-ws-metrics", daemon=True
            )
            self._stop_event, self._thread = stop_event, thread
            add_stop_callback = getattr(self.server, "add_stop_callback", None)
            if callable(add_stop_callback):
                add_stop_callback(self.stop)
            thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the metrics thread and join it. Idempotent.

        Returns True when the thread has ended (within ``timeout`` seconds).
        Safe to call from the server's stop callbacks.
        """
        with self._state_lock:
            thread, stop_event = self._thread, self._stop_event
            self._thread = self._stop_event = None
        if thread is None or stop_event is None:  # set together: both or neither
            return True
        remove_stop_callback = getattr(self.server, "remove_stop_callback", None)
        if callable(remove_stop_callback):
            remove_stop_callback(self.stop)
        stop_event.set()
        # ident is None when start() was interrupted before the thread ran.
        if thread.ident is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._sampler_lock:
            self._sampler.close()
        alive = thread.is_alive() and thread is not threading.current_thread()
        if alive:
            log.warning("metrics thread did not stop within %s s", timeout)
        return not alive

    def _run(self, stop_event: threading.Event) -> None:
        interval = self.metrics_interval
        next_report = time.monotonic()
        while not stop_event.is_set():
            try:
                self.emit_metrics()
            except Exception:  # a failed reading must not end the reports
                log.exception("system metrics report failed")
            # Schedule on a fixed grid so reports do not drift by the time a
            # report takes; skip missed slots rather than bursting to catch up.
            next_report += interval
            now = time.monotonic()
            if next_report < now:
                next_report = now + interval
            if stop_event.wait(next_report - now):
                return

    def collect_metrics(self) -> SystemMetrics:
        """Read the process metrics now (see the module docstring for CPU).

        Returns a dict with ``memory_mb``, ``cpu_percent``, ``gpu_vram_mb``
        (None without a GPU) and ``uptime_seconds``.
        """
        with self._sampler_lock:
            metrics = self._sampler.sample()
        with self._lock:
            self._last_metrics = metrics
        return metrics.copy()

    def emit_metrics(self) -> BaseEvent:
        """Collect the metrics and emit one ``system_metrics`` event now.

        Returns the event.
        """
        metrics = self.collect_metrics()
        return self.server.emit("system_metrics", **metrics)

    # -- timings ---------------------------------------------------------------------

    def time_operation(
        self, component: str, operation: str, metadata: dict[str, Any] | None = None
    ) -> OperationTimer:
        """Time a block (``with perf.time_operation("stt", "transcribe"):``)
        or every call of a function (``@perf.time_operation("llm", "generate")``).

        The duration, in milliseconds from :func:`time.perf_counter`, goes to
        :meth:`track_operation`, also when the block raises (then with
        ``metadata["error"]`` naming the exception class, and the exception
        propagates). See :class:`OperationTimer`.
        """
        return OperationTimer(self, component, operation, metadata)

    def track_operation(
        self, component: str, operation: str, duration_ms: float, metadata: dict[str, Any] | None = None
    ) -> BaseEvent:
        """Emit ``latency_trace`` and record ``duration_ms`` (milliseconds)
        under ``"component.operation"``. Returns the event.

        The event is emitted first, so a bad argument raises and records nothing.
        """
        event = self.server.emit(
            "latency_trace",
            component=component,
            operation=operation,
            duration_ms=duration_ms,
            metadata=metadata,
        )
        # emit() validated the value: float() cannot fail, and records what was sent.
        self._record(((f"{component}.{operation}", float(duration_ms)),))
        return event

    def track_component_timings(self, component: str, timings: dict[str, float]) -> BaseEvent:
        """Emit ``component_timing`` and record each ``operation -> ms`` of
        ``timings`` under ``"component.operation"``. Returns the event."""
        event = self.server.emit("component_timing", component=component, timings=timings)
        self._record([(f"{component}.{name}", float(ms)) for name, ms in timings.items()])
        return event

    def _record(self, items: Iterable[tuple[str, float]]) -> None:
        with self._lock:
            timings = self._timings
            for key, duration_ms in items:
                stats = timings.get(key)
                if stats is None:
                    stats = timings[key] = _OperationStats(self.window)
                stats.add(duration_ms)

    # -- counters and summary ----------------------------------------------------------

    def increment_counter(self, counter: str, amount: int = 1) -> int:
        """Add ``amount`` to ``counter`` (created at 0); returns the new value."""
        if not isinstance(counter, str):
            raise TypeError(f"counter must be a string, got {type(counter).__name__}")
        if not is_integer(amount):
            raise TypeError(f"amount must be an integer, got {type(amount).__name__} {amount!r}")
        with self._lock:
            self._counters[counter] += amount
            return self._counters[counter]

    def reset_metrics(self) -> None:
        """Forget every recorded timing and counter."""
        with self._lock:
            self._timings = {}
            self._counters = collections.Counter()
        log.debug("performance metrics reset")

    def get_performance_summary(self) -> PerformanceSummary:
        """A JSON-ready snapshot.

        Returns:
            ``{"system_metrics": {...}, "operation_timings": {...},
            "counters": {...}, "server_stats": {...}}``.
            ``system_metrics`` is the metrics thread's latest report (read now
            when there is none yet). ``operation_timings`` maps
            ``"component.operation"`` to ``count`` (every timing since the
            last reset), ``total_ms``, ``last_ms``, and ``mean_ms``,
            ``min_ms``, ``p50_ms``, ``p95_ms``, ``p99_ms``, ``max_ms`` over
            the last ``window`` timings (their number in ``window``); all in
            milliseconds. ``server_stats`` is the emitter's ``get_stats()``
            (or ``stats()``), ``{}`` when it has neither.
        """
        with self._lock:
            metrics = self._last_metrics
            operations = {key: stats.summary() for key, stats in sorted(self._timings.items())}
            counters = dict(sorted(self._counters.items()))
        if metrics is None:
            metrics = self.collect_metrics()
        return {
            "system_metrics": metrics.copy(),
            "operation_timings": operations,
            "counters": counters,
            "server_stats": self._server_stats(),
        }

    def _server_stats(self) -> Mapping[str, Any]:
        for name in ("get_stats", "stats"):
            method = getattr(self.server, name, None)
            if callable(method):
                stats: Mapping[str, Any] = method()
                return stats
        return {}

    def broadcast_performance_summary(self) -> BaseEvent:
        """Emit ``system_info`` with ``data={"event": "performance_summary",
        "data": summary}`` (high priority). Returns the event."""
        summary = self.get_performance_summary()
        return self.server.emit(
            "system_info", high_priority=True, data={"event": "performance_summary", "data": summary}
        )

    def __repr__(self) -> str:
        return f"<WebSocketPerfIntegration interval={self.metrics_interval}s running={self.running}>"
