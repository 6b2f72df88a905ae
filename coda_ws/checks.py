"""The argument checks every public constructor and method shares.

Python's ``bool`` is an ``int``, so ``isinstance(value, int)`` lets
``True`` through as 1; each check here refuses booleans where a number is
meant, and raises ``ValueError`` with a message naming the argument and the
bad value. :mod:`coda_ws.config` builds the server's option checks on them.
"""

import math
from typing import Any

__all__ = ["integer", "is_integer", "is_number", "non_empty_text", "number"]


def is_integer(value: Any) -> bool:
    """True for an ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """True for a finite ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(
    name: str, value: Any, minimum: int | None = None, maximum: int | None = None, *, none_ok: bool = False
) -> Any:
    """``value`` when it is an integer within ``[minimum, maximum]`` (or None
    with ``none_ok``).

    Raises:
        ValueError: naming ``name``, the range and ``value``.
    """
    if value is None and none_ok:
        return None
    if (
        not is_integer(value)
        or (minimum is not None and value < minimum)
        or (maximum is not None and value > maximum)
    ):
        if minimum is not None and maximum is not None:
            what = f"an integer from {minimum} to {maximum}"
        elif minimum == 1:
            what = "a positive integer"
        elif minimum == 0:
            what = "a non-negative integer"
        elif minimum is not None:
            what = f"an integer of at least {minimum}"
        else:
            what = "an integer"
        raise ValueError(f"{name} must be {what}{' or None' if none_ok else ''}, got {value!r}")
    return value


def number(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    positive: bool = False,
    none_ok: bool = False,
    unit: str = "",
) -> Any:
    """``value`` when it is a finite number within the bounds (``positive``:
    above 0; or None with ``none_ok``).

    Raises:
        ValueError: naming ``name``, the bounds and ``value``.
    """
    if value is None and none_ok:
        return None
    bad = (
        not is_number(value)
        or (positive and value <= 0)
        or (minimum is not None and value < minimum)
        or (maximum is not None and value > maximum)
    )
    if bad:
        what = " of " + unit if unit else ""
        if minimum is not None and maximum is not None:
            bound = f" from {minimum:g} to {maximum:g}"
        elif positive:
            bound = " above 0"
        elif minimum == 0:
            bound = ", 0 or more"
        elif minimum is not None:
            bound = f" of at least {minimum:g}"
        else:
            bound = ""
        raise ValueError(
            f"{name} must be a finite number{what}{bound}{', or None' if none_ok else ''}, got {value!r}"
        )
    return value


def non_empty_text(name: str, value: Any, *, none_ok: bool = False) -> Any:
    """``value`` when it is a non-empty string (or None with ``none_ok``).

    Raises:
        ValueError: naming ``name`` and ``value``.
    """
    if value is None and none_ok:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string{' or None' if none_ok else ''}, got {value!r}")
    return value
