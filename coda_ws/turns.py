"""Per-turn pipeline latency, derived from the timestamps of the events.

A voice agent's developer looks first at where the time of a turn goes: from
the end of the user's speech to the first audio of the answer. This module
turns a list of events (dicts in wire form, oldest first) into that breakdown.
It is a pure function of its input: no clock, no I/O, no global state.

Theory of operation
-------------------

Events are taken one by one, in order, and grouped into turns *per session*
(``session_id``; events without a session form their own group, ``None``).

* A turn **starts** at ``stt_result`` (the end of the user's speech), or at
  ``llm_start`` when the session has no open turn (a typed question, say). An
  ``stt_result`` while a turn is still open starts a new turn and marks the
  open one ``"abandoned"``.
* A turn **ends** at its first ``tts_result`` or at ``conversation_turn``,
  whichever comes first (status ``"complete"``). A turn that has not ended is
  ``"in_progress"``. Events of a session with no open turn are ignored, except
  the two that start one.
* Within a turn the milestones ("marks") are:

  ==================  ======================================================
  ``stt_result``      the ``stt_result`` that started the turn (if any)
  ``llm_start``       the first ``llm_start``
  ``llm_first_token`` the first ``llm_token``
  ``llm_result``      the last ``llm_result`` before the first ``tts_start``
                      (with tool use the model may answer more than once);
                      once TTS has started, only a first one is recorded
  ``tts_start``       the first ``tts_start``
  ``tts_first_audio`` the first ``tts_progress``
  ``tts_result``      the ``tts_result`` that ended the turn
  ==================  ======================================================

* Durations, in milliseconds, are differences of event timestamps
  (``(later - earlier) * 1000``, not rounded):

  =====================  ===================================================
  ``stt_ms``             the ``duration_ms`` field of the ``stt_result``
  ``llm_ttft_ms``        ``llm_first_token - llm_start`` (time to first token)
  ``llm_total_ms``       ``llm_result - llm_start``
  ``tts_ttfa_ms``        ``tts_first_audio - tts_start`` (time to first audio)
  ``tts_total_ms``       ``tts_result - tts_start``
  ``voice_to_voice_ms``  first audio ``-`` the turn's start, where first audio
                         is ``tts_first_audio``, or ``tts_result`` when no
                         ``tts_progress`` came (non-streaming TTS)
  =====================  ===================================================

  A duration is ``None`` when one of its two ends is missing.

* Percentiles use linear interpolation between closest ranks (the default of
  NumPy's ``percentile``): for sorted values ``v`` of length ``n``,
  ``rank = p / 100 * (n - 1)`` and the result is
  ``v[lo] + (v[hi] - v[lo]) * (rank - lo)`` with ``lo``/``hi`` the floor and
  ceiling of ``rank``.

The dashboard computes the same breakdown in the browser from the events it
receives (``coda_ws/static/dashboard/turns.js``). The two implementations must
keep these definitions identical; a browser test compares their output on the
same events.

Content (what the user said, what the model answered) is deliberately left
out: ``GET /turns`` carries timings only, so it reveals nothing that a
metrics-only reader may not see.
"""

import math
from collections.abc import Collection, Iterable, Mapping
from typing import Any, Literal, TypedDict, cast

from .checks import integer, is_number

__all__ = [
    "COMPONENTS",
    "MARKS",
    "ROLLING_WINDOW",
    "ComponentStats",
    "TurnBreakdown",
    "TurnSummary",
    "percentile",
    "turn_breakdown",
]

#: Turns (with a voice-to-voice value) in each turn's rolling p50/p95 window.
ROLLING_WINDOW = 20

_Component = Literal[
    "stt_ms", "llm_ttft_ms", "llm_total_ms", "tts_ttfa_ms", "tts_total_ms", "voice_to_voice_ms"
]

#: The duration fields of a turn, in the order the dashboard's table shows them.
COMPONENTS: tuple[_Component, ...] = (
    "stt_ms",
    "llm_ttft_ms",
    "llm_total_ms",
    "tts_ttfa_ms",
    "tts_total_ms",
    "voice_to_voice_ms",
)

#: The milestones of a turn, in pipeline order.
MARKS = (
    "stt_result",
    "llm_start",
    "llm_first_token",
    "llm_result",
    "tts_start",
    "tts_first_audio",
    "tts_result",
)

_ERROR_TYPES = frozenset({"stt_error", "llm_error", "tts_error", "tool_error"})

#: Event types whose first occurrence in a turn is a mark.
_FIRST_MARK: dict[str, str] = {
    "llm_start": "llm_start",
    "llm_token": "llm_first_token",
    "tts_start": "tts_start",
    "tts_progress": "tts_first_audio",
}


