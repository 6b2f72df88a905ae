"""An existing Flask application that mounts coda_ws on its own port.

The application keeps its own pages (``/``, ``/ask``, ``/status``); coda_ws
adds the event stream and its dashboard under ``/coda-ws`` (WebSocket at
``/coda-ws/ws``), served together from one port. ``/ask?q=...`` is an
ordinary blocking view: it runs a simulated STT -> LLM -> TTS turn in the
request thread and emits each step as it happens, so a dashboard shows the
turn while the HTTP request is still running::

    python examples/flask_dashboard_app.py
    coda-ws tail ws://localhost:8765/coda-ws/ws
    curl 'http://localhost:8765/ask?q=What+time+is+it'
"""

import argparse
import html
import pathlib
import sys
import threading
import time
import uuid
from urllib.parse import urljoin

try:
    import coda_ws  # noqa: F401
except ImportError:  # running from a source checkout that is not installed
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from flask import Flask, jsonify, request

from coda_ws import CodaWebSocketServer
from coda_ws.integration import CodaWebSocketIntegration
from coda_ws.perf import WebSocketPerfIntegration

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Kitchen assistant</title></head>
<body>
<h1>Kitchen assistant</h1>
<form action="/ask"><input name="q" placeholder="Ask something" autofocus> <button>Ask</button></form>
<p>Turns so far: {turns}. Live events: <a href="{dashboard}">coda_ws dashboard</a>,
or <code>coda-ws tail {ws_url}</code>.</p>
</body></html>
"""


def create_app(host="localhost", port=8765, pace=1.0):
    """The application: its own Flask app with coda_ws mounted on it.

    Returns ``(app, server)``; ``server.start()`` serves both on ``host:port``.
    """
    app = Flask(__name__)
    # Routes go under /coda-ws; every other path stays the application's.
    server = CodaWebSocketServer(host=host, port=port, app=app)
    integration = CodaWebSocketIntegration(server)
    perf = WebSocketPerfIntegration(server)
    conversation_id = f"kitchen-{uuid.uuid4().hex[:8]}"
    turn_lock = threading.Lock()  # guards turns: views run in many request threads at once
    turns = [0]
    started = time.monotonic()

    def work(seconds):
        time.sleep(seconds * pace)  # stands in for a blocking model call

    @app.get("/")
    def index():
        return PAGE.format(
            turns=integration.conversation_turn_count,
            dashboard=html.escape(server.http_url),
            ws_url=html.escape(server.url),
        )

    @app.get("/ask")
    def ask():
        question = request.args.get("q", "").strip()
        if not question:
            return jsonify(error="missing q"), 400
        with turn_lock:
            turns[0] += 1
            turn = turns[0]
            if turn == 1:
                integration.conversation_start(conversation_id)
        # Speech to text (here the "audio" is the question itself).
        integration.stt_start("push_to_talk")
        with perf.time_operation("stt", "transcribe"):
            work(0.3)
        integration.stt_final_result(question, 0.96, 300.0 * pace, "en")
        # The language model streams its answer.
        integration.llm_start(question, "llama3")
        words = ["You", "asked:", *question.split(), "-", "here", "is", "my", "answer."]
        text = ""
        llm_started = time.perf_counter()
        for index, word in enumerate(words):
            token = word if index == 0 else " " + word
            text += token
            work(0.03)
            integration.llm_token(token, text)
        llm_ms = (time.perf_counter() - llm_started) * 1000.0
        integration.llm_result(text, llm_ms, len(words), len(words) / max(llm_ms / 1000.0, 1e-6))
        # Text to speech.
        integration.tts_start(text, "default", "piper")
        with perf.time_operation("tts", "synthesize"):
            for percent in (50.0, 100.0):
                work(0.1)
                integration.tts_progress(percent)
        integration.tts_result(200.0 * pace, 60.0 * len(text), True)
        integration.conversation_turn(conversation_id, turn, question, text)
        return jsonify(question=question, answer=text, turn=turn, session_id=integration.session_id)

    @app.get("/status")
    def status():
        return jsonify(
            uptime_seconds=time.monotonic() - started,
            turns=integration.conversation_turn_count,
            clients=len(server.get_connected_clients()),
            events=server.get_stats()["events_emitted"],
        )

    return app, server


def main(argv=None):
    """Serve the application and its event stream until Ctrl-C; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="localhost", help="interface to bind (default: localhost)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port, 0 for any free one (default: 8765)")
    parser.add_argument(
        "--pace", type=float, default=1.0, help="scale of the simulated processing times (default: 1)"
    )
    args = parser.parse_args(argv)

    _app, server = create_app(args.host, args.port, pace=args.pace)
    with server:
        base = urljoin(server.http_url, "/")
        print(f"App on {base} - events on {server.url} - dashboard {server.http_url}", flush=True)
        print(f"Try: curl '{base}ask?q=What+time+is+it'  (Ctrl-C to stop)", flush=True)
        try:
            threading.Event().wait()  # run until Ctrl-C raises KeyboardInterrupt
        except KeyboardInterrupt:
            print("Stopping", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
