"""The demo conversation: a scripted Coda session with realistic pacing.

Used by ``coda-ws demo``, ``examples/websocket_demo.py`` and tests that need
a stream that looks like the real thing. Everything here only calls the
public helpers (:class:`~coda_ws.integration.CodaWebSocketIntegration`,
:class:`~coda_ws.perf.WebSocketPerfIntegration`).

Pacing: every pause is ``seconds * pace`` spent waiting on ``stop_event``, so
``pace=1.0`` runs at a voice assistant's speed (one conversation takes about
five seconds), ``pace=0.1`` ten times faster and ``pace=0`` as fast as
possible (for tests); a negative or non-numeric ``pace`` raises
``ValueError``. Setting ``stop_event`` ends any run at its next step: the
``run_*`` functions then return early (False, or the count so far) and never
raise because of it. Nothing here calls ``time.sleep``.

The functions run in the caller's thread; run them in a thread of your own
to keep serving meanwhile (``coda-ws demo`` does).
"""

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .checks import number
from .events import BaseEvent
from .integration import CodaWebSocketIntegration
from .perf import WebSocketPerfIntegration

__all__ = [
    "DEMO_CONFIG",
    "DEMO_EXCHANGES",
    "DEMO_VERSION",
    "DemoExchange",
    "run_demo",
    "run_demo_conversation",
    "run_demo_errors",
    "run_demo_loop",
    "run_demo_performance",
]

log = logging.getLogger("coda_ws.demo")

#: The version the demo's ``system_startup`` announces (the original demo's).
DEMO_VERSION = "2.0.0-alpha"

#: The configuration the demo's ``system_startup`` announces.
DEMO_CONFIG: dict[str, Any] = {
    "voice": {"stt": "whisper", "tts": "elevenlabs"},
    "llm": {"model": "llama3", "temperature": 0.7},
    "memory": {"enabled": True},
    "tools": {"count": 3},
}


@dataclass(frozen=True)
class DemoExchange:
    """One scripted user request and the assistant's answer, stage by stage.

    Durations are in milliseconds; they are what the events report, and (times
    ``pace``) how long the demo waits in that stage.
    """

    user_text: str
    interim: tuple[tuple[str, float], ...]  # (partial transcript, confidence)
    stt_ms: float
    memory_query: str
    relevance_scores: tuple[float, ...]
    tokens: tuple[str, ...]
    llm_ms: float
    tool_name: str
    tool_parameters: Any
    tool_result: Any
    tool_ms: float
    tts_ms: float
    audio_ms: float
    memory_note: str
    importance: float
    stt_confidence: float = 0.94
    language: str = "en"

    @property
    def response(self) -> str:
        """The assistant's answer: the tokens joined."""
        return "".join(self.tokens)


#: The scripted exchanges; the first has the original demo's shape (nine tokens).
DEMO_EXCHANGES = (
    DemoExchange(
        user_text="Coda, remind me to water the plants at six.",
        interim=(("Coda remind me", 0.61), ("Coda, remind me to water the plants", 0.83)),
        stt_ms=1480.0,
        memory_query="reminders about plants",
        relevance_scores=(0.86, 0.52),
        tokens=("Sure", ",", " I'll", " remind", " you", " at", " 6", " PM", "."),
        llm_ms=1150.0,
        tool_name="set_reminder",
        tool_parameters={"text": "water the plants", "time": "18:00"},
        tool_result={"reminder_id": "rem-042", "scheduled": "18:00"},
        tool_ms=85.0,
        tts_ms=620.0,
        audio_ms=1900.0,
        memory_note="User wants a reminder to water the plants at 18:00 every evening.",
        importance=0.6,
    ),
    DemoExchange(
        user_text="What's on my calendar tomorrow morning?",
        interim=(("What's on my", 0.58), ("What's on my calendar tomorrow", 0.8)),
        stt_ms=1320.0,
        memory_query="calendar tomorrow morning",
        relevance_scores=(0.91, 0.77, 0.4),
        tokens=(
            "You",
            " have",
            " a",
            " stand-up",
            " at",
            " 9",
            " and",
            " the",
            " dentist",
            " at",
            " 11",
            ".",
        ),
        llm_ms=1540.0,
        tool_name="calendar_lookup",
        tool_parameters={"day": "tomorrow", "part": "morning"},
        tool_result=[{"time": "09:00", "title": "Stand-up"}, {"time": "11:00", "title": "Dentist"}],
        tool_ms=140.0,
        tts_ms=780.0,
        audio_ms=2600.0,
        memory_note="User checked tomorrow morning's calendar: stand-up at 9, dentist at 11.",
        importance=0.4,
    ),
    DemoExchange(
        user_text="How long would it take to cycle to the office?",
        interim=(("How long would", 0.55), ("How long would it take to cycle", 0.79)),
        stt_ms=1610.0,
        memory_query="commute office route",
        relevance_scores=(0.73,),
        tokens=("About", " 25", " minutes", " along", " the", " river", " path", "."),
        llm_ms=980.0,
        tool_name="route_planner",
        tool_parameters={"mode": "bike", "destination": "office"},
        tool_result={"minutes": 25, "distance_km": 7.8},
        tool_ms=230.0,
        tts_ms=540.0,
        audio_ms=1750.0,
        memory_note="User cycles to the office; the river path takes about 25 minutes.",
        importance=0.5,
    ),
)


