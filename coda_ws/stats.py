"""ServerStats: the shape of :meth:`CodaWebSocketServer.get_stats`, and how it
is put together from the registry's, the bus's and the acceptor's counters."""

from collections.abc import Mapping
from typing import Any, TypedDict

from .bus import BusStats

__all__ = ["ServerStats", "server_stats"]


class _OptionalStats(TypedDict, total=False):
    """The keys of :class:`ServerStats` present only with a journal or a backplane
    (``NotRequired``, spelt as a base class: ``typing.NotRequired`` is Python 3.11+)."""

    journal: Mapping[str, Any]  # Journal.stats()
    backplane: Mapping[str, Any]  # the backplane's stats()


class ServerStats(_OptionalStats):
    """:meth:`CodaWebSocketServer.get_stats`: the original's counters plus
    drops, overflows, refusals and disconnects by reason
    (``docs/observability.md`` describes every key)."""

    total_connections: int
    current_connections: int
    events_sent: int
    errors: int
    replay_buffer_size: int
    running: bool
    sequence_number: int
    epoch: str
    events_emitted: int
    events_dropped: int
    overflows: int
    epoch_changes: int
    dispatch_errors: int
    history_events: int
    invalid_messages: int
    handler_errors: int
    rejected_handshakes: int
    rejected_requests: dict[str, int]  # "host" and "origin" -> requests refused before anything else
    rate_limited: int
    handshake_timeouts: int
    oversize_heads: int
    pending_overflows: int
    pending_handshakes: int
    disconnects: dict[str, int]  # reason -> count
    disconnect_codes: dict[str, int]  # close code as a string ("1006": no close frame) -> count
    resumes: dict[str, int]  # "recovered" or the reason it was not -> count
    unknown_types_refused: int  # events of unregistered types refused (backplane): holes no reader gets
    unknown_types_served: int  # events of unregistered types served as stored (journal history)


def server_stats(
    *,
    running: bool,
    sequence_number: int,
    epoch: str,
    clients: Mapping[str, Any],
    bus: BusStats,
    acceptor: Mapping[str, int],
    pending_handshakes: int,
    journal: Mapping[str, Any] | None = None,
    backplane: Mapping[str, Any] | None = None,
) -> ServerStats:
    """One :class:`ServerStats` from the registry's ``stats()`` (``clients``),
    the bus's ``stats()``, the acceptor's counters and, when configured, the journal's or backplane's stats."""
    stats = ServerStats(
        total_connections=clients["total_connections"],
        current_connections=clients["current_connections"],
        events_sent=clients["events_sent"],
        errors=clients["errors"],
        replay_buffer_size=bus["replay_buffer_size"],
        running=running,
        sequence_number=sequence_number,
        epoch=epoch,
        events_emitted=bus["events_emitted"],
        events_dropped=bus["events_conflated"],
        overflows=bus["overflows"],
        epoch_changes=bus["epoch_changes"],
        dispatch_errors=bus["dispatch_errors"],
        history_events=bus["history_events"],
        invalid_messages=clients["invalid_messages"],
        handler_errors=clients["handler_errors"],
        rejected_handshakes=clients["rejected_handshakes"],
        rejected_requests=clients["rejected_requests"],
        rate_limited=clients["rate_limited"],
        handshake_timeouts=acceptor["handshake_timeouts"],
        oversize_heads=acceptor["oversize_heads"],
        pending_overflows=acceptor["pending_overflows"],
        pending_handshakes=pending_handshakes,
        disconnects=clients["disconnects"],
        disconnect_codes=clients["disconnect_codes"],
        resumes=clients["resumes"],
        unknown_types_refused=bus["unknown_types_refused"],
        unknown_types_served=bus["unknown_types_served"],
    )
    if journal is not None:
        stats["journal"] = journal
    if backplane is not None:
        stats["backplane"] = backplane
    return stats
