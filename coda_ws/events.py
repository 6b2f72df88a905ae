"""Event types and the typed, validated event dataclasses.

Every event is a frozen dataclass whose fields are the wire keys, in wire order:
the envelope (``version``, ``seq``, ``timestamp``, ``type``, ``session_id``)
first, then the type's own fields in declaration order (docs/protocol.md section 2).

Validation happens once, when an event is built (:func:`create_event`,
:func:`validate_event`, ``EventBus.emit``), and is strict in the way the
original Coda interface was lenient only by accident:

* an ``int`` given for a ``float`` field becomes a float (``50`` -> ``50.0``);
* any other kind mismatch (a number for a string, ``1.5`` or ``True`` for an
  int) raises :class:`~coda_ws.errors.InvalidEventError`, which is both a
  ``TypeError`` and a ``ValueError``, naming the event type and the field;
* missing required fields and unknown fields raise too, except for
  ``system_info``, whose unknown keyword arguments go into ``data``;
* NaN and infinities are refused (they are not JSON).

The classes use dataclasses-json (``from_dict``, ``schema()``), but
:meth:`BaseEvent.to_dict` and :meth:`BaseEvent.to_json` are coda_ws's own:
they keep the wire key order and cost a fraction of the generic versions.
"""

import dataclasses
import difflib
import json
import math
import time
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from dataclasses_json import DataClassJsonMixin

from ._fastjson import encode_json
from .errors import InvalidEventError

__all__ = [
    "DEFAULT_MAX_EVENT_SIZE",
    "EVENT_CLASSES",
    "EVENT_VERSION",
    "PROTOCOL_VERSION",
    "BaseEvent",
    "ComponentErrorEvent",
    "ComponentHealthEvent",
    "ComponentStatusEvent",
    "ComponentTimingEvent",
    "ConversationEndEvent",
    "ConversationStartEvent",
    "ConversationTurnEvent",
    "EventType",
    "IntegrationMetricsEvent",
    "LLMErrorEvent",
    "LLMResultEvent",
    "LLMStartEvent",
    "LLMTokenEvent",
    "LatencyTraceEvent",
    "MemoryRetrieveEvent",
    "MemoryStoreEvent",
    "STTErrorEvent",
    "STTInterimEvent",
    "STTResultEvent",
    "STTStartEvent",
    "SystemErrorEvent",
    "SystemInfoEvent",
    "SystemMetricsEvent",
    "SystemStatusEvent",
    "TTSErrorEvent",
    "TTSProgressEvent",
    "TTSResultEvent",
    "TTSStartEvent",
    "TTSStatusEvent",
    "ToolCallEvent",
    "ToolErrorEvent",
    "ToolResultEvent",
    "create_event",
    "encode_json",
    "encode_session_id",
    "event_class",
    "validate_event",
]

#: Version of the client protocol (docs/protocol.md); bumped with breaking changes.
PROTOCOL_VERSION = 1
#: The ``version`` key every event carries.
EVENT_VERSION = "1.0"

_ENVELOPE: tuple[str, ...] = ("version", "seq", "timestamp", "type", "session_id")

#: Default bound of one event's encoded size, in bytes (``max_event_size``):
#: a long response or a tool result fits, a runaway blob does not.
DEFAULT_MAX_EVENT_SIZE = 1024 * 1024


class EventType(str, Enum):
    """Every event type of the original Coda interface, plus its later additions."""

    SYSTEM_INFO = "system_info"
    SYSTEM_ERROR = "system_error"
    SYSTEM_METRICS = "system_metrics"
    STT_START = "stt_start"
    STT_INTERIM = "stt_interim"
    STT_RESULT = "stt_result"
    STT_ERROR = "stt_error"
    LLM_START = "llm_start"
    LLM_TOKEN = "llm_token"
    LLM_RESULT = "llm_result"
    LLM_ERROR = "llm_error"
    TTS_START = "tts_start"
    TTS_PROGRESS = "tts_progress"
    TTS_RESULT = "tts_result"
    TTS_ERROR = "tts_error"
    TTS_STATUS = "tts_status"
    MEMORY_STORE = "memory_store"
    MEMORY_RETRIEVE = "memory_retrieve"
    TOOL_CALL = "tool_call"
    TOOL_RESULT = "tool_result"
    TOOL_ERROR = "tool_error"
    CONVERSATION_START = "conversation_start"
    CONVERSATION_TURN = "conversation_turn"
    CONVERSATION_END = "conversation_end"
    LATENCY_TRACE = "latency_trace"
    COMPONENT_TIMING = "component_timing"
    COMPONENT_STATUS = "component_status"
    COMPONENT_ERROR = "component_error"
    COMPONENT_HEALTH = "component_health"
    SYSTEM_STATUS = "system_status"
    INTEGRATION_METRICS = "integration_metrics"

    def __str__(self) -> str:
        return self.value


