"""Ctrl-C and SIGTERM for the command-line tools: ``interruptible()`` makes both
raise KeyboardInterrupt in the main thread while a server or a tool runs;
``ignoring_interrupts()`` ignores both while it shuts down."""

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["ignoring_interrupts", "interruptible"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt in the main thread.

    Installed explicitly because a process started in the background by a
    non-interactive shell inherits SIGINT ignored; restored on exit. Off the
    main thread (``main()`` called from a test's thread) signals are left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def ignoring_interrupts() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM while shutting down (every step is bounded
    by its own timeout), so a second Ctrl-C cannot leave threads behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
