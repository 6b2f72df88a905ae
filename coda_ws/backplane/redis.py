"""The Redis Streams backplane: one ordered stream for many emitters and nodes.

Theory of operation
-------------------

Emitters (the STT, LLM and TTS workers, any server node) and server nodes
share one Redis. Keys, all under the prefix ``P`` (one hash tag, so the
scripts also run on a Redis Cluster)::

    {P}:meta          hash: epoch, seq (the last seq stamped)
    {P}:stream        the stream; entry id "<seq>-0", fields d (wire JSON),
                      t (type), ts (timestamp), e (epoch), s (session id, when
                      not null), h (high priority), c (target client)
    {P}:replay        list: wire JSON of the newest high-priority events
    {P}:emitter:<id>  the last batch an emitter published (for retries)

**One global order.** ``emit()`` validates and encodes in the caller, as
the embedded bus does (a bad event raises at once), stamps the timestamp,
and appends to a bounded buffer; it never touches the network. A publisher
thread takes what is buffered and sends it in batches, pipelined, to one Lua
script that, atomically, increments the seq counter by the batch size, builds
each event's wire JSON around its seq, and ``XADD``\\ s it with the explicit
id ``<seq>-0`` (``MAXLEN ~ maxlen``). So seqs are consecutive, the stream's
order is the seq order, and every node delivers the same events under the
same seqs. A batch carries its emitter's id and number: a batch retried after
a lost reply is recognized and not added twice.

**Epoch.** The epoch lives in ``{P}:meta``. It is created (and the stream
cleared) only when that hash is missing, that is when Redis lost the stream
(restarted without persistence, flushed, evicted); every entry carries it.

**Nodes.** Each server node runs one reader thread that follows the stream
with a blocking ``XREAD`` and hands each batch, already stamped, to its bus
(:meth:`EventBus.ingest <coda_ws.bus.EventBus.ingest>`), which frames it once
and fans it out locally exactly as in embedded mode. At start, after losing
its connection to a new epoch, or after falling behind what the stream still
holds, the node reloads the newest ``history_size`` entries and the replay
list (:meth:`EventBus.restore <coda_ws.bus.EventBus.restore>`): the history
ring of every node holds the same positions, so a client can resume on any
node. Older history is read with ``XRANGE`` (``GET /events``).

**Redis unreachable.** ``emit()`` keeps returning at once. Events wait in
the buffer (``buffer_size`` events); beyond it, new events are dropped and
counted, and one ``system_error`` event saying how many were dropped is
queued in a reserved slot, so every client learns of the loss as soon as the
stream flows again (an event cannot be delivered before Redis stamps its
seq). The notice goes out after the events buffered before it, once the
buffer has drained, so it counts every event dropped until then. ``ready()``
reports the backplane down (``/readyz``). The publisher and the reader retry
on their own, backing off up to one second, and carry on when Redis returns;
if the epoch changed meanwhile, every node reloads and its clients get
``recovered: false, reason: epoch_changed`` on resume.

Delivery guarantee: an event buffered while Redis is down is published once
Redis is back, unless it was dropped (counted) or the process ended first.
A process crash loses what its buffer held.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import hashlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final, Literal, TypedDict, cast

from ..checks import integer, number
from ..deadline import Deadline
from ..events import (
    DEFAULT_MAX_EVENT_SIZE,
    BaseEvent,
    EventType,
    SystemErrorEvent,
    build_fields,
    encode_fields,
)
from ..filters import EventFilter
from ..wire import (
    WIRE_HEAD,
    Entry,
    StampedEvent,
    entry_from_wire,
    prepare_event,
    wire_tail,
)

if TYPE_CHECKING:
    from redis import Redis

    from ..bus import EventBus

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_MAXLEN",
    "DEFAULT_PREFIX",
    "DEFAULT_REPLAY_KEEP",
    "BackplaneStats",
    "EmitterStats",
    "PublisherStats",
    "RedisBackplane",
    "RedisEmitter",
    "StreamKeys",
    "stream_keys",
]

log = logging.getLogger("coda_ws.backplane")

#: Key prefix used when none is given.
DEFAULT_PREFIX = "coda_ws"
#: Approximate bound of the stream, in events (``XADD MAXLEN ~``); keep it
#: at least as large as the nodes' ``history_size``.
DEFAULT_MAXLEN = 100_000
#: Events an emitter may buffer while Redis is slow or unreachable.
DEFAULT_BUFFER_SIZE = 10_000
#: High-priority events kept in Redis for the nodes' replay buffers.
DEFAULT_REPLAY_KEEP = 256

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_MIN_BACKOFF = 0.05
_MAX_BACKOFF = 1.0
_EMITTER_KEY_TTL = 3600  # seconds a batch number is remembered for retries

# KEYS: meta, stream, replay.  ARGV: epoch candidate.  Returns {epoch, seq}.
_ENSURE_SCRIPT = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0)
end
return {epoch, redis.call('HGET', KEYS[1], 'seq')}
"""

# KEYS: meta, stream, replay, this emitter's batch key.
# ARGV: maxlen, replay_keep, batch number, epoch candidate, wire head, batch
#       key TTL, then 7 per event: timestamp, type, session id, has session
#       ("1"/"0"), high priority ("1"/"0"), target ("" for none), wire tail.
# Returns {epoch, first seq} (first seq -1: this batch was already published).
_PUBLISH_SCRIPT = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[4]
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0)
end
local done = redis.call('GET', KEYS[4])
if done and tonumber(done) >= tonumber(ARGV[3]) then
  return {epoch, -1}