# --------------------------------------------------------------------------
# Field coercion. Each field gets one small function, chosen once per class
# from its annotation, that returns the wire value or raises.
# --------------------------------------------------------------------------

#: A field's coercion function: ``check(value, where)`` returns the wire value
#: or raises InvalidEventError naming ``where`` ("type.field").
_Check = Callable[[Any, str], Any]


def _kind(value: object) -> str:
    return type(value).__name__


def _check_float(value: Any, where: str) -> float:
    if type(value) is float:  # `type(value) is` (not a saved type): mypy narrows value to float
        if value != value or value in (math.inf, -math.inf):
            raise InvalidEventError(f"{where} must be a finite number, got {value!r}")
        return value
    if type(value) is int or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        number = float(value)
        if not math.isfinite(number):
            raise InvalidEventError(f"{where} must be a finite number, got {number!r}")
        return number

    raise InvalidEventError(f"{where} must be a number, got {_kind(value)} {value!r}")


def _check_int(value: Any, where: str) -> int:
    if type(value) is int:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    raise InvalidEventError(f"{where} must be an integer, got {_kind(value)} {value!r}")


def _check_str(value: Any, where: str) -> str:
    if type(value) is str:
        return value
    if isinstance(value, str):  # str enums and other subclasses: send the plain value
        return str.__str__(value)
    raise InvalidEventError(f"{where} must be a string, got {_kind(value)} {value!r}")


def _check_bool(value: Any, where: str) -> bool:
    if value is True or value is False:
        return value
    raise InvalidEventError(f"{where} must be a boolean, got {_kind(value)} {value!r}")


def _check_dict(value: Any, where: str) -> dict[Any, Any]:
    if isinstance(value, dict):
        return value
    raise InvalidEventError(f"{where} must be an object (dict), got {_kind(value)} {value!r}")


def _check_any(value: Any, where: str) -> Any:
    return value  # JSON-encodability is checked when the event is encoded


def _list_of(check_item: _Check) -> _Check:
    def check(value: Any, where: str) -> list[Any]:
        if not isinstance(value, (list, tuple)):
            raise InvalidEventError(f"{where} must be a list, got {_kind(value)} {value!r}")
        return [check_item(item, f"{where}[{i}]") for i, item in enumerate(value)]

    return check


