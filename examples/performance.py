"""Performance monitoring: system metrics, timed operations, manual timings.

The synchronous form of the README's performance example.
``WebSocketPerfIntegration.start()`` runs a metrics thread that emits
``system_metrics`` at once and then every ``metrics_interval`` seconds;
``time_operation`` times a block (or, as a decorator, every call of a
function) and emits a ``latency_trace`` in milliseconds; ``track_operation``
reports a duration you measured yourself::

    python examples/performance.py --wait-for-clients 1
"""

import argparse
import pathlib
import sys
import time

try:
    import coda_ws  # noqa: F401
except ImportError:  # running from a source checkout that is not installed
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from coda_ws import CodaWebSocketServer
from coda_ws.perf import WebSocketPerfIntegration


def main(argv=None):
    """Time a few operations, broadcast a summary, then stop; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="localhost", help="interface to bind (default: localhost)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port, 0 for any free one (default: 8765)")
    parser.add_argument(
        "--wait-for-clients",
        type=int,
        default=0,
        metavar="N",
        help="wait (up to 30 s) for N clients before emitting (default: 0)",
    )
    parser.add_argument(
        "--pace", type=float, default=1.0, help="scale of the simulated processing times (default: 1)"
    )
    args = parser.parse_args(argv)

    server = CodaWebSocketServer(host=args.host, port=args.port)
    perf = WebSocketPerfIntegration(server, metrics_interval=5.0)

    server.start()
    try:
        print(f"Serving on {server.url}", flush=True)
        if args.wait_for_clients and not server.wait_for_clients(args.wait_for_clients, timeout=30.0):
            print("No client connected; emitting anyway", flush=True)
        perf.start()

        # Track operations: the block is timed even if it raises.
        with perf.time_operation("stt", "transcribe"):
            time.sleep(1.5 * args.pace)  # your (blocking) STT code here

        # The decorator form times every call.
        @perf.time_operation("tts", "synthesize", {"voice": "default"})
        def synthesize(text):
            time.sleep(0.01 * len(text) * args.pace)  # your (blocking) TTS code here
            return b"\x00" * len(text)

        synthesize("Hi there!")

        # Manual tracking of a duration measured elsewhere (milliseconds).
        perf.track_operation("llm", "generate", 1200.0, {"tokens": 45})

        perf.broadcast_performance_summary()
        perf.stop()
    finally:
        server.stop()  # also stops perf's metrics thread if it still runs
    print("Done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