end
local n = (#ARGV - 6) / 7
local first = redis.call('HINCRBY', KEYS[1], 'seq', n) - n + 1
local replayed = false
for i = 0, n - 1 do
  local b = 7 + i * 7
  local seq = string.format('%d', first + i)
  local payload = ARGV[5] .. seq .. ARGV[b + 6]
  local args = {'XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], seq .. '-0',
                'd', payload, 't', ARGV[b + 1], 'ts', ARGV[b], 'e', epoch}
  if ARGV[b + 3] == '1' then
    args[#args + 1] = 's'
    args[#args + 1] = ARGV[b + 2]
  end
  if ARGV[b + 4] == '1' then
    args[#args + 1] = 'h'
    args[#args + 1] = '1'
  end
  if ARGV[b + 5] ~= '' then
    args[#args + 1] = 'c'
    args[#args + 1] = ARGV[b + 5]
  elseif ARGV[b + 4] == '1' then
    redis.call('LPUSH', KEYS[3], payload)
    replayed = true
  end
  redis.call(unpack(args))
end
if replayed then
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[2]) - 1)
end
redis.call('SET', KEYS[4], ARGV[3], 'EX', ARGV[6])
return {epoch, first}
"""

_PUBLISH_SHA = hashlib.sha1(_PUBLISH_SCRIPT.encode()).hexdigest()


class StreamKeys(TypedDict):
    """:func:`stream_keys`: the Redis keys of one prefix (``emitter`` is the
    prefix of the per-emitter keys)."""

    meta: str
    stream: str
    replay: str
    emitter: str


class PublisherStats(TypedDict):
    """The publisher's counters, in :meth:`RedisEmitter.stats` and :meth:`RedisBackplane.stats`."""

    published: int
    dropped: int
    buffered: int
    batches: int
    publish_errors: int
    buffer_size: int


class EmitterStats(PublisherStats):
    """:meth:`RedisEmitter.stats`."""

    epoch: str | None
    last_seq: int


class BackplaneStats(PublisherStats):
    """:meth:`RedisBackplane.stats`."""

    epoch: str | None
    synced: bool
    ingested: int
    loads: int
    resyncs: int
    epoch_changes: int
    reader_errors: int


#: An event as the publisher buffers it: ``(timestamp, type_name, session_id,
#: session_json, high_priority, body, target)``.
_Item = tuple[float, str, str | None, bytes, bool, bytes, str | None]
#: One script call: ``(batch_number, argv, number of events)``.
_Batch = tuple[int, list[int | str | bytes], int]
#: Stream entries as this module's clients return them (``decode_responses=False``).
_StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]


def _import_redis() -> ModuleType:
    try:
        import redis
    except ImportError:
        raise ImportError(
            "the Redis backplane needs the redis package: pip install 'coda-ws[redis]'"
        ) from None
    return redis


def _connection_errors() -> tuple[type[BaseException], ...]:
    redis = _import_redis()
    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def stream_keys(prefix: str = DEFAULT_PREFIX) -> StreamKeys:
    """The Redis keys a backplane with this prefix uses (for tools and cleanup).

    Raises:
        ValueError: the prefix is empty, longer than 64 characters, or has
            characters other than letters, digits and ``_.:-``.
    """
    if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
        raise ValueError(f"backplane prefix must be 1-64 characters of A-Z a-z 0-9 _ . : -, got {prefix!r}")
    tag = "{%s}" % prefix
    return {
        "meta": f"{tag}:meta",
        "stream": f"{tag}:stream",
        "replay": f"{tag}:replay",
        "emitter": f"{tag}:emitter:",
    }


def _client(url: str, socket_timeout: float, name: str) -> Redis:
    """A Redis client that never retries by itself (our threads do, with backoff)."""
    redis = _import_redis()
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client: Redis = redis.Redis.from_url(
        url,
        protocol=2,
        decode_responses=False,
        socket_connect_timeout=2.0,
        socket_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        client_name=name,
    )
    return client


_TRANSIENT_REPLIES = (
    "OOM",
    "BUSY",
    "LOADING",
    "READONLY",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "NOREPLICAS",
)


def _transient(exc: Exception) -> bool:
    """True for error replies that mean "not now" rather than "never"."""
    return str(exc).startswith(_TRANSIENT_REPLIES)


def _close_client(client: Redis) -> None:
    with contextlib.suppress(*_connection_errors()):
        client.close()


def _stamped(entry_id: bytes, fields: Mapping[bytes, bytes]) -> StampedEvent:
    """A stream entry as a StampedEvent."""
    session = fields.get(b"s")
    target = fields.get(b"c")
    return StampedEvent(
        int(entry_id.partition(b"-")[0]),
        float(fields[b"ts"]),
        fields[b"t"].decode(),
        None if session is None else session.decode("utf-8"),
        b"h" in fields,
        fields[b"d"],
        None if target is None else target.decode(),
    )


class _Reserved(enum.Enum):
    """Buffer items that are not events (an enum: a typed sentinel)."""

    DROP_NOTICE = "drop_notice"


# The reserved buffer slot for the "events dropped" system_error: at most one
# is buffered or in flight. The thread takes it only at the head of a take
# (see _Publisher._take_locked) and builds it once, with the count then.
_DROP_NOTICE: Final = _Reserved.DROP_NOTICE


class _Publisher:
    """A bounded buffer of encoded events and the thread that publishes it.

    ``submit()`` is O(1) and never blocks on Redis (thread-safe). The thread,
    ``coda-ws-redis-publisher``, starts with the first event and is joined by
    :meth:`close`; while Redis is unreachable it keeps the events in flight,
    retries with backoff (up to one second), and resumes by itself.
    """

    def __init__(
        self,
        url: str,
        keys: StreamKeys,
        *,
        buffer_size: int,
        maxlen: int,
        replay_keep: int,
        max_batch: int = 500,
        max_pipeline: int = 8,
    ) -> None:
        for name, value in (("buffer_size", buffer_size), ("maxlen", maxlen), ("replay_keep", replay_keep)):
            integer(name, value, 1)
        self._url = url
        self._keys = keys
        self.buffer_size = buffer_size
        self.maxlen = maxlen
        self.replay_keep = replay_keep
        self.max_batch = max_batch
        self.max_pipeline = max_pipeline
        self.emitter_id = uuid.uuid4().hex
        self._batch_key = keys["emitter"] + self.emitter_id
        self._next_batch = 1  # only the publisher thread uses it

        # _cond's lock guards everything below (short holds: never across I/O).
        self._cond = threading.Condition(threading.Lock())
        self._buffer: collections.deque[_Item | Literal[_Reserved.DROP_NOTICE]] = collections.deque()
        self._inflight = 0  # events taken by the thread, not yet acknowledged
        self._inflight_notices = 0  # of those, drop notices (0 or 1; not events anyone emitted)
        self._accepted = 0  # events (and notices) accepted since creation
        self._settled = 0  # of those, published or given up
        self._notice_queued = False
        self._dropped_since_notice = 0
        self._stopping = False
        self._close_deadline: Deadline | None = None
        self._thread: threading.Thread | None = None
        self._down: str | None = None  # None while Redis answers; else why not
        self._counters: collections.Counter[str] = collections.Counter()
        self.epoch: str | None = None  # the stream's epoch, as of the last acknowledged batch
        self.last_seq = 0  # the highest seq given to this publisher's events

    # -- producers (any thread) ---------------------------------------------------

    def submit(self, item: _Item) -> bool:
        """Buffer ``(timestamp, type, session_id, session_json, high_priority, body, target)``.

        Returns False when the buffer is full and the event was dropped."""
        report = False
        with self._cond:
            if len(self._buffer) + self._inflight >= self.buffer_size:
                self._counters["dropped"] += 1
                self._dropped_since_notice += 1
                if not self._notice_queued:  # one reserved slot, beyond the bound
                    self._notice_queued = report = True
                    self._buffer.append(_DROP_NOTICE)
                    self._accepted += 1
                accepted = False
            else:
                self._buffer.append(item)
                self._accepted += 1
                accepted = True
                if len(self._buffer) == 1:
                    self._cond.notify()
            if self._thread is None:
                self._start_locked()
        if report:
            log.error(
                "backplane buffer full (%d events): dropping events until Redis accepts them again (%s)",
                self.buffer_size,
                self._down or "Redis does not keep up",
            )
        return accepted

    # -- the publisher thread -----------------------------------------------------

    def _start_locked(self) -> threading.Thread:
        # One publisher at a time: a new one starts only once close() has
        # joined the previous one, so batches stay in order.
        self._stopping = False
        # daemon: an emitter never closed must not keep the process alive; close() joins it.
        self._thread = thread = threading.Thread(
            target=self._run, name="coda-ws-redis-publisher", daemon=True
        )
        thread.start()
        return thread

    def _run(self) -> None:
        # Long: the publisher's loop (connect, send a batch, classify the failure, back off) shares
        # its state between those steps
        client: Redis | None = None
        backoff = _MIN_BACKOFF
        items: list[_Item | Literal[_Reserved.DROP_NOTICE]] | None = (
            None  # taken from the buffer, not yet acknowledged
        )
        try:
            while True:
                if items is None:
                    with self._cond:
                        while not self._buffer and not self._stopping:
                            self._cond.wait()
                        if not self._buffer:
                            return  # stopping, and everything is published
                        items, reported = self._take_locked()
                    if reported is not None:
                        items[0] = self._drop_notice(reported)
                    # Built once per set of items: a retry (after a lost reply,
                    # too) sends the same batches, numbers and notice count, so
                    # the script recognizes a batch already added, and the count
                    # acknowledged is the one published.
                    first_batch = self._next_batch
                    self._next_batch += -(-len(items) // self.max_batch)
                    # Events only: a drop notice is taken only at the head, and was built just above.
                    batches = self._build(cast("list[_Item]", items), first_batch)
                try:
                    if client is None:
                        client = _client(self._url, 2.0, f"coda-ws-publisher-{self.emitter_id[:8]}")
                    results = self._send(client, batches)
                except _connection_errors() as exc:
                    if client is not None:
                        _close_client(client)
                        client = None
                    if not self._outage(exc, backoff):
                        items = None  # given up and counted by _outage
                        return
                    backoff = min(backoff * 2, _MAX_BACKOFF)
                    continue
                except _import_redis().exceptions.ResponseError as exc:
                    if _transient(exc):  # Redis out of memory, loading, read-only replica...
                        if not self._outage(exc, backoff):
                            items = None
                            return
                        backoff = min(backoff * 2, _MAX_BACKOFF)
                        continue
                    # The script failed: a bug or a Redis that refuses scripts.
                    # Retrying cannot help; count the events as dropped.
                    log.error("backplane script failed, dropping %d events: %s", len(items), exc)
                    with self._cond:
                        self._counters["errors"] += 1
                        self._give_up_locked()
                    items = None
                    continue
                self._acknowledge(batches, results, reported or 0)
                items = None
                backoff = _MIN_BACKOFF
        except Exception:  # a bug: say so, and let the next event start a new thread
            log.exception("backplane publisher failed")
            with self._cond:
                self._thread = None
        finally:
            if client is not None:
                _close_client(client)
            with self._cond:
                if items is not None:
                    self._give_up_locked()
                self._cond.notify_all()

    def _drop_notice(self, count: int) -> _Item:
        """The system_error event that tells every client how many events were dropped."""
        cls = SystemErrorEvent
        values = build_fields(
            cls,
            {
                "level": "error",
                "message": f"backplane: {count} events dropped while Redis was unreachable or slow "
                f"(buffer of {self.buffer_size} events full)",
                "details": {"dropped": count, "buffer_size": self.buffer_size, "emitter": self.emitter_id},
            },
        )
        return time.time(), cls.type_name, None, b"null", True, encode_fields(cls, values), None

    def _take_locked(self) -> tuple[list[_Item | Literal[_Reserved.DROP_NOTICE]], int | None]:
        """Take the next items to publish (with ``_cond`` held): ``(items,
        drops the notice reports)``, the count None when no notice is taken.

        The drop notice is taken only at the head of a take, never behind
        events: those are published first. While they are in flight they
        fill the buffer and events go on being dropped, so a count read then
        (even just before each attempt) can be overtaken before Redis stamps
        the notice, and the drops after it needed a second notice for the same
        outage. Once the events ahead of it are published (or given up), the
        buffer has drained and the count read here, with the notice taken, is
        every drop of this overflow; a drop after it (the buffer filled up
        again) is announced by the next notice, queued when this one is
        acknowledged.
        """
        buffer = self._buffer
        limit = self.max_batch * self.max_pipeline
        items: list[_Item | Literal[_Reserved.DROP_NOTICE]] = []
        reported = None
        if buffer[0] is _DROP_NOTICE:
            items.append(buffer.popleft())
            reported = self._dropped_since_notice
        while buffer and len(items) < limit and buffer[0] is not _DROP_NOTICE:
            items.append(buffer.popleft())
        self._inflight = len(items)
        self._inflight_notices = 0 if reported is None else 1
        return items, reported

    def _build(self, items: list[_Item], first_batch: int) -> list[_Batch]:
        """Split items into script calls: ``[(batch_number, argv, count)]``."""
        batches: list[_Batch] = []
        for batch_number, start in enumerate(range(0, len(items), self.max_batch), first_batch):
            chunk = items[start : start + self.max_batch]
            argv: list[int | str | bytes] = [
                self.maxlen,
                self.replay_keep,
                batch_number,
                uuid.uuid4().hex,
                WIRE_HEAD,
                _EMITTER_KEY_TTL,
            ]
            for timestamp, type_name, session_id, session_json, high_priority, body, target in chunk:
                argv += (
                    repr(timestamp),
                    type_name,
                    "" if session_id is None else session_id,
                    "0" if session_id is None else "1",
                    "1" if high_priority else "0",
                    target or "",
                    wire_tail(timestamp, type_name, session_json, body),
                )
            batches.append((batch_number, argv, len(chunk)))
        return batches

    def _send(self, client: Redis, batches: list[_Batch]) -> list[Any]:
        """Run the publish script for every batch, in one pipeline (one round trip)."""
        redis = _import_redis()
        keys = (self._keys["meta"], self._keys["stream"], self._keys["replay"], self._batch_key)
        for _ in range(2):
            pipe = client.pipeline(transaction=False)
            for _, argv, _ in batches:
                # redis-py leaves Pipeline.execute_command unannotated.
                pipe.execute_command("EVALSHA", _PUBLISH_SHA, len(keys), *keys, *argv)  # type: ignore[no-untyped-call]
            results = pipe.execute(raise_on_error=False)
            if any(isinstance(result, redis.exceptions.NoScriptError) for result in results):
                # A restarted Redis forgot the script. Retrying the whole
                # pipeline is safe: batches already added are recognized.
                client.script_load(_PUBLISH_SCRIPT)
                continue
            for result in results:
                if isinstance(result, Exception):
                    raise result
            return results
        raise redis.exceptions.ResponseError("the publish script could not be loaded")

    def _acknowledge(self, batches: list[_Batch], results: list[Any], reported: int) -> None:
        count = sum(n for _, _, n in batches)
        last_seq = 0
        epoch: str | None = None
        for (_, _, n), (epoch_bytes, first) in zip(batches, results):
            epoch = epoch_bytes.decode()
            if int(first) > 0:
                last_seq = max(last_seq, int(first) + n - 1)
        with self._cond:
            if self._down is not None:
                log.warning("backplane: Redis reachable again; publishing resumed")
                self._down = None
            if epoch != self.epoch:
                self.last_seq = 0
            self.epoch = epoch
            self.last_seq = max(self.last_seq, last_seq)
            if self._inflight_notices:
                self._dropped_since_notice -= reported
                self._notice_queued = False
                if self._dropped_since_notice:  # the buffer filled up again after it was taken: one more
                    self._notice_queued = True
                    self._buffer.append(_DROP_NOTICE)
                    self._accepted += 1
            events = count - self._inflight_notices
            self._inflight = self._inflight_notices = 0
            self._settled += count
            self._counters["published"] += events
            self._counters["batches"] += len(batches)
            self._cond.notify_all()

    def _outage(self, exc: BaseException, backoff: float) -> bool:
        """Note a failed attempt and wait before the next; False: give up (closing)."""
        with self._cond:
            self._counters["errors"] += 1
            if self._down is None:
                log.warning(
                    "backplane: Redis unreachable (%s); buffering up to %d events", exc, self.buffer_size
                )
            self._down = f"redis unreachable: {exc}"
            if self._stopping:
                close_deadline = self._close_deadline
                assert close_deadline is not None  # close() sets it with _stopping
                remaining = close_deadline.left()
                if remaining <= 0:
                    lost = self._give_up_locked(buffered_too=True)
                    log.error("backplane: closing with Redis unreachable; %d events not published", lost)
                    return False
                self._cond.wait_for(lambda: False, timeout=min(backoff, remaining))
            else:
                self._cond.wait_for(lambda: self._stopping, timeout=backoff)
            return True

    def _give_up_locked(self, buffered_too: bool = False) -> int:
        """Count the events in flight (and, with ``buffered_too``, those still
        buffered) as dropped; returns how many."""
        lost = self._inflight - self._inflight_notices
        if self._inflight_notices:
            self._notice_queued = False  # its drops stay counted for the next notice
        if buffered_too:
            lost += sum(1 for item in self._buffer if item is not _DROP_NOTICE)
            self._buffer.clear()
            self._notice_queued = False
        self._counters["dropped"] += lost
        self._inflight = self._inflight_notices = 0
        self._settled = self._accepted - len(self._buffer)
        self._cond.notify_all()
        return lost

    # -- control ------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event submitted so far is published (or given up).

        Returns False after ``timeout`` seconds (None: no limit)."""
        deadline = Deadline(timeout)
        with self._cond:
            target = self._accepted
            while self._settled < target:
                if self._thread is None:
                    return False
                remaining = deadline.remaining()
                if deadline.expired:
                    return False
                self._cond.wait(remaining)
            return True

    def close(self, timeout: float = 5.0) -> bool:
        """Publish what is buffered (giving up after ``timeout`` seconds if
        Redis is unreachable), then join the thread. Idempotent; a later
        submit starts a new thread. Returns True when the thread ended."""
        deadline = Deadline(timeout)
        while True:
            with self._cond:
                thread = self._thread
                if thread is None:
                    if not self._buffer:
                        return True
                    if deadline.expired:
                        return False
                    thread = self._start_locked()  # events submitted while the last one was ending
                self._stopping = True
                self._close_deadline = deadline.earlier(0.5)
                self._cond.notify_all()
            thread.join(deadline.left())
            if thread.is_alive():
                log.warning("backplane publisher still busy after %.1f s", timeout)
                return False
            with self._cond:
                if self._thread is thread:
                    self._thread = None
                    self._stopping = False

    @property
    def down(self) -> str | None:
        """None while Redis accepts events, else the reason it does not."""
        return self._down

    def stats(self) -> PublisherStats:
        with self._cond:
            counters = self._counters
            return {
                "published": counters["published"],
                "dropped": counters["dropped"],
                "buffered": len(self._buffer) + self._inflight,
                "batches": counters["batches"],
                "publish_errors": counters["errors"],
                "buffer_size": self.buffer_size,
            }


class RedisEmitter:
    """Emit events into a Redis backplane from a process that does not serve.

    Drop-in for the ``emit()`` of a server or a bus (so
    :class:`~coda_ws.integration.CodaWebSocketIntegration` accepts it): the
    STT, LLM and TTS workers each make one and emit; every server node on
    the same Redis and prefix delivers their events in one global order.

    Args:
        url: ``redis://host:port/db`` (also ``rediss://``, ``unix://``).
        prefix: the key prefix shared with the nodes (default ``"coda_ws"``).
        buffer_size: events buffered while Redis is slow or unreachable;
            beyond, events are dropped and counted (module docs).
        maxlen: approximate bound of the stream, in events.
        replay_keep: high-priority events Redis keeps for replay buffers.
        max_event_size: the largest encoded event, in bytes (default 1 MiB;
            None: no limit); a larger one raises ``EventTooLargeError``.

    Thread safety: ``emit()`` may be called from any thread; it validates and
    encodes in the caller and never blocks on Redis. One publisher thread,
    started by the first event, sends batches; :meth:`close` publishes what
    is buffered and joins it. The ``redis`` package is needed
    (``pip install 'coda-ws[redis]'``).

    Raises:
        ValueError: a bad prefix or size.
        ImportError: the ``redis`` package is missing.
    """

    def __init__(
        self,
        url: str,
        prefix: str = DEFAULT_PREFIX,
        *,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        maxlen: int = DEFAULT_MAXLEN,
        replay_keep: int = DEFAULT_REPLAY_KEEP,
        max_event_size: int | None = DEFAULT_MAX_EVENT_SIZE,
    ) -> None:
        _import_redis()
        if not isinstance(url, str) or not url:
            raise ValueError(f"url must be a redis:// URL, got {url!r}")
        integer("max_event_size", max_event_size, 1024, none_ok=True)
        self.url = url
        self.prefix = prefix
        self.max_event_size = max_event_size
        self._publisher = _Publisher(
            url, stream_keys(prefix), buffer_size=buffer_size, maxlen=maxlen, replay_keep=replay_keep
        )

    def emit(
        self,
        event_type: EventType | str,
        *,
        session_id: str | None = None,
        high_priority: bool | None = None,
        **fields: Any,
    ) -> BaseEvent:
        """Validate, encode and buffer an event for Redis; never blocks.

        Returns the event with ``seq`` 0 (Redis stamps the seq when it
        publishes; the event is dropped, and counted, if the buffer is full).

        Raises:
            InvalidEventError (a TypeError and a ValueError): unknown type or
                a bad field, as ``EventBus.emit``; ``EventTooLargeError`` (a
                subclass) over ``max_event_size``.
        """
        cls, values, body, session_id, session_json, high_priority = prepare_event(
            event_type, session_id, high_priority, fields, self.max_event_size
        )
        timestamp = time.time()
        self._publisher.submit(
            (timestamp, cls.type_name, session_id, session_json, high_priority, body, None)
        )
        return cls(seq=0, timestamp=timestamp, session_id=session_id, **values)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event emitted so far is in Redis; False on timeout."""
        return self._publisher.flush(timeout)

    def close(self, timeout: float = 5.0) -> bool:
        """Publish what is buffered (for at most ``timeout`` seconds) and stop
        the publisher thread. Idempotent; emitting again restarts it."""
        return self._publisher.close(timeout)

    def ready(self) -> tuple[bool, str]:
        """``(True, "ok")`` or ``(False, reason)`` while Redis does not accept events."""
        down = self._publisher.down
        return (False, down) if down else (True, "ok")

    def stats(self) -> EmitterStats:
        """Counters: published, dropped, buffered, batches, publish errors."""
        return {
            "epoch": self._publisher.epoch,
            "last_seq": self._publisher.last_seq,
            **self._publisher.stats(),
        }

    @property
    def epoch(self) -> str | None:
        """The stream's epoch as of the last published batch (None before)."""
        return self._publisher.epoch

    @property
    def last_seq(self) -> int:
        """The highest seq Redis gave this emitter's events so far."""
        return self._publisher.last_seq

    def __enter__(self) -> RedisEmitter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RedisEmitter prefix={self.prefix!r} epoch={self.epoch}>"


class _Resync(Exception):
    """The node must reload the stream (epoch changed, or it fell behind)."""


class RedisBackplane:
    """A server node's side of the Redis backplane.

    :meth:`attach` makes it the bus's sequencer (``emit()`` on the node goes
    to Redis like any emitter's) and archive (``stored_history`` reads older
    events with ``XRANGE``); :meth:`start` starts the reader, which follows
    the stream and feeds the bus. ``CodaWebSocketServer(backplane=URL)`` does
    all of this.

    Args:
        url: ``redis://host:port/db`` (also ``rediss://``, ``unix://``).
        prefix: the key prefix shared with the emitters and the other nodes.
        buffer_size: events this node may buffer while Redis is slow or unreachable.
        maxlen: approximate bound of the stream, in events.
        replay_keep: high-priority events Redis keeps for replay buffers.
        block: seconds one ``XREAD`` waits for new entries; also how soon a
            node notices that Redis lost the stream while nothing is emitted.
        read_count: most entries taken per ``XREAD``.

    Thread safety: all methods may be called from any thread. Threads:
    ``coda-ws-redis-reader`` (started by :meth:`start`) and
    ``coda-ws-redis-publisher`` (started by the first event); :meth:`close`
    joins both.
    """

    def __init__(
        self,
        url: str,
        prefix: str = DEFAULT_PREFIX,
        *,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        maxlen: int = DEFAULT_MAXLEN,
        replay_keep: int = DEFAULT_REPLAY_KEEP,
        block: float = 1.0,
        read_count: int = 1000,
    ) -> None:
        _import_redis()
        if not isinstance(url, str) or not url:
            raise ValueError(f"url must be a redis:// URL, got {url!r}")
        number("block", block, minimum=0.01, maximum=60, unit="seconds")
        self.url = url
        self.prefix = prefix
        self._keys = stream_keys(prefix)
        self._publisher = _Publisher(
            url, self._keys, buffer_size=buffer_size, maxlen=maxlen, replay_keep=replay_keep
        )
        self.block = float(block)
        self.read_count = read_count
        self._bus: EventBus | None = None

        # _lock guards the reader's lifecycle and state below; _ingested (on
        # the same lock) is notified whenever the bus's head moves.
        self._lock = threading.Lock()
        self._ingested = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None
        self._synced = threading.Event()
        self._epoch: str | None = None  # the epoch of the stream the bus follows
        self._reader_error: str | None = "backplane not started"
        self._client_id: int | None = None
        self._query_client: Redis | None = None
        self._counters: collections.Counter[str] = collections.Counter()

    # -- wiring -------------------------------------------------------------------

    def attach(self, bus: EventBus) -> None:
        """Make this backplane ``bus``'s sequencer and archive (once, before
        anything is emitted on the bus)."""
        if self._bus is not None:
            raise RuntimeError("this backplane is already attached to a bus")
        bus.set_sequencer(self)
        bus.archive = self
        self._bus = bus

    def publish(
        self,
        timestamp: float,
        type_name: str,
        session_id: str | None,
        session_json: bytes,
        high_priority: bool,
        body: bytes,
        target: str | None,
    ) -> None:
        """The bus's sequencer hook: buffer the event for Redis; never blocks."""
        self._publisher.submit((timestamp, type_name, session_id, session_json, high_priority, body, target))

    # -- lifecycle ----------------------------------------------------------------

    def start(self, ready_timeout: float | None = 2.0) -> bool:
        """Start following the stream; wait up to ``ready_timeout`` seconds
        for the first load. Idempotent. Returns True once synced (False:
        Redis unreachable so far; the reader keeps trying)."""
        if self._bus is None:
            raise RuntimeError("attach the backplane to a bus before starting it")
        with self._lock:
            if self._thread is None:
                self._stop = stop = threading.Event()
                self._synced.clear()
                self._reader_error = "backplane not yet synced with Redis"
                # daemon, as the publisher; close() (and so the server's stop()) joins it.
                self._thread = threading.Thread(
                    target=self._read_loop, args=(stop,), name="coda-ws-redis-reader", daemon=True
                )
                self._thread.start()
        return self._synced.wait(ready_timeout)

    def close(self, timeout: float = 5.0) -> bool:
        """Publish what is buffered, stop the reader, join both threads.

        Idempotent; returns within about ``timeout`` seconds even when Redis
        is unreachable (buffered events are then counted as dropped)."""
        deadline = Deadline(timeout)
        published = self._publisher.close(timeout * 0.6)
        with self._lock:
            thread, stop = self._thread, self._stop
            self._thread = None
        if thread is None or stop is None:  # set together: both or neither
            return published
        stop.set()
        # Wake an XREAD blocked on the server; repeated in case the reader
        # was between commands when the first one arrived.
        while thread.is_alive() and not deadline.expired:
            client_id = self._client_id  # the reader's connection (it changes on reconnect)
            if client_id is not None:
                with contextlib.suppress(*_connection_errors()):
                    self._query().client_unblock(client_id)
            thread.join(min(0.1, deadline.left()))
        self._synced.clear()
        with self._lock:
            query, self._query_client = self._query_client, None
        if query is not None:
            _close_client(query)
        return published and not thread.is_alive()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event emitted on this node is published and back
        in its bus (so its clients have it). False after ``timeout`` seconds."""
        deadline = Deadline(timeout)
        if not self._publisher.flush(timeout):
            return False
        bus = self._bus
        if bus is None:  # not attached: no bus to wait for
            return True
        target, epoch = self._publisher.last_seq, self._publisher.epoch
        with self._ingested:
            while bus.head < target and self._epoch == epoch:
                remaining = deadline.remaining()
                if deadline.expired:
                    return False
                self._ingested.wait(remaining)
        return True

    # -- the reader thread --------------------------------------------------------

    def _read_loop(self, stop: threading.Event) -> None:
        client: Redis | None = None
        backoff = _MIN_BACKOFF
        resync: str | None = None
        logged = False  # the current outage was logged
        errors = _connection_errors()
        try:
            while not stop.is_set():
                try:
                    if client is None:
                        client = _client(self.url, self.block + 5.0, "coda-ws-reader")
                        self._client_id = client.client_id()
                        self._sync(client, force=False)
                    elif resync is not None:
                        self._sync(client, force=True)
                    resync = None
                    self._read_once(client)
                    backoff = _MIN_BACKOFF
                    logged = False
                except _Resync as why:
                    resync = str(why)
                    self._counters["resyncs"] += 1
                    log.warning("backplane node reloading the stream: %s", why)
                except errors as exc:
                    if client is not None:
                        _close_client(client)
                        client = None
                    self._client_id = None
                    self._counters["reader_errors"] += 1
                    if not logged:
                        logged = True
                        log.warning("backplane reader cannot reach Redis (%s); retrying", exc)
                    self._synced.clear()
                    self._reader_error = f"redis unreachable: {exc}"
                    stop.wait(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF)
                except Exception as exc:
                    # An entry this node cannot read (written to the stream by something other
                    # than coda_ws, or damaged): the reader must not die of it. Say so once per
                    # episode, stay unready (/readyz names it), back off and reload the stream.
                    self._counters["reader_errors"] += 1
                    if not logged:
                        logged = True
                        log.exception("backplane reader cannot read the shared stream; reloading it")
                    self._synced.clear()
                    self._reader_error = f"cannot read the shared stream: {exc!r}"
                    resync = f"after {exc!r}"
                    stop.wait(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF)
        finally:
            if client is not None:
                _close_client(client)
            self._synced.clear()
            self._reader_error = "backplane stopped"

    def _sync(self, client: Redis, force: bool) -> None:
        """Make sure the stream has an epoch; (re)load it into the bus when it
        is not the one the bus follows, or when ``force``."""
        bus = self._bus
        assert bus is not None  # attached: start(), which runs the reader, requires it
        keys = self._keys
        epoch, _ = client.eval(
            _ENSURE_SCRIPT, 3, keys["meta"], keys["stream"], keys["replay"], uuid.uuid4().hex
        )
        epoch = epoch.decode()
        if epoch == self._epoch and not force:
            self._mark_synced()  # reconnected to the stream we follow: carry on from the head
            return
        pipe = client.pipeline(transaction=True)  # one consistent snapshot
        pipe.hmget(keys["meta"], "epoch", "seq")
        pipe.xrevrange(keys["stream"], "+", "-", count=bus.history_size)
        if bus.max_replay_events:
            pipe.lrange(keys["replay"], 0, bus.max_replay_events - 1)
        results = pipe.execute()
        (epoch_now, last_seq), entries = results[0], results[1]
        replay = results[2][::-1] if bus.max_replay_events else []
        if epoch_now is None or epoch_now.decode() != epoch:
            raise _Resync("the stream changed while loading it")
        events = [_stamped(entry_id, fields) for entry_id, fields in reversed(entries)]
        last_seq = int(last_seq)
        if events and events[-1].seq > last_seq:
            last_seq = events[-1].seq
        if self._epoch is not None and epoch != self._epoch:
            self._counters["epoch_changes"] += 1
            log.warning(
                "backplane stream epoch changed from %s to %s: Redis lost the stream; clients resume "
                "with epoch_changed",
                self._epoch,
                epoch,
            )
        bus.restore(epoch, last_seq, events, replay, first_seq=events[0].seq if events else last_seq + 1)
        with self._ingested:
            self._epoch = epoch
            self._ingested.notify_all()
        self._counters["loads"] += 1
        log.info("backplane node following %s (epoch %s) from seq %d", keys["stream"], epoch, last_seq)
        self._mark_synced()

    def _mark_synced(self) -> None:
        self._reader_error = None
        self._synced.set()

    def _read_once(self, client: Redis) -> None:
        bus = self._bus
        assert bus is not None  # attached: start(), which runs the reader, requires it
        keys = self._keys
        head = bus.head
        pipe = client.pipeline(transaction=False)
        pipe.hget(keys["meta"], "epoch")
        pipe.xread({keys["stream"]: b"%d-0" % head}, count=self.read_count, block=int(self.block * 1000))
        epoch, result = pipe.execute()
        following = self._epoch
        assert following is not None  # _sync() set it before the reader's first read
        expected = following.encode()
        if epoch != expected:
            raise _Resync("the stream's epoch changed (Redis lost it)")
        if not result:
            return
        entries = result[0][1]
        events = []
        for entry_id, fields in entries:
            if fields.get(b"e") != expected:
                raise _Resync("entries of another epoch in the stream")
            events.append(_stamped(entry_id, fields))
        if events[0].seq != head + 1:
            raise _Resync(f"fell behind: the stream no longer holds seq {head + 1}")
        bus.ingest(events)
        self._counters["ingested"] += len(events)
        with self._ingested:
            self._ingested.notify_all()

    # -- archive (EventBus.stored_history) ------------------------------------------

    def _query(self) -> Redis:
        """A pooled client for archive reads and CLIENT UNBLOCK (thread-safe; connects lazily)."""
        with self._lock:
            if self._query_client is None:
                self._query_client = _client(self.url, 5.0, "coda-ws-query")
            return self._query_client

    @property
    def covered_seq(self) -> int:
        """Everything up to the bus's head is in the stream (unless trimmed)."""
        return self._bus.head if self._bus is not None else 0

    def read(
        self,
        since: int = 0,
        event_filter: EventFilter | None = None,
        limit: int | None = None,
        until: int | None = None,
        page: int = 1000,
    ) -> list[Entry]:
        """Events of the stream with ``since < seq <= until``, oldest first.

        :class:`~coda_ws.bus.Entry` objects, filtered, events for a single
        client excluded, at most ``limit``. Blocking ``XRANGE`` calls in the
        caller's thread.
        """
        stream = self._keys["stream"]
        expected = (self._epoch or "").encode()
        out: list[Entry] = []
        start = since + 1
        while until is None or start <= until:
            entries = cast(
                _StreamEntries,
                self._query().xrange(  # bytes: the client does not decode
                    stream, min=b"%d-0" % start, max=b"+" if until is None else b"%d-0" % until, count=page
                ),
            )
            for entry_id, fields in entries:
                if fields.get(b"e") != expected:
                    continue
                event = _stamped(entry_id, fields)
                if event.target is not None:
                    continue
                if event_filter is not None and not event_filter.match(event.type, event.session_id):
                    continue
                entry = entry_from_wire(event)[0]
                if entry.target is None:
                    out.append(entry)
                    if limit is not None and len(out) >= limit:
                        return out
            if len(entries) < page:
                break
            start = int(entries[-1][0].partition(b"-")[0]) + 1
        return out

    # -- health -------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        """``(True, "ok")``, or ``(False, reason)`` while the node is not
        following the stream or cannot publish (for ``/readyz``)."""
        if not self._synced.is_set():
            return False, self._reader_error or "backplane not yet synced with Redis"
        down = self._publisher.down
        if down:
            return False, down
        return True, "ok"

    def stats(self) -> BackplaneStats:
        """Counters: the publisher's (published, dropped, buffered, batches,
        publish errors) and the reader's (ingested, loads, resyncs, epoch
        changes, reader errors), plus the epoch and whether it is synced."""
        counters = self._counters
        return {
            "epoch": self._epoch,
            "synced": self._synced.is_set(),
            "ingested": counters["ingested"],
            "loads": counters["loads"],
            "resyncs": counters["resyncs"],
            "epoch_changes": counters["epoch_changes"],
            "reader_errors": counters["reader_errors"],
            **self._publisher.stats(),
        }

    def __repr__(self) -> str:
        return f"<RedisBackplane prefix={self.prefix!r} epoch={self._epoch}>"
