"""Event filters: which types (names or globs) and which session a reader wants.

One :class:`EventFilter` decides for live delivery, replay and resume alike, so
a client sees the same subset whichever way an event reaches it.
"""

import fnmatch
import re
from collections.abc import Mapping
from typing import Any, TypeAlias, TypedDict

from .events import EventType

__all__ = ["MAX_PATTERNS", "MAX_PATTERN_LENGTH", "EventFilter", "FilterDescription", "TypePatterns"]

#: Most patterns one filter may hold (a bound on per-client work and memory).
MAX_PATTERNS = 64
#: Longest accepted pattern, in characters.
MAX_PATTERN_LENGTH = 64

_PATTERN_CHARS = re.compile(r"^[A-Za-z0-9_*?\[\]!.-]+$")

#: What :class:`EventFilter` takes as ``types`` (besides None): a
#: comma-separated string, or a list, tuple or set of type names and globs.
TypePatterns: TypeAlias = str | list[str] | tuple[str, ...] | set[str] | frozenset[str]


class FilterDescription(TypedDict):
    """:meth:`EventFilter.describe`: the filter as JSON-ready data."""

    types: list[str] | None
    session_id: str | None


class EventFilter:
    """Immutable filter on event type and session.

    Args:
        types: ``None`` for every type, or an iterable (or comma-separated
            string) of type names and globs such as ``"llm_*"``.
        session_id: ``None`` for every session; otherwise events of that
            session plus events that belong to no session.

    Raises:
        ValueError: a pattern is empty, too long, has characters no event
            type has, or there are more than :data:`MAX_PATTERNS`.
        TypeError: ``types`` or ``session_id`` is of the wrong kind.

    Matching a type is a dict lookup after the first time (results are
    cached per type name), so the cost per event does not depend on the
    number of patterns.
    """

    __slots__ = ("_cache", "_regex", "session_id", "types")
    types: tuple[str, ...] | None
    session_id: str | None
    _cache: dict[str, bool]
    _regex: re.Pattern[str] | None

    def __init__(self, types: TypePatterns | None = None, session_id: str | None = None) -> None:
        if session_id is not None and not isinstance(session_id, str):
            raise TypeError(f"session_id must be a string or None, got {type(session_id).__name__}")
        if isinstance(types, str):
            types = [t.strip() for t in types.split(",") if t.strip()] or None
        if types is not None:
            if not isinstance(types, (list, tuple, set, frozenset)):
                raise TypeError(f"types must be a list of strings, got {type(types).__name__}")
            if len(types) > MAX_PATTERNS:
                raise ValueError(f"too many type patterns: {len(types)} (at most {MAX_PATTERNS})")
            for pattern in types:
                if not isinstance(pattern, str):
                    raise TypeError(
                        f"type patterns must be strings, got {type(pattern).__name__} {pattern!r}"
                    )
                if not pattern or len(pattern) > MAX_PATTERN_LENGTH or not _PATTERN_CHARS.match(pattern):
                    raise ValueError(f"invalid type pattern {pattern!r}")
            types = tuple(dict.fromkeys(str.__str__(t) if isinstance(t, EventType) else t for t in types))
            self._regex = re.compile("|".join(fnmatch.translate(p) for p in types)) if types else None
        else:
            self._regex = None
        self.types = types
        self.session_id = session_id
        self._cache = {}

    def match_type(self, type_name: str) -> bool:
        """True when events of ``type_name`` pass the type part of the filter."""
        if self.types is None:
            return True
        result = self._cache.get(type_name)
        if result is None:
            result = self._regex is not None and self._regex.match(type_name) is not None
            if len(self._cache) < 1024:  # bounded: unknown names from outside must not grow it
                self._cache[type_name] = result
        return result

    def match(self, type_name: str, session_id: str | None) -> bool:
        """True when an event of this type and session passes the filter."""
        wanted = self.session_id
        if wanted is not None and session_id is not None and session_id != wanted:
            return False
        return self.match_type(type_name)

    def match_dict(self, event: Mapping[str, Any]) -> bool:
        """:meth:`match` for an event in dict form (unknown shapes never match a filter)."""
        if self.types is None and self.session_id is None:
            return True
        type_name = event.get("type")
        return isinstance(type_name, str) and self.match(type_name, event.get("session_id"))

    def describe(self) -> FilterDescription:
        """The filter as a JSON-ready dict (``types`` is ``None`` for all)."""
        return {"types": list(self.types) if self.types is not None else None, "session_id": self.session_id}

    def __repr__(self) -> str:
        return f"EventFilter(types={self.types!r}, session_id={self.session_id!r})"
