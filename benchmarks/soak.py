"""Soak test: a steady stream for minutes, clients that keep reconnecting, and the books balanced.

A coda_ws server runs in this process with a producer thread emitting lossless events at a
steady rate (default 200 events/s, a voice assistant's busy hour). A second process runs the
clients (30 by default): most stay connected the whole time, some (10 by default) close and
reconnect with ``since``/``epoch`` every few seconds. Every 10 s this prints the server's
RSS, threads and open file descriptors; at the end it checks, for every client, that the
union of what it received over all its sessions is exactly the stream from its first event
to the last, with no duplicate and no gap, and that every resume was ``recovered: true``.

    python benchmarks/soak.py                      # 5 minutes, 200 events/s, 30 clients (10 reconnecting)
    python benchmarks/soak.py --duration 60        # a quick one
    python benchmarks/soak.py --save-baseline benchmarks/soak-baseline.json
    python benchmarks/soak.py --compare benchmarks/soak-baseline.json

Not part of the test suite (it runs for minutes). Exit code 0 when every client's books
balance, 1 otherwise.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


# -- the clients' process -------------------------------------------------------------


def run_clients(url, clients, reconnecting, every, seed):
    """Child process: connect the clients, run until stdin closes, report as JSON."""
    from websockets.sync.client import connect

    rng = random.Random(seed)
    stop = threading.Event()
    results = [None] * clients

    def client(index):
        seqs = []
        resumes = []
        sessions = 0
        epoch = last = None
        reconnects = index < reconnecting
        error = None
        try:
            while not stop.is_set():
                query = "?v=1&replay=0" if epoch is None else f"?since={last}&epoch={epoch}"
                with connect(url + query, open_timeout=10, max_size=None, close_timeout=2) as ws:
                    sessions += 1
                    hello = json.loads(ws.recv(timeout=10))
                    if epoch is None:
                        epoch, last = hello["epoch"], hello["seq"]
                    deadline = time.monotonic() + every * rng.uniform(0.5, 1.5) if reconnects else None
                    while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                        try:
                            frame = json.loads(ws.recv(timeout=0.5))
                        except TimeoutError:
                            continue
                        if frame.get("type") == "resume":
                            resumes.append(frame["recovered"])
                            continue
                        if "seq" in frame and frame.get("type") not in ("hello", "replay", "pong"):
                            seqs.append(frame["seq"])
                            last = frame["seq"]
        except Exception as exc:  # reported, not hidden
            error = f"{type(exc).__name__}: {exc}"
        first = seqs[0] if seqs else None
        results[index] = {
            "reconnecting": reconnects,
            "sessions": sessions,
            "received": len(seqs),
            "first": first,
            "last": seqs[-1] if seqs else None,
            "duplicates": len(seqs) - len(set(seqs)),
            "out_of_order": sum(1 for a, b in zip(seqs, seqs[1:]) if b <= a),
            "missing": (seqs[-1] - first + 1 - len(set(seqs))) if seqs else 0,
            "resumes": len(resumes),
            "resumes_not_recovered": resumes.count(False),
            "error": error,
        }

    threads = [threading.Thread(target=client, args=(i,), name=f"soak-client-{i}") for i in range(clients)]
    for thread in threads:
        thread.start()
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.read()  # the parent closes stdin when the soak is over
    stop.set()
    for thread in threads:
        thread.join(15)
    print(json.dumps({"results": results}), flush=True)


# -- the server's process -------------------------------------------------------------


def _sample(process):
    return {
        "rss_mb": process.memory_info().rss / 2**20,
        "threads": process.num_threads(),
        "fds": process.num_fds(),
    }


def soak(args):
    from coda_ws import CodaWebSocketServer

    server = CodaWebSocketServer(host="127.0.0.1", port=0)
    server.start()
    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--client-process",
            server.url,
            str(args.clients),
            str(args.reconnecting),
            str(args.every),
            str(args.seed),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    process = psutil.Process()
    stop = threading.Event()
    emitted = [0]

    def produce():
        interval = 1.0 / args.rate
        next_at = time.monotonic()
        kinds = ("llm_token", "tts_status", "stt_start", "latency_trace")
        while not stop.is_set():
            n = emitted[0]
            kind = kinds[n % len(kinds)]
            if kind == "llm_token":
                server.emit(kind, session_id="soak", token=f"t{n}", cumulative_text="x" * (n % 200))
            elif kind == "tts_status":
                server.emit(kind, session_id="soak", status=f"speaking {n}")
            elif kind == "stt_start":
                server.emit(kind, session_id="soak", mode="continuous")
            else:
                server.emit(kind, component="llm", operation="generate", duration_ms=float(n % 900))
            emitted[0] = n + 1
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                stop.wait(delay)

    try:
        assert json.loads(child.stdout.readline())["ready"]
        if not server.wait_for_clients(args.clients, 30):
            raise SystemExit(f"only {len(server.clients)} of {args.clients} clients connected")
        producer = threading.Thread(target=produce, name="soak-producer")
        start = time.monotonic()
        samples = [(0.0, _sample(process))]
        producer.start()
        print(
            f"soak: {args.rate:g} events/s for {args.duration:g} s, {args.clients} clients "
            f"({args.reconnecting} reconnect every ~{args.every:g} s)",
            flush=True,
        )
        print(
            f"{'t (s)':>6} {'events':>8} {'clients':>7} {'RSS MB':>8} {'threads':>7} {'fds':>5} {'resumes':>7}"
        )
        while time.monotonic() - start < args.duration:
            stop.wait(min(10.0, args.duration - (time.monotonic() - start)))
            elapsed = time.monotonic() - start
            sample = _sample(process)
            samples.append((elapsed, sample))
            stats = server.get_stats()
            print(
                f"{elapsed:6.0f} {emitted[0]:8d} {stats['current_connections']:7d} {sample['rss_mb']:8.1f} "
                f"{sample['threads']:7d} {sample['fds']:5d} {stats['resumes'].get('recovered', 0):7d}",
                flush=True,
            )
        stop.set()
        producer.join()
        server.bus.flush(10)
        time.sleep(2.0)  # the clients read what is in flight (they do nothing else)
        child.stdin.close()
        results = json.loads(child.stdout.readline())["results"]
    finally:
        stop.set()
        if child.poll() is None:
            child.kill()
        server.stop()
    return summarize(args, emitted[0], samples, results, server.get_stats())


def summarize(args, emitted, samples, results, stats):
    first, last = samples[1] if len(samples) > 1 else samples[0], samples[-1]
    ok = [
        r
        for r in results
        if r
        and not r["error"]
        and not r["duplicates"]
        and not r["missing"]
        and not r["out_of_order"]
        and not r["resumes_not_recovered"]
    ]
    steady = [r for r in results if r and not r["reconnecting"]]
    summary = {
        "duration_s": args.duration,
        "rate": args.rate,
        "clients": args.clients,
        "reconnecting": args.reconnecting,
        "events_emitted": emitted,
        "clients_exact": len(ok),
        "sessions": sum(r["sessions"] for r in results if r),
        "resumes_recovered": stats["resumes"].get("recovered", 0),
        "steady_clients_got_everything": all(r["received"] == emitted for r in steady),
        "rss_mb_first_sample": round(first[1]["rss_mb"], 1),
        "rss_mb_end": round(last[1]["rss_mb"], 1),
        "rss_growth_mb": round(last[1]["rss_mb"] - first[1]["rss_mb"], 1),
        "threads_first_sample": first[1]["threads"],
        "threads_end": last[1]["threads"],
        "fds_first_sample": first[1]["fds"],
        "fds_end": last[1]["fds"],
        "disconnects": stats["disconnects"],
    }
    print()
    print("| metric | value |")
    print("|---|---|")
    for key, value in summary.items():
        print(f"| {key} | {value} |")
    bad = [r for r in results if r not in ok]
    for _index, r in enumerate(bad):
        print(f"client not exact: {r}")
    summary["passed"] = not bad and summary["steady_clients_got_everything"]
    print(
        f"\nunion check: {'PASSED' if summary['passed'] else 'FAILED'} "
        f"({len(ok)}/{len(results)} clients exact over {summary['sessions']} sessions)"
    )
    return summary


def compare(summary, baseline_path):
    with open(baseline_path) as handle:
        baseline = json.load(handle)
    print(f"\ncompared with {baseline_path}:")
    print("| metric | now | baseline |")
    print("|---|---|---|")
    for key in ("rss_growth_mb", "rss_mb_end", "threads_end", "fds_end", "clients_exact", "sessions"):
        print(f"| {key} | {summary.get(key)} | {baseline.get(key)} |")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--client-process"]:
        url, clients, reconnecting, every, seed = argv[1:]
        run_clients(url, int(clients), int(reconnecting), float(every), int(seed))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of streaming (default 300)")
    parser.add_argument("--rate", type=float, default=200.0, help="events per second (default 200)")
    parser.add_argument("--clients", type=int, default=30, help="clients (default 30)")
    parser.add_argument(
        "--reconnecting", type=int, default=10, help="of those, clients that reconnect (default 10)"
    )
    parser.add_argument(
        "--every", type=float, default=4.0, help="seconds between their reconnects (default ~4)"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed of the reconnect times")
    parser.add_argument("--save-baseline", metavar="FILE", help="write the summary as JSON")
    parser.add_argument("--compare", metavar="FILE", help="compare with a saved summary")
    args = parser.parse_args(argv)
    if not 0 <= args.reconnecting <= args.clients:
        parser.error("--reconnecting must be between 0 and --clients")
    summary = soak(args)
    if args.save_baseline:
        with open(args.save_baseline, "w") as handle:
            json.dump(summary, handle, indent=2)
    if args.compare:
        compare(summary, args.compare)
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
