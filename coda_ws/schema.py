"""JSON Schema (draft 2020-12) of every event, generated from the event dataclasses.

:func:`event_schema` describes events as they appear on the wire (docs/protocol.md
section 2): every key present, the envelope first. It is generated from
:mod:`coda_ws.events` (each class's fields, their annotations and defaults),
so a field added to a dataclass appears here without further work.

Shape of the document (``GET /schema`` serves it)::

    {
      "$schema": "https://json-schema.org/draft/2020-12/schema",
      "protocol": 1,                  # coda_ws.events.PROTOCOL_VERSION
      "schema_version": "1.0",        # the events' "version" key
      "oneOf": [{"$ref": "#/$defs/stt_result"}, ...],
      "$defs": {"stt_result": {...}, ...}   # one per event type, keyed by type name
    }

Each definition is a closed object (``additionalProperties: false``) whose
``type`` is a constant, so exactly one branch of ``oneOf`` can match. Redacted
events (content fields ``null`` plus ``"redacted": true``, docs/protocol.md
section 7) validate too: a definition accepts the optional ``redacted`` key
and, when it is present, requires the content fields to be ``null``.

Each definition also carries annotations that validators ignore:
``x-high-priority``, ``x-conflatable`` and ``x-content-fields`` (the class
attributes of the same meaning).
"""

import copy
import dataclasses
import functools
import types
import typing
from typing import Any

from .events import EVENT_VERSION, PROTOCOL_VERSION, BaseEvent, registered_event_types, registry_version

__all__ = ["SCHEMA_DIALECT", "event_schema", "type_schema"]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

_SCALARS: dict[Any, str] = {str: "string", float: "number", int: "integer", bool: "boolean"}


def _annotation_schema(annotation: Any) -> dict[str, Any]:
    """The JSON Schema of one field annotation (the annotations events.py supports)."""
    if annotation in _SCALARS:
        return {"type": _SCALARS[annotation]}
    if annotation is Any:
        return {}
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        schema = _annotation_schema(inner)
        if not schema:
            return {}  # Any already includes null
        if isinstance(schema.get("type"), str):
            return {**schema, "type": [schema["type"], "null"]}
        return {"anyOf": [schema, {"type": "null"}]}
    if origin is list:
        return {"type": "array", "items": _annotation_schema(args[0])}
    if origin is dict:
        schema = {"type": "object"}
        if args and args[1] is not Any:
            schema["additionalProperties"] = _annotation_schema(args[1])
        return schema
    raise TypeError(f"coda_ws.schema: no JSON Schema for the annotation {annotation!r}")


def _default_of(cls: type[BaseEvent], name: str) -> tuple[bool, Any]:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return True, f.default
            if f.default_factory is not dataclasses.MISSING:
                return True, f.default_factory()
    return False, None


def type_schema(cls: type[BaseEvent]) -> dict[str, Any]:
    """The schema of one event class (a new dict each call)."""
    type_name = cls.type_name
    hints = typing.get_type_hints(cls)
    content = set(cls.content_fields)
    properties: dict[str, dict[str, Any]] = {
        "version": {"const": EVENT_VERSION},
        "seq": {"type": "integer", "minimum": 1, "description": "position in the stream"},
        "timestamp": {"type": "number", "description": "Unix epoch seconds at emit time"},
        "type": {"const": type_name},
        "session_id": {"type": ["string", "null"]},
    }
    content_schemas: dict[str, dict[str, Any]] = {}
    for name, *_ in cls._spec:
        schema = _annotation_schema(hints[name])
        has_default, default = _default_of(cls, name)
        if has_default:
            schema["default"] = default
        if name in content:
            # Typed only when not redacted (see the if/then/else below).
            content_schemas[name] = schema
            properties[name] = {"description": "content field: null in redacted events"}
        else:
            properties[name] = schema
    properties["redacted"] = {
        "const": True,
        "description": "present when content fields were removed for a reader without read:content",
    }
    definition: dict[str, Any] = {
        "title": cls.__name__,
        "type": "object",
        "properties": properties,
        "required": list(cls._wire_keys),
        "additionalProperties": False,
        "x-high-priority": cls.high_priority,
        "x-conflatable": cls.conflatable,
        "x-content-fields": list(cls.content_fields),
    }
    if content_schemas:
        definition["if"] = {"required": ["redacted"]}
        definition["then"] = {"properties": {name: {"type": "null"} for name in content_schemas}}
        definition["else"] = {"properties": content_schemas}
    return definition


@functools.lru_cache(maxsize=1)
def _cached_schema(version: int) -> dict[str, Any]:
    """The schema for the registry as of ``version`` (:func:`registry_version`)."""
    defs: dict[str, dict[str, Any]] = {}
    for name, cls in registered_event_types().items():
        defs[name] = type_schema(cls)
    return {
        "$schema": SCHEMA_DIALECT,
        "title": "coda_ws event",
        "description": "One event as sent to WebSocket clients and returned by GET /events (docs/protocol.md section 2).",
        "protocol": PROTOCOL_VERSION,
        "schema_version": EVENT_VERSION,
        "oneOf": [{"$ref": f"#/$defs/{name}"} for name in defs],
        "$defs": defs,
    }


def event_schema() -> dict[str, Any]:
    """The JSON Schema of every event (a deep copy: callers may change it).

    Built-in types first, then registered ones in the order of their
    registration. Generated again only when a type was registered since.
    Thread-safe.
    """
    return copy.deepcopy(_cached_schema(registry_version()))
