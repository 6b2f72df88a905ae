"""The control loop every benchmark server shares.

A benchmark server is a small process that serves WebSocket clients on
127.0.0.1 with one implementation (coda_ws, Flask-SocketIO, websockets) and
takes orders from ``benchmarks/run.py`` as JSON lines on stdin, answering
with JSON lines on stdout (nothing else may print to stdout; logs go to
stderr):

``{"cmd": "clients"}``
    -> ``{"reply": "clients", "clients": N}``, the connected clients as the
    implementation counts them.
``{"cmd": "stats"}``
    -> ``{"reply": "stats", "stats": {...}}``, the implementation's own
    counters (coda_ws: overflows and disconnects by reason), possibly empty.
``{"cmd": "emit", "n": N, "rate": R}``
    A producer thread calls the implementation's emit N times, R per second
    (0: as fast as it can, a burst), timing every call with
    ``time.perf_counter_ns``; the control loop goes on answering meanwhile.
    When it is done: ``{"reply": "emit", "emitted": N, "t0_ns": ..., "t1_ns":
    ..., "emit_ns": {"p50": ..., "p99": ..., "max": ..., "mean": ...}}``;
    ``t0_ns`` and ``t1_ns`` are ``time.monotonic_ns()`` at the first and after
    the last call.
``{"cmd": "quit"}``
    Stop the server (after a running emit ends) and exit.

Every event is the same ``latency_trace`` event whatever the implementation
(about 270 bytes on the wire); its ``metadata`` carries ``i`` (0..N-1) and
``emit_ns``, ``time.monotonic_ns()`` just before the emit call, from which the
load client, on the same CLOCK_MONOTONIC, computes end-to-end latency.

CPU time, threads and RSS are read from outside by run.py (psutil), so the
harness adds nothing to them but its two threads: the main (control) thread
and the producer.
"""

import json
import sys
import threading
import time

__all__ = ["EVENT_TYPE", "SESSION_ID", "event_fields", "serve"]

EVENT_TYPE = "latency_trace"
SESSION_ID = "bench"
# Sized so that a coda_ws event frame is about 270 bytes on the wire.
_PAD = "a small JSON event from a voice pipeline"


def event_fields(i, emit_ns):
    """The fields of event ``i`` (the same for every implementation)."""
    return {
        "component": "benchmark",
        "operation": "fanout",
        "duration_ms": 1.25,
        "metadata": {"i": i, "emit_ns": emit_ns, "pad": _PAD},
    }


def _percentiles(costs):
    costs = sorted(costs)
    if not costs:
        return {"p50": None, "p99": None, "max": None, "mean": None}
    count = len(costs)
    return {
        "p50": costs[count // 2],
        "p99": costs[min(count - 1, int(count * 0.99))],
        "max": costs[-1],
        "mean": sum(costs) / count,
    }


def _busy_python(done):
    """Compute in pure Python until ``done`` is set: a pipeline thread busy
    with Python code, which holds the GIL except when the interpreter's
    switch interval (5 ms) makes it give the GIL to a thread waiting for it."""
    total = 0
    while not done.is_set():
        for i in range(10_000):
            total += i * i
    return total


def _produce(emit, count, rate, busy=False):
    """Call ``emit(i, emit_ns)`` ``count`` times (with another thread computing
    meanwhile when ``busy``); returns the emit-stats reply."""
    done = threading.Event()
    worker = threading.Thread(target=_busy_python, args=(done,), name="bench-busy") if busy else None
    if worker:
        worker.start()
    try:
        return _emit_all(emit, count, rate)
    finally:
        done.set()
        if worker:
            worker.join()


def _emit_all(emit, count, rate):
    costs = [0] * count
    perf = time.perf_counter_ns
    mono = time.monotonic_ns
    interval = 1e9 / rate if rate else 0
    t0 = mono()
    for i in range(count):
        if interval:
            wait = t0 + i * interval - mono()
            if wait > 0:
                time.sleep(wait / 1e9)
        emit_ns = mono()
        start = perf()
        emit(i, emit_ns)
        costs[i] = perf() - start
    t1 = mono()
    return {"emitted": count, "t0_ns": t0, "t1_ns": t1, "emit_ns": _percentiles(costs)}


_stdout_lock = threading.Lock()


def _reply(message):
    with _stdout_lock:  # the control thread and the producer both answer
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def serve(name, start, emit, count_clients, stop, info=None, stats=None):
    """Run a benchmark server's control loop until ``quit`` or end of stdin.

    Args:
        name: the implementation's name (for the ready line).
        start: ``start() -> port``; serves on 127.0.0.1 in background threads.
        emit: ``emit(i, emit_ns)``; the call being measured.
        count_clients: ``count_clients() -> int``.
        stop: ``stop()``; called once, in a finally block.
        info: extra fields for the ready line (versions, module path).
        stats: ``stats() -> dict`` of the implementation's own counters, if any.
    """
    port = start()
    producer = None
    try:
        _reply({"reply": "ready", "ready": True, "server": name, "port": port, **(info or {})})
        for line in sys.stdin:
            if not line.strip():
                continue
            order = json.loads(line)
            cmd = order.get("cmd")
            if cmd == "clients":
                _reply({"reply": "clients", "clients": count_clients()})
            elif cmd == "stats":
                _reply({"reply": "stats", "stats": stats() if stats else {}})
            elif cmd == "emit":
                if producer is not None and producer.is_alive():
                    _reply({"reply": "emit", "error": "an emit is already running"})
                    continue

                def producer_main(order=order):
                    try:
                        result = _produce(emit, int(order["n"]), float(order.get("rate") or 0),
                                          bool(order.get("busy")))
                    except Exception as exc:  # report it to run.py instead of dying silently
                        result = {"error": f"emit failed: {exc!r}"}
                    _reply({"reply": "emit", **result})

                # The control loop keeps answering (stats, clients) while it runs.
                producer = threading.Thread(target=producer_main, name="bench-producer")
                producer.start()
            elif cmd == "quit":
                break
            else:
                _reply({"reply": "error", "error": f"unknown command {cmd!r}"})
    finally:
        if producer is not None:
            producer.join()
        stop()
