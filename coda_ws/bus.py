"""The EventBus: one ordered stream of events, a shared log, and a cursor per reader.

Theory of operation
-------------------

``emit()`` runs in the caller's thread. It validates the fields, encodes them
to JSON (so an unencodable value raises there, and later changes to the
caller's objects cannot alter what is sent), then, under one short lock,
stamps the next ``seq`` and a timestamp and appends the work item to a queue.
It does no I/O and touches no reader, so its cost does not depend on how many
readers there are.

A high-priority event's :class:`~coda_ws.wire.EventDict` goes into the
replay buffer in that same lock, so ``replay_buffer`` holds it as soon as
``emit()`` returns. One dispatcher thread takes the queue in batches. For
each event it builds the wire JSON and the WebSocket frame once and appends an
:class:`~coda_ws.wire.Entry` to the history ring (``history_size`` entries,
indexed by ``seq``). Then it
notifies the readers: it wakes each one's thread or, when the reader gave a
``notify`` hook (the server does, see ``Connection.push``), calls it, so an
idle client's new frames are written at once without waking its thread.

The ring *is* the queue of every reader. A :class:`Subscription` is a cursor
(the last ``seq`` it has written) plus a filter. Its owner calls
:meth:`Subscription.read` to take the entries after the cursor that pass the
filter, and :meth:`Subscription.commit` once they are written. Resume from a
position is the same code path with the cursor starting further back.

Bounds and policies (principle 5):

* A reader may fall ``client_queue_size`` *lossless* events behind. Beyond
  that the dispatcher marks it ``overflowed`` (the server then closes it with
  4008 so it reconnects and resumes); lossless events are never dropped
  silently.
* Conflatable state (``system_metrics``, ``tts_progress``, ``stt_interim``)
  never overflows a reader: once a reader is more than
  :data:`CONFLATE_BACKLOG` events behind, an entry that a newer one of the
  same type and session supersedes is skipped and counted.
* Memory is bounded by the ring and the replay buffer, not by readers.

Locks, always taken in this order (a thread holding one never waits for one
listed before it):

1. ``EventBus._dispatch_lock``: one batch is taken and published at a time
   (the dispatcher, ``ingest()``, ``restore()``);
2. ``Subscription._lag_lock``: one reader's lag bookkeeping;
3. ``EventBus._lock``: the ring's head, the subscribers, the counters;
4. ``EventBus._emit_lock``: the seq counter, the queue and the replay buffer
   (``emit()`` takes only this one, briefly);
5. ``EventBus._dispatched``'s lock: waits for the head to move (taken alone).

No lock is held across a socket write, a reader's ``notify`` hook, a listener
or a log call, except ``_dispatch_lock``: the dispatcher holds it while it
publishes a chunk (its direct, non-blocking writes to readers that keep up,
the readers' hooks and the listeners run under it), so ``ingest()``,
``restore()`` and ``fence_at_head()`` wait for the chunk being published.

Persistence hooks: a journal restores the stream at start
(:meth:`EventBus.restore`, with the windows of positions a crash lost) and
sets a *fence* (:meth:`EventBus.set_fence`): the dispatcher publishes no seq
above the seqs the journal has durably reserved, so a crash can never make
the stream hand out a seq twice. Events above the fence stay queued, in
order, and the dispatcher tells the journal (``on_held``) so it reserves
more; in normal operation the fence is never reached.
"""

import collections
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, Protocol, TypeAlias, TypedDict, cast

from ._fastjson import encode_json
from .checks import integer, is_integer
from .deadline import Deadline
from .events import DEFAULT_MAX_EVENT_SIZE, BaseEvent, EventType, assemble_event, registered_event_types
from .filters import EventFilter, TypePatterns
from .histogram import EMIT_DURATION_BUCKETS, FixedHistogram
from .wire import (
    WIRE_HEAD,
    Entry,
    EventDict,
    Hole,
    StampedEvent,
    Unregistered,
    entry_from_wire,
    new_entry,
    prepare_event,
    wire_tail,
)

__all__ = [
    "CONFLATE_BACKLOG",
    "DEFAULT_CLIENT_QUEUE_SIZE",
    "STALE_EPOCH_CHANGED",
    "Archive",
    "BatchListener",
    "BusStats",
    "EventBus",
    "ResumeFrame",
    "ResumeResult",
    "Sequencer",
    "SharedChunk",
    "Subscription",
]

log = logging.getLogger("coda_ws.bus")

_now_ns = time.perf_counter_ns  # emit() timing: one global lookup on the hot path

#: emit() durations waiting before the dispatcher folds them into their
#: histogram (a scrape folds them itself, so none is ever missed): at steady
#: rates, one drain per event cost the dispatcher about 5 µs per event here.
_DRAIN_AT = 256

#: Upper bound of the entries published between two lag checks.
_MAX_CHUNK = 1024

#: A reader further behind than this many events gets conflatable state
#: conflated (latest wins); closer readers get every state update.
CONFLATE_BACKLOG = 64

#: ``Subscription.stale`` when the stream moved to a new epoch under the reader.
STALE_EPOCH_CHANGED = "epoch_changed"

#: ``client_queue_size`` when none is given: this, or ``history_size`` when smaller.
DEFAULT_CLIENT_QUEUE_SIZE = 1024


#: Seconds between two log messages about events of one unknown type.
_UNKNOWN_LOG_INTERVAL = 60.0


def _known_type(type_name: object) -> bool:
    return isinstance(type_name, str) and type_name in registered_event_types()


#: What a replay frame takes besides its events (with room for "omitted").
_REPLAY_FRAME_OVERHEAD = b'{"type":"replay","events":[],"omitted":18446744073709551615}'

#: A slot of the history ring: an event, a position no reader receives, or
#: (in slots not yet used) the empty placeholder.
_Slot: TypeAlias = "Entry | Hole | _Empty"
#: A queued emitted event: ``(seq, timestamp, cls, session_id, session_json,
#: body, record, target)`` (see :meth:`EventBus._make_entry`).
_Work: TypeAlias = tuple[int, float, type[BaseEvent], str | None, bytes, bytes, EventDict | None, str | None]
#: A dispatched position and its replay record (None unless high priority).
_Made: TypeAlias = tuple[Entry | Hole, EventDict | None]


class BatchListener(Protocol):
    """What :meth:`EventBus.add_listener` takes: a callable the dispatcher
    calls with each batch's entries (never holes), oldest first."""

    def __call__(self, entries: list[Entry], /) -> object: ...


class Sequencer(Protocol):
    """What :meth:`EventBus.set_sequencer` takes: stamps seqs for the bus (a
    backplane). ``publish`` must not block; the stamped events come back
    through :meth:`EventBus.ingest`."""

    def publish(
        self,
        timestamp: float,
        type_name: str,
        session_id: str | None,
        session_json: bytes,
        high_priority: bool,
        body: bytes,
        target: str | None,
    ) -> object: ...


class Archive(Protocol):
    """What :attr:`EventBus.archive` holds: events older than the ring (a
    journal, a backplane's stream), for :meth:`EventBus.stored_history`."""

    @property
    def covered_seq(self) -> int:
        """Every event up to this seq can be read."""

    def read(
        self, since: int, event_filter: EventFilter | None, limit: int | None, until: int | None
    ) -> list[Entry]:
        """Events with ``since < seq <= until``, oldest first, filtered, at most ``limit``."""


class BusStats(TypedDict):
    """:meth:`EventBus.stats`."""

    events_emitted: int
    events_dispatched: int
    dispatch_queue: int
    history_events: int
    replay_buffer_size: int
    subscribers: int
    overflows: int
    epoch_changes: int
    dispatch_errors: int
    events_conflated: int
    listener_errors: int
    fence: int | None
    held_by_fence: int
    unknown_types_refused: int
    unknown_types_served: int


