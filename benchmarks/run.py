#!/usr/bin/env python3
"""coda_ws benchmark suite: coda_ws against the servers a user would pick instead.

    python benchmarks/run.py                 # the full suite (under 10 minutes)
    python benchmarks/run.py --quick         # small counts, one repetition
    python benchmarks/run.py --scenarios burst100,rate100 --peers coda_ws,websockets --repeat 5
    python benchmarks/run.py --save-baseline before.json
    python benchmarks/run.py --compare before.json

Each run starts one server process (benchmarks/servers/) and one load-client
process (benchmarks/client/loadclient.js, Node.js), connects the scenario's
clients, has the server's producer thread emit the events, and measures:
delivery and end-to-end latency in the client, emit() caller cost in the
server's producer, and the server's CPU time, threads and RSS from outside
(psutil). Peers run interleaved (every repetition runs every peer, in a
rotating order) and the table shows medians over the repetitions. Everything
listens on 127.0.0.1 only; every wait has a deadline and every process is
killed in a finally block.

Set-up: ``pip install -r benchmarks/requirements.txt`` (the peers) and
``npm ci --prefix benchmarks`` (the load client). See benchmarks/README.md.
"""

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import pathlib
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import psutil

HERE = pathlib.Path(__file__).resolve().parent
SERVERS = HERE / "servers"
CLIENT = HERE / "client" / "loadclient.js"
EVENT_TYPE = "latency_trace"


# -- peers ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Peer:
    name: str
    script: str
    client_kind: str  # "ws" or "socketio"
    path: str  # URL path clients connect to
    modules: tuple  # importable modules it needs
    resume: bool = False  # clients resume with ?since=&epoch= after a close
    label: str = ""  # the name in the tables' peer column (default: name)
    legend: str = ""  # a line under the tables saying what it is (the floor)

    @property
    def shown(self):
        return self.label or self.name

    def missing(self):
        return [m for m in self.modules if importlib.util.find_spec(m) is None]


PEERS = {
    "coda_ws": Peer("coda_ws", "coda_ws_server.py", "ws", "/ws?v=1", ("coda_ws",), resume=True),
    "socketio": Peer(
        "socketio", "socketio_server.py", "socketio", "/", ("flask_socketio", "socketio", "engineio")
    ),
    "websockets": Peer("websockets", "websockets_server.py", "ws", "/", ("websockets",)),
    # Not a product: the limit. One pre-built frame, one blocking send() per
    # client, nothing else (servers/raw_server.py); ratio rows coda_ws/raw show
    # how close coda_ws is to it.
    "raw": Peer(
        "raw",
        "raw_server.py",
        "ws",
        "/",
        (),
        label="raw (floor)",
        legend="raw (floor): floor (raw RFC 6455, not a product): one pre-built frame, one blocking "
        "send() per client; no validation, history, resume or slow-client policy",
    ),
    # Not a peer: a trivial server that writes pre-built frames in big batches,
    # used to show the load client is not the bottleneck (--calibrate).
    "blast": Peer("blast", "blast_server.py", "ws", "/", ()),
}
PRODUCTS = ("coda_ws", "socketio", "websockets")  # what a user would pick
WITH_FLOOR = PRODUCTS + ("raw",)
NO_SOCKETIO = ("coda_ws", "websockets")  # scenarios whose Flask-SocketIO runs cost too much time
DEFAULT_PEERS = WITH_FLOOR


# -- scenarios ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    clients: int
    n: int  # events emitted
    quick_n: int
    rate: float = 0.0  # events per second; 0 = burst
    paused: int = 0  # 1: the last client stops reading
    deflate: bool = False  # clients offer permessage-deflate
    scrape: bool = False  # GET /metrics every 100 ms during the run (issue 7)
    busy: bool = False  # another server thread computes in pure Python during the run
    library: str = ""  # "ws": WebSocket clients read with the ws package (as deflate scenarios do)
    pipeline: tuple = ()  # (passes, pairs, quick pairs): a pipeline thread's work, timed (pipeline5)
    peers: tuple = PRODUCTS  # which peers run it (raw, the floor, where it is a useful reference)
    max_repeat: int = (
        0  # at most this many repetitions (0: as many as the suite's; keeps it under 10 minutes)
    )
    expect_close: bool = False  # enough events to get a paused coda_ws client closed with 4008
    baseline: str = ""  # the scenario this one is compared with

    def count(self, quick):
        """Events to emit (with ``pipeline``, a cap: the server emits while the work runs)."""
        return self.quick_n if quick else self.n

    def pipeline_spec(self, quick):
        """The server's ``pipeline`` order, or None."""
        if not self.pipeline:
            return None
        passes, pairs, quick_pairs = self.pipeline
        return {"passes": passes, "pairs": quick_pairs if quick else pairs}


# A client that stops reading first fills the kernel's socket buffers: on
# Linux loopback about 3.6 MB (some 14 000 of these events) before the server
# sees any backpressure. Scenarios that expect coda_ws to close the paused
# client with 4008 therefore emit 20 000 events or more.
SCENARIOS = {
    s.name: s
    for s in [
        Scenario("burst1", "1 client, burst", 1, 20_000, 3_000, peers=WITH_FLOOR),
        Scenario("burst100", "100 clients, burst", 100, 2_000, 300),
        Scenario("rate100", "100 clients at 500 events/s", 100, 2_000, 500, rate=500, peers=WITH_FLOOR),
        # Issue 15: a voice assistant's stream, a steady trickle to a handful of
        # dashboards inside the pipeline's own process. Two repetitions, not
        # three, and small counts: the suite stays under 10 minutes (README).
        Scenario(
            "rate5", "5 clients at 500 events/s", 5, 1_000, 500, rate=500, peers=WITH_FLOOR, max_repeat=2
        ),
        # The pipeline thread's work is 120 passes of common.pipeline_work (about
        # 0.3 s of CPU on the development machine), run 2 x 3 times (2 x 2 with
        # --quick), alternately without and with the stream; 20 000 is only a cap.
        Scenario(
            "pipeline5",
            "5 clients at 200 events/s while a pipeline thread computes (its slowdown)",
            5,
            20_000,
            20_000,
            rate=200,
            pipeline=(120, 3, 2),
            peers=WITH_FLOOR,
            max_repeat=2,
        ),
        Scenario("healthy20", "20 clients at 4000 events/s", 20, 20_000, 20_000, rate=4000),
        Scenario(
            "paused20",
            "20 clients at 4000 events/s, one paused reader",
            20,
            20_000,
            20_000,
            rate=4000,
            paused=1,
            expect_close=True,
            baseline="healthy20",
        ),
        # deflate100's clients need the ws package (the raw reader cannot inflate),
        # which reads more slowly; ws100 is the same burst and client without the
        # offer: the baseline that isolates what offering compression costs.
        # Without Flask-SocketIO: its deflate100 runs took about 14 s each, far
        # from any target, and the suite must stay under 10 minutes (README).
        Scenario(
            "ws100",
            "100 clients, burst, ws package clients (deflate100's baseline)",
            100,
            2_000,
            300,
            library="ws",
            peers=NO_SOCKETIO,
        ),
        Scenario(
            "deflate100",
            "100 clients, burst, permessage-deflate offered",
            100,
            2_000,
            300,
            deflate=True,
            library="ws",
            baseline="ws100",
            peers=NO_SOCKETIO,
        ),
        Scenario("idle1000", "1000 clients, 10 events/s", 1000, 20, 20, rate=10),
        # Not in the issue: a pipeline thread busy with Python code in the server
        # process (the GIL's switch interval then decides who runs; see README).
        Scenario(
            "busy100",
            "100 clients at 500 events/s, another server thread computing",
            100,
            2_000,
            500,
            rate=500,
            busy=True,
            baseline="rate100",
        ),
        # Issue 4: the stalled-reader check at 1 and 100 clients too (coda_ws only).
        Scenario("rate1", "1 client at 4000 events/s", 1, 20_000, 20_000, rate=4000, peers=("coda_ws",)),
        Scenario(
            "paused1",
            "1 client at 4000 events/s plus one paused reader",
            2,
            20_000,
            20_000,
            rate=4000,
            paused=1,
            expect_close=True,
            peers=("coda_ws",),
            baseline="rate1",
        ),
        Scenario(
            "paused100",
            "100 clients at 500 events/s, one paused reader",
            100,
            2_000,
            500,
            rate=500,
            paused=1,
            peers=("coda_ws",),
            baseline="rate100",
        ),
        # Issue 7: emit() cost while Prometheus scrapes /metrics every 100 ms.
        Scenario(
            "scrape20",
            "20 clients at 4000 events/s, /metrics scraped every 100 ms",
            20,
            20_000,
            20_000,
            rate=4000,
            scrape=True,
            peers=("coda_ws",),
            baseline="healthy20",
        ),
    ]
}
DEFAULT_SCENARIOS = tuple(SCENARIOS)


