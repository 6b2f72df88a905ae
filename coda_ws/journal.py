"""An embedded SQLite journal: the event stream survives a restart and a crash.

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

Seqs are never reused within an epoch
-------------------------------------

Like a PostgreSQL sequence, the journal reserves seqs ahead in durable
blocks: the file's ``reserved_seq`` stays ``reserve_block`` seqs ahead of
the last event dispatched (each commit moves it; a burst that eats half a
block asks the writer for more at once), and the bus publishes no seq above
the durable reservation (:meth:`EventBus.set_fence
<coda_ws.bus.EventBus.set_fence>`). In normal operation the fence is never
reached; when the file cannot be written for longer than the reservation
lasts, delivery to clients pauses (events wait in memory, in order) rather
than hand out a seq a crash could reuse. A clean close records that nothing
after the last committed seq was handed out, and the next start continues
right after it. After a crash the next start keeps the epoch, continues
above the reservation, and records the positions between the last committed
seq and the reservation as a *lost window* (table ``lost``, kept until
retention passes it): a client whose position is inside it resumes with
``recovered: false, reason: "lost", "lost": [first, last]``; one at a
committed position resumes with ``recovered: true``.

Faults
------

``database is locked`` (another process holds a write lock) and ``database
or disk is full`` are transient: the writer keeps the failed batch and
retries with backoff (0.05 s doubling to 2 s) for as long as the fault
lasts, logging one error line when the episode starts and one warning with
counts when it ends. Events keep reaching clients up to the reservation, and
keep queueing for the journal up to ``queue_size``; beyond that only the
range of seqs is remembered, and when writes succeed again the writer takes
those events back from the bus's history ring. Positions that left the ring
first are recorded as a lost window (logged, counted, announced to resuming
clients and in ``GET /events``). Committed rows are only ever removed by
retention. A writer thread that dies of a bug is restarted by the next
batch. :meth:`Journal.ready`, :meth:`Journal.stats` and ``/metrics`` report
the state at every moment.

What a crash can lose
---------------------

* A process crash (SIGKILL, a segfault, the OOM killer): the events
  delivered to clients but not yet committed, that is at most the last
  batch, which spans at most ``flush_interval`` seconds of events (default
  0.2 s) plus the time of one commit, and events emitted but not yet
  dispatched (microseconds, never seen by any client).
  ``benchmarks/crash_loss.py`` measured, at 500 events/s, at most 99
  delivered events lost (spanning 0.196 s) with the default interval, 44
  (0.039 s) with 0.05 s and 369 (0.74 s) with 1 s. Their seqs
  are never handed out again: the stream continues above the reservation
  under the same epoch, and resuming clients are told exactly which window
  was lost. Everything committed survives: the WAL is written before the
  commit returns.
* An operating-system crash or a power cut: with the default
  ``synchronous="NORMAL"`` also transactions committed since the last WAL
  checkpoint (SQLite syncs at checkpoints), reservations included.
  ``synchronous="FULL"`` syncs every commit, at some cost per batch.
* A journal that cannot write for a long time: what it could not write
  before it left the history ring (``history_size`` events) is a recorded
  lost window; the live stream is unaffected until the reservation runs out.

After a clean :meth:`Journal.close` (``CodaWebSocketServer.stop()``), nothing
is lost and the stream continues right after its last seq.

Locks: ``_cond``'s lock guards the journal's queue, positions, counters and
the writer's lifecycle. The dispatcher holds the bus's dispatch lock while it
calls the listener, which takes ``_cond``; so the writer never calls into the
bus while holding ``_cond``.
"""

from __future__ import annotations

import atexit
import collections
import enum
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Literal,
    NamedTuple,
    TypedDict,
    TypeVar,
    cast,
)

from .checks import integer, number
from .deadline import Deadline
from .errors import JournalError
from .filters import EventFilter
from .wire import Entry, StampedEvent, entry_from_wire

if TYPE_CHECKING:
    from .bus import EventBus

__all__ = ["DEFAULT_FLUSH_INTERVAL", "Journal", "JournalState", "JournalStats", "read_journal"]

log = logging.getLogger("coda_ws.journal")

#: Seconds an event may wait in memory before the writer commits it.
DEFAULT_FLUSH_INTERVAL = 0.2

#: Earlier epochs remembered as compatible (journals of earlier versions), newest kept.
_MAX_COMPATIBLE = 16

#: The default reserve block is a quarter of the bus's history, at least this.
_MIN_RESERVE_BLOCK = 100

#: Seconds the writer's SQLite calls wait for another process's lock before
#: failing (then the writer backs off and retries): short, so close() can
#: keep its timeout while another process holds the file.
_WRITER_BUSY_TIMEOUT = 0.5

