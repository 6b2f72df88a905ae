"""What do N slow handshakes cost, and does a healthy client still get in?

A coda_ws server runs in a child process (so its threads and RSS are its own);
this process opens N raw TCP connections to it, each sending a partial request
head (``GET / HTTP/1.1``, ``Host``, no blank line), and keeps one in ten of them
trickling one byte every 0.2 s. While all N are pending it measures the
server's OS threads and RSS (peaks over one second, minus a baseline taken
after a warm-up) and the time a healthy WebSocket client takes from its TCP
connect to its first frame (``hello``, ``?v=1``); then it stops the server and
reports how long ``stop()`` took with the N connections still pending and how
many threads it left behind.

The server uses ``handshake_timeout=30`` so that the slow connections are still
pending while everything is measured (with the default 10 s they would be cut
sooner, which changes nothing in what is measured).

Run: ``python benchmarks/slow_handshakes.py [--counts 1000,3000] [--repeat 3]``
(``PYTHONPATH=/tmp/other-copy`` measures another copy of coda_ws).
"""

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import psutil
from websockets.sync.client import connect

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

SERVER = r"""
import json, sys, threading, time
from coda_ws import CodaWebSocketServer
before = threading.active_count()
server = CodaWebSocketServer(host="127.0.0.1", port=0, handshake_timeout=float(sys.argv[1]))
server.start()
print(json.dumps({"port": server.port}), flush=True)
sys.stdin.readline()
started = time.monotonic()
server.stop(timeout=5.0)
print(json.dumps({"stop_s": time.monotonic() - started, "left": threading.active_count() - before}), flush=True)
"""

PARTIAL_HEAD = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\n"


def healthy_connect(port):
    """Seconds from a healthy client's TCP connect to its first frame (``hello``)."""
    started = time.perf_counter()
    with connect(f"ws://127.0.0.1:{port}/?v=1&replay=0", open_timeout=30, close_timeout=2) as ws:
        frame = json.loads(ws.recv(timeout=30))
        elapsed = time.perf_counter() - started
    assert frame["type"] == "hello", frame
    return elapsed


def sample(proc, seconds, low=False):
    """Peak threads and RSS (bytes) of ``proc`` over ``seconds``, sampled every 20 ms
    (``low``: the fewest threads seen instead, for a baseline without a request thread
    that is just ending)."""
    counts, rss = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        counts.append(proc.num_threads())
        rss = max(rss, proc.memory_info().rss)
        time.sleep(0.02)
    return (min(counts) if low else max(counts)), rss


def one_run(count, handshake_timeout):
    child = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(handshake_timeout)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", ROOT)},
        cwd=tempfile.gettempdir(),  # `-c` puts the working directory first on sys.path
    )
    slow = []
    stop_trickle = threading.Event()
    trickler = None
    try:
        port = json.loads(child.stdout.readline())["port"]
        proc = psutil.Process(child.pid)
        for _ in range(3):  # warm-up: the first connection imports and allocates lazily
            healthy_connect(port)
        base_threads, base_rss = sample(proc, 0.5, low=True)
        base_fds = proc.num_fds()
        opened = time.monotonic()
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(PARTIAL_HEAD)
            slow.append(sock)
        trickling = slow[::10]

        def trickle():
            while not stop_trickle.wait(0.2):
                for sock in trickling:
                    try:
                        sock.send(b"X")
                    except OSError:
                        pass

        trickler = threading.Thread(target=trickle, name="bench-trickle")
        trickler.start()
        # Accepted by the server (not just queued by the kernel): one fd each.
        deadline = time.monotonic() + 60
        while proc.num_fds() < base_fds + count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server accepted only {proc.num_fds() - base_fds} of {count}")
            time.sleep(0.02)
        open_s = time.monotonic() - opened
        threads, rss = sample(proc, 1.0)
        connects = [healthy_connect(port) for _ in range(3)]
        pending_at_end = proc.num_fds() - base_fds
        child.stdin.write("stop\n")
        child.stdin.flush()
        stopped = json.loads(child.stdout.readline())
        return {
            "count": count,
            "open_s": open_s,
            "threads": threads - base_threads,
            "rss_mb": (rss - base_rss) / 1e6,
            "connect_ms": statistics.median(connects) * 1e3,
            "connect_max_ms": max(connects) * 1e3,
            "pending_at_end": pending_at_end,
            "stop_s": stopped["stop_s"],
            "left": stopped["left"],
        }
    finally:
        stop_trickle.set()
        if trickler is not None:
            trickler.join()
        for sock in slow:
            sock.close()
        if child.poll() is None:
            child.kill()
        child.wait()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1000,3000", help="slow connections per run (comma-separated)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per count (the table shows medians)")
    parser.add_argument("--handshake-timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * max(counts) + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2 * max(counts) + 1000), hard))
    rows = []
    for count in counts:
        runs = [one_run(count, args.handshake_timeout) for _ in range(args.repeat)]
        rows.append({key: statistics.median(run[key] for run in runs) for key in runs[0]})
    print(
        f"{'slow':>6} | {'extra threads':>13} | {'extra RSS':>9} | {'healthy connect p50':>19} | "
        f"{'max':>8} | {'still open':>10} | {'stop()':>7} | {'threads left':>12}"
    )
    print("-" * 107)
    for row in rows:
        print(
            f"{row['count']:>6} | {row['threads']:>13.0f} | {row['rss_mb']:>6.1f} MB | "
            f"{row['connect_ms']:>16.1f} ms | {row['connect_max_ms']:>5.1f} ms | {row['pending_at_end']:>10.0f} | "
            f"{row['stop_s']:>5.2f} s | {row['left']:>12.0f}"
        )
    print(
        f"(medians of {args.repeat} run(s); extra = peak while pending minus the baseline after warm-up; "
        f"1 in 10 slow connections trickles a byte every 0.2 s)"
    )


if __name__ == "__main__":
    main()
