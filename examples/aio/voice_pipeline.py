"""An asyncio voice pipeline (pipecat style: frames through processors) that streams its events.

Voice frameworks built on asyncio (pipecat, LiveKit Agents...) move *frames*
through a chain of *processors*, each an asyncio task with its own input
queue: speech-to-text turns audio into transcription frames, the language
model turns those into text frames, text-to-speech turns those into audio.
To show such a pipeline on a coda_ws dashboard, add one processor to the
chain: :class:`CodaEventProcessor` watches the frames that pass, emits the
matching Coda events through ``coda_ws.aio`` (``stt_*``, ``llm_*``,
``tts_*``, ``conversation_turn``, with ``latency_trace`` timings), and pushes
every frame on unchanged. Emitting never waits for the dashboard and never
blocks the loop, so the pipeline runs exactly as fast with it as without it.
coda_ws's metrics thread emits ``system_metrics`` into the same stream
meanwhile: threads and coroutines share one ordered stream::

    python examples/aio/voice_pipeline.py --wait-for-clients 1

Why not pipecat itself: ``pip install pipecat-ai`` (1.14) brings about 500 MB
(numpy, numba and llvmlite, onnxruntime, openai...) and takes about a minute
on this project's machines: too heavy for a development dependency. So the
few classes this example needs are written here on plain asyncio, with
pipecat's names and method signatures (``FrameProcessor.process_frame(frame,
direction)``, ``push_frame(frame, direction)``, ``Pipeline([...])``,
``EndFrame``); the services are simulated. ``docs/asyncio.md`` shows
:class:`CodaEventProcessor` as a real pipecat ``FrameProcessor``: the same
``process_frame`` body.
"""

import argparse
import asyncio
import enum
import pathlib
import sys
import time
import uuid
from dataclasses import dataclass, field

try:
    import coda_ws  # noqa: F401
except ImportError:  # running from a source checkout that is not installed
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from coda_ws.aio import CodaWebSocketIntegration, CodaWebSocketServer, WebSocketPerfIntegration

UTTERANCES = (
    "Turn on the kitchen lights",
    "What's the weather like this afternoon?",
    "Add oat milk to the shopping list",
)

# -- frames (pipecat's names) ----------------------------------------------------------


@dataclass
class Frame:
    """Something that flows through the pipeline."""

    turn: int = 0
    created: float = field(default_factory=time.perf_counter)


@dataclass
class InputAudioRawFrame(Frame):
    """User audio (here: the words it holds)."""

    audio: str = ""


@dataclass
class UserStartedSpeakingFrame(Frame):
    """Voice activity began."""


@dataclass
class InterimTranscriptionFrame(Frame):
    text: str = ""


@dataclass
class TranscriptionFrame(Frame):
    text: str = ""
    confidence: float = 0.0
    duration_ms: float = 0.0
    language: str = "en"


@dataclass
class LLMFullResponseStartFrame(Frame):
    prompt: str = ""
    model: str = ""


@dataclass
class LLMTextFrame(Frame):
    text: str = ""


@dataclass
class LLMFullResponseEndFrame(Frame):
    text: str = ""
    duration_ms: float = 0.0
    token_count: int = 0


@dataclass
class TTSStartedFrame(Frame):
    text: str = ""
    voice_id: str = ""
    engine: str = ""


@dataclass
class TTSAudioRawFrame(Frame):
    audio: bytes = b""
    progress_percent: float = 0.0


@dataclass
class TTSStoppedFrame(Frame):
    duration_ms: float = 0.0
    audio_duration_ms: float = 0.0


@dataclass
class EndFrame(Frame):
    """The end of input: each processor passes it on, then stops."""


class FrameDirection(enum.Enum):
    DOWNSTREAM = 1
    UPSTREAM = 2


# -- processors and the pipeline (pipecat's API, on plain asyncio) -----------------------


class FrameProcessor:
    """A pipeline stage: an asyncio task taking frames from its queue one at a time.

    Subclasses override :meth:`process_frame` and call :meth:`push_frame` for
    every frame that goes on (their own and those they do not handle).
    """

    def __init__(self, *, queue_size=64):
        self._queue = asyncio.Queue(maxsize=queue_size)
        self._next = None

    def link(self, processor):
        self._next = processor

    async def process_frame(self, frame, direction):
        await self.push_frame(frame, direction)

    async def push_frame(self, frame, direction=FrameDirection.DOWNSTREAM):
        if self._next is not None:
            await self._next.queue_frame(frame, direction)

    async def queue_frame(self, frame, direction=FrameDirection.DOWNSTREAM):
        await self._queue.put((frame, direction))

    async def run(self):
        """Process frames until an EndFrame has been processed."""
        while True:
            frame, direction = await self._queue.get()
            await self.process_frame(frame, direction)
            if isinstance(frame, EndFrame):
                return


