"""coda_ws: the Coda voice assistant's real-time event stream over WebSocket.

Blocking Python code calls :meth:`CodaWebSocketServer.emit` (or
:meth:`EventBus.emit`) from any thread; dashboards and tools connected over
WebSocket receive the event a moment later, in order, and can resume after a
reconnect without missing anything.
"""

from ._version import __version__
from .backplane import RedisEmitter
from .bus import EventBus, Subscription
from .client import ClientConnectionError, CodaEventClient, HandshakeRejected
from .errors import CodaWSError, InvalidEventError, JournalError
from .events import (
    BaseEvent,
    ComponentErrorEvent,
    ComponentHealthEvent,
    ComponentStatusEvent,
    ComponentTimingEvent,
    ConversationEndEvent,
    ConversationStartEvent,
    ConversationTurnEvent,
    EventType,
    IntegrationMetricsEvent,
    LatencyTraceEvent,
    LLMErrorEvent,
    LLMResultEvent,
    LLMStartEvent,
    LLMTokenEvent,
    MemoryRetrieveEvent,
    MemoryStoreEvent,
    STTErrorEvent,
    STTInterimEvent,
    STTResultEvent,
    STTStartEvent,
    SystemErrorEvent,
    SystemInfoEvent,
    SystemMetricsEvent,
    SystemStatusEvent,
    ToolCallEvent,
    ToolErrorEvent,
    ToolResultEvent,
    TTSErrorEvent,
    TTSProgressEvent,
    TTSResultEvent,
    TTSStartEvent,
    TTSStatusEvent,
    create_event,
    validate_event,
)
from .filters import EventFilter
from .integration import CodaWebSocketIntegration
from .perf import WebSocketPerfIntegration
from .server import CodaWebSocketServer

__all__ = [
    "BaseEvent",
    "ClientConnectionError",
    "CodaEventClient",
    "CodaWSError",
    "CodaWebSocketIntegration",
    "CodaWebSocketServer",
    "ComponentErrorEvent",
    "ComponentHealthEvent",
    "ComponentStatusEvent",
    "ComponentTimingEvent",
    "ConversationEndEvent",
    "ConversationStartEvent",
    "ConversationTurnEvent",
    "EventBus",
    "EventFilter",
    "EventType",
    "HandshakeRejected",
    "IntegrationMetricsEvent",
    "InvalidEventError",
    "JournalError",
    "LLMErrorEvent",
    "LLMResultEvent",
    "LLMStartEvent",
    "LLMTokenEvent",
    "LatencyTraceEvent",
    "MemoryRetrieveEvent",
    "MemoryStoreEvent",
    "RedisEmitter",
    "STTErrorEvent",
    "STTInterimEvent",
    "STTResultEvent",
    "STTStartEvent",
    "Subscription",
    "SystemErrorEvent",
    "SystemInfoEvent",
    "SystemMetricsEvent",
    "SystemStatusEvent",
    "TTSErrorEvent",
    "TTSProgressEvent",
    "TTSResultEvent",
    "TTSStartEvent",
    "TTSStatusEvent",
    "ToolCallEvent",
    "ToolErrorEvent",
    "ToolResultEvent",
    "WebSocketPerfIntegration",
    "__version__",
    "create_event",
    "validate_event",
]
