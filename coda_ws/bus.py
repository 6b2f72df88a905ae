"""The EventBus: one ordered stream of events, a shared log, and a cursor per reader.

Theory of operation
-------------------

``emit()`` runs in the caller's thread. It validates the fields, encodes them
to JSON (so an unencodable value raises there, and later changes to the
caller's objects cannot alter what is sent), then, under one short lock,
stamps the next ``seq`` and a timestamp and appends the work item to a queue.
It does no I/O and touches no reader, so its cost does not depend on how many
readers there are.

One dispatcher thread takes the queue in batches. For each event it builds the
wire JSON and the WebSocket frame once, appends an :class:`Entry` to the
history ring (``history_size`` entries, indexed by ``seq``) and, for
high-priority events, an :class:`EventDict` to the replay buffer. Then it
wakes the readers.

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
"""

import collections
import json
import logging
import threading
import time
import uuid

from . import framing
from .errors import InvalidEventError
from .events import _check_session_id, build_fields, encode_fields, encode_json, event_class
from .filters import EventFilter

__all__ = ["EventBus", "Subscription", "Entry", "EventDict", "ResumeResult", "CONFLATE_BACKLOG", "redact_event"]

log = logging.getLogger("coda_ws.bus")

#: A reader further behind than this many events gets conflatable state
#: conflated (latest wins); closer readers get every state update.
CONFLATE_BACKLOG = 64


class EventDict(dict):
    """An event in dict form (the replay buffer holds these) that remembers its
    wire JSON, so replay frames reuse the bytes encoded at emit time."""

    __slots__ = ("wire",)


class Entry:
    """One event in the history ring. Immutable once published.

    Attributes:
        seq, timestamp, type, session_id: the envelope.
        frame: the event framed as a WebSocket text message (the bytes every
            writer sends); :attr:`data` is its JSON payload.
        high_priority: kept in the replay buffer.
        conflate_key: ``(type, session_id)`` for conflatable state, else None.
        target: a client id for ``send_to`` events (delivered to that client
            only, never replayed or resumed), else None.
    """

    __slots__ = (
        "seq", "timestamp", "type", "session_id", "high_priority", "conflate_key", "target",
        "frame", "offset", "cls", "_redacted",
    )

    def redacted_frame(self):
        """The frame for readers without ``read:content``: content fields set
        to null and ``"redacted": true``. Built once per event, on first use
        (two writers racing build identical bytes); events without content
        fields share their normal frame."""
        frame = self._redacted
        if frame is None:
            if self.cls.content_fields:
                frame = framing.text_frame(encode_json(redact_event(self.to_dict())))
            else:
                frame = self.frame
            self._redacted = frame
        return frame

    @property
    def data(self):
        """The event's wire JSON (UTF-8 bytes)."""
        return self.frame[self.offset :]

    def to_dict(self):
        """The event as a wire-ordered dict."""
        return json.loads(self.frame[self.offset :])

    def event(self):
        """The event as its dataclass."""
        fields = self.to_dict()
        for key in ("version", "type"):
            del fields[key]
        return self.cls(**fields)

    def __repr__(self):
        return f"<Entry seq={self.seq} type={self.type}>"


def redact_event(event):
    """A copy of an event dict with its content fields set to None and
    ``"redacted": True``; None for a dict whose type is unknown (its content
    cannot be told apart, so a read-only reader must not get it)."""
    type_name = event.get("type")
    try:
        content = event_class(type_name).content_fields
    except InvalidEventError:
        return None
    redacted = dict(event)
    for name in content:
        if name in redacted:
            redacted[name] = None
    redacted["redacted"] = True
    return redacted


class ResumeResult:
    """The outcome of a resume request (PROTOCOL.md section 4).

    ``recovered`` True: ``first``..``last`` are the positions replayed from
    history and ``count`` how many of them pass the reader's filter.
    ``recovered`` False: ``reason`` is ``"epoch_changed"``, ``"too_old"`` or
    ``"unknown_position"`` and ``earliest`` the oldest position still held.
    """

    __slots__ = ("recovered", "first", "last", "count", "reason", "earliest")

    def __init__(self, recovered, first=None, last=None, count=0, reason=None, earliest=None):
        self.recovered = recovered
        self.first, self.last, self.count = first, last, count
        self.reason, self.earliest = reason, earliest

    def frame_dict(self):
        """The ``resume`` control frame for this outcome."""
        if self.recovered:
            return {"type": "resume", "recovered": True, "from": self.first, "to": self.last, "count": self.count}
        return {"type": "resume", "recovered": False, "reason": self.reason, "earliest": self.earliest}