class _Stopped(Exception):
    """Raised inside the demo when ``stop_event`` is set; never escapes it."""


class _Pacer:
    """Waits ``seconds * pace`` on the stop event; raises _Stopped once it is set."""

    def __init__(self, pace: float, stop_event: threading.Event | None) -> None:
        number("pace", pace, minimum=0)
        self.pace = float(pace)
        self.stop_event = stop_event if stop_event is not None else threading.Event()

    def __call__(self, seconds: float) -> None:
        if self.pace and seconds > 0:
            if self.stop_event.wait(seconds * self.pace):
                raise _Stopped
        elif self.stop_event.is_set():
            raise _Stopped


def _conversation(
    integration: CodaWebSocketIntegration,
    perf: WebSocketPerfIntegration | None,
    wait: _Pacer,
    exchange: DemoExchange,
    conversation_id: str,
) -> None:
    # Long: a script: one conversation, turn by turn, read top to bottom
    started = time.monotonic()
    integration.conversation_start(conversation_id)
    wait(0.5)

    # Speech to text: the user speaks, partial transcripts, the final one.
    integration.stt_start("push_to_talk")
    for text, confidence in exchange.interim:
        wait(0.4)
        integration.stt_interim_result(text, confidence)
    wait(0.4)
    integration.stt_final_result(
        exchange.user_text, exchange.stt_confidence, exchange.stt_ms, exchange.language
    )
    if perf is not None:
        perf.track_operation("stt", "transcribe", exchange.stt_ms, {"model": "whisper"})

    # Memory lookup, then the language model streams its answer.
    wait(0.15)
    integration.memory_retrieve(
        exchange.memory_query, len(exchange.relevance_scores), list(exchange.relevance_scores)
    )
    wait(0.1)
    integration.llm_start(exchange.user_text, "llama3", 0.7)
    wait(0.35)  # time to first token
    text = ""
    per_token = max(0.0, exchange.llm_ms / 1000.0 - 0.35) / len(exchange.tokens)
    for token in exchange.tokens:
        text += token
        integration.llm_token(token, text)
        wait(per_token)
    integration.llm_result(
        text, exchange.llm_ms, len(exchange.tokens), len(exchange.tokens) / (exchange.llm_ms / 1000.0)
    )
    if perf is not None:
        perf.track_operation("llm", "generate", exchange.llm_ms, {"tokens": len(exchange.tokens)})

    # The tool the answer promised.
    call_id = f"call-{uuid.uuid4().hex[:8]}"
    integration.tool_call(exchange.tool_name, exchange.tool_parameters, call_id)
    wait(exchange.tool_ms / 1000.0)
    integration.tool_result(exchange.tool_name, call_id, exchange.tool_result, exchange.tool_ms)
    if perf is not None:
        perf.track_operation("tools", exchange.tool_name, exchange.tool_ms)

    # Text to speech, with progress.
    wait(0.1)
    integration.tts_start(text, "default", "elevenlabs")
    for percent in (25.0, 50.0, 75.0, 100.0):
        wait(exchange.tts_ms / 1000.0 / 4)
        integration.tts_progress(percent, exchange.audio_ms)
    integration.tts_result(exchange.tts_ms, exchange.audio_ms, True)
    if perf is not None:
        perf.track_operation("tts", "synthesize", exchange.tts_ms, {"voice": "default"})

    # Remember it, record the turn, close the conversation.
    wait(0.1)
    integration.memory_store(
        exchange.memory_note, "conversation", exchange.importance, f"mem-{uuid.uuid4().hex[:8]}"
    )
    integration.conversation_turn(conversation_id, 1, exchange.user_text, text)
    wait(0.5)
    integration.conversation_end(conversation_id, 1, time.monotonic() - started)


