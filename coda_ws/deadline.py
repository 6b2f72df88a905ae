"""One deadline shared across several blocking steps.

``stop(timeout)`` flushes, closes clients, joins threads and closes the
journal: each step may take what the previous ones left of one timeout.
:class:`Deadline` says how much that is, instead of repeating
``deadline - time.monotonic()`` (and forgetting the ``max(0, ...)``) at every
step.
"""

import time

__all__ = ["Deadline"]


class Deadline:
    """A moment on the monotonic clock, or never.

    Args:
        timeout: seconds from now; None for no deadline.
    """

    __slots__ = ("_at",)

    def __init__(self, timeout: float | None) -> None:
        self._at = None if timeout is None else time.monotonic() + timeout

    @classmethod
    def at(cls, moment: float | None) -> "Deadline":
        """The deadline at ``moment`` (a ``time.monotonic()`` value; None: never)."""
        deadline = cls(None)
        deadline._at = moment
        return deadline

    def remaining(self) -> float | None:
        """Seconds left, never negative; None when there is no deadline
        (what ``Thread.join``, ``Event.wait`` and ``Condition.wait`` take)."""
        if self._at is None:
            return None
        return max(0.0, self._at - time.monotonic())

    def left(self, floor: float = 0.0) -> float:
        """Seconds left as a number, at least ``floor`` (no deadline: infinity)."""
        remaining = self.remaining()
        return float("inf") if remaining is None else max(floor, remaining)

    @property
    def expired(self) -> bool:
        """True once the moment has passed (never without a deadline)."""
        return self._at is not None and time.monotonic() >= self._at

    def earlier(self, seconds: float) -> "Deadline":
        """The deadline ``seconds`` before this one (a grace period's end)."""
        return Deadline.at(None if self._at is None else self._at - seconds)

    def __repr__(self) -> str:
        return (
            "<Deadline never>" if self._at is None else f"<Deadline in {self._at - time.monotonic():.3f} s>"
        )
