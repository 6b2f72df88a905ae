"""The control loop every benchmark server shares.

A benchmark server is a small process that serves WebSocket clients on
127.0.0.1 with one implementation (coda_ws, Flask-SocketIO, websockets) and
takes orders from ``benchmarks/run.py`` as JSON lines on stdin, answering
with JSON lines on stdout (nothing else may print to stdout; logs go to
stderr):

``{"cmd": "clients"}``
    -> ``{"reply": "clients", "clients": N}``, the connected clients as the
    implementation counts them.
``{"cmd": "cpu"}``
    -> ``{"reply": "cpu", "cpu_s": ...}``, ``time.process_time()``: the
    process's CPU time (every thread), at nanosecond resolution.
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
    the last call. With ``"busy": true`` another thread computes in pure
    Python for as long as the emission lasts.
``{"cmd": "emit", "n": N, "rate": R, "pipeline": {"passes": P, "pairs": K}}``
    The pipeline scenario: a "bench-pipeline" thread runs ``pipeline_work(P)``
    (a fixed amount of pure-Python work, timed in that thread) 2K times,
    alternately without the stream (clients connected, nothing emitted: the
    baseline) and while the producer emits R events per second, for exactly
    as long as that run of the work lasts, in ABBA order (baseline first in
    even pairs, streamed first in odd ones) so that a drift in the machine's
    load touches both alike. N is only a cap: the number emitted depends on
    how long the work takes, and the reply says it (``emitted``); the load
    client learns it then. The reply adds ``"pipeline": {...}`` (see
    ``_pipeline_run``) with both times, the slowdown in per cent (median over
    the pairs of streamed / baseline - 1) and the rate the stream kept while
    the work ran.
``{"cmd": "quit"}``
    Stop the server (after a running emit ends) and exit.

Every event is the same ``latency_trace`` event whatever the implementation
(about 270 bytes on the wire); its ``metadata`` carries ``i`` (0..N-1) and
``emit_ns``, ``time.monotonic_ns()`` just before the emit call, from which the
load client, on the same CLOCK_MONOTONIC, computes end-to-end latency.

Threads and RSS are read from outside by run.py (psutil), CPU time with the
``cpu`` command (finer than psutil's clock ticks), so the harness adds
nothing to them but its two threads: the main (control) thread and the
producer (and the pipeline scenario's work thread, whose CPU run.py
subtracts).
"""

import json
import statistics
import sys
import threading
import time

__all__ = ["EVENT_TYPE", "PIPELINE_TEXT", "SESSION_ID", "event_fields", "pipeline_work", "serve"]

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


# The pipeline scenario's work: a tokenizer-like loop (split, strip, lower,
# count words and 4-character pieces into a dict) over a fixed text, the kind
# of pure-Python code a voice pipeline runs between its C calls. It holds the
# GIL all the time: every string method it calls is short and keeps it.
_WORDS = (
    "the assistant heard a question about tomorrow's weather, looked it up, and answered: "
    "light rain until noon; 14 degrees. Then the user asked for a timer (ten minutes!) "
    "and a reminder to call Ana about the invoice #4411."
).split()
PIPELINE_TEXT = " ".join(_WORDS[(i * 7) % len(_WORDS)] for i in range(2000))
_PUNCT = ".,;:!?()#'\""


def pipeline_work(passes):
    """``passes`` passes of the tokenizer-like loop over PIPELINE_TEXT (about
    2.5 ms of CPU each on the development machine); returns the counts."""
    counts = {}
    for _ in range(passes):
        for word in PIPELINE_TEXT.split():
            token = word.strip(_PUNCT).lower()
            if not token:
                continue
            counts[token] = counts.get(token, 0) + 1
            for start in range(0, len(token), 4):
                piece = token[start : start + 4]
                counts[piece] = counts.get(piece, 0) + 1
    return counts


