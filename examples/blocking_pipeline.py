"""A blocking STT -> LLM -> TTS pipeline in worker threads, emitting from each stage.

The realistic shape of Coda's use: each stage is ordinary blocking code in its
own thread, handing work to the next through a queue, and each calls the
integration helpers as it goes. ``emit()`` is thread-safe and never blocks on
clients, so the stages never wait for the dashboard; every client sees one
ordered stream (each utterance's STT, LLM and TTS events in that order, the
stages of different utterances interleaved as they really ran)::

    python examples/blocking_pipeline.py --wait-for-clients 1
"""

import argparse
import logging
import pathlib
import queue
import sys
import threading
import time
import uuid

try:
    import coda_ws  # noqa: F401
except ImportError:  # running from a source checkout that is not installed
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from coda_ws import CodaWebSocketServer
from coda_ws.integration import CodaWebSocketIntegration
from coda_ws.perf import WebSocketPerfIntegration

UTTERANCES = (
    "Turn on the kitchen lights",
    "What's the weather like this afternoon?",
    "Add oat milk to the shopping list",
)

log = logging.getLogger("blocking_pipeline")

_DONE = object()  # end-of-input marker passed down the pipeline


class Pipeline:
    """Three worker threads (``stt``, ``llm``, ``tts``) joined by bounded queues.

    :meth:`submit` queues an utterance's "audio"; :meth:`close` signals the end
    of input and joins every worker once all submitted utterances are spoken.
    """

    def __init__(self, integration, perf, conversation_id, pace=1.0):
        self.integration = integration
        self.perf = perf
        self.conversation_id = conversation_id
        self.pace = pace
        self.turns = 0  # written by the tts worker only
        self._audio = queue.Queue(maxsize=4)
        self._text = queue.Queue(maxsize=4)
        self._replies = queue.Queue(maxsize=4)
        self._threads = [
            threading.Thread(
                target=self._stage, args=(self._audio, self._text, self._transcribe), name="pipeline-stt"
            ),
            threading.Thread(
                target=self._stage, args=(self._text, self._replies, self._generate), name="pipeline-llm"
            ),
            threading.Thread(
                target=self._stage, args=(self._replies, None, self._speak), name="pipeline-tts"
            ),
        ]

    def start(self):
        for thread in self._threads:
            thread.start()

    def submit(self, utterance):
        self._audio.put(utterance)

    def close(self, timeout=30.0):
        """End the input and join the workers; True when all of them finished."""
        self._audio.put(_DONE)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def _work(self, seconds):
        time.sleep(seconds * self.pace)  # stands in for a blocking model call

    def _stage(self, inbox, outbox, step):
        while True:
            item = inbox.get()
            if item is _DONE:
                if outbox is not None:
                    outbox.put(_DONE)
                return
            try:
                result = step(item)
            except Exception:  # one failed utterance must not stall the pipeline
                log.exception("%s failed on %r", threading.current_thread().name, item)
                continue
            if outbox is not None:
                outbox.put(result)

    def _transcribe(self, audio):
        integration = self.integration
        integration.stt_start("continuous")
        with self.perf.time_operation("stt", "transcribe") as timer:
            words = audio.split()
            for count in range(2, len(words), 2):
                self._work(0.15)
                integration.stt_interim_result(" ".join(words[:count]), 0.7)
            self._work(0.15)
        integration.stt_final_result(audio, 0.95, timer.duration_ms, "en")
        return audio

    def _generate(self, prompt):
        integration = self.integration
        integration.llm_start(prompt, "llama3")
        tokens = ["Okay", ",", " done", ":", " ", prompt[0].lower() + prompt[1:].rstrip("?."), "."]
        text = ""
        with self.perf.time_operation("llm", "generate", {"tokens": len(tokens)}) as timer:
            for token in tokens:
                self._work(0.05)
                text += token
                integration.llm_token(token, text)
        integration.llm_result(
            text, timer.duration_ms, len(tokens), len(tokens) / (timer.duration_ms / 1000.0)
        )
        return prompt, text

    def _speak(self, item):
        prompt, text = item
        integration = self.integration
        integration.tts_start(text, "default", "piper")
        with self.perf.time_operation("tts", "synthesize") as timer:
            for percent in (50.0, 100.0):
                self._work(0.1)
                integration.tts_progress(percent)
        integration.tts_result(timer.duration_ms, 55.0 * len(text), True)
        self.turns += 1
        integration.conversation_turn(self.conversation_id, self.turns, prompt, text)


def main(argv=None):
    """Run every utterance through the pipeline, then stop; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="localhost", help="interface to bind (default: localhost)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port, 0 for any free one (default: 8765)")
    parser.add_argument(
        "--wait-for-clients",
        type=int,
        default=0,
        metavar="N",
        help="wait (up to 30 s) for N clients before starting (default: 0)",
    )
    parser.add_argument(
        "--pace", type=float, default=1.0, help="scale of the simulated processing times (default: 1)"
    )
    args = parser.parse_args(argv)

    server = CodaWebSocketServer(host=args.host, port=args.port)
    integration = CodaWebSocketIntegration(server)
    perf = WebSocketPerfIntegration(server, metrics_interval=2.0)
    conversation_id = f"pipeline-{uuid.uuid4().hex[:8]}"

    server.start()
    try:
        print(f"Serving on {server.url}", flush=True)
        if args.wait_for_clients and not server.wait_for_clients(args.wait_for_clients, timeout=30.0):
            print("No client connected; running anyway", flush=True)
        perf.start()
        started = time.monotonic()
        integration.conversation_start(conversation_id)
        pipeline = Pipeline(integration, perf, conversation_id, pace=args.pace)
        pipeline.start()
        try:
            for utterance in UTTERANCES:  # the "microphone": one utterance after another
                pipeline.submit(utterance)
        finally:
            pipeline.close()
        integration.conversation_end(conversation_id, pipeline.turns, time.monotonic() - started)
        perf.broadcast_performance_summary()
        perf.stop()
    finally:
        server.stop()  # clients get every event emitted before it, then a 1001 close
    print(f"Done: {pipeline.turns} turns", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