def _dict_of(check_value: _Check) -> _Check:
    def check(value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise InvalidEventError(f"{where} must be an object (dict), got {_kind(value)} {value!r}")
        result: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidEventError(f"{where} keys must be strings, got {_kind(key)} {key!r}")
            result[key] = check_value(item, f"{where}[{key!r}]")
        return result

    return check


def _optional(check: _Check) -> _Check:
    def check_optional(value: Any, where: str) -> Any:
        return None if value is None else check(value, where)

    return check_optional


_SCALARS: dict[Any, _Check] = {str: _check_str, float: _check_float, int: _check_int, bool: _check_bool}


def _checker_for(annotation: Any) -> _Check:
    """The coercion function for a field annotation."""
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    if annotation is Any:
        return _check_any
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return _optional(_checker_for(inner))
    if origin is list:
        return _list_of(_checker_for(args[0]))
    if origin is dict:
        if args and args[1] is not Any:
            return _dict_of(_checker_for(args[1]))
        return _check_dict
    raise TypeError(f"coda_ws.events: unsupported field annotation {annotation!r}")


# --------------------------------------------------------------------------
# The dataclasses.
# --------------------------------------------------------------------------

#: One of a type's own fields, as :func:`build_fields` walks them: (name,
#: check, is_factory, default or default factory or MISSING, where).
_FieldSpec = tuple[str, _Check, bool, Any, str]


@dataclass(frozen=True, kw_only=True)
class BaseEvent(DataClassJsonMixin):
    """The envelope every event carries.

    Instances are immutable. Build them with :func:`create_event`,
    :func:`validate_event` or ``emit()``, which validate and coerce; calling a
    class directly skips validation.
    """

    version: str = EVENT_VERSION
    seq: int = 0
    timestamp: float = 0.0
    type: str = ""
    session_id: str | None = None

    #: The type this class represents (set on each subclass), and its value as
    #: a plain string (hot paths avoid the enum's property lookup).
    event_type: ClassVar[EventType]
    type_name: ClassVar[str]
    #: Kept in the replay buffer unless the emitter says otherwise.
    high_priority: ClassVar[bool] = False
    #: State that a newer event of the same type and session supersedes.
    conflatable: ClassVar[bool] = False
    #: Fields carrying what the user or the assistant said (redacted for
    #: readers without the ``read:content`` scope).
    content_fields: ClassVar[tuple[str, ...]] = ()
    #: (name, check, is_factory, default, where) for each of the type's own
    #: fields, in order (``where``: "type.field", as errors name it).
    _spec: ClassVar[tuple[_FieldSpec, ...]] = ()
    _wire_keys: ClassVar[tuple[str, ...]] = ()

    def to_dict(self, encode_json: bool = False) -> dict[str, Any]:
        """The wire form: a plain dict in wire key order.

        ``encode_json`` is dataclasses-json's parameter, accepted so that this
        stays a drop-in for ``DataClassJsonMixin.to_dict``: the values of an
        event are JSON-ready either way, so it changes nothing."""
        return {name: getattr(self, name) for name in self._wire_keys}

    def to_json(self, **kwargs: Any) -> str:
        """The wire form as compact JSON text (keyword arguments go to ``json.dumps``)."""
        options: dict[str, Any] = {"separators": (",", ":"), "ensure_ascii": False, "allow_nan": False}
        options.update(kwargs)
        return json.dumps(self.to_dict(), **options)


_E = TypeVar("_E", bound=BaseEvent)

if TYPE_CHECKING:
    from typing_extensions import dataclass_transform
else:

    def dataclass_transform(**_options):
        """Python 3.10 has no typing.dataclass_transform; only type checkers read it."""
        return lambda function: function


# dataclass_transform: type checkers see each decorated class as the frozen,
# keyword-only dataclass (a BaseEvent subclass with its fields) it becomes.
@dataclass_transform(frozen_default=True, kw_only_default=True, field_specifiers=(field,))
def _event(
    event_type: EventType,
    *,
    high_priority: bool = False,
    conflatable: bool = False,
    content: tuple[str, ...] = (),
) -> Callable[[type[_E]], type[_E]]:
    """Class decorator: make an event dataclass and register it."""

    def decorate(cls: type[_E]) -> type[_E]:
        cls.__annotations__ = {"type": str, **cls.__annotations__}
        # Through setattr: the class attribute is a dataclasses.Field until dataclass() below reads it.
        cls.type = field(default=event_type.value)
        cls = dataclass(frozen=True, kw_only=True)(cls)
        cls.event_type = event_type
        cls.type_name = event_type.value
        cls.high_priority = high_priority
        cls.conflatable = conflatable
        cls.content_fields = tuple(content)
        hints = typing.get_type_hints(cls)
        spec: list[_FieldSpec] = []
        for f in dataclasses.fields(cls):
            if f.name in _ENVELOPE:
                continue
            default: Any
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory
            else:
                default = dataclasses.MISSING
            is_factory = f.default_factory is not dataclasses.MISSING
            where = f"{event_type.value}.{f.name}"  # how errors name the field
            spec.append((f.name, _checker_for(hints[f.name]), is_factory, default, where))
        cls._spec = tuple(spec)
        cls._wire_keys = _ENVELOPE + tuple(name for name, *_ in spec)
        unknown = set(content) - {name for name, *_ in spec}
        if unknown:  # a typo here would silently leak content to read-only readers
            raise TypeError(f"{cls.__name__}: unknown content fields {sorted(unknown)}")
        EVENT_CLASSES[event_type] = cls
        _BY_NAME[event_type.value] = cls
        return cls

    return decorate


EVENT_CLASSES: dict[EventType, type[BaseEvent]] = {}
_BY_NAME: dict[str, type[BaseEvent]] = {}


@_event(EventType.SYSTEM_INFO, high_priority=True)
class SystemInfoEvent(BaseEvent):
    data: dict[str, Any] = field(default_factory=dict)


@_event(EventType.SYSTEM_ERROR, high_priority=True)
class SystemErrorEvent(BaseEvent):
    level: str
    message: str
    details: dict[str, Any] | None = None


@_event(EventType.SYSTEM_METRICS, conflatable=True)
class SystemMetricsEvent(BaseEvent):
    memory_mb: float
    cpu_percent: float
    gpu_vram_mb: float | None = None
    uptime_seconds: float


@_event(EventType.STT_START)
class STTStartEvent(BaseEvent):
    mode: str


@_event(EventType.STT_INTERIM, conflatable=True, content=("text",))
class STTInterimEvent(BaseEvent):
    text: str
    confidence: float


@_event(EventType.STT_RESULT, high_priority=True, content=("text",))
class STTResultEvent(BaseEvent):
    text: str
    confidence: float
    duration_ms: float
    language: str | None = None


@_event(EventType.STT_ERROR, high_priority=True)
class STTErrorEvent(BaseEvent):
    error: str
    details: dict[str, Any] | None = None


@_event(EventType.LLM_START, content=("prompt",))
class LLMStartEvent(BaseEvent):
    prompt: str
    model: str
    temperature: float


@_event(EventType.LLM_TOKEN, content=("token", "cumulative_text"))
class LLMTokenEvent(BaseEvent):
    token: str
    cumulative_text: str


@_event(EventType.LLM_RESULT, high_priority=True, content=("text",))
class LLMResultEvent(BaseEvent):
    text: str
    duration_ms: float
    token_count: int
    tokens_per_second: float


@_event(EventType.LLM_ERROR, high_priority=True)
class LLMErrorEvent(BaseEvent):
    error: str
    details: dict[str, Any] | None = None


@_event(EventType.TTS_START, content=("text",))
class TTSStartEvent(BaseEvent):
    text: str
    voice_id: str
    engine: str


@_event(EventType.TTS_PROGRESS, conflatable=True)
class TTSProgressEvent(BaseEvent):
    progress_percent: float
    estimated_duration_ms: float | None = None


@_event(EventType.TTS_RESULT, high_priority=True)
class TTSResultEvent(BaseEvent):
    duration_ms: float
    audio_duration_ms: float
    success: bool


@_event(EventType.TTS_ERROR, high_priority=True)
class TTSErrorEvent(BaseEvent):
    error: str
    details: dict[str, Any] | None = None


@_event(EventType.TTS_STATUS)
class TTSStatusEvent(BaseEvent):
    status: str


@_event(EventType.MEMORY_STORE, high_priority=True, content=("content_preview",))
class MemoryStoreEvent(BaseEvent):
    content_preview: str
    memory_type: str
    importance: float
    memory_id: str


@_event(EventType.MEMORY_RETRIEVE, content=("query",))
class MemoryRetrieveEvent(BaseEvent):
    query: str
    results_count: int
    relevance_scores: list[float]


@_event(EventType.TOOL_CALL, content=("parameters",))
class ToolCallEvent(BaseEvent):
    tool_name: str
    parameters: dict[str, Any]
    call_id: str


@_event(EventType.TOOL_RESULT, high_priority=True, content=("result",))
class ToolResultEvent(BaseEvent):
    tool_name: str
    call_id: str
    result: Any
    duration_ms: float


@_event(EventType.TOOL_ERROR, high_priority=True)
class ToolErrorEvent(BaseEvent):
    tool_name: str
    call_id: str
    error: str
    details: dict[str, Any] | None = None


@_event(EventType.CONVERSATION_START, high_priority=True)
class ConversationStartEvent(BaseEvent):
    conversation_id: str


@_event(EventType.CONVERSATION_TURN, high_priority=True, content=("user_input", "assistant_response"))
class ConversationTurnEvent(BaseEvent):
    conversation_id: str
    turn_number: int
    user_input: str
    assistant_response: str


@_event(EventType.CONVERSATION_END, high_priority=True)
class ConversationEndEvent(BaseEvent):
    conversation_id: str
    total_turns: int
    duration_seconds: float


@_event(EventType.LATENCY_TRACE)
class LatencyTraceEvent(BaseEvent):
    component: str
    operation: str
    duration_ms: float
    metadata: dict[str, Any] | None = None


@_event(EventType.COMPONENT_TIMING)
class ComponentTimingEvent(BaseEvent):
    component: str
    timings: dict[str, float]


@_event(EventType.COMPONENT_STATUS, high_priority=True)
class ComponentStatusEvent(BaseEvent):
    component_type: str
    state: str
    initialization_order: int | None = None
    dependencies: list[str] = field(default_factory=list)


@_event(EventType.COMPONENT_ERROR, high_priority=True)
class ComponentErrorEvent(BaseEvent):
    component_type: str
    error_message: str
    error_count: int
    state: str = "failed"


@_event(EventType.COMPONENT_HEALTH)
class ComponentHealthEvent(BaseEvent):
    component_type: str
    health_status: dict[str, Any]


@_event(EventType.SYSTEM_STATUS, high_priority=True)
class SystemStatusEvent(BaseEvent):
    total_components: int
    ready_components: int
    failed_components: int
    integration_health: str
    components: dict[str, Any]


@_event(EventType.INTEGRATION_METRICS)
class IntegrationMetricsEvent(BaseEvent):
    is_active: bool
    websocket_server_available: bool
    event_handlers_registered: bool
    total_events_processed: int


# --------------------------------------------------------------------------
# Building and validating.
# --------------------------------------------------------------------------


def event_class(event_type: EventType | str) -> type[BaseEvent]:
    """The event class for ``event_type`` (an :class:`EventType` or its string value).

    Raises:
        InvalidEventError: the type is not a known event type.
    """
    if isinstance(event_type, str):
        cls = _BY_NAME.get(str.__str__(event_type))
        if cls is not None:
            return cls
    close = difflib.get_close_matches(event_type, _BY_NAME, n=1) if isinstance(event_type, str) else []
    raise InvalidEventError(
        f"unknown event type {event_type!r}{f' (did you mean {close[0]!r}?)' if close else ''}; "
        f"known types: {', '.join(sorted(_BY_NAME))}",
        event_type=event_type if isinstance(event_type, str) else None,
    )


def encode_session_id(session_id: str | None, type_name: str) -> tuple[str | None, bytes]:
    """Check an event's session id and encode it as its wire JSON.

    Returns ``(session_id, json_bytes)``: a plain ``str`` (str subclasses are
    converted) or None, and its UTF-8 JSON (``b"null"`` for None).

    Raises:
        InvalidEventError: naming ``session_id``: not a string, or a string
            UTF-8 cannot encode (a lone surrogate).
    """
    if session_id is None:
        return None, b"null"
    if type(session_id) is not str:
        if not isinstance(session_id, str):
            raise InvalidEventError(
                f"{type_name}.session_id must be a string or None, got {_kind(session_id)} {session_id!r}",
                event_type=type_name,
                field="session_id",
            )
        session_id = str.__str__(session_id)
    try:
        return session_id, encode_json(session_id).encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: a valid str, not UTF-8
        raise InvalidEventError(
            f"{type_name}.session_id cannot be encoded as UTF-8: {exc}",
            event_type=type_name,
            field="session_id",
        ) from None


def assemble_event(
    cls: type[_E], seq: int, timestamp: float, session_id: str | None, values: dict[str, Any]
) -> _E:
    """The event ``cls(seq=..., timestamp=..., session_id=..., **values)``
    builds, for ``values`` from :func:`build_fields`, made without running
    the frozen dataclass's ``__init__`` (one ``object.__setattr__`` per
    field: about 1 µs of the 6 µs ``emit()`` took). Nothing is validated here."""
    event = object.__new__(cls)
    state = event.__dict__
    state.update(
        version=EVENT_VERSION, seq=seq, timestamp=timestamp, type=cls.type_name, session_id=session_id
    )
    state.update(values)
    return event


def build_fields(cls: type[BaseEvent], fields: dict[str, Any]) -> dict[str, Any]:
    """Validate and coerce the keyword fields of an event of class ``cls``.

    Returns the type's own fields as a dict in wire order. ``fields`` is
    consumed (keys are popped). This is the caller-side half of ``emit()``.
    """
    type_name = cls.type_name
    values: dict[str, Any] = {}
    missing: str | None = None
    for name, check, is_factory, default, where in cls._spec:
        if name in fields:
            value = fields.pop(name)
            try:
                values[name] = check(value, where)
            except InvalidEventError as exc:
                exc.event_type, exc.field = type_name, name
                raise
        elif default is dataclasses.MISSING:
            missing = missing or name
        else:
            values[name] = default() if is_factory else default
    if fields:
        if cls is SystemInfoEvent:
            # The original sent system_info's extra keyword arguments inside data.
            values["data"] = {**values["data"], **fields}
        else:
            # Reported before a missing field: a misspelt name causes both.
            allowed = ", ".join(name for name, *_ in cls._spec)
            extra = sorted(fields)
            raise InvalidEventError(
                f"{type_name} got unknown field {extra[0]!r} (fields of {type_name}: {allowed})",
                event_type=type_name,
                field=extra[0],
            )
    if missing is not None:
        raise InvalidEventError(
            f"{type_name} is missing required field {missing!r}", event_type=type_name, field=missing
        )
    return values


def encode_fields(cls: type[BaseEvent], values: dict[str, Any]) -> bytes:
    """Encode the fields from :func:`build_fields` as UTF-8 JSON object bytes.

    Raises InvalidEventError naming the field that cannot be encoded (a value
    that is not JSON, NaN inside a dict, a lone surrogate in a string).
    """
    try:
        return encode_json(values).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        type_name = cls.event_type.value
        for name, value in values.items():  # slow path: find the culprit
            try:
                encode_json(value).encode("utf-8")
            except (TypeError, ValueError, RecursionError) as field_exc:
                raise InvalidEventError(
                    f"{type_name}.{name} cannot be encoded as JSON: {field_exc}",
                    event_type=type_name,
                    field=name,
                ) from None
        raise InvalidEventError(
            f"{type_name} cannot be encoded as JSON: {exc}", event_type=type_name
        ) from None


def create_event(
    event_type: EventType | str,
    seq: int = 0,
    *,
    session_id: str | None = None,
    timestamp: float | None = None,
    **fields: Any,
) -> BaseEvent:
    """Build a validated event.

    Args:
        event_type: an :class:`EventType` or its string value.
        seq: the stream position (0 for an event not yet emitted).
        session_id: the conversation session, or ``None`` for system-wide events.
        timestamp: Unix epoch seconds; defaults to now.
        **fields: the type's own fields.

    Returns:
        An instance of the type's event class.

    Raises:
        InvalidEventError (a TypeError and a ValueError): unknown type, or a
            field missing, unknown, of the wrong kind or not encodable.
    """
    cls = event_class(event_type)
    values = build_fields(cls, dict(fields))
    encode_fields(cls, values)
    session_id, _ = encode_session_id(session_id, cls.type_name)
    if timestamp is None:
        timestamp = time.time()
    else:
        timestamp = _check_float(timestamp, f"{cls.event_type.value}.timestamp")
    return cls(
        seq=_check_int(seq, f"{cls.event_type.value}.seq"),
        timestamp=timestamp,
        session_id=session_id,
        **values,
    )


def validate_event(data: object) -> BaseEvent:
    """Validate an event given as a dict (wire form, or just type and fields).

    Envelope keys are optional; when present they must be of the right kind,
    and ``version`` must be ``"1.0"``.

    Returns:
        The event object.

    Raises:
        InvalidEventError (a ValueError): not a dict, missing or unknown
            ``type``, or a field missing, unknown, or of the wrong kind.
    """
    if not isinstance(data, dict):
        raise InvalidEventError(f"an event must be a JSON object, got {_kind(data)}")
    if "type" not in data:
        raise InvalidEventError("event is missing required field 'type'", field="type")
    fields = dict(data)
    cls = event_class(fields.pop("type"))
    type_name = cls.event_type.value
    version = fields.pop("version", EVENT_VERSION)
    if version != EVENT_VERSION:
        raise InvalidEventError(
            f"{type_name}.version must be {EVENT_VERSION!r}, got {version!r}",
            event_type=type_name,
            field="version",
        )
    seq = fields.pop("seq", 0)
    timestamp = fields.pop("timestamp", None)
    session_id = fields.pop("session_id", None)
    return create_event(cls.event_type, seq, session_id=session_id, timestamp=timestamp, **fields)
