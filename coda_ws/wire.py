"""The wire format: an event as it travels, is stored and comes back.

Every event is one flat JSON object (``docs/protocol.md`` section 2):
``WIRE_HEAD + seq digits + wire_tail(timestamp, type, session, fields)``.
The parts that can fail (validating the fields, encoding them and the session
id, the size limit) are done once, in the caller's thread, by
:func:`prepare_event`; what is left once a seq is known (joining bytes,
framing) cannot fail.

This module holds the names the bus, the journal, the backplane and the HTTP
API share:

* :func:`prepare_event`: ``emit()``'s caller-side half, used by
  ``EventBus.emit``, ``RedisEmitter.emit`` and ``POST /events`` (through emit);
* :data:`WIRE_HEAD`, :func:`wire_tail`: the bytes around the seq (a backplane's
  sequencer joins them in Redis);
* :class:`Entry`: one event in the history ring, framed once for every reader,
  with its redacted variant built at most once;
* :class:`StampedEvent` and :func:`entry_from_wire`: an event whose seq was
  stamped elsewhere (a journal row, a Redis stream entry) back into an entry;
* :class:`Hole`: a position no reader receives;
* :class:`EventDict` and :func:`redact_event`: events in dict form (the replay
  buffer), and their redacted copies.
"""

import json
import logging
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from . import framing
from ._fastjson import encode_json
from .errors import EventTooLargeError, InvalidEventError
from .events import (
    DEFAULT_MAX_EVENT_SIZE,
    BaseEvent,
    EventType,
    build_fields,
    encode_fields,
    encode_session_id,
    event_class,
    registered_event_types,
)

__all__ = [
    "WIRE_HEAD",
    "Entry",
    "EventDict",
    "Hole",
    "StampedEvent",
    "Unregistered",
    "entry_from_wire",
    "new_entry",
    "prepare_event",
    "redact_event",
    "wire_tail",
]

log = logging.getLogger("coda_ws.bus")

_ENVELOPE_KEYS = frozenset({"version", "seq", "timestamp", "type", "session_id", "redacted"})

#: The most wire JSON an event takes besides its fields, type name and session
#: id: the envelope's keys and punctuation, a seq of up to 20 digits and a
#: timestamp's repr of up to 24 characters.
_ENVELOPE_BYTES = len(b'{"version":"1.0","seq":,"timestamp":,"type":"","session_id":}') + 20 + 24


#: An event's wire JSON is ``WIRE_HEAD + seq digits + wire_tail(...)``.
WIRE_HEAD = b'{"version":"1.0","seq":'

#: Event classes by type name (plain strings that :func:`event_class` has
#: already resolved), and session ids' wire JSON: ``emit()``'s two lookups
#: that need no work after the first time (0.3 µs each measured here). Only
#: names that resolved go in the first (bounded by the known types); the
#: second keeps at most :data:`_MAX_SESSIONS` ids, then encodes the others
#: per call as before. Plain ``str`` keys only: subclasses take the checked path.
_CLASSES: dict[str, type[BaseEvent]] = {}
_SESSIONS: dict[str, bytes] = {}
_MAX_SESSIONS = 1024

#: What :func:`prepare_event` returns: ``(cls, values, body, session_id,
#: session_json, high_priority)``.
_Prepared = tuple[type[BaseEvent], dict[str, Any], bytes, str | None, bytes, bool]