#: The writer's retry delays after a failed write: first, then doubling up to the cap.
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 2.0

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
CREATE TABLE IF NOT EXISTS lost (
    first INTEGER PRIMARY KEY,
    last INTEGER NOT NULL,
    cause TEXT NOT NULL,
    recorded_at REAL NOT NULL
);
"""

_COLUMNS = "seq, timestamp, type, session_id, high_priority, data"

#: A row of ``_COLUMNS`` as SQLite returns it: (seq, timestamp, type,
#: session_id, high_priority, data); a damaged file may hold any kind in any
#: column (see _row_problem).
_Row = tuple[Any, ...]

#: A path the journal accepts.
_Path = str | os.PathLike[str]

_T = TypeVar("_T")


class JournalState(NamedTuple):
    """What :meth:`Journal.load` found: the epoch, the last committed seq, the
    oldest position held, the newest events (:class:`~coda_ws.bus.StampedEvent`),
    the replay buffer's wire JSON, the compatible earlier epochs, whether the
    journal was closed cleanly, the durable seq reservation (None in files of
    earlier versions), the recorded lost windows (``(first, last)`` tuples) and
    how many unreadable rows were skipped."""

    epoch: str
    last_seq: int
    first_seq: int
    events: list[StampedEvent]
    replay: list[bytes]
    compatible: dict[str, int]
    clean: bool
    reserved_seq: int | None = None
    lost: Sequence[tuple[int, int]] = ()
    bad_rows: int = 0


class JournalStats(TypedDict):
    """:meth:`Journal.stats`."""

    path: str
    events_written: int
    batches: int
    write_errors: int
    trimmed: int
    queued: int
    committed_seq: int
    queued_seq: int
    reserved_seq: int
    last_error: str | None
    last_error_at: float | None
    failing_for: float
    oldest_unwritten_age: float
    writer_running: bool
    writer_restarts: int
    delivery_paused: bool
    fence_pauses: int
    recovered_from_history: int
    lost_events: int
    bad_rows: int
    lost_windows: list[list[int]]


#: What one transaction did: (events written, lost windows recorded, events
#: trimmed by retention, the seq it covers, events taken back from the history).
_Result = tuple[int, list[tuple[int, int]], int, int, int]


def _connect(
    path: _Path, readonly: bool = False, synchronous: str = "NORMAL", busy_timeout: float = 5.0
) -> sqlite3.Connection:
    if readonly:
        if not os.path.exists(path):
            raise FileNotFoundError(f"no journal at {path}")
        uri = "file:" + os.path.abspath(path).replace("?", "%3f").replace("#", "%23") + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, timeout=busy_timeout, check_same_thread=False)
    try:
        if not readonly:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
    except BaseException:
        conn.close()
        raise
    return conn


def _error_name(exc: BaseException) -> str:
    return getattr(exc, "sqlite_errorname", None) or type(exc).__name__


def _filter_sql(
    conn: sqlite3.Connection, event_filter: EventFilter | None
) -> tuple[str | None, list[Any] | None]:
    """A WHERE fragment and its parameters for ``event_filter`` (None: no condition).

    Type patterns are matched in SQLite by the filter itself (a function
    registered on ``conn``, one connection per read), so every stored type
    matches as it would live, registered in this process or not."""
    clauses: list[str] = []
    params: list[Any] = []
    if event_filter is None:
        return "", params
    if event_filter.types is not None:
        conn.create_function("coda_ws_type_matches", 1, event_filter.match_type, deterministic=True)
        clauses.append("coda_ws_type_matches(type)")
    if event_filter.session_id is not None:
        clauses.append("(session_id IS NULL OR session_id = ?)")
        params.append(event_filter.session_id)
    return "".join(" AND " + clause for clause in clauses), params


def _read_rows(
    conn: sqlite3.Connection,
    since: int,
    event_filter: EventFilter | None,
    limit: int | None,
    until: int | None,
    page: int = 1000,
) -> Iterator[_Row]:
    """Readable rows with ``since < seq <= until`` passing the filter, oldest
    first, in pages; unreadable rows are skipped and their seqs added to
    ``skipped`` (a list) when given."""
    where, params = _filter_sql(conn, event_filter)
    if where is None or params is None:  # both or neither: no known type matches
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


def _row_problem(row: _Row) -> str | None:
    """Why a stored row cannot be served (a sentence), or None when it can."""
    seq, timestamp, type_name, _session_id, _high_priority, data = row
    if not isinstance(type_name, str) or not type_name:
        return f"its type {type_name!r} is not a name"
    if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)):
        return f"timestamp {timestamp!r} is not a number"
    try:
        event = json.loads(data)
    except (TypeError, ValueError):  # UnicodeDecodeError is a ValueError
        return "its data is not valid JSON"
    if not isinstance(event, dict):
        return "its data is not a JSON object"
    if event.get("seq") != seq:
        return f"its data says seq {event.get('seq')!r}"
    if event.get("type") != type_name:
        return f"its data says type {event.get('type')!r}, its row {type_name!r}"
    return None


def _good_rows(rows: Iterable[_Row], bad: dict[int, str]) -> Iterator[_Row]:
    """The rows that can be served; ``bad`` (a dict) gets ``{seq: problem}`` for the others."""
    for row in rows:
        problem = _row_problem(row)
        if problem is None:
            yield row
        else:
            bad[row[0]] = problem


def _stamped(row: _Row) -> StampedEvent:
    seq, timestamp, type_name, session_id, high_priority, data = row
    if not isinstance(data, bytes):
        data = str(data).encode("utf-8")
    return StampedEvent(seq, float(timestamp), type_name, session_id, bool(high_priority), data)


def _describe_bad(bad: Mapping[int, str], limit: int = 5) -> str:
    items = sorted(bad.items())
    text = "; ".join(f"seq {seq}: {problem}" for seq, problem in items[:limit])
    return text + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def read_journal(
    path: _Path, since: int = 0, event_filter: EventFilter | None = None, limit: int | None = None
) -> Iterator[bytes]:
    """Yield the wire JSON (bytes) of the events journaled in ``path``.

    Opens the file read-only, so it is safe while a server writes it; events
    with ``seq > since`` passing ``event_filter``, oldest first, at most
    ``limit``. Unreadable rows are skipped (logged once per call). Used by
    ``coda-ws export``.

    Raises:
        FileNotFoundError: no journal at ``path``.
        sqlite3.DatabaseError: the file is not a journal.
    """
    conn = _connect(path, readonly=True)
    bad: dict[int, str] = {}
    try:
        for row in _good_rows(_read_rows(conn, since, event_filter, limit, None), bad):
            yield row[5] if isinstance(row[5], bytes) else str(row[5]).encode("utf-8")
    finally:
        conn.close()
        if bad:
            log.warning("journal %s: skipped %d unreadable rows (%s)", path, len(bad), _describe_bad(bad))


class _Job:
    """One transaction for the writer: what it writes and what it covers."""

    __slots__ = ("batches", "close", "last", "open_meta", "range_count", "ranges", "reserve_to", "window")

    def __init__(self) -> None:
        self.open_meta: dict[str, Any] | None = (
            None  # meta to write first (marks the file as running), or None
        )
        self.window: tuple[int, int] | None = None  # a lost window to record with it (after a crash), or None
        self.batches: list[list[Entry]] = []  # entry lists, in seq order
        # (first, last) seq ranges to take back from the bus's history, merged
        self.ranges: list[tuple[int, int]] = []
        self.range_count = 0  # how many entries of Journal._unqueued they are
        self.reserve_to: int | None = None  # a new durable seq reservation, or None
        self.close = False  # mark the file closed cleanly
        self.last = 0  # the last seq this transaction accounts for


class _Cue(enum.Enum):
    """A writer's instruction that is not a transaction (an enum: a typed sentinel)."""

    HOLD = "hold"


_HOLD: Final = _Cue.HOLD  # the writer's cue to fence the bus at its head before a clean close


