"""The exceptions coda_ws raises, all under one base class.

``CodaWSError`` is the root. Bad arguments raise the built-in ``TypeError`` or
``ValueError``; :class:`InvalidEventError` is both, so code written for either
convention catches it.
"""

__all__ = ["CodaWSError", "InvalidEventError", "JournalError"]


class CodaWSError(Exception):
    """Base class of every exception coda_ws defines."""


class InvalidEventError(CodaWSError, TypeError, ValueError):
    """An event could not be built: unknown type, or a field missing, unknown,
    of the wrong kind, or not encodable as JSON.

    Attributes:
        event_type: the event type concerned, or ``None`` when unknown.
        field: the offending field name, or ``None`` when the problem is the
            type itself.
    """

    def __init__(self, message, event_type=None, field=None):
        super().__init__(message)
        self.event_type = event_type
        self.field = field


class JournalError(CodaWSError):
    """A journal file cannot be used: it is not a coda_ws journal, it is
    damaged, or it cannot be opened. The message names the file, what is
    wrong and what to do.

    Attributes:
        path: the journal file.
    """

    def __init__(self, message, path=None):
        super().__init__(message)
        self.path = path