class Subscription:
    """A reader's position in the stream and what it wants from it.

    Made by :meth:`EventBus.subscribe`. Exactly one thread (the reader's
    writer) may call :meth:`read` and :meth:`commit`; :meth:`set_filter`,
    :meth:`close` and the read-only attributes are safe from any thread.

    Attributes:
        id: the reader's id (``send_to_client`` events for it pass).
        start_seq: the last seq emitted when the subscription was made.
        replay: the replay buffer at that moment, filtered (dicts, oldest first).
        resume: a :class:`ResumeResult` when a resume was requested, else None.
        wake: a ``threading.Event`` set whenever there may be something to read.
        overflowed: None, or why the reader fell too far behind.
        conflated: how many entries were skipped because newer state superseded them.
    """

    def __init__(self, bus, reader_id, event_filter, cursor, wake, limit):
        self.id = reader_id
        self.wake = wake
        self.overflowed = None
        self.conflated = 0
        self.delivered = 0
        self.resume = None
        self.replay = []
        self.start_seq = cursor
        self._bus = bus
        self._filter = event_filter
        self._cursor = cursor  # last seq handed out and written; only the writer moves it
        self._limit = limit
        self._resume_to = cursor  # entries up to here are history: never conflated or counted as lag
        self._closed = False
        # Lag tracking, done by the dispatcher for readers more than `limit` behind:
        # seqs of pending lossless entries that pass the filter, and how far it scanned.
        self._lag_lock = threading.Lock()
        self._lossless = collections.deque()
        self._scanned_to = None

    @property
    def filter(self):
        return self._filter

    @property
    def cursor(self):
        """The last seq written to this reader (or skipped by its filter)."""
        return self._cursor

    @property
    def lag(self):
        """How many events the stream head is ahead of the cursor."""
        return max(0, self._bus._head - self._cursor)

    @property
    def closed(self):
        return self._closed

    def set_filter(self, event_filter):
        """Replace the filter; applies from the next :meth:`read` on."""
        with self._lag_lock:
            self._filter = event_filter
            self._lossless.clear()
            self._scanned_to = None

    def read(self, max_bytes=256 * 1024):
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
        ring = bus._ring
        capacity = len(ring)
        seq = cursor + 1
        oldest = head - capacity + 1
        if seq < oldest:
            if not self._gap_was_state_only(seq, oldest):
                self._overflow("history overwritten before delivery")
                return [], cursor
            self.conflated += oldest - seq
            seq = oldest
        conflate = head - cursor > CONFLATE_BACKLOG
        latest = bus._latest_state
        match = self._filter.match
        my_id = self.id
        resume_to = self._resume_to
        out = []
        size = 0
        limit = self._limit
        while seq <= head:
            entry = ring[seq % capacity]
            if entry.seq != seq:  # overwritten under our feet: we are a whole ring behind
                if not self._gap_was_state_only(seq, seq + 1):
                    self._overflow("history overwritten before delivery")
                    return [], cursor
                self.conflated += 1
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
                continue
            out.append(entry)
            size += len(entry.frame)
            if size >= max_bytes or len(out) >= limit:
                break
        return out, seq - 1

    def commit(self, position):
        """Record that everything up to ``position`` was written."""
        if position > self._cursor:
            self._cursor = position

    def close(self):
        """Stop following the stream (idempotent)."""
        if not self._closed:
            self._closed = True
            self._bus._unsubscribe(self)
            self.wake.set()

    # -- called by the dispatcher thread --------------------------------------

    def _check_lag(self, head):
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
        with self._lag_lock:
            start = max(cursor, self._resume_to) if self._scanned_to is None else self._scanned_to
            pending = self._lossless
            match = self._filter.match
            my_id = self.id
            for seq in range(start + 1, head + 1):
                entry = ring[seq % capacity]
                if entry.seq != seq:
                    self._overflow("history overwritten before delivery")
                    return
                if (
                    entry.conflate_key is None
                    and (entry.target is None or entry.target == my_id)
                    and match(entry.type, entry.session_id)
                ):
                    pending.append(seq)
            self._scanned_to = max(start, head)
            cursor = self._cursor
            while pending and pending[0] <= cursor:
                pending.popleft()
            if len(pending) > self._limit:
                self._overflow(f"more than {self._limit} lossless events waiting")
            elif pending and pending[0] < head - capacity + 1:
                self._overflow("history overwritten before delivery")

    def _gap_was_state_only(self, first, end):
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

    def _overflow(self, why):
        if self.overflowed is None:
            self.overflowed = why
            self._bus._count("overflows")
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

    def __init__(self, max_replay_events=50, history_size=10_000, client_queue_size=1024, epoch=None):
        for name, value in (
            ("max_replay_events", max_replay_events),
            ("history_size", history_size),
            ("client_queue_size", client_queue_size),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "max_replay_events" else 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if client_queue_size > history_size:
            raise ValueError(
                f"client_queue_size ({client_queue_size}) cannot exceed history_size ({history_size}):"
                " a reader's backlog lives in the history"
            )
        if epoch is not None and (not isinstance(epoch, str) or not epoch):
            raise ValueError(f"epoch must be a non-empty string, got {epoch!r}")
        self.max_replay_events = max_replay_events
        self.history_size = history_size
        self.client_queue_size = client_queue_size
        self.epoch = epoch or uuid.uuid4().hex

        # _emit_lock guards _last_seq and the order of _queue: a seq and its
        # place in the queue are taken together, so queue order is seq order.
        self._emit_lock = threading.Lock()
        self._last_seq = 0
        self._queue = collections.deque()
        self._pending = threading.Event()

        # _lock guards the ring head, the replay buffer and the subscriber set,
        # so a new subscriber sees a head and a replay buffer that agree.
        self._lock = threading.Lock()
        self._ring = [_EMPTY] * history_size
        self._head = 0
        self._replay = []
        self._subscribers = ()
        self._latest_state = {}

        # _dispatch_lock makes "take a batch and publish it" atomic, so even
        # an old dispatcher finishing while a new one starts keeps seq order.
        self._dispatch_lock = threading.Lock()
        self._dispatched = threading.Condition(threading.Lock())
        self._state_lock = threading.Lock()  # guards _thread and _stop
        self._thread = None
        self._stop = None
        self._listeners = []
        self._counters = collections.Counter()

    # -- producing ----------------------------------------------------------

    def emit(self, event_type, *, session_id=None, high_priority=None, **fields):
        """Emit an event. Thread-safe; never blocks on I/O or on readers.

        Args:
            event_type: an ``EventType`` or its string value.
            session_id: the conversation session, or None for system-wide events.
            high_priority: keep in the replay buffer; None means the type's default.
            **fields: the type's fields.

        Returns:
            The event, with its ``seq`` and ``timestamp``.

        Raises:
            InvalidEventError (a TypeError and a ValueError): unknown type, or a
                field missing, unknown, of the wrong kind, NaN/infinite, or not
                encodable. A failed emit consumes no seq.
        """
        return self._publish(event_type, session_id, high_priority, fields, None)

    def send_to(self, target, event_type, *, session_id=None, **fields):
        """Emit an event for one reader only (``Subscription.id == target``).

        It takes a seq like any event, is never put in the replay buffer and
        is skipped by resume.
        """
        return self._publish(event_type, session_id, False, fields, target)

    def _publish(self, event_type, session_id, high_priority, fields, target):
        cls = event_class(event_type)
        values = build_fields(cls, fields)
        body = encode_fields(cls, values)
        session_id = _check_session_id(session_id, cls.event_type.value)
        if high_priority is None:
            high_priority = cls.high_priority
        elif high_priority is not True and high_priority is not False:
            raise InvalidEventError(f"high_priority must be True, False or None, got {high_priority!r}")
        with self._emit_lock:
            seq = self._last_seq + 1
            self._last_seq = seq
            timestamp = time.time()
            self._queue.append((seq, timestamp, cls, session_id, values, body, high_priority, target))
        if self._thread is None:
            self._start_dispatcher()
        self._pending.set()
        return cls(seq=seq, timestamp=timestamp, session_id=session_id, **values)

    # -- reading ------------------------------------------------------------

    def subscribe(self, *, types=None, session_id=None, since=None, epoch=None, reader_id=None, wake=None):
        """Start following the stream.

        Everything emitted before this call is dispatched first, so
        ``start_seq`` and ``replay`` describe the stream up to the call and
        the subscription receives everything after it.

        Args:
            types, session_id: the filter (see :class:`EventFilter`); an
                ``EventFilter`` may be given as ``types``.
            since: resume after this position instead of starting at the head.
            epoch: the epoch ``since`` belongs to (None: this stream's).
            reader_id: the id ``send_to`` uses for this reader (default: random).
            wake: a ``threading.Event`` to set when there may be something to read.

        Returns:
            A :class:`Subscription`.
        """
        event_filter = types if isinstance(types, EventFilter) else EventFilter(types, session_id)
        if since is not None and (not isinstance(since, int) or isinstance(since, bool) or since < 0):
            raise ValueError(f"since must be a non-negative integer, got {since!r}")
        self.flush()
        wake = wake if wake is not None else threading.Event()
        with self._lock:
            head = self._head
            sub = Subscription(self, reader_id or uuid.uuid4().hex, event_filter, head, wake, self.client_queue_size)
            replay = [event for event in self._replay if event_filter.match_dict(event)]
            if since is not None:
                sub.resume = self._plan_resume(since, epoch, head, sub)
                if sub.resume.recovered:
                    sub._cursor = since
                    replay = []
            sub.replay = replay
            self._subscribers = self._subscribers + (sub,)
        return sub

    def _plan_resume(self, since, epoch, head, sub):
        oldest = self._oldest_locked(head)
        if epoch is not None and epoch != self.epoch:
            return ResumeResult(False, reason="epoch_changed", earliest=oldest)
        if since > head:
            return ResumeResult(False, reason="unknown_position", earliest=oldest)
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

    def _oldest_locked(self, head):
        return max(1, head - len(self._ring) + 1) if head else 1

    def _unsubscribe(self, sub):
        with self._lock:
            self._subscribers = tuple(s for s in self._subscribers if s is not sub)
            self._counters["conflated_retired"] += sub.conflated
            self._counters["delivered_retired"] += sub.delivered

    def history(self, since=0, event_filter=None, limit=None):
        """Entries with ``seq > since`` still held, oldest first, filtered
        (events sent to a single client excluded)."""
        with self._lock:
            head = self._head
            first = max(since + 1, self._oldest_locked(head))
        ring = self._ring
        capacity = len(ring)
        out = []
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
    def replay(self):
        """The replay buffer: a list of event dicts, oldest first.

        It is the live list (as in the original, code may append to it or
        replace it); it is trimmed to ``max_replay_events`` as events arrive.
        """
        return self._replay

    @replay.setter
    def replay(self, events):
        if not isinstance(events, list):
            raise TypeError(f"replay buffer must be a list of event dicts, got {type(events).__name__}")
        with self._lock:
            self._replay = events

    def replay_snapshot(self, event_filter=None):
        """A copy of the replay buffer, filtered."""
        with self._lock:
            events = list(self._replay)
        if event_filter is None:
            return events
        return [event for event in events if event_filter.match_dict(event)]

    @staticmethod
    def replay_frame_json(events):
        """The ``replay`` control frame for these event dicts, as UTF-8 JSON.

        Dicts emitted through the bus reuse their wire bytes; dicts added by
        hand are encoded here (one that cannot be encoded is skipped and logged).
        """
        parts = []
        for event in events:
            wire = getattr(event, "wire", None)
            if wire is None:
                try:
                    wire = encode_json(event).encode("utf-8")
                except (TypeError, ValueError) as exc:
                    log.error("skipping a replay buffer item that is not JSON: %s", exc)
                    continue
            parts.append(wire)
        return b'{"type":"replay","events":[' + b",".join(parts) + b"]}"

    # -- positions and state --------------------------------------------------

    @property
    def last_seq(self):
        """The last seq stamped (0 before any event)."""
        return self._last_seq

    @property
    def head(self):
        """The last seq dispatched into the history."""
        return self._head

    @property
    def oldest_seq(self):
        """The oldest seq still held in the history (1 when empty)."""
        return self._oldest_locked(self._head)

    @property
    def running(self):
        """True while the dispatcher thread runs."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def add_listener(self, callback):
        """Call ``callback(entries)`` from the dispatcher after each batch.

        For journals, backplanes and metrics. It must be quick and must not
        block; an exception is logged and does not stop dispatching.
        """
        self._listeners.append(callback)

    def stats(self):
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
            "events_conflated": counters["conflated_retired"] + sum(s.conflated for s in subs),
            "listener_errors": counters["listener_errors"],
        }

    def _count(self, name, amount=1):
        with self._lock:
            self._counters[name] += amount

    # -- dispatcher -----------------------------------------------------------

    def _start_dispatcher(self):
        with self._state_lock:
            if self._thread is not None:
                return
            self._stop = stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(stop,), name="coda-ws-dispatcher", daemon=True
            )
            self._thread.start()

    def start(self):
        """Start the dispatcher thread (emit and subscribe also start it)."""
        self._start_dispatcher()

    def _run(self, stop):
        pending = self._pending
        while True:
            pending.wait()
            pending.clear()
            try:
                self._dispatch_pending()
            except Exception:  # a bug here must not silently stop the stream
                log.exception("dispatcher failed on a batch")
            if stop.is_set():
                self._dispatch_pending()
                return

    def _dispatch_pending(self):
        with self._dispatch_lock:
            with self._emit_lock:
                if not self._queue:
                    return
                batch, self._queue = self._queue, collections.deque()
            made = [self._make_entry(*item) for item in batch]
            entries = [entry for entry, _ in made]
            records = {entry.seq: record for entry, record in made if record is not None}
            # Publish in chunks small enough that lag checks see every entry
            # before the ring overwrites it (see Subscription._check_lag).
            chunk = max(1, len(self._ring) - self.client_queue_size)
            for start in range(0, len(entries), chunk):
                self._publish_chunk(entries[start : start + chunk], records)
            for listener in self._listeners:
                try:
                    listener(entries)
                except Exception:
                    self._count("listener_errors")
                    log.exception("bus listener %r failed", listener)
        with self._dispatched:
            self._dispatched.notify_all()

    def _publish_chunk(self, entries, records):
        ring = self._ring
        capacity = len(ring)
        latest = self._latest_state
        max_replay = self.max_replay_events
        with self._lock:
            replay = self._replay
            for entry in entries:
                ring[entry.seq % capacity] = entry
                if entry.conflate_key is not None:
                    latest[entry.conflate_key] = entry.seq
                if entry.high_priority:
                    replay.append(records[entry.seq])
            if len(replay) > max_replay:
                del replay[: len(replay) - max_replay]
            self._head = head = entries[-1].seq
            subscribers = self._subscribers
        for sub in subscribers:
            sub._check_lag(head)
            sub.wake.set()

    @staticmethod
    def _make_entry(seq, timestamp, cls, session_id, values, body, high_priority, target):
        entry = Entry()
        entry.seq = seq
        entry.timestamp = timestamp
        entry.type = type_name = cls.event_type.value
        entry.session_id = session_id
        entry.high_priority = high_priority and target is None
        entry.conflate_key = (type_name, session_id) if cls.conflatable and target is None else None
        entry.target = target
        entry.cls = cls
        entry._redacted = None
        payload = b'{"version":"1.0","seq":%d,"timestamp":%s,"type":"%s","session_id":%s%s' % (
            seq,
            repr(timestamp).encode(),
            type_name.encode(),
            b"null" if session_id is None else encode_json(session_id).encode("utf-8"),
            b"," + body[1:] if len(body) > 2 else b"}",
        )
        entry.frame = framing.text_frame(payload)
        entry.offset = len(entry.frame) - len(payload)
        if entry.high_priority:
            record = EventDict(
                version="1.0", seq=seq, timestamp=timestamp, type=type_name, session_id=session_id, **values
            )
            record.wire = payload
            return entry, record
        return entry, None

    def flush(self, timeout=None):
        """Wait until every event emitted before this call is dispatched.

        Returns True when it is, False when ``timeout`` seconds passed first.
        """
        target = self._last_seq
        if self._head >= target:
            return True
        if self._thread is None:
            self._start_dispatcher()
        self._pending.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._dispatched:
            while self._head < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._dispatched.wait(remaining)
        return True

    def close(self, timeout=5.0):
        """Dispatch everything emitted so far and stop the dispatcher thread.

        Idempotent. The bus stays usable: a later ``emit()`` starts a new
        dispatcher. Returns True when the thread ended within ``timeout``.
        """
        with self._state_lock:
            thread, stop = self._thread, self._stop
            self._thread = None
        if thread is None:
            return True
        stop.set()
        self._pending.set()
        thread.join(timeout)
        self._dispatch_pending()  # anything that raced with the stop
        return not thread.is_alive()


class _Empty:
    """Placeholder in unused ring slots (seq 0 never matches a real position)."""

    seq = 0
    target = None
    conflate_key = None
    type = ""
    session_id = None


_EMPTY = _Empty()