class Journal:
    """A SQLite file that keeps the event stream across restarts and crashes.

    Args:
        path: the database file (created when missing; ``-wal`` and ``-shm``
            files live next to it while it is open).
        max_events: keep the events of the newest this many positions
            (None: no limit).
        max_age: drop events older than this many seconds (None: no limit).
        flush_interval: seconds an event may wait in memory before it is
            committed; bounds what a process crash can lose (module docs).
        max_batch: commit at once when this many events wait.
        queue_size: events that may wait in memory for the writer (while the
            disk is slow or failing); beyond, only their seq range is kept
            and the events are taken back from the bus's history ring once
            writes succeed (those that left it first become a lost window).
        synchronous: SQLite's ``synchronous`` setting, ``"NORMAL"`` (survives
            a process crash; an OS crash may lose the commits since the last
            checkpoint) or ``"FULL"`` (survives both; slower).
        reserve_block: seqs reserved ahead, durably, so a crash never makes
            the stream hand out a seq twice (module docs). None (default):
            a quarter of the bus's ``history_size``, at least 100. After a
            crash up to about this many positions form the lost window and
            take slots of the history ring; while the file cannot be written
            clients keep receiving events for half a block to a block, then
            delivery pauses until the fault clears.

    Thread safety: every method may be called from any thread. The listener
    given to the bus only enqueues; all writing happens in the journal's
    writer thread, started by the first batch and joined by :meth:`close`
    (a later batch starts it again). Reads open their own read-only
    connections (WAL lets them run beside the writer).
    """

    def __init__(
        self,
        path: _Path,
        *,
        max_events: int | None = None,
        max_age: float | None = None,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        max_batch: int = 10_000,
        queue_size: int = 50_000,
        synchronous: str = "NORMAL",
        reserve_block: int | None = None,
    ) -> None:
        # Long: one check per option, then the database opened; each check is a line or two
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise ValueError(f"journal path must be a file path, got {path!r}")
        integer("journal max_events", max_events, 1, none_ok=True)
        number("journal max_age", max_age, positive=True, none_ok=True, unit="seconds")
        number("journal flush_interval", flush_interval, positive=True, none_ok=True, unit="seconds")
        if flush_interval is None:
            raise ValueError("journal flush_interval must be a positive number of seconds, got None")
        integer("journal max_batch", max_batch, 1)
        integer("journal queue_size", queue_size, 1)
        integer("journal reserve_block", reserve_block, 1, none_ok=True)
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"journal synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
        self.path = os.fspath(path)
        self.max_events = max_events
        self.max_age = max_age
        self.flush_interval = float(flush_interval)
        self.max_batch = max_batch
        self.queue_size = queue_size
        self.synchronous = synchronous
        self.reserve_block = reserve_block
        self.epoch: str | None = None
        self._bus: EventBus | None = None
        self._block = reserve_block or _MIN_RESERVE_BLOCK  # set from the bus by attach()
        #: An unwritten event older than this many seconds makes ready() false.
        self.stale_after = max(5 * self.flush_interval, 2.0)

        # _cond's lock guards everything below.
        self._cond = threading.Condition(threading.Lock())
        # The queue, oldest first: entry lists taken by the writer and not yet
        # committed (_inflight), entry lists waiting (_pending), and seq ranges
        # that did not fit (_unqueued, [first, last] lists; the last one grows
        # while _overflowing). Each part has the monotonic time its oldest event arrived.
        self._inflight: list[list[Entry]]
        self._pending: list[list[Entry]]
        self._unqueued: list[list[int]]
        self._inflight_since: float | None
        self._pending_since: float | None
        self._unqueued_since: float | None
        self._inflight, self._inflight_count, self._inflight_since = [], 0, None
        self._pending, self._pending_count, self._pending_since = [], 0, None
        self._unqueued, self._unqueued_since, self._overflowing = [], None, False
        self._queued_seq = 0  # last seq handed to the listener
        self._committed_seq = 0  # last seq committed or recorded as lost (the file's last_seq)
        # The file's state: _file_open once it is marked running (clean=0)
        # with a durable reservation _reserved; _open_meta/_open_window is
        # what marking it running writes.
        self._file_open = False
        self._reserved = 0
        self._extend_at = 0  # a batch past this seq asks for a new reservation at once
        self._reserve_wanted = False
        self._open_meta: dict[str, Any] = {"clean": "0"}
        self._open_window: tuple[int, int] | None = None
        self._held_at: int | None = None  # the fence set by fence_at_head() for a clean close
        self._fence_blocked_since: float | None = (
            None  # monotonic time the dispatcher first waited at the fence
        )
        self._pause_logged = False
        # Writer lifecycle.
        self._flush_waiters = 0
        self._stopping = False
        self._abandon = False
        self._closing = False  # close() is running
        self._restart_after_exit = False  # work arrived while a writer close() gave up on was finishing
        self._thread: threading.Thread | None = None
        self._dead: str | None = None  # why the last writer died of a bug, until a new one starts
        # Fault episode: when writes started failing, attempts, last error.
        self._failing_since: float | None = None
        self._fail_attempts = 0
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._episode: collections.Counter[str] = collections.Counter()
        self._bad: dict[int, str] = {}  # seq -> why its row cannot be served
        self._counters: collections.Counter[str] = collections.Counter()
        self._dropping_logged = False
        self._exit_hook: Callable[[], None] | None = None

    # -- start ------------------------------------------------------------------

    def load(self, history_size: int = 10_000, max_replay: int = 50) -> JournalState | None:
        """Read the stream back: a :class:`JournalState`, or None for a new journal.

        Creates the file and its tables when missing; does not change an
        existing journal's data. Rows that cannot be served (not JSON, a seq
        or type that disagrees with the row) are skipped, counted and logged
        once. Events of a type this process has not registered are kept:
        the bus serves them as stored (``EventBus.restore(...,
        unregistered="generic")``), logged and counted there.

        Raises:
            JournalError: the file cannot be opened or is not a readable
                journal; the message says what to do.
        """
        try:
            conn = _connect(self.path, synchronous=self.synchronous)
        except sqlite3.Error as exc:
            raise self._load_error(exc) from exc
        try:
            return self._load(conn, history_size, max_replay)
        except sqlite3.Error as exc:
            raise self._load_error(exc) from exc
        finally:
            conn.close()

    def _load(self, conn: sqlite3.Connection, history_size: int, max_replay: int) -> JournalState | None:
        conn.executescript(_SCHEMA)
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if "epoch" not in meta:
            return None
        last_seq = self._meta_int(meta, "last_seq", 0)
        first_seq = self._meta_int(meta, "first_seq", 1)
        reserved = self._meta_int(meta, "reserved_seq", None)
        clean = meta.get("clean", "1") == "1"
        try:
            compatible = {str(k): int(v) for k, v in json.loads(meta.get("compatible", "{}")).items()}
        except (ValueError, TypeError, AttributeError):
            raise JournalError(
                self._unreadable_message("its meta value 'compatible' is not a JSON object of seqs"),
                self.path,
            ) from None
        lost = [(first, last) for first, last in conn.execute("SELECT first, last FROM lost ORDER BY first")]
        # After a crash the stream continues above the reservation: the ring
        # holds the newest history_size positions below that.
        head = reserved if not clean and reserved is not None and reserved > last_seq else last_seq
        bad: dict[int, str] = {}
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM events WHERE seq > ? AND seq >= ? AND seq <= ? ORDER BY seq",
            (head - history_size, first_seq, last_seq),
        ).fetchall()
        events = [_stamped(row) for row in _good_rows(rows, bad)]
        replay_rows = conn.execute(
            f"SELECT {_COLUMNS} FROM events WHERE high_priority = 1 AND seq >= ? AND seq <= ? "
            "ORDER BY seq DESC LIMIT ?",
            (first_seq, last_seq, max_replay + 16),
        ).fetchall()
        replay = [_stamped(row).payload for row in _good_rows(replay_rows, bad)][:max_replay]
        replay.reverse()
        if bad:
            log.warning(
                "journal %s: skipped %d unreadable rows; no reader receives them (%s)",
                self.path,
                len(bad),
                _describe_bad(bad),
            )
            with self._cond:
                self._bad.update(bad)
        return JournalState(
            epoch=meta["epoch"],
            last_seq=last_seq,
            first_seq=first_seq,
            events=events,
            replay=replay,
            compatible=compatible,
            clean=clean,
            reserved_seq=reserved,
            lost=lost,
            bad_rows=len(bad),
        )

    def _meta_int(self, meta: Mapping[str, str], key: str, default: _T) -> int | _T:
        value = meta.get(key)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            number = -1
        if number < 0:
            raise JournalError(
                self._unreadable_message(f"its meta value {key!r} is {value!r}, not a seq"), self.path
            )
        return number

    def _unreadable_message(self, what: str) -> str:
        path = self.path
        return (
            f"journal {path} cannot be used: {what}. To start a new stream, move the file aside "
            f"(for example `mv {path} {path}.broken`, with its -wal and -shm files if present); to keep "
            f"the history, restore the file from a backup (`sqlite3 {path} .recover` may salvage rows)."
        )

    def _load_error(self, exc: sqlite3.Error) -> JournalError:
        name = _error_name(exc)
        if name in ("SQLITE_BUSY", "SQLITE_LOCKED"):
            return JournalError(
                f"journal {self.path} is locked by another process ({exc}): stop the other process that uses "
                "this file, or give this server its own journal file.",
                self.path,
            )
        if name in ("SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_READONLY", "SQLITE_FULL", "SQLITE_IOERR"):
            return JournalError(
                f"journal {self.path} cannot be opened for writing ({exc}): check that its directory exists, "
                "that this user may write there, and that the disk has space.",
                self.path,
            )
        return JournalError(
            self._unreadable_message(f"it is not a readable coda_ws journal ({exc})"), self.path
        )

    def attach(self, bus: EventBus) -> None:
        """Continue ``bus``'s stream from this journal and journal it from now on.

        A new journal takes the bus's epoch and starts after its last seq. An
        existing one restores the bus (:meth:`EventBus.restore`) with its
        epoch: after a clean close the stream continues right after the last
        seq; after a crash it continues above the seq reservation, and the
        positions between the last committed seq and the reservation are
        recorded as a lost window (see the module docs). Then the journal
        marks the file as running, reserves seqs ahead, fences the bus at
        the reservation, and becomes the bus's listener and its
        :attr:`~coda_ws.bus.EventBus.archive`. When the file cannot be
        written right now (locked, disk full), the stream starts anyway with
        delivery fenced at the last seq until the writer succeeds.

        Call it before anything is emitted on the bus. Not thread-safe with
        itself (call it once, at start).

        Raises:
            RuntimeError: already attached, or (existing journal) events were
                already emitted on the bus.
            JournalError: the file cannot be opened or is not a journal.
        """
        # Long: a new and an existing journal, restore and seq reservation, in the one order they
        # must happen; split up, half-built state would pass between helpers
        if self._bus is not None:
            raise RuntimeError("this journal is already attached to a bus")
        self._block = self.reserve_block or max(_MIN_RESERVE_BLOCK, bus.history_size // 4)
        state = self.load(bus.history_size, bus.max_replay_events)
        window: tuple[int, int] | None = None
        open_meta: dict[str, Any]
        if state is None:
            bus.flush()
            epoch, head = bus.epoch, bus.head
            open_meta = {"epoch": epoch, "first_seq": head + 1, "compatible": "{}", "last_seq": head}
            reserved = head
        else:
            epoch, head, compatible = state.epoch, state.last_seq, dict(state.compatible)
            windows = list(state.lost)
            reserved = state.reserved_seq if state.reserved_seq is not None else head
            if not state.clean and state.reserved_seq is None:
                # A journal of an earlier version, without a reservation: clients
                # may have seen lost events under seqs that would be reused, so
                # a new epoch, compatible with the old one up to here.
                compatible[epoch] = head
                compatible = dict(list(compatible.items())[-_MAX_COMPATIBLE:])
                epoch = uuid.uuid4().hex
                log.warning(
                    "journal %s was not closed cleanly: continuing after seq %d under a new epoch %s",
                    self.path,
                    head,
                    epoch,
                )
            elif not state.clean and reserved > head:
                window = (head + 1, reserved)
                windows.append(window)
                log.warning(
                    "journal %s was not closed cleanly (the process crashed or was killed): keeping epoch %s; "
                    "seqs %d-%d were reserved but not committed and are recorded as lost (clients resuming "
                    "inside them are told so); continuing after seq %d",
                    self.path,
                    epoch,
                    head + 1,
                    reserved,
                    reserved,
                )
                head = reserved
            windows = [
                (first, min(last, head)) for first, last in windows if first <= head
            ]  # a damaged table
            bus.restore(
                epoch,
                head,
                state.events,
                state.replay,
                first_seq=state.first_seq,
                compatible=compatible,
                lost=windows,
                unregistered="generic",
            )
            open_meta = {"epoch": epoch, "compatible": json.dumps(compatible), "last_seq": head}
        with self._cond:
            self._queued_seq = self._committed_seq = head
            self._reserved = max(reserved, head)
            self._open_meta = {**open_meta, "clean": "0"}
            self._open_window = window
        self.epoch = epoch
        self._bus = bus
        # Until the file is marked running with a reservation, nothing after
        # the head may reach a reader.
        bus.set_fence(head, self._on_fence_held)
        bus.add_listener(self._on_batch)
        bus.archive = self
        self._register_exit_hook()
        if self._open_now():
            bus.set_fence(self._reserved, self._on_fence_held)
        else:
            with self._cond:
                self._reserve_wanted = True
                self._ensure_writer_locked()  # it retries until the file can be written
        log.info(
            "journal %s: epoch %s, continuing after seq %d (seqs reserved through %d)",
            self.path,
            epoch,
            head,
            self._reserved,
        )

    def _open_now(self) -> bool:
        """Mark the file running and reserve seqs, in the caller's thread
        (attach); False when the file cannot be written right now."""
        with self._cond:
            job = self._take_job_locked()
        try:
            conn = _connect(self.path, synchronous=self.synchronous, busy_timeout=_WRITER_BUSY_TIMEOUT)
            try:
                result = self._execute(conn, job)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            self._write_failed(exc, 0.0)
            return False
        self._write_succeeded(job, result, set_fence=False)
        return True

    # -- the listener and the fence hook (dispatcher thread) -------------------------

    def _on_batch(self, entries: list[Entry]) -> None:
        """Queue a dispatched batch for the writer; O(1), never blocks on I/O."""
        last = entries[-1].seq
        report = False
        with self._cond:
            first = self._queued_seq + 1
            self._queued_seq = last
            if self._overflowing or (
                self._inflight_count + self._pending_count + len(entries) > self.queue_size
            ):
                # Over the bound: remember the range only; the writer takes the
                # events back from the bus's history once it can write.
                if self._overflowing:
                    self._unqueued[-1][1] = last
                else:
                    self._unqueued.append([first, last])
                    self._overflowing = True
                    if self._unqueued_since is None:
                        self._unqueued_since = time.monotonic()
                    report = not self._dropping_logged and self._failing_since is None
                    self._dropping_logged = True
            else:
                if not self._pending:
                    self._pending_since = time.monotonic()
                self._pending.append(entries)
                self._pending_count += len(entries)
            wake = len(self._pending) == 1 or self._pending_count >= self.max_batch or report
            if last > self._extend_at and not self._reserve_wanted:
                self._reserve_wanted = wake = True
            if wake:
                self._cond.notify_all()
            self._ensure_writer_locked()
        if report:
            log.warning(
                "journal %s cannot keep up: more than %d events waiting; keeping only their range, to "
                "take them back from the history ring once it catches up",
                self.path,
                self.queue_size,
            )

    def _on_fence_held(self, seq: int) -> None:
        """The bus holds events back at the fence: reserve more now."""
        log_pause = False
        with self._cond:
            if self._fence_blocked_since is None:
                self._fence_blocked_since = time.monotonic()
                self._counters["fence_pauses"] += 1
            if self._failing_since is not None and not self._pause_logged:
                self._pause_logged = log_pause = True
            if not self._reserve_wanted:
                self._reserve_wanted = True
                self._cond.notify_all()
            self._ensure_writer_locked()
            error = self._last_error
        if log_pause:
            log.warning(
                "journal %s: delivery to clients paused before seq %d: no more seqs can be reserved "
                "while writes fail (%s); events wait in memory, in order, until the fault clears",
                self.path,
                seq,
                error,
            )

    # -- the writer thread --------------------------------------------------------

    def _ensure_writer_locked(self) -> None:
        if self._thread is None:
            self._start_writer_locked()
        elif self._abandon and not self._closing:
            # close() gave up on the writer, which is still inside SQLite
            # (a busy wait); a new one takes over once it has ended.
            self._restart_after_exit = True

    def _start_writer_locked(self) -> threading.Thread:
        # A new writer starts only once the previous one has finished its
        # last transaction (it clears _thread last), so file states stay ordered.
        died_of = self._dead
        if died_of is not None:
            self._counters["writer_restarts"] += 1
            self._dead = None
        self._stopping = self._abandon = False
        # daemon: a process that never stops the server can still exit; close()
        # joins it, and the exit hook commits what is queued before that.
        self._thread = thread = threading.Thread(
            target=self._run, args=(died_of,), name="coda-ws-journal", daemon=True
        )
        thread.start()
        return thread

    def _run(self, died_of: str | None = None) -> None:
        me = threading.current_thread()
        conn: sqlite3.Connection | None = None
        delay = 0.0
        if died_of is not None:
            log.info("journal %s: a new writer takes over (the last one died: %s)", self.path, died_of)
        try:
            while True:
                with self._cond:
                    job = self._next_job(delay)
                if job is None:
                    return
                if job is _HOLD:
                    bus = self._bus
                    assert bus is not None  # attached: attach() set it before anything starts a writer
                    held = bus.fence_at_head()  # never under _cond (see the module notes)
                    with self._cond:
                        self._held_at = held
                    continue
                try:
                    if conn is None:
                        conn = _connect(
                            self.path, synchronous=self.synchronous, busy_timeout=_WRITER_BUSY_TIMEOUT
                        )
                    result = self._execute(conn, job)
                except sqlite3.Error as exc:
                    delay = self._write_failed(exc, delay)
                    if conn is not None and _error_name(exc) not in (
                        "SQLITE_BUSY",
                        "SQLITE_LOCKED",
                        "SQLITE_FULL",
                    ):
                        self._close_quietly(conn)  # reopen: the connection may be unusable
                        conn = None
                    continue
                delay = 0.0
                self._write_succeeded(job, result)
                if job.close:
                    return
        except Exception as exc:  # a bug: report it; the next batch starts a new writer
            log.exception("journal %s: the writer failed", self.path)
            with self._cond:
                self._dead = f"{type(exc).__name__}: {exc}"
        finally:
            if conn is not None:
                self._close_quietly(conn)
            with self._cond:
                if self._thread is me:
                    self._thread = None
                    if self._restart_after_exit:
                        self._restart_after_exit = False
                        self._start_writer_locked()
                self._cond.notify_all()

    def _close_quietly(self, conn: sqlite3.Connection) -> None:
        try:
            conn.close()
        except sqlite3.Error as exc:  # closing checkpoints; a failing disk fails it too
            log.debug("journal %s: closing the connection failed: %s", self.path, exc)

    def _has_work_locked(self) -> bool:
        return bool(self._inflight or self._pending or self._unqueued)

    def _next_job(self, delay: float) -> _Job | Literal[_Cue.HOLD] | None:
        """Wait (holding _cond) for the next transaction and return it; None
        when the writer should end, _HOLD before the clean close."""
        cond = self._cond
        if delay:
            # Back off after a failure; close() giving up cuts it short.
            end = time.monotonic() + (min(delay, 0.25) if self._stopping else delay)
            while not self._abandon:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    break
                cond.wait(remaining)
        while True:
            if self._abandon:
                return None
            if self._has_work_locked():
                due = (
                    self._stopping
                    or self._flush_waiters
                    or self._inflight
                    or self._unqueued
                    or not self._file_open
                    or self._pending_count >= self.max_batch
                )
                if not due:
                    if self._reserve_wanted:
                        # A reservation alone, now: a small transaction, and
                        # the pending events keep their flush schedule.
                        return self._take_job_locked(events=False)
                    pending_since = self._pending_since
                    assert pending_since is not None  # not due: the work is pending events only
                    remaining = pending_since + self.flush_interval - time.monotonic()
                    if remaining > 0:
                        cond.wait(remaining)
                        continue
                return self._take_job_locked()
            if self._stopping:
                if not self._file_open:
                    return None
                if self._held_at is None:
                    return _HOLD
                job = _Job()
                job.close = True
                return job
            if self._reserve_wanted:
                return self._take_job_locked()
            cond.wait()

    def _take_job_locked(self, events: bool = True) -> _Job:
        job = _Job()
        if events and self._pending:
            if not self._inflight:
                self._inflight_since = self._pending_since
            self._inflight.extend(self._pending)
            self._inflight_count += self._pending_count
            self._pending, self._pending_count, self._pending_since = [], 0, None
        job.batches = list(self._inflight)
        for first, last in self._unqueued:
            if job.ranges and job.ranges[-1][1] + 1 == first:
                job.ranges[-1] = (job.ranges[-1][0], last)
            else:
                job.ranges.append((first, last))
        job.range_count = len(self._unqueued)
        self._overflowing = False  # later batches queue again, after these ranges
        if not self._file_open:
            job.open_meta = dict(self._open_meta)
            job.window = self._open_window
        if not self._stopping:
            bus = self._bus
            assert bus is not None  # attached: attach() and the writer are the only callers
            # Keep the durable reservation a block ahead of what was dispatched
            # (written even when unchanged when the fence must be raised to it).
            want = max(self._reserved, bus.head + self._block)
            if (
                want > self._reserved
                or job.open_meta is not None
                or self._reserve_wanted
                or self._held_at is not None
            ):
                job.reserve_to = want
        job.last = max(job.batches[-1][-1].seq if job.batches else 0, job.ranges[-1][1] if job.ranges else 0)
        return job

    def _execute(self, conn: sqlite3.Connection, job: _Job) -> _Result:
        """Write one transaction; returns ``(events, gaps, trimmed, covered,
        recovered)``. Raises sqlite3.Error (nothing written)."""
        rows = [
            (e.seq, e.timestamp, e.type, e.session_id, 1 if e.high_priority else 0, e.data)
            for entries in job.batches
            for e in entries
            if e.target is None
        ]
        gaps: list[tuple[int, int]] = []
        recovered = 0
        bus = self._bus
        assert bus is not None  # attached: attach() and the writer are the only callers
        for first, last in job.ranges:
            # Events that did not fit in memory: take them back from the ring;
            # what already left it is a lost window.
            entries, held_from = bus.retained(first, last)
            rows.extend(
                (e.seq, e.timestamp, e.type, e.session_id, 1 if e.high_priority else 0, e.data)
                for e in entries
            )
            recovered += len(entries)
            if held_from > first:
                gaps.append((first, min(last, held_from - 1)))
        covered = max(self._committed_seq, job.last)
        upsert = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)"
        trimmed = 0
        with conn:
            if job.open_meta is not None:
                conn.executemany(upsert, [(key, str(value)) for key, value in job.open_meta.items()])
                if job.window is not None:
                    conn.execute(
                        "INSERT OR REPLACE INTO lost (first, last, cause, recorded_at) "
                        "VALUES (?, ?, 'crash', ?)",
                        (*job.window, time.time()),
                    )
            if rows:
                conn.executemany(
                    f"INSERT OR REPLACE INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", rows
                )
            for first, last in gaps:
                conn.execute(
                    "INSERT OR REPLACE INTO lost (first, last, cause, recorded_at) "
                    "VALUES (?, ?, 'write_fault', ?)",
                    (first, last, time.time()),
                )
            if job.last:
                conn.execute(upsert, ("last_seq", str(covered)))
            if job.reserve_to is not None:
                conn.execute(upsert, ("reserved_seq", str(job.reserve_to)))
            if rows or gaps:
                trimmed = self._trim(conn, covered)
            if job.close:
                conn.execute(upsert, ("clean", "1"))
        return len(rows), gaps, trimmed, covered, recovered

    def _write_failed(self, exc: sqlite3.Error, delay: float) -> float:
        """Count a failed transaction (the job's events stay queued); log the
        start of a fault episode once. Returns the next retry delay."""
        with self._cond:
            self._counters["write_errors"] += 1
            self._last_error = f"{exc} ({_error_name(exc)})"
            self._last_error_at = time.time()
            starting = self._failing_since is None
            if starting:
                self._failing_since = time.monotonic()
                self._fail_attempts = 0
                self._episode.clear()
            self._fail_attempts += 1
            unwritten = self._unwritten_locked()
            error = self._last_error
        if starting:
            fence = self._bus.fence if self._bus is not None else None
            log.error(
                "journal %s: write failed: %s. Retrying with backoff for as long as it lasts; clients keep "
                "receiving events through seq %s, %d events wait to be written (one line when it ends)",
                self.path,
                error,
                fence,
                unwritten,
            )
        return min(_BACKOFF_MAX, max(_BACKOFF_FIRST, delay * 2))

    def _write_succeeded(self, job: _Job, result: _Result, set_fence: bool = True) -> None:
        # Long: every consequence of one committed batch is applied under one hold of the lock, so
        # that no reader sees half of it
        written, gaps, trimmed, covered, recovered = result
        ended: tuple[int, float, str | None, int, int] | None = None
        fence: int | None = None
        bus = self._bus
        assert bus is not None  # attached: attach() and the writer are the only callers
        with self._cond:
            if job.batches:
                del self._inflight[: len(job.batches)]
                self._inflight_count = sum(len(entries) for entries in self._inflight)
                self._inflight_since = None if not self._inflight else self._inflight_since
            if job.range_count:
                del self._unqueued[: job.range_count]
                if not self._unqueued:
                    self._unqueued_since = None
                    self._dropping_logged = False
            if job.open_meta is not None:
                self._file_open = True
                self._open_meta = {"clean": "0"}
                self._open_window = None
            if job.reserve_to is not None:
                self._held_at = None
                self._reserved = job.reserve_to
                self._extend_at = job.reserve_to - self._block // 2
                self._reserve_wanted = False
                fence = job.reserve_to
                if self._fence_blocked_since is not None and bus.last_seq <= fence:
                    self._fence_blocked_since = None
            if job.close:
                self._file_open = False
            self._committed_seq = max(self._committed_seq, covered)
            counters = self._counters
            counters["events_written"] += written
            counters["batches"] += 1 if written else 0
            counters["trimmed"] += trimmed
            counters["recovered_from_history"] += recovered
            lost = sum(last - first + 1 for first, last in gaps)
            counters["lost_events"] += lost
            self._episode["written"] += written
            self._episode["lost"] += lost
            if self._failing_since is not None:
                ended = (
                    self._fail_attempts,
                    time.monotonic() - self._failing_since,
                    self._last_error,
                    self._episode["written"],
                    self._episode["lost"],
                )
                self._failing_since = None
                self._pause_logged = False
                self._episode.clear()
            elif gaps:
                ended = (0, 0.0, None, written, lost)
            self._cond.notify_all()
        for first, last in gaps:
            bus.add_lost(first, last)
        if set_fence and fence is not None:
            bus.set_fence(fence, self._on_fence_held)
        if ended is not None:
            attempts, duration, error, late, lost = ended
            where = ", ".join(f"{first}-{last}" for first, last in gaps) or "none"
            log.warning(
                "journal %s: writing again after %d failed attempts over %.1f s (last error: %s); "
                "%d events written late, %d positions lost because they left the history ring first "
                "(seqs %s; recorded, and announced to resuming clients)",
                self.path,
                attempts,
                duration,
                error,
                late,
                lost,
                where,
            )

    def _trim(self, conn: sqlite3.Connection, last: int) -> int:
        """Retention, in the commit's transaction; returns how many events it deleted.
        The only place rows are ever deleted."""
        trimmed = 0
        if self.max_events is not None and last - self.max_events >= 1:
            deleted = conn.execute("DELETE FROM events WHERE seq <= ?", (last - self.max_events,)).rowcount
            if deleted:
                trimmed += deleted
            self._raise_floor(conn, last - self.max_events + 1)
        if self.max_age is not None:
            cutoff = time.time() - self.max_age
            row = conn.execute(
                "SELECT seq FROM events WHERE timestamp >= ? ORDER BY seq LIMIT 1", (cutoff,)
            ).fetchone()
            keep_from = row[0] if row is not None else last + 1
            deleted = conn.execute("DELETE FROM events WHERE seq < ?", (keep_from,)).rowcount
            if deleted:
                trimmed += deleted
                self._raise_floor(conn, keep_from)
        return trimmed

    @staticmethod
    def _raise_floor(conn: sqlite3.Connection, first_seq: int) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('first_seq', "
            "MAX(CAST(COALESCE((SELECT value FROM meta WHERE key = 'first_seq'), '1') AS INTEGER), ?))",
            (first_seq,),
        )
        conn.execute("DELETE FROM lost WHERE last < ?", (first_seq,))

    # -- control ------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event handed to the journal so far is committed.

        Returns True when it is, False after ``timeout`` seconds (None: wait
        as long as it takes, through write failures). Events the bus has not
        dispatched yet are not waited for (``bus.flush()`` first).
        """
        deadline = Deadline(timeout)
        # The bus publishes a batch to its readers before it calls listeners:
        # what it has dispatched is on its way here.
        head = self._bus.head if self._bus is not None else 0
        with self._cond:
            target = max(self._queued_seq, head)
            if self._flushed_locked(target):
                return True
            self._ensure_writer_locked()
            self._flush_waiters += 1
            self._cond.notify_all()
            try:
                while not self._flushed_locked(target):
                    remaining = deadline.remaining()
                    if deadline.expired:
                        return False
                    if self._thread is None:
                        self._ensure_writer_locked()  # the last one died of a bug
                    self._cond.wait(remaining)
                return True
            finally:
                self._flush_waiters -= 1

    def _flushed_locked(self, target: int) -> bool:
        if self._committed_seq >= target:
            return True
        # Positions the listener will never get (holes) are not waited for.
        queued = self._queued_seq
        bus = self._bus
        assert bus is not None  # attached: before attach() target is 0 and returned above
        return self._committed_seq >= queued and queued < target and not bus.retained(queued + 1, target)[0]

    def close(self, timeout: float = 5.0) -> bool:
        """Commit everything queued, mark the file closed cleanly, join the writer.

        The clean mark records that nothing after the last committed seq was
        handed out: the bus is fenced at its head first, so a later
        ``emit()`` on a bus that keeps running waits until a new writer has
        marked the file running again (a later batch starts one, so a server
        started again keeps journaling).

        Idempotent; returns True when everything was committed and the writer
        ended within ``timeout`` seconds. When writes still fail at the
        deadline (a full disk, a lock held by another process) it gives up,
        logs one error line with counts and returns False: the file still
        says the stream is running, so the next start treats what was not
        committed as lost; while this process lives the journal keeps it
        and writes it once a later writer succeeds.
        """
        with self._cond:
            self._closing = True
        try:
            return self._close(timeout)
        finally:
            with self._cond:
                self._closing = False

    def _close(self, timeout: float) -> bool:
        deadline = Deadline(timeout)
        grace = min(1.0, timeout / 4)  # left for the writer to notice that we give up
        while True:
            with self._cond:
                if self._bus is None:
                    return True
                thread = self._thread
                if thread is None:
                    if not self._has_work_locked() and not self._file_open:
                        self._stopping = False
                        return True
                    if deadline.expired:
                        break
                    thread = self._start_writer_locked()
                self._stopping = True
                self._cond.notify_all()
            thread.join(deadline.earlier(grace).remaining())
            if thread.is_alive():
                break
        with self._cond:
            self._abandon = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(deadline.left())
        with self._cond:
            if self._thread is None:
                self._abandon = self._stopping = False
            # else the writer ends at its next step; a new one resets both flags
            not_committed = self._queued_seq - self._committed_seq
            first, last = self._committed_seq + 1, self._queued_seq
            attempts, error = self._fail_attempts, self._last_error
            failing_for = 0.0 if self._failing_since is None else time.monotonic() - self._failing_since
            still_running = thread is not None and thread.is_alive()
        held = self._bus.stats().get("held_by_fence", 0)
        log.error(
            "journal %s: gave up closing after %.1f s: %d events not committed (seqs %s), %d more held back "
            "from clients; writes failing for %.1f s (%d attempts, last error: %s)%s. The file still marks "
            "the stream as running: the next start records these seqs as lost; while this process runs "
            "they are written once the fault clears",
            self.path,
            timeout,
            not_committed,
            f"{first}-{last}" if not_committed else "none",
            held,
            failing_for,
            attempts,
            error,
            "; the writer is still busy" if still_running else "",
        )
        return False

    def _register_exit_hook(self) -> None:
        # A script that never calls stop() still gets its last events
        # committed, and the epoch kept, when the interpreter exits normally.
        if self._exit_hook is None:
            self._exit_hook = _exit_hook(weakref.ref(self))
            atexit.register(self._exit_hook)

    # -- reading ------------------------------------------------------------------

    @property
    def covered_seq(self) -> int:
        """The last seq committed or recorded as lost: every journaled event up to it can be read."""
        return self._committed_seq

    @property
    def last_seq(self) -> int:
        """The last seq handed to the journal (committed or waiting)."""
        return self._queued_seq

    @property
    def reserved_seq(self) -> int:
        """The durable seq reservation: no seq above it has reached a reader."""
        return self._reserved

    def read(
        self,
        since: int = 0,
        event_filter: EventFilter | None = None,
        limit: int | None = None,
        until: int | None = None,
    ) -> list[Entry]:
        """Journaled events with ``since < seq <= until``, oldest first.

        Returns :class:`~coda_ws.bus.Entry` objects (like
        ``EventBus.history``), filtered by ``event_filter`` (an
        :class:`~coda_ws.filters.EventFilter` or None), at most ``limit``.
        Unreadable rows are skipped (counted in ``stats()["bad_rows"]``).
        Blocking file I/O in the caller's thread; safe beside the writer.
        """
        if event_filter is not None and not isinstance(event_filter, EventFilter):
            raise TypeError(f"event_filter must be an EventFilter or None, got {type(event_filter).__name__}")
        conn = _connect(self.path, readonly=True)
        bad: dict[int, str] = {}
        try:
            entries = [
                entry_from_wire(_stamped(row), "generic")[0]
                for row in _good_rows(_read_rows(conn, since, event_filter, limit, until), bad)
            ]
            return cast("list[Entry]", entries)  # never holes: unregistered types are served as stored
        finally:
            conn.close()
            if bad:
                with self._cond:
                    new = {seq: why for seq, why in bad.items() if seq not in self._bad}
                    self._bad.update(bad)
                if new:
                    log.warning(
                        "journal %s: skipped %d unreadable rows (%s)", self.path, len(new), _describe_bad(new)
                    )

    def count(self) -> int:
        """How many events the file holds (a query; for tests and tools)."""
        conn = _connect(self.path, readonly=True)
        try:
            count: int = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            return count
        finally:
            conn.close()

    # -- health -------------------------------------------------------------------

    def _unwritten_locked(self) -> int:
        return (
            self._inflight_count
            + self._pending_count
            + sum(last - first + 1 for first, last in self._unqueued)
        )

    def _oldest_unwritten_age_locked(self, now: float) -> float:
        times = [
            t for t in (self._inflight_since, self._pending_since, self._unqueued_since) if t is not None
        ]
        return max(0.0, now - min(times)) if times else 0.0

    def ready(self) -> tuple[bool, str]:
        """``(True, "ok")``, or ``(False, reason)`` (for ``/readyz``): while
        writes fail, while the writer is dead with work waiting, while
        delivery to clients is paused at the reservation, or while the
        oldest unwritten event has waited longer than :attr:`stale_after`."""
        with self._cond:
            now = time.monotonic()
            unwritten = self._unwritten_locked()
            if self._failing_since is not None:
                return False, (
                    f"writes failing for {now - self._failing_since:.1f} s ({self._fail_attempts} "
                    f"attempts): {self._last_error}; {unwritten} events not yet written"
                )
            if self._dead is not None and self._thread is None and (unwritten or self._reserve_wanted):
                return False, f"the writer thread died ({self._dead}); {unwritten} events wait for a new one"
            if self._fence_blocked_since is not None:
                return False, (
                    f"delivery to clients paused at seq {self._bus.fence if self._bus else 0} for "
                    f"{now - self._fence_blocked_since:.1f} s, waiting for a seq reservation"
                )
            age = self._oldest_unwritten_age_locked(now)
            if age > self.stale_after:
                return (
                    False,
                    f"the oldest unwritten event has waited {age:.1f} s ({unwritten} events waiting)",
                )
        return True, "ok"

    def stats(self) -> JournalStats:
        """Counters and state (for ``get_stats()``, ``/stats`` and ``/metrics``).

        ``events_written``, ``batches``, ``write_errors``, ``trimmed``
        (retention), ``queued`` (events not yet written, in memory or as a
        range), ``committed_seq``, ``queued_seq``, ``reserved_seq``,
        ``last_error`` (the last write error, kept after recovery, or None)
        and ``last_error_at`` (Unix time), ``failing_for`` (seconds writes
        have been failing, 0 when they succeed), ``oldest_unwritten_age``
        (seconds, 0 when none), ``writer_running``, ``writer_restarts``,
        ``delivery_paused`` and ``fence_pauses``, ``recovered_from_history``
        (events written from the history ring after they did not fit in
        memory), ``lost_events`` (positions that left the ring first) and
        ``lost_windows`` (every lost window the bus knows, ``[first, last]``),
        ``bad_rows`` (unreadable rows skipped).
        """
        with self._cond:
            now = time.monotonic()
            counters = self._counters
            thread = self._thread
            stats: JournalStats = {
                "path": self.path,
                "events_written": counters["events_written"],
                "batches": counters["batches"],
                "write_errors": counters["write_errors"],
                "trimmed": counters["trimmed"],
                "queued": self._unwritten_locked(),
                "committed_seq": self._committed_seq,
                "queued_seq": self._queued_seq,
                "reserved_seq": self._reserved,
                "last_error": self._last_error,
                "last_error_at": self._last_error_at,
                "failing_for": 0.0 if self._failing_since is None else now - self._failing_since,
                "oldest_unwritten_age": self._oldest_unwritten_age_locked(now),
                "writer_running": thread is not None and thread.is_alive(),
                "writer_restarts": counters["writer_restarts"],
                "delivery_paused": self._fence_blocked_since is not None,
                "fence_pauses": counters["fence_pauses"],
                "recovered_from_history": counters["recovered_from_history"],
                "lost_events": counters["lost_events"],
                "bad_rows": len(self._bad),
                "lost_windows": [],  # below, outside the lock
            }
        bus = self._bus
        stats["lost_windows"] = [list(window) for window in bus.lost_windows()] if bus is not None else []
        return stats

    def __repr__(self) -> str:
        return f"<Journal {self.path!r} epoch={self.epoch} committed={self._committed_seq}>"


def _exit_hook(ref: weakref.ref[Journal]) -> Callable[[], None]:
    def close_at_exit() -> None:
        journal = ref()
        if journal is None or journal._bus is None:
            return
        journal._bus.flush(1.0)  # events emitted but not yet dispatched reach the journal
        journal.close(2.0)

    return close_at_exit
