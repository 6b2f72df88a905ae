#!/usr/bin/env python3
"""Throughput and latency through the Redis backplane, next to the embedded server.

    python benchmarks/backplane_bench.py                  # about a minute
    python benchmarks/backplane_bench.py --quick          # small counts
    python benchmarks/backplane_bench.py --redis redis://127.0.0.1:6379/0 --events 20000 --rate 1500

Two set-ups, each measured twice (a burst for throughput, a paced run for
latency):

* embedded: one server process that also emits (the pipeline and the stream
  in one process, the default deployment), one client;
* redis: three emitter processes (``RedisEmitter``, as the STT, LLM and TTS
  workers would be), two server nodes (``CodaWebSocketServer(backplane=...)``)
  on different ports, one client per node.

Clients run as threads of this process and connect as v1 clients filtered
to the run's session. Throughput: events delivered to every client divided
by the time from the start signal to the last event received (the slowest
client counts). Latency: receive time minus the event's own ``timestamp``
(stamped by ``emit()`` in the emitting process; one host, one clock), over
the paced run. ``emit()``: the mean caller cost measured in the emitters.

Everything listens on 127.0.0.1; Redis keys live under a unique prefix that
is deleted afterwards; every child process is killed in a finally block.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# A server node (or, with "embedded", a server that emits on command). It
# prints its URL, then reads commands on stdin: "burst N RUN", "paced N RATE
# RUN" (embedded only) and "quit".
_SERVER = r"""
import sys, time
from coda_ws import CodaWebSocketServer
mode, url, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
options = dict(history_size=200_000, client_queue_size=100_000)
if mode == "node":
    options.update(backplane=url, backplane_prefix=prefix)
server = CodaWebSocketServer(host="127.0.0.1", port=0, **options)
server.start()
print("url", server.url, flush=True)
for line in sys.stdin:
    words = line.split()
    if not words or words[0] == "quit":
        break
    count, run = int(words[1]), words[-1]
    interval = 1.0 / float(words[2]) if words[0] == "paced" else 0.0
    spent = 0.0
    next_at = time.perf_counter()
    for i in range(count):
        if interval:
            next_at += interval
            pause = next_at - time.perf_counter()
            if pause > 0:
                time.sleep(pause)  # pacing the benchmark's producer, not synchronization
        started = time.perf_counter()
        server.emit("llm_token", token=str(i), cumulative_text="", session_id=run)
        spent += time.perf_counter() - started
    print("emitted", count, spent / count * 1e6, flush=True)
server.stop()
"""

# An emitter process: prints "ready", waits for "go" on stdin, emits COUNT
# events (at RATE per second, or as fast as it can with RATE 0), flushes,
# prints "done MEAN_EMIT_US PUBLISHED DROPPED".
_EMITTER = r"""
import sys, time
from coda_ws.backplane import RedisEmitter
url, prefix, count, rate, run = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
emitter = RedisEmitter(url, prefix, buffer_size=max(10_000, count + 1))
emitter.emit("stt_start", mode="warm-up", session_id="warm-up")  # connect and load the script first
emitter.flush(10)
print("ready", flush=True)
sys.stdin.readline()
interval = 1.0 / rate if rate else 0.0
spent = 0.0
next_at = time.perf_counter()
for i in range(count):
    if interval:
        next_at += interval
        pause = next_at - time.perf_counter()
        if pause > 0:
            time.sleep(pause)  # pacing the benchmark's producer, not synchronization
    started = time.perf_counter()
    emitter.emit("llm_token", token=str(i), cumulative_text="", session_id=run)
    spent += time.perf_counter() - started
ok = emitter.flush(60)
stats = emitter.stats()
emitter.close()
print("done", spent / count * 1e6, stats["published"], stats["dropped"], ok, flush=True)
"""


class Proc:
    """A child Python process driven through stdin and read line by line."""

    def __init__(self, code, *args):
        env = dict(
            os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )

    def expect(self, word, timeout=60.0):
        """The words of the next stdout line starting with ``word``."""
        result = []

        def read():
            for line in self.proc.stdout:
                if line.startswith(word):
                    result.append(line.split())
                    return

        reader = threading.Thread(target=read, name="bench-read", daemon=True)
        reader.start()
        reader.join(timeout)
        if not result:
            raise RuntimeError(
                f"child did not print {word!r} within {timeout} s (exit code {self.proc.poll()})"
            )
        return result[0]

    def send(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


class Reader(threading.Thread):
    """A v1 client that records (receive time, event timestamp) for the run's events."""

    def __init__(self, url, run, count):
        super().__init__(name="bench-client", daemon=True)
        from websockets.sync.client import connect

        self.ws = connect(
            f"{url}?v=1&replay=0&types=llm_token&session_id={run}",
            open_timeout=10,
            max_size=None,
            legacy=True,
        )  # closed by close(), after the run
        hello = json.loads(self.ws.recv(timeout=10))
        assert hello["type"] == "hello", hello
        self.count = count
        self.received = []
        self.seqs = []
        self.done = threading.Event()
        self.error = None

    def run(self):
        try:
            received, seqs = self.received, self.seqs
            while len(received) < self.count:
                frame = json.loads(self.ws.recv(timeout=60))
                if frame.get("type") == "llm_token":
                    received.append((time.time(), frame["timestamp"]))
                    seqs.append(frame["seq"])
        except Exception as exc:  # reported in the table's notes
            self.error = exc
        finally:
            self.done.set()

    def close(self):
        self.ws.close()


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure(readers, started, timeout=120.0):
    for reader in readers:
        reader.done.wait(timeout)
    errors = [r.error for r in readers if r.error or len(r.received) < r.count]
    if errors:
        raise RuntimeError(f"clients did not get every event: {errors or [len(r.received) for r in readers]}")
    finish = max(r.received[-1][0] for r in readers)
    latencies = [(got - sent) * 1000 for r in readers for got, sent in r.received]
    same = all(r.seqs == readers[0].seqs for r in readers)
    return {
        "throughput": readers[0].count / (finish - started),
        "p50": percentile(latencies, 0.50),
        "p99": percentile(latencies, 0.99),
        "identical": same,
    }