def run_demo_conversation(
    integration: CodaWebSocketIntegration,
    perf: WebSocketPerfIntegration | None = None,
    pace: float = 1.0,
    stop_event: threading.Event | None = None,
    exchange: int | DemoExchange = 0,
    conversation_id: str | None = None,
) -> bool:
    """One scripted conversation of one turn, in the original demo's order.

    Events (all with the integration's session id): ``conversation_start``,
    ``stt_start``, two ``stt_interim``, ``stt_result``, ``memory_retrieve``,
    ``llm_start``, one ``llm_token`` per token (nine for exchange 0),
    ``llm_result``, ``tool_call``, ``tool_result``, ``tts_start``, four
    ``tts_progress`` (25/50/75/100), ``tts_result``, ``memory_store``,
    ``conversation_turn``, ``conversation_end``. With ``perf``, each stage's
    duration is also tracked (a ``latency_trace`` after ``stt_result``,
    ``llm_result``, ``tool_result`` and ``tts_result``).

    Args:
        integration: a :class:`~coda_ws.integration.CodaWebSocketIntegration`.
        perf: a :class:`~coda_ws.perf.WebSocketPerfIntegration`, or None.
        pace: scale of every pause (1.0 realistic, 0 no pauses).
        stop_event: a ``threading.Event`` that ends the run early.
        exchange: index into :data:`DEMO_EXCHANGES` (wraps around), or a
            :class:`DemoExchange`.
        conversation_id: default ``"demo-conv-<random>"``.

    Returns:
        True when the conversation ran to its end, False when stopped.
    """
    wait = _Pacer(pace, stop_event)
    if not isinstance(exchange, DemoExchange):
        exchange = DEMO_EXCHANGES[exchange % len(DEMO_EXCHANGES)]
    conversation_id = conversation_id or f"demo-conv-{uuid.uuid4().hex[:8]}"
    try:
        wait(0)
        _conversation(integration, perf, wait, exchange, conversation_id)
    except _Stopped:
        return False
    return True


_ERRORS: tuple[tuple[str, Callable[[CodaWebSocketIntegration], BaseEvent]], ...] = (
    ("stt_error", lambda i: i.stt_error("Microphone disconnected", {"device": "default"})),
    ("llm_error", lambda i: i.llm_error("Generation timed out", {"model": "llama3", "timeout_s": 30})),
    ("tts_error", lambda i: i.tts_error("Voice not found", {"voice_id": "narrator-2"})),
    (
        "tool_error",
        lambda i: i.tool_error("route_planner", "call-err-1", "Service unavailable", {"status": 503}),
    ),
    ("system_error", lambda i: i.system_error("warning", "Memory usage above 80%", {"memory_mb": 2048})),
)


def run_demo_errors(
    integration: CodaWebSocketIntegration, pace: float = 1.0, stop_event: threading.Event | None = None
) -> bool:
    """One error of each kind, half a second apart (times ``pace``):
    ``stt_error``, ``llm_error``, ``tts_error``, ``tool_error``, ``system_error``.

    Returns True when all were emitted, False when stopped.
    """
    wait = _Pacer(pace, stop_event)
    try:
        for index, (_, emit_error) in enumerate(_ERRORS):
            wait(0.5 if index else 0)
            emit_error(integration)
    except _Stopped:
        return False
    return True