#: :meth:`ResumeResult.frame_dict`: ``from``, ``to`` and ``count`` when
#: recovered; ``reason``, ``earliest`` and, for ``"lost"``, ``lost`` when not.
ResumeFrame = TypedDict(
    "ResumeFrame",
    {
        "type": str,
        "recovered": bool,
        "from": int | None,
        "to": int | None,
        "count": int,
        "reason": str | None,
        "earliest": int | None,
        "lost": list[int],
    },
    total=False,
)


def _replay_seq(event: object) -> int:
    """The seq of a replay buffer item (0 for dicts added by hand without one)."""
    seq = event.get("seq", 0) if isinstance(event, dict) else 0
    return seq if isinstance(seq, int) else 0


class ResumeResult:
    """The outcome of a resume request (docs/protocol.md section 4).

    ``recovered`` True: ``first``..``last`` are the positions replayed from
    history and ``count`` how many of them pass the reader's filter.
    ``recovered`` False: ``reason`` is ``"epoch_changed"``, ``"too_old"``,
    ``"unknown_position"`` or ``"lost"`` and ``earliest`` the oldest position
    still held; for ``"lost"``, ``lost`` is the ``(first, last)`` window of
    positions the stream lost (a crash, or a journal that could not write
    them) that the position falls in.
    """

    __slots__ = ("count", "earliest", "first", "last", "lost", "reason", "recovered")
    recovered: bool
    first: int | None
    last: int | None
    count: int
    reason: str | None
    earliest: int | None
    lost: tuple[int, int] | None

    def __init__(
        self,
        recovered: bool,
        first: int | None = None,
        last: int | None = None,
        count: int = 0,
        reason: str | None = None,
        earliest: int | None = None,
        lost: tuple[int, int] | None = None,
    ) -> None:
        self.recovered = recovered
        self.first, self.last, self.count = first, last, count
        self.reason, self.earliest, self.lost = reason, earliest, lost

    def frame_dict(self) -> ResumeFrame:
        """The ``resume`` control frame for this outcome."""
        if self.recovered:
            return {
                "type": "resume",
                "recovered": True,
                "from": self.first,
                "to": self.last,
                "count": self.count,
            }
        frame: ResumeFrame = {
            "type": "resume",
            "recovered": False,
            "reason": self.reason,
            "earliest": self.earliest,
        }
        if self.lost is not None:
            frame["lost"] = [self.lost[0], self.lost[1]]
        return frame


class _Doorbell:
    """Wakes the dispatcher: :meth:`ring` from any thread, :meth:`wait` in
    the one thread that owns it.

    A ``threading.Event`` runs a ``Condition`` in Python on every ``set()``
    while its thread waits (a waiter lock, a deque, ``notify_all``), and
    again in ``wait()`` and ``clear()``; at a steady rate that is paid once
    per event, in ``emit()`` and in the dispatcher. Here a ring is one
    C-level lock release, and only the first ring after a wait releases:
    the lock is held while nobody rang, ``ring()`` releases it, ``wait()``
    takes it back.

    No ring is lost: a ringer that sees :attr:`rung` set leaves the release
    to whoever set it, and the owner resets :attr:`rung` only after taking
    the lock and before it looks for work, so work queued before that ring
    is seen. Two ringers that both saw it unset both release; the second
    finds the lock free already (``RuntimeError``, ignored) or releases the
    owner's next wait early, which only costs an empty pass.
    """

    __slots__ = ("_lock", "rung")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: True from a ring until the owner's wait returns: later rings do nothing.
        self.rung = True  # a new bell starts rung: its owner's first wait returns at once

    def ring(self) -> None:
        """Wake the owner (thread-safe, never blocks)."""
        if not self.rung:
            self.rung = True
            try:
                self._lock.release()
            except RuntimeError:  # another ringer released it first
                pass

    def wait(self) -> None:
        """Block until a ring (the owner only)."""
        self._lock.acquire()
        self.rung = False


class SharedChunk:
    """The frames of one published chunk, joined once for every reader that
    is caught up and unfiltered.

    The dispatcher builds it (:meth:`of`) when a chunk can be taken whole by
    such a reader: at most :data:`CONFLATE_BACKLOG` entries (so a reader that
    was caught up conflates none of them) and no holes nor events for a
    single reader. A reader whose cursor is :attr:`after` and whose filter
    lets everything through would get exactly these frames from
    :meth:`Subscription.read`; it may send :attr:`data` (or
    :meth:`redacted_data`) as is and commit :attr:`last`. Immutable once
    built, except the redacted variant, built at most once on first use.

    Attributes:
        after: the position just before the chunk (a caught-up reader's cursor).
        last: the chunk's last seq (the position to commit).
        count: how many events it holds.
        data: their frames, joined.
    """

    __slots__ = ("_entries", "_redacted", "after", "count", "data", "last")
    after: int
    last: int
    count: int
    data: bytes
    _entries: list[Entry]
    _redacted: bytes | None

    @classmethod
    def of(cls, entries: "list[Entry | Hole]") -> "SharedChunk | None":
        """The shared chunk of ``entries`` (consecutive, oldest first), or
        None when a reader could not take them whole."""
        if len(entries) > CONFLATE_BACKLOG:
            return None
        for entry in entries:
            if entry.target is not None:  # a hole or an event for one reader
                return None
        chunk = cls()
        chunk._entries = known = cast("list[Entry]", entries)  # no holes: checked just above
        chunk._redacted = None
        chunk.after = known[0].seq - 1
        chunk.last = known[-1].seq
        chunk.count = len(known)
        chunk.data = known[0].frame if len(known) == 1 else b"".join([entry.frame for entry in known])
        return chunk

    def redacted_data(self) -> bytes:
        """:attr:`data` for readers without ``read:content`` (each entry's
        redacted frame, joined once; racing builders make identical bytes)."""
        data = self._redacted
        if data is None:
            data = b"".join([entry.redacted_frame() for entry in self._entries])
            self._redacted = data
        return data