def run_embedded(count, rate, duration):
    server = Proc(_SERVER, "embedded", "-", "-")
    try:
        url = server.expect("url")[1]
        results = {}
        for kind in ("burst", "paced"):
            run = uuid.uuid4().hex[:8]
            n = count if kind == "burst" else int(rate * duration)
            reader = Reader(url, run, n)
            reader.start()
            started = time.time()
            server.send(f"burst {n} {run}" if kind == "burst" else f"paced {n} {rate} {run}")
            emit_us = float(server.expect("emitted", 120)[2])
            results[kind] = {**measure([reader], started), "emit_us": emit_us}
            reader.close()
        server.send("quit")
        server.proc.wait(15)
        return results
    finally:
        server.kill()


def run_redis(url, count, rate, duration):
    prefix = f"coda_ws_bench_{uuid.uuid4().hex[:8]}"
    nodes = [Proc(_SERVER, "node", url, prefix) for _ in range(2)]
    emitters = []
    try:
        node_urls = [node.expect("url")[1] for node in nodes]
        results = {}
        for kind in ("burst", "paced"):
            run = uuid.uuid4().hex[:8]
            per_emitter = count // 3 if kind == "burst" else int(rate * duration / 3)
            per_rate = 0 if kind == "burst" else rate / 3
            emitters = [Proc(_EMITTER, url, prefix, per_emitter, per_rate, run) for _ in range(3)]
            for emitter in emitters:
                emitter.expect("ready")
            readers = [Reader(node_url, run, per_emitter * 3) for node_url in node_urls]
            for reader in readers:
                reader.start()
            started = time.time()
            for emitter in emitters:
                emitter.send("go")
            done = [emitter.expect("done", 180) for emitter in emitters]
            emit_us = statistics.mean(float(words[1]) for words in done)
            dropped = sum(int(words[3]) for words in done)
            results[kind] = {**measure(readers, started), "emit_us": emit_us, "dropped": dropped}
            for reader in readers:
                reader.close()
            for emitter in emitters:
                emitter.kill()
        for node in nodes:
            node.send("quit")
        for node in nodes:
            node.proc.wait(15)
        return results, prefix
    finally:
        for proc in nodes + emitters:
            proc.kill()
        _delete_keys(url, prefix)


def _delete_keys(url, prefix):
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match="{%s}:*" % prefix, count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--redis", default="redis://127.0.0.1:6379/0", help="the Redis to use (default: local)"
    )
    parser.add_argument(
        "--events", type=int, default=30_000, help="events in the throughput burst (default 30000)"
    )
    parser.add_argument(
        "--rate", type=float, default=1000.0, help="events per second in the latency run (default 1000)"
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of the latency run (default 5)")
    parser.add_argument("--quick", action="store_true", help="3000 events, 2 s latency run")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.duration = 3000, 2.0

    embedded = run_embedded(args.events, args.rate, args.duration)
    redis_results, _ = run_redis(args.redis, args.events, args.rate, args.duration)

    import redis

    client = redis.Redis.from_url(args.redis)
    redis_version = client.info("server")["redis_version"]
    client.close()
    print(
        f"coda_ws backplane benchmark: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"Redis {redis_version}, everything on 127.0.0.1"
    )
    print(
        f"throughput: a burst of {args.events} events; latency: {args.rate:g} events/s for {args.duration:g} s\n"
    )
    header = (
        f"{'set-up':<44} {'events/s':>10} {'emit() us':>10} {'p50 ms':>8} {'p99 ms':>8}  "
        f"{'(latency run)':<14}"
    )
    print(header)
    print("-" * len(header))
    rows = [
        ("embedded: 1 process emits and serves, 1 client", embedded),
        ("redis: 3 emitter processes, 2 nodes, 2 clients", redis_results),
    ]
    for name, result in rows:
        burst, paced = result["burst"], result["paced"]
        print(
            f"{name:<44} {burst['throughput']:>10,.0f} {burst['emit_us']:>10.1f} {paced['p50']:>8.2f} "
            f"{paced['p99']:>8.2f}"
        )
    notes = []
    if not all(redis_results[k]["identical"] for k in ("burst", "paced")):
        notes.append("WARNING: the two Redis clients did not receive identical seq sequences")
    else:
        notes.append("both Redis clients received identical streams (same seqs, same order)")
    dropped = sum(redis_results[k].get("dropped", 0) for k in ("burst", "paced"))
    notes.append(f"events dropped by emitters: {dropped}")
    notes.append("emit() us: mean caller cost in the emitting process (burst run)")
    print("\n" + "\n".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
