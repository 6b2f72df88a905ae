"""CodaWebSocketIntegration: one method per pipeline moment, each emitting one event.

The helpers are the original Coda interface's integration layer, made
synchronous: same method names, argument order and defaults, same event
types, fields, truncation rules and high-priority flags (see
``reference/original-coda.md``). Each method validates and emits at once in
the caller's thread and returns the emitted event; nothing here does I/O or
waits for clients (principle 1).

The integration only needs an object with an ``emit(event_type, *,
session_id=None, high_priority=None, **fields)`` method: a
:class:`~coda_ws.server.CodaWebSocketServer`, a bare
:class:`~coda_ws.bus.EventBus`, or any emitter with that signature, so it can
be used in processes that do not serve. It registers nothing on the emitter.
"""

import logging
import threading
import time
import uuid
from typing import Any, Protocol, TypeVar

from .events import BaseEvent, EventType

__all__ = ["MEMORY_PREVIEW_CHARS", "PROMPT_PREVIEW_CHARS", "CodaWebSocketIntegration", "Emitter"]

log = logging.getLogger("coda_ws.integration")

#: ``llm_start`` sends at most this many characters of the prompt (plus ``"..."``).
PROMPT_PREVIEW_CHARS = 200
#: ``memory_store`` sends at most this many characters of the content (plus ``"..."``).
MEMORY_PREVIEW_CHARS = 100


_T = TypeVar("_T")


class Emitter(Protocol):
    """What the integration (and :class:`~coda_ws.perf.WebSocketPerfIntegration`)
    emits through: a server, an ``EventBus``, a ``RedisEmitter`` or anything
    with this ``emit()``."""

    def emit(
        self,
        event_type: EventType | str,
        *,
        session_id: str | None = ...,
        high_priority: bool | None = ...,
        **fields: Any,
    ) -> BaseEvent: ...


def _preview(text: _T, limit: int) -> _T | str:
    """``text`` itself when it has at most ``limit`` characters, else its
    first ``limit`` characters followed by ``"..."``."""
    if isinstance(text, str) and len(text) > limit:
        return text[:limit] + "..."
    return text  # a non-string is left for emit() to reject, naming the field