class _Sink(FrameProcessor):
    """The end of a pipeline: drops frames, and says when the EndFrame arrived."""


class Pipeline:
    """Processors linked in order, each run as a task; :meth:`run` waits for the EndFrame."""

    def __init__(self, processors):
        self._processors = list(processors) + [_Sink()]
        for upstream, downstream in zip(self._processors, self._processors[1:]):
            upstream.link(downstream)

    async def queue_frames(self, frames):
        for frame in frames:
            await self._processors[0].queue_frame(frame)

    async def run(self):
        """Run every processor until the EndFrame has gone through all of them."""
        tasks = [asyncio.create_task(p.run(), name=f"pipeline:{type(p).__name__}") for p in self._processors]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()


# -- simulated services (what a real pipeline gets from its STT, LLM and TTS vendors) -----


class FakeSTTService(FrameProcessor):
    """Audio in, interim and final transcriptions out."""

    def __init__(self, pace):
        super().__init__()
        self.pace = pace

    async def process_frame(self, frame, direction):
        if not isinstance(frame, InputAudioRawFrame):
            await self.push_frame(frame, direction)
            return
        started = time.perf_counter()
        await self.push_frame(UserStartedSpeakingFrame(frame.turn))
        words = frame.audio.split()
        for count in range(2, len(words), 2):
            await asyncio.sleep(0.15 * self.pace)
            await self.push_frame(InterimTranscriptionFrame(frame.turn, text=" ".join(words[:count])))
        await asyncio.sleep(0.15 * self.pace)
        duration_ms = (time.perf_counter() - started) * 1000.0
        await self.push_frame(
            TranscriptionFrame(frame.turn, text=frame.audio, confidence=0.95, duration_ms=duration_ms)
        )


class FakeLLMService(FrameProcessor):
    """Transcriptions in (passed on), streamed response text out."""

    model = "llama3"

    def __init__(self, pace):
        super().__init__()
        self.pace = pace

    async def process_frame(self, frame, direction):
        await self.push_frame(frame, direction)
        if not isinstance(frame, TranscriptionFrame):
            return
        started = time.perf_counter()
        await self.push_frame(LLMFullResponseStartFrame(frame.turn, prompt=frame.text, model=self.model))
        request = frame.text[0].lower() + frame.text[1:].rstrip("?.")
        tokens = ["Okay", ",", " done", ":", " ", request, "."]
        for token in tokens:
            await asyncio.sleep(0.05 * self.pace)
            await self.push_frame(LLMTextFrame(frame.turn, text=token))
        duration_ms = (time.perf_counter() - started) * 1000.0
        await self.push_frame(
            LLMFullResponseEndFrame(
                frame.turn, text="".join(tokens), duration_ms=duration_ms, token_count=len(tokens)
            )
        )


class FakeTTSService(FrameProcessor):
    """Complete responses in (passed on), audio out in four chunks."""

    def __init__(self, pace):
        super().__init__()
        self.pace = pace

    async def process_frame(self, frame, direction):
        await self.push_frame(frame, direction)
        if not isinstance(frame, LLMFullResponseEndFrame):
            return
        started = time.perf_counter()
        await self.push_frame(
            TTSStartedFrame(frame.turn, text=frame.text, voice_id="default", engine="elevenlabs")
        )
        for chunk in range(1, 5):
            await asyncio.sleep(0.1 * self.pace)
            await self.push_frame(
                TTSAudioRawFrame(frame.turn, audio=b"\x00" * 320, progress_percent=25.0 * chunk)
            )
        duration_ms = (time.perf_counter() - started) * 1000.0
        await self.push_frame(
            TTSStoppedFrame(frame.turn, duration_ms=duration_ms, audio_duration_ms=60.0 * len(frame.text))
        )


# -- the one processor this example is about ------------------------------------------------