class Skip(Exception):
    """This scenario cannot run on this peer (the message says why)."""


# -- child processes --------------------------------------------------------------


class Child:
    """A child process speaking JSON lines on stdin/stdout; stderr goes to a file."""

    _started = 0  # numbers the log files, so that repetitions do not overwrite each other

    def __init__(self, argv, name, log_dir, env=None):
        self.name = name
        Child._started += 1
        self.log_path = pathlib.Path(log_dir) / f"{Child._started:03d}-{name}.stderr"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
            cwd=str(HERE),
            env=env,
        )
        self._lines = queue.Queue()
        self._stash = []  # lines read while waiting for another kind
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def send(self, message):
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def receive(self, timeout, what, kind=None):
        """The next JSON line whose ``reply`` (servers) or ``event`` (the
        client) is ``kind`` (any line when None); lines of other kinds are
        kept for later calls. RuntimeError after ``timeout`` seconds."""
        for i, message in enumerate(self._stash):
            if kind is None or kind in (message.get("reply"), message.get("event")):
                return self._stash.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"{self.name}: no {what} within {timeout:.0f} s{self.stderr_tail()}")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self._lines.put(None)  # stay at end of file for later calls
                raise RuntimeError(
                    f"{self.name} exited ({self.proc.poll()}) before {what}{self.stderr_tail()}"
                )
            try:
                message = json.loads(line)
            except ValueError:
                continue  # not ours (a stray print): skip it
            if message.get("event") == "fatal" or message.get("reply") == "error":
                raise RuntimeError(f"{self.name}: {message.get('error')}")
            if kind is None or kind in (message.get("reply"), message.get("event")):
                return message
            self._stash.append(message)

    def request(self, message, timeout, what, kind=None):
        self.send(message)
        return self.receive(timeout, what, kind)

    def stderr_tail(self):
        try:
            self._log.flush()
            text = self.log_path.read_text(errors="replace").strip()
        except OSError:
            return ""
        return "\n  " + "\n  ".join(text.splitlines()[-8:]) if text else ""

    def stop(self, timeout=10.0):
        """Ask it to quit; kill it when it does not within ``timeout``. Idempotent."""
        if self.proc.poll() is None:
            try:
                self.send({"cmd": "quit"})
                self.proc.stdin.close()
            except (OSError, ValueError):
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


class Sampler:
    """Samples a process's RSS and thread count every ``interval`` seconds."""

    def __init__(self, process, interval=0.02):
        self.process = process
        self.interval = interval
        self.peak_rss = 0
        self.peak_threads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def sample(self):
        try:
            with self.process.oneshot():
                rss = self.process.memory_info().rss
                threads = self.process.num_threads()
        except psutil.Error:
            return
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_threads = max(self.peak_threads, threads)

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()
        self.sample()


class Scraper:
    """GET /metrics every 100 ms (a Prometheus scraper), timing each answer."""

    def __init__(self, url):
        self.url = url
        self.durations = []  # seconds, one per successful scrape
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)

    def _run(self):
        while not self._stop.wait(0.1):
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    response.read()
                self.durations.append(time.monotonic() - started)
            except (OSError, urllib.error.URLError):
                self.errors += 1

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()


def _resume_after_overflow(server, client, timeout):
    """Let the paused client read again as soon as coda_ws has given up on it.

    A paused client first fills the kernel's buffers (a few MB, a varying
    amount), then falls ``client_queue_size`` events behind and is closed
    with 4008. Reading again right then, it gets the close frame and
    resumes from a position still in the history; a fixed pause would be too
    short on some runs and past the history on others.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = server.request({"cmd": "stats"}, 30, "stats", "stats")["stats"]
        if stats.get("overflows"):
            client.send({"cmd": "resume"})
            return
        if any(m.get("reply") == "emit" for m in server._stash):
            return  # emission is over: the client resumes once the others have everything
        time.sleep(0.05)


def _merge_paused(healthy, paused):
    """The healthy clients' result, with the paused client's outcome and the
    second load-client process's CPU and ordering counts added."""
    merged = dict(healthy)
    merged["paused"] = paused["paused"]
    merged["client_cpu_s"] = healthy["client_cpu_s"] + paused["client_cpu_s"]
    merged["out_of_order"] = healthy["out_of_order"] + paused["out_of_order"]
    merged["deflate_negotiated"] = healthy["deflate_negotiated"] + paused["deflate_negotiated"]
    merged["timed_out"] = healthy["timed_out"] or paused["timed_out"]
    return merged


def _cpu_seconds(server):
    """The server process's CPU time so far (user + system, every thread, ended
    ones included), in seconds. Asked of the server (``time.process_time``,
    nanosecond resolution): psutil reads it in clock ticks (10 ms), too coarse
    for the 0.1-0.2 s of CPU a run with 5 clients takes."""
    return server.request({"cmd": "cpu"}, 30, "cpu time", "cpu")["cpu_s"]


