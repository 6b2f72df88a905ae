#!/usr/bin/env python3
"""What a SIGKILL costs a journaled server: events delivered but never committed.

    python benchmarks/crash_loss.py                     # about two minutes
    python benchmarks/crash_loss.py --quick             # a few trials
    python benchmarks/crash_loss.py --flush-intervals 0.05 0.2 1 --trials 20 --rate 1000

For each flush interval, each trial starts a server in a child process with
``journal=FILE`` and that ``journal_flush_interval``, connects one v1 client
(a thread of this process), has the child emit ``llm_token`` events at a
steady rate, and SIGKILLs it at a random moment 1 to 3 s into the run. Then
it reads the file: every event the client received with a seq above the last
committed one was delivered but lost. A trial also restarts the stream on
the file (a ``Journal`` attached to a fresh ``EventBus``) and checks the
promise that makes such a loss safe: same epoch, and the next seq above
every seq the client received (a reused seq is counted; there should be
none).

The table gives, per flush interval, the lost events (max and median over
the trials) and the time they span (emit timestamp of the newest lost event
minus that of the oldest; max and median). "A SIGKILL loses at most one
flush interval" holds when the span stays below the flush interval plus the
commit time.
"""

import argparse
import json
import logging
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from websockets.sync.client import connect  # noqa: E402

from coda_ws import EventBus  # noqa: E402
from coda_ws.journal import Journal  # noqa: E402

# A journaled server that waits for one client, then emits at a steady rate
# until it is killed.
_CHILD = r"""
import sys, time
from coda_ws import CodaWebSocketServer
path, flush, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
server = CodaWebSocketServer(host="127.0.0.1", port=0, journal=path, journal_flush_interval=flush)
server.start()
print("url", server.url, server.epoch, flush=True)
server.wait_for_clients(1)
print("go", flush=True)
start = time.monotonic()
i = 0
while True:
    server.emit("llm_token", token=str(i), cumulative_text="")
    i += 1
    delay = start + i / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)  # the workload's own pace
"""


def _read_events(url, events, ready):
    """Collect (seq, timestamp) of every event until the connection drops."""
    try:
        with connect(f"{url}?v=1", open_timeout=30, max_size=None) as ws:
            ready.set()
            for message in ws:
                frame = json.loads(message)
                if frame.get("type") == "llm_token":
                    events.append((frame["seq"], frame["timestamp"]))
    except Exception:  # the server was killed: the connection ends one way or another
        pass
    finally:
        ready.set()


def _line(proc, prefix, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"child ended before printing {prefix!r}: {proc.stderr.read()[-2000:]}")
        if line.startswith(prefix):
            return line.split()
    raise RuntimeError(f"child did not print {prefix!r} within {timeout} s")


def trial(flush, rate, rng):
    """One kill; returns (lost events, lost span in s, delivered, reused seqs)."""
    with tempfile.TemporaryDirectory(prefix="coda-ws-crash-") as tmp:
        path = os.path.join(tmp, "events.db")
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, path, str(flush), str(rate)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        events = []
        try:
            _, url, epoch = _line(proc, "url ")
            ready = threading.Event()
            reader = threading.Thread(
                target=_read_events, args=(url, events, ready), name="crash-loss-client", daemon=True
            )
            reader.start()
            ready.wait(30)
            _line(proc, "go")
            time.sleep(rng.uniform(1.0, 3.0))  # a random moment of a steady run
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            reader.join(30)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
            proc.stdout.close()
            proc.stderr.close()
        with sqlite3.connect(path) as conn:
            committed = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
        conn.close()
        delivered = max((seq for seq, _ in events), default=0)
        lost = [(seq, ts) for seq, ts in events if seq > committed]
        span = (lost[-1][1] - lost[0][1]) if lost else 0.0
        # Restart on the file: the stream must continue above everything delivered.
        bus = EventBus()
        journal = Journal(path)
        journal.attach(bus)
        try:
            reused = (
                0 if bus.epoch == epoch and bus.last_seq >= delivered else max(0, delivered - bus.last_seq)
            )
        finally:
            journal.close()
            bus.close()
        return len(lost), span, len(events), reused


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flush-intervals", type=float, nargs="+", default=[0.05, 0.2, 1.0], metavar="S")
    parser.add_argument("--trials", type=int, default=8, help="kills per flush interval (default 8)")
    parser.add_argument("--rate", type=float, default=500.0, help="events per second (default 500)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--quick", action="store_true", help="3 trials per flush interval")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.ERROR
    )  # each restart warns that the file was not closed cleanly: expected
    trials = 3 if args.quick else args.trials
    rng = random.Random(args.seed)
    print(
        f"SIGKILL at a random moment 1-3 s into a steady run of {args.rate:.0f} events/s, {trials} trials per "
        f"flush interval ({os.cpu_count()} CPUs, Python {sys.version.split()[0]})\n"
    )
    header = (
        f"{'flush interval':>14} | {'lost events max':>15} | {'p50':>5} | {'lost span max':>13} | "
        f"{'p50':>7} | {'delivered/trial':>15} | {'seqs reused':>11}"
    )
    print(header)
    print("-" * len(header))
    failures = 0
    for flush in args.flush_intervals:
        results = [trial(flush, args.rate, rng) for _ in range(trials)]
        lost = [r[0] for r in results]
        spans = [r[1] for r in results]
        reused = sum(r[3] for r in results)
        failures += reused
        print(
            f"{flush:>12.2f} s | {max(lost):>15} | {statistics.median(lost):>5.0f} | {max(spans):>11.3f} s | "
            f"{statistics.median(spans):>5.3f} s | {statistics.median(r[2] for r in results):>15.0f} | "
            f"{reused:>11}"
        )
    print(
        "\nlost events: delivered to the client, never committed; lost span: emit time of the newest lost event "
        "minus the oldest's."
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
