"""Benchmark server: coda_ws, as a user would run it (defaults, except the client limits).

Every load client connects from 127.0.0.1, so the per-address limit (64 by
default since issue 13) is raised with the total one: at the defaults, the
100- and 1000-client scenarios got HTTP 503 past the 64th client.

Run by benchmarks/run.py; see common.py for the control protocol. Clients
connect to ``ws://127.0.0.1:PORT/ws?v=1``.
"""

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import EVENT_TYPE, SESSION_ID, event_fields, serve

import coda_ws
from coda_ws import CodaWebSocketServer


def main():
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    server = CodaWebSocketServer(host="127.0.0.1", port=0, max_clients=2000, max_clients_per_address=2000)
    emit = server.emit

    def start():
        server.start()
        return server.port

    def emit_one(i, emit_ns):
        emit(EVENT_TYPE, session_id=SESSION_ID, **event_fields(i, emit_ns))

    def stats():
        counters = server.get_stats()
        return {"overflows": counters.get("overflows", 0), "disconnects": counters.get("disconnects", {})}

    info = {"version": coda_ws.__version__, "module": os.path.dirname(coda_ws.__file__)}
    serve("coda_ws", start, emit_one, lambda: len(server.get_connected_clients()), server.stop, info, stats)


if __name__ == "__main__":
    main()
