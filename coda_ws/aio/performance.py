"""The original's asyncio ``WebSocketPerfIntegration``: process metrics and timings as events.

Over :class:`coda_ws.perf.WebSocketPerfIntegration` (held as ``perf.sync``):
the metrics are reported by its thread (``coda-ws-metrics``), which emits
``system_metrics`` at once and then every ``metrics_interval`` seconds
without touching the event loop; timings emit in the caller. So
:meth:`WebSocketPerfIntegration.start` only starts that thread,
:meth:`~WebSocketPerfIntegration.stop` joins it off the loop, and every other
coroutine returns without waiting.

:meth:`~WebSocketPerfIntegration.time_operation` gives an
:class:`AsyncOperationTimer`: ``async with`` (as in the original), plain
``with``, or a decorator of coroutine functions and plain functions alike.
The original's module-level decorators :func:`track_async_operation` and
:func:`track_sync_operation` are here too; the synchronous one reports in
the caller, so it needs no running loop (the original's needed one).
"""

import asyncio
import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, cast

from ..events import BaseEvent
from ..perf import DEFAULT_WINDOW, OperationTimer, PerformanceSummary
from ..perf import WebSocketPerfIntegration as SyncWebSocketPerfIntegration
from .integration import _emitter

__all__ = ["AsyncOperationTimer", "WebSocketPerfIntegration", "track_async_operation", "track_sync_operation"]

F = TypeVar("F", bound=Callable[..., Any])


class AsyncOperationTimer(OperationTimer):
    """Times a block or every call of a function, then reports it through ``track_operation``.

    ``async with perf.time_operation("stt", "transcribe"):`` times the block
    (as in the original), ``with`` works too, and as a decorator it times
    every call of a coroutine function (each call measured on its own, so
    concurrent calls do not mix) or of a plain function. Durations are in
    milliseconds from :func:`time.perf_counter`; a block that raises (or is
    cancelled) is reported with ``metadata["error"]`` naming the exception
    class, and the exception propagates. The report emits at once; nothing
    here waits.
    """

    __slots__ = ()

    async def __aenter__(self) -> "AsyncOperationTimer":
        self.__enter__()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        return self.__exit__(exc_type, exc, tb)

    def __call__(self, func: F) -> F:
        if not inspect.iscoroutinefunction(func):
            return cast(F, super().__call__(func))
        perf, component, operation, metadata = self._perf, self.component, self.operation, self.metadata

        @functools.wraps(func)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            async with AsyncOperationTimer(perf, component, operation, metadata):
                return await func(*args, **kwargs)

        return timed  # type: ignore[return-value]


class WebSocketPerfIntegration:
    """Process metrics and operation timings, emitted as events, from asyncio code.

    Args:
        server: a :class:`coda_ws.aio.CodaWebSocketServer`, or anything the
            synchronous integration takes. With a server, stopping the
            server stops the metrics thread too.
        metrics_interval: seconds between ``system_metrics`` reports.
        window: timings kept per operation for the percentiles.

    Attributes:
        server: the server given.
        sync: the :class:`coda_ws.perf.WebSocketPerfIntegration` doing the work.

    Awaitable, as in the original: :meth:`start`, :meth:`stop`,
    :meth:`track_operation`, :meth:`track_component_timings`,
    :meth:`broadcast_performance_summary`, and ``async with``
    :meth:`time_operation`. Plain: :meth:`get_performance_summary`,
    :meth:`increment_counter`, :meth:`reset_metrics`. Thread-safe; only
    :meth:`stop` waits (for the metrics thread, off the loop).
    """

    def __init__(self, server: Any, metrics_interval: float = 5.0, *, window: int = DEFAULT_WINDOW) -> None:
        self.server = server
        self.sync = SyncWebSocketPerfIntegration(_emitter(server), metrics_interval, window=window)

    @property
    def metrics_interval(self) -> float:
        """Seconds between ``system_metrics`` reports."""
        return self.sync.metrics_interval

    @property
    def running(self) -> bool:
        """True while the metrics thread runs."""
        return self.sync.running

    async def start(self) -> None:
        """Start the metrics thread: ``system_metrics`` now, then every
        ``metrics_interval`` seconds. Idempotent; returns at once."""
        self.sync.start()

    async def stop(self, timeout: float = 5.0) -> bool:
        """Stop the metrics thread and join it (in the loop's default executor). Idempotent.

        Returns True once the thread has ended (within ``timeout`` seconds).
        """
        return await asyncio.to_thread(self.sync.stop, timeout)

    async def track_operation(
        self, component: str, operation: str, duration_ms: float, metadata: dict[str, Any] | None = None
    ) -> BaseEvent:
        """Emit ``latency_trace`` and record ``duration_ms`` (milliseconds); returns the event.

        Raises ``InvalidEventError`` for a bad argument, and records nothing then.
        """
        return self.sync.track_operation(component, operation, duration_ms, metadata)

    async def track_component_timings(self, component: str, timings: dict[str, float]) -> BaseEvent:
        """Emit ``component_timing`` and record each ``operation -> ms``; returns the event."""
        return self.sync.track_component_timings(component, timings)

    def time_operation(
        self, component: str, operation: str, metadata: dict[str, Any] | None = None
    ) -> AsyncOperationTimer:
        """Time a block (``async with`` or ``with``) or every call of a function (decorator).

        See :class:`AsyncOperationTimer`.
        """
        return AsyncOperationTimer(self.sync, component, operation, metadata)

    def get_performance_summary(self) -> PerformanceSummary:
        """``{"system_metrics", "operation_timings", "counters", "server_stats"}``
        (see :meth:`coda_ws.perf.WebSocketPerfIntegration.get_performance_summary`)."""
        return self.sync.get_performance_summary()

    async def broadcast_performance_summary(self) -> BaseEvent:
        """Emit ``system_info`` with ``data={"event": "performance_summary", "data": summary}``
        (high priority); returns the event."""
        return self.sync.broadcast_performance_summary()

    def increment_counter(self, counter: str, amount: int = 1) -> int:
        """Add ``amount`` to ``counter`` (created at 0); returns the new value."""
        return self.sync.increment_counter(counter, amount)

    def reset_metrics(self) -> None:
        """Forget every recorded timing and counter."""
        self.sync.reset_metrics()

    def __repr__(self) -> str:
        return (
            f"<coda_ws.aio.WebSocketPerfIntegration interval={self.metrics_interval}s running={self.running}>"
        )


def track_async_operation(
    perf_integration: WebSocketPerfIntegration, component: str, operation: str
) -> Callable[[F], F]:
    """Decorator (the original's): time every call of a coroutine function."""
    return perf_integration.time_operation(component, operation)


def track_sync_operation(
    perf_integration: WebSocketPerfIntegration, component: str, operation: str
) -> Callable[[F], F]:
    """Decorator (the original's): time every call of a plain function.

    The timing is emitted in the caller when the call returns (or raises);
    unlike the original's, no running event loop is needed.
    """
    return perf_integration.time_operation(component, operation)