class CodaWebSocketIntegration:
    """Emit Coda's pipeline events (STT, LLM, TTS, memory, tools, conversation).

    Args:
        server: anything with a compatible ``emit()`` (a server, an
            ``EventBus``, a backplane emitter).

    Attributes:
        server: the emitter given.
        session_id: the current conversation session (a uuid4 string made at
            construction and by :meth:`new_session`). Every event carries it,
            except ``system_info`` and ``system_error``, which are
            system-wide (``session_id`` null).
        conversation_turn_count: how many :meth:`conversation_turn` calls
            this session has seen.
        start_time: Unix time at which the integration was made (the
            ``uptime_seconds`` of :meth:`system_shutdown` counts from it).

    Thread safety: every method may be called from any thread. Each call
    emits exactly one event and returns it (the emitter's return value).
    Invalid arguments raise :class:`~coda_ws.errors.InvalidEventError` (a
    ``TypeError`` and a ``ValueError``) naming the field, and emit nothing.
    """

    def __init__(self, server: Emitter) -> None:
        if not callable(getattr(server, "emit", None)):
            raise TypeError(f"server must have an emit() method, got {type(server).__name__}")
        self.server = server
        self._emit = server.emit
        self._lock = threading.Lock()  # guards session_id and conversation_turn_count together
        self.session_id = str(uuid.uuid4())
        self.conversation_turn_count = 0
        self.start_time = time.time()
        self._started = time.monotonic()  # uptime immune to wall-clock jumps

    # -- session ----------------------------------------------------------------

    def new_session(self) -> str:
        """Start a new session: a new uuid4 ``session_id`` and a turn count of 0.

        Returns the new session id. Events emitted afterwards carry it.
        """
        with self._lock:
            self.session_id = str(uuid.uuid4())
            self.conversation_turn_count = 0
            session_id = self.session_id
        log.debug("new session %s", session_id)
        return session_id

    def get_session_id(self) -> str:
        """The current session id."""
        return self.session_id

    # -- system -------------------------------------------------------------------

    def system_startup(self, version: str, config: dict[str, Any]) -> BaseEvent:
        """``system_info`` with ``data={"event": "startup", "version", "config",
        "session_id"}``; high priority; envelope ``session_id`` null."""
        data = {"event": "startup", "version": version, "config": config, "session_id": self.session_id}
        return self._emit("system_info", high_priority=True, data=data)

    def system_shutdown(self) -> BaseEvent:
        """``system_info`` with ``data={"event": "shutdown", "uptime_seconds",
        "session_id"}`` (seconds since the integration was made, a float);
        high priority; envelope ``session_id`` null."""
        uptime = time.monotonic() - self._started
        data = {"event": "shutdown", "uptime_seconds": uptime, "session_id": self.session_id}
        return self._emit("system_info", high_priority=True, data=data)

    def system_error(self, level: str, message: str, details: dict[str, Any] | None = None) -> BaseEvent:
        """``system_error`` (level, message, details); high priority; ``session_id`` null."""
        return self._emit("system_error", high_priority=True, level=level, message=message, details=details)

    # -- speech to text -----------------------------------------------------------------

    def stt_start(self, mode: str = "push_to_talk") -> BaseEvent:
        """``stt_start`` (mode)."""
        return self._session_event("stt_start", False, mode=mode)

    def stt_interim_result(self, text: str, confidence: float = 0.0) -> BaseEvent:
        """``stt_interim`` (text, confidence): a partial transcription."""
        return self._session_event("stt_interim", False, text=text, confidence=confidence)

    def stt_final_result(
        self, text: str, confidence: float, duration_ms: float, language: str | None = None
    ) -> BaseEvent:
        """``stt_result`` (text, confidence, duration_ms, language); high priority."""
        return self._session_event(
            "stt_result", True, text=text, confidence=confidence, duration_ms=duration_ms, language=language
        )

    def stt_error(self, error: str, details: dict[str, Any] | None = None) -> BaseEvent:
        """``stt_error`` (error, details); high priority."""
        return self._session_event("stt_error", True, error=error, details=details)

    # -- language model --------------------------------------------------------------------

    def llm_start(self, prompt: str, model: str, temperature: float = 0.7) -> BaseEvent:
        """``llm_start`` (prompt, model, temperature).

        A prompt longer than 200 characters is sent as its first 200
        characters followed by ``"..."``.
        """
        return self._session_event(
            "llm_start",
            False,
            prompt=_preview(prompt, PROMPT_PREVIEW_CHARS),
            model=model,
            temperature=temperature,
        )

    def llm_token(self, token: str, cumulative_text: str) -> BaseEvent:
        """``llm_token`` (token, cumulative_text): one streamed token."""
        return self._session_event("llm_token", False, token=token, cumulative_text=cumulative_text)

    def llm_result(
        self, text: str, duration_ms: float, token_count: int, tokens_per_second: float
    ) -> BaseEvent:
        """``llm_result`` (text, duration_ms, token_count, tokens_per_second); high priority."""
        return self._session_event(
            "llm_result",
            True,
            text=text,
            duration_ms=duration_ms,
            token_count=token_count,
            tokens_per_second=tokens_per_second,
        )

    def llm_error(self, error: str, details: dict[str, Any] | None = None) -> BaseEvent:
        """``llm_error`` (error, details); high priority."""
        return self._session_event("llm_error", True, error=error, details=details)

    # -- text to speech ------------------------------------------------------------------------

    def tts_start(self, text: str, voice_id: str, engine: str) -> BaseEvent:
        """``tts_start`` (text, voice_id, engine)."""
        return self._session_event("tts_start", False, text=text, voice_id=voice_id, engine=engine)

    def tts_progress(self, progress_percent: float, estimated_duration_ms: float | None = None) -> BaseEvent:
        """``tts_progress`` (progress_percent, estimated_duration_ms)."""
        return self._session_event(
            "tts_progress",
            False,
            progress_percent=progress_percent,
            estimated_duration_ms=estimated_duration_ms,
        )

    def tts_result(self, duration_ms: float, audio_duration_ms: float, success: bool = True) -> BaseEvent:
        """``tts_result`` (duration_ms, audio_duration_ms, success); high priority."""
        return self._session_event(
            "tts_result", True, duration_ms=duration_ms, audio_duration_ms=audio_duration_ms, success=success
        )

    def tts_error(self, error: str, details: dict[str, Any] | None = None) -> BaseEvent:
        """``tts_error`` (error, details); high priority."""
        return self._session_event("tts_error", True, error=error, details=details)

    def tts_status(self, status: str) -> BaseEvent:
        """``tts_status`` (status)."""
        return self._session_event("tts_status", False, status=status)

    # -- memory --------------------------------------------------------------------------------

    def memory_store(self, content: str, memory_type: str, importance: float, memory_id: str) -> BaseEvent:
        """``memory_store`` (content_preview, memory_type, importance, memory_id); high priority.

        ``content_preview`` is ``content``, or when it is longer than 100
        characters its first 100 characters followed by ``"..."``.
        """
        return self._session_event(
            "memory_store",
            True,
            content_preview=_preview(content, MEMORY_PREVIEW_CHARS),
            memory_type=memory_type,
            importance=importance,
            memory_id=memory_id,
        )

    def memory_retrieve(self, query: str, results_count: int, relevance_scores: list[float]) -> BaseEvent:
        """``memory_retrieve`` (query, results_count, relevance_scores)."""
        return self._session_event(
            "memory_retrieve",
            False,
            query=query,
            results_count=results_count,
            relevance_scores=relevance_scores,
        )

    # -- tools ---------------------------------------------------------------------------------

    def tool_call(self, tool_name: str, parameters: dict[str, Any], call_id: str) -> BaseEvent:
        """``tool_call`` (tool_name, parameters, call_id)."""
        return self._session_event(
            "tool_call", False, tool_name=tool_name, parameters=parameters, call_id=call_id
        )

    def tool_result(self, tool_name: str, call_id: str, result: Any, duration_ms: float) -> BaseEvent:
        """``tool_result`` (tool_name, call_id, result, duration_ms); high priority.

        ``result`` may be any JSON value.
        """
        return self._session_event(
            "tool_result", True, tool_name=tool_name, call_id=call_id, result=result, duration_ms=duration_ms
        )

    def tool_error(
        self, tool_name: str, call_id: str, error: str, details: dict[str, Any] | None = None
    ) -> BaseEvent:
        """``tool_error`` (tool_name, call_id, error, details); high priority."""
        return self._session_event(
            "tool_error", True, tool_name=tool_name, call_id=call_id, error=error, details=details
        )

    # -- conversation --------------------------------------------------------------------------

    def conversation_start(self, conversation_id: str) -> BaseEvent:
        """``conversation_start`` (conversation_id); high priority."""
        return self._session_event("conversation_start", True, conversation_id=conversation_id)

    def conversation_turn(
        self, conversation_id: str, turn_number: int, user_input: str, assistant_response: str
    ) -> BaseEvent:
        """``conversation_turn`` (conversation_id, turn_number, user_input,
        assistant_response); high priority. Increments
        ``conversation_turn_count`` once the event is emitted."""
        event = self._session_event(
            "conversation_turn",
            True,
            conversation_id=conversation_id,
            turn_number=turn_number,
            user_input=user_input,
            assistant_response=assistant_response,
        )
        with self._lock:
            self.conversation_turn_count += 1
        return event

    def conversation_end(self, conversation_id: str, total_turns: int, duration_seconds: float) -> BaseEvent:
        """``conversation_end`` (conversation_id, total_turns, duration_seconds); high priority."""
        return self._session_event(
            "conversation_end",
            True,
            conversation_id=conversation_id,
            total_turns=total_turns,
            duration_seconds=duration_seconds,
        )

    # -- performance ---------------------------------------------------------------------------

    def latency_trace(
        self, component: str, operation: str, duration_ms: float, metadata: dict[str, Any] | None = None
    ) -> BaseEvent:
        """``latency_trace`` (component, operation, duration_ms, metadata)."""
        return self._session_event(
            "latency_trace",
            False,
            component=component,
            operation=operation,
            duration_ms=duration_ms,
            metadata=metadata,
        )

    def component_timing(self, component: str, timings: dict[str, float]) -> BaseEvent:
        """``component_timing`` (component, timings: operation name -> milliseconds)."""
        return self._session_event("component_timing", False, component=component, timings=timings)

    # -- voice moments (beyond the original) ----------------------------------------------------

    def vad_start(self, confidence: float | None = None) -> BaseEvent:
        """``vad_start`` (confidence): voice activity detection heard speech begin."""
        return self._session_event("vad_start", False, confidence=confidence)

    def vad_end(self, duration_ms: float, confidence: float | None = None) -> BaseEvent:
        """``vad_end`` (duration_ms of the speech, confidence): speech ended."""
        return self._session_event("vad_end", False, duration_ms=duration_ms, confidence=confidence)

    def wake_word(self, word: str, confidence: float) -> BaseEvent:
        """``wake_word`` (word, confidence); high priority."""
        return self._session_event("wake_word", True, word=word, confidence=confidence)

    def barge_in(self, interrupted: str, played_ms: float | None = None) -> BaseEvent:
        """``barge_in`` (interrupted: what was cut off, such as ``"tts"``;
        played_ms: audio played before it); high priority."""
        return self._session_event("barge_in", True, interrupted=interrupted, played_ms=played_ms)

    def emit(
        self, event_type: EventType | str, *, high_priority: bool | None = None, **fields: Any
    ) -> BaseEvent:
        """Any event type in the current session, a type of your own
        included (see ``coda_ws.register_event``); ``high_priority`` None
        keeps the type's default."""
        return self._emit(event_type, session_id=self.session_id, high_priority=high_priority, **fields)

    # -------------------------------------------------------------------------------------------

    def _session_event(self, event_type: str, high_priority: bool, **fields: Any) -> BaseEvent:
        return self._emit(event_type, session_id=self.session_id, high_priority=high_priority, **fields)

    def __repr__(self) -> str:
        return f"<CodaWebSocketIntegration session={self.session_id}>"