class CodaEventProcessor(FrameProcessor):
    """Emits Coda events for the frames that pass, and pushes every frame on.

    Put it after the TTS service: every frame of the turn reaches it there
    (services pass on what they do not consume). Each ``await`` below emits
    at once; none waits for clients.
    """

    def __init__(self, integration, perf, conversation_id):
        super().__init__()
        self.integration = integration
        self.perf = perf
        self.conversation_id = conversation_id
        self.turns = 0
        self._user_input = {}
        self._response = {}

    async def process_frame(self, frame, direction):
        events, perf = self.integration, self.perf
        if isinstance(frame, UserStartedSpeakingFrame):
            await events.stt_start("continuous")
        elif isinstance(frame, InterimTranscriptionFrame):
            await events.stt_interim_result(frame.text, 0.7)
        elif isinstance(frame, TranscriptionFrame):
            self._user_input[frame.turn] = frame.text
            await events.stt_final_result(frame.text, frame.confidence, frame.duration_ms, frame.language)
            await perf.track_operation("stt", "transcribe", frame.duration_ms)
        elif isinstance(frame, LLMFullResponseStartFrame):
            self._response[frame.turn] = ""
            await events.llm_start(frame.prompt, frame.model)
        elif isinstance(frame, LLMTextFrame):
            self._response[frame.turn] += frame.text
            await events.llm_token(frame.text, self._response[frame.turn])
        elif isinstance(frame, LLMFullResponseEndFrame):
            seconds = frame.duration_ms / 1000.0
            await events.llm_result(
                frame.text, frame.duration_ms, frame.token_count, frame.token_count / seconds
            )
            await perf.track_operation("llm", "generate", frame.duration_ms, {"tokens": frame.token_count})
        elif isinstance(frame, TTSStartedFrame):
            await events.tts_start(frame.text, frame.voice_id, frame.engine)
        elif isinstance(frame, TTSAudioRawFrame):
            await events.tts_progress(frame.progress_percent)
        elif isinstance(frame, TTSStoppedFrame):
            await events.tts_result(frame.duration_ms, frame.audio_duration_ms, True)
            await perf.track_operation("tts", "synthesize", frame.duration_ms)
            self.turns += 1
            await events.conversation_turn(
                self.conversation_id,
                self.turns,
                self._user_input.pop(frame.turn),
                self._response.pop(frame.turn),
            )
        await self.push_frame(frame, direction)


async def run(host, port, wait_for_clients, pace):
    """Serve, run three utterances through the pipeline, summarize, stop."""
    server = CodaWebSocketServer(host=host, port=port)
    integration = CodaWebSocketIntegration(server)
    perf = WebSocketPerfIntegration(server, metrics_interval=1.0)
    async with server.run_context():
        print(f"Serving on {server.url} (dashboard: {server.http_url})", flush=True)
        if wait_for_clients and not await server.wait_for_clients(wait_for_clients, timeout=30.0):
            print("No client connected; running anyway", flush=True)
        await perf.start()  # a thread emitting system_metrics into the same stream
        conversation_id = str(uuid.uuid4())
        started = time.monotonic()
        await integration.conversation_start(conversation_id)
        coda = CodaEventProcessor(integration, perf, conversation_id)
        pipeline = Pipeline([FakeSTTService(pace), FakeLLMService(pace), FakeTTSService(pace), coda])
        frames = [InputAudioRawFrame(turn, audio=text) for turn, text in enumerate(UTTERANCES, 1)]
        await pipeline.queue_frames(frames + [EndFrame()])
        await pipeline.run()
        await integration.conversation_end(conversation_id, coda.turns, time.monotonic() - started)
        await perf.broadcast_performance_summary()
        await perf.stop()
        print(f"Spoke {coda.turns} turns", flush=True)


def main(argv=None):
    """Run the pipeline once and stop; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="localhost", help="interface to bind (default: localhost)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port, 0 for any free one (default: 8765)")
    parser.add_argument(
        "--wait-for-clients",
        type=int,
        default=0,
        metavar="N",
        help="wait (up to 30 s) for N clients before running (default: 0)",
    )
    parser.add_argument(
        "--pace", type=float, default=1.0, help="scale of the simulated processing times (default: 1)"
    )
    args = parser.parse_args(argv)
    try:
        asyncio.run(run(args.host, args.port, args.wait_for_clients, args.pace))
    except KeyboardInterrupt:  # the server has stopped by now (run_context's exit)
        print("Stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