def _metrics_status(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def run_one(peer, scenario, quick, log_dir, python, profile_dir=None):
    """One run of ``scenario`` against ``peer``; returns a dict of measurements.

    With ``profile_dir``, py-spy samples the server (all threads, idle ones
    too) from the moment it is ready until it exits, into a flame graph there.
    """
    n = scenario.count(quick)
    clients = scenario.clients
    server = client = paused_client = profiler = None
    try:
        server = Child([python, str(SERVERS / peer.script)], f"{peer.name}-{scenario.name}-server", log_dir)
        ready = server.receive(60, "ready line", "ready")
        port = ready["port"]
        process = psutil.Process(server.proc.pid)
        if profile_dir:
            profiler = _start_profiler(profile_dir, peer, scenario, server.proc.pid)
        if scenario.scrape and _metrics_status(port) == 404:
            raise Skip("GET /metrics answers 404 (the endpoint has not landed yet); scrape scenario skipped")
        rss_idle = process.memory_info().rss
        config = {
            "kind": peer.client_kind,
            "url": f"ws://127.0.0.1:{port}{peer.path}",
            "event": EVENT_TYPE,
            "clients": clients - scenario.paused,
            "paused": 0,
            "deflate": scenario.deflate,
            "resume": peer.resume,
            "library": scenario.library,
        }
        client = Child(
            ["node", str(CLIENT), json.dumps(config)], f"{peer.name}-{scenario.name}-client", log_dir
        )
        connected = client.receive(60 + clients * 0.1, "ready line", "ready")
        if connected["connected"] != config["clients"]:
            raise RuntimeError(
                f"only {connected['connected']} of {clients} clients connected: {connected['errors']}"
            )
        if scenario.paused:
            # The paused reader in a process of its own, as a real client is: its
            # catch-up after the pause must not delay the healthy clients' event
            # loop (and so their measured latency) in the load client.
            config = dict(config, clients=1, paused=1, hold=True)
            paused_client = Child(
                ["node", str(CLIENT), json.dumps(config)], f"{peer.name}-{scenario.name}-paused", log_dir
            )
            if paused_client.receive(60, "ready line", "ready")["connected"] != 1:
                raise RuntimeError("the paused client did not connect")
        deadline = time.monotonic() + 30
        while server.request({"cmd": "clients"}, 30, "client count", "clients")["clients"] < clients:
            if time.monotonic() > deadline:
                raise RuntimeError("the server never counted every client")
            time.sleep(0.05)
        time.sleep(0.2)  # let connection set-up settle before measuring
        rss_connected = process.memory_info().rss
        threads_connected = process.num_threads()
        emit_time = n / scenario.rate if scenario.rate else 0.0
        # Bounded: a peer that cannot keep up is cut off (delivered < 100 %).
        # (pipeline5: n is a cap, and this the deadline of a run that reaches it.)
        timeout = 20 + 1.5 * emit_time
        pipeline = scenario.pipeline_spec(quick)
        for load in (client, paused_client):
            if load is not None:
                load.request(
                    {
                        "cmd": "start",
                        "n": n,
                        "timeout_s": timeout,
                        "pause_max_s": 5 + emit_time,
                        "open": bool(pipeline),
                    },
                    30,
                    "started",
                    "started",
                )
        scraper = Scraper(f"http://127.0.0.1:{port}/metrics") if scenario.scrape else None
        with Sampler(process) as sampler:
            cpu0 = _cpu_seconds(server)
            if scraper:
                scraper.__enter__()
            try:
                order = {"cmd": "emit", "n": n, "rate": scenario.rate, "busy": scenario.busy}
                if pipeline:
                    order["pipeline"] = pipeline
                server.send(order)
                if scenario.paused and peer.resume:
                    _resume_after_overflow(server, paused_client, timeout)
                emitted = server.receive(timeout, "emit result", "emit")
            finally:
                if scraper:
                    scraper.__exit__(None, None, None)
            if "error" in emitted:
                raise RuntimeError(f"{peer.name}: {emitted['error']}")
            if pipeline:
                client.send({"cmd": "expect", "n": emitted["emitted"]})  # the open round's real count
            result = client.receive(timeout + 30, "client result", "result")
            if paused_client is not None:
                # With the peers (and a coda_ws client the kernel's buffers held), the
                # paused client reads again once the healthy clients have everything.
                paused_client.send({"cmd": "resume"})
                result = _merge_paused(
                    result, paused_client.receive(timeout + 30, "paused client result", "result")
                )
            cpu1 = _cpu_seconds(server)
        return _measurements(
            scenario,
            emitted["emitted"],
            clients,
            emitted,
            result,
            cpu1 - cpu0,
            sampler,
            rss_idle,
            rss_connected,
            threads_connected,
            scraper,
        )
    finally:
        for child in (client, paused_client, server):
            if child is not None:
                child.stop()
        if profiler is not None:
            try:
                profiler.wait(30)  # py-spy writes its output when the server exits
            except subprocess.TimeoutExpired:
                profiler.kill()
                profiler.wait(5)


def _start_profiler(profile_dir, peer, scenario, pid):
    py_spy = shutil.which("py-spy") or str(pathlib.Path(sys.executable).parent / "py-spy")
    out = pathlib.Path(profile_dir) / f"{peer.name}-{scenario.name}-{time.strftime('%H%M%S')}"
    argv = [
        py_spy,
        "record",
        "--pid",
        str(pid),
        "--rate",
        "100",
        "--threads",
        "--nonblocking",
        "--format",
        "raw",
        "--output",
        f"{out}.txt",
    ]
    try:
        with open(f"{out}.log", "w") as log:  # py-spy reports its sample and error counts there
            profiler = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    except OSError as exc:
        raise RuntimeError(f"cannot start py-spy ({exc}); pip install py-spy") from None
    time.sleep(0.5)  # let it attach before the measured part
    return profiler


def _measurements(
    scenario, n, clients, emitted, result, cpu, sampler, rss_idle, rss_connected, threads, scraper
):
    delivered = result["delivered"]
    expected = result["expected"]
    paused = result.get("paused")
    paused_received = paused["received"] if paused else 0
    pipeline = emitted.get("pipeline")
    if pipeline:
        # The baseline runs between the streamed ones emit nothing: the rate is
        # over the streamed runs, and the work's own CPU is not the stream's.
        span_ns = pipeline["stream_s"] * 1e9
        cpu = max(0.0, cpu - pipeline["cpu_s"])
    elif emitted["t0_ns"] is None:
        span_ns = 0
    else:
        span_ns = (result["last_recv_ns"] or emitted["t1_ns"]) - emitted["t0_ns"]
    mb = 1024 * 1024
    m = {
        "delivered_pct": 100.0 * delivered / expected if expected else 0.0,
        "msgs_per_s": delivered / (span_ns / 1e9) if span_ns > 0 else 0.0,
        "lat_p50_ms": _ms(result["lat_us"]["p50"]),
        "lat_p99_ms": _ms(result["lat_us"]["p99"]),
        "emit_p50_us": _us(emitted["emit_ns"]["p50"]),
        "emit_p99_us": _us(emitted["emit_ns"]["p99"]),
        "emit_max_us": _us(emitted["emit_ns"]["max"]),
        "cpu_per_msg_us": 1e6 * cpu / (delivered + paused_received) if delivered + paused_received else None,
        "threads": sampler.peak_threads,
        "peak_rss_mb": sampler.peak_rss / mb,
        "rss_growth_mb": max(0, sampler.peak_rss - rss_connected) / mb,
        "rss_per_client_kb": (rss_connected - rss_idle) / 1024 / clients,
        "client_cpu_pct": 100.0 * result["client_cpu_s"] / result["wall_s"] if result["wall_s"] else None,
        "server_cpu_s": cpu,
        "threads_connected": threads,
        "timed_out": result["timed_out"],
        "out_of_order": result["out_of_order"],
        "unexpected_closes": result["unexpected_closes"],
        "close_codes": sorted(set(map(str, result["close_codes"]))),
        "healthy_resumes": [r.get("recovered") for r in result.get("healthy_resumes", [])],
        "deflate_negotiated": result["deflate_negotiated"],
        "emitted": emitted["emitted"],
    }
    if paused:
        resumes = [r for r in paused["resumes"] if r.get("type") == "resume"]
        m["paused"] = {
            "received": paused["received"],
            "of": n,
            "close_code": paused["close_code"],
            "recovered": [r.get("recovered") for r in resumes],
            "resumed_count": sum(r.get("count", 0) for r in resumes),
        }
    if pipeline:
        m["pipeline"] = pipeline
        m["slowdown_pct"] = pipeline["slowdown_pct"]
        m["own_slowdown_pct"] = pipeline.get("own_slowdown_pct")
        if "runq_baseline_s" in pipeline:  # how much the machine's other load held the work up
            m["runq_pct"] = (
                100
                * (sum(pipeline["runq_baseline_s"]) + sum(pipeline["runq_streamed_s"]))
                / (sum(pipeline["baseline_s"]) + sum(pipeline["streamed_s"]))
            )
        m["stream_rate"] = pipeline["stream_rate"]
        m["work_ms"] = 1000 * statistics.median(pipeline["baseline_s"])
        m["work_streamed_ms"] = 1000 * statistics.median(pipeline["streamed_s"])
    if scraper is not None:
        durations = sorted(scraper.durations)
        m["scrapes"] = {
            "count": len(durations),
            "errors": scraper.errors,
            "p50_ms": 1000 * durations[len(durations) // 2] if durations else None,
            "max_ms": 1000 * durations[-1] if durations else None,
        }
    return m


def _ms(us):
    return None if us is None else us / 1000


def _us(ns):
    return None if ns is None else ns / 1000


# -- the suite --------------------------------------------------------------------


NUMERIC = (
    "delivered_pct",
    "msgs_per_s",
    "lat_p50_ms",
    "lat_p99_ms",
    "emit_p50_us",
    "emit_p99_us",
    "emit_max_us",
    "cpu_per_msg_us",
    "threads",
    "peak_rss_mb",
    "rss_growth_mb",
    "rss_per_client_kb",
    "client_cpu_pct",
    "slowdown_pct",
    "own_slowdown_pct",
    "runq_pct",
    "stream_rate",
    "work_ms",
    "work_streamed_ms",
    "run_s",
)


def median_of(runs):
    """Medians of the numeric measurements of several runs (None when none)."""
    out = {"runs": len(runs)}
    for key in NUMERIC:
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = statistics.median(values) if values else None
    # Non-numeric facts: keep every run's, they are small.
    for key in (
        "paused",
        "timed_out",
        "out_of_order",
        "unexpected_closes",
        "deflate_negotiated",
        "scrapes",
        "pipeline",
    ):
        values = [r[key] for r in runs if key in r]
        if values:
            out[key] = values
    return out


def check_prerequisites(peers):
    """Peers that can run, after telling the user how to install the others."""
    if shutil.which("node") is None:
        sys.exit("benchmarks: Node.js is required for the load client (apt-get install nodejs npm)")
    if not (HERE / "node_modules" / "ws").is_dir():
        sys.exit("benchmarks: the load client's packages are missing; run: npm ci --prefix benchmarks")
    usable = []
    for name in peers:
        peer = PEERS[name]
        missing = peer.missing()
        if missing:
            print(
                f"benchmarks: skipping {name}: {', '.join(missing)} not installed; "
                f"run: pip install -r benchmarks/requirements.txt",
                file=sys.stderr,
            )
        else:
            usable.append(name)
    return usable


def run_suite(
    scenarios,
    peers,
    repeat,
    quick,
    python,
    log_dir,
    progress=print,
    any_peer=False,
    profile_dir=None,
    cap_repeats=True,
):
    """Run every scenario on every peer ``repeat`` times (a scenario's
    ``max_repeat`` at most, with ``cap_repeats``).

    Repetitions are the outer loop: each round runs every scenario on every
    peer (in a rotating order), so a change in the machine's load over the
    suite touches every peer and every scenario alike, and a scenario and its
    baseline (paused20 and healthy20, say) are measured minutes apart at most.

    Returns ``{scenario: {peer: {"runs": [...], "errors": [...], "median": {...}}
    or {..., "skipped": why}}}``.
    """
    results = {}
    for sname in scenarios:
        names = [p for p in peers if any_peer or p in SCENARIOS[sname].peers]
        results[sname] = {p: {"runs": [], "errors": []} for p in names}
    for rep in range(repeat):
        for sname in scenarios:
            scenario = SCENARIOS[sname]
            names = list(results[sname])
            order = names[rep % len(names) :] + names[: rep % len(names)] if names else []
            rounds = min(repeat, scenario.max_repeat) if cap_repeats and scenario.max_repeat else repeat
            if rep >= rounds:
                continue
            for pname in order:
                slot = results[sname][pname]
                if "skipped" in slot:
                    continue
                started = time.monotonic()
                try:
                    run = run_one(PEERS[pname], scenario, quick, log_dir, python, profile_dir)
                except Skip as exc:
                    slot["skipped"] = str(exc)
                    progress(f"  {sname:<11} {pname:<10} skipped: {exc}")
                    continue
                except Exception as exc:  # one failed run must not lose the others
                    slot["errors"].append(str(exc))
                    progress(f"  {sname:<11} {pname:<10} run {rep + 1}: FAILED: {exc}")
                    continue
                run["run_s"] = time.monotonic() - started  # the whole run, set-up included (suite timing)
                slot["runs"].append(run)
                progress(
                    f"  {sname:<11} {pname:<10} run {rep + 1}/{rounds}: {_summary(run)} "
                    f"({run['run_s']:.1f} s)"
                )
    for by_peer in results.values():
        for slot in by_peer.values():
            if slot["runs"]:
                slot["median"] = median_of(slot["runs"])
    return results


def _summary(run):
    text = (
        f"{run['delivered_pct']:.1f}% {run['msgs_per_s']:,.0f} msg/s, p99 {_fmt_ms(run['lat_p99_ms'])}, "
        f"emit p50 {_fmt_us(run['emit_p50_us'])}, cpu/msg {_fmt_us(run['cpu_per_msg_us'])}"
    )
    if "paused" in run:
        p = run["paused"]
        text += (
            f", paused: close {p['close_code']}, got {p['received']}/{p['of']}, recovered {p['recovered']}"
        )
    if "pipeline" in run:
        text += (
            f", compute slowdown {_fmt_pct(run['slowdown_pct'])} "
            f"(pairs {', '.join(_fmt_pct(v) for v in run['pipeline']['pair_slowdown_pct'])}; "
            f"without run-queue waits {_fmt_pct(run['own_slowdown_pct'])}; "
            f"work {run['work_ms']:.0f} ms alone), stream {run['stream_rate']:.0f}/s"
        )
    return text


# -- formatting ---------------------------------------------------------------------


def _fmt_us(value):
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value / 1000:.1f} ms"
    return f"{value:.1f} µs" if value < 100 else f"{value:.0f} µs"


def _fmt_ms(value):
    return "-" if value is None else _fmt_us(value * 1000)


def _fmt_num(value, unit="", digits=0):
    return "-" if value is None else f"{value:,.{digits}f}{unit}"


def _fmt_pct(value):
    """A signed percentage (a slowdown can come out negative: noise)."""
    return "-" if value is None else f"{value:+.1f} %"


COLUMNS = [
    # (header, key, formatter, better: "high"/"low"/None)
    ("delivered", "delivered_pct", lambda v: _fmt_num(v, " %", 1), "high"),
    ("msgs/s", "msgs_per_s", lambda v: _fmt_num(v), "high"),
    ("lat p50", "lat_p50_ms", _fmt_ms, "low"),
    ("lat p99", "lat_p99_ms", _fmt_ms, "low"),
    ("emit p50", "emit_p50_us", _fmt_us, "low"),
    ("emit p99", "emit_p99_us", _fmt_us, "low"),
    ("CPU/msg", "cpu_per_msg_us", _fmt_us, "low"),
    ("threads", "threads", lambda v: _fmt_num(v), "low"),
    ("peak RSS", "peak_rss_mb", lambda v: _fmt_num(v, " MB", 1), "low"),
    ("RSS growth", "rss_growth_mb", lambda v: _fmt_num(v, " MB", 1), "low"),
    ("client CPU", "client_cpu_pct", lambda v: _fmt_num(v, " %"), None),
]
# Only when a pipeline scenario ran: the pipeline thread's slowdown (its ratio
# cell is "-": a ratio of two percentages near zero means nothing).
SLOWDOWN_COLUMN = ("slowdown", "slowdown_pct", _fmt_pct, None)


def columns_for(results):
    """The table's columns for these results."""
    if any(SCENARIOS[s].pipeline for s in results if s in SCENARIOS):
        return COLUMNS + [SLOWDOWN_COLUMN]
    return COLUMNS


def _ratio(a, b):
    if a is None or b is None or b == 0:
        return "-"
    r = a / b
    if r >= 100:
        return f"{r:.0f}x"
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


def _shown(pname):
    peer = PEERS.get(pname)
    return peer.shown if peer else pname


def table_rows(results):
    """Rows (lists of cells) of the results table, with coda_ws/peer ratio rows."""
    columns = columns_for(results)
    rows = []
    for sname, by_peer in results.items():
        for pname, slot in by_peer.items():
            if "skipped" in slot:
                rows.append([sname, _shown(pname), f"skipped: {slot['skipped']}"] + [""] * (len(columns) - 1))
                continue
            med = slot.get("median")
            if med is None:
                why = slot["errors"][-1].splitlines()[0] if slot["errors"] else "no run"
                rows.append([sname, _shown(pname), f"failed: {why}"] + [""] * (len(columns) - 1))
                continue
            rows.append([sname, _shown(pname)] + [fmt(med.get(key)) for _, key, fmt, _ in columns])
        coda = by_peer.get("coda_ws", {}).get("median")
        if coda:
            for pname, slot in by_peer.items():
                if pname == "coda_ws" or not slot.get("median"):
                    continue
                rows.append(
                    [sname, f"coda_ws/{pname}"]
                    + [
                        _ratio(coda.get(key), slot["median"].get(key)) if key != "slowdown_pct" else "-"
                        for _, key, _, _ in columns
                    ]
                )
    return rows


def legends(results):
    """Lines under the tables for the peers that need one (the floor)."""
    shown = {p for by_peer in results.values() for p in by_peer}
    return [PEERS[p].legend for p in PEERS if p in shown and PEERS[p].legend]


def format_text_table(results):
    headers = ["scenario", "peer"] + [c[0] for c in columns_for(results)]
    rows = table_rows(results)
    widths = [
        max(len(h), *(len(r[i]) for r in rows if not r[2].startswith(("skipped", "failed")) or i < 2))
        if rows
        else len(h)
        for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.rjust(w) if i > 1 else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    previous = None
    for row in rows:
        if previous is not None and row[0] != previous:
            lines.append("")
        previous = row[0]
        if row[2].startswith(("skipped", "failed")):
            lines.append(f"{row[0].ljust(widths[0])}  {row[1].ljust(widths[1])}  {row[2]}")
            continue
        lines.append(
            "  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
        )
    return "\n".join(lines)


def format_markdown_table(results):
    headers = ["scenario", "peer"] + [c[0] for c in columns_for(results)]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in table_rows(results):
        if row[2].startswith(("skipped", "failed")):
            row = row[:3] + [""] * (len(headers) - 3)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _pipeline_note(r, rate):
    """One run of a pipeline scenario in words."""
    pairs = ", ".join(f"{v:+.1f}" for v in r["pair_slowdown_pct"])
    text = (
        f"work {1000 * statistics.median(r['baseline_s']):.0f} ms alone, "
        f"{1000 * statistics.median(r['streamed_s']):.0f} ms streamed ({r['pairs']} pairs of {r['passes']} "
        f"passes), slowdown {_fmt_pct(r['slowdown_pct'])} (pairs {pairs})"
    )
    if "own_slowdown_pct" in r:
        waits = sum(r["runq_baseline_s"]) + sum(r["runq_streamed_s"])
        share = 100 * waits / (sum(r["baseline_s"]) + sum(r["streamed_s"]))
        text += (
            f", without the OS's run-queue waits {_fmt_pct(r['own_slowdown_pct'])} (pairs "
            f"{', '.join(f'{v:+.1f}' for v in r['pair_own_slowdown_pct'])}: the waits were {share:.0f} % of "
            "the work's time)"
        )
    text += f", stream {r['stream_rate']:.0f} events/s of {rate:.0f}"
    if r["cap_reached"]:
        text += f", the cap ran out in {r['cap_reached']} run(s)"
    return text


def scenario_notes(results):
    """One line per fact the table has no column for (paused reader, RSS per client, deflate)."""
    notes = []
    for sname, by_peer in results.items():
        for pname, slot in by_peer.items():
            med = slot.get("median")
            if not med:
                continue
            if "paused" in med:
                outcomes = []
                for p in med["paused"]:
                    rec = ",".join(str(r).lower() for r in p["recovered"]) or "-"
                    outcomes.append(
                        f"close {p['close_code']}, got {p['received']}/{p['of']}, resume recovered={rec}"
                    )
                notes.append(
                    f"{sname} {pname}: paused client: "
                    + "; ".join(outcomes)
                    + f"; emit max {_fmt_us(med['emit_max_us'])}"
                )
            if sname == "idle1000":
                notes.append(
                    f"{sname} {pname}: RSS per connected client {_fmt_num(med['rss_per_client_kb'], ' KB')}"
                )
            if "deflate_negotiated" in med and SCENARIOS[sname].deflate:
                notes.append(
                    f"{sname} {pname}: permessage-deflate negotiated on "
                    f"{'/'.join(str(d) for d in med['deflate_negotiated'])} of "
                    f"{SCENARIOS[sname].clients} clients"
                )
            if "pipeline" in med:
                notes.append(
                    f"{sname} {pname}: "
                    + "; ".join(
                        f"run {k}: {_pipeline_note(r, SCENARIOS[sname].rate)}"
                        for k, r in enumerate(med["pipeline"], 1)
                    )
                )
            if "scrapes" in med:
                notes.append(
                    f"{sname} {pname}: /metrics answered "
                    + "; ".join(
                        f"{s['count']} scrapes (p50 {_fmt_ms(s['p50_ms'])}, max {_fmt_ms(s['max_ms'])}, "
                        f"{s['errors']} errors)"
                        for s in med["scrapes"]
                    )
                )
            for number, run in enumerate(slot["runs"], 1):
                problems = []
                if run["timed_out"]:
                    problems.append("cut off at the time limit")
                if run["out_of_order"]:
                    problems.append(f"{run['out_of_order']} duplicate or reordered events")
                if run["unexpected_closes"]:
                    resumed = run.get("healthy_resumes", [])
                    lost = [r for r in resumed if not r]
                    problems.append(
                        f"{run['unexpected_closes']} healthy client(s) closed by the server "
                        f"(codes {', '.join(run['close_codes'])}), {len(resumed)} resume(s), "
                        f"{len(lost)} with recovered=false"
                    )
                if problems:
                    notes.append(
                        f"{sname} {pname}, run {number}: "
                        + "; ".join(problems)
                        + f"; delivered {run['delivered_pct']:.1f} %"
                    )
            if slot["errors"]:
                notes.append(
                    f"{sname} {pname}: {len(slot['errors'])} failed run(s): {slot['errors'][0][:200]}"
                )
        floor = by_peer.get("raw", {}).get("median")
        others = [(p, slot["median"]) for p, slot in by_peer.items() if p != "raw" and slot.get("median")]
        if floor and others:
            parts = []
            for header, key in (
                ("CPU/msg", "cpu_per_msg_us"),
                ("lat p99", "lat_p99_ms"),
                ("msgs/s", "msgs_per_s"),
            ):
                parts.append(
                    f"{header} " + ", ".join(f"{p} {_ratio(m.get(key), floor.get(key))}" for p, m in others)
                )
            notes.append(f"{sname}: each implementation / the floor (raw): " + "; ".join(parts))
    return notes


# -- targets ----------------------------------------------------------------------


def _med(results, scenario, peer, key):
    return results.get(scenario, {}).get(peer, {}).get("median", {}).get(key)


def evaluate_targets(results):
    """The targets of issues 4, 7, 9 and 15: (description, status, evidence) tuples.

    status is "met", "NOT met" or "n/a" (a scenario or peer did not run).
    """
    out = []

    def target(text, ok, evidence):
        out.append((text, "n/a" if ok is None else ("met" if ok else "NOT met"), evidence))

    def get(s, p, k):
        return _med(results, s, p, k)

    c = get("burst100", "coda_ws", "cpu_per_msg_us")
    w = get("burst100", "websockets", "cpu_per_msg_us")
    target(
        "CPU per delivered message at 100 clients <= 0.5x websockets",
        None if None in (c, w) else c <= 0.5 * w,
        f"{_fmt_us(c)} vs {_fmt_us(w)} ({_ratio(c, w)})",
    )
    c = get("burst100", "coda_ws", "msgs_per_s")
    w = get("burst100", "websockets", "msgs_per_s")
    s = get("burst100", "socketio", "msgs_per_s")
    target(
        "delivered msgs/s at 100 clients, burst >= 2x websockets",
        None if None in (c, w) else c >= 2 * w,
        f"{_fmt_num(c)} vs {_fmt_num(w)} ({_ratio(c, w)})",
    )
    target(
        "delivered msgs/s at 100 clients, burst >= 5x Flask-SocketIO",
        None if None in (c, s) else c >= 5 * s,
        f"{_fmt_num(c)} vs {_fmt_num(s)} ({_ratio(c, s)})",
    )
    c = get("burst100", "coda_ws", "emit_p50_us")
    w = get("burst100", "websockets", "emit_p50_us")
    target(
        "emit() p50 at 100 clients <= 0.5x websockets",
        None if None in (c, w) else c <= 0.5 * w,
        f"{_fmt_us(c)} vs {_fmt_us(w)} ({_ratio(c, w)})",
    )
    p99s = {s: get(s, "coda_ws", "emit_p99_us") for s in ("burst1", "burst100", "rate100")}
    known = [v for v in p99s.values() if v is not None]
    target(
        "emit() p99 < 100 µs (burst1, burst100, rate100)",
        None if not known else all(v < 100 for v in known),
        ", ".join(f"{k} {_fmt_us(v)}" for k, v in p99s.items()),
    )
    one = get("burst1", "coda_ws", "emit_p50_us")
    hundred = get("burst100", "coda_ws", "emit_p50_us")
    one99 = get("burst1", "coda_ws", "emit_p99_us")
    hundred99 = get("burst100", "coda_ws", "emit_p99_us")
    same = None
    if None not in (one, hundred, one99, hundred99):
        same = max(one, hundred) <= 1.3 * min(one, hundred) and max(one99, hundred99) <= 1.3 * min(
            one99, hundred99
        )
    target(
        "emit() cost the same (within 1.3x) at 1 and 100 clients",
        same,
        f"p50 {_fmt_us(one)} vs {_fmt_us(hundred)}, p99 {_fmt_us(one99)} vs {_fmt_us(hundred99)}",
    )
    c = get("rate100", "coda_ws", "lat_p99_ms")
    w = get("rate100", "websockets", "lat_p99_ms")
    target(
        "100 clients at 500 events/s: latency p99 <= 0.5x websockets",
        None if None in (c, w) else c <= 0.5 * w,
        f"{_fmt_ms(c)} vs {_fmt_ms(w)} ({_ratio(c, w)})",
    )
    for paused, healthy in (("paused20", "healthy20"), ("paused1", "rate1"), ("paused100", "rate100")):
        slot = results.get(paused, {}).get("coda_ws", {})
        med = slot.get("median")
        if not med:
            if paused == "paused20":
                target("paused reader (20 clients)", None, "not run")
            continue
        base = get(healthy, "coda_ws", "lat_p99_ms")
        ok = med["delivered_pct"] >= 100.0 and base is not None and med["lat_p99_ms"] <= 1.5 * base
        target(
            f"{paused}: healthy clients get 100% with p99 <= 1.5x {healthy}",
            None if base is None else ok,
            f"{med['delivered_pct']:.1f}%, p99 {_fmt_ms(med['lat_p99_ms'])} vs {_fmt_ms(base)} "
            f"({_ratio(med['lat_p99_ms'], base)})",
        )
        base_emit = get(healthy, "coda_ws", "emit_p99_us")
        base_max = get(healthy, "coda_ws", "emit_max_us")
        # The max is one call: on a loaded machine the OS alone can stall it,
        # so it is judged against the same scenario without the paused client.
        target(
            f"{paused}: emit() never blocks (p99 within 1.5x of {healthy}, max < 20 ms or within 2x of "
            f"{healthy}'s)",
            None
            if base_emit is None
            else med["emit_p99_us"] <= 1.5 * base_emit and med["emit_max_us"] < max(20_000, 2 * base_max),
            f"p99 {_fmt_us(med['emit_p99_us'])} vs {_fmt_us(base_emit)}, max {_fmt_us(med['emit_max_us'])} "
            f"vs {_fmt_us(base_max)}",
        )
        target(
            f"{paused}: RSS grows less than 10 MB",
            med["rss_growth_mb"] < 10,
            f"{med['rss_growth_mb']:.1f} MB",
        )
        outcomes = med.get("paused", [])
        evidence = "; ".join(
            f"close {p['close_code']}, recovered {p['recovered']}, {p['received']}/{p['of']}"
            for p in outcomes
        )
        if SCENARIOS[paused].expect_close:
            ok = bool(outcomes) and all(
                p["close_code"] == 4008
                and p["recovered"]
                and all(p["recovered"])
                and p["received"] == p["of"]
                for p in outcomes
            )
            target(f"{paused}: the paused client is closed with 4008 and resumes without loss", ok, evidence)
        else:
            ok = bool(outcomes) and all(p["received"] == p["of"] for p in outcomes)
            target(
                f"{paused}: the paused client gets every event once it reads again (the kernel's buffers "
                "held its backlog: too few events for a 4008)",
                ok,
                evidence,
            )
    c = get("busy100", "coda_ws", "lat_p99_ms")
    w = get("busy100", "websockets", "lat_p99_ms")
    target(
        "(not in the issue) a server thread busy with Python code: latency p99 <= websockets",
        None if None in (c, w) else c <= w,
        f"{_fmt_ms(c)} vs {_fmt_ms(w)} ({_ratio(c, w)})",
    )
    c = get("deflate100", "coda_ws", "cpu_per_msg_us")
    b = get("ws100", "coda_ws", "cpu_per_msg_us")
    target(
        "deflate offered: CPU per message <= 1.2x the uncompressed run (ws100: same clients, no offer)",
        None if None in (c, b) else c <= 1.2 * b,
        f"{_fmt_us(c)} vs {_fmt_us(b)} ({_ratio(c, b)})",
    )
    d = get("idle1000", "coda_ws", "delivered_pct")
    p99 = get("idle1000", "coda_ws", "lat_p99_ms")
    kb = get("idle1000", "coda_ws", "rss_per_client_kb")
    target(
        "1000 clients at 10 events/s: all delivered, p99 < 50 ms",
        None if None in (d, p99) else d >= 100.0 and p99 < 50,
        f"{_fmt_num(d, ' %', 1)}, p99 {_fmt_ms(p99)}",
    )
    target(
        "1000 clients: RSS per connected client < 150 KB (aim)",
        None if kb is None else kb < 150,
        f"{_fmt_num(kb, ' KB')}",
    )
    c = get("scrape20", "coda_ws", "emit_p99_us")
    b = get("healthy20", "coda_ws", "emit_p99_us")
    skipped = results.get("scrape20", {}).get("coda_ws", {}).get("skipped")
    target(
        "/metrics scraped every 100 ms: emit() p99 <= 1.2x without",
        None if None in (c, b) else c <= 1.2 * b,
        f"skipped: {skipped}" if skipped else f"{_fmt_us(c)} vs {_fmt_us(b)} ({_ratio(c, b)})",
    )
    _issue15_targets(results, target, list(out))
    return out


# pipeline5: above this share of the work's time spent waiting for a CPU (other
# processes' load), its slowdown target is not judged (n/a).
RUNQ_LIMIT_PCT = 5.0

# The rows of earlier issues that issue 15 says must stay met (by the start of
# their text): burst100, paused20, deflate, scrape, busy100.
_STILL_MET = (
    "CPU per delivered message at 100 clients",
    "delivered msgs/s at 100 clients",
    "paused20:",
    "paused reader (20 clients)",
    "deflate offered",
    "/metrics scraped",
    "(not in the issue) a server thread busy",
)


def _issue15_targets(results, target, earlier):
    """Issue 15's rows (the realistic scenarios, against the floor and the
    peers), added through ``target``; ``earlier`` holds the rows before them."""

    def get(s, p, k):
        return _med(results, s, p, k)

    def compare_to(scenario, key, peer, factor, what, fmt, at_least=False):
        c, o = get(scenario, "coda_ws", key), get(scenario, peer, key)
        ok = None if None in (c, o) else (c >= factor * o if at_least else c <= factor * o)
        other = "raw (the floor)" if peer == "raw" else peer
        target(
            f"{scenario}: {what} {'>=' if at_least else '<='} {factor:g}x {other}",
            ok,
            f"{fmt(c)} vs {fmt(o)} ({_ratio(c, o)})",
        )

    compare_to("rate100", "cpu_per_msg_us", "raw", 1.2, "CPU per delivered message", _fmt_us)
    compare_to("rate100", "cpu_per_msg_us", "websockets", 0.5, "CPU per delivered message", _fmt_us)
    compare_to("rate100", "lat_p99_ms", "raw", 1.5, "latency p99", _fmt_ms)
    compare_to("rate5", "cpu_per_msg_us", "websockets", 0.5, "CPU per delivered message", _fmt_us)
    compare_to("burst1", "cpu_per_msg_us", "websockets", 0.5, "CPU per delivered message", _fmt_us)
    compare_to("burst1", "msgs_per_s", "websockets", 1.5, "delivered msgs/s", _fmt_num, at_least=True)

    # The wall-time slowdown is the target. When the OS kept the work waiting
    # for a CPU for more than RUNQ_LIMIT_PCT of its time (a loaded machine),
    # the wall times say more about the machine than about the stream, and the
    # row is not judged. (The slowdown without those waits is shown, but it is
    # not immune to load either: a thread that holds the GIL while the OS has
    # it preempted holds the work up as long.)
    wall = {p: get("pipeline5", p, "slowdown_pct") for p in DEFAULT_PEERS}
    own = {p: get("pipeline5", p, "own_slowdown_pct") for p in DEFAULT_PEERS}
    rates = {p: get("pipeline5", p, "stream_rate") for p in DEFAULT_PEERS}
    waits = [v for v in (get("pipeline5", p, "runq_pct") for p in DEFAULT_PEERS) if v is not None]
    runq = max(waits) if waits else None
    loaded = runq is not None and runq > RUNQ_LIMIT_PCT
    c, peers = wall["coda_ws"], [wall["socketio"], wall["websockets"]]
    ok = None if loaded or c is None or None in peers else (c <= 1.0 and c < min(peers))
    shown = [p for p in DEFAULT_PEERS if wall[p] is not None]
    offered = SCENARIOS["pipeline5"].rate
    evidence = "not run"
    if shown:
        evidence = (
            ", ".join(f"{p} {_fmt_pct(wall[p])}" for p in shown)
            + "; without the OS's run-queue waits "
            + ", ".join(f"{p} {_fmt_pct(own[p])}" for p in shown)
            + (
                ""
                if runq is None
                else f" (the waits: up to {runq:.0f} % of the work's time"
                + (f", over {RUNQ_LIMIT_PCT:g} %: the machine was not quiet, not judged)" if loaded else ")")
            )
            + "; stream while computing "
            + ", ".join(f"{p} {rates[p]:.0f}/s" for p in shown)
            + f" of {offered:.0f}"
        )
    target(
        "pipeline5: compute slowdown <= 1 %, and below both peers' (Flask-SocketIO, websockets)", ok, evidence
    )
    # A stream the producer could not keep to schedule steals less from the
    # work: the slowdown above counts only with the stream at its rate.
    r = rates["coda_ws"]
    target(
        f"(harness check, not in the issue) pipeline5: coda_ws kept the stream at >= 95 % of "
        f"{offered:.0f} events/s while the work ran",
        None if r is None else r >= 0.95 * offered,
        "not run" if r is None else f"{r:.0f} events/s",
    )

    c, w = get("idle1000", "coda_ws", "lat_p99_ms"), get("idle1000", "websockets", "lat_p99_ms")
    target(
        "idle1000: latency p99 <= 1.0x websockets",
        None if None in (c, w) else c <= w,
        f"{_fmt_ms(c)} vs {_fmt_ms(w)} ({_ratio(c, w)})",
    )
    kb = get("idle1000", "coda_ws", "rss_per_client_kb")
    target("idle1000: RSS per idle client <= 50 KB", None if kb is None else kb <= 50, _fmt_num(kb, " KB"))

    p50s = {s: get(s, "coda_ws", "emit_p50_us") for s in results}
    p50s = {s: v for s, v in p50s.items() if v is not None}
    low = min(p50s, key=p50s.get) if p50s else None
    target(
        "emit() p50 <= 4 µs with full validation (coda_ws's lowest p50 over the scenarios run)",
        None if low is None else p50s[low] <= 4,
        "not run" if low is None else f"{low} {_fmt_us(p50s[low])} (the lowest of {len(p50s)} scenarios)",
    )
    steady = {s: get(s, "coda_ws", "emit_p99_us") for s in results if 0 < SCENARIOS[s].rate <= 500}
    steady = {s: v for s, v in steady.items() if v is not None}
    target(
        "emit() p99 < 50 µs at rates <= 500 events/s (coda_ws's highest p99 over those scenarios)",
        None if not steady else max(steady.values()) < 50,
        ", ".join(f"{s} {_fmt_us(v)}" for s, v in steady.items()) or "not run",
    )

    kept = [(text, status) for text, status, _ in earlier if text.startswith(_STILL_MET)]
    missed = [text for text, status in kept if status == "NOT met"]
    ran = [text for text, status in kept if status != "n/a"]
    target(
        "the targets already met stay met (burst100, paused20, deflate, scrape, busy100: rows above)",
        False if missed else (True if ran and len(ran) == len(kept) else None),
        ("not met: " + "; ".join(missed)) if missed else f"{len(ran)} of {len(kept)} rows evaluated",
    )


def format_targets(targets, markdown=False):
    if markdown:
        lines = ["| target | status | measured |", "|---|---|---|"]
        lines += [
            f"| {t} | **{s}** | {e} |" if s == "NOT met" else f"| {t} | {s} | {e} |" for t, s, e in targets
        ]
        return "\n".join(lines)
    width = max(len(t) for t, _, _ in targets)
    return "\n".join(f"  {s:<8} {t.ljust(width)}  {e}" for t, s, e in targets)


# -- baseline -------------------------------------------------------------------------


def compare(results, baseline):
    """Lines of current/baseline ratios for every measured cell."""
    lines = ["current / baseline (medians; < 1.00x is better for every column but delivered and msgs/s):"]
    for sname, by_peer in results.items():
        for pname, slot in by_peer.items():
            med = slot.get("median")
            old = baseline.get("results", {}).get(sname, {}).get(pname, {}).get("median")
            if not med or not old:
                continue
            cells = [
                f"{header} {_ratio(med.get(key), old.get(key))}"
                for header, key, _, _ in COLUMNS
                if key != "client_cpu_pct"
            ]
            lines.append(f"  {sname:<11} {pname:<10} " + ", ".join(cells))
    return "\n".join(lines)


def machine_info():
    model = "?"
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        node = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        node = "?"
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "node": node,
        "kernel": platform.release(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def peer_versions(python):
    code = (
        "import importlib.metadata as m\n"
        "for d in ('coda-ws','flask','werkzeug','simple-websocket','flask-socketio','python-socketio',"
        "'python-engineio','websockets'):\n"
        "    try: print(d, m.version(d))\n"
        "    except m.PackageNotFoundError: print(d, '-')\n"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


# -- report -------------------------------------------------------------------------------


def report(document, markdown_path=None, baseline=None):
    """Print the tables, notes, targets and load-client check of a suite run
    (``document`` as saved by ``--save-baseline``); with ``markdown_path``,
    write them as Markdown there too."""
    results, repeat, calibration = document["results"], document["repeat"], document.get("calibration")
    print()
    fewer = {}
    for sname, by_peer in results.items():
        count = max((len(slot["runs"]) + len(slot["errors"]) for slot in by_peer.values()), default=repeat)
        if 0 < count < repeat:
            fewer.setdefault(count, []).append(sname)
    fewer_text = "".join(f" ({', '.join(names)}: {count})" for count, names in sorted(fewer.items()))
    print(
        f"Results: medians of {repeat} run(s){fewer_text}; ratio rows are coda_ws / peer "
        "(below 1.00x is better except for delivered and msgs/s)"
    )
    print(format_text_table(results))
    for line in legends(results):
        print(line)
    print()
    print("Scenarios: " + "; ".join(f"{name}: {SCENARIOS[name].title}" for name in results))
    notes = scenario_notes(results)
    if notes:
        print()
        print("Notes:")
        for note in notes:
            print(f"  {note}")
    targets = evaluate_targets(results)
    print()
    print("Targets (issues 4, 7, 9, 15):")
    print(format_targets(targets))
    best = calibration.get("best") if calibration else None
    if best:
        print()
        print(
            f"Load client capacity (trivial server, burst100, best of {len(calibration['runs'])}): "
            f"{_fmt_num(best['msgs_per_s'])} msgs/s with the client at {_fmt_num(best['client_cpu_pct'], ' %')} "
            f"CPU and the server at {_fmt_us(best['cpu_per_msg_us'])} CPU per message"
        )
    if baseline is not None:
        print()
        print(compare(results, baseline))
    if markdown_path:
        machine, versions = document["machine"], document["versions"]
        header = (
            f"Run of {machine['date']}: {'quick' if document['quick'] else 'full'} suite, {repeat} "
            f"repetition(s){fewer_text}, {document['elapsed_s']:.0f} s; {machine['nproc']} x {machine['cpu']}, "
            f"{machine['memory_gb']} GB, Linux {machine['kernel']}, Python {machine['python']}, Node "
            f"{machine['node']}; load average {machine['load_average']} at the start. Versions: "
            + ", ".join(f"{k} {v}" for k, v in versions.items())
            + "."
        )
        text = (
            header
            + "\n\n"
            + format_markdown_table(results)
            + "\n\n"
            + "".join(f"{line}\n\n" for line in legends(results))
            + "Scenarios: "
            + "; ".join(f"`{name}`: {SCENARIOS[name].title}" for name in results)
            + ".\n\n"
            + "\n".join(f"- {n}" for n in notes)
            + "\n\n"
            + format_targets(targets, markdown=True)
            + "\n"
        )
        if best:
            text += (
                f"\nLoad client capacity (trivial server, burst100, best of {len(calibration['runs'])}): "
                f"{_fmt_num(best['msgs_per_s'])} msgs/s, client CPU {_fmt_num(best['client_cpu_pct'], ' %')}.\n"
            )
        pathlib.Path(markdown_path).write_text(text)
        print(f"markdown written to {markdown_path}")


# -- CLI ----------------------------------------------------------------------------------


def _names(text, known, what):
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown)}; known: {', '.join(known)}")
    return names


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small counts, one repetition (for development)")
    parser.add_argument(
        "--scenarios",
        type=lambda t: _names(t, SCENARIOS, "scenario"),
        default=list(DEFAULT_SCENARIOS),
        help=f"comma-separated, from: {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--peers",
        type=lambda t: _names(t, PEERS, "peer"),
        default=list(DEFAULT_PEERS),
        help=f"comma-separated, from: {', '.join(DEFAULT_PEERS)} (raw: the floor, not a product)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="repetitions per scenario and peer "
        "(default 3, rate5 and pipeline5 2; --quick 1; given, it applies to every scenario)",
    )
    parser.add_argument("--save-baseline", metavar="FILE", help="write the results as JSON to FILE")
    parser.add_argument(
        "--compare", metavar="FILE", help="print ratios against a baseline saved with --save-baseline"
    )
    parser.add_argument("--markdown", metavar="FILE", help="also write the tables as Markdown to FILE")
    parser.add_argument(
        "--report",
        metavar="FILE",
        help="run nothing: print (and with --markdown, write) the tables of a run saved with --save-baseline",
    )
    parser.add_argument(
        "--calibrate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="first measure the load client against a trivial server, to show it is not the "
        "bottleneck (default: on for the full suite, off with --quick)",
    )
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter for the servers (default: this one)"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' and clients' stderr logs")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="sample each server with py-spy into DIR (collapsed "
        "stacks; summarise with benchmarks/profile_summary.py; profiling slows the server, so "
        "do not read the table's numbers from such a run)",
    )
    args = parser.parse_args(argv)
    if args.report:
        document = json.loads(pathlib.Path(args.report).read_text())
        report(document, args.markdown)
        return 0
    repeat = args.repeat or (1 if args.quick else 3)
    if args.calibrate is None:
        args.calibrate = not args.quick
    peers = check_prerequisites(args.peers)
    if not peers:
        sys.exit("benchmarks: no peer can run")
    baseline = None
    if args.compare:
        baseline = json.loads(pathlib.Path(args.compare).read_text())

    log_dir = tempfile.mkdtemp(prefix="coda-ws-bench-")
    started = time.monotonic()
    machine = machine_info()
    print(
        f"coda_ws benchmarks: {'quick' if args.quick else 'full'}, {repeat} repetition(s), "
        f"peers {', '.join(peers)}; machine: {machine['nproc']} x {machine['cpu']}, Python {machine['python']}, "
        f"Node {machine['node']}, load average {machine['load_average']}",
        flush=True,
    )
    try:
        calibration = None
        if args.calibrate:
            # Best of two: the machine's load can only make the client look slower.
            calibration = run_suite(
                ["burst100"],
                ["blast"],
                2,
                args.quick,
                args.python,
                log_dir,
                progress=lambda line: print(line, flush=True),
                any_peer=True,
            )
            calibration = calibration["burst100"]["blast"]
            if calibration["runs"]:
                calibration["best"] = max(calibration["runs"], key=lambda r: r["msgs_per_s"])
        if args.profile:
            pathlib.Path(args.profile).mkdir(parents=True, exist_ok=True)
        results = run_suite(
            args.scenarios,
            peers,
            repeat,
            args.quick,
            args.python,
            log_dir,
            progress=lambda line: print(line, flush=True),
            profile_dir=args.profile,
            cap_repeats=args.repeat is None,
        )
    finally:
        if args.keep_logs:
            print(f"logs kept in {log_dir}")
        else:
            shutil.rmtree(log_dir, ignore_errors=True)
    elapsed = time.monotonic() - started

    document = {
        "machine": machine,
        "versions": peer_versions(args.python),
        "quick": args.quick,
        "repeat": repeat,
        "elapsed_s": elapsed,
        "results": results,
        "calibration": calibration,
    }
    report(document, args.markdown, baseline)
    print()
    print(f"suite finished in {elapsed:.0f} s; load average now {[round(x, 2) for x in os.getloadavg()]}")
    if args.save_baseline:
        pathlib.Path(args.save_baseline).write_text(json.dumps(document, indent=1, default=str))
        print(f"results saved to {args.save_baseline}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
