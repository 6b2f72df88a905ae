"""An embedded SQLite journal: the event stream survives a restart.

Theory of operation
-------------------

A :class:`Journal` hangs off an :class:`~coda_ws.bus.EventBus` as a listener.
The bus's dispatcher calls it after each batch with the batch's entries; the
listener only appends them to a bounded in-memory queue (no I/O, no waiting),
so ``emit()`` and the dispatcher never wait for the disk.

One writer thread, ``coda-ws-journal``, stores what is queued in one SQLite
transaction per batch (WAL mode): every event's wire JSON (the very bytes
clients receive) with its envelope columns for filtering, and the stream's
last seq. It commits when the oldest waiting event has waited
``flush_interval`` seconds, when ``max_batch`` events wait, or at once when
asked (:meth:`Journal.flush`, :meth:`Journal.close`): under load batches are
large, and in calm an event waits at most ``flush_interval`` for the disk
(delivery to clients never waits for it).

:meth:`Journal.attach` loads the stream back into the bus
(:meth:`EventBus.restore <coda_ws.bus.EventBus.restore>`): the epoch, the last
seq (the next event continues after it), the newest ``history_size`` events
for the history ring (so clients resume across a restart) and the newest
high-priority events for the replay buffer. :meth:`Journal.read` serves older
history (``GET /events``, ``coda-ws export``) straight from the file.

Retention: ``max_events`` keeps the events of the newest ``max_events``
positions; ``max_age`` drops events older than that many seconds (judged in
seq order: trimming stops at the first event young enough). Both apply after
each commit. Events sent to a single client (``send_to_client``) are never
journaled: their positions come back as holes that no reader receives.

What a crash can lose
---------------------

* A process crash (SIGKILL, a segfault, the OOM killer): the events not yet
  committed, that is at most the last batch, which spans at most
  ``flush_interval`` seconds (default 0.2 s) of events, plus events emitted
  but not yet dispatched (microseconds). Everything committed survives: the
  WAL is written before the commit returns. On the next start the stream
  continues after the last committed seq under a *new* epoch, because
  clients may have seen lost events under seqs that will now be reused; a
  client that resumes with the old epoch from a position the journal still
  holds (at most the last committed seq) recovers normally, and one that
  was further ahead gets ``recovered: false, reason: epoch_changed``.
* An operating-system crash or a power cut: with the default
  ``synchronous="NORMAL"`` also transactions committed since the last WAL
  checkpoint (SQLite syncs at checkpoints). ``synchronous="FULL"`` syncs
  every commit, at some cost per batch.
* A journal that cannot keep up (more than ``queue_size`` events waiting):
  the excess is dropped from the journal (never from the live stream),
  counted in :meth:`Journal.stats` and logged; positions up to the last
  dropped one are then no longer offered for resume from the journal.

After a clean :meth:`Journal.close` (``CodaWebSocketServer.stop()``), nothing
is lost and the epoch is kept.
"""

import atexit
import collections
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
import weakref

from .bus import StampedEvent, entry_from_wire
from .events import EventType
from .filters import EventFilter

__all__ = ["Journal", "JournalState", "read_journal", "DEFAULT_FLUSH_INTERVAL"]

log = logging.getLogger("coda_ws.journal")

#: Seconds an event may wait in memory before the writer commits it.
DEFAULT_FLUSH_INTERVAL = 0.2

#: Earlier epochs remembered as compatible (see EventBus.restore), newest kept.
_MAX_COMPATIBLE = 16

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    timestamp REAL NOT NULL,
    type TEXT NOT NULL,
    session_id TEXT,
    high_priority INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_replay ON events (seq) WHERE high_priority = 1;
