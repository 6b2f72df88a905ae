"""A fixed-bucket histogram that hot paths can feed for the cost of a deque append.

:class:`FixedHistogram` counts observations in buckets chosen up front (the
Prometheus model: cumulative counts per upper bound, a sum and a count). It
has two ways in:

* :meth:`FixedHistogram.observe_many` / :meth:`FixedHistogram.observe`, for
  code that is not on a hot path (the bus dispatcher, the metrics listener);
* :attr:`FixedHistogram.pending`, a bounded ``collections.deque`` of raw
  samples. Appending to it is atomic and takes no lock, so ``emit()`` records
  its own duration for about the cost of one ``perf_counter_ns()`` call and one
  append. :meth:`FixedHistogram.drain` folds the waiting samples into the
  buckets; the bus dispatcher calls it once a few hundred samples wait, and
  :meth:`FixedHistogram.snapshot` calls it so a scrape sees every sample
  recorded before it.

No dependency on prometheus_client: the bus uses this module, and
:mod:`coda_ws.metrics` turns snapshots into Prometheus histograms.
"""

import bisect
import collections
import threading
from collections.abc import Iterable
from typing import NamedTuple

__all__ = ["DISPATCH_LAG_BUCKETS", "EMIT_DURATION_BUCKETS", "FixedHistogram", "HistogramSnapshot"]

#: Upper bounds, in seconds, for the caller-side cost of ``emit()``.
EMIT_DURATION_BUCKETS = (
    1e-6,
    2.5e-6,
    5e-6,
    1e-5,
    2.5e-5,
    5e-5,
    1e-4,
    2.5e-4,
    5e-4,
    1e-3,
    2.5e-3,
    5e-3,
    1e-2,
    2.5e-2,
    5e-2,
    0.1,
)

#: Upper bounds, in seconds, for the time from ``emit()`` to fan-out.
DISPATCH_LAG_BUCKETS = (
    1e-4,
    2.5e-4,
    5e-4,
    1e-3,
    2.5e-3,
    5e-3,
    1e-2,
    2.5e-2,
    5e-2,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class HistogramSnapshot(NamedTuple):
    """A consistent copy of a histogram.

    ``bounds``: the finite upper bounds (ascending); ``cumulative``: for each
    bound the number of observations ``<=`` it, then the total (the ``+Inf``
    bucket); ``sum``: the sum of all observations; ``count``: equal to
    ``cumulative[-1]``.
    """

    bounds: tuple[float, ...]
    cumulative: list[int]
    sum: float
    count: int  # type: ignore[assignment]  # shadows tuple.count, as collections.namedtuple did


class FixedHistogram:
    """Observations counted in fixed buckets.

    Args:
        bounds: finite upper bounds, strictly ascending (values in the unit
            the histogram reports, for example seconds).
        scale: factor applied to raw samples taken from :attr:`pending`
            (``1e-9`` when they are nanoseconds); ``observe`` values are not
            scaled.
        pending_max: most raw samples that may wait in :attr:`pending`; when a
            drain comes later than that the oldest waiting samples are lost
            (only when nothing drains for that many samples).

    Raises:
        ValueError: ``bounds`` is empty, not ascending, or ``pending_max`` < 1.

    Thread-safety: :attr:`pending` may be appended to from any thread without
    a lock. Every other method takes the histogram's own lock, which is held
    only for arithmetic (never across I/O or callbacks).
    """

    def __init__(self, bounds: Iterable[float], scale: float = 1.0, pending_max: int = 65536) -> None:
        bounds = tuple(float(b) for b in bounds)
        if not bounds or any(b >= c for b, c in zip(bounds, bounds[1:])):
            raise ValueError(f"bounds must be a non-empty ascending sequence, got {bounds!r}")
        if not isinstance(pending_max, int) or pending_max < 1:
            raise ValueError(f"pending_max must be a positive integer, got {pending_max!r}")
        self.bounds = bounds
        self.scale = scale
        #: Raw samples waiting to be counted (append from any thread).
        self.pending: collections.deque[float] = collections.deque(maxlen=pending_max)
        # _lock guards _counts and _sum, and makes draining single-threaded.
        self._lock = threading.Lock()
        self._counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self._sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (already in the histogram's unit)."""
        with self._lock:
            self._counts[bisect.bisect_left(self.bounds, value)] += 1
            self._sum += value

    def observe_many(self, values: Iterable[float]) -> None:
        """Count several observations (already in the histogram's unit)."""
        bounds, counts = self.bounds, self._counts
        find = bisect.bisect_left
        with self._lock:
            total = self._sum
            for value in values:
                counts[find(bounds, value)] += 1
                total += value
            self._sum = total

    def drain(self) -> int:
        """Fold the raw samples waiting in :attr:`pending` into the buckets.

        Returns how many samples were counted.
        """
        pending = self.pending
        if not pending:
            return 0
        bounds, counts, scale = self.bounds, self._counts, self.scale
        find = bisect.bisect_left
        pop = pending.popleft
        with self._lock:
            # Only drains pop, and they hold the lock: the deque has at least
            # `count` items however many producers append meanwhile.
            count = len(pending)
            total = self._sum
            for _ in range(count):
                value = pop() * scale
                counts[find(bounds, value)] += 1
                total += value
            self._sum = total
        return count

    def snapshot(self) -> HistogramSnapshot:
        """Drain, then return a :class:`HistogramSnapshot` (bucket counts,
        ``+Inf`` count, sum and count taken together under the lock)."""
        self.drain()
        with self._lock:
            counts = list(self._counts)
            total = self._sum
        cumulative = []
        running = 0
        for count in counts:
            running += count
            cumulative.append(running)
        return HistogramSnapshot(self.bounds, cumulative, total, running)
