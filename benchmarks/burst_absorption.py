"""How large a burst does the default per-client bound absorb?

A client reads as fast as it can (the ``websockets`` sync client in its own
process would be faster; here it is a thread of this process, the pessimistic
case: it competes with the emitter for the GIL). One thread emits N small
lossless events back to back. The client either receives all N, or falls more
than ``client_queue_size`` (default 1 024) lossless events behind and is closed
with 4008 (it would then resume from history). Prints one row per burst size.

Run: ``python benchmarks/burst_absorption.py [--sizes 1024,4096,...] [--repeat 3]``
"""

import argparse
import json
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from coda_ws import CodaWebSocketServer


def one_burst(size, queue_size):
    """Emit ``size`` events at full speed to one reading client: (delivered, close code, seconds)."""
    server = CodaWebSocketServer(host="127.0.0.1", port=0, client_queue_size=queue_size)
    server.start()
    try:
        with connect(server.url + "?replay=0", max_size=None, compression=None) as ws:
            server.wait_for_clients(1, 5)
            got = [0]
            code = [None]

            def read():
                try:
                    while got[0] < size:
                        json.loads(ws.recv(timeout=10))
                        got[0] += 1
                except ConnectionClosed as exc:
                    code[0] = exc.rcvd.code if exc.rcvd else None
                except TimeoutError:
                    pass

            reader = threading.Thread(target=read, name="burst-reader")
            reader.start()
            started = time.perf_counter()
            for i in range(size):
                server.emit("llm_token", token=f"t{i}", cumulative_text="some streamed text")
            reader.join(30)
            return got[0], code[0], time.perf_counter() - started
    finally:
        server.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512,1024,2048,4096,8192,16384,32768,65536")
    parser.add_argument("--queue-size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    print(
        f"client_queue_size={args.queue_size}, {args.repeat} runs per size, machine: {os.cpu_count()} cores"
    )
    print(f"{'burst':>8} {'absorbed':>9} {'delivered (median)':>19} {'4008 closes':>12} {'events/s':>10}")
    for size in (int(s) for s in args.sizes.split(",")):
        runs = [one_burst(size, args.queue_size) for _ in range(args.repeat)]
        absorbed = sum(delivered == size for delivered, _, _ in runs)
        closes = sum(code == 4008 for _, code, _ in runs)
        rate = statistics.median(d / s for d, _, s in runs)
        print(
            f"{size:>8} {absorbed:>6}/{args.repeat:<2} {statistics.median(d for d, _, _ in runs):>19} "
            f"{closes:>12} {rate:>10.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
