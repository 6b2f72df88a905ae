"""Prometheus metrics of one :class:`~coda_ws.server.CodaWebSocketServer`.

Theory of operation
-------------------

Nothing here runs in ``emit()``. The metrics come from three places:

* **live state, read at scrape time**: clients, per-client queue depth and
  lag, history and replay sizes, and every counter the server and the bus
  already keep (``get_stats()``, ``EventBus.stats()``,
  ``EventBus.drop_counts()``). Gauges are never incremented or decremented,
  so they cannot drift however many clients come and go;
* **a bus listener** (:meth:`ServerMetrics._on_batch`), run by the dispatcher
  after each batch: events emitted per type, and the dispatch lag (from the
  event's timestamp to its fan-out to the readers);
* **the bus's own emit-duration histogram**
  (:attr:`EventBus.emit_durations`): ``emit()`` appends its duration in
  nanoseconds to a deque (no lock); the dispatcher and each scrape fold the
  samples into fixed buckets.

A scrape takes no lock that ``emit()`` takes: it copies small dicts and
walks the connected clients once, so its cost grows with the number of
clients (at most ``max_clients``), not with the number of events.

Each server has its own :class:`prometheus_client.CollectorRegistry` (never
the global one), so several servers in one process do not collide; it also
holds the process collectors (``process_*``, ``python_info``,
``python_gc_*``).
"""

from __future__ import annotations

import collections
import operator
import time
import weakref
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from . import acceptor
from ._version import __version__
from .histogram import DISPATCH_LAG_BUCKETS, FixedHistogram, HistogramSnapshot
from .wire import Entry

if TYPE_CHECKING:
    from .bus import BusStats, EventBus
    from .connection import Connection
    from .journal import Journal
    from .server import CodaWebSocketServer
    from .stats import ServerStats

__all__ = ["ABNORMAL_CLOSE", "CONTENT_TYPE", "ServerMetrics"]

#: The Content-Type of :meth:`ServerMetrics.exposition` (Prometheus text format).
CONTENT_TYPE = CONTENT_TYPE_LATEST

#: The ``code`` label of a disconnect without a close frame (RFC 6455's 1006:
#: never sent, it names an abnormal closure).
ABNORMAL_CLOSE = "1006"

_type_of = operator.attrgetter("type")


class ServerMetrics:
    """The metrics of one server, in a private registry.

    Made by the server itself (``server.metrics``); it registers a listener
    on the server's bus at once, so events emitted before the server object
    existed (on a ``bus=`` given to it) are not in the per-type counts.

    Thread-safety: :meth:`exposition` may be called from any number of
    threads at once; the listener runs in the bus dispatcher only.

    Attributes:
        registry: the ``CollectorRegistry`` holding coda_ws's metrics and the
            process collectors.
        dispatch_lag: a :class:`~coda_ws.histogram.FixedHistogram` of the
            seconds from ``emit()`` to fan-out.
    """

    def __init__(self, server: CodaWebSocketServer) -> None:
        # A weak reference: a bus shared with other servers keeps this
        # listener, but must not keep a stopped server alive.
        self._server = weakref.ref(server)
        # type -> events; written by the dispatcher only
        self._emitted: collections.Counter[str] = collections.Counter()
        self.dispatch_lag = FixedHistogram(DISPATCH_LAG_BUCKETS)
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        server.bus.add_listener(self._on_batch)

    def _on_batch(self, entries: list[Entry]) -> None:
        """Bus listener (dispatcher thread): per-type counts and dispatch lag."""
        now = time.time()
        if len(entries) == 1:
            # A batch of one, the usual case at steady rates: without
            # Counter.update's Python frame, the map and the list.
            entry = entries[0]
            self._emitted[entry.type] += 1
            self.dispatch_lag.observe(max(0.0, now - entry.timestamp))
            return
        self._emitted.update(map(_type_of, entries))  # counted in C
        self.dispatch_lag.observe_many([max(0.0, now - entry.timestamp) for entry in entries])

    def emitted_by_type(self) -> dict[str, int]:
        """``{type: events}`` dispatched since this object was made (a copy)."""
        return dict(self._emitted)  # dict(Counter) is one C call: atomic under the GIL

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format (bytes); see :data:`CONTENT_TYPE`."""
        return generate_latest(self.registry)


def _histogram(name: str, documentation: str, snapshot: HistogramSnapshot) -> HistogramMetricFamily:
    # prometheus_client leaves floatToGoString unannotated (it returns a str).
    buckets: list[tuple[str, float]] = [
        (floatToGoString(bound), count)  # type: ignore[no-untyped-call]
        for bound, count in zip(snapshot.bounds, snapshot.cumulative)
    ]
    buckets.append(("+Inf", snapshot.count))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=snapshot.sum)


class _Collector:
    """Builds coda_ws's metric families from the live state at each scrape."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        server = metrics._server()
        if server is None:
            return
        stats = server.get_stats()
        bus_stats = server.bus.stats()
        yield from _stream_metrics(metrics, server.bus, stats)
        yield from _client_metrics(server.clients, stats)
        yield from _state_metrics(stats, bus_stats)
        yield from _failure_metrics(stats, bus_stats)
        if server.journal is not None:
            yield from _journal_metrics(server.journal)


