"""Where the stream is kept beyond memory: a journal (one process) or a
backplane (several nodes sharing one stream through Redis), exclusive of each
other. The server opens one from its settings, starts it with the bus and
closes it after the bus's last dispatch."""

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .bus import EventBus

if TYPE_CHECKING:
    from .journal import Journal

__all__ = ["Backplane", "close_persistence", "open_persistence"]


class Backplane(Protocol):
    """What the server uses of its backplane: a
    :class:`~coda_ws.backplane.RedisBackplane`, or any object with these
    methods (``backplane=`` accepts one; see :func:`~coda_ws.backplane.open_backplane`)."""

    def attach(self, bus: EventBus, /) -> object: ...

    def start(self, ready_timeout: float = ...) -> bool: ...

    def flush(self, timeout: float | None = ..., /) -> object: ...

    def close(self, timeout: float = ..., /) -> object: ...

    def ready(self) -> tuple[bool, str | None]: ...

    def stats(self) -> Mapping[str, Any]: ...


def open_persistence(settings: Mapping[str, Any], bus: EventBus) -> "tuple[Journal | None, Backplane | None]":
    """Open the journal or the backplane the settings name (``journal``,
    ``backplane`` and their options) and plug it into ``bus``.

    Raises:
        ValueError: both given, or journal options beside a ready-made Journal.
        CodaWSError: the journal or the backplane cannot be opened.
    """
    journal, backplane = settings["journal"], settings["backplane"]
    if journal is not None and backplane is not None:
        raise ValueError("journal and backplane are exclusive: with a backplane, Redis holds the stream")
    if journal is not None:
        from .journal import Journal  # sqlite3 and the journal only for those who use one

        if isinstance(journal, Journal):
            if settings["journal_max_events"] is not None or settings["journal_max_age"] is not None:
                raise ValueError(
                    "journal_max_events and journal_max_age apply to a journal path; give them "
                    "to the Journal object instead"
                )
        else:
            journal = Journal(
                journal,
                max_events=settings["journal_max_events"],
                max_age=settings["journal_max_age"],
                flush_interval=settings["journal_flush_interval"],
            )
        journal.attach(bus)
        return journal, None
    if backplane is not None:
        from .backplane import open_backplane  # redis only for those who use it

        opened: Backplane = open_backplane(backplane, settings["backplane_prefix"])
        opened.attach(bus)
        return None, opened
    return None, None


def close_persistence(journal: "Journal | None", backplane: Backplane | None, timeout: float) -> None:
    """After the bus's last dispatch: commit the journal, or publish this
    node's last events and stop following the backplane."""
    if journal is not None:
        journal.close(timeout)
    if backplane is not None:
        backplane.close(timeout)