class TurnSummary(TypedDict):
    """One turn of :func:`turn_breakdown` (milliseconds; see the module docstring)."""

    session_id: str | None
    start_seq: int | None
    end_seq: int | None
    started_at: float
    ended_at: float | None
    status: Literal["complete", "in_progress", "abandoned"]
    stt_ms: float | None
    llm_ttft_ms: float | None
    llm_total_ms: float | None
    tts_ttfa_ms: float | None
    tts_total_ms: float | None
    voice_to_voice_ms: float | None
    tool_calls: int
    tool_ms: float | None
    errors: int
    marks: dict[str, float | None]
    rolling_p50_ms: float | None
    rolling_p95_ms: float | None


class ComponentStats(TypedDict):
    """The percentiles of one duration over the turns of :func:`turn_breakdown`."""

    count: int
    p50: float | None
    p95: float | None
    p99: float | None


class TurnBreakdown(TypedDict):
    """:func:`turn_breakdown`."""

    turns: list[TurnSummary]
    count: int
    window: int
    p50: float | None
    p95: float | None
    p99: float | None
    components: dict[str, ComponentStats]


def percentile(values: Collection[float], p: float) -> float | None:
    """The ``p``-th percentile (0-100) of ``values``, linearly interpolated.

    Returns None for an empty sequence. ``values`` need not be sorted.
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = p / 100 * (len(ordered) - 1)
    lo = math.floor(rank)
    hi = math.ceil(rank)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def _number(value: object) -> float | None:
    """``value`` when it is a real number (not a bool), else None."""
    if is_number(value):
        return cast(float, value)  # is_number: an int or a float
    return None


def _diff_ms(times: Mapping[str, float], later: str, earlier: str) -> float | None:
    a = times.get(later)
    b = times.get(earlier)
    if a is None or b is None:
        return None
    return (a - b) * 1000


class _Turn:
    __slots__ = (
        "end_seq",
        "ended_at",
        "errors",
        "session_id",
        "start_seq",
        "started_at",
        "status",
        "stt_ms",
        "times",
        "tool_calls",
        "tool_ms",
    )

    def __init__(self, event: Mapping[str, Any], timestamp: float) -> None:
        self.session_id: str | None = event.get("session_id")
        self.start_seq: int | None = event.get("seq")
        self.end_seq: int | None = None
        self.started_at = timestamp
        self.ended_at: float | None = None
        self.status: Literal["complete", "in_progress", "abandoned"] = "in_progress"
        self.stt_ms: float | None = None
        self.times: dict[str, float] = {}
        self.tool_calls = 0
        self.tool_ms: float | None = None
        self.errors = 0

    def summary(self) -> TurnSummary:
        """The turn as :func:`turn_breakdown` returns it (which sets the rolling values)."""
        times = self.times
        first_audio = "tts_first_audio" if "tts_first_audio" in times else "tts_result"
        audio_at = times.get(first_audio)
        return {
            "session_id": self.session_id,
            "start_seq": self.start_seq,
            "end_seq": self.end_seq,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "status": self.status,
            "stt_ms": self.stt_ms,
            "llm_ttft_ms": _diff_ms(times, "llm_first_token", "llm_start"),
            "llm_total_ms": _diff_ms(times, "llm_result", "llm_start"),
            "tts_ttfa_ms": _diff_ms(times, "tts_first_audio", "tts_start"),
            "tts_total_ms": _diff_ms(times, "tts_result", "tts_start"),
            "voice_to_voice_ms": None if audio_at is None else (audio_at - self.started_at) * 1000,
            "tool_calls": self.tool_calls,
            "tool_ms": self.tool_ms,
            "errors": self.errors,
            "marks": {
                name: (times[name] - self.started_at) * 1000 if name in times else None for name in MARKS
            },
            "rolling_p50_ms": None,
            "rolling_p95_ms": None,
        }


def _feed(open_turns: dict[str | None, _Turn], turns: list[_Turn], event: Mapping[str, Any]) -> None:
    """Apply one event to the per-session open turns (see the module docstring)."""
    kind = event.get("type")
    timestamp = _number(event.get("timestamp"))
    if not isinstance(kind, str) or timestamp is None:
        return
    key = event.get("session_id")
    turn = open_turns.get(key)
    if kind == "stt_result":
        if turn is not None:
            turn.status = "abandoned"
        turn = _Turn(event, timestamp)
        turn.times["stt_result"] = timestamp
        turn.stt_ms = _number(event.get("duration_ms"))
        open_turns[key] = turn
        turns.append(turn)
        return
    if kind == "llm_start" and turn is None:
        turn = _Turn(event, timestamp)
        open_turns[key] = turn
        turns.append(turn)
    if turn is None:
        return
    times = turn.times
    if kind in _FIRST_MARK:
        times.setdefault(_FIRST_MARK[kind], timestamp)
    elif kind == "llm_result":
        if "tts_start" not in times or "llm_result" not in times:
            times["llm_result"] = timestamp
    elif kind == "tool_call":
        turn.tool_calls += 1
    elif kind == "tool_result":
        duration = _number(event.get("duration_ms"))
        if duration is not None:
            turn.tool_ms = duration if turn.tool_ms is None else turn.tool_ms + duration
    elif kind in _ERROR_TYPES:
        turn.errors += 1
    elif kind in ("tts_result", "conversation_turn"):
        if kind == "tts_result":
            times["tts_result"] = timestamp
        turn.status = "complete"
        turn.ended_at = timestamp
        turn.end_seq = event.get("seq")
        del open_turns[key]


def _stats(values: Collection[float]) -> ComponentStats:
    return {
        "count": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
    }


def turn_breakdown(events: Iterable[object], limit: int = 20) -> TurnBreakdown:
    """The per-turn latency breakdown of ``events``.

    Args:
        events: event dicts in wire form (``type``, ``timestamp`` in epoch
            seconds, ``session_id``, ``seq`` and the type's fields), oldest
            first. Dicts of other shapes are skipped.
        limit: the most turns to return (the newest ones), at least 1.

    Returns:
        A JSON-ready dict::

            {
              "turns": [            # newest first (by start), at most `limit`
                {
                  "session_id": str | None,
                  "start_seq": int, "end_seq": int | None,
                  "started_at": float,          # epoch s of the starting event
                  "ended_at": float | None,     # epoch s of the ending event
                  "status": "complete" | "in_progress" | "abandoned",
                  "stt_ms": float | None,
                  "llm_ttft_ms": float | None,
                  "llm_total_ms": float | None,
                  "tts_ttfa_ms": float | None,
                  "tts_total_ms": float | None,
                  "voice_to_voice_ms": float | None,
                  "tool_calls": int,            # tool_call events in the turn
                  "tool_ms": float | None,      # sum of tool_result.duration_ms
                  "errors": int,                # stt/llm/tts/tool errors in the turn
                  "marks": {name: ms since started_at | None, ...},  # MARKS
                  "rolling_p50_ms": float | None,  # voice-to-voice p50/p95 over the
                  "rolling_p95_ms": float | None,  # last ROLLING_WINDOW turns that
                },                                 # have one, up to this turn
                ...
              ],
              "count": int,         # len(turns)
              "window": int,        # ROLLING_WINDOW
              "p50": float | None,  # voice_to_voice_ms percentiles over
              "p95": float | None,  # the returned turns that have one
              "p99": float | None,
              "components": {       # one entry per name in COMPONENTS, over
                "stt_ms": {"count": int, "p50": ..., "p95": ..., "p99": ...},
                ...                 # the returned turns
              },
            }

        Durations are milliseconds; see the module docstring for the
        definitions.

    Raises:
        ValueError: ``limit`` is not a positive integer.
    """
    # Long: the docstring documents every key of the result; the code is 35 lines
    integer("limit", limit, 1)
    open_turns: dict[str | None, _Turn] = {}
    turns: list[_Turn] = []
    for event in events:
        if isinstance(event, dict):
            _feed(open_turns, turns, event)

    summaries: list[TurnSummary] = []
    window: list[float] = []
    for turn in turns:
        summary = turn.summary()
        value = summary["voice_to_voice_ms"]
        if value is not None:
            window.append(value)
            if len(window) > ROLLING_WINDOW:
                del window[0]
        summary["rolling_p50_ms"] = percentile(window, 50)
        summary["rolling_p95_ms"] = percentile(window, 95)
        summaries.append(summary)

    selected = summaries[-limit:][::-1]
    v2v = [t["voice_to_voice_ms"] for t in selected if t["voice_to_voice_ms"] is not None]
    result: TurnBreakdown = {
        "turns": selected,
        "count": len(selected),
        "window": ROLLING_WINDOW,
        "p50": percentile(v2v, 50),
        "p95": percentile(v2v, 95),
        "p99": percentile(v2v, 99),
        "components": {
            name: _stats([value for t in selected if (value := t[name]) is not None]) for name in COMPONENTS
        },
    }
    return result