def _stream_metrics(metrics: ServerMetrics, bus: EventBus, stats: ServerStats) -> Iterator[Metric]:
    """The version and epoch, events emitted, delivered and dropped, and the
    emit and dispatch histograms."""
    info = InfoMetricFamily("coda_ws", "coda_ws version and the stream's epoch")
    info.add_metric([], {"version": __version__, "epoch": str(bus.epoch)})
    yield info

    emitted = CounterMetricFamily(
        "coda_ws_events_emitted", "Events dispatched into the stream, by type", labels=["type"]
    )
    for type_name, count in sorted(metrics.emitted_by_type().items()):
        emitted.add_metric([type_name], count)
    yield emitted

    yield CounterMetricFamily(
        "coda_ws_events_delivered",
        "Event frames written to WebSocket clients",
        value=stats["events_sent"],
    )

    dropped = CounterMetricFamily(
        "coda_ws_events_dropped",
        "Events skipped for a client that was behind: 'conflated' (newer state of the same type and "
        "session was waiting) or 'overwritten' (state that left the history first); lossless events are "
        'never dropped (see coda_ws_disconnects_total{code="4008"})',
        labels=["type", "reason"],
    )
    for (type_name, reason), count in sorted(bus.drop_counts().items()):
        dropped.add_metric([type_name, reason], count)
    yield dropped

    yield _histogram(
        "coda_ws_emit_duration_seconds",
        "Caller-side cost of emit(): validate, encode, stamp, enqueue",
        bus.emit_durations.snapshot(),
    )
    yield _histogram(
        "coda_ws_dispatch_lag_seconds",
        "Time from emit() to fan-out to the clients' cursors (dispatcher latency)",
        metrics.dispatch_lag.snapshot(),
    )


def _client_metrics(clients: Mapping[str, Connection], stats: ServerStats) -> Iterator[Metric]:
    """The connected clients (``clients``, a snapshot), each one's queue depth
    and lag, and disconnects and resumes by kind."""
    yield GaugeMetricFamily("coda_ws_clients", "WebSocket clients connected now", value=len(clients))
    depth = GaugeMetricFamily(
        "coda_ws_client_queue_depth",
        "Frames waiting in a client's writer: control frames queued plus the event batch being written "
        "and not yet accepted by its socket",
        labels=["client"],
    )
    lag = GaugeMetricFamily(
        "coda_ws_client_lag_events",
        "Stream head minus the last seq written to the client (events it is behind)",
        labels=["client"],
    )
    for client_id, conn in sorted(clients.items()):
        depth.add_metric([client_id], conn.queue_depth)
        lag.add_metric([client_id], conn.subscription.lag)
    yield depth
    yield lag

    disconnects = CounterMetricFamily(
        "coda_ws_disconnects",
        "Client disconnects by close code (1006: no close frame, the connection just ended)",
        labels=["code"],
    )
    for code, count in sorted(stats.get("disconnect_codes", {}).items()):
        disconnects.add_metric([code], count)
    yield disconnects

    resumes = CounterMetricFamily(
        "coda_ws_resumes",
        "Resume requests by result: recovered, epoch_changed, too_old, unknown_position, lost",
        labels=["result"],
    )
    for result, count in sorted(stats.get("resumes", {}).items()):
        resumes.add_metric([result], count)
    yield resumes


