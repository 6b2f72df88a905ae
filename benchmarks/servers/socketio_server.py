"""Benchmark server: Flask-SocketIO in threading mode (simple-websocket).

The way a Flask user adds a live stream: ``SocketIO(app, async_mode="threading")``
served by Werkzeug's threaded server, ``socketio.emit(type, event)`` from the
pipeline's threads. Clients use the Socket.IO protocol over the WebSocket
transport. Run by benchmarks/run.py; see common.py.
"""

import importlib.metadata
import itertools
import logging
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import EVENT_TYPE, SESSION_ID, event_fields, serve
from flask import Flask
from flask_socketio import SocketIO
from werkzeug.serving import make_server


def main():
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = Flask("bench")
    socketio = SocketIO(app, async_mode="threading")
    lock = threading.Lock()
    connected = [0]
    seq = itertools.count(1)

    @socketio.on("connect")
    def on_connect(auth=None):
        with lock:
            connected[0] += 1

    @socketio.on("disconnect")
    def on_disconnect(*args):
        with lock:
            connected[0] -= 1

    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="werkzeug")

    def start():
        thread.start()
        return httpd.port

    def stop():
        httpd.shutdown()
        thread.join(10)
        httpd.server_close()

    def emit_one(i, emit_ns):
        event = {
            "version": "1.0",
            "seq": next(seq),
            "timestamp": time.time(),
            "type": EVENT_TYPE,
            "session_id": SESSION_ID,
            **event_fields(i, emit_ns),
        }
        socketio.emit(EVENT_TYPE, event)

    info = {"version": importlib.metadata.version("flask-socketio")}
    serve("socketio", start, emit_one, lambda: connected[0], stop, info)


if __name__ == "__main__":
    main()
