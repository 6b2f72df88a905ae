"""coda_ws: the Coda voice assistant's real-time event stream over WebSocket.

Blocking Python code calls :meth:`CodaWebSocketServer.emit` (or
:meth:`EventBus.emit`) from any thread; dashboards and tools connected over
WebSocket receive the event a moment later, in order, and can resume after a
reconnect without missing anything.
"""

from ._version import __version__
from .backplane import RedisEmitter  # noqa: E402
from .bus import EventBus, Subscription  # noqa: E402
from .client import ClientConnectionError, CodaEventClient, HandshakeRejected  # noqa: E402
from .errors import CodaWSError, InvalidEventError, JournalError  # noqa: E402
from .events import (  # noqa: E402
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
from .filters import EventFilter  # noqa: E402
from .integration import CodaWebSocketIntegration  # noqa: E402
from .perf import WebSocketPerfIntegration  # noqa: E402
from .server import CodaWebSocketServer  # noqa: E402

__all__ = [
    "__version__",
    "CodaWebSocketServer",
    "CodaWebSocketIntegration",
    "WebSocketPerfIntegration",
    "RedisEmitter",
    "EventBus",
    "Subscription",
    "CodaEventClient",
    "ClientConnectionError",
    "HandshakeRejected",
    "EventFilter",
    "CodaWSError",
    "InvalidEventError",
    "JournalError",
    "EventType",
    "create_event",
    "validate_event",
    "BaseEvent",
    "SystemInfoEvent",
    "SystemErrorEvent",
    "SystemMetricsEvent",
    "STTStartEvent",
    "STTInterimEvent",
    "STTResultEvent",
    "STTErrorEvent",
    "LLMStartEvent",
    "LLMTokenEvent",
    "LLMResultEvent",
    "LLMErrorEvent",
    "TTSStartEvent",
    "TTSProgressEvent",
    "TTSResultEvent",
    "TTSErrorEvent",
    "TTSStatusEvent",
    "MemoryStoreEvent",
    "MemoryRetrieveEvent",
    "ToolCallEvent",
    "ToolResultEvent",
    "ToolErrorEvent",
    "ConversationStartEvent",
    "ConversationTurnEvent",
    "ConversationEndEvent",
    "LatencyTraceEvent",
    "ComponentTimingEvent",
    "ComponentStatusEvent",
    "ComponentErrorEvent",
    "ComponentHealthEvent",
    "SystemStatusEvent",
    "IntegrationMetricsEvent",
]
