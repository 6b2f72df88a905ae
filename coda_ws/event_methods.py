"""The original interface's event and handler methods of
:class:`~coda_ws.server.CodaWebSocketServer`: ``emit``, ``broadcast_*``,
``send_to_client``, the three handler lists and the client queries.

They need only the server's bus and client registry, so they live here, apart
from the server's configuration, lifecycle and HTTP side."""

import logging
from collections.abc import Callable
from typing import Any

from .bus import EventBus
from .deadline import Deadline
from .events import BaseEvent
from .registry import ClientRegistry

__all__ = ["EventMethods"]

log = logging.getLogger("coda_ws.server")


class EventMethods:
    """Base of :class:`~coda_ws.server.CodaWebSocketServer` holding the
    original's event methods; every one is thread-safe and none blocks on
    clients."""

    bus: EventBus
    registry: ClientRegistry
    on_connect_handlers: list[Callable[[str], Any]]
    on_disconnect_handlers: list[Callable[[str], Any]]
    on_message_handlers: list[Callable[[str, dict[str, Any]], Any]]

    # -- events -------------------------------------------------------------------

    def emit(
        self,
        event_type: str,
        *,
        session_id: str | None = None,
        high_priority: bool | None = None,
        **fields: Any,
    ) -> BaseEvent:
        """Emit an event to every client (see :meth:`EventBus.emit`); returns it
        (an instance of the type's class, e.g. :class:`~coda_ws.events.STTResultEvent`)."""
        event: BaseEvent = self.bus.emit(
            event_type, session_id=session_id, high_priority=high_priority, **fields
        )
        return event

    def broadcast_event(
        self,
        event_type: str,
        data: dict[str, Any],
        high_priority: bool = False,
        session_id: str | None = None,
    ) -> BaseEvent:
        """The original's broadcast: ``data`` holds the fields.

        Raises ``ValueError``/``TypeError`` (InvalidEventError) for an unknown
        type or bad fields. Returns the event.
        """
        if not isinstance(data, dict):
            raise TypeError(f"data must be a dict of event fields, got {type(data).__name__}")
        event: BaseEvent = self.bus.emit(
            event_type, session_id=session_id, high_priority=high_priority, **data
        )
        return event

    def send_to_client(
        self, client_id: str, event_type: str, data: dict[str, Any], session_id: str | None = None
    ) -> bool:
        """Send an event to one client only (never replayed or resumed).

        Returns False when no such client is connected.
        """
        if not isinstance(data, dict):
            raise TypeError(f"data must be a dict of event fields, got {type(data).__name__}")
        if client_id not in self.registry.snapshot():
            return False
        self.bus.send_to(client_id, event_type, session_id=session_id, **data)
        return True

    def broadcast_system_info(self, info: dict[str, Any]) -> BaseEvent:
        """``system_info`` with ``data=info``, high priority."""
        return self.broadcast_event("system_info", {"data": info}, high_priority=True)

    def broadcast_system_error(
        self, level: str, message: str, details: dict[str, Any] | None = None
    ) -> BaseEvent:
        """``system_error``, high priority."""
        return self.broadcast_event(
            "system_error", {"level": level, "message": message, "details": details}, high_priority=True
        )

    def broadcast_system_metrics(
        self,
        memory_mb: float,
        cpu_percent: float,
        gpu_vram_mb: float | None = None,
        uptime_seconds: float = 0,
    ) -> BaseEvent:
        """``system_metrics``, not high priority."""
        return self.broadcast_event(
            "system_metrics",
            {
                "memory_mb": memory_mb,
                "cpu_percent": cpu_percent,
                "gpu_vram_mb": gpu_vram_mb,
                "uptime_seconds": uptime_seconds,
            },
        )

    # -- handlers -----------------------------------------------------------------

    def add_connect_handler(self, handler: Callable[[str], Any]) -> None:
        """Call ``handler(client_id)`` once when a client connects."""
        self.on_connect_handlers.append(handler)

    def add_disconnect_handler(self, handler: Callable[[str], Any]) -> None:
        """Call ``handler(client_id)`` once when a client disconnects."""
        self.on_disconnect_handlers.append(handler)

    def add_message_handler(self, handler: Callable[[str, dict[str, Any]], Any]) -> None:
        """Call ``handler(client_id, data)`` for every JSON object a client sends
        (except the protocol's own ``subscribe`` and ``ping``). Handlers run in
        that client's writer thread: a slow handler delays only that client."""
        self.on_message_handlers.append(handler)

    def _run_handlers(self, kind: str, *args: Any) -> None:
        table: dict[str, list[Callable[..., Any]]] = {
            "connect": self.on_connect_handlers,
            "disconnect": self.on_disconnect_handlers,
            "message": self.on_message_handlers,
        }
        handlers = table[kind]
        for handler in list(handlers):
            try:
                handler(*args)
            except Exception:
                self.registry.count("handler_errors")
                log.exception("handler %r failed", handler)

    # -- queries --------------------------------------------------------------------

    def get_connected_clients(self) -> list[str]:
        """Ids of the connected clients."""
        return self.registry.ids()

    def wait_for_clients(self, min_clients: int = 1, timeout: float = 30.0) -> bool:
        """Block until at least ``min_clients`` are connected; False on timeout."""
        return self.registry.wait_for(min_clients, Deadline(timeout))