def prepare_event(
    event_type: EventType | str,
    session_id: str | None,
    high_priority: bool | None,
    fields: dict[str, Any],
    max_event_size: int | None = DEFAULT_MAX_EVENT_SIZE,
) -> _Prepared:
    """Everything ``emit()`` does in the caller's thread, in one place.

    Validates and coerces the fields, encodes them and the session id, and
    checks the encoded size, so that every way an event can fail, fails here
    (encoding is complete in the caller: docs/architecture.md); what comes
    back can always be stamped and framed. Used by ``EventBus.emit``, ``RedisEmitter``
    and ``POST /events`` (through ``emit``).

    Args:
        event_type: an :class:`EventType` or its string value.
        session_id: a string or None.
        high_priority: True, False, or None for the type's default.
        fields: the type's fields (a dict; consumed).
        max_event_size: the largest encoded event, in bytes (None: no limit).

    Returns:
        A plain tuple ``(cls, values, body, session_id, session_json,
        high_priority)`` (a tuple, not an object: this is ``emit()``'s hot
        path): ``values`` the coerced fields in wire order, ``body`` their
        UTF-8 JSON object, ``session_json`` the session id as UTF-8 JSON
        (``b"null"`` for None).

    Raises:
        InvalidEventError: an unknown type, a bad field or session id, or a
            value that cannot be encoded (NaN, a lone surrogate, ...).
        EventTooLargeError: the encoded event is over ``max_event_size``.
    """
    # Long: the docstring is the contract of emit()'s caller-side half; the code is emit()'s hot
    # path, kept in one frame on purpose (a call per step costs measurably per event).
    cls = _CLASSES.get(event_type) if type(event_type) is str else None
    if cls is None:
        cls = event_class(event_type)
        if type(event_type) is str:
            _CLASSES[event_type] = cls
    values = build_fields(cls, fields)
    body = encode_fields(cls, values)
    type_name = cls.type_name
    if session_id is None:
        session_json = b"null"
    else:
        cached = _SESSIONS.get(session_id) if type(session_id) is str else None
        if cached is not None:
            session_json = cached
        else:
            session_id, session_json = encode_session_id(session_id, type_name)
            if type(session_id) is str:
                if len(_SESSIONS) >= _MAX_SESSIONS:
                    _SESSIONS.clear()  # start over with the sessions in use now, not the first ones seen
                _SESSIONS[session_id] = session_json
    if high_priority is None:
        high_priority = cls.high_priority
    elif high_priority is not True and high_priority is not False:
        raise InvalidEventError(f"high_priority must be True, False or None, got {high_priority!r}")
    if max_event_size is not None:
        size = len(body) + len(session_json) + len(type_name) + _ENVELOPE_BYTES
        if size > max_event_size:
            raise EventTooLargeError(
                f"{type_name} event is {size} bytes encoded, over max_event_size ({max_event_size} bytes); "
                "send large payloads by reference, or raise max_event_size",
                event_type=type_name,
                size=size,
                limit=max_event_size,
            )
    return cls, values, body, session_id, session_json, high_priority


def wire_tail(timestamp: float, type_name: str, session_json: bytes, body: bytes) -> bytes:
    """An event's wire JSON after its seq: timestamp, type, session and the
    fields, in wire order. ``session_json`` and ``body`` come from
    :func:`prepare_event`; nothing here can fail for them."""
    return b',"timestamp":%s,"type":"%s","session_id":%s%s' % (
        repr(timestamp).encode(),
        type_name.encode(),
        session_json,
        b"," + body[1:] if len(body) > 2 else b"}",
    )


class EventDict(dict[str, Any]):
    """An event in dict form (the replay buffer holds these) that remembers its
    wire JSON, so replay frames reuse the bytes encoded at emit time."""

    __slots__ = ("wire",)
    wire: bytes


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
        "_redacted",
        "cls",
        "conflate_key",
        "frame",
        "high_priority",
        "offset",
        "seq",
        "session_id",
        "target",
        "timestamp",
        "type",
    )
    # Declared before `type`, which names an attribute in this class body. None
    # for an event whose type this process does not know (a journal's
    # history, served as it was stored, every field treated as content).
    cls: type[BaseEvent] | None
    seq: int
    timestamp: float
    type: str
    session_id: str | None
    high_priority: bool
    conflate_key: tuple[str, str | None] | None
    target: str | None
    frame: bytes
    offset: int
    _redacted: bytes | None

    def redacted_frame(self) -> bytes:
        """The frame for readers without ``read:content``: content fields set
        to null and ``"redacted": true``. Built once per event, on first use
        (two writers racing build identical bytes); events without content
        fields share their normal frame."""
        frame = self._redacted
        if frame is None:
            if self.cls is None or self.cls.content_fields:
                frame = framing.text_frame(encode_json(redact_event(self.to_dict())))
            else:
                frame = self.frame
            self._redacted = frame
        return frame

    @property
    def data(self) -> bytes:
        """The event's wire JSON (UTF-8 bytes)."""
        return self.frame[self.offset :]

    def to_dict(self) -> dict[str, Any]:
        """The event as a wire-ordered dict."""
        event: dict[str, Any] = json.loads(self.frame[self.offset :])
        return event

    def event(self) -> BaseEvent:
        """The event as its dataclass.

        Raises:
            InvalidEventError: the event's type is not registered in this process.
        """
        if self.cls is None:
            raise InvalidEventError(f"event type {self.type!r} is not registered", event_type=self.type)
        fields = self.to_dict()
        for key in ("version", "type"):
            del fields[key]
        return self.cls(**fields)

    def __repr__(self) -> str:
        return f"<Entry seq={self.seq} type={self.type}>"


def _known_class(type_name: object) -> type[BaseEvent] | None:
    """The class of a registered type name, or None (any other value: not a str, unknown)."""
    return registered_event_types().get(type_name) if isinstance(type_name, str) else None