def _state_metrics(stats: ServerStats, bus_stats: BusStats) -> Iterator[Metric]:
    """What the stream holds now: the replay buffer, the history, the last seq,
    the dispatch queue, and the connections accepted."""
    yield GaugeMetricFamily(
        "coda_ws_replay_buffer_events", "Events in the replay buffer", value=stats["replay_buffer_size"]
    )
    yield GaugeMetricFamily(
        "coda_ws_history_events",
        "Events held in the history ring for resume",
        value=stats["history_events"],
    )
    yield GaugeMetricFamily("coda_ws_last_seq", "The last seq stamped", value=stats["sequence_number"])
    yield GaugeMetricFamily(
        "coda_ws_dispatch_queue_events",
        "Events emitted and not yet dispatched",
        value=bus_stats["dispatch_queue"],
    )
    yield CounterMetricFamily(
        "coda_ws_connections", "WebSocket clients accepted", value=stats["total_connections"]
    )


def _failure_metrics(stats: ServerStats, bus_stats: BusStats) -> Iterator[Metric]:
    """Everything refused, closed or failed, by counter."""
    # Long: a flat list of metric declarations, one per counter
    yield CounterMetricFamily(
        "coda_ws_overflows",
        "Clients that fell too far behind (closed with 4008)",
        value=stats["overflows"],
    )
    yield CounterMetricFamily(
        "coda_ws_rejected_handshakes",
        "WebSocket handshakes refused before the upgrade",
        value=stats["rejected_handshakes"],
    )
    refused = CounterMetricFamily(
        "coda_ws_rejected_requests",
        "HTTP requests and upgrades refused before anything else: 'host' (a Host "
        "header not allowed: DNS rebinding) or 'origin' (a browser page from an origin not allowed)",
        labels=["reason"],
    )
    for reason in ("host", "origin"):
        refused.add_metric([reason], stats["rejected_requests"][reason])
    yield refused
    yield CounterMetricFamily(
        "coda_ws_dispatch_errors",
        "Events that could not be framed by the dispatcher (each became a position no client receives)",
        value=bus_stats["dispatch_errors"],
    )
    yield CounterMetricFamily(
        "coda_ws_epoch_changes",
        "Clients closed (1012) because the stream moved to a "
        "new epoch under them (a backplane whose Redis lost the stream)",
        value=bus_stats["epoch_changes"],
    )
    yield CounterMetricFamily(
        "coda_ws_handshake_timeouts",
        "Connections closed because their request head and declared body had "
        "not arrived within handshake_timeout (a total deadline from accept)",
        value=stats["handshake_timeouts"],
    )
    yield CounterMetricFamily(
        "coda_ws_oversize_heads",
        f"Request heads over {acceptor.MAX_HEAD_SIZE} bytes, answered 431",
        value=stats["oversize_heads"],
    )
    yield CounterMetricFamily(
        "coda_ws_pending_overflows",
        "Connections waiting for their request closed to make room, the oldest "
        f"first (more than {acceptor.MAX_PENDING} waiting, or more than {acceptor.MAX_BUFFERED} bytes "
        "buffered for them)",
        value=stats["pending_overflows"],
    )
    yield GaugeMetricFamily(
        "coda_ws_pending_handshakes",
        "Connections whose request head (and declared body) has not arrived yet; they hold no thread",
        value=stats["pending_handshakes"],
    )
    yield CounterMetricFamily(
        "coda_ws_invalid_messages",
        "Client frames answered with an error frame",
        value=stats["invalid_messages"],
    )
    yield CounterMetricFamily(
        "coda_ws_rate_limited", "Client frames refused by the rate limit", value=stats["rate_limited"]
    )
    yield CounterMetricFamily(
        "coda_ws_handler_errors",
        "Exceptions raised by connect, disconnect and message handlers",
        value=stats["handler_errors"],
    )
    yield CounterMetricFamily(
        "coda_ws_listener_errors",
        "Exceptions raised by bus listeners",
        value=bus_stats["listener_errors"],
    )
    unknown = CounterMetricFamily(
        "coda_ws_unknown_type_events",
        "Events of a type this process has not registered, by action: 'refused' (from a backplane: "
        "a position no client receives) or 'served' (from a journal: sent as stored, every field "
        "treated as content)",
        labels=["action"],
    )
    unknown.add_metric(["refused"], bus_stats["unknown_types_refused"])
    unknown.add_metric(["served"], bus_stats["unknown_types_served"])
    yield unknown