class Subscription:
    """A reader's position in the stream and what it wants from it.

    Made by :meth:`EventBus.subscribe`. Exactly one thread (the reader's
    writer) may call :meth:`read` and :meth:`commit`; :meth:`set_filter`,
    :meth:`close` and the read-only attributes are safe from any thread.

    Attributes:
        id: the reader's id (``send_to_client`` events for it pass).
        start_seq: the last seq emitted when the subscription was made.
        epoch: the stream's epoch at that moment (the one ``start_seq`` and
            the cursor belong to; a restore may change the bus's later).
        replay: the replay buffer at that moment, filtered (dicts, oldest first).
        resume: a :class:`ResumeResult` when a resume was requested, else None.
        wake: a ``threading.Event`` set whenever there may be something to read.
        overflowed: None, or why the reader fell too far behind.
        conflated: how many entries were skipped because newer state superseded them.
        dropped: the same skips by ``(type, reason)``: reason ``"conflated"``
            (newer state of the same type and session was waiting) or
            ``"overwritten"`` (state that left the ring before this slow
            reader got to it; type ``"unknown"``). Written by the writer only.
        in_flight: entries returned by the last :meth:`read` and not yet
            committed (the batch its writer is writing).
    """

    def __init__(
        self,
        bus: "EventBus",
        reader_id: str,
        event_filter: EventFilter,
        cursor: int,
        wake: threading.Event,
        limit: int,
    ) -> None:
        self.id = reader_id
        self.wake = wake
        #: None, or a callable telling whether the reader's transport refuses
        #: data right now (the server sets it from the client's socket). With
        #: it, falling ``limit`` lossless events behind counts as too slow only
        #: while the client itself is not reading: a writer thread that merely
        #: was not scheduled during a burst is not the client's fault.
        self.blocked: Callable[[], bool] | None = None
        #: None, or a callable the dispatcher calls instead of ``wake.set()``
        #: after publishing: the server's ``Connection.push``, which writes the
        #: new entries from the dispatcher's thread when the reader's writer
        #: is idle (and wakes it otherwise). It must never block. It gets the
        #: chunk's :class:`SharedChunk`, or None when the chunk has none.
        self.notify: Callable[[SharedChunk | None], object] | None = None
        #: True while the filter lets every event through (no types, no
        #: session): such a reader can take a :class:`SharedChunk` whole.
        self.unfiltered = event_filter.types is None and event_filter.session_id is None
        self.overflowed: str | None = None
        #: With ``overflowed``: None when the reader fell behind, or
        #: :data:`STALE_EPOCH_CHANGED` when its positions belong to an epoch
        #: the stream left (a backplane whose Redis lost the stream).
        self.stale: str | None = None
        self.conflated = 0
        self.dropped: dict[tuple[str, str], int] = {}
        self.in_flight = 0
        self.delivered = 0
        self.resume: ResumeResult | None = None
        self.replay: list[dict[str, Any]] = []
        self.start_seq = cursor
        self.epoch = bus.epoch  # made under the bus lock: the epoch start_seq belongs to
        self._bus = bus
        self._filter = event_filter
        self._cursor = cursor  # last seq handed out and written; only the writer moves it
        self._limit = limit
        self._resume_to = cursor  # entries up to here are history: never conflated or counted as lag
        self._closed = False
        # Lag tracking, done by the dispatcher for readers more than `limit` behind:
        # seqs of pending lossless entries that pass the filter, and how far it scanned.
        self._lag_lock = threading.Lock()
        self._lossless: collections.deque[int] = collections.deque()
        self._scanned_to: int | None = None

    @property
    def filter(self) -> EventFilter:
        return self._filter

    @property
    def cursor(self) -> int:
        """The last seq written to this reader (or skipped by its filter)."""
        return self._cursor

    @property
    def lag(self) -> int:
        """How many events the stream head is ahead of the cursor."""
        return max(0, self._bus._head - self._cursor)

    @property
    def closed(self) -> bool:
        return self._closed

    def set_filter(self, event_filter: EventFilter) -> None:
        """Replace the filter; applies from the next :meth:`read` on."""
        with self._lag_lock:
            self._filter = event_filter
            self.unfiltered = event_filter.types is None and event_filter.session_id is None
            self._lossless.clear()
            self._scanned_to = None

    def read(self, max_bytes: int = 256 * 1024) -> tuple[list[Entry], int]:
        """Take the entries after the cursor that this reader should get.

        Returns ``(entries, position)``: pass ``position`` to :meth:`commit`
        once the entries are written. At most ``client_queue_size`` entries
        and about ``max_bytes`` of frames are returned at once. Returns no
        entries when the reader is closed or has overflowed.
        """
        bus = self._bus
        head = bus._head
        cursor = self._cursor
        if cursor >= head or self._closed or self.overflowed:
            return [], cursor
        # Holes and empty slots too, but their seq or target matches no reader: only entries reach `out`.
        ring: list[Entry] = bus._ring  # type: ignore[assignment]
        capacity = len(ring)
        seq = cursor + 1
        oldest = head - capacity + 1
        if seq < oldest:
            if not self._gap_was_state_only(seq, oldest):
                self._overflow("history overwritten before delivery")
                return [], cursor
            self.conflated += oldest - seq
            self._drop("unknown", "overwritten", oldest - seq)
            seq = oldest
        conflate = head - cursor > CONFLATE_BACKLOG
        latest = bus._latest_state
        match = self._filter.match
        my_id = self.id
        resume_to = self._resume_to
        out: list[Entry] = []
        size = 0
        limit = self._limit
        while seq <= head:
            entry = ring[seq % capacity]
            if entry.seq != seq:  # overwritten under our feet: we are a whole ring behind
                if not self._gap_was_state_only(seq, seq + 1):
                    self._overflow("history overwritten before delivery")
                    return [], cursor
                self.conflated += 1
                self._drop("unknown", "overwritten")
                seq += 1
                continue
            seq += 1
            if entry.target is not None and entry.target != my_id:
                continue
            if not match(entry.type, entry.session_id):
                continue
            key = entry.conflate_key
            if conflate and key is not None and entry.seq > resume_to and latest.get(key, 0) > entry.seq:
                self.conflated += 1
                self._drop(key[0], "conflated")
                continue
            out.append(entry)
            size += len(entry.frame)
            if size >= max_bytes or len(out) >= limit:
                break
        self.in_flight = len(out)
        return out, seq - 1

    def commit(self, position: int) -> None:
        """Record that everything up to ``position`` was written."""
        self.in_flight = 0
        if position > self._cursor:
            self._cursor = position

    def _drop(self, type_name: str, reason: str, count: int = 1) -> None:
        # Only the writer calls this; readers of `dropped` copy it (dict.copy is atomic).
        key = (type_name, reason)
        self.dropped[key] = self.dropped.get(key, 0) + count

    def close(self) -> None:
        """Stop following the stream (idempotent)."""
        if not self._closed:
            self._closed = True
            self._bus._unsubscribe(self)
            self.wake.set()

    # -- called by the dispatcher thread --------------------------------------

    def _check_lag(self, head: int) -> None:
        """Mark the reader overflowed when more than ``limit`` lossless events
        that it wants are waiting. Scans each entry at most once per episode
        of lag, and only for readers more than ``limit`` events behind."""
        cursor = self._cursor
        if head - cursor <= self._limit or self.overflowed:
            if self._scanned_to is not None:
                with self._lag_lock:
                    self._lossless.clear()
                    self._scanned_to = None
            return
        bus = self._bus
        ring = bus._ring
        capacity = len(ring)
        why: str | None = None
        with self._lag_lock:  # decide under the lock; _overflow (which logs and counts) runs after it
            start = max(cursor, self._resume_to) if self._scanned_to is None else self._scanned_to
            pending = self._lossless
            match = self._filter.match
            my_id = self.id
            for seq in range(start + 1, head + 1):
                entry = ring[seq % capacity]
                if entry.seq != seq:
                    why = "history overwritten before delivery"
                    break
                if (
                    entry.conflate_key is None
                    and (entry.target is None or entry.target == my_id)
                    and match(entry.type, entry.session_id)
                ):
                    pending.append(seq)
            else:
                self._scanned_to = max(start, head)
                cursor = self._cursor
                while pending and pending[0] <= cursor:
                    pending.popleft()
                blocked = self.blocked
                if len(pending) > self._limit and (blocked is None or blocked()):
                    why = f"more than {self._limit} lossless events waiting"
                elif pending and head - pending[0] >= capacity - bus._chunk:
                    # The next chunk would overwrite a lossless event this reader still needs.
                    why = "lossless events about to leave the history before delivery"
        if why is not None:
            self._overflow(why)

    def _gap_was_state_only(self, first: int, end: int) -> bool:
        """True when entries ``first``..``end-1`` (gone from the ring) were
        scanned while present and none of them was a lossless event for us."""
        with self._lag_lock:
            scanned = self._scanned_to
            if scanned is None or scanned < end - 1:
                return False
            start = max(self._cursor, self._resume_to) + 1
            if start > first:
                return False
            return not self._lossless or self._lossless[0] >= end

    def _overflow(self, why: str, stale: str | None = None) -> None:
        if self.overflowed is None:
            self.overflowed = why
            self.stale = stale
            self._bus._count("overflows" if stale is None else "epoch_changes")
            log.info("reader %s overflowed: %s", self.id, why)
        self.wake.set()


