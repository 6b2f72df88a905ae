"""Performance monitoring from asyncio: system metrics, timed operations, manual timings.

The asyncio form of the original README's performance example, unchanged but
for the import line, plus the decorator form. ``await perf.start()`` starts
coda_ws's metrics thread, which emits ``system_metrics`` at once and then every
``metrics_interval`` seconds without touching the event loop; ``async with
perf.time_operation(...)`` times a block (as a decorator, every call of a
coroutine function) and emits a ``latency_trace`` in milliseconds;
``track_operation`` reports a duration you measured yourself::

    python examples/aio/performance.py --wait-for-clients 1
"""

import argparse
import asyncio
import pathlib
import sys

try:
    import coda_ws  # noqa: F401
except ImportError:  # running from a source checkout that is not installed
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from coda_ws.aio import CodaWebSocketServer, WebSocketPerfIntegration


async def run(host, port, wait_for_clients, pace):
    """The original README's example, with the decorator form and a summary."""
    server = CodaWebSocketServer(host=host, port=port)
    perf = WebSocketPerfIntegration(server, metrics_interval=5.0)

    await server.start()
    try:
        print(f"Serving on {server.url}", flush=True)
        if wait_for_clients and not await server.wait_for_clients(wait_for_clients, timeout=30.0):
            print("No client connected; emitting anyway", flush=True)
        await perf.start()

        # Track operations: the block is timed even if it raises.
        async with perf.time_operation("stt", "transcribe"):
            # Your STT code here
            await asyncio.sleep(1.5 * pace)  # Simulated processing

        # The decorator form times every call of a coroutine function.
        @perf.time_operation("tts", "synthesize", {"voice": "default"})
        async def synthesize(text):
            await asyncio.sleep(0.01 * len(text) * pace)  # your TTS call here
            return b"\x00" * len(text)

        await synthesize("Hi there!")

        # Manual tracking
        await perf.track_operation("llm", "generate", 1200.0, {"tokens": 45})

        await perf.broadcast_performance_summary()
        await perf.stop()
    finally:
        await server.stop()  # also stops perf's metrics thread if it still runs


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
    asyncio.run(run(args.host, args.port, args.wait_for_clients, args.pace))
    print("Done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
