"""Benchmark server: websockets' asyncio server with ``broadcast()``.

The way its documentation recommends fanning out: the event loop runs in a
background thread; ``emit()`` (called from the pipeline's threads) encodes the
event once and hands ``broadcast(connections, message)`` to the loop with
``call_soon_threadsafe``. Defaults otherwise (permessage-deflate accepted
when offered). Run by benchmarks/run.py; see common.py.
"""

import asyncio
import itertools
import json
import logging
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import websockets
from common import EVENT_TYPE, SESSION_ID, event_fields, serve
from websockets.asyncio.server import broadcast
from websockets.asyncio.server import serve as ws_serve


def main():
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    connections = set()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state = {}
    seq = itertools.count(1)
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

    async def handler(websocket):
        connections.add(websocket)
        try:
            async for _ in websocket:  # nothing to do with client messages
                pass
        except websockets.ConnectionClosed:
            pass
        finally:
            connections.discard(websocket)

    async def run():
        async with ws_serve(handler, "127.0.0.1", 0) as server:
            state["port"] = server.sockets[0].getsockname()[1]
            state["stop"] = stop_future = loop.create_future()
            ready.set()
            await stop_future

    def loop_main():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(run())

    thread = threading.Thread(target=loop_main, name="asyncio-loop")

    def start():
        thread.start()
        ready.wait(30)
        return state["port"]

    def stop():
        if "stop" in state:
            loop.call_soon_threadsafe(state["stop"].set_result, None)
        thread.join(10)

    def emit_one(i, emit_ns):
        event = {
            "version": "1.0",
            "seq": next(seq),
            "timestamp": time.time(),
            "type": EVENT_TYPE,
            "session_id": SESSION_ID,
            **event_fields(i, emit_ns),
        }
        loop.call_soon_threadsafe(broadcast, connections, dumps(event))

    serve("websockets", start, emit_one, lambda: len(connections), stop, {"version": websockets.__version__})


if __name__ == "__main__":
    main()
