"""Integration with Coda's components from asyncio: STT, LLM and TTS events from coroutines.

The asyncio form of the original README's integration example, unchanged but
for the import line. Each ``await integration.<event>(...)`` emits one event
carrying the integration's session id, at once: emitting never waits for
clients and never blocks the event loop. Run it and watch with ``wscat -c
ws://localhost:8765``; ``--wait-for-clients 1`` holds the events back until a
client is connected::

    python examples/aio/integration.py --wait-for-clients 1
"""

import argparse
import asyncio
import pathlib
import sys

try:
    import coda_ws  # noqa: F401
except ImportError:  # running from a source checkout that is not installed
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from coda_ws.aio import CodaWebSocketIntegration, CodaWebSocketServer


async def run(host, port, wait_for_clients):
    """The original README's example, with a wait for clients before emitting."""
    server = CodaWebSocketServer(host=host, port=port)
    integration = CodaWebSocketIntegration(server)

    await server.start()
    try:
        print(f"Serving on {server.url} (session {integration.session_id})", flush=True)
        if wait_for_clients and not await server.wait_for_clients(wait_for_clients, timeout=30.0):
            print("No client connected; emitting anyway", flush=True)

        # STT events
        await integration.stt_start("continuous")
        await integration.stt_final_result("Hello world", 0.95, 1500.0)

        # LLM events
        await integration.llm_start("Hello world", "llama3")
        await integration.llm_result("Hi there!", 800.0, 15, 18.75)

        # TTS events
        await integration.tts_start("Hi there!", "default", "elevenlabs")
        await integration.tts_result(600.0, 1200.0, True)
    finally:
        await server.stop()  # clients get every event emitted before it, then a 1001 close


def main(argv=None):
    """Emit the example's events, then stop; returns the exit code."""
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
    args = parser.parse_args(argv)
    asyncio.run(run(args.host, args.port, args.wait_for_clients))
    print("Done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
