"""Backplanes: one ordered event stream shared by many processes and hosts.

A backplane stamps every event's ``seq`` in one place for every emitter, so
every server node delivers the same stream in the same order and any node can
resume any client. The one implementation uses Redis Streams
(:mod:`coda_ws.backplane.redis`, extra ``coda-ws[redis]``); the ``redis``
package is imported only when a backplane is made, so ``import coda_ws``
works without it.

* :class:`RedisBackplane`: the server side; ``CodaWebSocketServer(...,
  backplane="redis://127.0.0.1:6379/0")`` makes one.
* :class:`RedisEmitter`: emit-only, for worker processes that do not serve.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .redis import (
    BackplaneStats,
    EmitterStats,
    PublisherStats,
    RedisBackplane,
    RedisEmitter,
    StreamKeys,
)

if TYPE_CHECKING:
    from ..bus import EventBus

__all__ = [
    "Backplane",
    "BackplaneStats",
    "EmitterStats",
    "PublisherStats",
    "RedisBackplane",
    "RedisEmitter",
    "StreamKeys",
    "open_backplane",
]

_SCHEMES = ("redis://", "rediss://", "unix://")


class Backplane(Protocol):
    """What a server drives of its backplane (:class:`RedisBackplane`, or an
    object given as ``backplane=`` with these methods)."""

    def attach(self, bus: EventBus, /) -> object: ...

    def start(self, ready_timeout: float = ...) -> bool: ...

    def close(self, timeout: float = ..., /) -> object: ...

    def flush(self, timeout: float | None = ..., /) -> object: ...

    def ready(self) -> tuple[bool, str | None]: ...

    def stats(self) -> Mapping[str, Any]: ...


def open_backplane(backplane: str | Backplane, prefix: str = "coda_ws") -> Backplane:
    """The backplane a server was configured with.

    Args:
        backplane: a ``redis://``, ``rediss://`` or ``unix://`` URL, or an
            existing backplane object (returned as is; for options the URL
            form does not carry, such as ``RedisBackplane(url, maxlen=...)``).
        prefix: the Redis key prefix (several assistants can share one Redis).

    Raises:
        ValueError: an unsupported URL or a bad prefix.
        ImportError: the ``redis`` package is not installed.
    """
    if isinstance(backplane, str):
        if not backplane.startswith(_SCHEMES):
            raise ValueError(f"backplane must be a redis://, rediss:// or unix:// URL, got {backplane!r}")
        return RedisBackplane(backplane, prefix=prefix)
    for method in ("attach", "start", "close", "flush", "ready"):
        if not callable(getattr(backplane, method, None)):
            raise TypeError(f"backplane must be a URL or a backplane object, got {type(backplane).__name__}")
    return backplane
