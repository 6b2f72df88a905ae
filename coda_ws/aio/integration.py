"""The original's asyncio ``CodaWebSocketIntegration``: one awaitable per pipeline moment.

Each coroutine calls the same method of :class:`coda_ws.integration.CodaWebSocketIntegration`
(held as ``integration.sync``), which validates and emits at once in the
caller and never waits for I/O or clients: awaiting it never yields to other
tasks for long and never blocks the loop. Same names, arguments, defaults,
event types, fields, truncation and priorities as the original (and as the
synchronous helpers); each returns the emitted event.
"""

from typing import Any

from ..events import BaseEvent, EventType
from ..integration import CodaWebSocketIntegration as SyncCodaWebSocketIntegration

__all__ = ["CodaWebSocketIntegration"]


def _emitter(server: Any) -> Any:
    """The synchronous emitter behind ``server``: an asyncio server's ``sync``
    server, or ``server`` itself (a server, an EventBus, anything with ``emit()``)."""
    from .server import CodaWebSocketServer

    return server.sync if isinstance(server, CodaWebSocketServer) else server


class CodaWebSocketIntegration:
    """Emit Coda's pipeline events from coroutines (STT, LLM, TTS, memory, tools,
    conversation, timings).

    Args:
        server: a :class:`coda_ws.aio.CodaWebSocketServer`, or anything the
            synchronous integration takes (a server, an ``EventBus``, an
            emitter with a compatible ``emit()``).

    Attributes:
        server: the server given.
        sync: the :class:`coda_ws.integration.CodaWebSocketIntegration` doing the work;
            threads may use it directly (same session).
        session_id, conversation_turn_count, start_time: as the original's
            (read from ``sync``; ``session_id`` is assignable).

    Every event method is a coroutine that emits exactly one event and
    returns it; it never blocks. Invalid arguments raise
    :class:`~coda_ws.errors.InvalidEventError` (a ``TypeError`` and a
    ``ValueError``) naming the field, and emit nothing. :meth:`new_session`
    and :meth:`get_session_id` are plain methods. Thread-safe.
    """

    def __init__(self, server: Any) -> None:
        self.server = server
        self.sync = SyncCodaWebSocketIntegration(_emitter(server))

    # -- session ----------------------------------------------------------------

    @property
    def session_id(self) -> str:
        """The current conversation session (a uuid4 string)."""
        return self.sync.session_id

    @session_id.setter
    def session_id(self, value: str) -> None:
        self.sync.session_id = value

    @property
    def conversation_turn_count(self) -> int:
        """How many :meth:`conversation_turn` calls this session has seen."""
        return self.sync.conversation_turn_count

    @property
    def start_time(self) -> float:
        """Unix time at which the integration was made."""
        return self.sync.start_time

    def new_session(self) -> str:
        """Start a new session (new ``session_id``, turn count 0); returns its id."""
        return self.sync.new_session()

    def get_session_id(self) -> str:
        """The current session id."""
        return self.sync.get_session_id()

    # -- system -------------------------------------------------------------------

    async def system_startup(self, version: str, config: dict[str, Any]) -> BaseEvent:
        """``system_info`` with ``data={"event": "startup", ...}``; high priority; session null."""
        return self.sync.system_startup(version, config)

    async def system_shutdown(self) -> BaseEvent:
        """``system_info`` with ``data={"event": "shutdown", "uptime_seconds", ...}``; high priority."""
        return self.sync.system_shutdown()

    async def system_error(
        self, level: str, message: str, details: dict[str, Any] | None = None
    ) -> BaseEvent:
        """``system_error`` (level, message, details); high priority; session null."""
        return self.sync.system_error(level, message, details)

    # -- speech to text -------------------------------------------------------------

    async def stt_start(self, mode: str = "push_to_talk") -> BaseEvent:
        """``stt_start`` (mode)."""
        return self.sync.stt_start(mode)

    async def stt_interim_result(self, text: str, confidence: float = 0.0) -> BaseEvent:
        """``stt_interim`` (text, confidence)."""
        return self.sync.stt_interim_result(text, confidence)

    async def stt_final_result(
        self, text: str, confidence: float, duration_ms: float, language: str | None = None
    ) -> BaseEvent:
        """``stt_result`` (text, confidence, duration_ms, language); high priority."""
        return self.sync.stt_final_result(text, confidence, duration_ms, language)

    async def stt_error(self, error: str, details: dict[str, Any] | None = None) -> BaseEvent:
        """``stt_error`` (error, details); high priority."""
        return self.sync.stt_error(error, details)

    # -- language model ---------------------------------------------------------------

    async def llm_start(self, prompt: str, model: str, temperature: float = 0.7) -> BaseEvent:
        """``llm_start`` (prompt truncated to 200 characters + ``"..."``, model, temperature)."""
        return self.sync.llm_start(prompt, model, temperature)

    async def llm_token(self, token: str, cumulative_text: str) -> BaseEvent:
        """``llm_token`` (token, cumulative_text)."""
        return self.sync.llm_token(token, cumulative_text)

    async def llm_result(
        self, text: str, duration_ms: float, token_count: int, tokens_per_second: float
    ) -> BaseEvent:
        """``llm_result`` (text, duration_ms, token_count, tokens_per_second); high priority."""
        return self.sync.llm_result(text, duration_ms, token_count, tokens_per_second)

    async def llm_error(self, error: str, details: dict[str, Any] | None = None) -> BaseEvent:
        """``llm_error`` (error, details); high priority."""
        return self.sync.llm_error(error, details)

    # -- text to speech -----------------------------------------------------------------

    async def tts_start(self, text: str, voice_id: str, engine: str) -> BaseEvent:
        """``tts_start`` (text, voice_id, engine)."""
        return self.sync.tts_start(text, voice_id, engine)

    async def tts_progress(
        self, progress_percent: float, estimated_duration_ms: float | None = None
    ) -> BaseEvent:
        """``tts_progress`` (progress_percent, estimated_duration_ms)."""
        return self.sync.tts_progress(progress_percent, estimated_duration_ms)

    async def tts_result(
        self, duration_ms: float, audio_duration_ms: float, success: bool = True
    ) -> BaseEvent:
        """``tts_result`` (duration_ms, audio_duration_ms, success); high priority."""
        return self.sync.tts_result(duration_ms, audio_duration_ms, success)

    async def tts_error(self, error: str, details: dict[str, Any] | None = None) -> BaseEvent:
        """``tts_error`` (error, details); high priority."""
        return self.sync.tts_error(error, details)

    async def tts_status(self, status: str) -> BaseEvent:
        """``tts_status`` (status)."""
        return self.sync.tts_status(status)

    # -- memory -----------------------------------------------------------------------

    async def memory_store(
        self, content: str, memory_type: str, importance: float, memory_id: str
    ) -> BaseEvent:
        """``memory_store`` (content_preview: at most 100 characters + ``"..."``,
        memory_type, importance, memory_id); high priority."""
        return self.sync.memory_store(content, memory_type, importance, memory_id)

    async def memory_retrieve(
        self, query: str, results_count: int, relevance_scores: list[float]
    ) -> BaseEvent:
        """``memory_retrieve`` (query, results_count, relevance_scores)."""
        return self.sync.memory_retrieve(query, results_count, relevance_scores)

    # -- tools --------------------------------------------------------------------------

    async def tool_call(self, tool_name: str, parameters: dict[str, Any], call_id: str) -> BaseEvent:
        """``tool_call`` (tool_name, parameters, call_id)."""
        return self.sync.tool_call(tool_name, parameters, call_id)

    async def tool_result(self, tool_name: str, call_id: str, result: Any, duration_ms: float) -> BaseEvent:
        """``tool_result`` (tool_name, call_id, result: any JSON value, duration_ms); high priority."""
        return self.sync.tool_result(tool_name, call_id, result, duration_ms)

    async def tool_error(
        self, tool_name: str, call_id: str, error: str, details: dict[str, Any] | None = None
    ) -> BaseEvent:
        """``tool_error`` (tool_name, call_id, error, details); high priority."""
        return self.sync.tool_error(tool_name, call_id, error, details)

    # -- conversation -----------------------------------------------------------------

    async def conversation_start(self, conversation_id: str) -> BaseEvent:
        """``conversation_start`` (conversation_id); high priority."""
        return self.sync.conversation_start(conversation_id)

    async def conversation_turn(
        self, conversation_id: str, turn_number: int, user_input: str, assistant_response: str
    ) -> BaseEvent:
        """``conversation_turn`` (...); high priority; increments ``conversation_turn_count``."""
        return self.sync.conversation_turn(conversation_id, turn_number, user_input, assistant_response)

    async def conversation_end(
        self, conversation_id: str, total_turns: int, duration_seconds: float
    ) -> BaseEvent:
        """``conversation_end`` (conversation_id, total_turns, duration_seconds); high priority."""
        return self.sync.conversation_end(conversation_id, total_turns, duration_seconds)

    # -- performance ----------------------------------------------------------------------

    async def latency_trace(
        self, component: str, operation: str, duration_ms: float, metadata: dict[str, Any] | None = None
    ) -> BaseEvent:
        """``latency_trace`` (component, operation, duration_ms, metadata)."""
        return self.sync.latency_trace(component, operation, duration_ms, metadata)

    async def component_timing(self, component: str, timings: dict[str, float]) -> BaseEvent:
        """``component_timing`` (component, timings: operation -> milliseconds)."""
        return self.sync.component_timing(component, timings)

    # -- voice moments (beyond the original) ------------------------------------------------

    async def vad_start(self, confidence: float | None = None) -> BaseEvent:
        """``vad_start`` (confidence): speech began."""
        return self.sync.vad_start(confidence)

    async def vad_end(self, duration_ms: float, confidence: float | None = None) -> BaseEvent:
        """``vad_end`` (duration_ms, confidence): speech ended."""
        return self.sync.vad_end(duration_ms, confidence)

    async def wake_word(self, word: str, confidence: float) -> BaseEvent:
        """``wake_word`` (word, confidence); high priority."""
        return self.sync.wake_word(word, confidence)

    async def barge_in(self, interrupted: str, played_ms: float | None = None) -> BaseEvent:
        """``barge_in`` (interrupted, played_ms); high priority."""
        return self.sync.barge_in(interrupted, played_ms)

    async def emit(
        self, event_type: EventType | str, *, high_priority: bool | None = None, **fields: Any
    ) -> BaseEvent:
        """Any event type, one of your own included, in the current session."""
        return self.sync.emit(event_type, high_priority=high_priority, **fields)

    def __repr__(self) -> str:
        return f"<coda_ws.aio.CodaWebSocketIntegration session={self.session_id}>"