class EventBus:
    """A thread-safe, ordered stream of events with replay and resume.

    Usable on its own, without any server. All methods are thread-safe.

    Args:
        max_replay_events: size of the replay buffer (most recent
            high-priority events, sent to every new client).
        history_size: events kept for resume, in events (at least 1).
        client_queue_size: how many lossless events a reader may fall
            behind before it overflows (at most ``history_size``).
        epoch: the stream's epoch; a fresh random one by default.

    Raises:
        ValueError: a size is out of range.
    """

    def __init__(
        self,
        max_replay_events: int = 50,
        history_size: int = 10_000,
        client_queue_size: int | None = None,
        epoch: str | None = None,
        *,
        max_event_size: int | None = DEFAULT_MAX_EVENT_SIZE,
    ) -> None:
        # Long: one check per option, then the state every lock guards, each with the comment that
        # says which lock
        if client_queue_size is None and isinstance(history_size, int):
            client_queue_size = min(DEFAULT_CLIENT_QUEUE_SIZE, history_size)
        for name, value in (
            ("max_replay_events", max_replay_events),
            ("history_size", history_size),
            ("client_queue_size", client_queue_size),
        ):
            integer(name, value, 0 if name == "max_replay_events" else 1)
        if client_queue_size > history_size:
            raise ValueError(
                f"client_queue_size ({client_queue_size}) cannot exceed history_size ({history_size}):"
                " a reader's backlog lives in the history"
            )
        if epoch is not None and (not isinstance(epoch, str) or not epoch):
            raise ValueError(f"epoch must be a non-empty string, got {epoch!r}")
        integer("max_event_size", max_event_size, 1024, none_ok=True)
        self._max_replay_events = max_replay_events
        self.max_event_size = max_event_size
        self.history_size = history_size
        self.client_queue_size = client_queue_size
        self.epoch = epoch or uuid.uuid4().hex

        # _emit_lock guards _last_seq and the order of _queue: a seq and its
        # place in the queue are taken together, so queue order is seq order.
        self._emit_lock = threading.Lock()
        self._last_seq = 0
        self._queue: collections.deque[_Work] = collections.deque()
        # Wakes the dispatcher; one per dispatcher thread (see _start_dispatcher).
        self._bell = _Doorbell()

        # _lock guards the ring head, the replay buffer and the subscriber set,
        # so a new subscriber sees a head and a replay buffer that agree.
        self._lock = threading.Lock()
        self._ring: list[_Slot] = [_EMPTY] * history_size
        # Most entries published between two lag checks: small enough that a
        # check sees every entry before the ring overwrites it, and that a
        # reader is overflowed (and resumes) a chunk before it would lose a
        # lossless event; at most a quarter of the history.
        self._chunk = max(1, min(_MAX_CHUNK, (history_size - client_queue_size) // 2, history_size // 4))
        self._head = 0
        # The last seq whose batch went to the readers *and* the listeners:
        # what flush() waits for (the head moves before the listeners run).
        self._settled = 0
        self._replay: list[dict[str, Any]] = []
        self._subscribers: tuple[Subscription, ...] = ()
        self._latest_state: dict[tuple[str, str | None], int] = {}

        # _dispatch_lock makes "take a batch and publish it" atomic, so even
        # an old dispatcher finishing while a new one starts keeps seq order.
        self._dispatch_lock = threading.Lock()
        self._dispatched = threading.Condition(threading.Lock())
        # flush() calls waiting on _dispatched (changed under its lock): the
        # dispatcher notifies only when there are any.
        self._flush_waiters = 0
        self._state_lock = threading.Lock()  # guards _thread and _stop
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None
        self._listeners: list[BatchListener] = []
        self._counters: collections.Counter[str] = collections.Counter()
        # (type, "refused" or "served") -> (count since the last message, when logged)
        self._unknown_logged: dict[tuple[str, str], tuple[int, float | None]] = {}
        # (type, reason) -> count of closed readers; guarded by _lock
        self._drops_retired: dict[tuple[str, str], int] = {}
        #: Caller-side cost of emit()/send_to() in seconds (successful calls).
        #: emit() appends raw nanoseconds to its ``pending`` deque (no lock);
        #: the dispatcher folds them into the buckets after each batch.
        self.emit_durations = FixedHistogram(EMIT_DURATION_BUCKETS, scale=1e-9)
        self._emit_ns = self.emit_durations.pending

        # Persistence and scale-out hooks (see restore, set_sequencer, ingest,
        # stored_history). _floor is the oldest seq a restore left in the ring;
        # _compatible maps earlier epochs this stream continues to the last
        # seq they share with it; both change only under _lock.
        self._floor = 1
        self._compatible: dict[str, int] = {}
        self._sequencer: Sequencer | None = None
        # Windows of positions the stream lost, ((first, last), ...) in seq
        # order (see restore and add_lost); replaced, never mutated, under _lock.
        self._lost: tuple[tuple[int, int], ...] = ()
        # The fence (see set_fence): the dispatcher publishes no seq above it.
        # Plain attributes: set_fence assigns them, then wakes the dispatcher,
        # which reads them when it takes a batch (under _dispatch_lock).
        self._fence: int | None = None
        self._on_fence_held: Callable[[int], object] | None = None
        #: An object with ``read(since, event_filter, limit, until)`` and
        #: ``covered_seq`` holding events older than the ring (a journal or a
        #: backplane stream), or None; see :meth:`stored_history`.
        self.archive: Archive | None = None

    # -- producing ----------------------------------------------------------

    def emit(
        self,
        event_type: EventType | str,
        *,
        session_id: str | None = None,
        high_priority: bool | None = None,
        **fields: Any,
    ) -> BaseEvent:
        """Emit an event. Thread-safe; never blocks on I/O or on readers.

        Args:
            event_type: an ``EventType`` or its string value.
            session_id: the conversation session, or None for system-wide events.
            high_priority: keep in the replay buffer; None means the type's default.
            **fields: the type's fields.

        Returns:
            The event, with its ``seq`` and ``timestamp``. With an external
            sequencer (a backplane, see :meth:`set_sequencer`) its ``seq`` is
            0: the global seq is stamped by the sequencer and known only once
            the event comes back through the stream.

        Raises:
            InvalidEventError (a TypeError and a ValueError): unknown type, or a
                field missing, unknown, of the wrong kind, NaN/infinite, or not
                encodable. A failed emit consumes no seq.
        """
        return self._publish(event_type, session_id, high_priority, fields, None)

    def send_to(
        self, target: str, event_type: EventType | str, *, session_id: str | None = None, **fields: Any
    ) -> BaseEvent:
        """Emit an event for one reader only (``Subscription.id == target``).

        It takes a seq like any event, is never put in the replay buffer and
        is skipped by resume.
        """
        return self._publish(event_type, session_id, False, fields, target)

    def _publish(
        self,
        event_type: EventType | str,
        session_id: str | None,
        high_priority: bool | None,
        fields: dict[str, Any],
        target: str | None,
    ) -> BaseEvent:
        start = _now_ns()
        cls, values, body, session_id, session_json, high_priority = prepare_event(
            event_type, session_id, high_priority, fields, self.max_event_size
        )
        sequencer = self._sequencer
        if sequencer is not None:
            timestamp = time.time()
            sequencer.publish(timestamp, cls.type_name, session_id, session_json, high_priority, body, target)
            event = assemble_event(cls, 0, timestamp, session_id, values)
            self._emit_ns.append(_now_ns() - start)
            return event
        record: EventDict | None = None
        if high_priority and target is None:
            # The replay buffer holds it as soon as emit() returns (its wire
            # bytes follow from the dispatcher); seq and timestamp are set below.
            record = EventDict(
                version="1.0", seq=0, timestamp=0.0, type=cls.type_name, session_id=session_id, **values
            )
        with self._emit_lock:
            seq = self._last_seq + 1
            self._last_seq = seq
            timestamp = time.time()
            self._queue.append((seq, timestamp, cls, session_id, session_json, body, record, target))
            if record is not None:
                record["seq"] = seq
                record["timestamp"] = timestamp
                replay = self._replay
                replay.append(record)
                if len(replay) > self._max_replay_events:
                    del replay[0 : len(replay) - self._max_replay_events]
        if self._thread is None:
            self._start_dispatcher()
        bell = self._bell
        if not bell.rung:  # rung: the dispatcher has yet to wake, and drains our item after it does
            bell.ring()
        event = assemble_event(cls, seq, timestamp, session_id, values)
        self._emit_ns.append(_now_ns() - start)
        return event

    # -- reading ------------------------------------------------------------

    def subscribe(
        self,
        *,
        types: EventFilter | TypePatterns | None = None,
        session_id: str | None = None,
        since: int | None = None,
        epoch: str | None = None,
        reader_id: str | None = None,
        wake: threading.Event | None = None,
    ) -> Subscription:
        """Start following the stream.

        Everything emitted before this call is dispatched first, so
        ``start_seq`` and ``replay`` describe the stream up to the call and
        the subscription receives everything after it.

        Args:
            types: the event types or globs to follow (see :class:`EventFilter`;
                an ``EventFilter`` may be given here, and ``session_id`` is then ignored).
            session_id: only events of this session (and those of no session).
            since: resume after this position instead of starting at the head.
            epoch: the epoch ``since`` belongs to (None: this stream's).
            reader_id: the id ``send_to`` uses for this reader (default: random).
            wake: a ``threading.Event`` to set when there may be something to read.

        Returns:
            A :class:`Subscription`.
        """
        event_filter = types if isinstance(types, EventFilter) else EventFilter(types, session_id)
        integer("since", since, 0, none_ok=True)
        self.flush()
        wake = wake if wake is not None else threading.Event()
        with self._lock:
            head = self._head
            sub = Subscription(
                self, reader_id or uuid.uuid4().hex, event_filter, head, wake, self.client_queue_size
            )
            with self._emit_lock:  # emit() appends to the replay buffer under it
                replay = list(self._replay)
            # Events emitted since flush() are in the replay buffer already but
            # not in the history yet: the subscription gets them live, not twice.
            replay = [
                event for event in replay if _replay_seq(event) <= head and event_filter.match_dict(event)
            ]
            if since is not None:
                sub.resume = self._plan_resume(since, epoch, head, sub)
                if sub.resume.recovered:
                    sub._cursor = since
                    replay = []
            sub.replay = replay
            self._subscribers = self._subscribers + (sub,)
        return sub

    def _plan_resume(self, since: int, epoch: str | None, head: int, sub: Subscription) -> ResumeResult:
        oldest = self._oldest_locked(head)
        if epoch is not None and epoch != self.epoch:
            shared = self._compatible.get(epoch)  # an earlier epoch this stream continues (see restore)
            if shared is None or since > shared:
                return ResumeResult(False, reason="epoch_changed", earliest=oldest)
        if since > head:
            return ResumeResult(False, reason="unknown_position", earliest=oldest)
        window = self._lost_window_locked(since)
        if window is not None:
            return ResumeResult(False, reason="lost", earliest=oldest, lost=window)
        if since + 1 < oldest:
            return ResumeResult(False, reason="too_old", earliest=oldest)
        ring = self._ring
        capacity = len(ring)
        match = sub.filter.match
        count = 0
        for seq in range(since + 1, head + 1):
            entry = ring[seq % capacity]
            if entry.target is None and match(entry.type, entry.session_id):
                count += 1
        return ResumeResult(True, first=since + 1, last=head, count=count)

    def _oldest_locked(self, head: int) -> int:
        return max(self._floor, head - len(self._ring) + 1) if head else 1

    def _lost_window_locked(self, seq: int) -> tuple[int, int] | None:
        """The lost window holding position ``seq``, as ``(first, last)``, or None."""
        for first, last in self._lost:
            if first <= seq <= last:
                return first, last
        return None

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subscribers = tuple(s for s in self._subscribers if s is not sub)
            self._counters["conflated_retired"] += sub.conflated
            self._counters["delivered_retired"] += sub.delivered
            for key, count in sub.dropped.copy().items():
                self._drops_retired[key] = self._drops_retired.get(key, 0) + count

    def history(
        self, since: int = 0, event_filter: EventFilter | None = None, limit: int | None = None
    ) -> list[Entry]:
        """Entries with ``seq > since`` still held, oldest first, filtered
        (events sent to a single client excluded)."""
        with self._lock:
            head = self._head
            first = max(since + 1, self._oldest_locked(head))
        # Holes and empty slots too, but their target (a hole's) or seq (an
        # empty slot's) sends them to `continue`: only entries reach `out`.
        ring: list[Entry] = self._ring  # type: ignore[assignment]
        capacity = len(ring)
        out: list[Entry] = []
        for seq in range(first, head + 1):
            entry = ring[seq % capacity]
            if entry.seq != seq or entry.target is not None:
                continue
            if event_filter is None or event_filter.match(entry.type, entry.session_id):
                out.append(entry)
                if limit is not None and len(out) >= limit:
                    break
        return out

    # -- replay buffer --------------------------------------------------------

    @property
    def replay(self) -> list[dict[str, Any]]:
        """The replay buffer: a list of event dicts, oldest first.

        It is the live list (as in the original, code may append to it or
        replace it). A high-priority event is in it as soon as ``emit()``
        returns; it is trimmed to ``max_replay_events`` as events arrive.
        """
        return self._replay

    @replay.setter
    def replay(self, events: list[dict[str, Any]]) -> None:
        if not isinstance(events, list):
            raise TypeError(f"replay buffer must be a list of event dicts, got {type(events).__name__}")
        with self._lock, self._emit_lock:
            self._replay = events

    @property
    def max_replay_events(self) -> int:
        """How many high-priority events the replay buffer keeps (assignable;
        a smaller value trims the buffer at once)."""
        return self._max_replay_events

    @max_replay_events.setter
    def max_replay_events(self, value: int) -> None:
        integer("max_replay_events", value, 0)
        with self._lock, self._emit_lock:
            self._max_replay_events = value
            replay = self._replay
            if len(replay) > value:
                del replay[0 : len(replay) - value]

    @staticmethod
    def replay_frame_json(
        events: Iterable[Mapping[str, Any]], max_bytes: int | None = None
    ) -> tuple[bytes, int]:
        """The ``replay`` control frame for these event dicts, as UTF-8 JSON.

        Dicts emitted through the bus reuse their wire bytes; dicts added by
        hand are encoded here (one that cannot be encoded is skipped and logged).

        With ``max_bytes``, the newest events that fit in that many bytes are
        kept and the frame says how many older ones were left out
        (``"omitted": N``), so one frame never exceeds what clients accept.

        Returns:
            ``(json_bytes, included)``: the frame and how many events it holds.
        """
        parts: list[bytes] = []
        for event in events:
            wire = getattr(event, "wire", None)
            if wire is None:
                try:
                    wire = encode_json(event).encode("utf-8")
                except (TypeError, ValueError, RecursionError) as exc:
                    log.error("skipping a replay buffer item that is not JSON: %s", exc)
                    continue
            parts.append(wire)
        omitted = 0
        if max_bytes is not None:
            budget = max_bytes - len(_REPLAY_FRAME_OVERHEAD)
            kept = len(parts)
            while kept and budget >= len(parts[kept - 1]) + 1:
                budget -= len(parts[kept - 1]) + 1
                kept -= 1
            omitted = kept  # parts[:kept] did not fit: the oldest
            parts = parts[kept:]
        tail = b"]}" if not omitted else b'],"omitted":%d}' % omitted
        return b'{"type":"replay","events":[' + b",".join(parts) + tail, len(parts)

    # -- positions and state --------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The last seq stamped (0 before any event)."""
        return self._last_seq

    @property
    def head(self) -> int:
        """The last seq dispatched into the history."""
        return self._head

    @property
    def deliverable_seq(self) -> int:
        """The last seq stamped that the dispatcher may publish: ``last_seq``,
        or the journal's fence when it holds events back. What a reader that
        keeps up will have once the dispatcher has caught up."""
        fence = self._fence
        last = self._last_seq
        return last if fence is None else min(last, fence)

    @property
    def oldest_seq(self) -> int:
        """The oldest seq still held in the history (1 when empty)."""
        return self._oldest_locked(self._head)

    @property
    def running(self) -> bool:
        """True while the dispatcher thread runs."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def add_listener(self, callback: BatchListener) -> None:
        """Call ``callback(entries)`` from the dispatcher after each batch.

        For journals, backplanes and metrics. It must be quick and must not
        block; an exception is logged and does not stop dispatching.
        """
        self._listeners.append(callback)

    # -- persistence and scale-out (coda_ws.journal, coda_ws.backplane) -------

    def restore(
        self,
        epoch: str,
        last_seq: int,
        events: Iterable[StampedEvent] = (),
        replay: Iterable[bytes] | None = None,
        *,
        first_seq: int | None = None,
        compatible: Mapping[str, int] | None = None,
        lost: Iterable[tuple[int, int]] = (),
        unregistered: Unregistered = "refuse",
    ) -> None:
        """Replace the stream's state with one kept elsewhere (a journal, a backplane).

        A journal calls it once, before anything is emitted, so the stream
        continues: same epoch, the next event gets ``last_seq + 1``, and the
        history ring and replay buffer hold what they held. A backplane calls
        it whenever its node must (re)load the shared stream: at start, when
        the stream's epoch changed (Redis lost it) or when the node fell
        behind what the stream still holds. Every subscription made before
        the call is then marked overflowed (its positions belong to the
        stream as it was), so the server closes it with 4008 and the client
        resumes against the restored stream (``recovered: false`` with
        ``epoch_changed`` or ``too_old`` when it cannot continue).

        Thread-safe; serialized with the dispatcher and :meth:`ingest`.

        Args:
            epoch: the stream's epoch.
            last_seq: the stream's last seq (0 for an empty stream).
            events: :class:`StampedEvent` objects in increasing seq order, at
                most ``last_seq``; the newest ``history_size`` positions are
                held. Positions without an event (events sent to a single
                client, which a journal does not keep) are held as holes that
                no reader receives.
            replay: wire JSON (bytes) of the replay buffer's events, oldest
                first; None: the high-priority events among ``events``.
            first_seq: the oldest position ``events`` account for (default:
                the first event's seq); older positions count as no longer held.
            compatible: ``{epoch: seq}`` for earlier epochs this stream
                continues: a resume with such an epoch and a position up to
                that seq is honored (a journal written by an earlier version,
                after a crash: everything up to the last committed seq is
                unchanged).
            lost: ``(first, last)`` windows of positions the stream lost (a
                journal after a crash: the seqs reserved but not committed).
                A resume from a position inside one is answered
                ``recovered: false, reason: "lost"`` with the window; the
                positions themselves are holes no reader receives.
            unregistered: what becomes of an event whose type this process
                does not know: ``"refuse"`` (a hole, logged as an error and
                counted in ``stats()["unknown_types_refused"]``: a
                backplane, whose nodes must all know every type) or
                ``"generic"`` (served as stored, every field treated as
                content, counted in ``stats()["unknown_types_served"]``: a
                journal's own history).

        Raises:
            ValueError: a bad argument, or events out of order.
            RuntimeError: events were emitted on this bus with local seqs.
        """
        # Long: the docstring documents each restore case; the code checks every argument before it
        # changes anything, so a bad restore leaves the bus as it was
        if not isinstance(epoch, str) or not epoch:
            raise ValueError(f"epoch must be a non-empty string, got {epoch!r}")
        integer("last_seq", last_seq, 0)
        compatible = dict(compatible or {})
        lost = self._check_windows(lost, last_seq)
        capacity = len(self._ring)
        ring: list[_Slot] = [_EMPTY] * capacity
        latest: dict[tuple[str, str | None], int] = {}
        records: collections.deque[EventDict] = collections.deque(maxlen=self.max_replay_events)
        low = last_seq - capacity  # positions at or below it do not fit in the ring
        floor = first_seq
        previous = 0
        for event in events:
            seq = event.seq
            if not isinstance(seq, int) or seq <= previous or seq > last_seq:
                raise ValueError(
                    f"restored events need increasing seqs up to last_seq={last_seq}: {seq!r} after {previous}"
                )
            previous = seq
            if floor is None:
                floor = seq
            if seq <= low or seq < floor:
                if replay is None and event.high_priority and event.target is None:
                    old_record = entry_from_wire(event, unregistered)[1]
                    if old_record is not None:  # None for an unknown type (a hole): nothing to replay
                        records.append(old_record)
                continue
            entry, record = entry_from_wire(event, unregistered)
            self._note_unregistered(entry, unregistered)
            ring[seq % capacity] = entry
            if entry.conflate_key is not None:
                latest[entry.conflate_key] = seq
            if record is not None:
                records.append(record)
        floor = max(1, low + 1, last_seq + 1 if floor is None else floor)
        for seq in range(floor, last_seq + 1):
            if ring[seq % capacity].seq != seq:
                ring[seq % capacity] = Hole(seq)
        if replay is not None:
            records.clear()
            for payload in replay:
                payload = bytes(payload)
                record = EventDict(json.loads(payload))
                record.wire = payload
                if unregistered == "refuse" and not _known_type(record.get("type")):
                    continue  # its position in the ring is a refused hole, logged and counted above
                records.append(record)
        with self._dispatch_lock:
            with self._emit_lock:
                if self._sequencer is None and self._last_seq:
                    raise RuntimeError(
                        "restore() needs a bus on which nothing was emitted yet: attach the journal first"
                    )
                self._last_seq = last_seq
            with self._lock:
                epoch_changed = epoch != self.epoch
                self.epoch = epoch
                self._ring = ring
                self._head = self._settled = last_seq
                self._floor = floor
                self._latest_state = latest
                with self._emit_lock:
                    self._replay[:] = records  # in place: holders of server.replay_buffer see it
                self._compatible = compatible
                self._lost = lost
                subscribers = self._subscribers
        for sub in subscribers:
            if epoch_changed:
                sub._overflow("the stream's epoch changed", stale=STALE_EPOCH_CHANGED)
            else:
                sub._overflow("the stream was restored from its journal or backplane")
        self._wake_flushers()

    @staticmethod
    def _check_windows(
        windows: Iterable[tuple[int, int]] | None, last_seq: int
    ) -> tuple[tuple[int, int], ...]:
        out = []
        for window in windows or ():
            first, last = window
            if not (is_integer(first) and is_integer(last) and 1 <= first <= last <= last_seq):
                raise ValueError(
                    f"a lost window must be (first, last) with 1 <= first <= last <= {last_seq}, "
                    f"got {window!r}"
                )
            out.append((first, last))
        out.sort()
        return tuple(out)

    def add_lost(self, first: int, last: int) -> None:
        """Record that positions ``first``..``last`` (already dispatched) were
        lost: a resume from inside the window is answered ``recovered: false,
        reason: "lost"`` with it. For a journal that could not write events
        before they left the history. Thread-safe."""
        (window,) = self._check_windows([(first, last)], self._head)
        with self._lock:
            self._lost = tuple(sorted(self._lost + (window,)))

    def lost_windows(self, since: int = 0, until: int | None = None) -> list[tuple[int, int]]:
        """The lost windows (``(first, last)`` tuples, oldest first) that hold
        a position after ``since`` and, when given, at most ``until``."""
        windows = self._lost
        return [w for w in windows if w[1] > since and (until is None or w[0] <= until)]

    # -- the fence (a journal's seq reservation) --------------------------------

    def set_fence(self, seq: int | None, on_held: Callable[[int], object] | None = None) -> None:
        """Publish no event with a seq above ``seq`` (None: no fence).

        A journal sets it to the seqs it has durably reserved, so no seq can
        reach a reader that a crash could make the stream hand out again.
        Events above the fence stay queued, in order (``emit()`` still never
        blocks), until the fence moves; the dispatcher is woken at once when
        it does. ``on_held(seq)``, when given, is called from the dispatcher
        (it must not block) each time it leaves events above the fence, with
        the first seq it held back. Thread-safe.
        """
        integer("fence", seq, 0, none_ok=True)
        self._on_fence_held = on_held
        self._fence = seq
        self._bell.ring()  # the dispatcher re-reads the fence when it takes the next batch
        self._wake_flushers()  # flush() waits for what the fence lets through

    def fence_at_head(self) -> int:
        """Set the fence to the last seq dispatched, atomically with the
        dispatcher, and return it: nothing later is published until the fence
        moves. A journal closing cleanly calls it before it records that
        nothing after that seq was handed out."""
        with self._dispatch_lock:
            self._fence = head = self._head
        self._wake_flushers()
        return head

    @property
    def fence(self) -> int | None:
        """The seq no published event may exceed, or None (see :meth:`set_fence`)."""
        return self._fence

    def _take_unfenced_locked(self) -> Collection[_Work]:
        """The queued work items up to the fence, taken out of the queue (the
        caller holds ``_emit_lock``); the rest stays queued, in order."""
        queue = self._queue
        fence = self._fence
        if fence is None or queue[-1][0] <= fence:
            self._queue = collections.deque()
            return queue
        batch: list[_Work] = []
        while queue and queue[0][0] <= fence:
            batch.append(queue.popleft())
        return batch

    def _report_fence_held(self) -> None:
        """Tell the fence's owner that events wait above it (dispatcher thread)."""
        fence, on_held = self._fence, self._on_fence_held
        if fence is None or on_held is None or self._last_seq <= fence:
            return
        try:
            on_held(fence + 1)
        except Exception:
            self._count("listener_errors")
            log.exception("fence callback %r failed", on_held)

    def retained(self, first: int, last: int) -> tuple[list[Entry], int]:
        """The entries for positions ``first``..``last`` still in the history.

        Returns ``(entries, held_from)``: every position from ``held_from``
        to ``last`` was still held when read, and ``entries`` are those of
        them that readers receive (events sent to a single client and holes
        left out), oldest first; positions ``first``..``held_from - 1`` had
        already left the history. Lock-free (entries are immutable); for a
        journal writing what it could not queue.
        """
        ring = self._ring
        capacity = len(ring)
        last = min(last, self._head)
        out: list[Entry] = []
        seq = last
        # Newest first: the ring overwrites oldest first, so once one
        # position is gone, every older one is gone too.
        while seq >= first:
            entry = ring[seq % capacity]
            if entry.seq != seq:
                break
            if type(entry) is Entry and entry.target is None:
                out.append(entry)
            seq -= 1
        out.reverse()
        return out, seq + 1

    def set_sequencer(self, sequencer: Sequencer | None) -> None:
        """Let an external sequencer (a backplane) stamp seqs instead of this bus.

        ``emit()`` and ``send_to()`` still validate and encode in the caller,
        so a bad event raises at once, then call ``sequencer.publish(timestamp,
        type_name, session_id, high_priority, body, target)`` (``body``: the
        fields as UTF-8 JSON object bytes), which must not block, and return
        the event with ``seq`` 0. The sequencer gives the events back, stamped,
        through :meth:`ingest`. ``None`` turns local stamping back on.

        Raises:
            RuntimeError: events were already emitted with local seqs.
        """
        with self._emit_lock:
            if sequencer is not None and self._sequencer is None and self._last_seq:
                raise RuntimeError("set_sequencer() must come before the first emit()")
            self._sequencer = sequencer

    def ingest(self, events: Iterable[StampedEvent]) -> None:
        """Dispatch events stamped by the external sequencer.

        ``events`` are :class:`StampedEvent` objects; the first must follow
        the head and the rest must be consecutive. Frames are built here, in
        the caller's thread (a backplane's reader), then the batch goes to the
        ring, the replay buffer, the readers and the listeners exactly as
        emitted events do. Serialized with :meth:`restore`.

        Raises:
            ValueError: a seq does not follow (the caller should restore).
            RuntimeError: no sequencer is set (seqs would collide with local ones).
        """
        made = [entry_from_wire(event) for event in events]
        if not made:
            return
        for entry, _ in made:
            if type(entry) is Hole:
                self._note_unregistered(entry, "refuse")
        if self._sequencer is None:
            raise RuntimeError("ingest() needs an external sequencer (see set_sequencer)")
        with self._dispatch_lock:
            expected = self._head + 1
            for entry, _ in made:
                if entry.seq != expected:
                    raise ValueError(f"ingested seq {entry.seq} does not follow {expected - 1}")
                expected += 1
            with self._emit_lock:
                self._last_seq = max(self._last_seq, expected - 1)
            self._deliver(made, holes=any(type(entry) is Hole for entry, _ in made))
        self._wake_flushers()

    def stored_history(
        self, since: int = 0, event_filter: EventFilter | None = None, limit: int | None = None
    ) -> list[Entry]:
        """Like :meth:`history`, but reaching back into :attr:`archive` (a
        journal, a backplane's stream) for positions older than the ring.

        Entries with ``seq > since``, oldest first, filtered, at most
        ``limit``; events sent to a single client are excluded. Reading the
        archive is blocking I/O in the caller's thread (an HTTP handler's,
        never the dispatcher's). Without an archive, same as :meth:`history`.
        """
        archive = self.archive
        if archive is None or since + 1 >= self.oldest_seq:
            return self.history(since, event_filter, limit)
        covered = archive.covered_seq  # everything up to it is in the archive
        if covered <= since:
            return self.history(since, event_filter, limit)
        older = archive.read(since, event_filter, limit, until=covered)
        if limit is not None and len(older) >= limit:
            return older[:limit]
        return older + self.history(covered, event_filter, None if limit is None else limit - len(older))

    def stats(self) -> BusStats:
        """Counters: emitted, dispatched, overflows, conflated, queue, history, replay."""
        subs = self._subscribers
        counters = self._counters
        return {
            "events_emitted": self._last_seq,
            "events_dispatched": self._head,
            "dispatch_queue": len(self._queue),
            "history_events": min(self._head, len(self._ring)),
            "replay_buffer_size": len(self._replay),
            "subscribers": len(subs),
            "overflows": counters["overflows"],
            "epoch_changes": counters["epoch_changes"],
            "dispatch_errors": counters["dispatch_errors"],
            "events_conflated": counters["conflated_retired"] + sum(s.conflated for s in subs),
            "listener_errors": counters["listener_errors"],
            "fence": self._fence,
            "held_by_fence": self._held_by_fence(),
            "unknown_types_refused": counters["unknown_types_refused"],
            "unknown_types_served": counters["unknown_types_served"],
        }

    def _held_by_fence(self) -> int:
        fence = self._fence
        return 0 if fence is None else max(0, self._last_seq - max(fence, self._head))

    def drop_counts(self) -> dict[tuple[str, str], int]:
        """Entries skipped for readers, as ``{(type, reason): count}`` over
        every reader past and present (see :attr:`Subscription.dropped`).

        Thread-safe and cheap (no scan of the history): for ``/metrics``.
        Lossless events are never dropped; a reader too far behind is
        overflowed instead (counted in :meth:`stats` as ``overflows``).
        """
        with self._lock:
            totals = dict(self._drops_retired)
            subs = self._subscribers
        # A reader that retires from here on is read below, not from totals: no double count.
        for sub in subs:
            for key, count in sub.dropped.copy().items():
                totals[key] = totals.get(key, 0) + count
        return totals

    def _note_unregistered(self, entry: "Entry | Hole", unregistered: Unregistered) -> None:
        """Count (and log) an event of a type this process does not know."""
        if isinstance(entry, Hole):
            if entry.refused is None:
                return
            self._count("unknown_types_refused")
            name, action = entry.refused, "refused"
        elif entry.cls is None:
            self._count("unknown_types_served")
            name, action = entry.type, "served"
        else:
            return
        now = time.monotonic()
        with self._lock:
            if len(self._unknown_logged) > 256:  # bounded: names come from outside
                self._unknown_logged.clear()
            count, logged_at = self._unknown_logged.get((name, action), (0, None))
            count += 1
            due = logged_at is None or now - logged_at >= _UNKNOWN_LOG_INTERVAL
            self._unknown_logged[(name, action)] = (0 if due else count, now if due else logged_at)
        if not due:
            return
        if action == "refused":
            log.error(
                "refused event seq %d of type %r: this process does not know that type (%d refused since the "
                "last message), so no reader receives it; register it (coda_ws.register_event) in every "
                "process that emits, serves or reads this stream",
                entry.seq,
                name,
                count,
            )
        else:
            log.warning(
                "event seq %d has type %r, which this process has not registered: served as stored, every "
                "field treated as content (%d since the last message); register the type before attaching "
                "the journal to serve it as its class",
                entry.seq,
                name,
                count,
            )

    def _count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[name] += amount

    # -- dispatcher -----------------------------------------------------------

    def _start_dispatcher(self) -> None:
        with self._state_lock:
            if self._thread is not None:
                return
            self._stop = stop = threading.Event()
            # Its own bell, starting rung: a dispatcher still ending after a
            # close() that timed out can never take a ring meant for this one,
            # and this one first drains what was queued before it existed.
            self._bell = bell = _Doorbell()
            # daemon: a script that never calls close() can still exit; close(),
            # stop() and the journal's exit hook join it.
            self._thread = threading.Thread(
                target=self._run, args=(stop, bell), name="coda-ws-dispatcher", daemon=True
            )
            self._thread.start()

    def start(self) -> None:
        """Start the dispatcher thread (emit and subscribe also start it)."""
        self._start_dispatcher()

    def _run(self, stop: threading.Event, bell: _Doorbell) -> None:
        while True:
            bell.wait()
            try:
                self._dispatch_pending()
            except Exception:  # a bug here must not silently stop the stream
                log.exception("dispatcher failed on a batch")
            if stop.is_set():
                self._dispatch_pending()
                return

    def _dispatch_pending(self) -> None:
        with self._dispatch_lock:
            with self._emit_lock:
                if not self._queue:
                    return
                batch = self._take_unfenced_locked()
            if batch:
                made: list[_Made]
                try:
                    made, holes = [self._make_entry(*item) for item in batch], False
                except Exception:  # never expected (everything that can fail, failed in emit())
                    made, holes = self._make_entries_one_by_one(batch), True
                self._deliver(made, holes)
        if self._queue:
            self._report_fence_held()
        if not batch:
            return
        self._wake_flushers()

    def _deliver(self, made: list[_Made], holes: bool = False) -> None:
        """Publish ``(entry, record)`` pairs to the ring, the replay buffer,
        the readers and the listeners (which never see holes). The caller
        holds ``_dispatch_lock``."""
        entries = [entry for entry, _ in made]
        records = {entry.seq: record for entry, record in made if record is not None}
        # Publish in chunks small enough that lag checks see every entry
        # before the ring overwrites it (see Subscription._check_lag).
        chunk = self._chunk
        for start in range(0, len(entries), chunk):
            self._publish_chunk(entries[start : start + chunk], records)
        if holes:
            entries = [entry for entry in entries if type(entry) is Entry]
        delivered = cast("list[Entry]", entries)  # holes filtered out just above (or there were none)
        for listener in self._listeners if entries else ():
            try:
                listener(delivered)
            except Exception:
                self._count("listener_errors")
                log.exception("bus listener %r failed", listener)
        if len(self._emit_ns) >= _DRAIN_AT:
            self.emit_durations.drain()
        self._settled = self._head

    def _publish_chunk(self, entries: list[Entry | Hole], records: dict[int, EventDict]) -> None:
        ring = self._ring
        capacity = len(ring)
        latest = self._latest_state
        max_replay = self.max_replay_events
        with self._lock:
            for entry in entries:
                ring[entry.seq % capacity] = entry
                if entry.conflate_key is not None:
                    latest[entry.conflate_key] = entry.seq
            if records:  # events stamped elsewhere (emitted ones are in the replay buffer already)
                with self._emit_lock:
                    replay = self._replay
                    replay.extend(records[entry.seq] for entry in entries if entry.seq in records)
                    if len(replay) > max_replay:
                        del replay[: len(replay) - max_replay]
            self._head = head = entries[-1].seq
            subscribers = self._subscribers
        shared = SharedChunk.of(entries) if subscribers else None
        for sub in subscribers:
            if sub._scanned_to is not None or head - sub._cursor > sub._limit:
                sub._check_lag(head)
            notify = sub.notify
            if notify is None:
                sub.wake.set()
                continue
            try:
                notify(shared)
            except Exception:  # a bug in one reader's hook must not starve the others
                log.exception("notifying reader %s failed", sub.id)
                sub.wake.set()

    @staticmethod
    def _make_entry(
        seq: int,
        timestamp: float,
        cls: type[BaseEvent],
        session_id: str | None,
        session_json: bytes,
        body: bytes,
        record: EventDict | None,
        target: str | None,
    ) -> _Made:
        """The history entry of an emitted event. Its replay record, if any,
        is in the replay buffer already (emit() put it there): it only gets
        its wire bytes here."""
        payload = b"%s%d%s" % (WIRE_HEAD, seq, wire_tail(timestamp, cls.type_name, session_json, body))
        entry = new_entry(seq, timestamp, cls, session_id, record is not None, target, payload)
        if record is not None:
            record.wire = payload
        return entry, None

    def _make_entries_one_by_one(self, batch: Iterable[_Work]) -> list[_Made]:
        """The slow path of a batch in which building an entry failed: every
        other event is delivered, and the failed one becomes a hole (a
        position no reader receives), so the stream stays consecutive and no
        reader falls into a gap. Counted in ``stats()["dispatch_errors"]``."""
        made: list[_Made] = []
        for item in batch:
            try:
                made.append(self._make_entry(*item))
            except Exception:
                self._count("dispatch_errors")
                log.exception("event seq %d could not be framed; no reader will receive it", item[0])
                made.append((Hole(item[0]), None))
        return made

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event emitted before this call is dispatched (published
        to the readers, and its batch handed to the listeners).

        Returns True when it is, False when ``timeout`` seconds passed first.
        Events held above the fence (:meth:`set_fence`) are waited for only
        when a ``timeout`` is given (a journal moves its fence within
        milliseconds in normal operation, but not while its disk fails):
        without one, flush() returns False at once when they are all that
        is left, so a caller never hangs on a failing disk.
        """
        target = self._last_seq
        if self._settled >= target:
            return True
        if self._thread is None:
            self._start_dispatcher()
        self._bell.ring()
        deadline = Deadline(timeout)
        fenced = timeout is None
        with self._dispatched:
            self._flush_waiters += 1
            try:
                while self._settled < (self._dispatchable(target) if fenced else target):
                    remaining = deadline.remaining()
                    if deadline.expired:
                        return False
                    self._dispatched.wait(remaining)
            finally:
                self._flush_waiters -= 1
        return self._settled >= target

    def _wake_flushers(self) -> None:
        """Wake the flush() calls waiting for the head to move, if any.

        Called after the head moved. Reading the count without the lock is
        safe: a flush() that counts itself after this read checks the head
        after that, under the lock, and sees it moved."""
        if self._flush_waiters:
            with self._dispatched:
                self._dispatched.notify_all()

    def _dispatchable(self, target: int) -> int:
        fence = self._fence
        return target if fence is None else min(target, max(fence, self._settled))

    def close(self, timeout: float | None = 5.0) -> bool:
        """Dispatch everything emitted so far and stop the dispatcher thread.

        Idempotent. The bus stays usable: a later ``emit()`` starts a new
        dispatcher. Returns True when the thread ended within ``timeout``.
        """
        with self._state_lock:
            thread, stop, bell = self._thread, self._stop, self._bell
            self._thread = None
        if thread is None or stop is None:  # set together: both or neither
            return True
        stop.set()
        bell.ring()
        thread.join(timeout)
        self._dispatch_pending()  # anything that raced with the stop
        return not thread.is_alive()


class _Empty:
    """Placeholder in unused ring slots (seq 0 never matches a real position)."""

    seq: int = 0
    target: None = None
    conflate_key: None = None
    type: str = ""
    session_id: None = None


_EMPTY = _Empty()
