"""The Coda WebSocket demo: a full conversation, errors and performance, live.

A port of the original Coda demo script. It starts a server on
localhost:8765, announces startup, gives clients five seconds to connect,
then plays one scripted conversation (speech to text with partial
transcripts, memory lookup, streamed LLM tokens, a tool call, text to
speech with progress), one error of each kind, the performance section
(system metrics, latency traces, a summary) and shutdown. Watch it with::

    python examples/websocket_demo.py
    coda-ws tail ws://localhost:8765

``--loop`` repeats the demo until Ctrl-C; ``--pace 0.5`` runs it twice as fast.
The script itself lives in :mod:`coda_ws.demo`, shared with ``coda-ws demo``.
"""

import argparse
import logging
import pathlib
import sys
import threading

try:
    import coda_ws  # noqa: F401
except ImportError:  # running from a source checkout that is not installed
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from coda_ws import CodaWebSocketServer
from coda_ws.demo import run_demo
from coda_ws.integration import CodaWebSocketIntegration
from coda_ws.perf import WebSocketPerfIntegration

log = logging.getLogger("websocket_demo")


def main(argv=None):
    """Run the demo (once, or until Ctrl-C with ``--loop``); returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="localhost", help="interface to bind (default: localhost)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port, 0 for any free one (default: 8765)")
    parser.add_argument("--loop", action="store_true", help="repeat the demo until Ctrl-C")
    parser.add_argument(
        "--pace", type=float, default=1.0, help="scale of every pause: 1 realistic, 0 none (default: 1)"
    )
    parser.add_argument(
        "--wait-for-clients",
        type=int,
        default=0,
        metavar="N",
        help="instead of the 5 s pause, wait (up to 30 s) for N clients",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    server = CodaWebSocketServer(host=args.host, port=args.port)
    server.add_connect_handler(lambda client_id: log.info("client connected: %s", client_id))
    server.add_disconnect_handler(lambda client_id: log.info("client disconnected: %s", client_id))
    integration = CodaWebSocketIntegration(server)
    perf = WebSocketPerfIntegration(server, metrics_interval=3.0)
    stop_event = threading.Event()

    server.start()
    print(f"Demo server running at {server.url}", flush=True)
    print(
        f"Connect a client to watch: coda-ws tail {server.url.rstrip('/')} (dashboard: {server.http_url})",
        flush=True,
    )
    try:
        connect_wait = 5.0
        if args.wait_for_clients:
            server.wait_for_clients(args.wait_for_clients, timeout=30.0)
            connect_wait = 0.0
        rounds = 0
        while True:
            if not run_demo(
                integration, perf, pace=args.pace, stop_event=stop_event, connect_wait=connect_wait
            ):
                break
            rounds += 1
            log.info("demo round %d done; server stats: %s", rounds, server.get_stats())
            if not args.loop or stop_event.wait(2.0 * args.pace):
                break
            integration.new_session()
            connect_wait = 0.0
    except KeyboardInterrupt:
        stop_event.set()
        print("Interrupted", flush=True)
    finally:
        perf.stop()
        server.stop()
    print("Demo server stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
