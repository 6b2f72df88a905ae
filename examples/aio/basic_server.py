"""Basic server usage with asyncio: start a server, announce the version, serve until Ctrl-C.

The asyncio form of the original README's first example, unchanged but for
the import line (``coda_ws.aio`` for ``coda.interfaces.websocket``). Run it,
then watch the stream from another terminal::

    python examples/aio/basic_server.py
    wscat -c ws://localhost:8765

The ``system_info`` event is high priority, so it sits in the replay buffer:
every client that connects later still receives it first, in a ``replay`` frame.
Ctrl-C cancels the main task; ``run_context()`` then stops the server, which
closes every client with 1001.
"""

import argparse
import asyncio
import pathlib
import sys

try:
    import coda_ws  # noqa: F401
except ImportError:  # running from a source checkout that is not installed
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from coda_ws.aio import CodaWebSocketServer


async def serve(host, port):
    """The original README's example: serve and announce the version, forever."""
    server = CodaWebSocketServer(host=host, port=port)

    async with server.run_context():
        # Broadcast system info
        await server.broadcast_system_info({"version": "2.0.0"})
        print(f"Serving on {server.url} (dashboard: {server.http_url}); press Ctrl-C to stop", flush=True)

        # Keep server running
        await asyncio.Future()  # Run forever


def main(argv=None):
    """Serve until Ctrl-C; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="localhost", help="interface to bind (default: localhost)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port, 0 for any free one (default: 8765)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.host, args.port))
    except KeyboardInterrupt:  # the server has stopped by now (run_context's exit)
        print("Stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