def redact_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of an event dict with its content fields set to None and
    ``"redacted": True``. For a type this process does not know (an
    unregistered type read back from a journal) every field but the envelope
    is set to None: its content cannot be told apart from the rest."""
    redacted = dict(event)
    cls = _known_class(event.get("type"))
    if cls is not None:
        content: tuple[str, ...] = cls.content_fields
    else:
        content = tuple(name for name in redacted if name not in _ENVELOPE_KEYS)
    for name in content:
        if name in redacted:
            redacted[name] = None
    redacted["redacted"] = True
    return redacted


class StampedEvent(NamedTuple):
    """An event whose seq was stamped elsewhere (a journal, a backplane), as
    :meth:`EventBus.restore` and :meth:`EventBus.ingest` take it.

    Attributes:
        seq, timestamp, type, session_id: the envelope (``type`` a string).
        high_priority: kept in the replay buffer.
        payload: the event's wire JSON (UTF-8 bytes), envelope included: the
            very bytes sent to readers.
        target: a reader id for an event sent to a single reader, else None.
    """

    seq: int
    timestamp: float
    type: str
    session_id: str | None
    high_priority: bool
    payload: bytes
    target: str | None = None


def new_entry(
    seq: int,
    timestamp: float,
    cls: type[BaseEvent] | str,
    session_id: str | None,
    high_priority: bool,
    target: str | None,
    payload: bytes,
) -> Entry:
    """The :class:`Entry` for an event whose wire JSON is ``payload``; the one
    place entries are built, so emitted and stamped-elsewhere events are alike.
    ``cls`` is the event class, or the type's name for a type this process
    does not know (served as stored, never conflated, every field content)."""
    entry = Entry()
    entry.seq = seq
    entry.timestamp = timestamp
    if isinstance(cls, str):
        entry.type = type_name = cls
        entry.cls = None
        conflatable = False
    else:
        entry.type = type_name = cls.type_name
        entry.cls = cls
        conflatable = cls.conflatable
    entry.session_id = session_id
    entry.high_priority = high_priority and target is None
    entry.conflate_key = (type_name, session_id) if conflatable and target is None else None
    entry.target = target
    entry._redacted = None
    entry.frame = framing.text_frame(payload)
    entry.offset = len(entry.frame) - len(payload)
    return entry


#: What :func:`entry_from_wire` does with an event of a type this process
#: does not know: ``"refuse"`` it (a hole no reader receives: the backplane,
#: where every node must know every type) or serve it as stored, with every
#: field treated as content (``"generic"``: a journal's own history).
Unregistered = Literal["refuse", "generic"]


def entry_from_wire(
    event: StampedEvent, unregistered: Unregistered = "refuse"
) -> tuple["Entry | Hole", EventDict | None]:
    """Build the history entry for a :class:`StampedEvent`, framing it once.

    Returns ``(entry, record)``: ``record`` is the replay buffer's
    :class:`EventDict` for a high-priority event, else None. An event of a
    type this process does not know is, by ``unregistered``, refused (a
    hole: a position no reader receives, so the order of the others stays
    intact; its :attr:`Hole.refused` names the type, and the caller logs
    and counts it) or served as stored (``"generic"``).
    """
    cls: type[BaseEvent] | str | None = _known_class(event.type)
    if cls is None:  # a plain lookup: event_class()'s "did you mean" is for people, not for this path
        if unregistered != "generic" or not isinstance(event.type, str):
            return Hole(event.seq, event.type), None
        cls = event.type
    payload = bytes(event.payload)
    entry = new_entry(
        event.seq, event.timestamp, cls, event.session_id, bool(event.high_priority), event.target, payload
    )
    if entry.high_priority:
        record = EventDict(json.loads(payload))
        record.wire = payload
        return entry, record
    return entry, None


class Hole:
    """A position of the stream whose event no reader here may receive: an
    event sent to a single client that a journal did not keep, or one of an
    unknown type. Its ``target`` matches no reader, so readers, resume,
    replay and history skip it exactly like another client's ``send_to``
    event, and the seqs around it stay consecutive."""

    __slots__ = ("refused", "seq")
    seq: int
    #: The type of the event refused here (a type this process does not
    #: know), or None for a hole of any other cause.
    refused: str | None
    target: str = ""
    conflate_key: None = None
    high_priority: bool = False
    type: str = ""
    session_id: None = None

    def __init__(self, seq: int, refused: str | None = None) -> None:
        self.seq = seq
        self.refused = refused

    def __repr__(self) -> str:
        return f"<hole seq={self.seq}{f' refused {self.refused}' if self.refused else ''}>"
