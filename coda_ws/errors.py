"""The exceptions coda_ws raises, all under one base class.

``CodaWSError`` is the root. Bad arguments raise the built-in ``TypeError`` or
``ValueError``; :class:`InvalidEventError` is both, so code written for either
convention catches it.
"""

__all__ = [
    "ClientConnectionError",
    "CodaWSError",
    "EventTooLargeError",
    "HandshakeRefused",
    "HandshakeRejected",
    "InvalidEventError",
    "JournalError",
    "ToolError",
    "WriteTimeout",
]


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

    def __init__(self, message: str, event_type: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.event_type = event_type
        self.field = field


class EventTooLargeError(InvalidEventError):
    """An event whose encoded form is larger than ``max_event_size``.

    Attributes:
        size: the event's encoded size in bytes (an upper bound of its wire JSON).
        limit: the ``max_event_size`` it exceeded, in bytes.
    """

    def __init__(self, message: str, event_type: str | None = None, size: int = 0, limit: int = 0) -> None:
        super().__init__(message, event_type=event_type)
        self.size = size
        self.limit = limit


class HandshakeRefused(CodaWSError):
    """A request the server refuses before its view or the WebSocket upgrade
    runs (docs/protocol.md section 1); the server answers it as JSON.

    Attributes:
        status: the HTTP status (400, 401, 403, 421, 501, 503).
        code: the short error code of the JSON body (``"forbidden_host"``, ...).
        message: the sentence of the JSON body.
        reason: what the server counts it as (``"host"``, ``"origin"``), or None.
    """

    def __init__(self, status: int, code: str, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.reason = reason


class ClientConnectionError(CodaWSError, ConnectionError):
    """The client could not connect, or gave up reconnecting.

    Raised from :meth:`CodaEventClient.get` and iteration once the events
    received before the failure have been consumed.
    """


class HandshakeRejected(ClientConnectionError):
    """The server refused the WebSocket handshake with an HTTP status.

    Attributes:
        status: the HTTP status code (401, 403, 503...).
        code: the ``error`` field of the server's JSON body, or ``None``.
        message: the server's explanation (its ``message`` field, or the body).
    """

    def __init__(self, status: int, code: str | None = None, message: str | None = None) -> None:
        self.status, self.code, self.message = status, code, message
        detail = f"{code}: {message}" if code and message else (message or code or "no details")
        super().__init__(f"server refused the WebSocket connection with HTTP {status} ({detail})")


class JournalError(CodaWSError):
    """A journal file cannot be used: it is not a coda_ws journal, it is
    damaged, or it cannot be opened. The message names the file, what is
    wrong and what to do.

    Attributes:
        path: the journal file.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class WriteTimeout(CodaWSError, OSError):
    """A client accepted no data for longer than the write timeout
    (``ping_timeout``); the server drops it. An ``OSError`` too, like every
    other way a write to a client can fail."""


class ToolError(CodaWSError):
    """A stream tool (``tail``, ``record``, ``play``) could not do its job;
    the message is meant for the user.

    Attributes:
        exit_code: what the ``coda-ws`` command exits with (2: bad arguments,
            1: anything else).
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