def _schedstat():
    """This thread's (CPU time, time waiting in the OS's run queue) in seconds,
    from /proc/thread-self/schedstat (Linux), or None."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            cpu_ns, runq_ns = f.read().split()[:2]
    except (OSError, ValueError):
        return None
    return int(cpu_ns) / 1e9, int(runq_ns) / 1e9


def _timed_work(passes, started, done, out):
    """Body of the bench-pipeline thread: one run of the work, timed inside
    the thread; sets ``started`` just before and ``done`` just after it.

    ``out`` gets ``wall_s`` and the thread's own ``cpu_s``, and on Linux
    ``runq_s``, the time the OS kept the thread waiting for a CPU (other
    processes' load, not the GIL: a thread waiting for the GIL sleeps)."""
    try:
        sched0 = _schedstat()
        started.set()
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        pipeline_work(passes)
        out["wall_s"] = time.perf_counter() - wall0
        out["cpu_s"] = time.thread_time() - cpu0
        sched1 = _schedstat()
        if sched0 and sched1:
            out["runq_s"] = sched1[1] - sched0[1]
    finally:
        started.set()
        done.set()


def _median_slowdown(streamed, baseline):
    """Per-pair ``100 * (streamed / baseline - 1)`` and their median."""
    pairs = [100.0 * (s / b - 1.0) for s, b in zip(streamed, baseline)]
    return pairs, statistics.median(pairs)


def _pipeline_run(emit, count, rate, spec):
    """The pipeline scenario (see the module docstring); returns the emit reply.

    The reply's ``pipeline`` holds: ``passes``, ``pairs``; ``baseline_s`` and
    ``streamed_s``, the wall time of each run of the work (pair k is
    ``baseline_s[k]``, ``streamed_s[k]``, measured next to each other);
    ``pair_slowdown_pct``, ``100 * (streamed / baseline - 1)`` per pair;
    ``slowdown_pct``, their median (the scenario's result); ``cpu_s``, the
    work's own CPU time over all runs (run.py subtracts it from the process's
    CPU, so CPU/msg is the stream's); ``stream_s``, the streamed runs' total
    wall time (``sum(streamed_s)``); ``stream_rate``, events emitted per
    second while the work ran (below R when the producer could not keep the
    schedule); ``cap_reached``, streamed runs that outlasted the cap N (their
    end ran without the stream). On Linux also ``runq_baseline_s`` and
    ``runq_streamed_s``, the time the OS kept the work waiting for a CPU in
    each run, and ``own_slowdown_pct`` (with ``pair_own_slowdown_pct``), the
    slowdown of the wall time minus that wait: what the stream cost the work
    (GIL waits, caches) with the machine's other load taken out. On a quiet
    machine the two slowdowns agree; on a loaded one only the second means
    anything (a thread that waits for the GIL now and then gets more of a
    busy CPU from the OS's scheduler than one that never sleeps, so the wall
    time can even shrink with the stream on).
    """
    passes = int(spec["passes"])
    pairs = int(spec.get("pairs", 5))
    if passes < 1 or pairs < 1:
        raise ValueError("pipeline needs passes >= 1 and pairs >= 1")
    interval = 1e9 / rate
    costs = []
    mono = time.monotonic_ns
    perf = time.perf_counter_ns
    runs = {False: [None] * pairs, True: [None] * pairs}  # with_stream -> each run's out
    cap_reached = 0
    i = 0
    t0 = t1 = None
    for pair in range(pairs):
        for with_stream in (False, True) if pair % 2 == 0 else (True, False):
            started, done = threading.Event(), threading.Event()
            out = {}
            worker = threading.Thread(
                target=_timed_work, args=(passes, started, done, out), name="bench-pipeline"
            )
            worker.start()
            if with_stream:
                # Emit on this run's own schedule for exactly as long as the work runs.
                started.wait()
                start = mono()
                k = 0
                while i < count:
                    wait = start + k * interval - mono()
                    if wait > 0:
                        time.sleep(wait / 1e9)
                    if done.is_set():
                        break
                    emit_ns = mono()
                    if t0 is None:
                        t0 = emit_ns
                    began = perf()
                    emit(i, emit_ns)
                    costs.append(perf() - began)
                    i += 1
                    k += 1
                else:
                    cap_reached += 1
                t1 = mono()
            worker.join()
            if "wall_s" not in out:
                raise RuntimeError("the pipeline work failed (see the server's stderr)")
            runs[with_stream][pair] = out
    baseline = [r["wall_s"] for r in runs[False]]
    streamed = [r["wall_s"] for r in runs[True]]
    pair_slowdowns, slowdown = _median_slowdown(streamed, baseline)
    result = {
        "passes": passes,
        "pairs": pairs,
        "baseline_s": baseline,
        "streamed_s": streamed,
        "pair_slowdown_pct": pair_slowdowns,
        "slowdown_pct": slowdown,
        "cpu_s": sum(r["cpu_s"] for r in runs[False] + runs[True]),
        "stream_s": sum(streamed),
        "stream_rate": i / sum(streamed),
        "cap_reached": cap_reached,
    }
    if all("runq_s" in r for r in runs[False] + runs[True]):
        result["runq_baseline_s"] = [r["runq_s"] for r in runs[False]]
        result["runq_streamed_s"] = [r["runq_s"] for r in runs[True]]
        result["pair_own_slowdown_pct"], result["own_slowdown_pct"] = _median_slowdown(
            [r["wall_s"] - r["runq_s"] for r in runs[True]], [r["wall_s"] - r["runq_s"] for r in runs[False]]
        )
    return {"emitted": i, "t0_ns": t0, "t1_ns": t1, "emit_ns": _percentiles(costs), "pipeline": result}


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
            elif cmd == "cpu":
                _reply({"reply": "cpu", "cpu_s": time.process_time()})
            elif cmd == "stats":
                _reply({"reply": "stats", "stats": stats() if stats else {}})
            elif cmd == "emit":
                if producer is not None and producer.is_alive():
                    _reply({"reply": "emit", "error": "an emit is already running"})
                    continue

                def producer_main(order=order):
                    try:
                        if order.get("pipeline"):
                            if not order.get("rate"):
                                raise ValueError("the pipeline scenario needs a rate")
                            result = _pipeline_run(
                                emit, int(order["n"]), float(order["rate"]), order["pipeline"]
                            )
                        else:
                            result = _produce(
                                emit, int(order["n"]), float(order.get("rate") or 0), bool(order.get("busy"))
                            )
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