"""

_COLUMNS = "seq, timestamp, type, session_id, high_priority, data"


JournalState = collections.namedtuple(
    "JournalState", "epoch last_seq first_seq events replay compatible clean"
)
JournalState.__doc__ = """What :meth:`Journal.load` found: the epoch, the last seq, the oldest
position held, the newest events (:class:`~coda_ws.bus.StampedEvent`), the
replay buffer's wire JSON, the compatible earlier epochs, and whether the
journal was closed cleanly."""


def _connect(path, readonly=False, synchronous="NORMAL"):
    if readonly:
        if not os.path.exists(path):
            raise FileNotFoundError(f"no journal at {path}")
        uri = "file:" + os.path.abspath(path).replace("?", "%3f").replace("#", "%23") + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=5.0, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, timeout=5.0, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def _filter_sql(event_filter):
    """A WHERE fragment and its parameters for ``event_filter`` (None: no condition).

    Type patterns become the list of known types they match, so the filter
    runs in SQLite; returns ``(None, None)`` when no known type matches."""
    clauses, params = [], []
    if event_filter is None:
        return "", params
    if event_filter.types is not None:
        names = [t.value for t in EventType if event_filter.match_type(t.value)]
        if not names:
            return None, None
        clauses.append(f"type IN ({','.join('?' * len(names))})")
        params.extend(names)
    if event_filter.session_id is not None:
        clauses.append("(session_id IS NULL OR session_id = ?)")
        params.append(event_filter.session_id)
    return "".join(" AND " + clause for clause in clauses), params


def _read_rows(conn, since, event_filter, limit, until, page=1000):
    """Rows with ``since < seq <= until`` passing the filter, oldest first, in pages."""
    where, params = _filter_sql(event_filter)
    if where is None:
        return
    floor = conn.execute("SELECT value FROM meta WHERE key = 'first_seq'").fetchone()
    cursor = max(since, int(floor[0]) - 1 if floor else 0)
    remaining = limit
    while remaining is None or remaining > 0:
        size = page if remaining is None else min(page, remaining)
        bound = "" if until is None else " AND seq <= ?"
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM events WHERE seq > ?{bound}{where} ORDER BY seq LIMIT ?",
            [cursor, *(() if until is None else (until,)), *params, size],
        ).fetchall()
        yield from rows
        if len(rows) < size:
            return
        cursor = rows[-1][0]
        if remaining is not None:
            remaining -= len(rows)


def _stamped(row):
    seq, timestamp, type_name, session_id, high_priority, data = row
    return StampedEvent(seq, timestamp, type_name, session_id, bool(high_priority), data)


def read_journal(path, since=0, event_filter=None, limit=None):
    """Yield the wire JSON (bytes) of the events journaled in ``path``.

    Opens the file read-only, so it is safe while a server writes it; events
    with ``seq > since`` passing ``event_filter``, oldest first, at most
    ``limit``. Used by ``coda-ws export``.

    Raises:
        FileNotFoundError: no journal at ``path``.
        sqlite3.DatabaseError: the file is not a journal.
    """
    conn = _connect(path, readonly=True)
    try:
        for row in _read_rows(conn, since, event_filter, limit, None):
            yield row[5]
    finally:
        conn.close()


class Journal:
    """A SQLite file that keeps the event stream across restarts.

    Args:
        path: the database file (created when missing; ``-wal`` and ``-shm``
            files live next to it while it is open).
        max_events: keep the events of the newest this many positions
            (None: no limit).
        max_age: drop events older than this many seconds (None: no limit).
        flush_interval: seconds an event may wait in memory before it is
            committed; bounds what a process crash can lose (module docs).
        max_batch: commit at once when this many events wait.
        queue_size: events that may wait for the writer; beyond, events are
            dropped from the journal (never from the live stream) and counted.
        synchronous: SQLite's ``synchronous`` setting, ``"NORMAL"`` (survives
            a process crash; an OS crash may lose the commits since the last
            checkpoint) or ``"FULL"`` (survives both; slower).

    Thread safety: every method may be called from any thread. The listener
    given to the bus only enqueues; all writing happens in the journal's
    writer thread, started by the first batch and joined by :meth:`close`
    (a later batch starts it again). Reads open their own read-only
    connections (WAL lets them run beside the writer).
    """

    def __init__(self, path, *, max_events=None, max_age=None, flush_interval=DEFAULT_FLUSH_INTERVAL,
                 max_batch=10_000, queue_size=50_000, synchronous="NORMAL"):
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise ValueError(f"journal path must be a file path, got {path!r}")
        if max_events is not None and (not isinstance(max_events, int) or isinstance(max_events, bool)
                                       or max_events < 1):
            raise ValueError(f"journal max_events must be a positive integer or None, got {max_events!r}")
        for name, value in (("max_age", max_age), ("flush_interval", flush_interval)):
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0):
                raise ValueError(f"journal {name} must be a positive number of seconds, got {value!r}")
        if flush_interval is None:
            raise ValueError("journal flush_interval must be a positive number of seconds, got None")
        for name, value in (("max_batch", max_batch), ("queue_size", queue_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"journal {name} must be a positive integer, got {value!r}")
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"journal synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
        self.path = os.fspath(path)
        self.max_events = max_events
        self.max_age = max_age
        self.flush_interval = float(flush_interval)
        self.max_batch = max_batch
        self.queue_size = queue_size
        self.synchronous = synchronous
        self.epoch = None
        self._bus = None

        # _cond's lock guards everything below: the queue handed from the
        # dispatcher to the writer, the positions, the counters and the
        # writer's lifecycle flags.
        self._cond = threading.Condition(threading.Lock())
        self._pending = []  # lists of entries, in dispatch order
        self._pending_count = 0
        self._first_at = None  # monotonic time the oldest pending event arrived
        self._queued_seq = 0  # last seq handed to the listener
        self._committed_seq = 0  # last seq committed (the journal's last_seq)
        self._lost_through = 0  # highest seq dropped from the journal
        self._flush_waiters = 0
        self._stopping = False
        self._thread = None
        self._error = None
        self._counters = collections.Counter()
        self._dropping = False  # in a drop episode (logged once per episode)
        self._exit_hook = None

    # -- start ------------------------------------------------------------------

    def load(self, history_size=10_000, max_replay=50):
        """Read the stream back: a :class:`JournalState`, or None for a new journal.

        Creates the file and its tables when missing. Does not change it.
        """
        conn = _connect(self.path, synchronous=self.synchronous)
        try:
            conn.executescript(_SCHEMA)
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if "epoch" not in meta:
                return None
            last_seq = int(meta["last_seq"])
            first_seq = int(meta.get("first_seq", "1"))
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM events WHERE seq > ? AND seq >= ? ORDER BY seq",
                (last_seq - history_size, first_seq),
            ).fetchall()
            replay = [data for (data,) in conn.execute(
                "SELECT data FROM events WHERE high_priority = 1 AND seq >= ? ORDER BY seq DESC LIMIT ?",
                (first_seq, max_replay),
            ).fetchall()]
            replay.reverse()
            return JournalState(
                epoch=meta["epoch"], last_seq=last_seq, first_seq=first_seq,
                events=[_stamped(row) for row in rows], replay=replay,
                compatible={k: int(v) for k, v in json.loads(meta.get("compatible", "{}")).items()},
                clean=meta.get("clean", "1") == "1",
            )
        finally:
            conn.close()

    def attach(self, bus):
        """Continue ``bus``'s stream from this journal and journal it from now on.

        A new journal takes the bus's epoch and starts after its last seq. An
        existing one restores the bus (:meth:`EventBus.restore`): after a
        clean close with the same epoch; after a crash with a new epoch that
        stays compatible, for resume, with the old one up to the last
        committed seq (see the module docs). Then the journal becomes the
        bus's listener and its :attr:`~coda_ws.bus.EventBus.archive`.

        Call it before anything is emitted on the bus. Not thread-safe with
        itself (call it once, at start).

        Raises:
            RuntimeError: already attached, or (existing journal) events were
                already emitted on the bus.
            sqlite3.Error: the file cannot be opened or is not a journal.
        """
        if self._bus is not None:
            raise RuntimeError("this journal is already attached to a bus")
        state = self.load(bus.history_size, bus.max_replay_events)
        if state is None:
            bus.flush()
            epoch, last_seq, compatible = bus.epoch, bus.head, {}
            self._write_meta({"epoch": epoch, "last_seq": last_seq, "first_seq": last_seq + 1,
                              "compatible": "{}", "clean": "1"})
        else:
            epoch, last_seq, compatible = state.epoch, state.last_seq, dict(state.compatible)
            if not state.clean:
                # Clients may have seen events we lost under seqs that will be
                # reused: a new epoch, compatible with the old one up to here.
                compatible[epoch] = last_seq
                compatible = dict(list(compatible.items())[-_MAX_COMPATIBLE:])
                epoch = uuid.uuid4().hex
                log.warning("journal %s was not closed cleanly: continuing after seq %d under a new epoch %s",
                            self.path, last_seq, epoch)
            bus.restore(epoch, last_seq, state.events, state.replay, first_seq=state.first_seq,
                        compatible=compatible)
            # Nothing is pending now: clean until the writer starts writing.
            self._write_meta({"epoch": epoch, "compatible": json.dumps(compatible), "clean": "1"})
        with self._cond:
            self._queued_seq = self._committed_seq = last_seq
        self.epoch = epoch
        self._bus = bus
        bus.add_listener(self._on_batch)
        bus.archive = self
        self._register_exit_hook()
        log.info("journal %s: epoch %s, continuing after seq %d", self.path, epoch, last_seq)

    def _write_meta(self, values):
        conn = _connect(self.path, synchronous=self.synchronous)
        try:
            with conn:
                conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                 [(k, str(v)) for k, v in values.items()])
        finally:
            conn.close()

    # -- the listener (dispatcher thread) -----------------------------------------

    def _on_batch(self, entries):
        """Queue a dispatched batch for the writer; O(1), never blocks on I/O."""
        last = entries[-1].seq
        report_drop = False
        with self._cond:
            self._queued_seq = last
            if self._pending_count + len(entries) > self.queue_size:
                # Over the bound: drop from the journal (never from the live
                # stream) and let the writer record the hole it leaves.
                self._lost_through = last
                self._counters["dropped"] += len(entries)
                report_drop, self._dropping = not self._dropping, True
            else:
                if not self._pending:
                    self._first_at = time.monotonic()
                self._pending.append(entries)
                self._pending_count += len(entries)
            # Wake the writer only when it has something new to decide.
            if len(self._pending) == 1 or self._pending_count >= self.max_batch or report_drop:
                self._cond.notify()
            if self._thread is None:
                self._start_writer_locked()
        if report_drop:
            log.error("journal %s cannot keep up: more than %d events waiting; dropping events from the "
                      "journal (the live stream is unaffected)", self.path, self.queue_size)

    # -- the writer thread --------------------------------------------------------

    def _start_writer_locked(self):
        # Writers never overlap: a new one starts only once the previous one
        # was joined (close() resets _thread), so clean-flag writes stay ordered.
        self._stopping = False
        self._thread = thread = threading.Thread(target=self._run, name="coda-ws-journal", daemon=True)
        thread.start()
        return thread

    def _run(self):
        try:
            conn = _connect(self.path, synchronous=self.synchronous)
        except sqlite3.Error as exc:
            log.exception("journal %s: cannot open for writing", self.path)
            with self._cond:
                self._error = f"cannot open {self.path}: {exc}"
                self._thread = None
                self._cond.notify_all()
            return
        try:
            self._set_clean(conn, False)
            while True:
                with self._cond:
                    batches, lost, stopping = self._take_batch()
                if batches or lost:
                    if not self._commit(conn, batches, lost) and stopping:
                        break
                elif stopping:
                    self._set_clean(conn, True)
                    break
        except sqlite3.Error:
            log.exception("journal %s: giving up writing", self.path)
        finally:
            conn.close()

    def _take_batch(self):
        """Wait (holding _cond) until a batch is due and take it.

        Returns ``(batches, lost, stopping)``: the entry lists to write, the
        last seq dropped since the last commit (0: none), and whether close()
        was asked for."""
        cond = self._cond
        while not self._pending and not self._stopping and self._lost_through <= self._committed_seq:
            cond.wait()
        if self._pending:
            deadline = self._first_at + self.flush_interval
            while not (self._stopping or self._flush_waiters or self._pending_count >= self.max_batch):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                cond.wait(remaining)
        batches, self._pending, self._pending_count = self._pending, [], 0
        lost = self._lost_through if self._lost_through > self._committed_seq else 0
        return batches, lost, self._stopping

    def _commit(self, conn, batches, lost):
        """Write one transaction; returns False when it failed three times
        (its events are then counted as dropped)."""
        rows = [
            (e.seq, e.timestamp, e.type, e.session_id, 1 if e.high_priority else 0, e.data)
            for entries in batches for e in entries if e.target is None
        ]
        last = max(batches[-1][-1].seq if batches else 0, lost)
        for attempt in range(1, 4):
            try:
                with conn:
                    conn.executemany(f"INSERT OR REPLACE INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", rows)
                    conn.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (str(last),))
                    if lost:
                        # A hole we cannot fill: stop offering what lies before it.
                        self._raise_floor(conn, lost + 1)
                    trimmed = self._trim(conn, last)
                break
            except sqlite3.Error as exc:
                log.error("journal %s: write failed (%s), attempt %d of 3", self.path, exc, attempt)
                with self._cond:
                    self._counters["write_errors"] += 1
                    self._error = f"journal write failed: {exc}"
                    if attempt == 3:
                        self._counters["dropped"] += len(rows)
                        self._lost_through = max(self._lost_through, last)
                        return False
                    self._cond.wait_for(lambda: self._stopping, timeout=0.5 * attempt)  # back off, stop-aware
        with self._cond:
            self._committed_seq = max(self._committed_seq, last)
            self._error = None
            self._counters["events_written"] += len(rows)
            self._counters["batches"] += 1
            self._counters["trimmed"] += trimmed
            if lost:
                self._dropping = False
            self._cond.notify_all()
        return True

    def _raise_floor(self, conn, first_seq):
        conn.execute("DELETE FROM events WHERE seq < ?", (first_seq,))
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('first_seq', "
                     "MAX(CAST(COALESCE((SELECT value FROM meta WHERE key = 'first_seq'), '1') AS INTEGER), ?))",
                     (first_seq,))

    def _trim(self, conn, last):
        """Retention, in the commit's transaction; returns how many events it deleted."""
        trimmed = 0
        if self.max_events is not None and last - self.max_events >= 1:
            deleted = conn.execute("DELETE FROM events WHERE seq <= ?", (last - self.max_events,)).rowcount
            if deleted:
                self._raise_floor(conn, last - self.max_events + 1)
                trimmed += deleted
        if self.max_age is not None:
            cutoff = time.time() - self.max_age
            row = conn.execute("SELECT seq FROM events WHERE timestamp >= ? ORDER BY seq LIMIT 1",
                               (cutoff,)).fetchone()
            keep_from = row[0] if row is not None else last + 1
            deleted = conn.execute("DELETE FROM events WHERE seq < ?", (keep_from,)).rowcount
            if deleted:
                self._raise_floor(conn, keep_from)
                trimmed += deleted
        return trimmed

    def _set_clean(self, conn, clean):
        with conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('clean', ?)", ("1" if clean else "0",))

    # -- control ------------------------------------------------------------------

    def flush(self, timeout=None):
        """Wait until every event handed to the journal so far is committed.

        Returns True when it is, False after ``timeout`` seconds (None: wait
        as long as it takes) or when the journal cannot write. Events the
        bus has not dispatched yet are not waited for (``bus.flush()`` first).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._queued_seq
            if self._committed_seq >= target:
                return True
            if self._thread is None:
                return False
            self._flush_waiters += 1
            self._cond.notify_all()
            try:
                while self._committed_seq < target and self._thread is not None:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                return self._committed_seq >= target
            finally:
                self._flush_waiters -= 1

    def close(self, timeout=5.0):
        """Commit everything queued, mark the file closed cleanly, join the writer.

        Idempotent; returns True when the writer ended within ``timeout``
        seconds. Call it after the bus's last dispatch (``CodaWebSocketServer
        .stop()`` does, after closing the bus). A later batch starts a new
        writer, so a server started again keeps journaling.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                thread = self._thread
                if thread is None:
                    if not self._pending and self._lost_through <= self._committed_seq:
                        return True
                    if time.monotonic() >= deadline:
                        return False
                    # Batches queued while the last writer was ending: commit them too.
                    thread = self._start_writer_locked()
                self._stopping = True
                self._cond.notify_all()
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("journal %s: writer still busy after %.1f s", self.path, timeout)
                return False
            with self._cond:
                if self._thread is thread:
                    self._thread = None
                    self._stopping = False

    def _register_exit_hook(self):
        # A script that never calls stop() still gets its last events
        # committed, and the epoch kept, when the interpreter exits normally.
        if self._exit_hook is None:
            self._exit_hook = _exit_hook(weakref.ref(self))
            atexit.register(self._exit_hook)

    # -- reading ------------------------------------------------------------------

    @property
    def covered_seq(self):
        """The last seq committed: every journaled event up to it can be read."""
        return self._committed_seq

    @property
    def last_seq(self):
        """The last seq handed to the journal (committed or waiting)."""
        return self._queued_seq

    def read(self, since=0, event_filter=None, limit=None, until=None):
        """Journaled events with ``since < seq <= until``, oldest first.

        Returns :class:`~coda_ws.bus.Entry` objects (like
        ``EventBus.history``), filtered by ``event_filter`` (an
        :class:`~coda_ws.filters.EventFilter` or None), at most ``limit``.
        Blocking file I/O in the caller's thread; safe beside the writer.
        """
        if event_filter is not None and not isinstance(event_filter, EventFilter):
            raise TypeError(f"event_filter must be an EventFilter or None, got {type(event_filter).__name__}")
        conn = _connect(self.path, readonly=True)
        try:
            return [entry_from_wire(_stamped(row))[0] for row in _read_rows(conn, since, event_filter, limit, until)]
        finally:
            conn.close()

    def count(self):
        """How many events the file holds (a query; for tests and tools)."""
        conn = _connect(self.path, readonly=True)
        try:
            return conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        finally:
            conn.close()

    # -- health -------------------------------------------------------------------

    def ready(self):
        """``(True, "ok")``, or ``(False, reason)`` while writes fail (for ``/readyz``)."""
        error = self._error
        if error is not None:
            return False, error
        return True, "ok"

    def stats(self):
        """Counters: events written, batches, dropped, write errors, trimmed,
        events waiting, and the committed and queued positions."""
        with self._cond:
            counters = self._counters
            return {
                "path": self.path,
                "events_written": counters["events_written"],
                "batches": counters["batches"],
                "dropped": counters["dropped"],
                "write_errors": counters["write_errors"],
                "trimmed": counters["trimmed"],
                "queued": self._pending_count,
                "committed_seq": self._committed_seq,
                "queued_seq": self._queued_seq,
            }

    def __repr__(self):
        return f"<Journal {self.path!r} epoch={self.epoch} committed={self._committed_seq}>"


def _exit_hook(ref):
    def close_at_exit():
        journal = ref()
        if journal is None or journal._bus is None:
            return
        journal._bus.flush(1.0)  # events emitted but not yet dispatched reach the journal
        journal.close(2.0)

    return close_at_exit
