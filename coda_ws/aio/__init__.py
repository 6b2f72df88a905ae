"""coda_ws.aio: the original Coda WebSocket interface's asyncio API, over coda_ws's threads.

Code written for the original (``await server.start()``, ``async with
server.run_context()``, ``await integration.stt_start("continuous")``,
``async with perf.time_operation("stt", "transcribe")``) runs against this
package with its import lines changed from ``coda.interfaces.websocket`` to
``coda_ws.aio``; asyncio voice pipelines emit from coroutines through it and
read the stream with ``async for`` (:class:`AsyncCodaEventClient`).

There is no second server and no event loop of coda_ws's own: each class
here holds the synchronous one (its ``sync`` attribute) and runs on the
caller's loop. Emitting never blocks the loop (``emit()`` does no I/O and
never waits for clients), so the event coroutines call it directly; the few
calls that wait (``start``, ``stop``, the perf integration's ``stop``) run in
the loop's default executor. Coroutines and threads may emit into the same
stream at once; every client sees one order.

Modules, named as the original's: :mod:`coda_ws.aio.server`,
:mod:`coda_ws.aio.integration`, :mod:`coda_ws.aio.performance`,
:mod:`coda_ws.aio.events` (the same classes as :mod:`coda_ws.events`), and
:mod:`coda_ws.aio.client` (:class:`AsyncCodaEventClient`), which needs the
``websockets`` package (``pip install 'coda-ws[aio]'``) and is imported
only when that name is first used; the rest needs nothing beyond coda_ws.
``import coda_ws`` imports none of this package.
"""

from typing import TYPE_CHECKING, Any

from ..errors import ClientConnectionError, CodaWSError, HandshakeRejected, InvalidEventError
from ..events import (
    BargeInEvent,
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
    VADEndEvent,
    VADStartEvent,
    WakeWordEvent,
    create_event,
    custom_event,
    register_event,
    registered_event_types,
    validate_event,
)
from .integration import CodaWebSocketIntegration
from .performance import (
    AsyncOperationTimer,
    WebSocketPerfIntegration,
    track_async_operation,
    track_sync_operation,
)
from .server import CodaWebSocketServer

if TYPE_CHECKING:  # imported lazily at run time (module __getattr__ below)
    from .client import AsyncCodaEventClient

__all__ = [
    "AsyncCodaEventClient",
    "AsyncOperationTimer",
    "BargeInEvent",
    "BaseEvent",
    "ClientConnectionError",
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
    "EventType",
    "HandshakeRejected",
    "IntegrationMetricsEvent",
    "InvalidEventError",
    "LLMErrorEvent",
    "LLMResultEvent",
    "LLMStartEvent",
    "LLMTokenEvent",
    "LatencyTraceEvent",
    "MemoryRetrieveEvent",
    "MemoryStoreEvent",
    "STTErrorEvent",
    "STTInterimEvent",
    "STTResultEvent",
    "STTStartEvent",
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
    "VADEndEvent",
    "VADStartEvent",
    "WakeWordEvent",
    "WebSocketPerfIntegration",
    "create_event",
    "custom_event",
    "register_event",
    "registered_event_types",
    "track_async_operation",
    "track_sync_operation",
    "validate_event",
]


def __getattr__(name: str) -> Any:
    # AsyncCodaEventClient needs websockets (the `aio` extra): imported on first use,
    # so the server side of this package works without it.
    if name == "AsyncCodaEventClient":
        from .client import AsyncCodaEventClient

        return AsyncCodaEventClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"AsyncCodaEventClient"})
