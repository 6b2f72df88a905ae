"""Integration with Coda's components: STT, LLM and TTS events from plain calls.

The synchronous form of the README's integration example. Each
``CodaWebSocketIntegration`` method emits one event carrying the
integration's session id; nothing is awaited and nothing blocks on clients.
Run it and watch with ``coda-ws tail ws://localhost:8765``; ``--wait-for-clients 1``
holds the events back until a client is connected::

    python examples/integration.py --wait-for-clients 1
"""

import argparse
import pathlib
import sys

try:
    import coda_ws  # noqa: F401
except ImportError:  # running from a source checkout that is not installed
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from coda_ws import CodaWebSocketServer
from coda_ws.integration import CodaWebSocketIntegration


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

    server = CodaWebSocketServer(host=args.host, port=args.port)
    integration = CodaWebSocketIntegration(server)

    server.start()
    try:
        print(f"Serving on {server.url} (session {integration.session_id})", flush=True)
        if args.wait_for_clients and not server.wait_for_clients(args.wait_for_clients, timeout=30.0):
            print("No client connected; emitting anyway", flush=True)

        # STT events
        integration.stt_start("continuous")
        integration.stt_final_result("Hello world", 0.95, 1500.0)

        # LLM events
        integration.llm_start("Hello world", "llama3")
        integration.llm_result("Hi there!", 800.0, 15, 18.75)

        # TTS events
        integration.tts_start("Hi there!", "default", "elevenlabs")
        integration.tts_result(600.0, 1200.0, True)
    finally:
        server.stop()  # clients get every event emitted before it, then a 1001 close
    print("Done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
