"""Basic server usage: start a server, announce the version, serve until Ctrl-C.

The synchronous form of the README's first example. Run it, then watch the
stream from another terminal::

    python examples/basic_server.py
    coda-ws tail ws://localhost:8765

The ``system_info`` event is high priority, so it sits in the replay buffer:
every client that connects later still receives it first, in a ``replay`` frame.
"""

import argparse
import pathlib
import sys
import threading

try:
    import coda_ws  # noqa: F401
except ImportError:  # running from a source checkout that is not installed
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from coda_ws import CodaWebSocketServer


def main(argv=None):
    """Serve until Ctrl-C; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="localhost", help="interface to bind (default: localhost)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port, 0 for any free one (default: 8765)")
    args = parser.parse_args(argv)

    server = CodaWebSocketServer(host=args.host, port=args.port)
    with server:  # start() now, stop() on the way out: clients get a 1001 close
        server.broadcast_system_info({"version": "2.0.0"})
        print(f"Serving on {server.url} (dashboard: {server.http_url}); press Ctrl-C to stop", flush=True)
        try:
            threading.Event().wait()  # run until Ctrl-C raises KeyboardInterrupt
        except KeyboardInterrupt:
            print("Stopping", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