def _journal_metrics(journal: Journal) -> Iterator[Metric]:
    """The journal's state and counters (see :meth:`coda_ws.journal.Journal.stats`)."""
    # Long: a flat list of metric declarations, one per journal counter
    stats = journal.stats()
    ok, _reason = journal.ready()
    yield GaugeMetricFamily(
        "coda_ws_journal_up",
        "1 when the journal is ready (writes succeed, delivery not "
        "paused, nothing waits too long), else 0; /readyz says why",
        value=1 if ok else 0,
    )
    yield GaugeMetricFamily(
        "coda_ws_journal_queued_events",
        "Events dispatched and not yet written to the journal",
        value=stats["queued"],
    )
    yield GaugeMetricFamily(
        "coda_ws_journal_oldest_unwritten_age_seconds",
        "Seconds the oldest event not yet written has waited (0 when none)",
        value=stats["oldest_unwritten_age"],
    )
    yield GaugeMetricFamily(
        "coda_ws_journal_committed_seq",
        "The last seq committed (or recorded as lost)",
        value=stats["committed_seq"],
    )
    yield GaugeMetricFamily(
        "coda_ws_journal_reserved_seq",
        "The durable seq reservation: no seq above it has reached a client",
        value=stats["reserved_seq"],
    )
    yield GaugeMetricFamily(
        "coda_ws_journal_failing_seconds",
        "Seconds writes have been failing (0 when they succeed)",
        value=stats["failing_for"],
    )
    yield GaugeMetricFamily(
        "coda_ws_journal_delivery_paused",
        "1 while delivery to clients waits for a seq reservation the journal cannot write",
        value=1 if stats["delivery_paused"] else 0,
    )
    yield GaugeMetricFamily(
        "coda_ws_journal_writer_running",
        "1 while the journal's writer thread runs",
        value=1 if stats["writer_running"] else 0,
    )
    yield CounterMetricFamily(
        "coda_ws_journal_events_written", "Events written to the journal", value=stats["events_written"]
    )
    yield CounterMetricFamily(
        "coda_ws_journal_write_errors",
        "Journal transactions that failed (each is retried)",
        value=stats["write_errors"],
    )
    yield CounterMetricFamily(
        "coda_ws_journal_lost_events",
        "Positions the journal could not write before they left the history ring (recorded as lost windows)",
        value=stats["lost_events"],
    )
    yield CounterMetricFamily(
        "coda_ws_journal_writer_restarts",
        "Journal writer threads restarted after one died",
        value=stats["writer_restarts"],
    )
    yield GaugeMetricFamily(
        "coda_ws_journal_bad_rows", "Unreadable journal rows skipped", value=stats["bad_rows"]
    )