def run_demo_performance(
    perf: WebSocketPerfIntegration, pace: float = 1.0, stop_event: threading.Event | None = None
) -> bool:
    """The original demo's performance section.

    ``perf.start()`` (a ``system_metrics`` at once), three ``latency_trace``
    (stt.transcribe, llm.generate, tts.synthesize), one ``component_timing``
    (memory), a ``performance_summary`` (``system_info``), then
    ``perf.stop()``, which always runs, also when stopped early.

    Returns True when the section ran to its end, False when stopped.
    """
    wait = _Pacer(pace, stop_event)
    perf.start()
    try:
        wait(0)
        perf.track_operation("stt", "transcribe", 1480.0, {"model": "whisper"})
        wait(0.5)
        perf.track_operation("llm", "generate", 1150.0, {"tokens": 9})
        wait(0.5)
        perf.track_operation("tts", "synthesize", 620.0, {"voice": "default"})
        wait(0.5)
        perf.track_component_timings("memory", {"encode": 12.5, "search": 41.0, "store": 18.0})
        perf.broadcast_performance_summary()
    except _Stopped:
        return False
    finally:
        perf.stop()
    return True


def run_demo(
    integration: CodaWebSocketIntegration,
    perf: WebSocketPerfIntegration | None = None,
    pace: float = 1.0,
    stop_event: threading.Event | None = None,
    connect_wait: float = 5.0,
) -> bool:
    """The original demo, start to finish.

    ``system_startup`` (version :data:`DEMO_VERSION`), a pause of
    ``connect_wait`` seconds for clients to connect, one conversation
    (:func:`run_demo_conversation`), one error of each kind
    (:func:`run_demo_errors`), the performance section
    (:func:`run_demo_performance`; a ``WebSocketPerfIntegration`` with
    metrics every 3 s is made when ``perf`` is None), and
    ``system_shutdown``. All pauses are scaled by ``pace``.

    Returns True when it ran to its end, False when stopped (then no
    ``system_shutdown`` is emitted; the caller decides).
    """
    if perf is None:
        perf = WebSocketPerfIntegration(integration.server, metrics_interval=3.0)
    wait = _Pacer(pace, stop_event)
    try:
        wait(0)
        integration.system_startup(DEMO_VERSION, DEMO_CONFIG)
        wait(connect_wait)
        if not run_demo_conversation(integration, None, pace, wait.stop_event):
            return False
        wait(2.0)
        if not run_demo_errors(integration, pace, wait.stop_event):
            return False
        wait(2.0)
        if not run_demo_performance(perf, pace, wait.stop_event):
            return False
        wait(2.0)
        integration.system_shutdown()
    except _Stopped:
        return False
    return True


def run_demo_loop(
    integration: CodaWebSocketIntegration,
    perf: WebSocketPerfIntegration | None = None,
    pace: float = 1.0,
    stop_event: threading.Event | None = None,
    iterations: int | None = None,
    pause: float = 2.0,
) -> int:
    """Conversations one after another, for a live dashboard.

    Cycles through :data:`DEMO_EXCHANGES`, waiting ``pause`` seconds (times
    ``pace``) between conversations. After every third conversation one
    error is emitted (cycling through the kinds of :func:`run_demo_errors`).
    With ``perf``, every stage is tracked, each conversation adds a
    ``component_timing`` for memory, and every fifth a performance summary
    is broadcast; starting and stopping ``perf``'s metrics thread is the
    caller's job, as are ``system_startup`` and ``system_shutdown``.

    Args:
        integration, perf, pace, stop_event: as for :func:`run_demo_conversation`.
        iterations: how many conversations (None: until ``stop_event`` is set).
        pause: seconds between conversations (times ``pace``).

    Returns:
        How many conversations ran to their end.
    """
    wait = _Pacer(pace, stop_event)
    errors = itertools.cycle(_ERRORS)
    done = 0
    try:
        for index in itertools.count():
            if iterations is not None and index >= iterations:
                break
            if index:
                wait(pause)
            if not run_demo_conversation(integration, perf, pace, wait.stop_event, exchange=index):
                break
            done += 1
            if perf is not None:
                perf.track_component_timings(
                    "memory",
                    {"encode": 11.0 + index % 4, "search": 38.0 + index % 7, "store": 17.0 + index % 3},
                )
                perf.increment_counter("conversations")
                if done % 5 == 0:
                    perf.broadcast_performance_summary()
            if done % 3 == 0:
                wait(pause / 2)
                name, emit_error = next(errors)
                emit_error(integration)
                if perf is not None:
                    perf.increment_counter(name)
    except _Stopped:
        pass
    return done
